// The same broadcast as replay-hub, written the way most Node.js services would: the `ws`
// library, one 25 FPS timer, `send` to every open client, and a frame skipped for a client
// whose send buffer is backed up. It serves the hub's own frame bytes, cyclically, so the
// load tool measures both servers on identical messages. Run by `bench/peers/run.sh`.
//
// node server.mjs [--hub URL] [--race ID] [--from N] [--frames N] [--host H] [--port P]
// (or HUB, RACE, FROM, FRAMES, HOST, PORT in the environment; port 0 picks a free port).
// The first line on stdout is `listening on HOST:PORT`.

import { parseArgs } from 'node:util';
import { WebSocketServer, WebSocket } from 'ws';

const env = process.env;
const { values: args } = parseArgs({
  options: {
    hub: { type: 'string', default: env.HUB ?? 'http://127.0.0.1:8080' },
    race: { type: 'string', default: env.RACE ?? 'demo' },
    from: { type: 'string', default: env.FROM ?? '5000' },
    frames: { type: 'string', default: env.FRAMES ?? '3000' },
    host: { type: 'string', default: env.HOST ?? '127.0.0.1' },
    port: { type: 'string', default: env.PORT ?? '0' },
  },
});

const TICK_MS = 40;
// Past this much unsent data a client is too slow: it misses frames rather than queueing them.
const MAX_BUFFERED = 64 * 1024;

// The hub's exact wire bytes, one frame per request: the body is a one-element msgpack array,
// so it is the 0x91 header followed by the frame.
async function fetchFrames() {
  const from = Number(args.from);
  const count = Number(args.frames);
  const frames = [];
  for (let i = from; i < from + count; i++) {
    const url = `${args.hub}/api/races/${args.race}/frames?from=${i}&to=${i + 1}`;
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
    const body = Buffer.from(await response.arrayBuffer());
    if (body[0] !== 0x91) throw new Error(`${url}: not a one-frame msgpack array`);
    frames.push(body.subarray(1));
  }
  return frames;
}

const frames = await fetchFrames();
const wss = new WebSocketServer({
  host: args.host,
  port: Number(args.port),
  perMessageDeflate: false,
  clientTracking: true,
});
wss.on('listening', () => {
  const { address, port } = wss.address();
  console.log(`listening on ${address}:${port}`);
  console.error(`${frames.length} frames loaded`);
});
wss.on('connection', (ws) => {
  // Viewers never need to be read; an error just ends the connection.
  ws.on('error', () => ws.terminate());
});

let tick = 0;
setInterval(() => {
  const frame = frames[tick++ % frames.length];
  for (const client of wss.clients) {
    if (client.readyState !== WebSocket.OPEN) continue;
    if (client.bufferedAmount > MAX_BUFFERED) continue;
    client.send(frame, { binary: true });
  }
}, TICK_MS);
