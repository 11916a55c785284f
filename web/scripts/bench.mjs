// The watch page's weight and drawing cost, for BENCHMARKS.md, against a real hub in headless
// Chromium at 1400×900:
// - bytes transferred for the page itself (HTML, JS, CSS, icon) before any frame or race data,
//   as the browser counted them (the hub sends them uncompressed), and each gzipped (level 9,
//   what a compressing proxy would send);
// - main-thread time per animation frame with 20 cars, from a Chromium performance trace
//   (devtools.timeline): the requestAnimationFrame callback alone, and all main-thread work
//   (every top-level task) divided by the frames drawn, while a driver is followed.
// Run: cargo build --release && cd web && REPLAY_HUB_BIN=../target/release/replay-hub node scripts/bench.mjs
import { gzipSync } from "node:zlib";
import { launchBrowser, seek, startHub } from "./harness.mjs";

const TRACE_SECONDS = Number(process.env.TRACE_SECONDS || 10);
const hub = await startHub(["--demo-laps", "3"]);
const browser = await launchBrowser();
try {
  await seek(browser, hub.base, "demo", hub.token, 2000);
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const client = await page.context().newCDPSession(page);
  await client.send("Network.enable");
  const requests = new Map();
  client.on("Network.responseReceived", (e) => requests.set(e.requestId, { url: e.response.url, type: e.type }));
  client.on("Network.loadingFinished", (e) => {
    const r = requests.get(e.requestId);
    if (r) r.bytes = e.encodedDataLength;
  });
  await page.goto(`${hub.base}/sessions/demo`);
  await page.waitForSelector('body[data-cars="20"]');
  await page.locator("#leaderboard tbody tr").nth(4).click();
  await page.waitForTimeout(1000);

  const rows = [];
  for (const r of requests.values()) {
    const path = new URL(r.url).pathname;
    if (path.startsWith("/api/") || path.startsWith("/ws/")) continue;
    const body = Buffer.from(await (await fetch(r.url)).arrayBuffer());
    rows.push({ path, transferred: r.bytes ?? 0, raw: body.length, gzip: gzipSync(body, { level: 9 }).length });
  }
  // The worker's script is fetched by the worker, which this page's session does not see.
  const worker = Buffer.from(await (await fetch(`${hub.base}/assets/worker.js`)).arrayBuffer());
  rows.push({ path: "/assets/worker.js", transferred: worker.length, raw: worker.length, gzip: gzipSync(worker, { level: 9 }).length });
  const total = (key) => rows.reduce((sum, r) => sum + r[key], 0);
  console.log("\nwatch page, before frames (bytes):");
  console.log("path".padEnd(28), "transferred".padStart(12), "gzip -9".padStart(10));
  for (const r of rows) console.log(r.path.padEnd(28), String(r.transferred).padStart(12), String(r.gzip).padStart(10));
  console.log("total".padEnd(28), String(total("transferred")).padStart(12), String(total("gzip")).padStart(10));

  await browser.startTracing(page, { categories: ["devtools.timeline", "disabled-by-default-devtools.timeline"] });
  await page.waitForTimeout(TRACE_SECONDS * 1000);
  const trace = JSON.parse((await browser.stopTracing()).toString());
  const events = trace.traceEvents;
  const threadName = new Map(events.filter((e) => e.name === "thread_name").map((e) => [`${e.pid}:${e.tid}`, e.args.name]));
  // The page's main thread: the one that ran the animation frame callbacks.
  const rafs = events.filter((e) => e.name === "FireAnimationFrame" && e.ph === "X");
  const counts = new Map();
  for (const e of rafs) counts.set(`${e.pid}:${e.tid}`, (counts.get(`${e.pid}:${e.tid}`) || 0) + 1);
  const [main] = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
  const onMain = (e) => `${e.pid}:${e.tid}` === main;
  const callbacks = rafs.filter(onMain).map((e) => e.dur / 1000).sort((a, b) => a - b);
  // Main-thread busy time: the union of its top-level tasks (nested ones counted once).
  const tasks = events.filter((e) => onMain(e) && e.ph === "X" && e.name.endsWith("RunTask")).sort((a, b) => a.ts - b.ts);
  let busy = 0;
  let end = -Infinity;
  for (const e of tasks) {
    const from = Math.max(e.ts, end);
    if (e.ts + e.dur > from) busy += (e.ts + e.dur - from) / 1000;
    end = Math.max(end, e.ts + e.dur);
  }
  // The renderer's own work for a frame: script in the rAF callback, style, layout, paint,
  // and handing the frame to the compositor.
  const RENDERING = ["FireAnimationFrame", "UpdateLayoutTree", "Layout", "PrePaint", "Paint", "Layerize", "Commit", "HandlePostMessage"];
  const rendering = events.filter((e) => onMain(e) && e.ph === "X" && RENDERING.includes(e.name)).reduce((sum, e) => sum + e.dur / 1000, 0);
  const pct = (p) => callbacks[Math.min(callbacks.length - 1, Math.floor(p * callbacks.length))];
  const mean = callbacks.reduce((a, b) => a + b, 0) / callbacks.length;
  console.log(`\nmain thread (${threadName.get(main) || main}), ${TRACE_SECONDS} s at 1x, 20 cars, one followed:`);
  console.log(`animation frames: ${callbacks.length} (${(callbacks.length / TRACE_SECONDS).toFixed(1)}/s)`);
  console.log(`rAF callback ms: mean ${mean.toFixed(2)}, p50 ${pct(0.5).toFixed(2)}, p95 ${pct(0.95).toFixed(2)}, max ${callbacks[callbacks.length - 1].toFixed(2)}`);
  console.log(`rendering work per frame ms (rAF + style + layout + paint + commit + worker messages): ${(rendering / callbacks.length).toFixed(2)}`);
  console.log(`main thread busy per frame ms (every task, including the browser's own): ${(busy / callbacks.length).toFixed(2)}`);
  if (process.env.BREAKDOWN) {
    const by = new Map();
    for (const e of events) if (onMain(e) && e.ph === "X" && e.dur) by.set(e.name, (by.get(e.name) || 0) + e.dur / 1000);
    for (const [name, ms] of [...by.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${name}: ${(ms / callbacks.length).toFixed(3)} ms/frame`);
  }
  await page.close();
} finally {
  await browser.close();
  hub.stop();
}
