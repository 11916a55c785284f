// The seek slider's scale: a tick at every lap start (numbered where there is room), time
// labels, pit-stop markers (from the race's events; events.js marks the SC/VSC/red periods),
// and a preview of the lap and time under the pointer while hovering or dragging.
// app.js calls setUpTimeline once the controls show.
import { clock } from "./format.js";

// Fewer lap numbers than this fit per 100 px of slider.
const LAP_LABELS_PER_100PX = 2.5;
const TIME_LABELS = 5;

export function setUpTimeline({ slider, scale, pits, preview, meta, timeline }) {
  const last = Math.max(1, meta.total_frames - 1);
  const laps = timeline.events.filter((e) => e.kind === "lap");
  const at = (frame) => `${(100 * Math.min(last, frame)) / last}%`;
  const lapAt = (frame) => {
    let lap = 1;
    for (const e of laps) if (e.frame <= frame) lap = e.lap;
    return Math.min(lap, meta.total_laps);
  };

  function drawScale() {
    const width = slider.getBoundingClientRect().width || 300;
    const every = Math.max(1, Math.ceil(laps.length / Math.max(1, (width / 100) * LAP_LABELS_PER_100PX)));
    const ticks = [];
    laps.forEach((e, k) => {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.style.left = at(e.frame);
      ticks.push(tick);
      if (k % every) return;
      tick.classList.add("labelled");
      const label = document.createElement("span");
      const fraction = Math.min(last, e.frame) / last;
      label.className = fraction < 0.03 ? "lap-label start" : fraction > 0.97 ? "lap-label end" : "lap-label";
      label.style.left = at(e.frame);
      label.textContent = `L${e.lap}`;
      ticks.push(label);
    });
    const times = Array.from({ length: TIME_LABELS }, (_, k) => {
      const label = document.createElement("span");
      label.className = k === 0 ? "time start" : k === TIME_LABELS - 1 ? "time end" : "time";
      const frame = Math.round((last * k) / (TIME_LABELS - 1));
      label.style.left = at(frame);
      label.textContent = clock(frame / meta.fps);
      return label;
    });
    scale.replaceChildren(...ticks, ...times);
  }

  pits.replaceChildren(
    ...timeline.events
      .filter((e) => e.kind === "pit")
      .map((e) => {
        const mark = document.createElement("span");
        mark.className = "pit";
        mark.style.left = at(e.frame);
        mark.title = `${e.driver} pit stop, lap ${e.lap} · ${clock(e.t)}`;
        return mark;
      }),
  );

  // The frame under the pointer, or the slider's own value while it is dragged by keys.
  const show = (frame, fraction) => {
    preview.hidden = false;
    preview.textContent = `Lap ${lapAt(frame)} · ${clock(frame / meta.fps)}`;
    preview.style.left = `${(100 * fraction).toFixed(2)}%`;
    // Kept inside the slider at either end.
    preview.style.transform = `translateX(-${(100 * Math.min(1, Math.max(0, (fraction - 0.05) / 0.9))).toFixed(0)}%)`;
    document.body.dataset.preview = preview.textContent;
  };
  const fromPointer = (event) => {
    const box = slider.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (event.clientX - box.left) / Math.max(1, box.width)));
    show(Math.round(fraction * last), fraction);
  };
  slider.addEventListener("pointermove", fromPointer);
  slider.addEventListener("pointerdown", fromPointer);
  slider.addEventListener("input", () => show(Number(slider.value), Number(slider.value) / last));
  const hide = () => {
    preview.hidden = true;
  };
  slider.addEventListener("pointerleave", hide);
  slider.addEventListener("change", hide);
  drawScale();
  window.addEventListener("resize", drawScale);
}
