//! The race's story as the importer sees it: lap starts of the leader, pit stops,
//! retirements, track status changes, race-control messages and weather samples, each at a
//! frame index. `build` derives them; the import summary counts them. They are kept beside
//! the race file for now, until the race format carries a list of events.

use crate::race::TrackStatus;

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
