// Decodes look-ahead windows in the worker: compact "qdelta1" windows (quantised columns,
// deflate-raw, see docs/PROTOCOL.md) with the browser's own DecompressionStream, and msgpack
// windows and frames with @msgpack/msgpack. Every count and length is bounded before use.
import { decode as decodeMsgpack } from "@msgpack/msgpack";

export const MARKER = 0xc1;
const VERSION = 1;
const MAX_FRAMES = 1024;
const MAX_CARS = 64;
// round(value × scale) on the wire, in the order of the hello's `fields`.
const SCALES = [100, 100, 10, 1, 1, 100, 1, 1, 1, 1, 100, 10000, 1000, 1000, 1];
const T_SCALE = 1000;

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }
  byte() {
    if (this.at >= this.bytes.length) throw new Error("window ends early");
    return this.bytes[this.at++];
  }
  // LEB128 as a plain number: at most 8 bytes (56 bits), exact in a double.
  varint() {
    let value = 0;
    let scale = 1;
    for (let k = 0; k < 8; k++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return value;
      scale *= 128;
    }
    throw new Error("varint too long");
  }
  zigzag() {
    const v = this.varint();
    return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
  }
}

/// Epoch and frame indices from a compact window's header, and where its columns start.
export function header(bytes) {
  const rd = new Reader(bytes);
  if (rd.byte() !== MARKER) throw new Error("not a compact window");
  const version = rd.byte();
  if (version !== VERSION) throw new Error(`compact window version ${version} is not supported`);
  const epoch = rd.varint();
  const n = rd.varint();
  if (n < 1 || n > MAX_FRAMES) throw new Error(`${n} frames in a window`);
  const cars = rd.varint();
  if (cars > MAX_CARS) throw new Error(`${cars} cars in a window`);
  const indices = new Array(n);
  let index = rd.varint();
  for (let k = 0; k < n; k++) {
    if (k > 0) {
      const step = rd.varint();
      if (step < 1) throw new Error("frame indices must increase");
      index += step;
    }
    indices[k] = index;
  }
  const bodyLength = rd.varint();
  const bound = (2 + cars * SCALES.length) * (1 + n * 10);
  if (bodyLength > bound) throw new Error(`columns of ${bodyLength} bytes for ${n} frames`);
  return { epoch, indices, cars, bodyLength, start: rd.at };
}

/// Inflates raw deflate, reading no more than `limit` bytes.
async function inflate(bytes, limit) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  const reader = stream.getReader();
  const out = new Uint8Array(limit);
  let length = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (length + value.length > limit) {
      await reader.cancel();
      throw new Error("columns longer than the header says");
    }
    out.set(value, length);
    length += value.length;
  }
  if (length !== limit) throw new Error("columns shorter than the header says");
  return out;
}

function column(rd, n) {
  const order = rd.byte();
  if (order > 3) throw new Error(`difference order ${order}`);
  const values = new Array(n);
  for (let k = 0; k < n; k++) values[k] = rd.zigzag();
  for (let pass = 0; pass < order; pass++) {
    for (let k = 1; k < n; k++) values[k] += values[k - 1];
  }
  return values;
}

/// A compact window as {epoch, frames: [{i, t, lap, drivers}]}, drivers as in push frames.
export async function decodeCompact(bytes) {
  const h = header(bytes);
  const body = await inflate(bytes.subarray(h.start), h.bodyLength);
  const rd = new Reader(body);
  const n = h.indices.length;
  const t = column(rd, n);
  const lap = column(rd, n);
  const frames = h.indices.map((i, k) => ({
    i,
    t: t[k] / T_SCALE,
    lap: lap[k],
    drivers: Array.from({ length: h.cars }, () => new Array(SCALES.length)),
  }));
  for (let field = 0; field < SCALES.length; field++) {
    const scale = SCALES[field];
    for (let car = 0; car < h.cars; car++) {
      const values = column(rd, n);
      for (let k = 0; k < n; k++) frames[k].drivers[car][field] = scale === 1 ? values[k] : values[k] / scale;
    }
  }
  if (rd.at !== body.length) throw new Error("bytes after the last column");
  return { epoch: h.epoch, frames };
}

/// Any binary message: a compact window, a msgpack window, or a push frame.
export async function decodeBinary(bytes) {
  if (bytes[0] === MARKER) return { type: "window", ...(await decodeCompact(bytes)) };
  const value = decodeMsgpack(bytes);
  const plain = (f) => ({ i: f.i, t: f.t, lap: f.lap, drivers: f.drivers });
  if (value.type === "window") return { type: "window", epoch: value.epoch, frames: value.frames.map(plain) };
  return { type: "frame", ...plain(value) };
}
