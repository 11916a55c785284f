// A TCP proxy that delays every byte by a fixed one-way time in each direction, for measuring
// viewers "behind" slow links on one machine (the kernel here has no netem).
//
//   node bench/delay-proxy.mjs --target 127.0.0.1:8080 --delay-ms 60 [--port 0]
//
// prints "delay-proxy listening on 127.0.0.1:PORT" and forwards until killed. The browser tests
// import startDelayProxy() and use its pause() (hold every byte: a stalled network) and cut()
// (drop every connection: a broken one).
import net from "node:net";
import { pathToFileURL } from "node:url";

export function startDelayProxy({ target, delayMs, port = 0, host = "127.0.0.1" }) {
  const [targetHost, targetPort] = target.split(":");
  const sockets = new Set();
  let paused = false;
  const held = [];

  // Delivers `chunk` to `to` delayMs after it arrived, in arrival order.
  const forward = (to, chunk) => {
    const send = () => {
      if (paused) held.push(send);
      else if (!to.destroyed) to.write(chunk);
    };
    setTimeout(send, delayMs);
  };

  const server = net.createServer((client) => {
    const upstream = net.connect(Number(targetPort), targetHost);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    client.on("data", (chunk) => forward(upstream, chunk));
    upstream.on("data", (chunk) => forward(client, chunk));
    const close = () => {
      // The close travels with the same delay as the bytes before it.
      setTimeout(() => {
        client.destroy();
        upstream.destroy();
      }, delayMs);
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", close);
    upstream.on("close", close);
    client.on("error", () => {});
    upstream.on("error", () => {});
  });

  return new Promise((resolve) => {
    server.listen(port, host, () => {
      const address = server.address();
      resolve({
        port: address.port,
        url: `http://${host}:${address.port}`,
        /// Holds every byte in both directions until resume(): the connection stays open.
        pause() {
          paused = true;
        },
        resume() {
          paused = false;
          for (const send of held.splice(0)) send();
        },
        /// Drops every open connection at once (new ones are accepted again).
        cut() {
          held.length = 0;
          paused = false;
          for (const socket of sockets) socket.destroy();
          sockets.clear();
        },
        close() {
          for (const socket of sockets) socket.destroy();
          return new Promise((done) => server.close(done));
        },
      });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const arg = (name, fallback) => {
    const at = process.argv.indexOf(`--${name}`);
    return at > 0 ? process.argv[at + 1] : fallback;
  };
  const target = arg("target", "127.0.0.1:8080");
  const delayMs = Number(arg("delay-ms", "60"));
  const proxy = await startDelayProxy({ target, delayMs, port: Number(arg("port", "0")) });
  console.log(`delay-proxy listening on 127.0.0.1:${proxy.port} (to ${target}, ${delayMs} ms each way)`);
}
