// The followed driver's telemetry panel: speed, gear, throttle and brake bars, DRS, tyre and
// its age, lap, gap to the cars ahead and behind, last lap time. app.js shows it for the
// focused driver and updates it with the frame it shows. Values are written only when they
// change, so an update costs little.
import { RETIRED, TYRES, UNKNOWN_TYRE, gap, lapTime, rgb } from "./format.js";

const DRS = { 8: ["DRS", "eligible"], 10: ["DRS", "open"], 12: ["DRS", "open"], 14: ["DRS", "open"] };

export function createTelemetry(panel, meta, field, laps, onClose) {
  panel.innerHTML = `
    <div class="tm-head"><span class="swatch"></span><strong class="tm-code"></strong><span class="tm-team"></span><span class="tm-pos pill"></span>
      <button type="button" class="tm-close" aria-label="Stop following (Esc)" title="Stop following (Esc)">×</button></div>
    <div class="tm-main"><span class="tm-speed" data-field="speed"></span><span class="unit">km/h</span>
      <span class="tm-gear-box">Gear <span class="tm-gear" data-field="gear"></span></span><span class="tm-drs" data-field="drs"></span></div>
    <div class="tm-bar"><span>Throttle</span><span class="track"><i class="tm-throttle"></i></span><span class="tm-throttle-v" data-field="throttle"></span></div>
    <div class="tm-bar brake"><span>Brake</span><span class="track"><i class="tm-brake"></i></span><span class="tm-brake-v" data-field="brake"></span></div>
    <dl>
      <div><dt>Tyre</dt><dd class="tm-tyre" data-field="tyre"></dd></div>
      <div><dt>Lap</dt><dd class="tm-lap" data-field="lap"></dd></div>
      <div><dt>Ahead</dt><dd class="tm-ahead" data-field="ahead"></dd></div>
      <div><dt>Behind</dt><dd class="tm-behind" data-field="behind"></dd></div>
      <div><dt>Last lap</dt><dd class="tm-last" data-field="last"></dd></div>
    </dl>`;
  const q = (selector) => panel.querySelector(selector);
  const el = {
    swatch: q(".swatch"), code: q(".tm-code"), team: q(".tm-team"), pos: q(".tm-pos"), speed: q(".tm-speed"),
    gear: q(".tm-gear"), drs: q(".tm-drs"), throttle: q(".tm-throttle"), throttleV: q(".tm-throttle-v"),
    brake: q(".tm-brake"), brakeV: q(".tm-brake-v"), tyre: q(".tm-tyre"), lap: q(".tm-lap"),
    ahead: q(".tm-ahead"), behind: q(".tm-behind"), last: q(".tm-last"),
  };
  q(".tm-close").addEventListener("click", onClose);
  const put = (node, text) => {
    if (node.textContent !== text) node.textContent = text;
  };
  let driver = -1;

  return {
    show(n) {
      driver = n;
      panel.hidden = n < 0;
      if (n < 0) return;
      const d = meta.drivers[n];
      el.swatch.style.background = rgb(d.colour);
      put(el.code, d.code);
      put(el.team, `#${d.number} · ${d.team}`);
    },
    update(frame) {
      if (driver < 0) return;
      const d = frame.drivers[driver];
      const position = d[field.position];
      const retired = d[field.status] === RETIRED;
      put(el.pos, retired ? "RET" : `P${position}`);
      put(el.speed, d[field.speed].toFixed(0));
      put(el.gear, d[field.gear] === 0 ? "N" : String(d[field.gear]));
      const [drsText, drsState] = DRS[d[field.drs]] || ["DRS", "off"];
      put(el.drs, drsState === "off" ? "DRS off" : drsState === "open" ? "DRS open" : "DRS ready");
      el.drs.dataset.state = drsState;
      el.drs.title = drsText;
      const throttle = Math.max(0, Math.min(100, d[field.throttle]));
      const brake = Math.max(0, Math.min(1, d[field.brake]));
      el.throttle.style.width = `${throttle.toFixed(0)}%`;
      el.brake.style.width = `${(brake * 100).toFixed(0)}%`;
      put(el.throttleV, `${throttle.toFixed(0)}%`);
      put(el.brakeV, `${(brake * 100).toFixed(0)}%`);
      const [letter, colour, name] = TYRES[d[field.tyre]] || UNKNOWN_TYRE;
      const age = laps.tyreAge(driver, frame);
      put(el.tyre, `${letter} · ${age} lap${age === 1 ? "" : "s"}`);
      el.tyre.title = `${name}, ${age} lap${age === 1 ? "" : "s"} old`;
      el.tyre.style.color = colour;
      put(el.lap, `${Math.min(d[field.lap], meta.total_laps)} / ${meta.total_laps}`);
      // The cars one place ahead and behind, by position.
      let behind = null;
      for (const other of frame.drivers) if (other[field.position] === position + 1) behind = other;
      put(el.ahead, retired ? "–" : position === 1 ? "Leader" : gap(d[field.gap_to_previous]));
      put(el.behind, retired || !behind || behind[field.status] === RETIRED ? "–" : gap(behind[field.gap_to_previous]).replace("+", "−"));
      const last = laps.lastLap(driver);
      put(el.last, last.seconds === null ? "–" : `${last.estimated ? "≈" : ""}${lapTime(last.seconds)}`);
    },
  };
}
