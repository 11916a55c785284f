//! The command line's subcommands other than `serve`'s server: `generate` (a race file),
//! `import` (a race file into the cache; `import openf1` lives in [`crate::import`]). `main`
//! parses the command line and calls these; they print nothing themselves but progress bars.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cache::{self, RaceCache};
use crate::config::{self, GenerateArgs};
use crate::ids::{InvalidId, RaceId};
use crate::loader::{file_content_id, load_race_file, LoadError};
use crate::race::{self, GenParams, RaceMeta};
use crate::shutdown::Tasks;

/// Why `generate` or `import` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot derive a race id from --out; pass --id")]
    NoId,
    #[error("{0} (pass --id)")]
    InvalidId(#[from] InvalidId),
    #[error("unknown circuit: {0}")]
    Circuit(String),
    #[error(transparent)]
    Write(#[from] race::WriteError),
    #[error("import: the Redis cache at {url} does not answer ({source}, waited up to {waited_s} s): start Redis, or pass another --cache (redis://HOST:PORT/DB, dir:PATH)")]
    RedisDown {
        url: String,
        source: redis::RedisError,
        waited_s: f64,
    },
    #[error("--cache none: there is no cache to import into")]
    NoCache,
    #[error("no race file given")]
    NoFile,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the encoder task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{backend} cache: {source}")]
    Cache {
        backend: &'static str,
        source: cache::CacheError,
    },
}

/// `replay-hub import`: validates and encodes a race file, then stores it in the cache.
pub async fn import_race_file(args: &config::ImportArgs) -> Result<String, CliError> {
    let spec = args.cache.spec(&args.data_dir);
    let wait = Duration::from_millis(args.wait_ms);
    if let cache::CacheSpec::Redis(url) = &spec {
        probe_redis(url, wait)
            .await
            .map_err(|source| CliError::RedisDown {
                url: url.clone(),
                source,
                waited_s: wait.as_secs_f64(),
            })?;
    }
    let tasks = Tasks::default();
    let cache = RaceCache::open(
        &spec,
        &args.cache.cache_prefix,
        args.cache.cache_compression,
        &tasks,
    )
    .ok_or(CliError::NoCache)?;
    let path = args.file.clone().ok_or(CliError::NoFile)?;
    let started = std::time::Instant::now();
    let content = file_content_id(&path)?;
    let race = tokio::task::spawn_blocking(move || load_race_file(&path)).await??;
    let encoded = started.elapsed();
    cache.wait_ready(wait).await;
    let race = Arc::new(race);
    cache
        .store(&race, &content)
        .await
        .map_err(|source| CliError::Cache {
            backend: cache.backend(),
            source,
        })?;
    tasks.stop(Duration::from_secs(1)).await;
    Ok(format!(
        "imported race {:?} ({} frames, {} encoded bytes) into the {} cache in {:.2} s ({:.2} s to validate and encode)",
        race.id(),
        race.total_frames(),
        race.encoded_bytes(),
        cache.backend(),
        started.elapsed().as_secs_f64(),
        encoded.as_secs_f64()
    ))
}

/// Whether the Redis at `url` answers a PING within `wait`.
async fn probe_redis(url: &str, wait: Duration) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(wait, ping).await {
        Ok(answer) => answer.map(|_| ()),
        Err(_) => Err(redis::RedisError::from(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer",
        ))),
    }
}

/// `replay-hub generate`: a deterministic race file, with a progress bar on a terminal.
pub fn generate_race_file(args: &GenerateArgs) -> Result<RaceMeta, CliError> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => args
            .out
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.to_lowercase())
            .ok_or(CliError::NoId)?,
    };
    RaceId::parse(id.as_str())?;
    let params = GenParams {
        laps: args.laps,
        drivers: args.drivers,
        seed: args.seed,
        id,
        name: args.name.clone(),
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} frames ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let outline = match args.circuit.as_str() {
        "random" => None,
        id => Some(race::circuit::load(id).map_err(|e| CliError::Circuit(e.to_string()))?),
    };
    let meta = race::write_generated(&params, outline.as_ref(), &args.out, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(meta)
}
