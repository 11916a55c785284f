// Look-ahead playback on the page: which frame is due at a moment of the hub's clock
// (docs/PROTOCOL.md, "Showing frames at the same moment") and the buffer of the current epoch's
// frames it is picked from. No state of its own beyond the buffer the page owns.

export const SLOT_MS = 40;

/// The frame due at server time `serverMs`, and the fractional frame for smooth motion: slot
/// j = floor((T − anchor_ms) / 40) shows frame anchor_frame + floor(j × speed), the slot first.
export function dueAt(state, serverMs, lastFrame) {
  if (!state.playing) return { frame: state.anchor_frame, position: state.anchor_frame };
  const slots = Math.max(0, (serverMs - state.anchor_ms) / SLOT_MS);
  const j = Math.floor(slots);
  const frame = Math.min(state.anchor_frame + Math.floor(j * state.speed + 1e-9), lastFrame);
  const position = Math.min(state.anchor_frame + slots * state.speed, lastFrame);
  return { frame, position: Math.max(frame, position) };
}

/// Frames of one epoch, by index, oldest first.
export class WindowBuffer {
  constructor() {
    this.frames = [];
  }

  clear() {
    this.frames = [];
  }

  /// Adds a window's frames (a window repeats none it shares with another, but a catch-up
  /// window may overlap what is held: the later copy wins).
  add(frames) {
    const byIndex = new Map(this.frames.map((f) => [f.i, f]));
    for (const f of frames) byIndex.set(f.i, f);
    this.frames = [...byIndex.values()].sort((p, q) => p.i - q.i);
  }

  /// The newest frame at or before `due`, the one after it and how far between them
  /// `position` lies; null when nothing at or after `due` has arrived (the window is late).
  at(due, position) {
    const frames = this.frames;
    if (frames.length === 0 || frames[frames.length - 1].i < due) return null;
    let n = frames.length - 1;
    while (n > 0 && frames[n].i > due) n--;
    const a = frames[n];
    if (a.i > due) return null;
    const b = frames[Math.min(n + 1, frames.length - 1)];
    const k = b.i > a.i ? Math.min(1, Math.max(0, (position - a.i) / (b.i - a.i))) : 0;
    // Frames well behind the playhead are not needed again in this epoch.
    if (n > 50) this.frames = frames.slice(n - 10);
    return [a, b, k];
  }
}
