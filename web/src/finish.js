// The finish: on the race's last frame, the chequered flag and the final classification over
// the track, and "finished" instead of "live" in the connection pill. A looping session plays
// again after a pause; the overlay goes as soon as an earlier frame is shown.
// Tests read document.body.dataset.finished ("true" while it shows).
import { FINISHED, RETIRED, gap, rgb } from "./format.js";

export function createFinish(panel, pill, meta, field) {
  const last = meta.total_frames - 1;
  let shown = false;
  document.body.dataset.finished = "false";
  const list = document.createElement("ol");
  const heading = document.createElement("h2");
  heading.innerHTML = `<span class="chequered" aria-hidden="true"></span>Chequered flag · Final classification`;
  const note = document.createElement("p");
  note.className = "muted";
  panel.append(heading, list, note);

  function classify(frame) {
    const order = meta.drivers.map((_, n) => n).sort((p, q) => frame.drivers[p][field.position] - frame.drivers[q][field.position]);
    const winner = frame.drivers[order[0]];
    list.replaceChildren(
      ...order.map((n) => {
        const d = frame.drivers[n];
        const driver = meta.drivers[n];
        const li = document.createElement("li");
        const status = d[field.status];
        const lapsDown = winner[field.lap] - d[field.lap];
        const result =
          status === RETIRED ? "DNF" : d[field.position] === 1 ? "Winner" : status === FINISHED && lapsDown > 0 ? `+${lapsDown} lap${lapsDown > 1 ? "s" : ""}` : gap(d[field.gap_to_leader]);
        li.innerHTML = `<span class="pos"></span><span class="swatch"></span><span class="code"></span><span class="team"></span><span class="result"></span>`;
        li.children[0].textContent = d[field.position];
        li.children[1].style.background = rgb(driver.colour);
        li.children[2].textContent = driver.code;
        li.children[3].textContent = driver.team;
        li.children[4].textContent = result;
        return li;
      }),
    );
  }

  return {
    // Whether the overlay shows (then app.js keeps the pill as is).
    update(frame, looping) {
      const done = frame.i >= last;
      if (done && !shown) {
        classify(frame);
        note.textContent = looping ? "The replay starts again in a few seconds." : "";
      }
      if (done !== shown) {
        shown = done;
        panel.hidden = !done;
        document.body.dataset.finished = String(done);
      }
      if (done && pill.dataset.status === "live") {
        pill.textContent = "finished";
        pill.dataset.status = "finished";
      } else if (!done && pill.dataset.status === "finished") {
        pill.textContent = "live";
        pill.dataset.status = "live";
      }
      return done;
    },
  };
}
