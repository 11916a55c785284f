// Per-driver lap history the frames themselves do not carry: when each car began its lap (so
// its last lap time), and whether it is on an out-lap. app.js feeds it every frame it shows;
// the leaderboard and the telemetry panel read it.
// Lap starts are taken from the frames where a car's lap number goes up, corrected back to the
// line with its speed. After a seek the start of the lap in progress is estimated from the
// leader's lap start (a lap event) plus the car's gap, and times built on it are marked so.
import { PIT, RUNNING } from "./format.js";

// A jump bigger than this (or any step back) is a seek: what was tracked no longer applies.
const CONTINUOUS_FRAMES = 250;
// After a seek, a car is taken to be on its out-lap this long after its last pit entry.
const OUT_LAP_SECONDS = 100;

export function createLapTracker(meta, field, timeline) {
  const count = meta.drivers.length;
  const leaderStarts = timeline.events.filter((e) => e.kind === "lap");
  const pits = meta.drivers.map((d) => timeline.events.filter((e) => e.kind === "pit" && e.driver === d.code));
  const cars = Array.from({ length: count }, () => ({ lap: 0, start: null, estimated: true, last: null, lastEstimated: false, status: null, outLap: null }));
  let previous = -Infinity;

  // When the car (on `lap` now, `gap` behind the leader) started that lap, estimated.
  function estimatedStart(lap, gapToLeader) {
    const start = leaderStarts.find((e) => e.lap === lap);
    return start ? start.t + gapToLeader : null;
  }

  function reset(frame) {
    frame.drivers.forEach((d, n) => {
      const car = cars[n];
      car.lap = d[field.lap];
      car.start = estimatedStart(car.lap, d[field.gap_to_leader]);
      car.estimated = true;
      car.last = null;
      car.status = d[field.status];
      const pit = pits[n].filter((e) => e.frame <= frame.i).pop();
      car.outLap = car.status === RUNNING && pit && frame.t - pit.t < OUT_LAP_SECONDS ? car.lap : null;
    });
  }

  return {
    observe(frame) {
      if (frame.i === previous) return;
      const continuous = frame.i > previous && frame.i - previous <= CONTINUOUS_FRAMES;
      previous = frame.i;
      if (!continuous) {
        reset(frame);
        return;
      }
      const length = meta.track.length_m;
      frame.drivers.forEach((d, n) => {
        const car = cars[n];
        const lap = d[field.lap];
        const status = d[field.status];
        if (lap > car.lap) {
          // Back to the line: the distance covered since it, at the current speed.
          const speed = Math.max(1, d[field.speed] / 3.6);
          const crossed = frame.t - Math.min(5, (d[field.rel_dist] * length) / speed);
          if (car.start !== null && lap === car.lap + 1) {
            car.last = crossed - car.start;
            car.lastEstimated = car.estimated;
          }
          car.start = crossed;
          car.estimated = false;
          car.lap = lap;
        }
        if (car.status === PIT && status === RUNNING) car.outLap = lap;
        if (car.outLap !== null && lap > car.outLap) car.outLap = null;
        car.status = status;
      });
    },
    // Seconds of driver n's last full lap (null when not known yet), and whether estimated.
    lastLap: (n) => ({ seconds: cars[n].last, estimated: cars[n].lastEstimated }),
    onOutLap: (n) => cars[n].outLap !== null && cars[n].status === RUNNING,
    // Laps on the current set of tyres: since the last stop, or since the start.
    tyreAge(n, frame) {
      const stop = pits[n].filter((e) => e.frame <= frame.i).pop();
      const lap = frame.drivers[n][field.lap];
      return stop ? Math.max(0, frame.lap - stop.lap) : Math.max(0, lap - 1);
    },
  };
}
