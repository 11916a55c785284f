//! The track outline from real data: a lap's location trace closed, smoothed and resampled
//! evenly into a centreline, with edges offset either side and sectors by arc length.
//! `build` makes one from the fastest clean lap and projects every car onto it to get its
//! lap distance; the result becomes the race file's [`Track`].

use crate::race::{Bounds, Track};

/// Half the drawn track width, metres (as the generator's tracks).
pub const HALF_WIDTH_M: f64 = 7.5;
/// Margin around the edges and cars in the viewport bounds, metres.
const BOUNDS_MARGIN_M: f64 = 20.0;

/// A closed centreline: the last point repeats the first; `cum[i]` is the arc length at point i.
#[derive(Debug, Clone)]
pub struct Outline {
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    cum: Vec<f64>,
    length: f64,
}

/// Where a point lies relative to the centreline.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    /// Arc length from the start line, `0 <= s < length`.
    pub s: f64,
    /// Signed distance, positive to the left of the driving direction.
    pub offset: f64,
    /// Segment index, a hint for the next projection of the same car.
    pub segment: usize,
}

impl Outline {
    /// Builds an outline from a lap's trace (metres, in driving order, starting at the line).
    /// `None` when the trace is too short to be a lap.
    pub fn from_trace(trace: &[(f64, f64)], spacing_m: f64) -> Option<Self> {
        let mut pts: Vec<(f64, f64)> = Vec::with_capacity(trace.len() + 1);
        for &p in trace {
            if pts.last().is_none_or(|&q| dist(p, q) > 0.01) {
                pts.push(p);
            }
        }
        if pts.len() < 8 {
            return None;
        }
        let first = pts[0];
        pts.push(first);
        let raw = polyline_len(&pts);
        if raw < 200.0 {
            return None;
        }
        let n = ((raw / spacing_m).round() as usize).clamp(64, 8192);
        let mut even = resample_closed(&pts, n);
        // A circular moving average removes the ~3.7 Hz sampling corners; twice is enough.
        for _ in 0..2 {
            even = smooth_closed(&even, 2);
        }
        let mut closed = even;
        closed.push(closed[0]);
        let n = ((polyline_len(&closed) / spacing_m).round() as usize).clamp(64, 8192);
        let mut pts = resample_closed(&closed, n);
        pts.push(pts[0]);
        Some(Self::from_closed(pts))
    }

    fn from_closed(pts: Vec<(f64, f64)>) -> Self {
        let mut cum = Vec::with_capacity(pts.len());
        let mut acc = 0.0;
        for (i, &p) in pts.iter().enumerate() {
            if i > 0 {
                acc += dist(p, pts[i - 1]);
            }
            cum.push(acc);
        }
        Self {
            xs: pts.iter().map(|p| p.0).collect(),
            ys: pts.iter().map(|p| p.1).collect(),
            cum,
            length: acc,
        }
    }

    pub fn length(&self) -> f64 {
        self.length
    }

    fn segments(&self) -> usize {
        self.xs.len() - 1
    }

    /// The point at arc length `s` (wrapped) and the unit left normal there.
    pub fn point_at(&self, s: f64) -> ((f64, f64), (f64, f64)) {
        let s = s.rem_euclid(self.length);
        let i = match self.cum.binary_search_by(|c| c.total_cmp(&s)) {
            Ok(i) => i.min(self.segments() - 1),
            Err(i) => i.saturating_sub(1).min(self.segments() - 1),
        };
        let (a, b) = ((self.xs[i], self.ys[i]), (self.xs[i + 1], self.ys[i + 1]));
        let seg = (self.cum[i + 1] - self.cum[i]).max(1e-9);
        let f = ((s - self.cum[i]) / seg).clamp(0.0, 1.0);
        let (dx, dy) = ((b.0 - a.0) / seg, (b.1 - a.1) / seg);
        ((a.0 + dx * seg * f, a.1 + dy * seg * f), (-dy, dx))
    }

    /// Nearest point of the centreline. With a hint (the car's previous segment) only nearby
    /// segments are searched, unless the car is far from all of them.
    pub fn project(&self, p: (f64, f64), hint: Option<usize>) -> Projection {
        let n = self.segments();
        if let Some(h) = hint {
            const WINDOW: isize = 80;
            let best = (-WINDOW..=WINDOW)
                .map(|d| (h as isize + d).rem_euclid(n as isize) as usize)
                .map(|i| (i, self.seg_dist(i, p)))
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1));
            if let Some((i, (_, d))) = best {
                if d < 4.0 * HALF_WIDTH_M {
                    return self.projection_on(i, p);
                }
            }
        }
        let i = (0..n)
            .min_by(|&a, &b| self.seg_dist(a, p).1.total_cmp(&self.seg_dist(b, p).1))
            .unwrap_or(0);
        self.projection_on(i, p)
    }

    /// (fraction along segment i, distance) of the nearest point of segment i.
    fn seg_dist(&self, i: usize, p: (f64, f64)) -> (f64, f64) {
        let (a, b) = ((self.xs[i], self.ys[i]), (self.xs[i + 1], self.ys[i + 1]));
        let (vx, vy) = (b.0 - a.0, b.1 - a.1);
        let len2 = (vx * vx + vy * vy).max(1e-12);
        let f = (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / len2).clamp(0.0, 1.0);
        (f, dist(p, (a.0 + vx * f, a.1 + vy * f)))
    }

    fn projection_on(&self, i: usize, p: (f64, f64)) -> Projection {
        let (f, _) = self.seg_dist(i, p);
        let (a, b) = ((self.xs[i], self.ys[i]), (self.xs[i + 1], self.ys[i + 1]));
        let (vx, vy) = (b.0 - a.0, b.1 - a.1);
        let len = (vx * vx + vy * vy).sqrt().max(1e-9);
        let cross = (vx * (p.1 - a.1) - vy * (p.0 - a.0)) / len;
        let s = (self.cum[i] + f * (self.cum[i + 1] - self.cum[i])).rem_euclid(self.length);
        Projection {
            s,
            offset: cross,
            segment: i,
        }
    }

    /// Positive when the centreline runs anticlockwise (its infield is to the left).
    fn signed_area(&self) -> f64 {
        (0..self.segments())
            .map(|i| self.xs[i] * self.ys[i + 1] - self.xs[i + 1] * self.ys[i])
            .sum::<f64>()
            / 2.0
    }

    /// The race file's track: edges either side, sectors split at arc lengths `sector_at`
    /// (start of sectors 2 and 3), and bounds enclosing the edges and `cars` (min/max x, y).
    pub fn to_track(&self, sector_at: [f64; 2], cars: Option<[f64; 4]>) -> Track {
        let inside = if self.signed_area() >= 0.0 { 1.0 } else { -1.0 };
        let n = self.xs.len();
        let mut t = Track {
            length_m: self.length as f32,
            centre_x: Vec::with_capacity(n),
            centre_y: Vec::with_capacity(n),
            inner_x: Vec::with_capacity(n),
            inner_y: Vec::with_capacity(n),
            outer_x: Vec::with_capacity(n),
            outer_y: Vec::with_capacity(n),
            sector: Vec::with_capacity(n),
            bounds: Bounds {
                x_min: f32::MAX,
                x_max: f32::MIN,
                y_min: f32::MAX,
                y_max: f32::MIN,
            },
        };
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for i in 0..n {
            let s = self.cum[i].min(self.length - 1e-6);
            let (_, (nx, ny)) = self.point_at(s);
            let (x, y) = (self.xs[i], self.ys[i]);
            let inner = (
                x + inside * nx * HALF_WIDTH_M,
                y + inside * ny * HALF_WIDTH_M,
            );
            let outer = (
                x - inside * nx * HALF_WIDTH_M,
                y - inside * ny * HALF_WIDTH_M,
            );
            for p in [inner, outer] {
                x0 = x0.min(p.0);
                x1 = x1.max(p.0);
                y0 = y0.min(p.1);
                y1 = y1.max(p.1);
            }
            t.centre_x.push(x as f32);
            t.centre_y.push(y as f32);
            t.inner_x.push(inner.0 as f32);
            t.inner_y.push(inner.1 as f32);
            t.outer_x.push(outer.0 as f32);
            t.outer_y.push(outer.1 as f32);
            let sector = if i + 1 == n || self.cum[i] < sector_at[0] {
                1
            } else if self.cum[i] < sector_at[1] {
                2
            } else {
                3
            };
            t.sector.push(sector);
        }
        if let Some([cx0, cx1, cy0, cy1]) = cars {
            x0 = x0.min(cx0);
            x1 = x1.max(cx1);
            y0 = y0.min(cy0);
            y1 = y1.max(cy1);
        }
        t.bounds = Bounds {
            x_min: (x0 - BOUNDS_MARGIN_M) as f32,
            x_max: (x1 + BOUNDS_MARGIN_M) as f32,
            y_min: (y0 - BOUNDS_MARGIN_M) as f32,
            y_max: (y1 + BOUNDS_MARGIN_M) as f32,
        };
        t
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

fn polyline_len(pts: &[(f64, f64)]) -> f64 {
    pts.windows(2).map(|w| dist(w[0], w[1])).sum()
}

/// `n` points evenly spaced along a closed polyline (whose last point repeats the first),
/// starting at its first point; the repeat is not included.
fn resample_closed(pts: &[(f64, f64)], n: usize) -> Vec<(f64, f64)> {
    let total = polyline_len(pts);
    let step = total / n as f64;
    let mut out = Vec::with_capacity(n);
    let (mut seg, mut seg_start) = (0usize, 0.0);
    for k in 0..n {
        let target = k as f64 * step;
        while seg + 1 < pts.len() - 1 && seg_start + dist(pts[seg], pts[seg + 1]) < target {
            seg_start += dist(pts[seg], pts[seg + 1]);
            seg += 1;
        }
        let len = dist(pts[seg], pts[seg + 1]).max(1e-9);
        let f = ((target - seg_start) / len).clamp(0.0, 1.0);
        let (a, b) = (pts[seg], pts[seg + 1]);
        out.push((a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f));
    }
    out
}

/// Circular moving average over `2 * half + 1` points; the first point stays fixed so the
/// start line does not move.
fn smooth_closed(pts: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    let n = pts.len();
    let w = (2 * half + 1) as f64;
    (0..n)
        .map(|i| {
            if i == 0 {
                return pts[0];
            }
            let (mut sx, mut sy) = (0.0, 0.0);
            for d in 0..=2 * half {
                let p = pts[(i + n + d - half) % n];
                sx += p.0;
                sy += p.1;
            }
            (sx / w, sy / w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(r: f64, n: usize, clockwise: bool) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                let a = if clockwise { -a } else { a };
                (r * a.cos(), r * a.sin())
            })
            .collect()
    }

    #[test]
    fn a_circle_trace_becomes_an_even_closed_outline() {
        let o = Outline::from_trace(&circle(500.0, 300, false), 5.0).unwrap();
        let circumference = std::f64::consts::TAU * 500.0;
        assert!(
            (o.length() - circumference).abs() / circumference < 0.01,
            "{}",
            o.length()
        );
        assert_eq!(o.xs.first(), o.xs.last());
        let steps: Vec<f64> = o.cum.windows(2).map(|w| w[1] - w[0]).collect();
        let (lo, hi) = steps
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), &s| (a.min(s), b.max(s)));
        assert!(hi - lo < 0.5, "spacing {lo}..{hi}");
        // Starts where the trace started.
        assert!((o.xs[0] - 500.0).abs() < 1e-6 && o.ys[0].abs() < 1e-6);
    }

    #[test]
    fn projection_gives_arc_length_and_side() {
        let o = Outline::from_trace(&circle(500.0, 300, false), 5.0).unwrap();
        let quarter = o.length() / 4.0;
        // A point 3 m outside the circle a quarter of the way round (anticlockwise: left is in).
        let p = o.project((0.0, 503.0), None);
        assert!((p.s - quarter).abs() < 2.0, "{}", p.s);
        assert!((p.offset + 3.0).abs() < 0.5, "{}", p.offset);
        let hinted = o.project((0.0, 503.0), Some(p.segment + 5));
        assert!((hinted.s - p.s).abs() < 1e-6);
    }

    #[test]
    fn inner_edge_is_towards_the_infield_either_way_round() {
        for clockwise in [false, true] {
            let o = Outline::from_trace(&circle(500.0, 300, clockwise), 5.0).unwrap();
            let t = o.to_track([o.length() / 3.0, 2.0 * o.length() / 3.0], None);
            let r = |x: f32, y: f32| (x * x + y * y).sqrt();
            assert!(r(t.inner_x[10], t.inner_y[10]) < r(t.centre_x[10], t.centre_y[10]));
            assert!(r(t.outer_x[10], t.outer_y[10]) > r(t.centre_x[10], t.centre_y[10]));
            assert!(t.sector.contains(&2) && t.sector.contains(&3));
            assert_eq!(t.sector[0], 1);
            assert!(t.bounds.x_min < -500.0 && t.bounds.x_max > 500.0);
        }
    }
}
