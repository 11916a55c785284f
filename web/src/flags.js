// Track status as of the frame on screen: a banner over the track (yellow, SC, VSC, red: a
// word and a letter code, never colour alone) and the colour of the track outline, which
// app.js redraws only when the status changes. Tests read document.body.dataset.flag.
import { statusAt } from "./format.js";

export const FLAGS = {
  green: null,
  yellow: { text: "YELLOW FLAG", code: "Y", colour: "#facc15" },
  safety_car: { text: "SAFETY CAR", code: "SC", colour: "#f59e0b" },
  virtual_safety_car: { text: "VIRTUAL SAFETY CAR", code: "VSC", colour: "#fbbf24" },
  red: { text: "RED FLAG", code: "RED", colour: "#dc2626" },
};

export function createFlags(banner, meta, onChange) {
  let shown = null;
  document.body.dataset.flag = "green";
  return {
    update(frame) {
      const status = statusAt(meta.track_status, frame.t);
      if (status === shown) return;
      shown = status;
      const flag = FLAGS[status];
      document.body.dataset.flag = status;
      banner.hidden = !flag;
      if (flag) {
        banner.dataset.status = status;
        banner.replaceChildren();
        const code = document.createElement("b");
        code.textContent = flag.code;
        banner.append(code, ` ${flag.text}`);
      }
      onChange(status);
    },
    colour: (status) => FLAGS[status]?.colour || null,
  };
}
