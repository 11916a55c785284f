//! Race replays: the data model, the `.race` file format and a procedural race generator.
//! The server reads race files through this module and streams their frames to viewers;
//! the CLI uses it to generate demo races. File layout: docs/RACE_FORMAT.md.

pub mod circuit;
pub mod file;
pub mod generate;
pub mod model;
pub mod timeline;

pub use file::{
    check_meta, read_meta, stored_checksum, write_race, RaceFileError, RaceReader, Truncation,
    FORMAT_VERSION, OLDEST_FORMAT_VERSION,
};
pub use generate::{generate, generate_on, GenError, GenParams};
pub use model::*;
pub use timeline::{EventKind, RaceEvent, Timeline, TimelineError, WeatherSample};
