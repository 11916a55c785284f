// Small formatting helpers and the race's constant tables, shared by the session page's modules.

// Tyre letter, colour and name by the frame's tyre code: the letter is always shown, so the
// compound never depends on telling colours apart.
export const TYRES = {
  0: ["S", "#e8002d", "Soft"],
  1: ["M", "#ffd12e", "Medium"],
  2: ["H", "#f0f0ec", "Hard"],
  3: ["I", "#43b02a", "Intermediate"],
  4: ["W", "#0067ad", "Wet"],
};
export const UNKNOWN_TYRE = ["?", "#9ca3af", "Unknown"];
// DriverFrame.status
export const RUNNING = 0;
export const PIT = 1;
export const RETIRED = 2;
export const FINISHED = 3;

export function clock(t) {
  const s = Math.max(0, Math.floor(t));
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

// A lap time: 1:23.456
export function lapTime(seconds) {
  if (!(seconds > 0)) return "–";
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(3).padStart(6, "0")}`;
}

export function gap(seconds) {
  return `+${seconds.toFixed(seconds < 100 ? 1 : 0)}`;
}

export function rgb(colour) {
  return `rgb(${colour.join(",")})`;
}

// The track status interval covering replay time `t` ("green" when none does).
export function statusAt(intervals, t) {
  let lo = 0;
  let hi = intervals.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (intervals[mid].start_t <= t) lo = mid + 1;
    else hi = mid;
  }
  const interval = intervals[lo - 1];
  return interval && t <= interval.end_t ? interval.status : "green";
}
