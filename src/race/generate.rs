//! Procedural race generator: builds a closed circuit, simulates a whole race at 25 FPS and
//! returns the metadata and every frame. Used by the CLI to make demo races and by tests, so
//! the server works without real data. Same parameters => same race, bit for bit.

use super::circuit::Outline;
use super::model::{
    Bounds, Driver, DriverFrame, DriverStatus, Frame, RaceMeta, Track, TrackStatus,
    TrackStatusInterval, DRIVER_FIELDS, FPS,
};
use super::timeline::{Recorder, Timeline, WeatherSample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DT: f64 = 1.0 / FPS as f64;
const G: f64 = 9.81;

// Track shape.
const HALF_WIDTH: f64 = 7.5;
const FINE_SPACING: f64 = 1.0;
const STORED_SPACING: f64 = 6.0;
const MIN_CORNER_RADIUS: f64 = 12.0;
const MIN_MAIN_STRAIGHT: f64 = 450.0;
const MIN_CLEARANCE: f64 = 28.0;
const MAX_TRACK_ATTEMPTS: u32 = 500;
const BOUNDS_MARGIN: f64 = 20.0;
/// On a real outline, curvature under this (a radius over 500 m) counts as straight.
const REAL_STRAIGHT_CURVATURE: f64 = 1.0 / 500.0;

// Car performance: lateral grip is GRIP_LOW g plus GRIP_AERO g more at AERO_REF_V (downforce
// grows with v²), so slow corners run at 2-3 g and fast ones at 4-5 g.
const GRIP_LOW: f64 = 2.2;
const GRIP_AERO: f64 = 2.8;
const AERO_REF_V: f64 = 83.0;

// Race procedure.
const LIGHTS_OUT: f64 = 5.0;
const GRID_FIRST: f64 = 6.0;
const GRID_STEP: f64 = 8.0;
const GRID_STAGGER: f64 = 2.5;
const PIT_SPEED: f64 = 80.0 / 3.6;
const PIT_ENTRY: f64 = 220.0;
const PIT_EXIT: f64 = 220.0;
const PIT_LANE_OFFSET: f64 = 12.0;
const RETIRED_OFFSET: f64 = 14.0;
const LATERAL_RATE: f64 = 4.0;
const SC_PACE: f64 = 0.65;
const SC_CATCH_PACE: f64 = 0.8;
const SC_GAP: f64 = 20.0;
const VSC_PACE: f64 = 0.7;
const YELLOW_SECS: f64 = 25.0;
const DRS_GAIN: f64 = 1.015;
const DRS_WINDOW: f64 = 1.0;
const DRS_MIN_STRAIGHT: f64 = 300.0;
const DRS_ZONES: usize = 2;
/// Closer than this behind a car, a chaser loses downforce and cannot pass in corners.
const FOLLOW_RANGE: f64 = 40.0;
const MIN_FOLLOW: f64 = 20.0;
const DIRTY_AIR: f64 = 0.992;
/// Lateral offset of a car alongside another on a straight.
const PASSING_OFFSET: f64 = -3.0;
const COOL_DOWN_PACE: f64 = 0.5;
const COOL_DOWN_MAX: f64 = 150.0 / 3.6;
const END_PAD: f64 = 5.0;

const SOFT: i8 = 0;
const MEDIUM: i8 = 1;
const HARD: i8 = 2;

const TEAMS: [(&str, [u8; 3]); 10] = [
    ("Rossa Corse", [220, 20, 40]),
    ("Bluebolt Racing", [30, 65, 255]),
    ("Silverline Motorsport", [0, 210, 190]),
    ("Orange Arrow", [255, 135, 0]),
    ("Emerald Works", [0, 110, 70]),
    ("Flamingo GP", [255, 90, 200]),
    ("Grigio Racing", [180, 180, 190]),
    ("Violet Comet", [140, 80, 220]),
    ("Sky Falcon", [100, 196, 255]),
    ("Lime Vector", [82, 226, 82]),
];

/// Two drivers per team, in team order.
const DRIVERS: [(&str, u32); 20] = [
    ("MAR", 7),
    ("FEL", 21),
    ("DEV", 1),
    ("ORT", 11),
    ("HAR", 3),
    ("KOV", 9),
    ("ASH", 4),
    ("LIN", 8),
    ("ALM", 14),
    ("BEC", 18),
    ("DUP", 10),
    ("OKO", 31),
    ("NAK", 27),
    ("BRA", 20),
    ("LEF", 30),
    ("MOR", 6),
    ("RIV", 23),
    ("PET", 2),
    ("NIE", 12),
    ("VAS", 24),
];

/// What to generate; the seed alone decides track, strategies and incidents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenParams {
    pub laps: u16,
    /// 2..=20; fewer drivers = the first N of the built-in field.
    pub drivers: u8,
    pub seed: u64,
    pub id: String,
    pub name: String,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            laps: 57,
            drivers: 20,
            seed: 1,
            id: "demo".into(),
            name: "Generated Grand Prix".into(),
        }
    }
}

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum GenError {
    #[error("invalid generator parameters: {0}")]
    InvalidParams(String),
    #[error("no valid track found after {0} attempts")]
    NoTrack(u32),
    #[error("race simulation did not finish within {0} frames")]
    DidNotFinish(u32),
    #[error("circuit {id:?} cannot be raced on: {reason}")]
    BadCircuit { id: String, reason: String },
}

/// Generates a whole race on a random layout: deterministic per `params.seed`, so the same
/// parameters always give byte-identical files. `progress(frames_done, frames_estimated)` is
/// called every 1000 frames and once at the end, for a progress bar.
pub fn generate(
    params: &GenParams,
    progress: impl FnMut(u64, u64),
) -> Result<(RaceMeta, Vec<Frame>), GenError> {
    generate_on(params, None, progress)
}

/// Like [`generate`], on a real circuit's outline when one is given (see `circuit::load`):
/// the seed then decides everything but the layout.
pub fn generate_on(
    params: &GenParams,
    outline: Option<&Outline>,
    mut progress: impl FnMut(u64, u64),
) -> Result<(RaceMeta, Vec<Frame>), GenError> {
    check_params(params)?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let circuit = match outline {
        Some(o) => Circuit::from_outline(o, rng.random_range(320.0..338.0) / 3.6)?,
        None => build_circuit(&mut rng)?,
    };
    let n = usize::from(params.drivers);
    let cars = plan_cars(&mut rng, n, params.laps);
    let control = plan_control(&mut rng, &cars, params.laps, circuit.length);
    let mut sim = Sim {
        front: FrontTimes::new(cars.iter().map(|c| c.s).fold(f64::MIN, f64::max)),
        circuit,
        cars,
        control,
        laps: params.laps,
        order: (0..n).collect(),
    };

    let estimate =
        ((LIGHTS_OUT + f64::from(params.laps) * sim.circuit.lap_time * 1.03 + 60.0) / DT) as u64;
    let max_frames = u32::try_from(estimate * 2 + 15_000).unwrap_or(u32::MAX);
    let mut frames = Vec::with_capacity(estimate as usize + 2_000);
    let mut intervals: Vec<TrackStatusInterval> = Vec::new();
    let drivers: Vec<Driver> = DRIVERS[..n]
        .iter()
        .enumerate()
        .map(|(i, &(code, number))| Driver {
            code: code.into(),
            number,
            team: TEAMS[i / 2].0.into(),
            colour: TEAMS[i / 2].1,
        })
        .collect();
    let mut recorder = Recorder::new(&drivers);
    let mut k: u32 = 0;
    loop {
        let t = f64::from(k) * DT;
        if k > 0 {
            sim.step(t);
        }
        let status = sim.control.status(t);
        match intervals.last_mut() {
            Some(last) if last.status == status => {}
            Some(last) => {
                last.end_t = t;
                intervals.push(TrackStatusInterval {
                    status,
                    start_t: t,
                    end_t: t,
                });
            }
            None => intervals.push(TrackStatusInterval {
                status,
                start_t: 0.0,
                end_t: 0.0,
            }),
        }
        let frame = sim.frame(t);
        recorder.frame(k, &frame, status);
        frames.push(frame);
        if k.is_multiple_of(1000) {
            progress(u64::from(k), estimate.max(u64::from(k)));
        }
        if sim
            .control
            .all_done_at
            .is_some_and(|done| t >= done + END_PAD)
        {
            if let Some(last) = intervals.last_mut() {
                last.end_t = t;
            }
            break;
        }
        k += 1;
        if k >= max_frames {
            return Err(GenError::DidNotFinish(max_frames));
        }
    }
    let total = frames.len() as u64;
    progress(total, total);

    let meta = RaceMeta {
        id: params.id.clone(),
        name: params.name.clone(),
        total_laps: params.laps,
        fps: FPS,
        total_frames: k + 1,
        fields: DRIVER_FIELDS.iter().map(|f| f.to_string()).collect(),
        track: sim.circuit.track(),
        drivers,
        track_status: intervals,
        timeline: Timeline {
            events: recorder.into_events(),
            // Drawn last, so the weather changes nothing else a seed decides.
            weather: weather(&mut rng, k + 1),
        },
    };
    Ok((meta, frames))
}

/// One weather sample a minute: a warm dry day whose temperatures drift slowly.
fn weather(rng: &mut ChaCha8Rng, total_frames: u32) -> Vec<WeatherSample> {
    let air = rng.random_range(18.0..30.0);
    let track_gain = rng.random_range(8.0..16.0);
    let humidity = rng.random_range(35.0..65.0);
    let pressure = rng.random_range(1005.0..1020.0);
    let wind_from = rng.random_range(0.0..360.0);
    let wind = rng.random_range(0.5..4.0);
    (0..total_frames)
        .step_by(60 * FPS as usize)
        .map(|frame| {
            let t = f64::from(frame) * DT;
            // Slow drifts over the race (cooling towards the evening), never random jumps.
            let drift = (t / 3600.0) as f32;
            let wave = (t / 900.0).sin() as f32;
            WeatherSample {
                frame,
                t,
                air_temp_c: air - 1.5 * drift + 0.3 * wave,
                track_temp_c: air + track_gain - 4.0 * drift + 0.6 * wave,
                humidity_pct: (humidity + 4.0 * drift).min(100.0),
                pressure_hpa: pressure - 0.5 * drift,
                rainfall: false,
                wind_speed_ms: (wind + 0.5 * wave).max(0.0),
                wind_direction_deg: (wind_from + 10.0 * wave).rem_euclid(360.0) % 360.0,
            }
        })
        .collect()
}

fn check_params(p: &GenParams) -> Result<(), GenError> {
    let bad = |m: String| Err(GenError::InvalidParams(m));
    if !(2..=100).contains(&p.laps) {
        return bad(format!("laps is {}, must be 2..=100", p.laps));
    }
    if !(2..=20).contains(&p.drivers) {
        return bad(format!("drivers is {}, must be 2..=20", p.drivers));
    }
    if let Err(err) = crate::ids::RaceId::parse(p.id.as_str()) {
        return bad(err.to_string());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Track geometry: a random polygon around a circle whose corners are rounded with arcs,
// giving real straights and corners of known radius (curvature is exact, not estimated).

type V2 = [f64; 2];

fn sub(a: V2, b: V2) -> V2 {
    [a[0] - b[0], a[1] - b[1]]
}

fn add_scaled(a: V2, b: V2, k: f64) -> V2 {
    [a[0] + b[0] * k, a[1] + b[1] * k]
}

fn unit(a: V2) -> (V2, f64) {
    let len = a[0].hypot(a[1]);
    if len > 0.0 {
        ([a[0] / len, a[1] / len], len)
    } else {
        ([1.0, 0.0], 0.0)
    }
}

#[derive(Clone, Copy)]
enum Seg {
    Line { a: V2, u: V2, len: f64 },
    Arc { c: V2, r: f64, a0: f64, sweep: f64 },
}

impl Seg {
    fn len(&self) -> f64 {
        match *self {
            Seg::Line { len, .. } => len,
            Seg::Arc { r, sweep, .. } => r * sweep.abs(),
        }
    }

    /// Position, unit tangent and curvature `off` metres into the segment.
    fn eval(&self, off: f64) -> (V2, V2, f64) {
        match *self {
            Seg::Line { a, u, .. } => (add_scaled(a, u, off), u, 0.0),
            Seg::Arc { c, r, a0, sweep } => {
                let sign = if sweep < 0.0 { -1.0 } else { 1.0 };
                let phi = a0 + sign * off / r;
                let (sin, cos) = phi.sin_cos();
                (
                    [c[0] + r * cos, c[1] + r * sin],
                    [-sign * sin, sign * cos],
                    1.0 / r,
                )
            }
        }
    }
}

struct Path {
    segs: Vec<Seg>,
    starts: Vec<f64>,
    length: f64,
}

impl Path {
    /// Rounds every polygon vertex with an arc of (at most) the wanted radius; `None` if a
    /// corner would have to be tighter than any car could take.
    fn fillet(verts: &[V2], want_r: &[f64]) -> Option<Path> {
        let n = verts.len();
        let mut corners = Vec::with_capacity(n);
        for i in 0..n {
            let p = verts[i];
            let (u_in, l_in) = unit(sub(p, verts[(i + n - 1) % n]));
            let (u_out, l_out) = unit(sub(verts[(i + 1) % n], p));
            let turn = turn_at(verts, i);
            let half_tan = (turn.abs() / 2.0).tan();
            let r_max = if half_tan > 1e-9 {
                0.45 * l_in.min(l_out) / half_tan
            } else {
                f64::INFINITY
            };
            let r = want_r[i].min(r_max);
            if r < MIN_CORNER_RADIUS {
                return None;
            }
            let tangent_len = r * half_tan;
            let a = add_scaled(p, u_in, -tangent_len);
            let sign = if turn < 0.0 { -1.0 } else { 1.0 };
            let c = add_scaled(a, [-u_in[1], u_in[0]], r * sign);
            let a0 = (a[1] - c[1]).atan2(a[0] - c[0]);
            let b = add_scaled(p, u_out, tangent_len);
            corners.push((
                Seg::Arc {
                    c,
                    r,
                    a0,
                    sweep: turn,
                },
                b,
            ));
        }
        let mut segs = Vec::with_capacity(2 * n);
        for i in 0..n {
            let (arc, b) = corners[i];
            let next_a = match corners[(i + 1) % n].0 {
                Seg::Arc { c, r, a0, .. } => [c[0] + r * a0.cos(), c[1] + r * a0.sin()],
                Seg::Line { a, .. } => a,
            };
            let (u, len) = unit(sub(next_a, b));
            segs.push(arc);
            segs.push(Seg::Line { a: b, u, len });
        }
        let mut starts = Vec::with_capacity(segs.len());
        let mut length = 0.0;
        for s in &segs {
            starts.push(length);
            length += s.len();
        }
        Some(Path {
            segs,
            starts,
            length,
        })
    }

    /// Segment index and offset into it of lap distance `s` (wrapping).
    fn locate(&self, s: f64) -> (usize, f64) {
        let s = s.rem_euclid(self.length);
        let i = self.starts.partition_point(|&st| st <= s).saturating_sub(1);
        (i, s - self.starts[i])
    }

    fn point(&self, s: f64) -> V2 {
        let (i, off) = self.locate(s);
        self.segs[i].eval(off).0
    }

    /// Parts of the track more than 90 m apart along it must be `MIN_CLEARANCE` apart in
    /// space: no crossings, and no two edges touching.
    fn has_clearance(&self) -> bool {
        let n = (self.length / 5.0).ceil() as usize;
        let step = self.length / n as f64;
        let pts: Vec<V2> = (0..n).map(|i| self.point(i as f64 * step)).collect();
        let skip = (90.0 / step).ceil() as usize;
        let min2 = MIN_CLEARANCE * MIN_CLEARANCE;
        for (i, a) in pts.iter().enumerate() {
            for (j, b) in pts.iter().enumerate().skip(i + skip) {
                if n - (j - i) < skip {
                    break;
                }
                let d = sub(*a, *b);
                if d[0] * d[0] + d[1] * d[1] < min2 {
                    return false;
                }
            }
        }
        true
    }
}

/// Signed turn angle at vertex `i` of a closed polygon (positive = left).
fn turn_at(verts: &[V2], i: usize) -> f64 {
    let n = verts.len();
    let (u_in, _) = unit(sub(verts[i], verts[(i + n - 1) % n]));
    let (u_out, _) = unit(sub(verts[(i + 1) % n], verts[i]));
    (u_in[0] * u_out[1] - u_in[1] * u_out[0]).atan2(u_in[0] * u_out[0] + u_in[1] * u_out[1])
}

/// Convex hull (counter-clockwise) by the monotone chain algorithm.
fn convex_hull(mut pts: Vec<V2>) -> Vec<V2> {
    fn half<'a>(pts: impl Iterator<Item = &'a V2>) -> Vec<V2> {
        let mut h: Vec<V2> = Vec::new();
        for &p in pts {
            while let [.., o, a] = h[..] {
                if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) > 0.0 {
                    break;
                }
                h.pop();
            }
            h.push(p);
        }
        h.pop();
        h
    }
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut hull = half(pts.iter());
    hull.extend(half(pts.iter().rev()));
    hull
}

/// A random track outline in unit coordinates plus the corner radius wanted at each vertex
/// (metres): the convex hull of random points, with edge midpoints pushed in or out to make
/// bends and concave sections; the sharpest turn becomes a hairpin, gentle ones sweepers.
fn random_shape(rng: &mut ChaCha8Rng) -> (Vec<V2>, Vec<f64>) {
    let aspect = rng.random_range(0.45..0.9);
    let count = rng.random_range(10..=20);
    let pts: Vec<V2> = (0..count)
        .map(|_| {
            [
                rng.random_range(-1.0..1.0),
                aspect * rng.random_range(-1.0..1.0),
            ]
        })
        .collect();
    let mut verts = convex_hull(pts);
    // Two rounds of bending edges: big bends first, then smaller ones on long edges.
    for (min_len, chance, lo, hi) in [(0.3, 0.8, -0.12, 0.6), (0.4, 0.6, -0.15, 0.3)] {
        let mut bent = Vec::with_capacity(verts.len() * 2);
        for (i, &p) in verts.iter().enumerate() {
            bent.push(p);
            let q = verts[(i + 1) % verts.len()];
            let (u, len) = unit(sub(q, p));
            if len > min_len && rng.random_bool(chance) {
                let mid = add_scaled(p, sub(q, p), rng.random_range(0.3..0.7));
                // Left of a counter-clockwise edge is inside: mostly push inward.
                let push = len * rng.random_range(lo..hi);
                bent.push(add_scaled(mid, [-u[1], u[0]], push));
            }
        }
        verts = bent;
    }
    // Separate vertices that ended up too close, so every edge can hold its corners.
    for _ in 0..4 {
        for i in 0..verts.len() {
            for j in i + 1..verts.len() {
                let d = sub(verts[j], verts[i]);
                let (u, len) = unit(d);
                if len < 0.18 {
                    let push = (0.18 - len) / 2.0;
                    verts[i] = add_scaled(verts[i], u, -push);
                    verts[j] = add_scaled(verts[j], u, push);
                }
            }
        }
    }
    if rng.random_bool(0.5) {
        // Mirror image: the same kind of layout, driven clockwise.
        for v in &mut verts {
            v[0] = -v[0];
        }
    }
    let n = verts.len();
    let turns: Vec<f64> = (0..n).map(|i| turn_at(&verts, i).abs()).collect();
    let sharpest = (0..n)
        .max_by(|&a, &b| turns[a].total_cmp(&turns[b]))
        .unwrap_or(0);
    let radii = (0..n)
        .map(|i| {
            let range = if i == sharpest {
                14.0..26.0
            } else if turns[i] > 1.4 {
                18.0..60.0
            } else if turns[i] > 0.7 {
                30.0..160.0
            } else {
                60.0..400.0
            };
            rng.random_range(range)
        })
        .collect();
    (verts, radii)
}

/// Scales the polygon (not the corner radii) until the lap is `target` metres long.
fn fit_length(verts: &[V2], radii: &[f64], target: f64) -> Option<Path> {
    let n = verts.len();
    let perimeter: f64 = (0..n)
        .map(|i| unit(sub(verts[(i + 1) % n], verts[i])).1)
        .sum();
    let mut scale = target / perimeter;
    for _ in 0..8 {
        let scaled: Vec<V2> = verts.iter().map(|v| [v[0] * scale, v[1] * scale]).collect();
        let path = Path::fillet(&scaled, radii)?;
        if (path.length - target).abs() < 1.0 {
            return Some(path);
        }
        scale += (target - path.length) / perimeter;
    }
    None
}

/// Highest speed (m/s) through a corner of curvature `k`, from the grip model.
fn corner_speed(k: f64, v_top: f64) -> f64 {
    let aero = GRIP_AERO * G / (AERO_REF_V * AERO_REF_V);
    let denom = k - aero;
    if denom <= 0.0 {
        v_top
    } else {
        (GRIP_LOW * G / denom).sqrt().min(v_top)
    }
}

/// Traction-limited below ~150 km/h, drag-limited near the top speed.
fn accel_limit(v: f64, v_top: f64) -> f64 {
    G * (1.2 - 1.1 * (v / v_top).powi(2)).max(0.1)
}

/// Braking grows with downforce: ~2 g slow, ~4.8 g at top speed.
fn brake_limit(v: f64, v_top: f64) -> f64 {
    G * (2.0 + 2.8 * (v / v_top).powi(2))
}

/// Fastest possible speed at each sample: corner limits, then acceleration forward and
/// braking backward, starting from the slowest point so the loop closes consistently.
fn speed_profile(curv: &[f64], ds: f64, v_top: f64) -> Vec<f64> {
    let n = curv.len();
    let mut v: Vec<f64> = curv.iter().map(|&k| corner_speed(k, v_top)).collect();
    let start = (0..n).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0);
    for k in 1..n {
        let i = (start + k) % n;
        let p = (i + n - 1) % n;
        let reach = (v[p] * v[p] + 2.0 * accel_limit(v[p], v_top) * ds).sqrt();
        v[i] = v[i].min(reach);
    }
    for k in 1..n {
        let i = (start + n - k) % n;
        let next = (i + 1) % n;
        let reach = (v[next] * v[next] + 2.0 * brake_limit(v[next], v_top) * ds).sqrt();
        v[i] = v[i].min(reach);
    }
    v
}

#[derive(Clone, Copy)]
struct TrackPoint {
    x: f64,
    y: f64,
    /// Unit normal pointing out of the loop (pit lane and stopped cars go this side).
    nx: f64,
    ny: f64,
    /// Fastest speed here for a car of pace 1.0, m/s.
    v: f64,
    /// On a straight: cars may pass here.
    straight: bool,
    drs: bool,
}

/// The track sampled every ~1 m from the start line, with its speed profile.
struct Circuit {
    length: f64,
    ds: f64,
    pts: Vec<TrackPoint>,
    v_top: f64,
    lap_time: f64,
}

fn build_circuit(rng: &mut ChaCha8Rng) -> Result<Circuit, GenError> {
    for _ in 0..MAX_TRACK_ATTEMPTS {
        let v_top = rng.random_range(320.0..338.0) / 3.6;
        let target = rng.random_range(4500.0..6000.0);
        let (verts, radii) = random_shape(rng);
        if let Some(c) = fit_length(&verts, &radii, target).and_then(|p| Circuit::new(&p, v_top)) {
            return Ok(c);
        }
    }
    Err(GenError::NoTrack(MAX_TRACK_ATTEMPTS))
}

impl Circuit {
    /// Samples the path from a start line 60 % along the longest straight (room behind it
    /// for the grid and pit entry); `None` if the layout is not race-like.
    fn new(path: &Path, v_top: f64) -> Option<Circuit> {
        let (line_seg, straight) = path
            .segs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match *s {
                Seg::Line { len, .. } => Some((i, len)),
                Seg::Arc { .. } => None,
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if straight < MIN_MAIN_STRAIGHT {
            return None;
        }
        let s0 = path.starts[line_seg] + 0.6 * straight;
        // DRS zones on the (at most) two longest straights, as on most real circuits.
        let mut straights: Vec<(usize, f64)> = path
            .segs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match *s {
                Seg::Line { len, .. } if len >= DRS_MIN_STRAIGHT => Some((i, len)),
                _ => None,
            })
            .collect();
        straights.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        straights.truncate(DRS_ZONES);
        let length = path.length;
        let n = (length / FINE_SPACING).round() as usize;
        let ds = length / n as f64;
        let mut pts = Vec::with_capacity(n);
        let mut curv = Vec::with_capacity(n);
        for i in 0..n {
            let (seg_i, off) = path.locate(s0 + i as f64 * ds);
            let seg = path.segs[seg_i];
            let (p, tan, k) = seg.eval(off);
            let drs = straights
                .iter()
                .any(|&(j, len)| j == seg_i && off >= 80.0 && off <= len - 30.0);
            // Right-hand normal: outward for a counter-clockwise loop.
            pts.push(TrackPoint {
                x: p[0],
                y: p[1],
                nx: tan[1],
                ny: -tan[0],
                v: 0.0,
                straight: k == 0.0,
                drs,
            });
            curv.push(k);
        }
        let v = speed_profile(&curv, ds, v_top);
        let lap_time: f64 = v.iter().map(|v| ds / v).sum();
        let v_min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let v_max = v.iter().copied().fold(0.0, f64::max);
        if !(72.0..=100.0).contains(&lap_time)
            || !(55.0..=105.0).contains(&(v_min * 3.6))
            || v_max * 3.6 < 310.0
        {
            return None;
        }
        if !path.has_clearance() {
            return None;
        }
        let area: f64 = (0..n)
            .map(|i| {
                let (a, b) = (&pts[i], &pts[(i + 1) % n]);
                a.x * b.y - b.x * a.y
            })
            .sum();
        let flip = if area < 0.0 { -1.0 } else { 1.0 };
        let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in &pts {
            x_min = x_min.min(p.x);
            x_max = x_max.max(p.x);
            y_min = y_min.min(p.y);
            y_max = y_max.max(p.y);
        }
        let (cx, cy) = ((x_min + x_max) / 2.0, (y_min + y_max) / 2.0);
        for (p, v) in pts.iter_mut().zip(v) {
            p.x -= cx;
            p.y -= cy;
            p.nx *= flip;
            p.ny *= flip;
            p.v = v;
        }
        Some(Circuit {
            length,
            ds,
            pts,
            v_top,
            lap_time,
        })
    }

    /// A real circuit: the outline's points, with speeds from its measured curvature (limited
    /// to MIN_CORNER_RADIUS), straights where it is nearly straight, DRS zones on its two
    /// longest straights, and the start line at the outline's first point.
    fn from_outline(o: &Outline, v_top: f64) -> Result<Circuit, GenError> {
        let n = o.points.len();
        if n < 100 || o.normals.len() != n || o.curvature.len() != n {
            return Err(GenError::BadCircuit {
                id: o.id.clone(),
                reason: format!("an outline of {n} points"),
            });
        }
        let ds = o.length / n as f64;
        let curv: Vec<f64> = o
            .curvature
            .iter()
            .map(|k| k.min(1.0 / MIN_CORNER_RADIUS))
            .collect();
        let straight: Vec<bool> = curv.iter().map(|&k| k < REAL_STRAIGHT_CURVATURE).collect();
        // Runs of straight points as (first index, points), scanned from a corner so that a
        // straight through the start line is one run.
        let Some(corner) = straight.iter().position(|s| !s) else {
            return Err(GenError::BadCircuit {
                id: o.id.clone(),
                reason: "it has no corners".into(),
            });
        };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for k in 1..=n {
            let i = (corner + k) % n;
            match (straight[i], runs.last_mut()) {
                (true, Some((start, len))) if (*start + *len) % n == i => *len += 1,
                (true, _) => runs.push((i, 1)),
                _ => {}
            }
        }
        runs.retain(|&(_, len)| len as f64 * ds >= DRS_MIN_STRAIGHT);
        runs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        runs.truncate(DRS_ZONES);
        let mut drs = vec![false; n];
        for &(start, len) in &runs {
            let (from, to) = (
                (80.0 / ds) as usize,
                len.saturating_sub((30.0 / ds) as usize),
            );
            for k in from..to {
                drs[(start + k) % n] = true;
            }
        }
        let v = speed_profile(&curv, ds, v_top);
        let lap_time: f64 = v.iter().map(|v| ds / v).sum();
        let pts = (0..n)
            .map(|i| TrackPoint {
                x: o.points[i][0],
                y: o.points[i][1],
                nx: o.normals[i][0],
                ny: o.normals[i][1],
                v: v[i],
                straight: straight[i],
                drs: drs[i],
            })
            .collect();
        Ok(Circuit {
            length: o.length,
            ds,
            pts,
            v_top,
            lap_time,
        })
    }

    /// Sample index and fraction towards the next one for race distance `s` (wrapping).
    fn locate(&self, s: f64) -> (usize, usize, f64) {
        let u = s.rem_euclid(self.length) / self.ds;
        let i = (u as usize).min(self.pts.len() - 1);
        (i, (i + 1) % self.pts.len(), u - i as f64)
    }

    /// Position on the centreline plus `lateral` metres outward.
    fn position(&self, s: f64, lateral: f64) -> V2 {
        let (i, j, f) = self.locate(s);
        let (a, b) = (&self.pts[i], &self.pts[j]);
        let lerp = |p: f64, q: f64| p + (q - p) * f;
        [
            lerp(a.x, b.x) + lateral * lerp(a.nx, b.nx),
            lerp(a.y, b.y) + lateral * lerp(a.ny, b.ny),
        ]
    }

    fn speed(&self, s: f64) -> f64 {
        let (i, j, f) = self.locate(s);
        self.pts[i].v + (self.pts[j].v - self.pts[i].v) * f
    }

    fn drs_zone(&self, s: f64) -> bool {
        self.pts[self.locate(s).0].drs
    }

    fn straight(&self, s: f64) -> bool {
        self.pts[self.locate(s).0].straight
    }

    /// The stored outline: closed (last point repeats the first), ~6 m spacing.
    fn track(&self) -> Track {
        let n = (self.length / STORED_SPACING).round() as usize;
        let mut t = Track {
            length_m: self.length as f32,
            centre_x: Vec::with_capacity(n + 1),
            centre_y: Vec::with_capacity(n + 1),
            inner_x: Vec::with_capacity(n + 1),
            inner_y: Vec::with_capacity(n + 1),
            outer_x: Vec::with_capacity(n + 1),
            outer_y: Vec::with_capacity(n + 1),
            sector: Vec::with_capacity(n + 1),
            bounds: Bounds {
                x_min: f32::MAX,
                x_max: f32::MIN,
                y_min: f32::MAX,
                y_max: f32::MIN,
            },
        };
        for i in 0..=n {
            let s = self.length * i as f64 / n as f64;
            let c = self.position(s, 0.0);
            let inner = self.position(s, -HALF_WIDTH);
            let outer = self.position(s, HALF_WIDTH);
            t.centre_x.push(c[0] as f32);
            t.centre_y.push(c[1] as f32);
            t.inner_x.push(inner[0] as f32);
            t.inner_y.push(inner[1] as f32);
            t.outer_x.push(outer[0] as f32);
            t.outer_y.push(outer[1] as f32);
            t.sector.push(1 + (3 * i / n).min(2) as u8);
            let b = &mut t.bounds;
            for p in [inner, outer] {
                b.x_min = b.x_min.min((p[0] - BOUNDS_MARGIN) as f32);
                b.x_max = b.x_max.max((p[0] + BOUNDS_MARGIN) as f32);
                b.y_min = b.y_min.min((p[1] - BOUNDS_MARGIN) as f32);
                b.y_max = b.y_max.max((p[1] + BOUNDS_MARGIN) as f32);
            }
        }
        t
    }
}

// ---------------------------------------------------------------------------------------
// Race plan: every random choice is made up front, so the simulation itself is pure.

struct Stop {
    /// The stop happens at the end of this lap (the pit lane straddles the line).
    lap: u16,
    compound: i8,
    secs: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Pit {
    ToBox,
    Stopped { until: f64 },
    ToExit,
}

struct Car {
    pace: f64,
    /// Pace multiplier per lap (index 0 = lap 1), interpolated along the lap.
    noise: Vec<f64>,
    stops: Vec<Stop>,
    next_stop: usize,
    box_offset: f64,
    retire_lap: Option<f64>,

    s: f64,
    v: f64,
    accel: f64,
    lateral: f64,
    status: DriverStatus,
    pit: Option<Pit>,
    compound: i8,
    stint_start: f64,
    finish_line: Option<f64>,
    finished_at: f64,
    finish_gaps: Option<(f32, f32)>,
    drs: u8,
    drs_latched: bool,
    in_zone: bool,
}

impl Car {
    fn racing(&self) -> bool {
        matches!(self.status, DriverStatus::Running | DriverStatus::Pit)
    }

    fn stop_line(&self) -> Option<f64> {
        self.stops.get(self.next_stop).map(|st| f64::from(st.lap))
    }
}

fn plan_cars(rng: &mut ChaCha8Rng, n: usize, laps: u16) -> Vec<Car> {
    let team_pace: Vec<f64> = (0..10).map(|_| rng.random_range(0.984..1.0)).collect();
    let pace: Vec<f64> = (0..n)
        .map(|i| team_pace[i / 2] * (1.0 + rng.random_range(-0.003..0.003)))
        .collect();
    // Qualifying is pace plus noise, so some fast cars start behind slower ones.
    let quali: Vec<f64> = pace
        .iter()
        .map(|p| p * (1.0 + rng.random_range(-0.004..0.004)))
        .collect();
    let mut grid: Vec<usize> = (0..n).collect();
    grid.sort_by(|&a, &b| quali[b].total_cmp(&quali[a]).then(a.cmp(&b)));
    let mut slot = vec![0usize; n];
    for (g, &i) in grid.iter().enumerate() {
        slot[i] = g;
    }

    let mut cars: Vec<Car> = (0..n)
        .map(|i| {
            let start = if rng.random_bool(0.6) { MEDIUM } else { SOFT };
            let stops = plan_stops(rng, laps, start);
            let noise = (0..=laps)
                .map(|_| 1.0 + rng.random_range(-0.004..0.004))
                .collect();
            let g = slot[i];
            Car {
                pace: pace[i],
                noise,
                stops,
                next_stop: 0,
                box_offset: -60.0 + 14.0 * (i / 2) as f64,
                retire_lap: None,
                s: -(GRID_FIRST + GRID_STEP * g as f64),
                v: 0.0,
                accel: 0.0,
                lateral: if g.is_multiple_of(2) {
                    GRID_STAGGER
                } else {
                    -GRID_STAGGER
                },
                status: DriverStatus::Running,
                pit: None,
                compound: start,
                stint_start: 0.0,
                finish_line: None,
                finished_at: f64::INFINITY,
                finish_gaps: None,
                drs: 0,
                drs_latched: false,
                in_zone: false,
            }
        })
        .collect();

    // 0-2 retirements (never everyone), at a random point of a random lap before the last.
    let u: f64 = rng.random();
    let count = if u < 0.45 {
        0
    } else if u < 0.8 {
        1
    } else {
        2
    };
    for _ in 0..count.min(n - 1) {
        let i = rng.random_range(0..n);
        let at = f64::from(rng.random_range(0..laps - 1)) + rng.random_range(0.1..0.9);
        if cars[i].retire_lap.is_none() {
            cars[i].retire_lap = Some(at);
        }
    }
    cars
}

/// One or two stops, each onto a different compound; short races stop once.
fn plan_stops(rng: &mut ChaCha8Rng, laps: u16, start: i8) -> Vec<Stop> {
    let l = f64::from(laps);
    let lap_at = |frac: f64, lo: u16| ((l * frac).round() as u16).clamp(lo, laps - 1);
    let mut stops = if laps >= 12 && rng.random_bool(0.35) {
        let first = lap_at(rng.random_range(0.22..0.36), 1);
        let second = lap_at(rng.random_range(0.55..0.72), first + 1);
        vec![first, second]
    } else {
        vec![lap_at(rng.random_range(0.35..0.6), 1)]
    }
    .into_iter()
    .map(|lap| Stop {
        lap,
        compound: SOFT,
        secs: rng.random_range(2.2..3.2),
    })
    .collect::<Vec<_>>();
    let mut current = start;
    for st in &mut stops {
        let options = match current {
            SOFT => [MEDIUM, HARD],
            MEDIUM => [HARD, SOFT],
            _ => [MEDIUM, SOFT],
        };
        // Mostly onto the harder option.
        st.compound = if rng.random_bool(0.75) {
            options[0]
        } else {
            options[1]
        };
        current = st.compound;
    }
    stops
}

/// Slower lap by compound base offset plus wear per lap of stint age.
fn tyre_factor(compound: i8, age_laps: f64) -> f64 {
    let (base, wear) = match compound {
        SOFT => (0.0, 0.0011),
        MEDIUM => (0.004, 0.0006),
        _ => (0.008, 0.0003),
    };
    1.0 / (1.0 + base + wear * age_laps.max(0.0))
}

#[derive(Clone, Copy)]
enum Neutral {
    SafetyCar { laps: u16 },
    Virtual { secs: f64 },
}

#[derive(Clone, Copy)]
enum Trigger {
    Retirement(usize),
    LeaderAt(f64),
}

struct SafetyCar {
    s: f64,
    /// Comes in when the leader reaches this distance (a line crossing).
    end_s: f64,
}

/// Race control: neutralisations, yellow flags, DRS enablement and the chequered flag.
struct RaceControl {
    plan: Option<(Trigger, Neutral)>,
    deploy_at: Option<f64>,
    sc: Option<SafetyCar>,
    vsc_until: Option<f64>,
    yellow_until: f64,
    drs_from_lap: u16,
    chequered: bool,
    all_done_at: Option<f64>,
}

impl RaceControl {
    fn status(&self, t: f64) -> TrackStatus {
        if self.sc.is_some() {
            TrackStatus::SafetyCar
        } else if self.vsc_until.is_some() {
            TrackStatus::VirtualSafetyCar
        } else if t < self.yellow_until {
            TrackStatus::Yellow
        } else {
            TrackStatus::Green
        }
    }

    fn drs_enabled(&self, leader_lap: u16) -> bool {
        self.sc.is_none() && self.vsc_until.is_none() && leader_lap >= self.drs_from_lap
    }
}

fn plan_control(rng: &mut ChaCha8Rng, cars: &[Car], laps: u16, length: f64) -> RaceControl {
    let first_retirement = cars
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.retire_lap.map(|s| (i, s)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let sc = Neutral::SafetyCar {
        laps: rng.random_range(3..=5),
    };
    let vsc = Neutral::Virtual {
        secs: rng.random_range(35.0..80.0),
    };
    let u: f64 = rng.random();
    let plan = match first_retirement {
        Some((i, _)) if u < 0.45 => Some((Trigger::Retirement(i), sc)),
        Some((i, _)) if u < 0.7 => Some((Trigger::Retirement(i), vsc)),
        Some(_) => None,
        // Debris: a safety car without a retirement.
        None if laps >= 8 && u < 0.3 => {
            let lap = f64::from(rng.random_range(2..laps - 4)) + rng.random_range(0.1..0.9);
            Some((Trigger::LeaderAt(lap * length), sc))
        }
        None => None,
    };
    RaceControl {
        plan,
        deploy_at: None,
        sc: None,
        vsc_until: None,
        yellow_until: 0.0,
        drs_from_lap: 3,
        chequered: false,
        all_done_at: None,
    }
}

/// When the race front first reached each metre of race distance: the leader's time at a
/// car's distance gives that car's gap to the leader.
struct FrontTimes {
    origin: f64,
    times: Vec<f64>,
    reached: f64,
}

impl FrontTimes {
    fn new(pole: f64) -> Self {
        let origin = -(GRID_FIRST + GRID_STEP * 20.0 + 50.0);
        let marks = (pole - origin).floor() as usize + 1;
        FrontTimes {
            origin,
            times: vec![LIGHTS_OUT; marks],
            reached: pole,
        }
    }

    fn advance(&mut self, front: f64, t: f64) {
        if front <= self.reached {
            return;
        }
        let from = self.reached;
        let last = (front - self.origin).floor() as usize;
        for m in self.times.len()..=last {
            let d = self.origin + m as f64;
            self.times.push(t - DT + DT * (d - from) / (front - from));
        }
        self.reached = front;
    }

    fn time_at(&self, s: f64) -> f64 {
        let u = (s - self.origin).max(0.0);
        let i = u as usize;
        match (self.times.get(i), self.times.get(i + 1)) {
            (Some(a), Some(b)) => a + (b - a) * (u - i as f64),
            (Some(a), None) => *a,
            _ => self.times.last().copied().unwrap_or(0.0),
        }
    }
}

struct Sim {
    circuit: Circuit,
    cars: Vec<Car>,
    control: RaceControl,
    front: FrontTimes,
    laps: u16,
    /// Car indices by classification, from the last frame.
    order: Vec<usize>,
}

impl Sim {
    fn lap_of(&self, s: f64) -> u16 {
        if s < 0.0 {
            1
        } else {
            ((s / self.circuit.length) as u16)
                .saturating_add(1)
                .min(self.laps)
        }
    }

    fn leader_s(&self) -> Option<f64> {
        self.cars
            .iter()
            .filter(|c| c.racing())
            .map(|c| c.s)
            .max_by(f64::total_cmp)
    }

    fn deploy(&mut self, neutral: Neutral, t: f64) {
        let Some(lead) = self.leader_s() else { return };
        let len = self.circuit.length;
        let lap_idx = (lead / len).floor();
        // Laps left after the current one; at least two of racing must follow the SC.
        let left = f64::from(self.laps) - lap_idx - 1.0;
        match neutral {
            Neutral::SafetyCar { laps } if left >= 3.0 => {
                // The current (partial) lap counts as the first safety car lap.
                let sc_laps = f64::from(laps).min(left - 1.0);
                self.control.sc = Some(SafetyCar {
                    s: lead + 250.0,
                    end_s: (lap_idx + sc_laps) * len,
                });
            }
            Neutral::SafetyCar { .. } => self.control.vsc_until = Some(t + 40.0),
            Neutral::Virtual { secs } => self.control.vsc_until = Some(t + secs),
        }
    }

    fn race_control(&mut self, t: f64) {
        let Some(lead) = self.leader_s() else { return };
        let leader_lap = self.lap_of(lead);
        let triggered = match self.control.plan {
            Some((Trigger::LeaderAt(d), n)) if lead >= d => Some(n),
            Some((_, n)) if self.control.deploy_at.is_some_and(|at| t >= at) => Some(n),
            _ => None,
        };
        if let Some(n) = triggered {
            self.control.plan = None;
            self.control.deploy_at = None;
            if self.control.sc.is_none() && self.control.vsc_until.is_none() {
                self.deploy(n, t);
            }
        }
        if self.control.sc.as_ref().is_some_and(|sc| lead >= sc.end_s) {
            self.control.sc = None;
            self.control.drs_from_lap = leader_lap + 2;
        }
        if self.control.vsc_until.is_some_and(|until| t >= until) {
            self.control.vsc_until = None;
            self.control.drs_from_lap = leader_lap + 1;
        }
        if let Some(sc) = &mut self.control.sc {
            sc.s += self.circuit.speed(sc.s) * SC_PACE * DT;
        }
    }

    /// Distance to and speed of whatever is physically ahead on track (racing cars and the
    /// safety car; cars in the pit lane, retired or cooling down are out of the way).
    fn ahead_on_track(&self, i: usize) -> (f64, f64) {
        let len = self.circuit.length;
        let me = self.cars[i].s;
        let mut best = self
            .control
            .sc
            .as_ref()
            .map(|sc| {
                (
                    (sc.s - me).rem_euclid(len),
                    self.circuit.speed(sc.s) * SC_PACE,
                )
            })
            .unwrap_or((f64::INFINITY, 0.0));
        for (j, c) in self.cars.iter().enumerate() {
            if j != i && c.status == DriverStatus::Running {
                let d = (c.s - me).rem_euclid(len);
                if d > 0.01 && d < best.0 {
                    best = (d, c.v);
                }
            }
        }
        best
    }

    /// Speed the car aims for now, its power relative to the reference car (which scales
    /// its acceleration: a faster car, or one with DRS open, pulls away on straights) and
    /// how hard it may slow down to get there.
    fn target_speed(&self, i: usize, t: f64, (gap, v_ahead): (f64, f64)) -> (f64, f64, f64) {
        let c = &self.cars[i];
        if t < LIGHTS_OUT {
            return (0.0, 1.0, 0.0);
        }
        let profile = self.circuit.speed(c.s);
        let mut power = 1.0;
        let mut v = match c.status {
            DriverStatus::Retired => 0.0,
            DriverStatus::Finished => (profile * COOL_DOWN_PACE).min(COOL_DOWN_MAX),
            DriverStatus::Pit => match c.pit {
                Some(Pit::ToBox) => {
                    let to_box = self.box_s(c) - c.s;
                    PIT_SPEED.min((2.0 * 8.0 * to_box.max(0.0)).sqrt())
                }
                Some(Pit::Stopped { .. }) => 0.0,
                _ => PIT_SPEED,
            },
            // Catch up with the queue, then hold SC_GAP behind whatever is ahead.
            DriverStatus::Running if self.control.sc.is_some() => (profile * SC_CATCH_PACE)
                .min(v_ahead + (gap - SC_GAP) * 0.5)
                .max(0.0),
            DriverStatus::Running if self.control.vsc_until.is_some() => profile * VSC_PACE,
            DriverStatus::Running => {
                let len = self.circuit.length;
                let lap_pos = (c.s.max(0.0) / len).min(f64::from(self.laps) - 1e-9);
                let idx = lap_pos as usize;
                let f = lap_pos - idx as f64;
                let noise = c.noise[idx] + (c.noise[idx + 1] - c.noise[idx]) * f;
                let age = (c.s - c.stint_start) / len;
                let drs = if c.drs == 12 { DRS_GAIN } else { 1.0 };
                power = c.pace * noise * tyre_factor(c.compound, age) * drs;
                let v = profile * power;
                // Stuck behind in corners; passing happens on straights.
                if gap < FOLLOW_RANGE && !self.circuit.straight(c.s) {
                    (v * DIRTY_AIR).min((v_ahead + (gap - MIN_FOLLOW) * 0.5).max(v_ahead * 0.97))
                } else {
                    v
                }
            }
        };
        // Hard braking only where the track or a stop demands it; a car that merely lost
        // power (DRS closing, tyre wear) coasts down under drag, and one slowing for a
        // (virtual) safety car brakes moderately.
        let braking_zone = self.circuit.speed(c.s + 1.0) < profile - 1e-3;
        let neutralised = self.control.sc.is_some() || self.control.vsc_until.is_some();
        let mut max_decel = match c.status {
            DriverStatus::Retired => 8.0,
            DriverStatus::Running if !braking_zone && v > c.v * 0.97 => 3.0,
            DriverStatus::Running if !braking_zone && neutralised => 12.0,
            _ => 50.0,
        };
        if c.status == DriverStatus::Running {
            if let Some(entry) = self.pit_entry(c).filter(|&e| e > c.s) {
                let pit_v = (PIT_SPEED * PIT_SPEED + 2.0 * 25.0 * (entry - c.s)).sqrt();
                if pit_v < v {
                    v = pit_v;
                    max_decel = 50.0;
                }
            }
        }
        (v, power, max_decel)
    }

    /// Where this car turns into the pit lane, if it has a stop still to make.
    fn pit_entry(&self, c: &Car) -> Option<f64> {
        if self.control.chequered {
            return None;
        }
        c.stop_line()
            .map(|lap| lap * self.circuit.length - PIT_ENTRY)
    }

    fn box_s(&self, c: &Car) -> f64 {
        c.stop_line().unwrap_or(0.0) * self.circuit.length + c.box_offset
    }

    fn step(&mut self, t: f64) {
        self.race_control(t);
        let v_top = self.circuit.v_top;
        let ahead: Vec<(f64, f64)> = (0..self.cars.len())
            .map(|i| self.ahead_on_track(i))
            .collect();
        let targets: Vec<(f64, f64, f64)> = (0..self.cars.len())
            .map(|i| self.target_speed(i, t, ahead[i]))
            .collect();
        for ((c, (target, power, down)), (gap, _)) in self.cars.iter_mut().zip(targets).zip(ahead) {
            // A car of power p accelerates like the reference car at v / p, scaled by p².
            let up = accel_limit(c.v / power, v_top) * power * power * 1.05 + 0.2;
            let v = target.clamp(c.v - down * DT, c.v + up * DT).max(0.0);
            c.accel = (v - c.v) / DT;
            c.s += 0.5 * (c.v + v) * DT;
            c.v = v;
            let want_lateral = match c.status {
                DriverStatus::Pit => PIT_LANE_OFFSET,
                DriverStatus::Retired => RETIRED_OFFSET,
                DriverStatus::Running if gap < 15.0 && self.circuit.straight(c.s) => PASSING_OFFSET,
                _ => 0.0,
            };
            if v > 0.5 {
                let step = LATERAL_RATE * DT;
                c.lateral += (want_lateral - c.lateral).clamp(-step, step);
            }
        }
        if let Some(front) = self.leader_s() {
            self.front.advance(front, t);
        }
        for i in 0..self.cars.len() {
            self.car_events(i, t);
        }
        self.chequered_flag(t);
    }

    fn car_events(&mut self, i: usize, t: f64) {
        let len = self.circuit.length;
        let entry = self.pit_entry(&self.cars[i]);
        let box_s = self.box_s(&self.cars[i]);
        let c = &mut self.cars[i];
        match (c.status, c.pit) {
            (DriverStatus::Running, _) => {
                if c.retire_lap.is_some_and(|r| c.s >= r * len) {
                    c.status = DriverStatus::Retired;
                    c.drs = 0;
                    match self.control.plan {
                        Some((Trigger::Retirement(who), _)) if who == i => {
                            self.control.deploy_at = Some(t + 6.0);
                        }
                        _ => self.control.yellow_until = t + YELLOW_SECS,
                    }
                } else if entry.is_some_and(|e| c.s >= e) {
                    c.status = DriverStatus::Pit;
                    c.pit = Some(Pit::ToBox);
                    c.drs = 0;
                }
            }
            (DriverStatus::Pit, Some(Pit::ToBox)) if c.s >= box_s - 0.5 => {
                c.v = 0.0;
                let secs = c.stops.get(c.next_stop).map_or(2.5, |st| st.secs);
                c.pit = Some(Pit::Stopped { until: t + secs });
            }
            (DriverStatus::Pit, Some(Pit::Stopped { until })) if t >= until => {
                if let Some(st) = c.stops.get(c.next_stop) {
                    c.compound = st.compound;
                }
                c.stint_start = c.s;
                c.pit = Some(Pit::ToExit);
            }
            (DriverStatus::Pit, Some(Pit::ToExit)) => {
                let exit = c.stop_line().unwrap_or(0.0) * len + PIT_EXIT;
                if c.s >= exit {
                    c.status = DriverStatus::Running;
                    c.pit = None;
                    c.next_stop += 1;
                }
            }
            _ => {}
        }
    }

    /// The leader completing the last lap shows the flag; everyone else finishes at their
    /// next line crossing.
    fn chequered_flag(&mut self, t: f64) {
        let len = self.circuit.length;
        let race_len = f64::from(self.laps) * len;
        if !self.control.chequered && self.cars.iter().any(|c| c.racing() && c.s >= race_len) {
            self.control.chequered = true;
            for c in self.cars.iter_mut().filter(|c| c.racing()) {
                let line = ((c.s / len).floor() + 1.0) * len;
                c.finish_line = Some(line.min(race_len));
            }
        }
        for c in &mut self.cars {
            match c.finish_line {
                Some(line) if c.racing() && c.s >= line => {
                    c.status = DriverStatus::Finished;
                    c.pit = None;
                    c.drs = 0;
                    c.finished_at = t - (c.s - line) / c.v.max(1.0);
                }
                _ => {}
            }
        }
        if self.control.all_done_at.is_none()
            && self
                .cars
                .iter()
                .all(|c| matches!(c.status, DriverStatus::Finished | DriverStatus::Retired))
        {
            self.control.all_done_at = Some(t);
        }
    }

    /// Classifies, times and emits the current state (also updates DRS, which needs gaps).
    fn frame(&mut self, t: f64) -> Frame {
        let cars = &self.cars;
        // Finished cars rank by the line they finished on, then when; retired cars last.
        let progress = |c: &Car| match c.finish_line {
            Some(line) if c.status == DriverStatus::Finished => line,
            _ => c.s,
        };
        self.order.sort_by(|&a, &b| {
            let (ca, cb) = (&cars[a], &cars[b]);
            let retired = |c: &Car| c.status == DriverStatus::Retired;
            retired(ca)
                .cmp(&retired(cb))
                .then(progress(cb).total_cmp(&progress(ca)))
                .then(ca.finished_at.total_cmp(&cb.finished_at))
                .then(a.cmp(&b))
        });

        let mut position = vec![0u8; cars.len()];
        let mut gaps = vec![(0f32, 0f32); cars.len()];
        let mut prev_gap = 0.0f64;
        for (rank, &i) in self.order.iter().enumerate() {
            let c = &self.cars[i];
            position[i] = (rank + 1) as u8;
            let gap_of = |s: f64, at: f64| (at - self.front.time_at(s)).max(0.0);
            let g = match (c.status, c.finish_gaps) {
                (DriverStatus::Retired, _) => (0.0, 0.0),
                _ if rank == 0 => (0.0, 0.0),
                (DriverStatus::Finished, Some(frozen)) => frozen,
                (DriverStatus::Finished, None) => {
                    let gl = gap_of(progress(c), c.finished_at);
                    (gl as f32, (gl - prev_gap).max(0.0) as f32)
                }
                _ => {
                    let gl = gap_of(c.s, t);
                    (gl as f32, (gl - prev_gap).max(0.0) as f32)
                }
            };
            if c.status != DriverStatus::Retired {
                prev_gap = f64::from(g.0);
            }
            gaps[i] = g;
        }

        let leader_lap = match self.order.first().map(|&i| &self.cars[i]) {
            Some(c) => self.driver_lap(c),
            None => 1,
        };
        let drs_on = self.control.drs_enabled(leader_lap) && t >= LIGHTS_OUT;
        let mut drivers = Vec::with_capacity(self.cars.len());
        for i in 0..self.cars.len() {
            let (gap_to_leader, gap_to_previous) = gaps[i];
            let lap = self.driver_lap(&self.cars[i]);
            let zone = self.circuit.drs_zone(self.cars[i].s) && self.cars[i].s >= 0.0;
            let xy = self.circuit.position(self.cars[i].s, self.cars[i].lateral);
            let c = &mut self.cars[i];
            if c.finish_gaps.is_none() && c.status == DriverStatus::Finished {
                c.finish_gaps = Some(gaps[i]);
            }
            // DRS: detection at the zone entry (within 1 s of the car ahead), open in the zone.
            let allowed = drs_on && position[i] > 1 && c.status == DriverStatus::Running;
            let eligible = allowed && gap_to_previous < DRS_WINDOW as f32;
            if zone && !c.in_zone {
                c.drs_latched = eligible;
            }
            c.in_zone = zone;
            // Once open it stays open to the end of the zone or the first braking.
            let racing = c.status == DriverStatus::Running;
            c.drs = if drs_on && racing && zone && c.drs_latched && c.accel > -3.0 {
                12
            } else if eligible {
                8
            } else {
                0
            };
            let (throttle, brake) = pedals(c.v, c.accel, self.circuit.v_top);
            let len = self.circuit.length;
            drivers.push(DriverFrame {
                x: xy[0] as f32,
                y: xy[1] as f32,
                speed: (c.v * 3.6) as f32,
                gear: gear(c.v * 3.6),
                throttle,
                brake,
                drs: c.drs,
                lap,
                position: position[i],
                tyre: c.compound,
                dist: c.s as f32,
                rel_dist: if c.s < 0.0 {
                    0.0
                } else {
                    (c.s.rem_euclid(len) / len) as f32
                },
                gap_to_leader,
                gap_to_previous,
                status: c.status,
            });
        }
        Frame {
            t,
            lap: leader_lap,
            drivers,
        }
    }

    /// 1-based current lap; a finished car stays on the last lap it completed.
    fn driver_lap(&self, c: &Car) -> u16 {
        let lap = self.lap_of(c.s);
        match c.finish_line {
            Some(line) if c.status == DriverStatus::Finished => {
                lap.min((line / self.circuit.length).round() as u16)
            }
            _ => lap,
        }
    }
}

/// Gear from speed bands (km/h); 0 when stationary.
fn gear(kmh: f64) -> u8 {
    const UPSHIFT: [f64; 7] = [70.0, 105.0, 140.0, 175.0, 210.0, 245.0, 280.0];
    if kmh < 2.0 {
        0
    } else {
        1 + UPSHIFT.iter().filter(|&&u| kmh >= u).count() as u8
    }
}

/// Throttle (0..=100) and brake (0..=1) from the acceleration actually achieved.
fn pedals(v: f64, accel: f64, v_top: f64) -> (f32, f32) {
    if v < 0.3 {
        (0.0, 0.0)
    } else if accel < -3.0 {
        (0.0, (-accel / 40.0).clamp(0.2, 1.0) as f32)
    } else if v >= 0.95 * v_top {
        (100.0, 0.0)
    } else {
        let t = 35.0 + 65.0 * accel / accel_limit(v, v_top);
        (t.clamp(0.0, 100.0) as f32, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::file::write_race;
    use std::time::Instant;

    fn params(laps: u16, drivers: u8, seed: u64) -> GenParams {
        GenParams {
            laps,
            drivers,
            seed,
            id: format!("test-{seed}"),
            name: "Test Grand Prix".into(),
        }
    }

    fn file_bytes(p: &GenParams) -> Vec<u8> {
        let (meta, frames) = generate(p, |_, _| {}).unwrap();
        let mut out = Vec::new();
        write_race(&mut out, &meta, frames).unwrap();
        out
    }

    fn running(d: &DriverFrame) -> bool {
        d.status == DriverStatus::Running
    }

    #[test]
    fn deterministic_per_seed() {
        let p = params(2, 8, 42);
        let a = file_bytes(&p);
        assert_eq!(a, file_bytes(&p));
        assert_ne!(a, file_bytes(&params(2, 8, 43)));
    }

    #[test]
    fn rejects_bad_params() {
        for p in [
            params(1, 20, 1),
            params(3, 1, 1),
            params(3, 21, 1),
            GenParams {
                id: "Bad Id".into(),
                ..GenParams::default()
            },
        ] {
            let err = generate(&p, |_, _| {}).unwrap_err();
            assert!(matches!(err, GenError::InvalidParams(_)), "{err}");
        }
    }

    #[test]
    fn tracks_are_race_like() {
        for seed in 0..12 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let c = build_circuit(&mut rng).unwrap();
            assert!(
                (4500.0..=6000.0).contains(&c.length),
                "seed {seed}: {}",
                c.length
            );
            assert!((72.0..=100.0).contains(&c.lap_time), "seed {seed}");
            let v_max = c.pts.iter().map(|p| p.v).fold(0.0, f64::max) * 3.6;
            let v_min = c.pts.iter().map(|p| p.v).fold(f64::MAX, f64::min) * 3.6;
            assert!((310.0..=345.0).contains(&v_max), "seed {seed}: top {v_max}");
            assert!(
                (55.0..=105.0).contains(&v_min),
                "seed {seed}: slowest {v_min}"
            );
            assert!(c.pts.iter().any(|p| p.drs));
            let t = c.track();
            let n = t.centre_x.len();
            assert!((700..=1100).contains(&n), "seed {seed}: {n} points");
            // Closed: the last point repeats the first.
            assert_eq!(
                (t.centre_x[0], t.centre_y[0]),
                (t.centre_x[n - 1], t.centre_y[n - 1])
            );
            assert_eq!(t.sector[0], 1);
            assert_eq!(t.sector[n - 1], 3);
            assert!(t.sector.windows(2).all(|w| w[0] <= w[1]));
            // Evenly spaced, about 6 m apart.
            for i in 1..n {
                let d =
                    (t.centre_x[i] - t.centre_x[i - 1]).hypot(t.centre_y[i] - t.centre_y[i - 1]);
                assert!((4.0..=6.5).contains(&d), "seed {seed}: spacing {d} at {i}");
            }
            // Edges 15 m apart.
            let w = (t.inner_x[0] - t.outer_x[0]).hypot(t.inner_y[0] - t.outer_y[0]);
            assert!((w - 15.0).abs() < 0.01, "{w}");
        }
    }

    /// Lap length over bounding-box diagonal: ~2.2 for a circle, higher for twistier layouts.
    fn twistiness(xy: &[(f64, f64)]) -> f64 {
        let len: f64 = xy
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).hypot(w[1].1 - w[0].1))
            .sum();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in xy {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        len / (x1 - x0).hypot(y1 - y0)
    }

    /// The outline of a real circuit in metres (equirectangular projection of its GeoJSON).
    fn real_outline(geojson: &str) -> Vec<(f64, f64)> {
        let coords = &geojson[geojson.find("\"coordinates\"").unwrap()..];
        let coords = &coords[..coords.find('}').unwrap()];
        let nums: Vec<f64> = coords
            .split(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '-'))
            .filter_map(|t| t.parse().ok())
            .collect();
        let lat0 = nums.iter().skip(1).step_by(2).sum::<f64>() / (nums.len() / 2) as f64;
        let m_per_deg = 6_371_000.0 * std::f64::consts::PI / 180.0;
        nums.chunks(2)
            .map(|p| (p[0] * m_per_deg * lat0.to_radians().cos(), p[1] * m_per_deg))
            .collect()
    }

    /// Generated layouts are as twisty as real ones (shared/data/f1-circuits, when present).
    #[test]
    fn tracks_resemble_real_circuits() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/f1-circuits/circuits");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: no circuit data at {}", dir.display());
            return;
        };
        let real: Vec<f64> = entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .map(|text| twistiness(&real_outline(&text)))
            .collect();
        assert!(real.len() >= 10);
        let lo = real.iter().copied().fold(f64::MAX, f64::min);
        let hi = real.iter().copied().fold(f64::MIN, f64::max);
        for seed in 0..12 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let t = build_circuit(&mut rng).unwrap().track();
            let xy: Vec<(f64, f64)> = t
                .centre_x
                .iter()
                .zip(&t.centre_y)
                .map(|(&x, &y)| (f64::from(x), f64::from(y)))
                .collect();
            let ours = twistiness(&xy);
            assert!(
                (lo..=hi).contains(&ours),
                "seed {seed}: {ours:.2} outside real {lo:.2}..{hi:.2}"
            );
        }
    }

    /// Everything a viewer relies on, checked frame by frame on a short full-field race.
    fn check_race(seed: u64) {
        check_race_on(seed, None);
    }

    fn check_race_on(seed: u64, outline: Option<&Outline>) -> (RaceMeta, Vec<Frame>) {
        let p = params(3, 20, seed);
        let mut calls = 0;
        let (meta, frames) = generate_on(&p, outline, |done, est| {
            calls += 1;
            assert!(done <= est);
        })
        .unwrap();
        assert!(calls >= 2);
        let n = meta.drivers.len();
        assert_eq!(n, 20);
        assert_eq!(meta.total_frames as usize, frames.len());
        assert_eq!(meta.fields, DRIVER_FIELDS);
        let codes: Vec<&str> = meta.drivers.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes[0], "MAR");
        let b = &meta.track.bounds;
        let last = frames.last().unwrap();

        // Track status intervals cover [0, end] without gaps.
        let ts = &meta.track_status;
        assert_eq!(ts[0].start_t, 0.0);
        assert!(ts.windows(2).all(|w| w[0].end_t == w[1].start_t));
        assert_eq!(ts.last().unwrap().end_t, last.t);

        for (k, f) in frames.iter().enumerate() {
            assert!((f.t - k as f64 * DT).abs() < 1e-9);
            let mut pos: Vec<u8> = f.drivers.iter().map(|d| d.position).collect();
            pos.sort_unstable();
            assert_eq!(pos, (1..=n as u8).collect::<Vec<_>>(), "frame {k}");
            for d in &f.drivers {
                assert!((0.0..=360.0).contains(&d.speed), "frame {k}: {d:?}");
                assert!(d.gear <= 8 && (0.0..=100.0).contains(&d.throttle));
                assert!((0.0..=1.0).contains(&d.brake) && [0, 8, 12].contains(&d.drs));
                assert!((0.0..1.0).contains(&d.rel_dist) && (1..=3).contains(&d.lap));
                assert!(d.x >= b.x_min && d.x <= b.x_max && d.y >= b.y_min && d.y <= b.y_max);
                assert!(d.gap_to_leader >= 0.0 && d.gap_to_previous >= 0.0);
                if d.position == 1 {
                    assert_eq!((d.gap_to_leader, d.gap_to_previous), (0.0, 0.0));
                    assert_eq!(f.lap, d.lap);
                }
            }
            // Cars still racing are ranked by distance, retired ones behind everyone.
            for a in &f.drivers {
                for c in &f.drivers {
                    let racing = |d: &DriverFrame| {
                        matches!(d.status, DriverStatus::Running | DriverStatus::Pit)
                    };
                    if racing(a) && racing(c) && a.position < c.position {
                        assert!(a.dist >= c.dist, "frame {k}: {a:?} ahead of {c:?}");
                    }
                    if a.status == DriverStatus::Retired && c.status != DriverStatus::Retired {
                        assert!(a.position > c.position);
                    }
                }
            }
        }

        // Race start: grid behind the line, stationary until lights out.
        assert!(frames[0]
            .drivers
            .iter()
            .all(|d| d.dist < 0.0 && d.speed == 0.0));
        // Race end: everyone finished or retired, and the replay runs ~5 s past that.
        assert!(last
            .drivers
            .iter()
            .all(|d| !matches!(d.status, DriverStatus::Running | DriverStatus::Pit)));
        let winner = last.drivers.iter().find(|d| d.position == 1).unwrap();
        assert_eq!((winner.status, winner.lap), (DriverStatus::Finished, 3));

        for i in 0..n {
            let laps: Vec<&DriverFrame> = frames.iter().map(|f| &f.drivers[i]).collect();
            if laps.last().unwrap().status == DriverStatus::Retired {
                let end = laps.last().unwrap();
                assert_eq!(end.speed, 0.0);
                continue;
            }
            // At least one stop, with a tyre change and a ~2.5 s standstill at the box.
            assert!(
                laps.iter().any(|d| d.status == DriverStatus::Pit),
                "driver {i}"
            );
            assert_ne!(laps[0].tyre, laps.last().unwrap().tyre, "driver {i}");
            let still = laps
                .iter()
                .filter(|d| d.status == DriverStatus::Pit && d.speed == 0.0)
                .count() as f64
                * DT;
            assert!(
                (2.0..=3.4).contains(&still),
                "driver {i}: stopped {still} s"
            );
            assert!(laps.iter().all(|d| d.speed > 0.0 || d.gear == 0));
            let lane_max = laps
                .iter()
                .filter(|d| d.status == DriverStatus::Pit)
                .map(|d| d.speed)
                .fold(0.0, f32::max);
            assert!((75.0..=85.0).contains(&lane_max), "driver {i}: {lane_max}");
        }

        check_events(&meta, &frames);

        // Somebody passes somebody on track (both running, not a pit stop reshuffle).
        let overtakes = frames
            .windows(2)
            .filter(|w| {
                (0..n).any(|a| {
                    (0..n).any(|c| {
                        let (a0, c0, a1, c1) = (
                            &w[0].drivers[a],
                            &w[0].drivers[c],
                            &w[1].drivers[a],
                            &w[1].drivers[c],
                        );
                        [a0, c0, a1, c1].iter().all(|d| running(d))
                            && a0.position < c0.position
                            && a1.position > c1.position
                    })
                })
            })
            .count();
        assert!(overtakes >= 1, "seed {seed}: no overtakes");
        (meta, frames)
    }

    /// Lap times and corner speeds on the real layouts, against what F1 cars do there
    /// (typical race laps: Spa 1:47, Bahrain 1:36, Silverstone 1:31, Hungaroring 1:21,
    /// Monza 1:23, Monaco 1:15), within 15 %.
    #[test]
    fn real_circuits_have_real_lap_times_and_corner_speeds() {
        use crate::race::circuit;
        let real = [
            ("be-1925", 107.0),
            ("bh-2002", 96.0),
            ("gb-1948", 91.0),
            ("hu-1986", 81.0),
            ("it-1922", 83.0),
            ("mc-1929", 75.0),
        ];
        for (id, lap) in real {
            let o = circuit::load(id).unwrap();
            let c = Circuit::from_outline(&o, 330.0 / 3.6).unwrap();
            let v_min = c.pts.iter().map(|p| p.v).fold(f64::MAX, f64::min) * 3.6;
            let v_max = c.pts.iter().map(|p| p.v).fold(0.0, f64::max) * 3.6;
            println!(
                "{id}: lap {:.1} s (real {lap}), {v_min:.0}-{v_max:.0} km/h",
                c.lap_time
            );
            assert!(
                (0.85 * lap..=1.15 * lap).contains(&c.lap_time),
                "{id}: lap {:.1} s against {lap} s",
                c.lap_time
            );
            assert!((40.0..=120.0).contains(&v_min), "{id}: slowest {v_min}");
            // Monaco's straights are all bent (the tunnel) or short.
            if id != "mc-1929" {
                assert!(c.pts.iter().any(|p| p.drs), "{id}: a DRS zone");
            }
        }
        // Monaco's hairpin is far slower than anything at Monza, whose straights are flat out.
        let slowest = |id| {
            let c = Circuit::from_outline(&circuit::load(id).unwrap(), 330.0 / 3.6).unwrap();
            c.pts.iter().map(|p| p.v).fold(f64::MAX, f64::min)
        };
        assert!(slowest("mc-1929") < slowest("it-1922"));
    }

    /// A full-field race on Monza is as sane as on a generated layout, and every car stays on
    /// the outline (within the pit lane's and the run-off's offsets) in every frame.
    #[test]
    fn races_on_a_real_circuit() {
        let o = crate::race::circuit::load("it-1922").unwrap();
        let (meta, frames) = check_race_on(3, Some(&o));
        let t = &meta.track;
        assert!((f64::from(t.length_m) - o.length).abs() < 1e-3);
        let centre: Vec<(f32, f32)> = t
            .centre_x
            .iter()
            .copied()
            .zip(t.centre_y.iter().copied())
            .collect();
        for f in frames.iter().step_by(5) {
            for d in &f.drivers {
                let nearest = centre
                    .iter()
                    .map(|&(x, y)| (x - d.x).hypot(y - d.y))
                    .fold(f32::MAX, f32::min);
                assert!(
                    nearest <= RETIRED_OFFSET as f32 + 4.0,
                    "t={}: {d:?} is {nearest} m off",
                    f.t
                );
            }
        }
    }

    /// The timeline says what the frames show: every lap start, stop, retirement and status
    /// change at the frame it happens, and a weather sample a minute.
    fn check_events(meta: &RaceMeta, frames: &[Frame]) {
        use crate::race::timeline::EventKind;
        let tl = &meta.timeline;
        tl.validate(meta.total_frames, meta.total_laps, &meta.drivers)
            .unwrap();
        for e in &tl.events {
            assert_eq!(e.t, frames[e.frame as usize].t, "{e:?}");
        }
        let of = |kind: EventKind| tl.events.iter().filter(move |e| e.kind == kind);
        let laps: Vec<u16> = of(EventKind::Lap).filter_map(|e| e.lap).collect();
        assert_eq!(laps, (1..=meta.total_laps).collect::<Vec<_>>());
        let start = of(EventKind::Lap).next().unwrap().t;
        assert!(
            (start - LIGHTS_OUT).abs() <= DT + 1e-9,
            "race starts at {start}"
        );
        for kind in [DriverStatus::Pit, DriverStatus::Retired] {
            let mut seen = Vec::new();
            for (k, w) in frames.windows(2).enumerate() {
                for (i, (a, b)) in w[0].drivers.iter().zip(&w[1].drivers).enumerate() {
                    if a.status != kind && b.status == kind {
                        seen.push((k as u32 + 1, meta.drivers[i].code.clone()));
                    }
                }
            }
            let event_kind = match kind {
                DriverStatus::Pit => EventKind::Pit,
                _ => EventKind::Retirement,
            };
            let listed: Vec<(u32, String)> = of(event_kind)
                .map(|e| (e.frame, e.driver.clone().unwrap()))
                .collect();
            assert_eq!(listed, seen, "{kind:?}");
        }
        let changes: Vec<(f64, TrackStatus)> = of(EventKind::TrackStatus)
            .map(|e| (e.t, e.status.unwrap()))
            .collect();
        let intervals: Vec<(f64, TrackStatus)> = meta
            .track_status
            .iter()
            .skip(1)
            .map(|iv| (iv.start_t, iv.status))
            .collect();
        assert_eq!(changes, intervals);
        assert_eq!(of(EventKind::Chequered).count(), 1);
        let minutes = (frames.last().unwrap().t / 60.0).floor() as usize + 1;
        assert_eq!(tl.weather.len(), minutes);
        assert!(tl
            .weather
            .windows(2)
            .all(|w| w[1].frame - w[0].frame == 1500));
    }

    #[test]
    fn three_lap_races_are_sane() {
        for seed in 1..=3 {
            check_race(seed);
        }
    }

    #[test]
    fn safety_car_bunches_the_field() {
        // Only simulate seeds whose plan has a safety car (it may still become a VSC).
        let plans_sc = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let length = build_circuit(&mut rng).unwrap().length;
            let cars = plan_cars(&mut rng, 8, 12);
            let control = plan_control(&mut rng, &cars, 12, length);
            matches!(control.plan, Some((_, Neutral::SafetyCar { .. })))
        };
        let (meta, frames) = (0..100)
            .filter(|&seed| plans_sc(seed))
            .map(|seed| generate(&params(12, 8, seed), |_, _| {}).unwrap())
            .find(|(m, _)| {
                m.track_status
                    .iter()
                    .any(|i| i.status == TrackStatus::SafetyCar)
            })
            .expect("some seed deploys a safety car");
        let sc = meta
            .track_status
            .iter()
            .find(|i| i.status == TrackStatus::SafetyCar)
            .unwrap();
        let during: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.t >= sc.start_t && f.t < sc.end_t)
            .collect();
        let spread = |f: &Frame| {
            let racing: Vec<f32> = f
                .drivers
                .iter()
                .filter(|d| running(d))
                .map(|d| d.dist)
                .collect();
            racing.iter().fold(f32::MIN, |a, &b| a.max(b))
                - racing.iter().fold(f32::MAX, |a, &b| a.min(b))
        };
        let (first, last) = (during[0], during[during.len() - 1]);
        assert!(
            spread(last) < spread(first) * 0.6,
            "{} -> {}",
            spread(first),
            spread(last)
        );
        assert!(during.iter().all(|f| f.drivers.iter().all(|d| d.drs == 0)));
        let late = &during[during.len() / 2..];
        let top = late
            .iter()
            .flat_map(|f| &f.drivers)
            .map(|d| d.speed)
            .fold(0.0, f32::max);
        let race_top = frames
            .iter()
            .flat_map(|f| &f.drivers)
            .map(|d| d.speed)
            .fold(0.0, f32::max);
        assert!(
            top < 0.85 * race_top,
            "under the safety car {top}, racing {race_top}"
        );
        // A retirement usually causes it: a retired car stays put, classified last.
        if let Some(i) = last
            .drivers
            .iter()
            .position(|d| d.status == DriverStatus::Retired)
        {
            let end = &frames.last().unwrap().drivers[i];
            assert_eq!(end.speed, 0.0);
            assert_eq!(end.position as usize, meta.drivers.len());
        }
    }

    #[test]
    fn two_driver_race() {
        let (meta, frames) = generate(&params(2, 2, 5), |_, _| {}).unwrap();
        assert_eq!(meta.drivers.len(), 2);
        assert!(frames.iter().all(|f| f.drivers.len() == 2));
    }

    /// Release timing of a full race: `cargo test --release -- --ignored --nocapture full_race`
    #[test]
    #[ignore]
    fn full_race_timing() {
        let p = GenParams::default();
        let start = Instant::now();
        let (meta, frames) = generate(&p, |_, _| {}).unwrap();
        let generated = start.elapsed();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.race");
        let start = Instant::now();
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        write_race(file, &meta, frames).unwrap();
        let written = start.elapsed();
        let size = std::fs::metadata(&path).unwrap().len();
        let start = Instant::now();
        let reader =
            crate::race::file::RaceReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let mut read = 0u32;
        for frame in reader {
            frame.unwrap();
            read += 1;
        }
        println!(
            "{} laps x {} drivers: {} frames ({:.0} s of racing); generate {:.2?}, write {:.2?}, \
             read {:.2?}; file {:.1} MB",
            p.laps,
            p.drivers,
            meta.total_frames,
            f64::from(meta.total_frames) / f64::from(FPS),
            generated,
            written,
            start.elapsed(),
            size as f64 / 1e6
        );
        assert_eq!(read, meta.total_frames);
    }
}
