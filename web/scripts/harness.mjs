// Starts a real hub (the built binary) on a free port over a fresh data directory, and headless
// Chromium (Debian's, /usr/bin/chromium) through playwright-core: shared by the browser tests,
// the screenshot script and the page benchmark.
// REPLAY_HUB_BIN overrides the binary (default ../target/debug/replay-hub), CHROMIUM the browser.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const BIN = process.env.REPLAY_HUB_BIN || new URL("../../target/debug/replay-hub", import.meta.url).pathname;
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ADMIN = "browser-test-admin";

export async function startHub(extra = []) {
  const dataDir = mkdtempSync(join(tmpdir(), "replay-hub-web-"));
  const hub = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir, "--admin-token", ADMIN, ...extra], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  let base = null;
  let token = null;
  const lines = createInterface({ input: hub.stdout });
  for await (const line of lines) {
    const listening = line.match(/^replay-hub listening on (http:\/\/\S+)/);
    if (listening) base = listening[1];
    const control = line.match(/^control: +\S+\?token=(\S+)/);
    if (control) token = control[1];
    if (base && (token || extra.includes("--demo-session"))) break;
  }
  if (!base) throw new Error("the hub did not print its address");
  const admin = (method, path, body) =>
    fetch(base + path, {
      method,
      headers: { Authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: body && JSON.stringify(body),
    });
  // Generates a race with the hub's own generator and uploads it.
  const upload = async (id, args) => {
    const file = join(dataDir, `${id}.upload`);
    execFileSync(BIN, ["generate", ...args, "--id", id, "--quiet", "--out", file]);
    const body = readFileSync(file);
    const send = () => fetch(`${base}/api/races/${id}`, { method: "PUT", headers: { Authorization: `Bearer ${ADMIN}` }, body });
    // Generating takes about as long as the hub keeps an idle connection open: a reused one
    // may be closed under the request, so it is sent once more on a new one.
    const put = await send().catch(send);
    rmSync(file, { force: true });
    if (put.status !== 201 && put.status !== 200) throw new Error(`upload ${id}: ${put.status}`);
  };
  return {
    base,
    token,
    admin,
    upload,
    stop() {
      hub.kill();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// Seeks a session with its page's own slider (the controller's view), and waits for it.
export async function seek(browser, base, session, token, frame) {
  const page = await browser.newPage();
  await page.goto(`${base}/sessions/${session}?token=${token}`);
  await page.locator("#controls").waitFor();
  await page.locator("#timeline").evaluate((slider, f) => {
    slider.value = String(f);
    slider.dispatchEvent(new Event("change"));
  }, frame);
  await page.waitForFunction((f) => Math.abs(Number(document.body.dataset.frame) - f) < 200, frame);
  await page.close();
}

// Elements that stick out of their container (or the page) by more than a pixel, from the DOM.
export async function overflowing(page) {
  return page.evaluate(() => {
    const out = [];
    const width = document.documentElement.clientWidth;
    if (document.documentElement.scrollWidth > width + 1) out.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${width}`);
    for (const el of document.querySelectorAll("body *")) {
      const style = getComputedStyle(el);
      if (style.display === "none" || style.visibility === "hidden" || el.closest("[hidden]")) continue;
      const box = el.getBoundingClientRect();
      if (box.width === 0 && box.height === 0) continue;
      const name = el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${el.className}`;
      if (box.right > width + 1 || box.left < -1) out.push(`${name} outside the page (${box.left.toFixed(0)}..${box.right.toFixed(0)})`);
      // Text wider than its own box (unless the box clips it on purpose, with an ellipsis).
      if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0 && style.overflowX === "visible" && el.children.length === 0)
        out.push(`${name} text overflows (${el.scrollWidth} > ${el.clientWidth}): ${el.textContent.slice(0, 40)}`);
      const parent = el.parentElement;
      if (parent && parent !== document.body && getComputedStyle(parent).overflowX === "visible") {
        const p = parent.getBoundingClientRect();
        if (box.right > p.right + 1 || box.left < p.left - 1) out.push(`${name} sticks out of its parent (${box.left.toFixed(0)}..${box.right.toFixed(0)} in ${p.left.toFixed(0)}..${p.right.toFixed(0)})`);
      }
    }
    return out;
  });
}
