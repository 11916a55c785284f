//! The race data model: metadata (track, drivers, track status, timeline) and the 25 FPS frames.
//! Shared by the file format (`file`), the generator (`generate`) and the server, which
//! sends these values to viewers; field order here is wire order (see docs/RACE_FORMAT.md).

use serde::{Deserialize, Serialize};

use super::timeline::Timeline;

/// Replays are sampled at this rate; frame `n` is at `t = n / FPS` seconds.
pub const FPS: u32 = 25;

/// Most frames a race may hold: 11 hours at 25 FPS, far beyond any Grand Prix with a red flag.
/// A larger `total_frames` is refused before anything is allocated from it.
pub const MAX_TOTAL_FRAMES: u32 = 1_000_000;

/// Names of the per-driver values in wire/file order; must match DriverFrame field order.
/// Viewers receive this list once (in `RaceMeta::fields`) so they can decode positional arrays.
pub const DRIVER_FIELDS: &[&str] = &[
    "x",
    "y",
    "speed",
    "gear",
    "throttle",
    "brake",
    "drs",
    "lap",
    "position",
    "tyre",
    "dist",
    "rel_dist",
    "gap_to_leader",
    "gap_to_previous",
    "status",
];

/// Everything a viewer needs before the first frame: listing a race, drawing the track,
/// labelling cars and colouring the timeline by track status.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RaceMeta {
    /// URL-safe identifier (`[a-z0-9_-]{1,64}`), used in paths and file names.
    pub id: String,
    pub name: String,
    pub total_laps: u16,
    /// Always [`FPS`]; stored so a file is self-describing.
    pub fps: u32,
    pub total_frames: u32,
    /// Always [`DRIVER_FIELDS`]; stored so a file is self-describing.
    pub fields: Vec<String>,
    pub track: Track,
    /// Fixed order; every frame's `drivers` is in this order.
    pub drivers: Vec<Driver>,
    /// Contiguous intervals covering the whole replay.
    pub track_status: Vec<TrackStatusInterval>,
    /// Events and weather, from file version 2 on (empty when read from a version 1 file).
    #[serde(default)]
    pub timeline: Timeline,
}

/// Track outline in metres, in the same coordinate space as the cars' `x`/`y`.
/// The centreline is closed: its last point repeats the first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Track {
    pub length_m: f32,
    pub centre_x: Vec<f32>,
    pub centre_y: Vec<f32>,
    pub inner_x: Vec<f32>,
    pub inner_y: Vec<f32>,
    pub outer_x: Vec<f32>,
    pub outer_y: Vec<f32>,
    /// Sector (1..=3) of each centreline point, so viewers can colour sectors.
    pub sector: Vec<u8>,
    /// Viewport hint: encloses the edges and every car position in the replay.
    pub bounds: Bounds,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Bounds {
    pub x_min: f32,
    pub x_max: f32,
    pub y_min: f32,
    pub y_max: f32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Driver {
    /// Three upper-case letters, unique in a race (e.g. "MAR").
    pub code: String,
    pub number: u32,
    pub team: String,
    /// Team colour as RGB.
    pub colour: [u8; 3],
}

/// Race control state; strings on the wire (`"green"`, `"safety_car"`, ...).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrackStatus {
    Green,
    Yellow,
    SafetyCar,
    Red,
    VirtualSafetyCar,
}

/// One track status over `[start_t, end_t)` in replay seconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TrackStatusInterval {
    pub status: TrackStatus,
    pub start_t: f64,
    pub end_t: f64,
}

/// The state of the race at one instant; one frame per 1/25 s.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Frame {
    /// Seconds from the start of the replay (a few seconds before lights out).
    pub t: f64,
    /// Leader's lap, 1-based.
    pub lap: u16,
    /// Same order as `RaceMeta::drivers`.
    pub drivers: Vec<DriverFrame>,
}

/// One car at one instant. Field order == [`DRIVER_FIELDS`]; it is the wire order.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct DriverFrame {
    /// Metres, same coordinate space as the track.
    pub x: f32,
    pub y: f32,
    /// km/h.
    pub speed: f32,
    /// 0..=8, 0 = neutral/stationary.
    pub gear: u8,
    /// 0..=100.
    pub throttle: f32,
    /// 0..=1.
    pub brake: f32,
    /// FastF1 raw codes: 0 off, 8 eligible, 12 open.
    pub drs: u8,
    /// This driver's current lap, 1-based.
    pub lap: u16,
    /// 1-based classification.
    pub position: u8,
    /// 0 SOFT, 1 MEDIUM, 2 HARD, 3 INTER, 4 WET, -1 unknown.
    pub tyre: i8,
    /// Metres since the start line (race progress); negative on the grid.
    pub dist: f32,
    /// 0..1 fraction of the current lap.
    pub rel_dist: f32,
    /// Seconds (0 for the leader).
    pub gap_to_leader: f32,
    /// Seconds to the car one position ahead (0 for the leader).
    pub gap_to_previous: f32,
    pub status: DriverStatus,
}

/// Car state; a small integer on the wire to keep frames compact.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(into = "u8", try_from = "u8")]
pub enum DriverStatus {
    Running = 0,
    Pit = 1,
    Retired = 2,
    Finished = 3,
}

impl From<DriverStatus> for u8 {
    fn from(s: DriverStatus) -> u8 {
        s as u8
    }
}

/// A driver status byte outside 0..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid driver status {0} (expected 0..=3)")]
pub struct UnknownStatus(pub u8);

impl TryFrom<u8> for DriverStatus {
    type Error = UnknownStatus;

    fn try_from(v: u8) -> Result<Self, UnknownStatus> {
        match v {
            0 => Ok(DriverStatus::Running),
            1 => Ok(DriverStatus::Pit),
            2 => Ok(DriverStatus::Retired),
            3 => Ok(DriverStatus::Finished),
            _ => Err(UnknownStatus(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    /// Collects the keys of a msgpack map, in order.
    struct Keys(Vec<String>);

    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, IgnoredAny)) = m.next_entry::<String, IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }

    fn sample() -> DriverFrame {
        DriverFrame {
            x: 1.0,
            y: 2.0,
            speed: 3.0,
            gear: 4,
            throttle: 5.0,
            brake: 0.5,
            drs: 12,
            lap: 7,
            position: 8,
            tyre: -1,
            dist: 10.0,
            rel_dist: 0.25,
            gap_to_leader: 12.0,
            gap_to_previous: 13.0,
            status: DriverStatus::Pit,
        }
    }

    #[test]
    fn driver_fields_match_struct_order() {
        let named = rmp_serde::to_vec_named(&sample()).unwrap();
        let keys: Keys = rmp_serde::from_slice(&named).unwrap();
        assert_eq!(keys.0, DRIVER_FIELDS);
    }

    #[test]
    fn enums_use_documented_wire_values() {
        let sc = rmp_serde::to_vec(&TrackStatus::SafetyCar).unwrap();
        assert_eq!(sc, b"\xaasafety_car");
        let vsc: TrackStatus = rmp_serde::from_slice(b"\xb2virtual_safety_car").unwrap();
        assert_eq!(vsc, TrackStatus::VirtualSafetyCar);
        let bytes = rmp_serde::to_vec(&sample()).unwrap();
        // Compact array of 15 values whose last one is the status as a positive fixint.
        assert_eq!(bytes[0], 0x9f);
        assert_eq!(*bytes.last().unwrap(), 1);
        let back: DriverFrame = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, sample());
        assert!(rmp_serde::from_slice::<DriverStatus>(&[7]).is_err());
    }
}
