// The web viewer in a real browser: headless Chromium (Debian's, /usr/bin/chromium) driven by
// playwright-core against a real hub started from the built binary on a free port.
// REPLAY_HUB_BIN overrides the binary (default ../target/debug/replay-hub), CHROMIUM the browser.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const BIN = process.env.REPLAY_HUB_BIN || new URL("../../target/debug/replay-hub", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ADMIN = "browser-test-admin";

let hub;
let dataDir;
let base;
let token;
let browser;

async function startHub() {
  dataDir = mkdtempSync(join(tmpdir(), "replay-hub-web-"));
  hub = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir, "--demo-laps", "2", "--admin-token", ADMIN], {
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

async function openPage(path) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (error) => assert.fail(`page error on ${path}: ${error.message}`));
  await page.goto(base + path);
  return page;
}

async function canvasShot(page) {
  return page.locator("#track").screenshot();
}

/// Two screenshots `ms` apart: whether anything on the canvas moved.
async function moved(page, ms) {
  const first = await canvasShot(page);
  await page.waitForTimeout(ms);
  const second = await canvasShot(page);
  return !first.equals(second);
}

async function admin(method, path, body) {
  return fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
}

describe("the web viewer", () => {
  before(async () => {
    await startHub();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    // The race starts with the cars still on the grid: seek into it, with the page's own slider.
    const controller = await openPage(`/sessions/demo?token=${token}`);
    await controller.locator("#controls").waitFor();
    await controller.locator("#timeline").evaluate((slider) => {
      slider.value = "1000";
      slider.dispatchEvent(new Event("change"));
    });
    await controller.waitForFunction(() => Number(document.body.dataset.frame) >= 1000);
    await controller.close();
  });

  after(async () => {
    await browser?.close();
    hub?.kill();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("the session list links to the playing session", async () => {
    const page = await openPage("/");
    const link = page.locator("#sessions a", { hasText: "demo" });
    await link.waitFor();
    assert.equal(await link.getAttribute("href"), "/sessions/demo");
    await page.close();
  });

  test("draws the track and twenty moving cars, with a twenty-row leaderboard", async () => {
    const page = await openPage("/sessions/demo");
    await page.waitForSelector('body[data-cars="20"]');
    await page.waitForSelector("#connection[data-status=live]");
    const rows = page.locator("#leaderboard tbody tr");
    assert.equal(await rows.count(), 20);
    const codes = await page.locator("#leaderboard .code").allTextContents();
    assert.equal(new Set(codes.filter((c) => /^[A-Z]{3}$/.test(c))).size, 20, `codes: ${codes}`);
    assert.match(await page.locator("#lap").textContent(), /^Lap \d+ \/ 2$/);
    assert.ok(await moved(page, 700), "the cars move between two screenshots");
    assert.ok(await page.locator("#controls").isHidden(), "no controls without the token");
    await page.close();
  });

  test("a pause from a controller stops the motion on another viewer, and play resumes it", async () => {
    const controller = await openPage(`/sessions/demo?token=${token}`);
    const viewer = await openPage("/sessions/demo");
    await controller.locator("#controls").waitFor();
    await viewer.waitForSelector('body[data-cars="20"]');
    assert.ok(await moved(viewer, 500), "moving before the pause");

    await controller.locator("#play").click();
    await viewer.waitForSelector('body[data-playing="false"]');
    await viewer.waitForTimeout(300); // the interpolation delay runs out
    assert.ok(!(await moved(viewer, 700)), "nothing moves on the viewer while paused");

    await controller.locator("#play").click();
    await viewer.waitForSelector('body[data-playing="true"]');
    assert.ok(await moved(viewer, 700), "moving again after play");
    await controller.close();
    await viewer.close();
  });

  test("keeps up at 4x speed", async () => {
    const controller = await openPage(`/sessions/demo?token=${token}`);
    const viewer = await openPage("/sessions/demo");
    await controller.locator("#controls").waitFor();
    await viewer.waitForSelector('body[data-cars="20"]');
    await controller.locator("#speed").selectOption("4");
    await viewer.waitForFunction(() => document.getElementById("speed").value === "4");
    const frame = () => viewer.evaluate(() => Number(document.body.dataset.frame));
    const start = await frame();
    await viewer.waitForTimeout(2000);
    const advanced = (await frame()) - start;
    // 4 × 25 frames a second for 2 s is 200 frames; a page falling behind would show far fewer.
    assert.ok(advanced >= 120, `advanced ${advanced} frames in 2 s at 4x`);
    assert.ok(await moved(viewer, 300), "still drawing");
    await controller.locator("#speed").selectOption("1");
    await controller.close();
    await viewer.close();
  });

  test("names an unknown session in its heading, and has an icon", async () => {
    const viewer = await openPage("/sessions/no-such-session");
    await viewer.locator("#ended").waitFor();
    assert.equal(await viewer.locator("#race-name").textContent(), "No such session");
    assert.match(await viewer.locator("#ended").textContent(), /no-such-session/);
    assert.match(await viewer.title(), /No such session/);
    const icon = await viewer.locator('link[rel="icon"]').getAttribute("href");
    const served = await fetch(base + icon);
    assert.equal(served.status, 200);
    assert.match(served.headers.get("content-type"), /image\/svg\+xml/);
    const legacy = await fetch(base + "/favicon.ico", { redirect: "manual" });
    assert.equal(legacy.status, 301);
    assert.equal(legacy.headers.get("location"), icon);
    await viewer.close();
  });

  test("the race-control ticker shows nothing later than the frame on screen, and a next-event jump moves every viewer", async () => {
    const events = await (await fetch(`${base}/api/races/demo/events`)).json();
    const listed = events.events.filter((e) => e.kind !== "lap");
    assert.ok(listed.length > 0, "the demo race has events");
    const controller = await openPage(`/sessions/demo?token=${token}`);
    const viewer = await openPage("/sessions/demo");
    await controller.locator("#controls").waitFor();
    await viewer.waitForSelector('body[data-cars="20"]');
    const shown = (page) =>
      page.evaluate(() => ({
        frame: Number(document.body.dataset.frame),
        ticker: Number(document.body.dataset.tickerFrame),
        rows: [...document.querySelectorAll("#ticker li")].map((li) => Number(li.dataset.frame)),
      }));
    const noSpoilers = async (page) => {
      const s = await shown(page);
      assert.ok(s.rows.every((f) => f <= s.frame), `ticker rows ${s.rows} after frame ${s.frame}`);
      return s;
    };

    // Rewind to the start: nothing has happened yet.
    await controller.locator("#timeline").evaluate((slider) => {
      slider.value = "0";
      slider.dispatchEvent(new Event("change"));
    });
    await viewer.waitForFunction(() => Number(document.body.dataset.frame) < 500);
    await noSpoilers(viewer);
    const first = listed[0].frame;
    if (first > 500) assert.equal((await shown(viewer)).ticker, -1, "an empty ticker at the start");

    // "Next event" takes every viewer to the first event, which tops their ticker.
    await controller.locator("#next-event").click();
    for (const page of [viewer, controller]) {
      await page.waitForFunction((f) => Number(document.body.dataset.frame) >= f, first);
      const s = await noSpoilers(page);
      assert.ok(s.frame < first + 250, `jumped to ${s.frame}, the event is at ${first}`);
      assert.ok(s.ticker >= first && s.ticker <= s.frame, `ticker at ${s.ticker}`);
      assert.equal(await page.locator("#ticker li").first().getAttribute("data-frame"), String(s.ticker));
    }
    assert.ok((await viewer.locator("#ticker li").first().textContent()).length > 3);
    assert.match(await viewer.locator("#weather").textContent(), /Air \d+°C/);
    assert.ok(await viewer.locator("#prev-event").isHidden(), "no jump controls without the token");

    // "Previous event" from there goes back before it, and the ticker follows.
    await controller.locator("#prev-event").click();
    await viewer.waitForFunction((f) => Number(document.body.dataset.frame) < f, first);
    const back = await noSpoilers(viewer);
    assert.ok(back.ticker < first, `ticker at ${back.ticker} after going back before ${first}`);
    await controller.close();
    await viewer.close();
  });

  test("jump to lap N, and safety car periods marked on the slider", async () => {
    // A race with a safety car (this seed has one), uploaded and played in its own session.
    const file = join(dataDir, "eventful.upload");
    execFileSync(BIN, ["generate", "--laps", "8", "--drivers", "10", "--seed", "19", "--id", "eventful", "--quiet", "--out", file]);
    const put = await fetch(`${base}/api/races/eventful`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${ADMIN}` },
      body: readFileSync(file),
    });
    assert.equal(put.status, 201);
    const created = await admin("POST", "/api/sessions", { race: "eventful", id: "eventful" });
    assert.equal(created.status, 201);
    const { control_token } = await created.json();
    const events = await (await fetch(`${base}/api/races/eventful/events`)).json();
    const lap5 = events.events.find((e) => e.kind === "lap" && e.lap === 5).frame;

    const controller = await openPage(`/sessions/eventful?token=${control_token}`);
    const viewer = await openPage("/sessions/eventful");
    await controller.locator("#controls").waitFor();
    const marks = controller.locator("#timeline-marks .mark.safety_car");
    assert.equal(await marks.count(), 1, "one safety car period marked");
    const left = parseFloat(await marks.first().evaluate((m) => m.style.left));
    const sc = events.events.find((e) => e.status === "safety_car").frame;
    const total = (await (await fetch(`${base}/api/races/eventful`)).json()).total_frames;
    assert.ok(Math.abs(left - (100 * sc) / (total - 1)) < 0.5, `mark at ${left}%`);

    await controller.locator("#lap-input").fill("5");
    await controller.locator("#jump-lap").click();
    await viewer.waitForFunction((f) => Number(document.body.dataset.frame) >= f, lap5);
    const frame = await viewer.evaluate(() => Number(document.body.dataset.frame));
    assert.ok(frame < lap5 + 250, `at ${frame}, lap 5 starts at ${lap5}`);
    assert.match(await viewer.locator("#lap").textContent(), /^Lap 5 \/ 8$/);
    await controller.close();
    await viewer.close();
    assert.equal((await admin("DELETE", "/api/sessions/eventful")).status, 204);
  });

  test("says so when the session is deleted", async () => {
    const created = await admin("POST", "/api/sessions", { race: "demo", id: "short-lived" });
    assert.equal(created.status, 201);
    const viewer = await openPage("/sessions/short-lived");
    await viewer.waitForSelector('body[data-cars="20"]');
    const deleted = await admin("DELETE", "/api/sessions/short-lived");
    assert.equal(deleted.status, 204);
    await viewer.locator("#ended").waitFor();
    assert.match(await viewer.locator("#ended").textContent(), /deleted/);
    assert.equal(await viewer.locator("#connection").getAttribute("data-status"), "ended");
    await viewer.close();
  });
});
