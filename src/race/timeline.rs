//! A race's timeline: what happened when (lap starts, pit stops, retirements, track status
//! changes, race-control messages, the chequered flag) and the weather, each tied to a frame.
//!
//! It is the last field of [`RaceMeta`](super::RaceMeta) from race file version 2 on, written
//! by the generator (through [`Recorder`]) and by importers, checked by the file reader
//! ([`Timeline::validate`]) and served by the hub at `GET /api/races/{race}/events`, where the
//! viewer's ticker and its "jump to" controls read it. Layout: docs/RACE_FORMAT.md.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::model::{Driver, DriverStatus, Frame, TrackStatus};

/// Most events a race may list: a real race has a few hundred.
pub const MAX_EVENTS: usize = 20_000;
/// Most weather samples a race may list: one a minute is the usual rate.
pub const MAX_WEATHER: usize = 20_000;
/// Longest event message, in bytes of UTF-8.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// Events and weather, each list ordered by frame.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    #[serde(deserialize_with = "bounded::<_, RaceEvent, MAX_EVENTS>")]
    pub events: Vec<RaceEvent>,
    #[serde(deserialize_with = "bounded::<_, WeatherSample, MAX_WEATHER>")]
    pub weather: Vec<WeatherSample>,
}

/// One thing that happened, at the first frame where it is true.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RaceEvent {
    /// Index of the frame it happens at; seeking there shows it.
    pub frame: u32,
    /// Replay seconds (the frame's `t`).
    pub t: f64,
    pub kind: EventKind,
    /// Code of the driver it concerns (`pit`, `retirement`; optional for `message`).
    #[serde(deserialize_with = "bounded_text")]
    pub driver: Option<String>,
    /// The lap it concerns: the lap that starts (`lap`, required), or the leader's lap.
    pub lap: Option<u16>,
    /// The new track status (`track_status`, required).
    pub status: Option<TrackStatus>,
    /// Text for the ticker: race control's own words for `message`, optional otherwise.
    #[serde(deserialize_with = "bounded_text")]
    pub message: Option<String>,
}

/// What an event is; snake-case strings in files and JSON.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The leader starts lap `lap` (lap 1 at the start).
    Lap,
    /// `driver` enters the pit lane.
    Pit,
    /// `driver` is out of the race.
    Retirement,
    /// The track status becomes `status` (yellow, safety car, VSC, red, green).
    TrackStatus,
    /// A race-control message.
    Message,
    /// The leader takes the chequered flag.
    Chequered,
}

/// The weather at one moment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WeatherSample {
    pub frame: u32,
    pub t: f64,
    /// Air temperature, °C.
    pub air_temp_c: f32,
    /// Track surface temperature, °C.
    pub track_temp_c: f32,
    /// Relative humidity, 0–100 %.
    pub humidity_pct: f32,
    /// Air pressure, hPa (mbar).
    pub pressure_hpa: f32,
    pub rainfall: bool,
    /// Wind speed, m/s.
    pub wind_speed_ms: f32,
    /// Where the wind blows from, degrees clockwise from north, 0 ≤ x < 360.
    pub wind_direction_deg: f32,
}

/// Why a timeline breaks the rules of docs/RACE_FORMAT.md.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum TimelineError {
    #[error("event {index}: frame {frame} is not in the race's {total} frames")]
    EventFrame {
        index: usize,
        frame: u32,
        total: u32,
    },
    #[error("event {index}: frame {frame} or t={t} is before the previous event's")]
    EventOrder { index: usize, frame: u32, t: f64 },
    #[error("event {index}: {reason}")]
    Event { index: usize, reason: String },
    #[error("weather sample {index}: frame {frame} is not in the race's {total} frames")]
    WeatherFrame {
        index: usize,
        frame: u32,
        total: u32,
    },
    #[error("weather sample {index}: frame {frame} or t={t} is before the previous sample's")]
    WeatherOrder { index: usize, frame: u32, t: f64 },
    #[error("weather sample {index}: {reason}")]
    Weather { index: usize, reason: String },
}

impl Timeline {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.weather.is_empty()
    }

    /// Checks every event and sample against the race it belongs to: frames inside the race,
    /// frames and times never decreasing, drivers listed, the fields each kind needs.
    pub fn validate(
        &self,
        total_frames: u32,
        total_laps: u16,
        drivers: &[Driver],
    ) -> Result<(), TimelineError> {
        let (mut prev_frame, mut prev_t) = (0u32, f64::NEG_INFINITY);
        for (index, e) in self.events.iter().enumerate() {
            let bad = |reason: String| TimelineError::Event { index, reason };
            if e.frame >= total_frames {
                return Err(TimelineError::EventFrame {
                    index,
                    frame: e.frame,
                    total: total_frames,
                });
            }
            if !e.t.is_finite() {
                return Err(bad(format!("t={} is not finite", e.t)));
            }
            if e.frame < prev_frame || e.t < prev_t {
                return Err(TimelineError::EventOrder {
                    index,
                    frame: e.frame,
                    t: e.t,
                });
            }
            (prev_frame, prev_t) = (e.frame, e.t);
            if let Some(code) = &e.driver {
                if !drivers.iter().any(|d| &d.code == code) {
                    return Err(bad(format!("driver {code:?} is not in the race")));
                }
            }
            if let Some(lap) = e.lap {
                if lap == 0 || lap > total_laps {
                    return Err(bad(format!("lap {lap} is not in 1..={total_laps}")));
                }
            }
            if let Some(m) = &e.message {
                if m.len() > MAX_MESSAGE_BYTES {
                    return Err(bad(format!(
                        "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                        m.len()
                    )));
                }
            }
            let needs = match e.kind {
                EventKind::Lap if e.lap.is_none() => Some("a lap"),
                EventKind::Pit | EventKind::Retirement if e.driver.is_none() => Some("a driver"),
                EventKind::TrackStatus if e.status.is_none() => Some("a status"),
                EventKind::Message if e.message.is_none() => Some("a message"),
                _ => None,
            };
            if let Some(what) = needs {
                return Err(bad(format!("a {:?} event needs {what}", e.kind)));
            }
        }
        let (mut prev_frame, mut prev_t) = (0u32, f64::NEG_INFINITY);
        for (index, w) in self.weather.iter().enumerate() {
            let bad = |reason: String| TimelineError::Weather { index, reason };
            if w.frame >= total_frames {
                return Err(TimelineError::WeatherFrame {
                    index,
                    frame: w.frame,
                    total: total_frames,
                });
            }
            if !w.t.is_finite() || w.frame < prev_frame || w.t < prev_t {
                return Err(TimelineError::WeatherOrder {
                    index,
                    frame: w.frame,
                    t: w.t,
                });
            }
            (prev_frame, prev_t) = (w.frame, w.t);
            let values = [
                w.air_temp_c,
                w.track_temp_c,
                w.humidity_pct,
                w.pressure_hpa,
                w.wind_speed_ms,
                w.wind_direction_deg,
            ];
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad("a value is not finite".into()));
            }
            if !(0.0..=100.0).contains(&w.humidity_pct) {
                return Err(bad(format!("humidity {} is not 0–100 %", w.humidity_pct)));
            }
            if !(0.0..360.0).contains(&w.wind_direction_deg) || w.wind_speed_ms < 0.0 {
                return Err(bad(format!(
                    "wind {} m/s from {}° is not a wind",
                    w.wind_speed_ms, w.wind_direction_deg
                )));
            }
        }
        Ok(())
    }
}

/// A list whose declared length is checked against `MAX` before anything is allocated.
fn bounded<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {MAX} entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > MAX {
                return Err(serde::de::Error::custom(format!(
                    "list of {declared} entries is over the limit of {MAX}"
                )));
            }
            let mut out = Vec::with_capacity(declared);
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::custom(format!(
                        "list is over the limit of {MAX} entries"
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

/// An optional string whose length is checked against [`MAX_MESSAGE_BYTES`] before it is copied.
fn bounded_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text(String);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    write!(f, "a string of at most {MAX_MESSAGE_BYTES} bytes")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                    if v.len() > MAX_MESSAGE_BYTES {
                        return Err(E::custom(format!(
                            "text of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                            v.len()
                        )));
                    }
                    Ok(Text(v.to_owned()))
                }
            }
            d.deserialize_str(V)
        }
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// Builds the events of a race from its frames as they are produced: lap starts from the
/// frames' leader lap, pit stops and retirements from each car's status, track status changes
/// from the status of each frame, and the chequered flag from the first finished car.
/// Generic over where the frames come from, so any producer of frames can use it.
pub struct Recorder {
    codes: Vec<String>,
    events: Vec<RaceEvent>,
    last: Option<(u16, Vec<DriverStatus>, TrackStatus)>,
    started: bool,
    chequered: bool,
}

impl Recorder {
    pub fn new(drivers: &[Driver]) -> Self {
        Recorder {
            codes: drivers.iter().map(|d| d.code.clone()).collect(),
            events: Vec::new(),
            last: None,
            started: false,
            chequered: false,
        }
    }

    /// Looks at frame number `index`, shown under track status `status`.
    pub fn frame(&mut self, index: u32, frame: &Frame, status: TrackStatus) {
        let at = |kind, lap: u16| RaceEvent {
            frame: index,
            t: frame.t,
            kind,
            driver: None,
            lap: Some(lap),
            status: None,
            message: None,
        };
        let lap = frame.lap.max(1);
        // The race starts when the first car moves; later laps when the leader's lap changes.
        if !self.started && frame.drivers.iter().any(|d| d.speed > 0.0) {
            self.started = true;
            self.events.push(at(EventKind::Lap, 1));
        }
        let (prev_lap, prev_cars, prev_status) = match self.last.take() {
            Some(last) => last,
            None => (
                1,
                vec![DriverStatus::Running; frame.drivers.len()],
                TrackStatus::Green,
            ),
        };
        if self.started && lap > prev_lap {
            self.events.push(at(EventKind::Lap, lap));
        }
        if status != prev_status {
            self.events.push(RaceEvent {
                status: Some(status),
                message: Some(status_message(status, prev_status).into()),
                ..at(EventKind::TrackStatus, lap)
            });
        }
        for (n, d) in frame.drivers.iter().enumerate() {
            let before = prev_cars.get(n).copied().unwrap_or(DriverStatus::Running);
            let code = self.codes.get(n).cloned();
            let (kind, message) = match (before, d.status) {
                (DriverStatus::Running, DriverStatus::Pit) => (
                    EventKind::Pit,
                    format!(
                        "{} into the pits from P{} on {}",
                        code.as_deref().unwrap_or("?"),
                        d.position,
                        tyre_name(d.tyre)
                    ),
                ),
                (DriverStatus::Running | DriverStatus::Pit, DriverStatus::Retired) => (
                    EventKind::Retirement,
                    format!("{} retires", code.as_deref().unwrap_or("?")),
                ),
                (_, DriverStatus::Finished) if !self.chequered => {
                    self.chequered = true;
                    (
                        EventKind::Chequered,
                        format!("Chequered flag: {} wins", code.as_deref().unwrap_or("?")),
                    )
                }
                _ => continue,
            };
            self.events.push(RaceEvent {
                driver: code,
                message: Some(message),
                ..at(kind, lap)
            });
        }
        let cars = frame.drivers.iter().map(|d| d.status).collect();
        self.last = Some((lap, cars, status));
    }

    pub fn into_events(self) -> Vec<RaceEvent> {
        self.events
    }
}

/// Race control's wording for a change of track status.
fn status_message(status: TrackStatus, before: TrackStatus) -> &'static str {
    match status {
        TrackStatus::Yellow => "YELLOW FLAG",
        TrackStatus::SafetyCar => "SAFETY CAR DEPLOYED",
        TrackStatus::VirtualSafetyCar => "VIRTUAL SAFETY CAR DEPLOYED",
        TrackStatus::Red => "RED FLAG",
        TrackStatus::Green => match before {
            TrackStatus::SafetyCar => "SAFETY CAR IN: GREEN FLAG",
            TrackStatus::VirtualSafetyCar => "VIRTUAL SAFETY CAR ENDING: GREEN FLAG",
            _ => "TRACK CLEAR",
        },
    }
}

fn tyre_name(code: i8) -> &'static str {
    match code {
        0 => "SOFT",
        1 => "MEDIUM",
        2 => "HARD",
        3 => "INTERMEDIATE",
        4 => "WET",
        _ => "unknown tyres",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drivers() -> Vec<Driver> {
        ["AAA", "BBB"]
            .iter()
            .enumerate()
            .map(|(i, code)| Driver {
                code: (*code).into(),
                number: i as u32 + 1,
                team: "Team".into(),
                colour: [1, 2, 3],
            })
            .collect()
    }

    fn event(frame: u32, kind: EventKind) -> RaceEvent {
        RaceEvent {
            frame,
            t: f64::from(frame) / 25.0,
            kind,
            driver: Some("AAA".into()),
            lap: Some(1),
            status: Some(TrackStatus::Yellow),
            message: Some("m".into()),
        }
    }

    fn weather(frame: u32) -> WeatherSample {
        WeatherSample {
            frame,
            t: f64::from(frame) / 25.0,
            air_temp_c: 25.0,
            track_temp_c: 40.0,
            humidity_pct: 50.0,
            pressure_hpa: 1013.0,
            rainfall: false,
            wind_speed_ms: 2.0,
            wind_direction_deg: 180.0,
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = Timeline {
            events: vec![event(0, EventKind::Lap), event(10, EventKind::Pit)],
            weather: vec![weather(0), weather(5)],
        };
        assert_eq!(ok.validate(100, 3, &drivers()), Ok(()));
        let check = |t: &Timeline| t.validate(100, 3, &drivers()).unwrap_err().to_string();

        let mut bad = ok.clone();
        bad.events[1].frame = 100;
        assert!(check(&bad).contains("frame 100 is not in the race's 100 frames"));
        let mut bad = ok.clone();
        bad.events[1].frame = 0;
        bad.events[1].t = -1.0;
        assert!(
            check(&bad).contains("before the previous"),
            "{}",
            check(&bad)
        );
        let mut bad = ok.clone();
        bad.events[1].driver = Some("ZZZ".into());
        assert!(check(&bad).contains("\"ZZZ\" is not in the race"));
        let mut bad = ok.clone();
        bad.events[0].lap = Some(4);
        assert!(check(&bad).contains("lap 4"));
        let mut bad = ok.clone();
        bad.events[0].message = Some("x".repeat(MAX_MESSAGE_BYTES + 1));
        assert!(check(&bad).contains("over the limit"));
        let mut bad = ok.clone();
        bad.events[1].driver = None;
        assert!(check(&bad).contains("needs a driver"), "{}", check(&bad));
        let mut bad = ok.clone();
        bad.weather[1].frame = 200;
        assert!(check(&bad).starts_with("weather sample 1"));
        let mut bad = ok.clone();
        bad.weather[0].humidity_pct = 120.0;
        assert!(check(&bad).contains("humidity"));
        let mut bad = ok;
        bad.weather[1].wind_direction_deg = f32::NAN;
        assert!(check(&bad).contains("not finite"));
    }

    #[test]
    fn declared_lengths_are_bounded_before_allocating() {
        // A timeline claiming 2^32 - 1 events in a few bytes is refused, not allocated for.
        let mut bytes = vec![0x92, 0xdd];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = rmp_serde::from_slice::<Timeline>(&bytes).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let t = Timeline {
            events: vec![event(3, EventKind::Message)],
            weather: vec![weather(1)],
        };
        let back: Timeline = rmp_serde::from_slice(&rmp_serde::to_vec(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        // An over-long message is refused while decoding, before it is copied.
        let mut long = t.clone();
        long.events[0].message = Some("x".repeat(MAX_MESSAGE_BYTES + 1));
        let err = rmp_serde::from_slice::<Timeline>(&rmp_serde::to_vec(&long).unwrap());
        assert!(err.unwrap_err().to_string().contains("over the limit"));
        let mut none = t.clone();
        none.events[0].message = None;
        let back: Timeline = rmp_serde::from_slice(&rmp_serde::to_vec(&none).unwrap()).unwrap();
        assert_eq!(back, none);
        // Wire values: kinds and statuses as snake-case strings, events as arrays of 7.
        let bytes = rmp_serde::to_vec(&t.events[0]).unwrap();
        assert_eq!(bytes[0], 0x97);
        assert!(bytes.windows(7).any(|w| w == b"message"));
    }
}
