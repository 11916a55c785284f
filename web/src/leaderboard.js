// The leaderboard: position, driver (code and team), gap to the leader and to the car ahead,
// tyre (letter and colour), lap and status (PIT, OUT for an out-lap, RET, FIN). A row is a
// button that focuses its driver. app.js builds it once and updates it with the frame it shows.
import { FINISHED, PIT, RETIRED, TYRES, UNKNOWN_TYRE, gap, rgb } from "./format.js";

export function createLeaderboard(table, meta, field, laps, onPick) {
  const body = table.querySelector("tbody");
  const rows = meta.drivers.map(() => {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.innerHTML =
      `<td class="pos"></td><td class="driver"><span class="swatch"></span><span class="code"></span><span class="team"></span></td>` +
      `<td class="gap"></td><td class="int"></td><td class="tyre"></td><td class="lap"></td><td class="status"></td>`;
    const pick = () => onPick(Number(tr.dataset.driver));
    tr.addEventListener("click", pick);
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        e.stopPropagation();
        pick();
      }
    });
    body.appendChild(tr);
    return tr;
  });
  let focused = -1;
  // Only what changed is written: unchanged text costs no layout.
  const put = (node, text) => {
    if (node.textContent !== text) node.textContent = text;
  };
  const set = (node, key, value) => {
    if (node.dataset[key] !== value) node.dataset[key] = value;
  };

  return {
    update(frame) {
      const order = meta.drivers.map((_, n) => n).sort((p, q) => frame.drivers[p][field.position] - frame.drivers[q][field.position]);
      order.forEach((n, row) => {
        const driver = meta.drivers[n];
        const d = frame.drivers[n];
        const tr = rows[row];
        const cells = tr.children;
        if (tr.dataset.driver !== String(n)) {
          tr.dataset.driver = String(n);
          tr.classList.toggle("focused", n === focused);
          tr.setAttribute("aria-selected", String(n === focused));
        }
        const status = d[field.status];
        const out = laps.onOutLap(n);
        set(tr, "status", status === RETIRED ? "retired" : status === PIT ? "pit" : out ? "out" : status === FINISHED ? "finished" : "running");
        put(cells[0], String(d[field.position]));
        if (cells[1].children[1].textContent !== driver.code) {
          cells[1].children[0].style.background = rgb(driver.colour);
          cells[1].children[1].textContent = driver.code;
          cells[1].children[2].textContent = driver.team;
          cells[1].title = `#${driver.number} ${driver.code} · ${driver.team}`;
        }
        const leader = d[field.position] === 1;
        put(cells[2], status === RETIRED ? "–" : leader ? "Leader" : gap(d[field.gap_to_leader]));
        put(cells[3], status === RETIRED || leader ? "" : gap(d[field.gap_to_previous]));
        const [letter, tyreColour, name] = TYRES[d[field.tyre]] || UNKNOWN_TYRE;
        if (cells[4].textContent !== letter) {
          cells[4].textContent = letter;
          cells[4].style.color = tyreColour;
          cells[4].title = name;
        }
        put(cells[5], String(d[field.lap]));
        put(cells[6], status === RETIRED ? "RET" : status === PIT ? "PIT" : out ? "OUT" : status === FINISHED ? "FIN" : "");
      });
    },
    setFocused(n) {
      focused = n;
      rows.forEach((tr) => {
        const on = Number(tr.dataset.driver) === n;
        tr.classList.toggle("focused", on);
        tr.setAttribute("aria-selected", String(on));
      });
    },
  };
}
