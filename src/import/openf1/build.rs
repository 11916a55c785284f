//! The 25 FPS race builder: turns the downloaded OpenF1 records into the race file's
//! metadata and a lazy stream of frames, and derives the race's events on the way.
//! `mod.rs` hands it a [`SessionData`] and writes what it yields with `race::write_race`.
//!
//! Positions follow a centripetal Catmull-Rom spline through the ~3.7 Hz location samples;
//! over a gap in a car's data they follow the track outline instead of a straight chord.
//! Telemetry is linear (speed, throttle) or stepwise (gear, DRS, brake). Lap distance is the
//! car's projection on the outline, on the lap its timing says it is on.

use std::collections::{BTreeSet, HashMap};

use super::events::{RaceEvent, RaceEventKind};
use super::schema::{self, parse_date, Gap};
use super::track::{Outline, Projection};
use super::ImportError;
use crate::race::{
    Driver, DriverFrame, DriverStatus, Frame, RaceMeta, TrackStatus, TrackStatusInterval,
    DRIVER_FIELDS, FPS,
};

/// Live-timing coordinates are tenths of a metre; race files are metres.
pub const UNITS_PER_METRE: f64 = 10.0;
/// Seconds between two location samples above which the stretch between them is a gap.
pub const GAP_S: f64 = 1.5;
/// The replay starts this long before lights out, and ends this long after the last car.
const LEAD_S: f64 = 5.0;
/// Implied speed between two samples above which the later one is a glitch, m/s.
const MAX_PLAUSIBLE_MPS: f64 = 140.0;
/// Outline spacing, metres.
const OUTLINE_SPACING_M: f64 = 5.0;

/// Everything downloaded for one session.
#[derive(Debug, Default)]
pub struct SessionData {
    pub session: Option<schema::Session>,
    pub meeting: Option<schema::Meeting>,
    pub drivers: Vec<schema::DriverRecord>,
    pub laps: Vec<schema::Lap>,
    pub stints: Vec<schema::Stint>,
    pub pits: Vec<schema::Pit>,
    pub race_control: Vec<schema::RaceControl>,
    pub weather: Vec<schema::Weather>,
    pub positions: Vec<schema::Position>,
    pub intervals: Vec<schema::Interval>,
    pub location: HashMap<u32, Vec<schema::Location>>,
    pub car_data: HashMap<u32, Vec<schema::CarData>>,
}

/// What the builder noticed in the data, for the summary.
#[derive(Debug, Default, Clone)]
pub struct DataReport {
    /// Stretches of a car's location data longer than [`GAP_S`] bridged along the outline.
    pub gaps_filled: u32,
    /// Samples left out: no date, no coordinates, (0, 0, 0), duplicates, jumps.
    pub samples_dropped: u32,
    /// Drivers listed but without location data, left out of the race.
    pub drivers_left_out: Vec<u32>,
    /// Anything else worth saying (pit-lane starts, red flags, fallbacks).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    x: f64,
    y: f64,
}

#[derive(Debug, Clone, Copy)]
struct Tel {
    t: f64,
    speed: f32,
    throttle: f32,
    brake: f32,
    gear: u8,
    drs: u8,
}

#[derive(Debug, Clone, Copy)]
struct GapSample {
    t: f64,
    leader: Option<f32>,
    previous: Option<f32>,
}

/// One car's data on the replay's clock (seconds from frame 0), plus its playback state.
struct Car {
    driver: Driver,
    loc: Vec<Sample>,
    tel: Vec<Tel>,
    /// (lap number, start t, duration estimate).
    laps: Vec<(u16, f64, f64)>,
    /// (first lap, last lap, tyre code).
    stints: Vec<(u32, u32, i8)>,
    pits: Vec<(f64, f64)>,
    positions: Vec<(f64, u32)>,
    gaps: Vec<GapSample>,
    retire_t: Option<f64>,
    // Playback state.
    loc_i: usize,
    tel_i: usize,
    pos_i: usize,
    gap_i: usize,
    hint: Option<usize>,
    gap_cache: Option<(usize, Projection, f64, Projection)>,
    held: Option<(f64, f64)>,
    lap_at_flag: Option<u16>,
    finished: Option<Finished>,
    last_gap: (f32, f32),
}

#[derive(Debug, Clone, Copy)]
struct Finished {
    lap: u16,
    official: u32,
    gaps: (f32, f32),
}

/// The race being built: metadata now, frames on demand.
pub struct Builder {
    meta: RaceMeta,
    outline: Outline,
    cars: Vec<Car>,
    t0: f64,
    ref_lap: f64,
    flag_t: Option<f64>,
    next: u32,
    last_lap: u16,
    /// Events found while the frames are built (lap starts), then merged with the rest.
    events: Vec<RaceEvent>,
    report: DataReport,
}

impl Builder {
    pub fn new(
        data: SessionData,
        id: String,
        name: String,
        max_frames: u32,
    ) -> Result<Self, ImportError> {
        let mut report = DataReport::default();
        let d = |s: &Option<String>| s.as_deref().and_then(parse_date);

        // Lights out: the earliest lap-1 start, else the session's scheduled start.
        let lights_out = data
            .laps
            .iter()
            .filter(|l| l.lap_number == 1)
            .filter_map(|l| d(&l.date_start))
            .reduce(f64::min)
            .or_else(|| data.session.as_ref().and_then(|s| d(&s.date_start)))
            .ok_or(ImportError::NoData(
                "no lap starts and no session start date".into(),
            ))?;
        let t0 = lights_out - LEAD_S;

        // Each driver's location samples, cleaned, in metres on the replay clock.
        let mut locs: HashMap<u32, Vec<Sample>> = HashMap::new();
        for (&number, rows) in &data.location {
            let mut pts: Vec<Sample> = Vec::with_capacity(rows.len());
            let mut rows: Vec<(f64, &schema::Location)> = rows
                .iter()
                .filter_map(|r| match d(&r.date) {
                    Some(t) => Some((t - t0, r)),
                    None => {
                        report.samples_dropped += 1;
                        None
                    }
                })
                .collect();
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut rejected_in_a_row = 0;
            for (t, r) in rows {
                let (Some(x), Some(y)) = (r.x, r.y) else {
                    report.samples_dropped += 1;
                    continue;
                };
                if x == 0.0 && y == 0.0 && r.z.unwrap_or(0.0) == 0.0 {
                    report.samples_dropped += 1;
                    continue;
                }
                let s = Sample {
                    t,
                    x: x / UNITS_PER_METRE,
                    y: y / UNITS_PER_METRE,
                };
                if let Some(last) = pts.last() {
                    let dt = s.t - last.t;
                    let jump = ((s.x - last.x).powi(2) + (s.y - last.y).powi(2)).sqrt();
                    if dt <= 1e-6
                        || (jump > MAX_PLAUSIBLE_MPS * dt.max(0.2) && rejected_in_a_row < 5)
                    {
                        report.samples_dropped += 1;
                        rejected_in_a_row += 1;
                        continue;
                    }
                }
                rejected_in_a_row = 0;
                pts.push(s);
            }
            if !pts.is_empty() {
                locs.insert(number, pts);
            }
        }

        // Drivers, in starting order (first classification), then by number.
        let first_pos = |n: u32| {
            data.positions
                .iter()
                .filter(|p| p.driver_number == n)
                .filter_map(|p| Some((d(&p.date)?, p.position?)))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|p| p.1)
                .unwrap_or(u32::MAX)
        };
        let mut records: Vec<&schema::DriverRecord> = Vec::new();
        for r in &data.drivers {
            if records.iter().any(|o| o.driver_number == r.driver_number) {
                continue;
            }
            if locs.contains_key(&r.driver_number) {
                records.push(r);
            } else {
                report.drivers_left_out.push(r.driver_number);
            }
        }
        records.sort_by_key(|r| (first_pos(r.driver_number), r.driver_number));
        if records.is_empty() {
            return Err(ImportError::NoData("no driver has location data".into()));
        }
        if records.len() > 255 {
            records.truncate(255);
        }
        let mut codes: Vec<String> = Vec::new();
        let drivers: Vec<Driver> = records
            .iter()
            .map(|r| {
                let code = driver_code(r, &codes);
                codes.push(code.clone());
                Driver {
                    code,
                    number: r.driver_number,
                    team: r.team_name.clone().unwrap_or_else(|| "Unknown".into()),
                    colour: parse_colour(r.team_colour.as_deref()),
                }
            })
            .collect();

        // Laps: start times (filled in where null) and durations.
        let mut lap_table: HashMap<u32, Vec<(u16, f64, f64)>> = HashMap::new();
        let mut all_durations: Vec<f64> = data
            .laps
            .iter()
            .filter_map(|l| l.lap_duration)
            .filter(|d| d.is_finite() && *d > 10.0)
            .collect();
        all_durations.sort_by(f64::total_cmp);
        let ref_lap = all_durations
            .get(all_durations.len() / 2)
            .copied()
            .unwrap_or(90.0);
        for driver in &drivers {
            let mut laps: Vec<&schema::Lap> = data
                .laps
                .iter()
                .filter(|l| l.driver_number == driver.number && l.lap_number >= 1)
                .collect();
            laps.sort_by_key(|l| l.lap_number);
            laps.dedup_by_key(|l| l.lap_number);
            let mut out: Vec<(u16, f64, f64)> = Vec::with_capacity(laps.len());
            for (k, l) in laps.iter().enumerate() {
                let start = d(&l.date_start)
                    .map(|s| s - t0)
                    .or_else(|| out.last().map(|&(_, s, dur)| s + dur));
                let Some(start) = start else { continue };
                let next_start = laps
                    .get(k + 1)
                    .and_then(|n| d(&n.date_start))
                    .map(|s| s - t0);
                let dur = l
                    .lap_duration
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .or(next_start.map(|n| n - start))
                    .unwrap_or(ref_lap)
                    .max(1.0);
                out.push((l.lap_number.min(u16::MAX as u32) as u16, start, dur));
            }
            if laps
                .first()
                .is_some_and(|l| l.lap_number == 1 && l.is_pit_out_lap == Some(true))
            {
                report
                    .notes
                    .push(format!("{} started from the pit lane", driver.code));
            }
            lap_table.insert(driver.number, out);
        }
        let total_laps = lap_table
            .values()
            .flat_map(|l| l.iter().map(|x| x.0))
            .max()
            .unwrap_or(1)
            .max(1);

        // Race control: track status, the chequered flag, messages.
        let mut rc: Vec<(f64, &schema::RaceControl)> = data
            .race_control
            .iter()
            .filter_map(|m| Some((d(&m.date)? - t0, m)))
            .collect();
        rc.sort_by(|a, b| a.0.total_cmp(&b.0));
        let flag_t = rc
            .iter()
            .find(|(_, m)| m.flag.as_deref() == Some("CHEQUERED"))
            .map(|(t, _)| *t)
            .or_else(|| {
                // The leader's completion of the last lap.
                lap_table
                    .values()
                    .filter_map(|l| l.iter().find(|x| x.0 == total_laps).map(|x| x.1 + x.2))
                    .reduce(f64::min)
            });
        let lap_starts: Vec<f64> = {
            let mut v: Vec<f64> = lap_table
                .values()
                .flat_map(|l| l.iter().map(|x| x.1))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };

        // Where the replay ends: 5 s after the last car's last lap (or its last data).
        let last_data = locs
            .values()
            .filter_map(|l| l.last())
            .map(|s| s.t)
            .fold(0.0, f64::max);
        let last_lap_end = lap_table
            .values()
            .filter_map(|l| l.last().map(|x| x.1 + x.2))
            .fold(0.0, f64::max);
        let end = if last_lap_end > 0.0 {
            (last_lap_end + LEAD_S).min(last_data.max(LEAD_S + 1.0))
        } else {
            last_data
        };
        let frames_f = (end * f64::from(FPS)).floor() + 1.0;
        if frames_f > f64::from(max_frames) {
            return Err(ImportError::TooLong {
                frames: frames_f as u64,
                limit: max_frames,
            });
        }
        let total_frames = (frames_f as u32).max(2);
        let t_last = f64::from(total_frames - 1) / f64::from(FPS);

        let (track_status, mut events) = track_status(&rc, &lap_starts, t_last, &mut report);

        // The outline: the fastest clean lap whose location trace has no gap.
        let outline =
            fastest_clean_lap(&lap_table, &locs, &track_status).ok_or(ImportError::NoData(
                "no lap with a complete location trace to draw the track from".into(),
            ))?;
        let (sector_at, outline) = {
            let (number, lap_no, start, dur, outline) = outline;
            let sectors = data
                .laps
                .iter()
                .find(|l| l.driver_number == number && l.lap_number == u32::from(lap_no));
            let loc = &locs[&number];
            let arc_at = |dt: f64| {
                let p = sample_at(loc, start + dt);
                outline.project(p, None).s
            };
            let s1 = sectors
                .and_then(|l| l.duration_sector_1)
                .unwrap_or(dur / 3.0);
            let s2 = sectors
                .and_then(|l| l.duration_sector_2)
                .unwrap_or(dur / 3.0);
            let (a, b) = (arc_at(s1), arc_at(s1 + s2));
            let sector_at = if a < b {
                [a, b]
            } else {
                [outline.length() / 3.0, 2.0 * outline.length() / 3.0]
            };
            (sector_at, outline)
        };
        let car_box = locs
            .values()
            .flatten()
            .fold([f64::MAX, f64::MIN, f64::MAX, f64::MIN], |b, s| {
                [b[0].min(s.x), b[1].max(s.x), b[2].min(s.y), b[3].max(s.y)]
            });
        let track = outline.to_track(sector_at, Some(car_box));

        // Per-car tables.
        let mut cars = Vec::with_capacity(drivers.len());
        for driver in drivers.iter().cloned() {
            let n = driver.number;
            let loc = locs.remove(&n).unwrap_or_default();
            for w in loc.windows(2) {
                if w[1].t - w[0].t > GAP_S && w[1].t > 0.0 && w[0].t < t_last {
                    report.gaps_filled += 1;
                }
            }
            let mut tel: Vec<Tel> = data
                .car_data
                .get(&n)
                .map(|rows| {
                    rows.iter()
                        .filter_map(|r| {
                            let t = d(&r.date)? - t0;
                            Some(Tel {
                                t,
                                speed: r.speed.unwrap_or(0.0).clamp(0.0, 400.0) as f32,
                                throttle: r.throttle.unwrap_or(0.0).clamp(0.0, 100.0) as f32,
                                brake: if r.brake.unwrap_or(0.0) > 0.0 {
                                    1.0
                                } else {
                                    0.0
                                },
                                gear: r.n_gear.unwrap_or(0).clamp(0, 8) as u8,
                                drs: match r.drs.unwrap_or(0) {
                                    10 | 12 | 14 => 12,
                                    8 => 8,
                                    _ => 0,
                                },
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            tel.sort_by(|a, b| a.t.total_cmp(&b.t));
            if tel.is_empty() {
                report.notes.push(format!(
                    "{} has no car data: speed and gear are 0",
                    driver.code
                ));
            }
            let laps = lap_table.remove(&n).unwrap_or_default();
            let mut stints: Vec<(u32, u32, i8)> = data
                .stints
                .iter()
                .filter(|s| s.driver_number == n)
                .filter_map(|s| {
                    Some((
                        s.lap_start?,
                        s.lap_end.unwrap_or(u32::MAX),
                        tyre_code(s.compound.as_deref()),
                    ))
                })
                .collect();
            stints.sort();
            let mut pits: Vec<(f64, f64)> = data
                .pits
                .iter()
                .filter(|p| p.driver_number == n)
                .filter_map(|p| {
                    let lane = p
                        .lane_duration
                        .or(p.pit_duration)
                        .filter(|l| *l > 0.0 && *l < 600.0)
                        .unwrap_or(20.0);
                    let exit = match d(&p.date) {
                        Some(t) => t - t0,
                        // No date: around the end of the lap it was on.
                        None => laps
                            .iter()
                            .find(|l| Some(u32::from(l.0)) == p.lap_number)
                            .map(|l| l.1 + l.2 + lane / 2.0)?,
                    };
                    Some((exit - lane, exit))
                })
                .collect();
            pits.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(a, b) in &pits {
                let box_t = (a + b) / 2.0;
                let lap = laps.iter().rev().find(|l| l.1 <= box_t).map(|l| l.0);
                events.push(RaceEvent::at(
                    box_t,
                    RaceEventKind::PitStop {
                        driver: driver.code.clone(),
                        lap,
                        lane_s: (b - a) as f32,
                    },
                ));
            }
            let mut positions: Vec<(f64, u32)> = data
                .positions
                .iter()
                .filter(|p| p.driver_number == n)
                .filter_map(|p| Some((d(&p.date)? - t0, p.position?)))
                .collect();
            positions.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut gaps: Vec<GapSample> = data
                .intervals
                .iter()
                .filter(|g| g.driver_number == n)
                .filter_map(|g| {
                    Some(GapSample {
                        t: d(&g.date)? - t0,
                        leader: gap_seconds(g.gap_to_leader.as_ref(), ref_lap),
                        previous: gap_seconds(g.interval.as_ref(), ref_lap),
                    })
                })
                .collect();
            gaps.sort_by(|a, b| a.t.total_cmp(&b.t));

            // Retired: stopped for good before the flag (or before the end without a flag).
            let last_moving = tel
                .iter()
                .rev()
                .find(|s| s.speed > 10.0)
                .map(|s| s.t)
                .or(loc.last().map(|s| s.t))
                .unwrap_or(0.0);
            let last_lap_done = laps.last().map(|l| l.1 + l.2).unwrap_or(0.0);
            let finished_by_laps = flag_t.is_some_and(|f| last_lap_done >= f - 0.5);
            let retire_t = match flag_t {
                _ if finished_by_laps => None,
                Some(f) if last_moving < f - 1.0 => Some(last_moving),
                None if last_moving < end - 30.0 => Some(last_moving),
                _ => None,
            };
            if let Some(t) = retire_t {
                let lap = laps
                    .iter()
                    .rev()
                    .find(|l| l.1 <= t)
                    .map(|l| l.0)
                    .unwrap_or(1);
                events.push(RaceEvent::at(
                    t,
                    RaceEventKind::Retirement {
                        driver: driver.code.clone(),
                        lap,
                    },
                ));
            }
            cars.push(Car {
                driver,
                loc,
                tel,
                laps,
                stints,
                pits,
                positions,
                gaps,
                retire_t,
                loc_i: 0,
                tel_i: 0,
                pos_i: 0,
                gap_i: 0,
                hint: None,
                gap_cache: None,
                held: None,
                lap_at_flag: None,
                finished: None,
                last_gap: (0.0, 0.0),
            });
        }

        // Weather samples.
        for w in &data.weather {
            let Some(t) = d(&w.date).map(|t| t - t0) else {
                continue;
            };
            events.push(RaceEvent::at(
                t,
                RaceEventKind::Weather {
                    air_c: w.air_temperature.unwrap_or(f64::NAN) as f32,
                    track_c: w.track_temperature.unwrap_or(f64::NAN) as f32,
                    humidity: w.humidity.unwrap_or(f64::NAN) as f32,
                    pressure: w.pressure.unwrap_or(f64::NAN) as f32,
                    rainfall: w.rainfall.unwrap_or(0.0) > 0.0,
                    wind_speed: w.wind_speed.unwrap_or(f64::NAN) as f32,
                    wind_direction: w.wind_direction.unwrap_or(f64::NAN) as f32,
                },
            ));
        }
        let code_of = |n: Option<u32>| {
            n.and_then(|n| cars.iter().find(|c| c.driver.number == n))
                .map(|c| c.driver.code.clone())
        };
        for (t, m) in &rc {
            events.push(RaceEvent::at(
                *t,
                RaceEventKind::RaceControl {
                    category: m.category.clone().unwrap_or_default(),
                    flag: m.flag.clone(),
                    message: m.message.clone().unwrap_or_default(),
                    driver: code_of(m.driver_number),
                },
            ));
        }
        events.retain(|e| e.t >= 0.0 && e.t <= t_last);

        let meta = RaceMeta {
            id,
            name,
            total_laps,
            fps: FPS,
            total_frames,
            fields: DRIVER_FIELDS.iter().map(|s| s.to_string()).collect(),
            track,
            drivers,
            track_status,
            // Filled in once the frames are built (see `events::to_timeline`).
            timeline: Default::default(),
        };
        Ok(Self {
            meta,
            outline,
            cars,
            t0,
            ref_lap,
            flag_t,
            next: 0,
            last_lap: 0,
            events,
            report,
        })
    }

    pub fn meta(&self) -> &RaceMeta {
        &self.meta
    }

    /// Seconds since the Unix epoch of frame 0.
    pub fn epoch_of_frame_zero(&self) -> f64 {
        self.t0
    }

    pub fn report(&self) -> &DataReport {
        &self.report
    }

    /// The race's events, in frame order (lap starts are found while frames are built, so
    /// call this after iterating).
    pub fn into_events(mut self) -> Vec<RaceEvent> {
        for e in &mut self.events {
            e.frame = ((e.t * f64::from(FPS)).round() as u32).min(self.meta.total_frames - 1);
        }
        self.events.sort_by_key(|e| e.frame);
        self.events
    }

    fn frame(&mut self, index: u32) -> Frame {
        let t = f64::from(index) / f64::from(FPS);
        let outline = &self.outline;
        let length = outline.length();
        let total_laps = self.meta.total_laps;
        let mut states: Vec<(DriverFrame, u32, bool)> = Vec::with_capacity(self.cars.len());
        for car in &mut self.cars {
            let retired = car.retire_t.is_some_and(|r| t >= r);
            let (x, y) = if retired {
                match car.held {
                    Some(p) => p,
                    None => {
                        let p = position_at(car, car.retire_t.unwrap_or(t), outline);
                        car.held = Some(p);
                        p
                    }
                }
            } else {
                position_at(car, t, outline)
            };
            let proj = outline.project((x, y), car.hint);
            car.hint = Some(proj.segment);
            let expected = expected_progress(&car.laps, t, length, self.ref_lap);
            let k = ((expected - proj.s) / length).round();
            let dist = k * length + proj.s;
            let mut lap = ((dist / length).floor() as i64 + 1).clamp(1, i64::from(u16::MAX)) as u16;
            if self.flag_t.is_some_and(|f| t >= f) && car.lap_at_flag.is_none() {
                car.lap_at_flag = Some(lap);
            }
            let tel = telemetry_at(car, t);
            let official = advance(&car.positions, &mut car.pos_i, t)
                .map(|p| p.1)
                .unwrap_or(999);
            if let Some(g) = advance(&car.gaps, &mut car.gap_i, t) {
                car.last_gap = (
                    g.leader.unwrap_or(car.last_gap.0),
                    g.previous.unwrap_or(car.last_gap.1),
                );
            }
            let crossed = car.lap_at_flag.is_some_and(|l| lap > l);
            if car.finished.is_none()
                && !retired
                && (crossed || (lap > total_laps && self.flag_t.is_some_and(|f| t >= f)))
            {
                car.finished = Some(Finished {
                    lap: lap.saturating_sub(1).max(1),
                    official,
                    gaps: car.last_gap,
                });
            }
            let in_pit = car.pits.iter().any(|&(a, b)| t >= a && t <= b);
            let status = if retired {
                DriverStatus::Retired
            } else if car.finished.is_some() {
                DriverStatus::Finished
            } else if in_pit {
                DriverStatus::Pit
            } else {
                DriverStatus::Running
            };
            if let Some(f) = car.finished {
                lap = f.lap;
            } else {
                lap = lap.min(total_laps);
            }
            let tyre = car
                .stints
                .iter()
                .find(|s| (s.0..=s.1).contains(&u32::from(lap)))
                .or(car.stints.last().filter(|s| u32::from(lap) > s.1))
                .map(|s| s.2)
                .unwrap_or(-1);
            let still = retired;
            let frame = DriverFrame {
                x: x as f32,
                y: y as f32,
                speed: if still { 0.0 } else { tel.speed },
                gear: if still { 0 } else { tel.gear },
                throttle: if still { 0.0 } else { tel.throttle },
                brake: if still { 0.0 } else { tel.brake },
                drs: if still { 0 } else { tel.drs },
                lap,
                position: 0,
                tyre,
                dist: dist as f32,
                rel_dist: ((proj.s / length) as f32).clamp(0.0, 0.999_999),
                gap_to_leader: 0.0,
                gap_to_previous: 0.0,
                status,
            };
            let key = car.finished.map(|f| f.official).unwrap_or(official);
            states.push((frame, key, retired));
        }
        // Classification: a permutation of 1..=N every frame.
        let mut order: Vec<usize> = (0..states.len()).collect();
        order.sort_by(|&a, &b| {
            let (fa, ka, ra) = &states[a];
            let (fb, kb, rb) = &states[b];
            ra.cmp(rb)
                .then(ka.cmp(kb))
                .then(fb.dist.total_cmp(&fa.dist))
        });
        for (rank, &i) in order.iter().enumerate() {
            let car = &self.cars[i];
            let f = &mut states[i].0;
            f.position = (rank + 1).min(255) as u8;
            let (gl, gp) = match (f.status, car.finished) {
                (DriverStatus::Retired, _) => (0.0, 0.0),
                _ if rank == 0 => (0.0, 0.0),
                (_, Some(fin)) => fin.gaps,
                _ => car.last_gap,
            };
            f.gap_to_leader = gl.max(0.0);
            f.gap_to_previous = gp.max(0.0);
        }
        let leader_lap = states[order[0]].0.lap.max(1);
        if index == 0 {
            self.last_lap = 0;
        }
        if leader_lap > self.last_lap && t >= LEAD_S - 1e-9 {
            self.events.push(RaceEvent::at(
                t,
                RaceEventKind::LapStart { lap: leader_lap },
            ));
            self.last_lap = leader_lap;
        }
        Frame {
            t,
            lap: leader_lap,
            drivers: states.into_iter().map(|s| s.0).collect(),
        }
    }
}

impl Iterator for Builder {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.next >= self.meta.total_frames {
            return None;
        }
        let f = self.frame(self.next);
        self.next += 1;
        Some(f)
    }
}

/// Moves a cursor forward to the last entry at or before `t`.
fn advance<'a, T: HasTime>(rows: &'a [T], i: &mut usize, t: f64) -> Option<&'a T> {
    while *i + 1 < rows.len() && rows[*i + 1].time() <= t {
        *i += 1;
    }
    rows.get(*i).filter(|r| r.time() <= t)
}

trait HasTime {
    fn time(&self) -> f64;
}
impl HasTime for (f64, u32) {
    fn time(&self) -> f64 {
        self.0
    }
}
impl HasTime for GapSample {
    fn time(&self) -> f64 {
        self.t
    }
}

/// Race progress the timing implies: laps started, plus the fraction of the current one.
fn expected_progress(laps: &[(u16, f64, f64)], t: f64, length: f64, ref_lap: f64) -> f64 {
    match laps.iter().rposition(|l| l.1 <= t) {
        None => {
            let first = laps.first().map(|l| l.1).unwrap_or(LEAD_S);
            -((first - t) / ref_lap) * length
        }
        Some(i) => {
            let (n, start, dur) = laps[i];
            (f64::from(n) - 1.0) * length + length * ((t - start) / dur).min(1.0)
        }
    }
}

fn sample_at(loc: &[Sample], t: f64) -> (f64, f64) {
    let i = loc.partition_point(|s| s.t <= t);
    match i {
        0 => (loc[0].x, loc[0].y),
        i if i >= loc.len() => (loc[loc.len() - 1].x, loc[loc.len() - 1].y),
        i => {
            let (a, b) = (loc[i - 1], loc[i]);
            let f = (t - a.t) / (b.t - a.t).max(1e-9);
            (a.x + (b.x - a.x) * f, a.y + (b.y - a.y) * f)
        }
    }
}

/// The car's position at `t`: a centripetal Catmull-Rom spline through its samples, or the
/// outline across a gap.
fn position_at(car: &mut Car, t: f64, outline: &Outline) -> (f64, f64) {
    let loc = &car.loc;
    if t <= loc[0].t {
        return (loc[0].x, loc[0].y);
    }
    while car.loc_i + 1 < loc.len() && loc[car.loc_i + 1].t <= t {
        car.loc_i += 1;
    }
    let i = car.loc_i;
    if i + 1 >= loc.len() {
        return (loc[i].x, loc[i].y);
    }
    let (p1, p2) = (loc[i], loc[i + 1]);
    let f = ((t - p1.t) / (p2.t - p1.t)).clamp(0.0, 1.0);
    if p2.t - p1.t > GAP_S {
        return along_outline(car, i, f, outline);
    }
    let p0 = if i > 0 && p1.t - loc[i - 1].t <= GAP_S {
        loc[i - 1]
    } else {
        reflect(p2, p1)
    };
    let p3 = if i + 2 < loc.len() && loc[i + 2].t - p2.t <= GAP_S {
        loc[i + 2]
    } else {
        reflect(p1, p2)
    };
    catmull_rom([p0, p1, p2, p3], f)
}

fn reflect(a: Sample, about: Sample) -> Sample {
    Sample {
        t: about.t,
        x: 2.0 * about.x - a.x,
        y: 2.0 * about.y - a.y,
    }
}

/// Centripetal (alpha = 0.5) Catmull-Rom between p1 and p2, `f` of the way (Barry-Goldman).
fn catmull_rom(p: [Sample; 4], f: f64) -> (f64, f64) {
    let d = |a: Sample, b: Sample| ((a.x - b.x).powi(2) + (a.y - b.y).powi(2)).sqrt();
    if d(p[1], p[2]) < 0.05 {
        return (
            p[1].x + (p[2].x - p[1].x) * f,
            p[1].y + (p[2].y - p[1].y) * f,
        );
    }
    let k0 = 0.0;
    let k1 = k0 + d(p[0], p[1]).sqrt().max(1e-3);
    let k2 = k1 + d(p[1], p[2]).sqrt().max(1e-3);
    let k3 = k2 + d(p[2], p[3]).sqrt().max(1e-3);
    let u = k1 + (k2 - k1) * f;
    let lerp = |a: (f64, f64), b: (f64, f64), ka: f64, kb: f64| {
        let w = (u - ka) / (kb - ka);
        (a.0 + (b.0 - a.0) * w, a.1 + (b.1 - a.1) * w)
    };
    let xy = |s: Sample| (s.x, s.y);
    let a1 = lerp(xy(p[0]), xy(p[1]), k0, k1);
    let a2 = lerp(xy(p[1]), xy(p[2]), k1, k2);
    let a3 = lerp(xy(p[2]), xy(p[3]), k2, k3);
    let b1 = lerp(a1, a2, k0, k2);
    let b2 = lerp(a2, a3, k1, k3);
    lerp(b1, b2, k1, k2)
}

/// Across a gap the car moves along the outline from where it was to where it reappears
/// (forwards, the short way), its sideways offset blended between the two.
fn along_outline(car: &mut Car, i: usize, f: f64, outline: &Outline) -> (f64, f64) {
    let (p1, p2) = (car.loc[i], car.loc[i + 1]);
    let cached = car.gap_cache.filter(|c| c.0 == i);
    let (a, forward, b) = match cached {
        Some((_, a, fwd, b)) => (a, fwd, b),
        None => {
            let a = outline.project((p1.x, p1.y), None);
            let b = outline.project((p2.x, p2.y), None);
            let mut fwd = (b.s - a.s).rem_euclid(outline.length());
            let dt = p2.t - p1.t;
            // Not plausibly driven forwards that far (or a standstill): stay put.
            if fwd > MAX_PLAUSIBLE_MPS * dt || fwd > outline.length() - 5.0 {
                fwd = 0.0;
            }
            car.gap_cache = Some((i, a, fwd, b));
            (a, fwd, b)
        }
    };
    if forward == 0.0 {
        return (p1.x + (p2.x - p1.x) * f, p1.y + (p2.y - p1.y) * f);
    }
    let ((x, y), (nx, ny)) = outline.point_at(a.s + forward * f);
    let off = a.offset + (b.offset - a.offset) * f;
    (x + nx * off, y + ny * off)
}

fn telemetry_at(car: &mut Car, t: f64) -> Tel {
    let tel = &car.tel;
    let zero = Tel {
        t,
        speed: 0.0,
        throttle: 0.0,
        brake: 0.0,
        gear: 0,
        drs: 0,
    };
    if tel.is_empty() || t < tel[0].t {
        return tel.first().copied().unwrap_or(zero);
    }
    while car.tel_i + 1 < tel.len() && tel[car.tel_i + 1].t <= t {
        car.tel_i += 1;
    }
    let a = tel[car.tel_i];
    let Some(b) = tel.get(car.tel_i + 1).filter(|b| b.t - a.t <= GAP_S) else {
        return a;
    };
    let f = ((t - a.t) / (b.t - a.t)) as f32;
    Tel {
        t,
        speed: a.speed + (b.speed - a.speed) * f,
        throttle: a.throttle + (b.throttle - a.throttle) * f,
        ..a
    }
}

/// Seconds from an OpenF1 gap: a number, `+N LAP(S)` as N typical laps, null as unknown.
fn gap_seconds(g: Option<&Gap>, ref_lap: f64) -> Option<f32> {
    match g? {
        Gap::Seconds(s) if s.is_finite() => Some(*s as f32),
        Gap::Seconds(_) => None,
        g @ Gap::Text(_) => g.laps().map(|n| (f64::from(n) * ref_lap) as f32),
    }
}

fn tyre_code(compound: Option<&str>) -> i8 {
    match compound.map(|c| c.to_ascii_uppercase()).as_deref() {
        Some("SOFT") => 0,
        Some("MEDIUM") => 1,
        Some("HARD") => 2,
        Some("INTERMEDIATE") => 3,
        Some("WET") => 4,
        _ => -1,
    }
}

fn parse_colour(hex: Option<&str>) -> [u8; 3] {
    let hex = hex.unwrap_or("").trim().trim_start_matches('#');
    let byte = |i: usize| {
        hex.get(i..i + 2)
            .and_then(|b| u8::from_str_radix(b, 16).ok())
    };
    match (hex.len(), byte(0), byte(2), byte(4)) {
        (6, Some(r), Some(g), Some(b)) => [r, g, b],
        _ => [128, 128, 128],
    }
}

/// Three upper-case letters, unique: the acronym, else letters of the last name, else a
/// made-up one.
fn driver_code(r: &schema::DriverRecord, taken: &[String]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphabetic())
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let mut candidates: Vec<String> = Vec::new();
    if let Some(a) = &r.name_acronym {
        candidates.push(clean(a));
    }
    for name in [&r.last_name, &r.full_name, &r.broadcast_name]
        .into_iter()
        .flatten()
    {
        let c = clean(name);
        if c.len() >= 3 {
            candidates.push(c[..3].to_string());
        }
    }
    if let Some(c) = candidates
        .into_iter()
        .find(|c| c.len() == 3 && !taken.contains(c))
    {
        return c;
    }
    for i in 0..26u32 * 26 * 26 {
        let c: String = [i / 676, i / 26 % 26, i % 26]
            .iter()
            .map(|&b| (b'A' + b as u8) as char)
            .collect();
        if !taken.contains(&c) {
            return c;
        }
    }
    "XXX".into()
}

/// Track status intervals covering `[0, t_last]`, from race control, and their events.
fn track_status(
    rc: &[(f64, &schema::RaceControl)],
    lap_starts: &[f64],
    t_last: f64,
    report: &mut DataReport,
) -> (Vec<TrackStatusInterval>, Vec<RaceEvent>) {
    #[derive(Default)]
    struct State {
        red: bool,
        sc: bool,
        vsc: bool,
        track_yellow: bool,
        sectors: BTreeSet<u32>,
        sc_ends_at: Option<f64>,
    }
    impl State {
        fn status(&self) -> TrackStatus {
            if self.red {
                TrackStatus::Red
            } else if self.sc {
                TrackStatus::SafetyCar
            } else if self.vsc {
                TrackStatus::VirtualSafetyCar
            } else if self.track_yellow || !self.sectors.is_empty() {
                TrackStatus::Yellow
            } else {
                TrackStatus::Green
            }
        }
    }
    let mut st = State::default();
    let mut changes: Vec<(f64, TrackStatus)> = vec![(0.0, TrackStatus::Green)];
    let mut red_since: Option<f64> = None;
    for &(t, m) in rc {
        if let Some(end) = st.sc_ends_at.filter(|&e| e <= t) {
            st.sc = false;
            st.sc_ends_at = None;
            changes.push((end, st.status()));
        }
        let msg = m.message.as_deref().unwrap_or("").to_ascii_uppercase();
        let flag = m.flag.as_deref().unwrap_or("").to_ascii_uppercase();
        let scope = m.scope.as_deref().unwrap_or("").to_ascii_uppercase();
        if msg.contains("VIRTUAL SAFETY CAR DEPLOYED") || msg.contains("VSC DEPLOYED") {
            st.vsc = true;
        } else if msg.contains("VIRTUAL SAFETY CAR ENDING") || msg.contains("VSC ENDING") {
            st.vsc = false;
        } else if msg.contains("SAFETY CAR DEPLOYED") {
            st.sc = true;
            st.sc_ends_at = None;
        } else if msg.contains("SAFETY CAR IN THIS LAP") {
            // It comes in as the leader next crosses the line.
            st.sc_ends_at = lap_starts.iter().copied().find(|&s| s > t);
        }
        match (flag.as_str(), scope.as_str()) {
            ("RED", _) => {
                st.red = true;
                red_since.get_or_insert(t);
            }
            ("GREEN", "TRACK") | ("CLEAR", "TRACK") => {
                if let Some(since) = red_since.take() {
                    report.notes.push(format!(
                        "red flag from {since:.0} s to {t:.0} s: the replay runs through the stoppage"
                    ));
                }
                st.red = false;
                st.track_yellow = false;
                st.sectors.clear();
            }
            ("YELLOW" | "DOUBLE YELLOW", "SECTOR") => {
                st.sectors.insert(m.sector.unwrap_or(0));
            }
            ("YELLOW" | "DOUBLE YELLOW", "TRACK") => st.track_yellow = true,
            ("CLEAR", "SECTOR") => {
                st.sectors.remove(&m.sector.unwrap_or(0));
            }
            _ => {}
        }
        changes.push((t.max(0.0), st.status()));
    }
    if let Some(end) = st.sc_ends_at {
        st.sc = false;
        changes.push((end, st.status()));
    }
    // Collapse into contiguous intervals.
    let mut intervals: Vec<TrackStatusInterval> = Vec::new();
    let mut events = Vec::new();
    for (t, s) in changes {
        let t = t.clamp(0.0, t_last);
        match intervals.last_mut() {
            Some(last) if last.status == s => {}
            Some(last) if last.start_t >= t => {
                last.status = s;
            }
            Some(last) => {
                last.end_t = t;
                intervals.push(TrackStatusInterval {
                    status: s,
                    start_t: t,
                    end_t: t_last,
                });
                events.push(RaceEvent::at(t, RaceEventKind::TrackStatus { status: s }));
            }
            None => intervals.push(TrackStatusInterval {
                status: s,
                start_t: t,
                end_t: t_last,
            }),
        }
    }
    // Merge neighbours that ended up equal after an in-place change.
    intervals.dedup_by(|b, a| {
        if a.status == b.status {
            a.end_t = b.end_t;
            true
        } else {
            false
        }
    });
    if let Some(last) = intervals.last_mut() {
        last.end_t = t_last;
    }
    (intervals, events)
}

/// The fastest lap run in green with a gap-free location trace, as an outline:
/// (driver, lap, start t, duration, outline).
fn fastest_clean_lap(
    laps: &HashMap<u32, Vec<(u16, f64, f64)>>,
    locs: &HashMap<u32, Vec<Sample>>,
    status: &[TrackStatusInterval],
) -> Option<(u32, u16, f64, f64, Outline)> {
    let green = |a: f64, b: f64| {
        status
            .iter()
            .all(|iv| iv.status == TrackStatus::Green || iv.end_t <= a || iv.start_t >= b)
    };
    let mut candidates: Vec<(f64, u32, u16, f64)> = laps
        .iter()
        .flat_map(|(&n, l)| l.iter().map(move |&(lap, start, dur)| (dur, n, lap, start)))
        .filter(|&(dur, _, lap, start)| lap > 1 && dur > 20.0 && green(start, start + dur))
        .collect();
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Fall back to any lap, then lap 1, if no green lap is complete.
    let any: Vec<(f64, u32, u16, f64)> = {
        let mut v: Vec<_> = laps
            .iter()
            .flat_map(|(&n, l)| l.iter().map(move |&(lap, start, dur)| (dur, n, lap, start)))
            .filter(|c| c.0 > 20.0)
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    for (dur, n, lap, start) in candidates.into_iter().chain(any) {
        let Some(loc) = locs.get(&n) else { continue };
        let end = start + dur;
        let inside: Vec<&Sample> = loc.iter().filter(|s| s.t > start && s.t < end).collect();
        let edges_ok = inside.first().is_some_and(|s| s.t - start <= GAP_S)
            && inside.last().is_some_and(|s| end - s.t <= GAP_S);
        let gap_free = inside.windows(2).all(|w| w[1].t - w[0].t <= GAP_S);
        if !(edges_ok && gap_free) {
            continue;
        }
        let mut trace = vec![sample_at(loc, start)];
        trace.extend(inside.iter().map(|s| (s.x, s.y)));
        if let Some(outline) = Outline::from_trace(&trace, OUTLINE_SPACING_M) {
            return Some((n, lap, start, dur, outline));
        }
    }
    None
}
