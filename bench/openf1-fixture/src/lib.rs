//! A synthetic OpenF1 session and a local HTTP server that answers OpenF1 queries over it,
//! for the importer's tests and benchmark (no network). The records follow the API's schema
//! field for field; the server applies OpenF1's filters (`session_key=`, `driver_number=`,
//! `date>=`, `date<`, ...), logs every request, and can inject faults (a 429 with
//! `Retry-After`, a 500, a request that hangs).
//!
//! The importer's tests (tests/it/import_openf1.rs) and the benchmark's server
//! (`replay-hub-bench`'s `openf1_server`, bench/openf1-server/main.rs) use it; the hub itself
//! never does, and this crate does not depend on the hub.

use std::collections::HashMap;
use std::f64::consts::TAU;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

mod date;

pub use date::{format_date, parse_date};

/// What to generate.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    pub laps: u32,
    pub drivers: usize,
    /// Approximate lap length, metres.
    pub lap_length_m: f64,
    pub seed: u64,
    /// Pace of the slowest car relative to the fastest (low enough and it is lapped).
    pub slowest_pace: f64,
    /// Add the incidents the tests look for: a retirement with a safety car, a gap in one
    /// car's location data, (0, 0, 0) samples, and a listed driver without any location.
    pub incidents: bool,
}

impl FixtureSpec {
    /// Small: 4 cars over 3 laps of a 2 km track, every incident.
    pub fn small() -> Self {
        Self {
            laps: 3,
            drivers: 4,
            lap_length_m: 2000.0,
            seed: 1,
            slowest_pace: 0.6,
            incidents: true,
        }
    }

    /// A full-length race: 57 laps, 20 cars, 5.4 km.
    pub fn full() -> Self {
        Self {
            laps: 57,
            drivers: 20,
            lap_length_m: 5400.0,
            seed: 7,
            slowest_pace: 0.965,
            incidents: true,
        }
    }
}

pub const SESSION_KEY: u32 = 9590;
pub const MEETING_KEY: u32 = 1245;
/// 2024-09-01T13:00:00Z, the scheduled start.
const DATE_START: f64 = 1_725_195_600.0;
/// Lights out, after the formation lap.
pub const LIGHTS_OUT: f64 = DATE_START + 180.0;
/// The car whose location data has a gap, and the one that retires (indices in the grid).
pub const GAP_CAR: usize = 0;
pub const RETIRING_CAR: usize = 2;
pub const PITTING_CAR: usize = 1;

/// One record, indexed for the server's filters.
#[derive(Debug, Clone)]
struct Row {
    driver: Option<u32>,
    t: Option<f64>,
    value: Value,
}

/// A generated session: every endpoint's records.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    tables: HashMap<String, HashMap<Option<u32>, Vec<Row>>>,
    /// The track's centreline, metres, in the API's frame (before the 1/10 m scaling).
    pub centreline: Vec<(f64, f64)>,
}

const NUMBERS: [u32; 21] = [
    1, 11, 44, 63, 16, 55, 4, 81, 14, 18, 10, 31, 23, 2, 22, 3, 20, 27, 24, 77, 99,
];
const CODES: [&str; 21] = [
    "VER", "PER", "HAM", "RUS", "LEC", "SAI", "NOR", "PIA", "ALO", "STR", "GAS", "OCO", "ALB",
    "SAR", "TSU", "RIC", "MAG", "HUL", "ZHO", "BOT", "GIO",
];
const TEAMS: [(&str, &str); 10] = [
    ("Red Bull Racing", "3671C6"),
    ("Mercedes", "27F4D2"),
    ("Ferrari", "E8002D"),
    ("McLaren", "FF8000"),
    ("Aston Martin", "229971"),
    ("Alpine", "FF87BC"),
    ("Williams", "64C4FF"),
    ("RB", "6692FF"),
    ("Haas F1 Team", "B6BABD"),
    ("Kick Sauber", "52E252"),
];
/// Origin of the API's coordinates relative to the generated track, in 1/10 m.
const ORIGIN: (f64, f64) = (3120.0, -1740.0);

impl Fixture {
    pub fn generate(spec: &FixtureSpec) -> Self {
        Generator::new(spec).run()
    }

    fn push(
        &mut self,
        endpoint: &str,
        driver: Option<u32>,
        date_field: Option<&str>,
        value: Value,
    ) {
        let t = date_field
            .and_then(|f| value.get(f))
            .and_then(|v| v.as_str())
            .and_then(parse_date);
        self.tables
            .entry(endpoint.to_string())
            .or_default()
            .entry(driver)
            .or_default()
            .push(Row { driver, t, value });
    }

    fn finish(mut self) -> Self {
        for groups in self.tables.values_mut() {
            for rows in groups.values_mut() {
                rows.sort_by(|a, b| a.t.unwrap_or(0.0).total_cmp(&b.t.unwrap_or(0.0)));
            }
        }
        self
    }

    /// Edits the records of `endpoint` in place and keeps those `edit` returns true for: how a
    /// test makes a session messier than the generator does (nulls, missing records). An edit
    /// must leave the record's date and driver alone, which the server's filters index.
    pub fn retain_mut(&mut self, endpoint: &str, mut edit: impl FnMut(&mut Value) -> bool) {
        if let Some(groups) = self.tables.get_mut(endpoint) {
            for rows in groups.values_mut() {
                rows.retain_mut(|row| edit(&mut row.value));
            }
        }
    }

    /// Records of one endpoint (all drivers).
    pub fn records(&self, endpoint: &str) -> Vec<&Value> {
        let mut v: Vec<&Value> = self
            .tables
            .get(endpoint)
            .map(|g| g.values().flatten().map(|r| &r.value).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| {
            a.get("date")
                .and_then(Value::as_str)
                .cmp(&b.get("date").and_then(Value::as_str))
        });
        v
    }

    /// Answers a query the way the API does: the records matching every filter.
    pub fn query(&self, endpoint: &str, raw_query: &str) -> Vec<&Value> {
        let filters: Vec<Filter> = raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(Filter::parse)
            .collect();
        let Some(groups) = self.tables.get(endpoint) else {
            return Vec::new();
        };
        let driver = filters
            .iter()
            .find(|f| f.field == "driver_number" && f.op == "=")
            .and_then(|f| f.value.parse::<u32>().ok());
        let rows: Box<dyn Iterator<Item = &Row>> = match driver {
            Some(n) => Box::new(groups.get(&Some(n)).into_iter().flatten()),
            None => Box::new(groups.values().flatten()),
        };
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for f in filters.iter().filter(|f| f.field == "date") {
            if let Some(t) = parse_date(&f.value) {
                match f.op {
                    ">=" | ">" => lo = lo.max(t),
                    "<" | "<=" => hi = hi.min(t),
                    _ => {}
                }
            }
        }
        let mut out: Vec<&Value> = rows
            .filter(|r| r.driver.is_none() || driver.is_none_or(|n| r.driver == Some(n)))
            .filter(|r| r.t.is_none_or(|t| t >= lo && t <= hi))
            .filter(|r| filters.iter().all(|f| f.matches(&r.value)))
            .map(|r| &r.value)
            .collect();
        out.sort_by(|a, b| {
            a.get("date")
                .and_then(Value::as_str)
                .cmp(&b.get("date").and_then(Value::as_str))
        });
        out
    }
}

struct Filter {
    field: String,
    op: &'static str,
    value: String,
}

impl Filter {
    fn parse(part: &str) -> Option<Self> {
        let decoded = percent_decode(part);
        for op in [">=", "<=", ">", "<", "="] {
            if let Some(i) = decoded.find(op) {
                return Some(Self {
                    field: decoded[..i].to_string(),
                    op,
                    value: decoded[i + op.len()..].to_string(),
                });
            }
        }
        None
    }

    fn matches(&self, record: &Value) -> bool {
        let Some(v) = record.get(&self.field) else {
            return false;
        };
        let ord = match v {
            Value::Number(n) => match (n.as_f64(), self.value.parse::<f64>().ok()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            },
            Value::String(s) => match (parse_date(s), parse_date(&self.value)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(s.as_str().cmp(self.value.as_str())),
            },
            Value::Bool(b) => Some(b.to_string().cmp(&self.value)),
            _ => None,
        };
        let Some(ord) = ord else { return false };
        use std::cmp::Ordering::*;
        match self.op {
            "=" => ord == Equal,
            ">=" => ord != Less,
            "<=" => ord != Greater,
            ">" => ord == Greater,
            _ => ord == Less,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The race simulation behind a fixture.
struct Generator {
    spec: FixtureSpec,
    rng: ChaCha8Rng,
    track: Vec<(f64, f64)>,
    cum: Vec<f64>,
    length: f64,
}

struct CarRun {
    /// (epoch t, race progress m, lateral offset m, speed m/s)
    trace: Vec<(f64, f64, f64, f64)>,
    crossings: Vec<f64>,
    pit: Option<(f64, f64, u32)>,
    retired_at: Option<f64>,
    finished_at: Option<f64>,
}

impl Generator {
    fn new(spec: &FixtureSpec) -> Self {
        let n = 3000;
        let raw: Vec<(f64, f64)> = (0..=n)
            .map(|i| {
                let a = i as f64 / n as f64 * TAU;
                let r = 1.0 + 0.22 * (2.0 * a).sin() + 0.12 * (3.0 * a).cos();
                (r * a.cos(), 0.7 * r * a.sin())
            })
            .collect();
        let unit: f64 = raw.windows(2).map(|w| dist(w[0], w[1])).sum();
        let scale = spec.lap_length_m / unit;
        let track: Vec<(f64, f64)> = raw.iter().map(|p| (p.0 * scale, p.1 * scale)).collect();
        let mut cum = vec![0.0];
        for w in track.windows(2) {
            cum.push(cum.last().unwrap() + dist(w[0], w[1]));
        }
        let length = *cum.last().unwrap();
        Self {
            spec: spec.clone(),
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            track,
            cum,
            length,
        }
    }

    fn point(&self, s: f64, offset: f64) -> (f64, f64) {
        let s = s.rem_euclid(self.length);
        let i = self
            .cum
            .partition_point(|&c| c <= s)
            .clamp(1, self.track.len() - 1)
            - 1;
        let (a, b) = (self.track[i], self.track[i + 1]);
        let seg = (self.cum[i + 1] - self.cum[i]).max(1e-9);
        let f = (s - self.cum[i]) / seg;
        let (dx, dy) = ((b.0 - a.0) / seg, (b.1 - a.1) / seg);
        (
            a.0 + (b.0 - a.0) * f - dy * offset,
            a.1 + (b.1 - a.1) * f + dx * offset,
        )
    }

    fn run(mut self) -> Fixture {
        let spec = self.spec.clone();
        let l = self.length;
        let n = spec.drivers.min(NUMBERS.len() - 1);
        let laps = spec.laps.max(2);
        let v_ref = 62.0;
        let dt = 0.05;
        // The race: leader first decides the flag; everyone runs in one loop.
        let retire = spec.incidents && n > RETIRING_CAR;
        let retire_progress = if retire {
            l * (1.0 + 0.55)
        } else {
            f64::INFINITY
        };
        let mut sc: Option<(f64, f64)> = None; // (deployed, ends)
        let mut sc_in_lap_at: Option<f64> = None;
        let mut runs: Vec<CarRun> = (0..n)
            .map(|_| CarRun {
                trace: Vec::new(),
                crossings: Vec::new(),
                pit: None,
                retired_at: None,
                finished_at: None,
            })
            .collect();
        let pace: Vec<f64> = (0..n)
            .map(|i| {
                if i + 1 == n && n > 1 {
                    spec.slowest_pace
                } else {
                    1.0 - 0.004 * i as f64
                }
            })
            .collect();
        let pit_lap: Vec<Option<u32>> = (0..n)
            .map(|i| {
                if laps <= 3 {
                    (i == PITTING_CAR).then_some(2)
                } else if i != RETIRING_CAR || !retire {
                    Some(laps / 2 + (i as u32 % 5) - 2)
                } else {
                    None
                }
            })
            .collect();
        let mut progress: Vec<f64> = (0..n).map(|i| -8.0 - 8.0 * i as f64).collect();
        let mut speed = vec![0.0f64; n];
        let mut stop_left = vec![0.0f64; n];
        let mut pit_entry: Vec<Option<f64>> = vec![None; n];
        let mut flag: Option<f64> = None;
        let mut t = LIGHTS_OUT - 60.0;
        let mut done_at: Vec<Option<f64>> = vec![None; n];
        let mut leader_hist: Vec<(f64, f64)> = Vec::new();
        loop {
            let racing = t >= LIGHTS_OUT;
            let sc_on = sc.is_some_and(|(a, b)| t >= a && t < b);
            for i in 0..n {
                let run = &mut runs[i];
                if done_at[i].is_some_and(|d| t > d) {
                    continue;
                }
                let lap_pos = progress[i].rem_euclid(l);
                let lap_no = (progress[i] / l).floor() as i64 + 1;
                let mut offset = 0.0;
                let mut target = 0.0;
                if racing {
                    let corner = 0.78 + 0.22 * (TAU * 4.0 * lap_pos / l).cos();
                    target = v_ref * pace[i] * corner;
                    if sc_on {
                        target *= 0.55;
                    }
                    if run.finished_at.is_some() {
                        target *= 0.45;
                    }
                }
                // Pit lane: last 200 m of the pit lap to 200 m into the next.
                let pitting = pit_lap[i].is_some_and(|p| {
                    (lap_no == i64::from(p) && lap_pos > l - 200.0)
                        || (lap_no == i64::from(p) + 1 && lap_pos < 200.0)
                });
                if pitting {
                    offset = 12.0;
                    target = target.min(22.0);
                    if pit_entry[i].is_none() {
                        pit_entry[i] = Some(t);
                        stop_left[i] = 2.5;
                    }
                    if lap_no == i64::from(pit_lap[i].unwrap()) + 1 && stop_left[i] > 0.0 {
                        stop_left[i] -= dt;
                        target = 0.0;
                        speed[i] = 0.0;
                    }
                } else if let Some(entry) = pit_entry[i].take() {
                    run.pit = Some((entry, t, pit_lap[i].unwrap_or(1)));
                }
                if retire && i == RETIRING_CAR && progress[i] >= retire_progress {
                    offset = 14.0;
                    target = 0.0;
                    if run.retired_at.is_none() && speed[i] < 0.5 {
                        run.retired_at = Some(t);
                        done_at[i] = Some(t + 30.0);
                        if sc.is_none() {
                            sc = Some((t + 8.0, f64::INFINITY));
                        }
                    }
                }
                let accel: f64 = if target > speed[i] { 10.0 } else { -18.0 };
                speed[i] = if (target - speed[i]).abs() < accel.abs() * dt {
                    target
                } else {
                    speed[i] + accel * dt
                };
                let before = progress[i];
                progress[i] += speed[i] * dt;
                if racing && before.div_euclid(l) < progress[i].div_euclid(l)
                    || (racing && before < 0.0 && progress[i] >= 0.0)
                {
                    run.crossings.push(t);
                    if flag.is_some() && run.finished_at.is_none() && run.retired_at.is_none() {
                        run.finished_at = Some(t);
                        done_at[i] = Some(t + 60.0);
                    }
                }
                if racing && run.crossings.len() == 1 && before < 0.0 {
                    // Lap 1 starts at lights out for everyone, as the timing has it.
                    run.crossings[0] = LIGHTS_OUT;
                }
                run.trace.push((t, progress[i], offset, speed[i]));
            }
            if racing {
                // The leader: the car furthest along that is still racing.
                let lead = (0..n)
                    .filter(|&i| runs[i].retired_at.is_none())
                    .map(|i| progress[i])
                    .fold(f64::MIN, f64::max);
                leader_hist.push((t, lead));
                if flag.is_none() && lead >= f64::from(laps) * l {
                    flag = Some(t);
                    for (i, run) in runs.iter_mut().enumerate() {
                        if progress[i] >= f64::from(laps) * l && run.finished_at.is_none() {
                            run.finished_at = Some(t);
                            done_at[i] = Some(t + 60.0);
                        }
                    }
                }
                if let Some((a, b)) = sc {
                    if b.is_infinite() && t > a + 25.0 && sc_in_lap_at.is_none() {
                        sc_in_lap_at = Some(t);
                    }
                    if b.is_infinite() && sc_in_lap_at.is_some_and(|s| t > s) {
                        // It comes in when the leader next crosses the line.
                        let lead_lap = (lead / l).floor();
                        let prev = leader_hist
                            .iter()
                            .rev()
                            .nth(1)
                            .map(|h| (h.1 / l).floor())
                            .unwrap_or(lead_lap);
                        if lead_lap > prev {
                            sc = Some((a, t));
                        }
                    }
                }
            }
            if done_at
                .iter()
                .enumerate()
                .all(|(i, d)| d.is_some_and(|d| t > d) || runs[i].trace.is_empty())
            {
                break;
            }
            t += dt;
            if t > LIGHTS_OUT + 6.0 * 3600.0 {
                break;
            }
        }
        let flag = flag.unwrap_or(t);
        self.emit(runs, flag, sc, sc_in_lap_at, laps, &leader_hist)
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        runs: Vec<CarRun>,
        flag: f64,
        sc: Option<(f64, f64)>,
        sc_in_lap_at: Option<f64>,
        laps: u32,
        leader_hist: &[(f64, f64)],
    ) -> Fixture {
        let spec = self.spec.clone();
        let l = self.length;
        let mut fx = Fixture {
            centreline: self.track.clone(),
            ..Default::default()
        };
        let common = |v: &mut Value| {
            v["meeting_key"] = json!(MEETING_KEY);
            v["session_key"] = json!(SESSION_KEY);
        };
        let date_end = DATE_START + 2.0 * 3600.0;
        fx.push("meetings", None, None, json!({
            "circuit_key": 39, "circuit_info_url": "https://api.multiviewer.app/api/v1/circuits/39/2024",
            "circuit_image": "https://media.formula1.com/image/upload/monza.png",
            "circuit_short_name": "Monza", "circuit_type": "Permanent", "country_code": "ITA",
            "country_flag": "https://media.formula1.com/image/upload/italy.png", "country_key": 13,
            "country_name": "Italy", "date_end": format_date(date_end), "date_start": format_date(DATE_START - 2.0 * 86400.0),
            "gmt_offset": "02:00:00", "is_cancelled": false, "location": "Monza", "meeting_key": MEETING_KEY,
            "meeting_name": "Italian Grand Prix", "meeting_official_name": "FORMULA 1 PIRELLI GRAN PREMIO D'ITALIA 2024",
            "year": 2024
        }));
        fx.push("sessions", None, None, json!({
            "circuit_key": 39, "circuit_short_name": "Monza", "country_code": "ITA", "country_key": 13,
            "country_name": "Italy", "date_end": format_date(date_end), "date_start": format_date(DATE_START),
            "gmt_offset": "02:00:00", "is_cancelled": false, "location": "Monza", "meeting_key": MEETING_KEY,
            "session_key": SESSION_KEY, "session_name": "Race", "session_type": "Race", "year": 2024
        }));
        fx.push("sessions", None, None, json!({
            "circuit_key": 39, "circuit_short_name": "Monza", "country_code": "ITA", "country_key": 13,
            "country_name": "Italy", "date_end": format_date(DATE_START - 86400.0 + 3600.0), "date_start": format_date(DATE_START - 86400.0),
            "gmt_offset": "02:00:00", "is_cancelled": false, "location": "Monza", "meeting_key": MEETING_KEY,
            "session_key": SESSION_KEY - 6, "session_name": "Qualifying", "session_type": "Qualifying", "year": 2024
        }));
        let n = runs.len();
        let listed = if spec.incidents { n + 1 } else { n };
        for i in 0..listed {
            let (team, colour) = TEAMS[(i / 2) % TEAMS.len()];
            let code = CODES[i];
            let mut v = json!({
                "broadcast_name": format!("X {code}"), "country_code": null, "driver_number": NUMBERS[i],
                "first_name": "Test", "full_name": format!("Test {code}"),
                "headshot_url": null, "last_name": code, "name_acronym": code,
                "team_colour": colour, "team_name": team
            });
            common(&mut v);
            fx.push("drivers", Some(NUMBERS[i]), None, v);
        }
        let to_api = |p: (f64, f64), z: f64| -> (i64, i64, i64) {
            (
                (p.0 * 10.0 + ORIGIN.0).round() as i64,
                (p.1 * 10.0 + ORIGIN.1).round() as i64,
                z.round() as i64,
            )
        };
        let at = |run: &CarRun, t: f64| -> (f64, f64, f64) {
            let i = run
                .trace
                .partition_point(|s| s.0 <= t)
                .clamp(1, run.trace.len() - 1);
            let (a, b) = (run.trace[i - 1], run.trace[i]);
            let f = ((t - a.0) / (b.0 - a.0).max(1e-9)).clamp(0.0, 1.0);
            (
                a.1 + (b.1 - a.1) * f,
                a.2 + (b.2 - a.2) * f,
                a.3 + (b.3 - a.3) * f,
            )
        };
        for (i, run) in runs.iter().enumerate() {
            let num = NUMBERS[i];
            let (start, end) = (run.trace[0].0, run.trace.last().unwrap().0);
            // Location and car data at ~3.7 Hz, on separate clocks.
            let gap = if spec.incidents && i == GAP_CAR {
                let t = run.crossings.get(1).copied().unwrap_or(LIGHTS_OUT) + 12.0;
                Some((t, t + 10.0))
            } else {
                None
            };
            let mut t = start + self.rng.random_range(0.0..0.27);
            let mut k = 0u32;
            while t <= end {
                k += 1;
                if gap.is_some_and(|(a, b)| t >= a && t < b) {
                    t += 0.27;
                    continue;
                }
                let (s, off, _) = at(run, t);
                let (x, y, z) = if spec.incidents && i == GAP_CAR && k.is_multiple_of(97) {
                    (0, 0, 0)
                } else {
                    to_api(self.point(s, off), 150.0 + 30.0 * (TAU * s / l).sin())
                };
                let mut v =
                    json!({"date": format_date(t), "driver_number": num, "x": x, "y": y, "z": z});
                common(&mut v);
                fx.push("location", Some(num), Some("date"), v);
                t += self.rng.random_range(0.22..0.32);
            }
            let mut t = start + self.rng.random_range(0.0..0.27);
            let mut prev_v = 0.0;
            while t <= end {
                let (_, _, v) = at(run, t);
                let kmh = v * 3.6;
                let gear = if kmh < 1.0 {
                    0
                } else {
                    (1.0 + kmh / 42.0).min(8.0) as i64
                };
                let braking = v < prev_v - 0.5;
                prev_v = v;
                let mut rec = json!({
                    "brake": if braking { 100 } else { 0 }, "date": format_date(t), "driver_number": num,
                    "drs": if kmh > 300.0 { 12 } else if kmh > 250.0 { 8 } else { 0 },
                    "n_gear": gear, "rpm": (4000.0 + kmh * 35.0).round() as i64,
                    "speed": kmh.round() as i64, "throttle": if braking { 0 } else { 99 }
                });
                common(&mut rec);
                fx.push("car_data", Some(num), Some("date"), rec);
                t += self.rng.random_range(0.22..0.32);
            }
            // Laps.
            for (k, &c) in run.crossings.iter().enumerate() {
                let lap = k as u32 + 1;
                if lap > laps {
                    break;
                }
                let next = run.crossings.get(k + 1).copied();
                let dur = next.map(|n| n - c);
                let sector_t = |frac: f64| -> Option<f64> {
                    let target = (f64::from(lap) - 1.0 + frac) * l;
                    let j = run.trace.partition_point(|s| s.1 < target);
                    run.trace.get(j).map(|s| s.0 - c).filter(|_| next.is_some())
                };
                let (s1, s2) = (sector_t(1.0 / 3.0), sector_t(2.0 / 3.0));
                let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
                let mut v = json!({
                    "date_start": format_date(c), "driver_number": num,
                    "duration_sector_1": s1.map(r3), "duration_sector_2": s1.zip(s2).map(|(a, b)| r3(b - a)),
                    "duration_sector_3": s2.zip(dur).map(|(b, d)| r3(d - b)),
                    "i1_speed": 290, "i2_speed": 270,
                    "is_pit_out_lap": run.pit.is_some_and(|p| p.2 + 1 == lap),
                    // Like the live timing, no time for lap 1.
                    "lap_duration": if lap == 1 { None } else { dur.map(r3) },
                    "lap_number": lap,
                    "segments_sector_1": [2049, 2049, 2051], "segments_sector_2": [2049, 2048, 2049],
                    "segments_sector_3": [2049, 2049, 2064], "st_speed": 310
                });
                common(&mut v);
                fx.push("laps", Some(num), Some("date_start"), v);
            }
            let laps_done = run.crossings.len().saturating_sub(1) as u32;
            match run.pit {
                Some((entry, exit, lap)) => {
                    for (stint, (a, b, c)) in [
                        (1, lap, "MEDIUM"),
                        (lap + 1, laps_done.max(lap + 1), "HARD"),
                    ]
                    .iter()
                    .enumerate()
                    {
                        let mut v = json!({"compound": c, "driver_number": num, "lap_end": b, "lap_start": a,
                            "stint_number": stint + 1, "tyre_age_at_start": if stint == 0 { 0 } else { 3 }});
                        common(&mut v);
                        fx.push("stints", Some(num), None, v);
                    }
                    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
                    let mut v = json!({"date": format_date(exit), "driver_number": num, "lane_duration": r3(exit - entry),
                        "lap_number": lap, "pit_duration": r3(exit - entry), "stop_duration": 2.5});
                    common(&mut v);
                    fx.push("pit", Some(num), Some("date"), v);
                }
                None => {
                    let mut v = json!({"compound": "SOFT", "driver_number": num, "lap_end": laps_done.max(1), "lap_start": 1,
                        "stint_number": 1, "tyre_age_at_start": 0});
                    common(&mut v);
                    fx.push("stints", Some(num), None, v);
                }
            }
            if let Some(r) = run.retired_at {
                let lap = run.crossings.iter().filter(|&&c| c <= r).count();
                let mut v = json!({"category": "Other", "date": format_date(r + 2.0), "driver_number": num, "flag": null,
                    "lap_number": lap, "message": format!("CAR {num} ({}) STOPPED ON TRACK", CODES[i]),
                    "qualifying_phase": null, "scope": null, "sector": null});
                common(&mut v);
                fx.push("race_control", None, Some("date"), v);
            }
        }
        // Classification every second; a record per change.
        let progress_at = |run: &CarRun, t: f64| -> f64 {
            if t < run.trace[0].0 {
                return f64::MIN;
            }
            if run.retired_at.is_some_and(|r| t >= r) {
                return f64::MIN / 2.0 + at(run, t).0;
            }
            if let Some(f) = run.finished_at.filter(|&f| t >= f) {
                // Frozen at the finish, by finishing order.
                return 1e12 - f + at(run, f).0.floor() * 1e6;
            }
            at(run, t).0
        };
        let end = runs
            .iter()
            .map(|r| r.trace.last().unwrap().0)
            .fold(0.0, f64::max);
        let mut last: Vec<u32> = vec![0; n];
        let mut t = LIGHTS_OUT - 60.0;
        while t <= end {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| progress_at(&runs[b], t).total_cmp(&progress_at(&runs[a], t)));
            for (rank, &i) in order.iter().enumerate() {
                let p = rank as u32 + 1;
                if last[i] != p {
                    last[i] = p;
                    let mut v =
                        json!({"date": format_date(t), "driver_number": NUMBERS[i], "position": p});
                    common(&mut v);
                    fx.push("position", Some(NUMBERS[i]), Some("date"), v);
                }
            }
            // Intervals every 4 s while racing.
            if t >= LIGHTS_OUT && (t - LIGHTS_OUT) % 4.0 < 1.0 && t <= flag + 90.0 {
                let when_leader_at = |p: f64| -> Option<f64> {
                    let j = leader_hist.partition_point(|h| h.1 < p);
                    leader_hist.get(j).map(|h| h.0)
                };
                let lead_p = leader_hist
                    .iter()
                    .rev()
                    .find(|h| h.0 <= t)
                    .map(|h| h.1)
                    .unwrap_or(0.0);
                let mut prev_gap: Option<(f64, f64)> = None;
                for (rank, &i) in order.iter().enumerate() {
                    let run = &runs[i];
                    if run.retired_at.is_some_and(|r| t >= r)
                        || t < run.trace[0].0
                        || t > run.trace.last().unwrap().0
                    {
                        continue;
                    }
                    let p = at(run, t).0;
                    let gap_value = |g: f64, laps_down: f64| {
                        if laps_down >= 1.0 {
                            json!(format!(
                                "+{} LAP{}",
                                laps_down as u32,
                                if laps_down >= 2.0 { "S" } else { "" }
                            ))
                        } else {
                            json!((g * 1000.0).round() / 1000.0)
                        }
                    };
                    let (gl, il) = if rank == 0 {
                        (Value::Null, Value::Null)
                    } else {
                        let g = when_leader_at(p).map(|w| t - w).unwrap_or(0.0).max(0.0);
                        let down = ((lead_p - p) / l).floor();
                        let iv = match prev_gap {
                            Some((pg, pp)) => gap_value((g - pg).max(0.0), ((pp - p) / l).floor()),
                            None => gap_value(g, down),
                        };
                        (gap_value(g, down), iv)
                    };
                    prev_gap = Some((when_leader_at(p).map(|w| t - w).unwrap_or(0.0), p));
                    let mut v = json!({"date": format_date(t), "driver_number": NUMBERS[i], "gap_to_leader": gl, "interval": il});
                    common(&mut v);
                    fx.push("intervals", Some(NUMBERS[i]), Some("date"), v);
                }
            }
            t += 1.0;
        }
        // Race control.
        let mut rc = |t: f64,
                      category: &str,
                      flag: Option<&str>,
                      scope: Option<&str>,
                      sector: Option<u32>,
                      message: &str,
                      lap: u32| {
            let mut v = json!({"category": category, "date": format_date(t), "driver_number": null, "flag": flag,
                "lap_number": lap, "message": message, "qualifying_phase": null, "scope": scope, "sector": sector});
            common(&mut v);
            fx.push("race_control", None, Some("date"), v);
        };
        let lap_of = |t: f64| runs[0].crossings.iter().filter(|&&c| c <= t).count().max(1) as u32;
        rc(
            LIGHTS_OUT - 120.0,
            "Flag",
            Some("GREEN"),
            Some("Track"),
            None,
            "GREEN LIGHT - PIT EXIT OPEN",
            1,
        );
        if let Some((a, b)) = sc {
            rc(
                a - 6.0,
                "Flag",
                Some("DOUBLE YELLOW"),
                Some("Sector"),
                Some(7),
                "DOUBLE YELLOW IN TRACK SECTOR 7",
                lap_of(a),
            );
            rc(
                a,
                "SafetyCar",
                None,
                Some("Track"),
                None,
                "SAFETY CAR DEPLOYED",
                lap_of(a),
            );
            if let Some(s) = sc_in_lap_at {
                rc(
                    s,
                    "SafetyCar",
                    None,
                    Some("Track"),
                    None,
                    "SAFETY CAR IN THIS LAP",
                    lap_of(s),
                );
            }
            if b.is_finite() {
                rc(
                    b + 0.5,
                    "Flag",
                    Some("CLEAR"),
                    Some("Sector"),
                    Some(7),
                    "CLEAR IN TRACK SECTOR 7",
                    lap_of(b),
                );
            }
        }
        rc(
            flag,
            "Flag",
            Some("CHEQUERED"),
            Some("Track"),
            None,
            "CHEQUERED FLAG",
            laps,
        );
        // Weather once a minute.
        let mut t = DATE_START;
        while t <= end {
            let mut v = json!({"air_temperature": 27.8, "date": format_date(t), "humidity": 58, "pressure": 1018.7,
                "rainfall": 0, "track_temperature": 44.5, "wind_direction": 136, "wind_speed": 2.4});
            common(&mut v);
            fx.push("weather", None, Some("date"), v);
            t += 60.0;
        }
        fx.finish()
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// A request as the fixture server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub endpoint: String,
    /// The raw query, percent-decoded.
    pub query: String,
    pub status: u16,
}

/// A fault the server injects, once per `times`, on requests to `endpoint` whose decoded query
/// contains `query_contains`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub endpoint: String,
    pub query_contains: String,
    pub action: FaultAction,
    pub times: u32,
}

#[derive(Debug, Clone)]
pub enum FaultAction {
    Status {
        status: u16,
        retry_after: Option<u32>,
    },
    /// Answer only after this long (long enough for a test to interrupt the client).
    Hang(Duration),
}

struct ServerState {
    fixture: Fixture,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Mutex<Vec<Fault>>,
}

/// The fixture behind a real HTTP server on 127.0.0.1 (port 0 unless given).
pub struct FixtureServer {
    pub url: String,
    state: Arc<ServerState>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FixtureServer {
    pub fn start(fixture: Fixture, faults: Vec<Fault>) -> std::io::Result<Self> {
        Self::start_on(fixture, faults, 0)
    }

    pub fn start_on(fixture: Fixture, faults: Vec<Fault>, port: u16) -> std::io::Result<Self> {
        let state = Arc::new(ServerState {
            fixture,
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(faults),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let sys = actix_web::rt::System::new();
            sys.block_on(async move {
                let data = web::Data::from(shared);
                let server = actix_web::HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(data.clone())
                        .route("/v1/{endpoint}", web::get().to(answer))
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener);
                match server {
                    Ok(s) => {
                        let s = s.run();
                        let _ = tx.send(Ok(s.handle()));
                        let _ = s.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        let handle = rx.recv().map_err(std::io::Error::other)??;
        Ok(Self {
            url: format!("http://{addr}/v1"),
            state,
            handle,
            thread: Some(thread),
        })
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn clear_log(&self) {
        if let Ok(mut l) = self.state.log.lock() {
            l.clear();
        }
    }

    pub fn fixture(&self) -> &Fixture {
        &self.state.fixture
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let handle = self.handle.clone();
            let _ = std::thread::spawn(move || futures_util::executor_block_on(handle.stop(false)))
                .join();
            let _ = thread.join();
        }
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

mod futures_util {
    /// Runs a future to completion on a throwaway runtime.
    pub fn executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
            .expect("a current-thread runtime")
    }
}

async fn answer(
    req: HttpRequest,
    state: web::Data<ServerState>,
    path: web::Path<String>,
) -> HttpResponse {
    let endpoint = path.into_inner();
    let raw = req.query_string().to_string();
    let decoded = raw
        .split('&')
        .map(percent_decode)
        .collect::<Vec<_>>()
        .join("&");
    let fault = {
        let mut faults = state.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults
            .iter_mut()
            .find(|f| f.times > 0 && f.endpoint == endpoint && decoded.contains(&f.query_contains))
            .map(|f| {
                f.times -= 1;
                f.action.clone()
            })
    };
    let log = |status: u16| {
        if let Ok(mut l) = state.log.lock() {
            l.push(LoggedRequest {
                endpoint: endpoint.clone(),
                query: decoded.clone(),
                status,
            });
        }
    };
    match fault {
        Some(FaultAction::Status {
            status,
            retry_after,
        }) => {
            log(status);
            let code = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = HttpResponse::build(code);
            if let Some(s) = retry_after {
                r.insert_header(("Retry-After", s.to_string()));
            }
            return r.json(json!({"detail": "injected fault"}));
        }
        Some(FaultAction::Hang(d)) => {
            log(0);
            tokio::time::sleep(d).await;
        }
        None => {}
    }
    let rows = state.fixture.query(&endpoint, &raw);
    if fault.is_none() {
        log(if rows.is_empty() { 404 } else { 200 });
    }
    if rows.is_empty() {
        return HttpResponse::NotFound().json(json!({"detail": "No results found."}));
    }
    HttpResponse::Ok().json(rows)
}
