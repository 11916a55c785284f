// The viewer's network side, off the main thread: owns the WebSocket, decodes msgpack frames,
// reconnects with exponential backoff, and posts plain objects to the page.
// Page → worker: {type:"connect", url, sessionUrl} | {type:"command", command}
// Worker → page: {type:"status", status, retryIn?} | hello | state | error | frame | {type:"ended", reason}
import { decode } from "@msgpack/msgpack";

let socket = null;
let url = null;
let sessionUrl = null;
let attempt = 0;
let ended = false;
let timer = null;

function post(message) {
  self.postMessage(message);
}

function connect() {
  if (ended) return;
  post({ type: "status", status: attempt === 0 ? "connecting" : "reconnecting" });
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "hello") {
        attempt = 0;
        post({ type: "status", status: "live" });
      }
      post(message);
      return;
    }
    const frame = decode(new Uint8Array(event.data));
    post({ type: "frame", i: frame.i, t: frame.t, lap: frame.lap, drivers: frame.drivers });
  };
  socket.onclose = (event) => {
    socket = null;
    if (event.code === 1001 && event.reason === "session deleted") {
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
  post({ type: "ended", reason });
}

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "connect") {
    url = message.url;
    sessionUrl = message.sessionUrl;
    connect();
  } else if (message.type === "command" && socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(message.command));
  }
};
