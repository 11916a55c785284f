// The session page: draws the track and the cars on a canvas at the display's refresh rate,
// interpolating between the 25 FPS frames the worker decodes, and keeps the leaderboard, clock,
// lap counter and connection state current. With a control token it shows the controls.
// It exposes what it drew on document.body.dataset for tests (cars, frame, playing).
// The race-control ticker, the weather and the jump controls live in events.js; the
// leaderboard, the followed driver's telemetry, car labels, flags, the finish, the slider's
// scale and the keyboard in their own modules, which this file calls with the frame it shows.
import { createTicker, loadTimeline, markTimeline, setUpJumps } from "./events.js";
import { createFinish } from "./finish.js";
import { createFlags } from "./flags.js";
import { createFocus } from "./focus.js";
import { clock } from "./format.js";
import { setUpKeys } from "./keys.js";
import { createLapTracker } from "./laps.js";
import { carAt, drawCars } from "./labels.js";
import { createLeaderboard } from "./leaderboard.js";
import { createTelemetry } from "./telemetry.js";
import { setUpTimeline } from "./timeline.js";

import { localNow } from "./clock.js";
import { dueAt, WindowBuffer } from "./playback.js";

const SPEEDS = [0.25, 0.5, 1, 2, 4, 8, 16];
// Push mode: frames are shown this far behind their arrival, so there is always a next one to
// move toward. Look-ahead mode (the default; ?mode=push for the other) shows each frame at its
// moment on the hub's clock instead, the same moment on every viewer.
const DELAY_MS = 100;
const mode = new URLSearchParams(location.search).get("mode") === "push" ? "push" : "lookahead";
// A window this late (ms) is said so on the page; until then the last frame is simply held.
const STALL_NOTICE_MS = 80;

const sessionId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

let meta = null;
let field = {};
let frames = []; // {i, t, lap, drivers, at}, oldest first, current epoch only
let state = null;
let view = null; // track-to-canvas transform
let dragging = false;
let raceTimeline = { events: [], weather: [] };
let showEvents = () => {}; // shows the ticker and weather as of a frame
let shownFrame = 0; // the frame on screen: nothing later is shown anywhere
let looping = false; // the session plays again after the finish
let views = null; // the modules showing the frame on screen, once the fields are known
let focus = null;
let lastShown = null; // the frame the views last showed
let cars = []; // where the cars were drawn: {x, y, n, order}
let trackStatus = "green";
let control = null; // the controller's commands, once the hub says this viewer may send them
let totalFrames = 1;
const windows = new WindowBuffer(); // look-ahead: the current epoch's frames
let hubClock = null; // look-ahead: {offset, rtt} to the hub's clock, from the worker
let held = null; // look-ahead: what was drawn last, held while a window is late
let lateSince = null;

async function start() {
  const session = await fetch(`/api/sessions/${encodeURIComponent(sessionId)}`).catch(() => null);
  if (!session?.ok) {
    const heading = session?.status === 404 ? "No such session" : "The hub did not answer";
    $("race-name").textContent = heading;
    document.title = `${heading} · replay-hub`;
    showEnded(
      session?.status === 404
        ? `No session "${sessionId}" on this hub: the session list is at /.`
        : "The hub did not answer.",
    );
    return;
  }
  const info = await session.json();
  looping = Boolean(info.loop);
  // The metadata carries a strong ETag and a long max-age: fetched once, then from the cache.
  meta = await (await fetch(`/api/races/${encodeURIComponent(info.race)}`)).json();
  $("race-name").textContent = meta.name;
  document.title = `${meta.name} · replay-hub`;
  raceTimeline = await loadTimeline(info.race).catch(() => raceTimeline);
  showEvents = createTicker($("ticker"), $("weather"), raceTimeline);
  window.addEventListener("resize", resize);
  resize();
  $("track").addEventListener("click", pickCar);
  setUpKeys({ release: () => focus?.clear(), control: { enabled: () => control !== null, ...controlKeys() } });

  const worker = new Worker("/assets/worker.js", { type: "module" });
  worker.onmessage = (event) => receive(event.data, worker);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  createSyncIndicator();
  worker.postMessage({
    type: "connect",
    mode,
    url: `${scheme}://${location.host}/ws/sessions/${encodeURIComponent(sessionId)}${query}`,
    sessionUrl: `/api/sessions/${encodeURIComponent(sessionId)}`,
  });
  requestAnimationFrame(draw);
}

function receive(message, worker) {
  switch (message.type) {
    case "hello":
      field = Object.fromEntries(message.fields.map((name, index) => [name, index]));
      if (!views) setUpViews();
      $("timeline").max = String(message.total_frames - 1);
      totalFrames = message.total_frames;
      frames = [];
      windows.clear();
      applyState(message.state);
      if (message.can_control) setUpControls(worker);
      break;
    case "state":
      // A new epoch makes buffered frames stale (a seek, a pause): drop them.
      frames = [];
      windows.clear();
      applyState(message);
      break;
    case "window":
      // Windows of an older epoch are stale; the worker keeps the socket's order.
      if (state && message.epoch === state.epoch) windows.add(message.frames);
      break;
    case "clock":
      hubClock = message;
      showSync();
      break;
    case "frame":
      message.at = performance.now();
      frames.push(message);
      if (frames.length > 25) frames.shift();
      break;
    case "status":
      $("connection").textContent =
        message.retryIn ? `reconnecting in ${(message.retryIn / 1000).toFixed(1)} s` : message.status;
      $("connection").dataset.status = message.status;
      break;
    case "ended":
      showEnded(message.reason);
      break;
    case "error":
      console.warn("hub:", message.code, message.message);
      break;
  }
}

function applyState(next) {
  state = next;
  document.body.dataset.playing = String(next.playing);
  $("play").textContent = next.playing ? "Pause" : "Play";
  $("speed").value = String(next.speed);
  if (!dragging) $("timeline").value = String(next.frame);
  // A seek back must take the ticker back at once, before the next frame arrives.
  shownFrame = next.frame;
  showEvents(shownFrame);
}

function setUpControls(worker) {
  const send = (command) => worker.postMessage({ type: "command", command });
  control = send;
  $("controls").hidden = false;
  $("play").onclick = () => send({ cmd: state && state.playing ? "pause" : "play" });
  $("speed").onchange = (e) => send({ cmd: "speed", value: Number(e.target.value) });
  const timeline = $("timeline");
  timeline.oninput = () => (dragging = true);
  timeline.onchange = () => {
    dragging = false;
    send({ cmd: "seek", frame: Number(timeline.value) });
  };
  setUpJumps({ timeline: raceTimeline, meta, send, currentFrame: () => shownFrame });
  markTimeline($("timeline-marks"), meta);
  setUpTimeline({ slider: timeline, scale: $("timeline-scale"), pits: $("timeline-pits"), preview: $("timeline-preview"), meta, timeline: raceTimeline });
  window.dispatchEvent(new Event("resize")); // the footer takes room from the track
}

// What the keyboard shortcuts send (keys.js calls these only for a controller).
function controlKeys() {
  return {
    playPause: () => control({ cmd: state && state.playing ? "pause" : "play" }),
    seekBy: (seconds) => {
      const frame = Math.round(shownFrame + seconds * meta.fps);
      control({ cmd: "seek", frame: Math.max(0, Math.min(meta.total_frames - 1, frame)) });
    },
    speedStep: (step) => {
      const now = SPEEDS.indexOf(state ? state.speed : 1);
      const next = SPEEDS[Math.max(0, Math.min(SPEEDS.length - 1, (now < 0 ? 2 : now) + step))];
      control({ cmd: "speed", value: next });
    },
  };
}

// The leaderboard, telemetry, flags and finish, fed with the frame on screen.
function setUpViews() {
  const laps = createLapTracker(meta, field, raceTimeline);
  let leaderboard = null;
  let telemetry = null;
  focus = createFocus(sessionId, meta, (n) => {
    leaderboard.setFocused(n);
    telemetry.show(n);
    if (lastShown) telemetry.update(lastShown);
  });
  leaderboard = createLeaderboard($("leaderboard"), meta, field, laps, (n) => focus.toggle(n));
  telemetry = createTelemetry($("telemetry"), meta, field, laps, () => focus.clear());
  const flags = createFlags($("flag"), meta, (status) => {
    trackStatus = status;
    if (view) renderTrack();
  });
  const finish = createFinish($("finish"), $("connection"), meta, field);
  views = { laps, leaderboard, telemetry, flags, finish };
  focus.restore();
}

function showFrame(frame) {
  views.laps.observe(frame);
  views.leaderboard.update(frame);
  views.telemetry.update(frame);
  views.flags.update(frame);
  views.finish.update(frame, looping);
  // Written only when they change: the same text set again still costs a layout.
  const lap = `Lap ${Math.min(frame.lap, meta.total_laps)} / ${meta.total_laps}`;
  if ($("lap").textContent !== lap) $("lap").textContent = lap;
  const time = clock(frame.t);
  if ($("clock").textContent !== time) $("clock").textContent = time;
  if (!dragging && control) $("timeline").value = String(frame.i);
}

// Where the cars were last drawn, in CSS pixels of the canvas, and the one farthest from the
// others: for tests and for anyone poking at the page from the console.
window.replayHubCars = () => {
  const ratio = view ? view.ratio : 1;
  const list = cars.map((c) => ({ code: meta.drivers[c.n].code, x: c.x / ratio, y: c.y / ratio }));
  let isolated = null;
  let room = -1;
  for (const c of list) {
    const nearest = Math.min(...list.filter((o) => o !== c).map((o) => Math.hypot(o.x - c.x, o.y - c.y)));
    if (nearest > room) [isolated, room] = [c, nearest];
  }
  return { cars: list, isolated };
};

// A click or tap on a car follows it (again: stops following it).
function pickCar(event) {
  if (!focus || !view) return;
  const box = event.currentTarget.getBoundingClientRect();
  const x = (event.clientX - box.left) * view.ratio;
  const y = (event.clientY - box.top) * view.ratio;
  const n = carAt(cars, x, y, 18 * view.ratio);
  if (n >= 0) focus.toggle(n);
}

function showEnded(reason) {
  $("ended").textContent = reason;
  $("ended").hidden = false;
  $("connection").textContent = "ended";
  $("connection").dataset.status = "ended";
  $("controls").hidden = true;
}

// --- drawing ---------------------------------------------------------------------------------

function resize() {
  const canvas = $("track");
  const ratio = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(height * ratio));
  const b = meta.track.bounds;
  const pad = 30 * ratio;
  const scale = Math.min(
    (canvas.width - 2 * pad) / (b.x_max - b.x_min),
    (canvas.height - 2 * pad) / (b.y_max - b.y_min),
  );
  const offsetX = (canvas.width - scale * (b.x_max - b.x_min)) / 2;
  const offsetY = (canvas.height - scale * (b.y_max - b.y_min)) / 2;
  view = {
    ratio,
    x: (x) => offsetX + (x - b.x_min) * scale,
    // Screen y grows downward; track y grows upward.
    y: (y) => canvas.height - offsetY - (y - b.y_min) * scale,
  };
  renderTrack();
}

// The static track, on its own canvas under the cars': drawn again only on a resize or a change
// of track status, never per frame.
function renderTrack() {
  const image = $("track-bg");
  image.width = $("track").width;
  image.height = $("track").height;
  const g = image.getContext("2d");
  const t = meta.track;
  const path = (xs, ys) => {
    g.beginPath();
    xs.forEach((x, n) => (n ? g.lineTo(view.x(x), view.y(ys[n])) : g.moveTo(view.x(x), view.y(ys[n]))));
    g.closePath();
  };
  g.lineJoin = "round";
  path(t.centre_x, t.centre_y);
  g.strokeStyle = "#3a3f47";
  g.lineWidth = 14 * view.ratio;
  g.stroke();
  // Under a yellow, SC, VSC or red flag the edges take the flag's colour (the banner names it).
  const flag = views?.flags.colour(trackStatus);
  g.lineWidth = (flag ? 2.5 : 1) * view.ratio;
  g.strokeStyle = flag || "#6b7280";
  if (trackStatus === "virtual_safety_car") g.setLineDash([8 * view.ratio, 6 * view.ratio]);
  path(t.inner_x, t.inner_y);
  g.stroke();
  path(t.outer_x, t.outer_y);
  g.stroke();
  g.setLineDash([]);
  // Start/finish line.
  g.fillStyle = "#fff";
  g.fillRect(view.x(t.centre_x[0]) - 3 * view.ratio, view.y(t.centre_y[0]) - 3 * view.ratio, 6 * view.ratio, 6 * view.ratio);
}

// The two frames around the moment shown (DELAY_MS ago), and how far between them.
function framesAt(now) {
  const target = now - DELAY_MS;
  if (frames.length === 0) return null;
  for (let n = frames.length - 1; n > 0; n--) {
    if (frames[n - 1].at <= target) {
      const a = frames[n - 1];
      const b = frames[n];
      return [a, b, Math.min(1, Math.max(0, (target - a.at) / Math.max(1, b.at - a.at)))];
    }
  }
  return [frames[0], frames[0], 0];
}

function draw(now) {
  requestAnimationFrame(draw);
  const canvas = $("track");
  const g = canvas.getContext("2d", { desynchronized: true });
  if (!view) return;
  g.clearRect(0, 0, canvas.width, canvas.height);
  const around = mode === "lookahead" ? scheduled() : framesAt(now);
  if (!around) return;
  const [a, b, k] = around;
  // Push shows the newest frame it moves toward; look-ahead the frame due on the shared clock.
  const shown = mode === "lookahead" ? a : b;
  const fx = field.x;
  const fy = field.y;
  const fp = field.position;
  cars = meta.drivers.map((driver, n) => {
    const da = a.drivers[n];
    const db = b.drivers[n];
    const x = view.x(da[fx] + (db[fx] - da[fx]) * k);
    const y = view.y(da[fy] + (db[fy] - da[fy]) * k);
    return { x, y, n, order: db[fp] };
  });
  const labels = drawCars(g, cars, meta, focus ? focus.get() : -1, view.ratio);
  document.body.dataset.cars = String(cars.length);
  document.body.dataset.labels = String(labels);
  document.body.dataset.frame = String(shown.i);
  shownFrame = shown.i;
  showEvents(shown.i);
  if (shown !== lastShown && views) {
    lastShown = shown;
    showFrame(shown);
  }
}

// --- look-ahead playback -----------------------------------------------------------------------

// The frames to draw now: the one due on the hub's clock and the next, or, while the window it
// needs has not arrived, what was drawn last (never a frame late: the page snaps back to the
// shared playhead as soon as the data is there).
function scheduled() {
  if (!hubClock || !state) return held;
  const due = dueAt(state, localNow() + hubClock.offset, totalFrames - 1);
  const around = windows.at(due.frame, due.position);
  if (!around) {
    lateSince ??= performance.now();
    if (performance.now() - lateSince >= STALL_NOTICE_MS) setStalled(true);
    return held;
  }
  lateSince = null;
  setStalled(false);
  held = around;
  return around;
}

function createSyncIndicator() {
  const sync = document.createElement("span");
  sync.id = "sync";
  sync.className = "sync";
  sync.title = "offset to the hub's clock and round trip; every viewer shows the same frame";
  sync.style.cssText = "margin-left:.6em;font-size:.8em;opacity:.75;font-variant-numeric:tabular-nums";
  sync.textContent = mode === "lookahead" ? "sync…" : "push";
  $("connection").after(sync);
}

function showSync() {
  const sync = $("sync");
  if (!sync || !hubClock) return;
  sync.dataset.offset = hubClock.offset.toFixed(1);
  sync.dataset.rtt = hubClock.rtt.toFixed(1);
  if (document.body.dataset.stalled === "true") return;
  const sign = hubClock.offset >= 0 ? "+" : "−";
  sync.textContent = `sync ${sign}${Math.abs(hubClock.offset).toFixed(1)} ms · rtt ${hubClock.rtt.toFixed(0)} ms`;
}

function setStalled(stalled) {
  if ((document.body.dataset.stalled === "true") === stalled) return;
  document.body.dataset.stalled = String(stalled);
  const sync = $("sync");
  if (stalled && sync) sync.textContent = "waiting for data: holding the last frame";
  else showSync();
}

start().catch((error) => showEnded(`Could not load the session: ${error.message}`));
