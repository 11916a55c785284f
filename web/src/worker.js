// The viewer's network side, off the main thread: owns the WebSocket, syncs the clock with the
// hub (clock.js), decodes frames and windows (codec.js), reconnects with exponential backoff,
// and posts plain objects to the page.
// Page → worker: {type:"connect", url, sessionUrl, mode} | {type:"command", command}
// Worker → page: {type:"status", status, retryIn?} | hello | state | error | frame
//   | {type:"window", epoch, frames} | {type:"clock", offset, rtt} | {type:"ended", reason}
// mode "lookahead" (the page's default) asks for compact windows; "push" for a frame per tick.
import { ClockSync } from "./clock.js";
import { decodeBinary } from "./codec.js";

// Window encodings this worker decodes, in order of preference.
const ENCODINGS = "qdelta1,msgpack";
// The close code of a deleted session (docs/PROTOCOL.md): it is over, do not reconnect.
const SESSION_DELETED = 4003;

let socket = null;
let url = null;
let sessionUrl = null;
let mode = "lookahead";
let attempt = 0;
let ended = false;
let timer = null;
// Messages are handled one after the other, even while a window inflates asynchronously, so
// nothing reaches the page out of order (a window of an old epoch after a new state).
let queue = Promise.resolve();

const clock = new ClockSync(
  (t0) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ cmd: "time", t0 }));
  },
  (best) => post({ type: "clock", offset: best.offset, rtt: best.rtt }),
);

function post(message) {
  self.postMessage(message);
}

function socketUrl() {
  if (mode !== "lookahead") return url;
  const sep = url.includes("?") ? "&" : "?";
  return `${url}${sep}mode=lookahead&enc=${ENCODINGS}`;
}

async function handle(data) {
  if (typeof data === "string") {
    const message = JSON.parse(data);
    if (message.type === "time") {
      clock.answer(message);
      return;
    }
    if (message.type === "hello") {
      attempt = 0;
      post({ type: "status", status: "live" });
      if (mode === "lookahead") clock.start();
    }
    post(message);
    return;
  }
  post(await decodeBinary(new Uint8Array(data)));
}

function connect() {
  if (ended) return;
  post({ type: "status", status: attempt === 0 ? "connecting" : "reconnecting" });
  clock.reset();
  const ws = new WebSocket(socketUrl());
  socket = ws;
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    queue = queue
      .then(() => (socket === ws ? handle(event.data) : undefined))
      .catch((error) => post({ type: "error", code: "decode", message: String(error.message || error) }));
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    socket = null;
    clock.reset();
    if (event.code === SESSION_DELETED) {
      finish("The session was deleted.");
      return;
    }
    retry();
  };
}

// A refused connection hides its HTTP status from scripts: ask the API whether the session is gone.
async function retry() {
  if (ended) return;
  try {
    const response = await fetch(sessionUrl, { cache: "no-store" });
    if (response.status === 404) {
      finish("This session has ended.");
      return;
    }
  } catch (_) {
    // The hub is unreachable: keep trying.
  }
  attempt += 1;
  const delay = Math.min(10000, 500 * 2 ** (attempt - 1)) * (0.8 + Math.random() * 0.4);
  post({ type: "status", status: "reconnecting", retryIn: Math.round(delay) });
  timer = setTimeout(connect, delay);
}

function finish(reason) {
  ended = true;
  clearTimeout(timer);
  clock.reset();
  post({ type: "ended", reason });
}

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "connect") {
    url = message.url;
    sessionUrl = message.sessionUrl;
    mode = message.mode === "push" ? "push" : "lookahead";
    connect();
  } else if (message.type === "command" && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message.command));
  }
};
