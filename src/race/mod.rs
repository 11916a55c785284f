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

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why a generated race could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Generate(#[from] GenError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] RaceFileError),
}

/// Generates a race (on `outline`, or a random track) and writes it to `path` atomically
/// (temporary file, then rename); `progress` gets (frames done, frames in all).
pub fn write_generated(
    params: &GenParams,
    outline: Option<&circuit::Outline>,
    path: &Path,
    progress: impl FnMut(u64, u64),
) -> Result<RaceMeta, WriteError> {
    let (meta, frames) = generate_on(params, outline, progress)?;
    let tmp = path.with_extension("race.tmp");
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| WriteError::Io { path, source }
    };
    let write = || -> Result<(), WriteError> {
        let file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
        let mut out = std::io::BufWriter::new(file);
        write_race(&mut out, &meta, frames)?;
        out.flush().map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_error(path))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(meta)
}
