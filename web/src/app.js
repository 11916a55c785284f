// The session page: draws the track and the cars on a canvas at the display's refresh rate,
// interpolating between the 25 FPS frames the worker decodes, and keeps the leaderboard, clock,
// lap counter and connection state current. With a control token it shows the controls.
// It exposes what it drew on document.body.dataset for tests (cars, frame, playing).
// The race-control ticker, the weather and the jump controls live in events.js.
import { createTicker, loadTimeline, markTimeline, setUpJumps } from "./events.js";
import { localNow } from "./clock.js";
import { dueAt, WindowBuffer } from "./playback.js";

const TYRES = { 0: ["S", "#e8002d"], 1: ["M", "#ffd12e"], 2: ["H", "#f0f0ec"], 3: ["I", "#43b02a"], 4: ["W", "#0067ad"] };
const STATUS = { 1: "PIT", 2: "OUT", 3: "FIN" };
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
let trackImage = null; // the static track, drawn once per resize
let dragging = false;
let rows = [];
let raceTimeline = { events: [], weather: [] };
let showEvents = () => {}; // shows the ticker and weather as of a frame
let shownFrame = 0; // the frame on screen: nothing later is shown anywhere
let totalFrames = 1;
const windows = new WindowBuffer(); // look-ahead: the current epoch's frames
let clock = null; // look-ahead: {offset, rtt} to the hub's clock, from the worker
let held = null; // look-ahead: what was drawn last, held while a window is late
let lateSince = null;
let boardFrame = -1;

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
  // The metadata carries a strong ETag and a long max-age: fetched once, then from the cache.
  meta = await (await fetch(`/api/races/${encodeURIComponent(info.race)}`)).json();
  $("race-name").textContent = meta.name;
  document.title = `${meta.name} · replay-hub`;
  buildLeaderboard();
  raceTimeline = await loadTimeline(info.race).catch(() => raceTimeline);
  showEvents = createTicker($("ticker"), $("weather"), raceTimeline);
  window.addEventListener("resize", resize);
  resize();

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
      clock = message;
      showSync();
      break;
    case "frame":
      message.at = performance.now();
      frames.push(message);
      if (frames.length > 25) frames.shift();
      updateBoard(message);
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
  trackImage = renderTrack(canvas.width, canvas.height);
}

function renderTrack(width, height) {
  const image = document.createElement("canvas");
  image.width = width;
  image.height = height;
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
  g.lineWidth = 1 * view.ratio;
  g.strokeStyle = "#6b7280";
  path(t.inner_x, t.inner_y);
  g.stroke();
  path(t.outer_x, t.outer_y);
  g.stroke();
  // Start/finish line.
  g.fillStyle = "#fff";
  g.fillRect(view.x(t.centre_x[0]) - 3 * view.ratio, view.y(t.centre_y[0]) - 3 * view.ratio, 6 * view.ratio, 6 * view.ratio);
  return image;
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
  const g = canvas.getContext("2d");
  if (!view) return;
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.drawImage(trackImage, 0, 0);
  const around = mode === "lookahead" ? scheduled() : framesAt(now);
  if (!around) return;
  const [a, b, k] = around;
  // Push shows the newest frame it moves toward; look-ahead the frame due on the shared clock.
  const shown = mode === "lookahead" ? a : b;
  const fx = field.x;
  const fy = field.y;
  const r = 6 * view.ratio;
  g.font = `${10 * view.ratio}px system-ui, sans-serif`;
  g.textBaseline = "middle";
  let cars = 0;
  meta.drivers.forEach((driver, n) => {
    const da = a.drivers[n];
    const db = b.drivers[n];
    const x = view.x(da[fx] + (db[fx] - da[fx]) * k);
    const y = view.y(da[fy] + (db[fy] - da[fy]) * k);
    g.beginPath();
    g.arc(x, y, r, 0, 2 * Math.PI);
    g.fillStyle = `rgb(${driver.colour.join(",")})`;
    g.fill();
    g.lineWidth = 1.5 * view.ratio;
    g.strokeStyle = "#111";
    g.stroke();
    g.fillStyle = "#e5e7eb";
    g.fillText(driver.code, x + r + 2 * view.ratio, y);
    cars += 1;
  });
  document.body.dataset.cars = String(cars);
  document.body.dataset.frame = String(shown.i);
  shownFrame = shown.i;
  showEvents(shown.i);
  if (mode === "lookahead" && shown.i !== boardFrame) {
    boardFrame = shown.i;
    updateBoard(shown);
  }
}

// --- look-ahead playback -----------------------------------------------------------------------

// The frames to draw now: the one due on the hub's clock and the next, or, while the window it
// needs has not arrived, what was drawn last (never a frame late: the page snaps back to the
// shared playhead as soon as the data is there).
function scheduled() {
  if (!clock || !state) return held;
  const due = dueAt(state, localNow() + clock.offset, totalFrames - 1);
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
  if (!sync || !clock) return;
  sync.dataset.offset = clock.offset.toFixed(1);
  sync.dataset.rtt = clock.rtt.toFixed(1);
  if (document.body.dataset.stalled === "true") return;
  const sign = clock.offset >= 0 ? "+" : "−";
  sync.textContent = `sync ${sign}${Math.abs(clock.offset).toFixed(1)} ms · rtt ${clock.rtt.toFixed(0)} ms`;
}

function setStalled(stalled) {
  if ((document.body.dataset.stalled === "true") === stalled) return;
  document.body.dataset.stalled = String(stalled);
  const sync = $("sync");
  if (stalled && sync) sync.textContent = "waiting for data: holding the last frame";
  else showSync();
}

// --- leaderboard -----------------------------------------------------------------------------

function buildLeaderboard() {
  const body = $("leaderboard").querySelector("tbody");
  rows = meta.drivers.map(() => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td class="pos"></td><td class="driver"><span class="swatch"></span><span class="code"></span></td><td class="gap"></td><td class="tyre"></td><td class="lap"></td><td class="status"></td>`;
    body.appendChild(tr);
    return tr;
  });
}

function updateBoard(frame) {
  const order = meta.drivers
    .map((driver, n) => ({ driver, d: frame.drivers[n] }))
    .sort((p, q) => p.d[field.position] - q.d[field.position]);
  order.forEach(({ driver, d }, n) => {
    const cells = rows[n].children;
    cells[0].textContent = d[field.position];
    cells[1].firstChild.style.background = `rgb(${driver.colour.join(",")})`;
    cells[1].lastChild.textContent = driver.code;
    cells[1].title = `${driver.number} · ${driver.team}`;
    const retired = d[field.status] === 2;
    cells[2].textContent = retired ? "–" : d[field.position] === 1 ? "Leader" : `+${d[field.gap_to_leader].toFixed(1)}`;
    const [letter, colour] = TYRES[d[field.tyre]] || ["?", "#999"];
    cells[3].textContent = letter;
    cells[3].style.color = colour;
    cells[4].textContent = d[field.lap];
    cells[5].textContent = STATUS[d[field.status]] || "";
  });
  $("lap").textContent = `Lap ${Math.min(frame.lap, meta.total_laps)} / ${meta.total_laps}`;
  const s = Math.max(0, Math.floor(frame.t));
  $("clock").textContent = `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  if (!dragging) $("timeline").value = String(frame.i);
}

start().catch((error) => showEnded(`Could not load the session: ${error.message}`));
