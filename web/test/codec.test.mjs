// The worker's window decoder (src/codec.js) against a real hub: a whole generated race fetched
// as compact windows (GET /api/races/{race}/frames?enc=qdelta1) decodes, in Node's own
// DecompressionStream as in a browser's, to the push-mode frames within the documented
// quantisation; bad windows are refused before anything is allocated from them.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { decode } from "@msgpack/msgpack";
import { decodeBinary, decodeCompact, header } from "../src/codec.js";

const BIN = process.env.REPLAY_HUB_BIN || new URL("../../target/debug/replay-hub", import.meta.url).pathname;
// The documented steps (docs/PROTOCOL.md), in the order of the hello's fields.
const SCALES = [100, 100, 10, 1, 1, 100, 1, 1, 1, 1, 100, 10000, 1000, 1000, 1];

let hub;
let dataDir;
let base;

describe("the compact window decoder", () => {
  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), "replay-hub-codec-"));
    hub = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--data-dir", dataDir, "--demo-laps", "2", "--demo-session", ""], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, RUST_LOG: "warn" },
    });
    for await (const line of createInterface({ input: hub.stdout })) {
      const listening = line.match(/^replay-hub listening on (http:\/\/\S+)/);
      if (listening) {
        base = listening[1];
        break;
      }
    }
    assert.ok(base, "the hub printed its address");
  });

  after(() => {
    hub?.kill();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test("a whole race decodes to the push frames within the quantisation", async () => {
    const meta = await (await fetch(`${base}/api/races/demo`)).json();
    const total = meta.total_frames;
    let compactBytes = 0;
    let pushBytes = 0;
    for (let from = 0; from < total; from += 1000) {
      const to = Math.min(total, from + 1000);
      const compact = new Uint8Array(await (await fetch(`${base}/api/races/demo/frames?from=${from}&to=${to}&enc=qdelta1`)).arrayBuffer());
      const pushed = new Uint8Array(await (await fetch(`${base}/api/races/demo/frames?from=${from}&to=${to}`)).arrayBuffer());
      compactBytes += compact.length;
      pushBytes += pushed.length;
      const window = await decodeBinary(compact);
      assert.equal(window.type, "window");
      assert.equal(window.epoch, 0);
      const frames = decode(pushed);
      assert.equal(window.frames.length, frames.length);
      window.frames.forEach((got, k) => {
        const want = frames[k];
        assert.equal(got.i, want.i);
        assert.equal(got.lap, want.lap);
        assert.ok(Math.abs(got.t - want.t) <= 0.0005 + 1e-9, `frame ${want.i} t`);
        want.drivers.forEach((car, n) => {
          car.forEach((value, field) => {
            const bound = 0.5 / SCALES[field] + Math.abs(value) * 2 ** -23 + 1e-9;
            const decoded = got.drivers[n][field];
            assert.ok(Math.abs(decoded - value) <= bound, `frame ${want.i} car ${n} field ${meta.fields[field]}: ${decoded} vs ${value}`);
          });
        });
      });
    }
    assert.ok(compactBytes * 5 < pushBytes, `${compactBytes} compact bytes for ${pushBytes} of msgpack`);
  });

  test("bad windows are refused with a reason", async () => {
    const good = new Uint8Array(await (await fetch(`${base}/api/races/demo/frames?from=100&to=125&enc=qdelta1`)).arrayBuffer());
    assert.deepEqual(header(good).indices, Array.from({ length: 25 }, (_, k) => 100 + k));
    await assert.rejects(decodeCompact(Uint8Array.of(0xc1, 2)), /version 2/);
    // A million frames claimed: refused from the header, before any allocation.
    await assert.rejects(decodeCompact(Uint8Array.of(0xc1, 1, 0, 0xc0, 0x84, 0x3d)), /frames in a window/);
    await assert.rejects(decodeCompact(Uint8Array.of(0xc1, 1, 0, 1, 0x80, 0x08)), /cars in a window/);
    await assert.rejects(decodeCompact(good.subarray(0, good.length - 3)), /./);
    const longer = good.slice();
    // Claim more inflated bytes than the columns hold: refused, not read past.
    const h = header(good);
    longer[h.start - 1] += 1;
    await assert.rejects(decodeCompact(longer));
  });

  test("the frames endpoint refuses an unknown encoding and an over-long compact range", async () => {
    const unknown = await fetch(`${base}/api/races/demo/frames?from=0&to=10&enc=zstd`);
    assert.equal(unknown.status, 400);
    assert.equal((await unknown.json()).error, "bad_request");
    const long = await fetch(`${base}/api/races/demo/frames?from=0&to=1100&enc=qdelta1`);
    assert.equal(long.status, 400);
    assert.match((await long.json()).message, /1024/);
  });
});
