// The viewer as a fan uses it, in headless Chromium against a real hub, at 1400×900 (desktop)
// and 390×844 (phone): nothing overflows, the track keeps its room on a phone, following a
// driver shows live telemetry, a safety car shows a banner, the finish shows the
// classification, and the home page starts a session whose watch link plays.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { ADMIN, launchBrowser, overflowing, seek, startHub } from "../scripts/harness.mjs";

const DESKTOP = { width: 1400, height: 900 };
const PHONE = { width: 390, height: 844 };
const SIZES = [
  ["desktop", DESKTOP],
  ["phone", PHONE],
  ["phone in landscape", { width: 844, height: 390 }],
  ["tablet", { width: 820, height: 1180 }],
  ["smallest phone", { width: 360, height: 740 }],
];
// A race with a safety car period (this seed on this circuit has one) and twenty cars.
const RACE = ["--laps", "8", "--drivers", "20", "--seed", "2", "--circuit", "gb-1948"];

let hub;
let browser;
let race; // {meta, token, sc}

async function open(path, viewport = DESKTOP) {
  const phone = Math.min(viewport.width, viewport.height) < 500;
  const context = await browser.newContext({ viewport, hasTouch: phone, isMobile: phone });
  const page = await context.newPage();
  page.on("pageerror", (error) => assert.fail(`page error on ${path}: ${error.message}`));
  await page.goto(hub.base + path);
  return page;
}

const close = (page) => page.context().close();
const frameOf = (page) => page.evaluate(() => Number(document.body.dataset.frame));

describe("the viewer for fans", () => {
  before(async () => {
    hub = await startHub(["--demo-laps", "2"]);
    browser = await launchBrowser();
    await hub.upload("flagged", RACE);
    const created = await (await hub.admin("POST", "/api/sessions", { race: "flagged", id: "flagged" })).json();
    const meta = await (await fetch(`${hub.base}/api/races/flagged`)).json();
    const sc = meta.track_status.find((i) => i.status === "safety_car");
    assert.ok(sc, "the race has a safety car period");
    race = { meta, token: created.control_token, sc };
    // Into the race: the cars are moving.
    await seek(browser, hub.base, "demo", hub.token, 1500);
  });

  after(async () => {
    await browser?.close();
    hub?.stop();
  });

  for (const [name, viewport] of SIZES) {
    test(`nothing overflows on the ${name}, following a driver, with the controls`, async () => {
      const page = await open(`/sessions/demo?token=${hub.token}`, viewport);
      await page.waitForSelector('body[data-cars="20"]');
      await page.locator("#controls").waitFor();
      await page.locator("#leaderboard tbody tr").first().click();
      await page.locator("#telemetry").waitFor();
      await page.waitForTimeout(300);
      assert.deepEqual(await overflowing(page), []);
      const canvas = await page.locator("#track").boundingBox();
      if (viewport.width < 500) {
        assert.ok(canvas.height >= 300, `the track is ${canvas.height} px tall on a phone`);
        assert.ok(canvas.width >= 360, `the track is ${canvas.width} px wide on a phone`);
        // The lap pill stays on one line.
        const lap = await page.locator("#lap").boundingBox();
        assert.ok(lap.height < 30, `the lap pill is ${lap.height} px tall`);
      } else if (viewport === DESKTOP) {
        assert.ok(canvas.width >= 900 && canvas.height >= 600, `track ${canvas.width}×${canvas.height}`);
      } else {
        assert.ok(canvas.width >= 400 && canvas.height >= 250, `track ${canvas.width}×${canvas.height}`);
      }
      await close(page);
    });

    test(`the home page fits the ${name}`, async () => {
      const page = await open("/", viewport);
      await page.locator("#races .card").first().waitFor();
      await page.locator("#sessions .card").first().waitFor();
      assert.deepEqual(await overflowing(page), []);
      await close(page);
    });
  }

  test("following a driver shows telemetry that changes, and survives a reload; Esc releases it", async () => {
    const page = await open("/sessions/demo");
    await page.waitForSelector('body[data-cars="20"]');
    const row = page.locator("#leaderboard tbody tr").nth(3);
    const code = await row.locator(".code").textContent();
    await row.click();
    await page.waitForSelector(`body[data-focus="${code}"]`);
    const panel = page.locator("#telemetry");
    assert.ok(await panel.isVisible());
    assert.equal(await panel.locator(".tm-code").textContent(), code);
    assert.ok(await row.evaluate((tr) => tr.classList.contains("focused")));
    const read = () =>
      panel.evaluate((p) => Object.fromEntries([...p.querySelectorAll("[data-field]")].map((el) => [el.dataset.field, el.textContent])));
    const seen = [];
    for (let k = 0; k < 8; k++) {
      seen.push(await read());
      await page.waitForTimeout(250);
    }
    const first = seen[0];
    assert.match(first.speed, /^\d+$/);
    assert.match(first.gear, /^[N1-8]$/);
    assert.match(first.throttle, /^\d+%$/);
    assert.match(first.brake, /^\d+%$/);
    assert.match(first.drs, /^DRS (off|open|ready)$/);
    assert.match(first.tyre, /^[SMHIW?] · \d+ laps?$/);
    assert.match(first.lap, /^\d+ \/ 2$/);
    assert.match(first.ahead, /^(Leader|\+\d+\.\d)$/);
    assert.match(first.behind, /^(–|−\d+\.\d)$/);
    const speeds = new Set(seen.map((s) => s.speed));
    assert.ok(speeds.size > 1, `the speed changes while the race plays: ${[...speeds]}`);

    // Per viewer: another viewer follows nobody.
    const other = await open("/sessions/demo");
    await other.waitForSelector('body[data-cars="20"]');
    assert.equal(await other.evaluate(() => document.body.dataset.focus || ""), "");
    assert.ok(await other.locator("#telemetry").isHidden());
    await close(other);

    // Kept in the tab: a reload follows the same driver.
    await page.reload();
    await page.waitForSelector(`body[data-focus="${code}"]`);
    assert.ok(await page.locator("#telemetry").isVisible());
    await page.keyboard.press("Escape");
    await page.waitForSelector('body[data-focus=""]');
    assert.ok(await page.locator("#telemetry").isHidden());

    // A tap on a car focuses it, a second tap releases it.
    const box = await page.locator("#track").boundingBox();
    const spot = await page.evaluate(() => window.replayHubCars?.().isolated);
    assert.ok(spot, "the page says where a car is drawn");
    await page.mouse.click(box.x + spot.x, box.y + spot.y);
    await page.waitForSelector(`body[data-focus="${spot.code}"]`);
    await page.mouse.click(box.x + spot.x, box.y + spot.y);
    await page.waitForSelector('body[data-focus=""]');
    await close(page);
  });

  test("a safety car shows a banner and colours the track outline", async () => {
    const frame = Math.round(race.sc.start_t * race.meta.fps) + 50;
    await seek(browser, hub.base, "flagged", race.token, frame);
    for (const viewport of [DESKTOP, PHONE]) {
      const page = await open("/sessions/flagged", viewport);
      await page.waitForSelector("body[data-flag=safety_car]");
      const banner = page.locator("#flag");
      assert.ok(await banner.isVisible());
      assert.match(await banner.textContent(), /SC\s+SAFETY CAR/);
      assert.deepEqual(await overflowing(page), []);
      await close(page);
    }
    // Marked on the controller's slider too, with lap ticks and pit stops.
    const controller = await open(`/sessions/flagged?token=${race.token}`);
    await controller.locator("#controls").waitFor();
    assert.equal(await controller.locator("#timeline-marks .mark.safety_car").count(), 1);
    const laps = await controller.locator("#timeline-scale .tick").count();
    assert.equal(laps, race.meta.total_laps, "a tick per lap");
    assert.ok((await controller.locator("#timeline-scale .time").count()) >= 2, "time labels");
    await controller.locator("#timeline").hover({ position: { x: 200, y: 10 } });
    const preview = await controller.locator("#timeline-preview").textContent();
    assert.match(preview, /^Lap \d+ · \d:\d\d:\d\d$/);
    await close(controller);
  });

  test("the finish shows the chequered flag and the final classification", async () => {
    await seek(browser, hub.base, "flagged", race.token, race.meta.total_frames - 40);
    const page = await open("/sessions/flagged");
    await page.waitForSelector("body[data-finished=true]");
    const finish = page.locator("#finish");
    assert.match(await finish.locator("h2").textContent(), /Chequered flag/);
    const rows = await finish.locator("li").allTextContents();
    assert.equal(rows.length, 20);
    assert.match(rows[0], /^1[A-Z]{3}.*Winner$/);
    assert.equal(await page.locator("#connection").textContent(), "finished");
    await close(page);
  });

  test("the home page lists races and starts a session with the admin token; its watch link plays", async () => {
    const page = await open("/");
    const card = page.locator('#races .card[data-race="flagged"]');
    await card.waitFor();
    assert.match(await card.textContent(), /8 laps · 20 drivers/);
    assert.equal(await card.locator("button").count(), 0, "no start button without the token");
    const demo = page.locator('#sessions .card[data-session="demo"]');
    await demo.waitFor();
    assert.match(await demo.textContent(), /watching · (▶ playing at [\d.]+×|❚❚ paused) · loops/);

    await page.fill("#admin-token", "wrong-token");
    await page.click("#admin-save");
    await card.locator("button[type=submit]").click();
    await page.locator("#admin-state.error").waitFor();
    assert.match(await page.locator("#admin-state").textContent(), /refused/);
    // A refused token is forgotten.
    assert.equal(await page.evaluate(() => document.body.dataset.admin), "false");

    await page.fill("#admin-token", ADMIN);
    await page.click("#admin-save");
    await card.locator('input[type="text"]').fill("from-home");
    await card.locator("button[type=submit]").click();
    const watch = await page.locator("#watch-link").getAttribute("href");
    const control = await page.locator("#control-link").getAttribute("href");
    assert.equal(watch, `${hub.base}/sessions/from-home`);
    assert.match(control, new RegExp(`^${hub.base}/sessions/from-home\\?token=[0-9a-f]{32}$`));
    // Kept in the tab: a reload still has it.
    await page.reload();
    await page.locator('#races .card[data-race="flagged"] button[type=submit]').waitFor();
    await close(page);

    const viewer = await open(new URL(watch).pathname);
    await viewer.waitForSelector('body[data-cars="20"]');
    assert.equal(await viewer.title(), "Generated Grand Prix · replay-hub");
    const start = await frameOf(viewer);
    await viewer.waitForFunction((f) => Number(document.body.dataset.frame) > f + 25, start);
    await close(viewer);
    assert.equal((await hub.admin("DELETE", "/api/sessions/from-home")).status, 204);
  });

  test("keyboard: space pauses and plays, arrows seek, brackets change the speed", async () => {
    const page = await open(`/sessions/demo?token=${hub.token}`);
    await page.locator("#controls").waitFor();
    await page.waitForSelector('body[data-playing="true"]');
    await page.locator("body").press(" ");
    await page.waitForSelector('body[data-playing="false"]');
    const paused = await frameOf(page);
    await page.keyboard.press("ArrowRight");
    await page.waitForFunction((f) => Number(document.body.dataset.frame) >= f + 100, paused);
    await page.keyboard.press("]");
    await page.waitForFunction(() => document.getElementById("speed").value === "2");
    await page.keyboard.press("[");
    await page.waitForFunction(() => document.getElementById("speed").value === "1");
    await page.keyboard.press(" ");
    await page.waitForSelector('body[data-playing="true"]');
    await close(page);
  });
});
