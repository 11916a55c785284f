// Frame-exact sync of the real page in headless Chromium: pages behind different one-way delays
// (bench/delay-proxy.mjs, in front of a real hub) show the same frame at the same moment, follow
// a seek together, and a page whose network stalls holds its frame, reconnects and resyncs.
// SYNC_REPORT=1 prints, per delay, how far each page is from the 5 ms one, in both modes.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { startDelayProxy } from "../../bench/delay-proxy.mjs";

const BIN = process.env.REPLAY_HUB_BIN || new URL("../../target/debug/replay-hub", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ADMIN = "sync-test-admin";
const DELAYS = [5, 60, 200];

let hub;
let dataDir;
let base;
let token;
let browser;
const proxies = {};

async function startHub() {
  dataDir = mkdtempSync(join(tmpdir(), "replay-hub-sync-"));
  hub = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir, "--demo-laps", "3", "--admin-token", ADMIN], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  const lines = createInterface({ input: hub.stdout });
  for await (const line of lines) {
    const listening = line.match(/^replay-hub listening on (http:\/\/\S+)/);
    if (listening) base = listening[1];
    const control = line.match(/^control: +\S+\?token=(\S+)/);
    if (control) token = control[1];
    if (base && token) break;
  }
  assert.ok(base && token, "the hub printed its address and the demo's control token");
}

async function openPage(origin, path) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on("pageerror", (error) => assert.fail(`page error on ${path}: ${error.message}`));
  await page.goto(origin + path);
  await page.waitForSelector('body[data-cars="20"]');
  return page;
}

/// Opens the session page behind each delay, in `mode`, and waits until each has synced its clock.
async function openBehindDelays(mode) {
  const query = mode === "push" ? "?mode=push" : "";
  const pages = [];
  for (const delay of DELAYS) {
    const page = await openPage(proxies[delay].url, `/sessions/demo${query}`);
    if (mode !== "push") await page.waitForSelector("#sync[data-rtt]");
    pages.push(page);
  }
  return pages;
}

/// Readings later than this after the moment asked for are not of that moment (a loaded
/// machine delays animation frames): they are taken again.
const READ_WITHIN_MS = 17;

/// The frame each page shows at one moment of the machine's clock (every page reads the same
/// clock: performance.timeOrigin + performance.now()), read from its data-frame in the first
/// animation frame at or after that moment, once the page has drawn it.
async function framesAt(pages, inMs = 300) {
  for (let attempt = 0; attempt < 30; attempt++) {
    const target = Date.now() + inMs;
    const readings = await Promise.all(
      pages.map((page) =>
        page.evaluate(
          (target) =>
            new Promise((resolve) => {
              const look = (ts) => {
                const at = performance.timeOrigin + ts;
                if (at < target) return requestAnimationFrame(look);
                // After every callback of this animation frame, the page's drawing included.
                setTimeout(() => resolve({ frame: Number(document.body.dataset.frame), at }), 0);
              };
              requestAnimationFrame(look);
            }),
          target,
        ),
      ),
    );
    if (readings.every((r) => r.at - target <= READ_WITHIN_MS)) return readings.map((r) => r.frame);
  }
  assert.fail("no animation frame came within 17 ms of the moment asked for, 30 times");
}

/// Differences from the first page, over several moments.
async function spreads(pages, moments = 8) {
  const rows = [];
  for (let n = 0; n < moments; n++) {
    const frames = await framesAt(pages);
    rows.push(frames.map((f) => f - frames[0]));
  }
  return rows;
}

async function seek(controller, frame) {
  await controller.locator("#timeline").evaluate((slider, f) => {
    slider.value = String(f);
    slider.dispatchEvent(new Event("change"));
  }, frame);
}

describe("viewers on different networks", () => {
  before(async () => {
    await startHub();
    const target = base.replace("http://", "");
    for (const delay of DELAYS) proxies[delay] = await startDelayProxy({ target, delayMs: delay });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows"],
    });
    const controller = await openPage(base, `/sessions/demo?token=${token}`);
    await seek(controller, 1000);
    await controller.waitForFunction(() => Number(document.body.dataset.frame) >= 1000);
    await controller.close();
  });

  after(async () => {
    await browser?.close();
    for (const proxy of Object.values(proxies)) await proxy.close();
    hub?.kill();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("look-ahead pages behind 5, 60 and 200 ms show the same frame at the same moment", async () => {
    const pages = await openBehindDelays("lookahead");
    const rtts = await Promise.all(pages.map((p) => p.locator("#sync").getAttribute("data-rtt")));
    // The measured round trip includes both directions of each delay.
    DELAYS.forEach((delay, n) => assert.ok(Number(rtts[n]) >= 2 * delay - 1, `rtt ${rtts[n]} behind ${delay} ms`));
    const rows = await spreads(pages);
    for (const row of rows) {
      assert.ok(row.every((d) => Math.abs(d) <= 1), `frames apart from the 5 ms page: ${row}`);
    }
    if (process.env.SYNC_REPORT) report("lookahead", rows);
    for (const page of pages) await page.close();
  });

  test("push pages behind the same delays (for comparison)", async () => {
    const pages = await openBehindDelays("push");
    const rows = await spreads(pages);
    // Push pages show frames as they arrive: the one behind 200 ms is later, never ahead.
    for (const row of rows) assert.ok(row[2] <= 1, `the 200 ms push page ahead of the 5 ms one: ${row}`);
    if (process.env.SYNC_REPORT) report("push", rows);
    for (const page of pages) await page.close();
  });

  test("a seek by the controller moves every page within one window", async () => {
    const pages = await openBehindDelays("lookahead");
    const controller = await openPage(base, `/sessions/demo?token=${token}`);
    const target = 3000;
    const started = Date.now();
    await seek(controller, target);
    for (const page of pages) {
      await page.waitForFunction((f) => Number(document.body.dataset.frame) >= f, target);
    }
    const frames = await framesAt(pages, 20);
    // One window (1 s) of playback is 25 frames: every page is on the new timeline by then.
    const elapsed = (Date.now() - started) / 40;
    assert.ok(frames.every((f) => f >= target && f <= target + elapsed + 25), `after the seek to ${target}: ${frames}`);
    // Back in step after the seek. (How closely is the first test's and BENCHMARKS.md's
    // measure; here a loaded machine may delay one page's paint by a frame.)
    for (const row of await spreads(pages, 3)) {
      assert.ok(row.every((d) => Math.abs(d) <= 2), `frames apart after the seek: ${row}`);
    }
    await controller.close();
    for (const page of pages) await page.close();
  });

  test("a page whose network stalls holds its frame, then reconnects and resyncs when cut", async () => {
    const [reference, , victim] = await openBehindDelays("lookahead");
    const proxy = proxies[200];
    proxy.pause();
    // Its buffered windows run out (at most two window lengths), then it holds and says so.
    await victim.waitForSelector('body[data-stalled="true"]', { timeout: 10000 });
    const frame = () => victim.evaluate(() => Number(document.body.dataset.frame));
    const held = await frame();
    await victim.waitForTimeout(600);
    assert.equal(await frame(), held, "the stalled page holds its last frame");
    assert.match(await victim.locator("#sync").textContent(), /waiting/);
    const oldRtt = await victim.locator("#sync").getAttribute("data-rtt");

    proxy.cut();
    await victim.waitForFunction(() => document.getElementById("connection").dataset.status !== "live");
    await victim.waitForSelector("#connection[data-status=live]", { timeout: 15000 });
    await victim.waitForSelector('body[data-stalled="false"]', { timeout: 10000 });
    // A fresh round of time requests after the reconnect.
    await victim.waitForFunction((old) => document.getElementById("sync").dataset.rtt !== old, oldRtt);
    // Back in step with the reference page (within two frames: see the seek test).
    for (const row of await spreads([reference, victim], 4)) {
      assert.ok(Math.abs(row[1]) <= 2, `frames apart after the reconnect: ${row}`);
    }
    assert.ok((await frame()) > held, "back on the shared playhead");
    await reference.close();
    await victim.close();
  });
});

function report(mode, rows) {
  DELAYS.forEach((delay, n) => {
    const ms = rows.map((r) => r[n] * 40);
    const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
    const worst = Math.max(...ms.map(Math.abs));
    console.log(`sync ${mode} delay ${delay} ms: mean ${mean.toFixed(0)} ms, worst ${worst} ms from the 5 ms page`);
  });
}
