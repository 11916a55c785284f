// Car markers and their labels on the track canvas. Labels are placed so they do not overlap:
// each tries a few spots around its car, in order of priority (the followed car first, then by
// position); one that finds no free spot is counted into the nearest placed label ("VER +3").
// app.js calls drawCars with the interpolated positions of the frame it draws.
// Returns the number of labels drawn in full (tests read it as document.body.dataset.labels).

// Where a label may go, tried in order: [side, dy]: side 1 right of the car, -1 left of it,
// 0 centred on it; dy the label's centre below the car, in marker radii.
const SPOTS = [[1, 0], [-1, 0], [0, -2.2], [0, 2.2], [1, -1.9], [1, 1.9], [-1, -1.9], [-1, 1.9]];

const widths = new Map(); // label text → measured width at the current font
let widthFont = "";

function measure(g, text) {
  if (g.font !== widthFont) {
    widths.clear();
    widthFont = g.font;
  }
  let w = widths.get(text);
  if (w === undefined) {
    w = g.measureText(text).width;
    widths.set(text, w);
  }
  return w;
}

const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

// cars: [{x, y, n, order}] in canvas pixels; meta.drivers[n] gives code and colour.
export function drawCars(g, cars, meta, focused, ratio) {
  const r = 6 * ratio;
  const fontPx = 10 * ratio;
  g.font = `600 ${fontPx}px system-ui, sans-serif`;
  g.textBaseline = "middle";
  // Markers first, the focused one last so it is on top.
  for (const car of cars) {
    if (car.n === focused) continue;
    marker(g, car.x, car.y, r, meta.drivers[car.n].colour, ratio, focused >= 0);
  }
  const mine = cars.find((c) => c.n === focused);
  if (mine) {
    g.beginPath();
    g.arc(mine.x, mine.y, r * 2.1, 0, 2 * Math.PI);
    g.lineWidth = 2.5 * ratio;
    g.strokeStyle = "#fff";
    g.stroke();
    marker(g, mine.x, mine.y, r * 1.3, meta.drivers[mine.n].colour, ratio, false);
  }

  // Every marker is an obstacle for labels; the followed car's label is placed first.
  const boxes = cars.map((c) => ({ x: c.x - r, y: c.y - r, w: 2 * r, h: 2 * r }));
  const ordered = [...cars].sort((a, b) => (a.n === focused ? -1 : b.n === focused ? 1 : a.order - b.order));
  const placed = [];
  const h = fontPx * 1.3;
  for (const car of ordered) {
    const text = meta.drivers[car.n].code;
    const w = measure(g, text) + 4 * ratio;
    let spot = null;
    for (const [side, dy] of SPOTS) {
      const x = side > 0 ? car.x + 1.4 * r : side < 0 ? car.x - 1.4 * r - w : car.x - w / 2;
      const box = { x, y: car.y + dy * r - h / 2, w, h };
      if (car.n === focused || (!placed.some((p) => overlaps(p.box, box)) && !boxes.some((b, k) => cars[k] !== car && overlaps(b, box)))) {
        spot = box;
        break;
      }
    }
    if (spot) placed.push({ box: spot, car, text, extra: 0 });
    else if (placed.length) {
      // Counted into the nearest label drawn.
      let best = placed[0];
      let bestDistance = Infinity;
      for (const p of placed) {
        const distance = (p.car.x - car.x) ** 2 + (p.car.y - car.y) ** 2;
        if (distance < bestDistance) {
          best = p;
          bestDistance = distance;
        }
      }
      best.extra += 1;
    }
  }
  for (const p of placed) {
    const text = p.extra ? `${p.text} +${p.extra}` : p.text;
    const mine = p.car.n === focused;
    const w = p.extra ? measure(g, text) + 4 * ratio : p.box.w;
    g.fillStyle = mine ? "rgba(255,255,255,0.92)" : "rgba(21,23,27,0.78)";
    g.fillRect(p.box.x, p.box.y, w, p.box.h);
    g.fillStyle = mine ? "#111" : "#e5e7eb";
    g.fillText(text, p.box.x + 2 * ratio, p.box.y + p.box.h / 2);
  }
  return placed.length;
}

function marker(g, x, y, r, colour, ratio, dim) {
  g.beginPath();
  g.arc(x, y, r, 0, 2 * Math.PI);
  g.globalAlpha = dim ? 0.75 : 1;
  g.fillStyle = `rgb(${colour[0]},${colour[1]},${colour[2]})`;
  g.fill();
  g.globalAlpha = 1;
  g.lineWidth = 1.5 * ratio;
  g.strokeStyle = "#111";
  g.stroke();
}

// The car under canvas point (x, y), within `reach` pixels, or -1.
export function carAt(cars, x, y, reach) {
  let best = -1;
  let bestDistance = reach * reach;
  for (const car of cars) {
    const distance = (car.x - x) ** 2 + (car.y - y) ** 2;
    if (distance <= bestDistance) {
      best = car.n;
      bestDistance = distance;
    }
  }
  return best;
}
