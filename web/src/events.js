// The race's timeline on the session page: the race-control ticker and the weather, which
// never show anything later than the frame on screen (a rewind takes them back too), and for
// a controller "previous/next event", "jump to lap N" and safety-car/VSC/red-flag marks along
// the timeline slider. app.js loads the timeline, feeds the frame it shows, and passes a
// function that sends a command to the session.
// Tests read document.body.dataset.tickerFrame (frame of the newest event shown, -1 for none).

// Events the ticker lists and "previous/next" jumps between; lap starts have their own control.
const TICKER_KINDS = new Set(["pit", "retirement", "track_status", "message", "chequered"]);
const TICKER_ROWS = 6;
// "Previous" from this close behind an event goes to the one before it, not back to itself.
const PREVIOUS_SLACK_FRAMES = 50;
const MARKED = { safety_car: "SC", virtual_safety_car: "VSC", red: "RED" };

export async function loadTimeline(race) {
  // A strong ETag and a long max-age: fetched once, then revalidated from the browser's cache.
  const response = await fetch(`/api/races/${encodeURIComponent(race)}/events`);
  if (!response.ok) return { events: [], weather: [] };
  const timeline = await response.json();
  return {
    events: timeline.events.filter((e) => TICKER_KINDS.has(e.kind) || e.kind === "lap"),
    weather: timeline.weather,
  };
}

// How many entries of `list` (ordered by frame) are at or before `frame`.
function countUpTo(list, frame) {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid].frame <= frame) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function clock(t) {
  const s = Math.max(0, Math.floor(t));
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function describe(event) {
  if (event.message) return event.message;
  const who = event.driver ? `${event.driver} ` : "";
  return `${who}${event.kind.replace("_", " ")}${event.status ? `: ${event.status.replace(/_/g, " ")}` : ""}`;
}

// The ticker and the weather pill, redrawn only when what they show changes.
export function createTicker(list, weatherPill, timeline) {
  const events = timeline.events.filter((e) => TICKER_KINDS.has(e.kind));
  let shownEvents = -1;
  let shownWeather = -1;
  document.body.dataset.tickerFrame = "-1";
  return function show(frame) {
    const count = countUpTo(events, frame);
    if (count !== shownEvents) {
      shownEvents = count;
      list.replaceChildren(
        ...events
          .slice(Math.max(0, count - TICKER_ROWS), count)
          .reverse()
          .map((e) => {
            const li = document.createElement("li");
            li.dataset.frame = String(e.frame);
            li.dataset.kind = e.status || e.kind;
            const when = document.createElement("span");
            when.className = "when";
            when.textContent = e.lap ? `L${e.lap} ${clock(e.t)}` : clock(e.t);
            const what = document.createElement("span");
            what.textContent = describe(e);
            li.append(when, what);
            return li;
          }),
      );
      document.body.dataset.tickerFrame = String(count ? events[count - 1].frame : -1);
    }
    const w = countUpTo(timeline.weather, frame);
    if (w !== shownWeather) {
      shownWeather = w;
      const sample = timeline.weather[w - 1];
      weatherPill.hidden = !sample;
      if (sample) {
        weatherPill.textContent = `${sample.rainfall ? "Rain · " : ""}Air ${sample.air_temp_c.toFixed(0)}°C · Track ${sample.track_temp_c.toFixed(0)}°C · ${sample.humidity_pct.toFixed(0)}%`;
        weatherPill.title = `Pressure ${sample.pressure_hpa.toFixed(0)} hPa, wind ${sample.wind_speed_ms.toFixed(1)} m/s from ${sample.wind_direction_deg.toFixed(0)}°`;
      }
    }
  };
}

// The frame to seek to for "previous" (-1) or "next" (+1) event from `frame` (null: none).
export function eventFrom(timeline, frame, direction) {
  const events = timeline.events.filter((e) => TICKER_KINDS.has(e.kind));
  if (direction > 0) {
    const next = events.find((e) => e.frame > frame);
    return next ? next.frame : null;
  }
  // Before the first event, "previous" goes back to the start.
  const before = events.filter((e) => e.frame < frame - PREVIOUS_SLACK_FRAMES);
  return before.length ? before[before.length - 1].frame : 0;
}

// The frame where lap `lap` starts, or null.
export function lapStart(timeline, lap) {
  const start = timeline.events.find((e) => e.kind === "lap" && e.lap === lap);
  return start ? start.frame : null;
}

// Wires the jump controls; `send` sends a command, `currentFrame` is the frame on screen.
export function setUpJumps({ timeline, meta, send, currentFrame }) {
  const seek = (frame) => frame !== null && send({ cmd: "seek", frame });
  document.getElementById("prev-event").onclick = () => seek(eventFrom(timeline, currentFrame(), -1));
  document.getElementById("next-event").onclick = () => seek(eventFrom(timeline, currentFrame(), 1));
  const lapInput = document.getElementById("lap-input");
  lapInput.max = String(meta.total_laps);
  const jump = () => seek(lapStart(timeline, Number(lapInput.value)));
  document.getElementById("jump-lap").onclick = jump;
  lapInput.onkeydown = (e) => e.key === "Enter" && jump();
}

// Safety car, VSC and red flag periods as marks along the slider.
export function markTimeline(container, meta) {
  const last = Math.max(1, meta.total_frames - 1);
  container.replaceChildren(
    ...meta.track_status
      .filter((interval) => MARKED[interval.status])
      .map((interval) => {
        const mark = document.createElement("span");
        const from = Math.min(last, interval.start_t * meta.fps);
        const to = Math.min(last, Math.max(from + 1, interval.end_t * meta.fps));
        mark.className = `mark ${interval.status}`;
        mark.style.left = `${(100 * from) / last}%`;
        mark.style.width = `${(100 * (to - from)) / last}%`;
        mark.title = `${MARKED[interval.status]} ${clock(interval.start_t)}–${clock(interval.end_t)}`;
        return mark;
      }),
  );
}
