// The worker's estimate of the hub's clock: a few `time` requests in a row, keeping the answer
// with the shortest round trip (offset = server_ms − (t0 + t1) / 2, good to half of it), again
// every RESYNC_MS to follow drift, and from scratch after every reconnect.
// The local clock is performance.timeOrigin + performance.now(): Unix ms, monotonic, and the same
// scale in the worker and the page, so the page adds the offset to its own reading.

export const SAMPLES = 5;
export const RESYNC_MS = 30000;

export function localNow() {
  return performance.timeOrigin + performance.now();
}

export class ClockSync {
  /// `send(t0)` sends one time request; `onSynced({offset, rtt})` hears each finished round.
  constructor(send, onSynced) {
    this.send = send;
    this.onSynced = onSynced;
    this.best = null;
    this.pending = 0;
    this.timer = null;
  }

  /// Starts a round of SAMPLES requests, one after the other's answer.
  start() {
    clearTimeout(this.timer);
    this.round = null;
    this.pending = SAMPLES;
    this.send(localNow());
  }

  /// Forgets everything: the next connection may take another path to the hub.
  reset() {
    clearTimeout(this.timer);
    this.best = null;
    this.round = null;
    this.pending = 0;
  }

  /// A `time` answer arrived.
  answer(message) {
    const t1 = localNow();
    const rtt = t1 - message.t0;
    if (!(rtt >= 0) || this.pending === 0) return;
    const sample = { offset: message.server_ms - (message.t0 + t1) / 2, rtt };
    if (!this.round || sample.rtt < this.round.rtt) this.round = sample;
    this.pending -= 1;
    if (this.pending > 0) {
      this.send(localNow());
      return;
    }
    // A later round replaces the estimate: the clocks drift, and the path may have changed.
    this.best = this.round;
    this.onSynced(this.best);
    this.timer = setTimeout(() => this.start(), RESYNC_MS);
  }
}
