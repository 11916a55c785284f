//! The clocks every part of playback shares: wall time (the server clock viewers synchronise
//! to and replicas anchor shared timelines in), the 25 FPS display tick, and the playback speeds
//! a controller may choose. A leaf: sessions, replication and viewers read it.

use std::time::Duration;

use crate::race::FPS;

/// Slowest and fastest playback speeds a controller may choose.
pub const SPEED_RANGE: (f64, f64) = (0.25, 16.0);

/// One display slot: a frame at 1x.
pub const TICK: Duration = Duration::from_millis(1000 / FPS as u64);

/// Wall-clock time in Unix microseconds: the server clock clients synchronise to.
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Wall-clock time in Unix milliseconds.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
