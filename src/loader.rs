//! Loading a race's encoded frames, read-through: the cache when it holds this race for this
//! file and this encoding, else the race file, whose encoding is then written back to the
//! cache in the background. Memory is the step before it, owned by the hub, which keeps what is
//! loaded and makes concurrent requests for one race wait on a single load.
//!
//! The hub calls [`Loader::load`]; uploads and `replay-hub import` call [`load_race_file`].
//! The loader counts its requests by result (`replay_hub_cache_requests_total`) and times them
//! (`replay_hub_cache_load_seconds`); the cache counts its own hits, misses and errors.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::cache::{CacheError, RaceCache};
use crate::encode::EncodedRace;
use crate::metrics::Metrics;
use crate::race::{stored_checksum, RaceFileError, RaceReader};

/// Why a race could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: RaceFileError,
    },
    #[error("it has no race file and is not in the cache")]
    NotCached,
    #[error("it has no race file and the cache failed: {0}")]
    Cache(#[from] CacheError),
    #[error("the loader task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads and encodes a race file: blocking, run it on the blocking pool.
pub fn load_race_file(path: &Path) -> Result<EncodedRace, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let failed = |source| LoadError::File {
        path: path.to_owned(),
        source,
    };
    // The wire encoding is a little larger than the file's (frames carry their field names).
    let size_hint = file.metadata().map_or(0, |m| m.len() + m.len() / 16);
    let reader = RaceReader::new(BufReader::new(file)).map_err(failed)?;
    let meta = reader.meta().clone();
    EncodedRace::build_sized(meta, reader, size_hint).map_err(failed)
}

/// The identity of a race file's content for cache keys, read from its trailer (cheap: no
/// frame is read).
pub fn file_content_id(path: &Path) -> Result<String, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    stored_checksum(file)
        .map(crate::cache::content_id)
        .map_err(|source| LoadError::File {
            path: path.to_owned(),
            source,
        })
}

/// The read-through path from the cache and the race files.
#[derive(Clone)]
pub struct Loader {
    cache: Option<Arc<RaceCache>>,
    metrics: Arc<Metrics>,
}

impl Loader {
    pub fn new(cache: Option<Arc<RaceCache>>, metrics: Arc<Metrics>) -> Self {
        Self { cache, metrics }
    }

    fn backend(&self) -> &'static str {
        self.cache.as_ref().map_or("none", |c| c.backend())
    }

    fn count(&self, result: &str) {
        self.metrics
            .cache_requests
            .with_label_values(&[self.backend(), result])
            .inc();
    }

    /// Race `id` from the cache (when it holds it for the file at `path`, or for any content
    /// when there is no file), else from its file, written back to the cache. An entry that
    /// would take more than `max_bytes` of memory is refused as corrupt.
    pub async fn load(
        &self,
        id: &str,
        path: Option<PathBuf>,
        max_bytes: u64,
    ) -> Result<Arc<EncodedRace>, LoadError> {
        let started = Instant::now();
        let content = match &path {
            Some(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || file_content_id(&p))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        let mut cache_error = None;
        if let Some(cache) = &self.cache {
            match cache.load(id, content.as_deref(), max_bytes).await {
                Ok(Some(race)) => {
                    self.count("hit");
                    self.observe("cache", started);
                    tracing::info!(race = %id, backend = cache.backend(), seconds = started.elapsed().as_secs_f64(), "race loaded from the cache");
                    return Ok(Arc::new(race));
                }
                Ok(None) => self.count("miss"),
                Err(err) => {
                    self.count(match err {
                        CacheError::Corrupt { .. } => "corrupt",
                        _ => "error",
                    });
                    tracing::warn!(race = %id, %err, "cache read failed; loading the race file");
                    cache_error = Some(err);
                }
            }
        }
        let Some(path) = path else {
            return Err(cache_error.map_or(LoadError::NotCached, LoadError::Cache));
        };
        let race = Arc::new(tokio::task::spawn_blocking(move || load_race_file(&path)).await??);
        self.observe("file", started);
        if let Some(content) = content {
            self.write_back(race.clone(), content);
        }
        Ok(race)
    }

    fn observe(&self, source: &str, started: Instant) {
        self.metrics
            .load_seconds
            .with_label_values(&[self.backend(), source])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Stores a race in the cache without anyone waiting for it (a failure is counted by the
    /// cache and logged).
    pub fn write_back(&self, race: Arc<EncodedRace>, content: String) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(err) = cache.store(&race, &content).await {
                tracing::warn!(race = %race.id(), %err, "cache write failed");
            }
        });
    }
}
