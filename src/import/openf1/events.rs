//! The race's story as the importer sees it: lap starts of the leader, pit stops,
//! retirements, track status changes, race-control messages and weather samples, each at a
//! frame index. `build` derives them; the import summary counts them, and [`to_timeline`] turns
//! them into the race file's timeline (docs/RACE_FORMAT.md, "Timeline").

use crate::race::timeline::{EventKind, MAX_EVENTS, MAX_MESSAGE_BYTES, MAX_WEATHER};
use crate::race::{RaceMeta, Timeline, TrackStatus, WeatherSample};

/// One event at one frame of the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct RaceEvent {
    /// Frame index (`round(t * 25)`), within the race.
    pub frame: u32,
    /// Seconds from frame 0.
    pub t: f64,
    pub kind: RaceEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RaceEventKind {
    /// The leader starts lap `lap`.
    LapStart { lap: u16 },
    /// A pass through the pit lane; the event is at the middle of it.
    PitStop {
        driver: String,
        lap: Option<u16>,
        lane_s: f32,
    },
    /// The car stopped for good on lap `lap`.
    Retirement { driver: String, lap: u16 },
    /// The track status changed to `status`.
    TrackStatus { status: TrackStatus },
    /// A race-control message, as OpenF1 gives it.
    RaceControl {
        category: String,
        flag: Option<String>,
        message: String,
        driver: Option<String>,
    },
    /// A weather sample (NaN where the source had none).
    Weather {
        air_c: f32,
        track_c: f32,
        humidity: f32,
        pressure: f32,
        rainfall: bool,
        wind_speed: f32,
        wind_direction: f32,
    },
}

impl RaceEvent {
    /// An event at `t` seconds; its frame is set once the race's length is known.
    pub fn at(t: f64, kind: RaceEventKind) -> Self {
        Self { frame: 0, t, kind }
    }

    /// A short name of the kind, for counting.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RaceEventKind::LapStart { .. } => "lap starts",
            RaceEventKind::PitStop { .. } => "pit stops",
            RaceEventKind::Retirement { .. } => "retirements",
            RaceEventKind::TrackStatus { .. } => "track status changes",
            RaceEventKind::RaceControl { .. } => "race-control messages",
            RaceEventKind::Weather { .. } => "weather samples",
        }
    }
}

/// The race file's timeline from the importer's events (in frame order): what the race
/// format cannot hold (a weather sample with a missing value, a lap outside the race, an
/// unknown driver) is left out and counted, so the timeline always passes validation.
pub fn to_timeline(events: &[RaceEvent], meta: &RaceMeta) -> (Timeline, usize) {
    let mut timeline = Timeline::default();
    let mut dropped = 0;
    let known = |code: &Option<String>| {
        code.as_ref()
            .is_none_or(|c| meta.drivers.iter().any(|d| &d.code == c))
    };
    let lap_ok = |lap: Option<u16>| lap.is_none_or(|l| (1..=meta.total_laps).contains(&l));
    for e in events {
        let event = |kind, driver: Option<String>, lap, status, message: Option<String>| {
            crate::race::RaceEvent {
                frame: e.frame,
                t: e.t,
                kind,
                driver,
                lap,
                status,
                message: message.map(|m| cut(&m)),
            }
        };
        let converted = match &e.kind {
            RaceEventKind::LapStart { lap } => {
                Some(event(EventKind::Lap, None, Some(*lap), None, None))
            }
            RaceEventKind::PitStop {
                driver,
                lap,
                lane_s,
            } => Some(event(
                EventKind::Pit,
                Some(driver.clone()),
                *lap,
                None,
                Some(format!("{driver} pits ({lane_s:.1} s in the pit lane)")),
            )),
            RaceEventKind::Retirement { driver, lap } => Some(event(
                EventKind::Retirement,
                Some(driver.clone()),
                Some(*lap),
                None,
                None,
            )),
            RaceEventKind::TrackStatus { status } => Some(event(
                EventKind::TrackStatus,
                None,
                None,
                Some(*status),
                None,
            )),
            RaceEventKind::RaceControl {
                message, driver, ..
            } if !message.is_empty() => Some(event(
                EventKind::Message,
                driver.clone(),
                None,
                None,
                Some(message.clone()),
            )),
            RaceEventKind::RaceControl { .. } => None,
            RaceEventKind::Weather {
                air_c,
                track_c,
                humidity,
                pressure,
                rainfall,
                wind_speed,
                wind_direction,
            } => {
                let sample = WeatherSample {
                    frame: e.frame,
                    t: e.t,
                    air_temp_c: *air_c,
                    track_temp_c: *track_c,
                    humidity_pct: *humidity,
                    pressure_hpa: *pressure,
                    rainfall: *rainfall,
                    wind_speed_ms: *wind_speed,
                    wind_direction_deg: wind_direction.rem_euclid(360.0),
                };
                let finite = [
                    sample.air_temp_c,
                    sample.track_temp_c,
                    sample.humidity_pct,
                    sample.pressure_hpa,
                    sample.wind_speed_ms,
                    sample.wind_direction_deg,
                ]
                .iter()
                .all(|v| v.is_finite());
                if finite
                    && (0.0..=100.0).contains(&sample.humidity_pct)
                    && sample.wind_speed_ms >= 0.0
                    && sample.wind_direction_deg < 360.0
                    && timeline.weather.len() < MAX_WEATHER
                {
                    timeline.weather.push(sample);
                } else {
                    dropped += 1;
                }
                continue;
            }
        };
        match converted {
            Some(event)
                if known(&event.driver)
                    && lap_ok(event.lap)
                    && timeline.events.len() < MAX_EVENTS =>
            {
                timeline.events.push(event)
            }
            _ => dropped += 1,
        }
    }
    (timeline, dropped)
}

/// A message cut to what the race format holds, on a character boundary.
fn cut(message: &str) -> String {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}
