// Screenshots of the viewer for the README: every state, from the real page in headless
// Chromium at 1400×900 (desktop) and 390×844 (phone; one at 844×390 in landscape), against a
// real hub.
// Run: cargo build && cd web && node scripts/screenshots.mjs   (writes ../docs/screenshots/*.png)
import { mkdirSync } from "node:fs";
import { launchBrowser, seek, startHub } from "./harness.mjs";

const OUT = new URL("../../docs/screenshots/", import.meta.url).pathname;
const DESKTOP = { width: 1400, height: 900 };
const PHONE = { width: 390, height: 844 };

mkdirSync(OUT, { recursive: true });
const hub = await startHub(["--demo-laps", "3"]);
const browser = await launchBrowser();
try {
  // An eventful race at Silverstone: 20 cars and a safety car period (this seed has one).
  const race = "british";
  await hub.upload(race, ["--laps", "8", "--drivers", "20", "--seed", "2", "--circuit", "gb-1948", "--name", "British Grand Prix (generated)"]);
  const meta = await (await fetch(`${hub.base}/api/races/${race}`)).json();
  const sc = meta.track_status.find((i) => i.status === "safety_car");
  if (!sc) throw new Error("the race has no safety car period");
  sc.frame = Math.round(sc.start_t * meta.fps);
  const created = await (await hub.admin("POST", "/api/sessions", { race, id: "eventful" })).json();

  const shot = async (name, viewport, path, ready) => {
    const phone = Math.min(viewport.width, viewport.height) < 500;
    const context = await browser.newContext({ viewport, deviceScaleFactor: 1, hasTouch: phone, isMobile: phone });
    const page = await context.newPage();
    await page.goto(hub.base + path);
    await ready(page);
    await page.screenshot({ path: `${OUT}${name}.png` });
    await context.close();
    console.log(`wrote docs/screenshots/${name}.png`);
  };
  const racing = (page) => page.waitForSelector('body[data-cars="20"]').then(() => page.waitForTimeout(600));
  const follow = async (page) => {
    await racing(page);
    await page.locator("#leaderboard tbody tr").nth(2).click();
    await page.waitForTimeout(800);
  };

  // The demo, a few minutes in; the controller's view with the timeline.
  await seek(browser, hub.base, "demo", hub.token, 2500);
  await shot("desktop-race", DESKTOP, `/sessions/demo?token=${hub.token}`, racing);
  await shot("desktop-follow", DESKTOP, "/sessions/demo", follow);
  await shot("phone-race", PHONE, "/sessions/demo", racing);
  await shot("phone-follow", PHONE, "/sessions/demo", follow);
  await shot("phone-landscape-follow", { width: 844, height: 390 }, `/sessions/demo?token=${hub.token}`, follow);
  // The start: twenty cars on the grid, labels kept apart or counted.
  await seek(browser, hub.base, "eventful", created.control_token, 150);
  await shot("desktop-start", DESKTOP, "/sessions/eventful", racing);
  // A safety car period.
  await seek(browser, hub.base, "eventful", created.control_token, sc.frame + 100);
  await shot("desktop-safety-car", DESKTOP, `/sessions/eventful?token=${created.control_token}`, async (page) => {
    await page.waitForSelector("body[data-flag=safety_car]");
    await racing(page);
  });
  await shot("phone-safety-car", PHONE, "/sessions/eventful", (page) => page.waitForSelector("body[data-flag=safety_car]").then(() => racing(page)));
  // The finish.
  await seek(browser, hub.base, "eventful", created.control_token, meta.total_frames - 30);
  await shot("desktop-finish", DESKTOP, "/sessions/eventful", (page) => page.waitForSelector("body[data-finished=true]"));
  await shot("phone-finish", PHONE, "/sessions/eventful", (page) => page.waitForSelector("body[data-finished=true]"));
  // The home page, with the admin token entered and a session just started.
  const home = async (page) => {
    await page.locator("#races .card").first().waitFor();
    await page.fill("#admin-token", "browser-test-admin");
    await page.click("#admin-save");
    await page.locator("#races .card button[type=submit]").first().click();
    await page.locator("#watch-link").waitFor();
    await page.locator("#watch-link").scrollIntoViewIfNeeded();
  };
  await shot("desktop-home", DESKTOP, "/", home);
  await shot("phone-home", PHONE, "/", home);
  await shot("desktop-unknown-session", DESKTOP, "/sessions/no-such-session", (page) => page.locator("#ended").waitFor());
} finally {
  await browser.close();
  hub.stop();
}
