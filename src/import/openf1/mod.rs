//! `replay-hub import openf1`: downloads a session from the OpenF1 API (openf1.org) and
//! writes it as a 25 FPS race file the hub serves like any other.
//!
//! `main` calls [`run_cli`]; [`import`] is the library entry the tests use. The pieces:
//! [`client`] (throttled HTTP with retries) over [`download_cache`] (one file per request,
//! so an interrupted import resumes), [`schema`] (the API's records), [`build`] (frames,
//! classification, status, events) and [`track`] (the outline from the fastest clean lap).
//! docs/IMPORTING.md describes it for users.

pub mod build;
pub mod client;
pub mod download_cache;
pub mod events;
pub mod schema;
pub mod track;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use self::build::{Builder, DataReport, SessionData};
use self::client::{Client, ClientOptions, ClientStats};
use self::download_cache::DownloadCache;
pub use self::events::{RaceEvent, RaceEventKind};
use self::schema::parse_date;
use crate::cache::CacheSpec;
use crate::config::Openf1Args;
use crate::race::{write_race, RaceFileError};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: response larger than {limit} bytes (raise --max-response-bytes)")]
    ResponseTooLarge { url: String, limit: u64 },
    #[error("unexpected response to {request}: {message}")]
    BadResponse { request: String, message: String },
    #[error("download cache {0}: {1}")]
    Cache(PathBuf, io::Error),
    #[error("no session found: {0}")]
    NoSession(String),
    #[error("the session has too little data for a replay: {0}")]
    NoData(String),
    #[error(
        "the replay would have {frames} frames, over the limit of {limit} (raise --max-minutes)"
    )]
    TooLong { frames: u64, limit: u32 },
    #[error("{0} (pass --id)")]
    InvalidId(#[from] crate::ids::InvalidId),
    #[error("writing {0}: {1}")]
    Write(PathBuf, RaceFileError),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("interrupted: nothing was written")]
    Interrupted,
    #[error("storing in the cache: {0}")]
    Store(#[source] Box<crate::cli::CliError>),
}

/// What an import did, printed at its end.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub session_key: u32,
    pub title: String,
    pub id: String,
    pub out: PathBuf,
    pub cars: usize,
    pub laps: u16,
    pub frames: u32,
    pub track_length_m: f32,
    pub client: ClientStats,
    pub data: DataReport,
    pub events: Vec<RaceEvent>,
    /// Set when the race was also stored in a cache.
    pub cached: Option<String>,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = f64::from(self.frames) / 25.0;
        writeln!(
            f,
            "imported OpenF1 session {} ({}) as {:?} into {}",
            self.session_key,
            self.title,
            self.id,
            self.out.display()
        )?;
        writeln!(
            f,
            "  race: {} cars, {} laps, {} frames ({}:{:02}:{:02}), track {:.0} m",
            self.cars,
            self.laps,
            self.frames,
            (secs / 3600.0) as u32,
            (secs / 60.0) as u32 % 60,
            secs as u32 % 60,
            self.track_length_m
        )?;
        writeln!(
            f,
            "  downloads: {} requests ({} retried), {} answered from the download cache",
            self.client.requests, self.client.retries, self.client.cached
        )?;
        let left_out = if self.data.drivers_left_out.is_empty() {
            "none".to_string()
        } else {
            format!("{:?} (no location data)", self.data.drivers_left_out)
        };
        writeln!(
            f,
            "  data: {} gaps filled along the track, {} samples dropped, drivers left out: {left_out}",
            self.data.gaps_filled, self.data.samples_dropped
        )?;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.events {
            *counts.entry(e.kind_name()).or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(f, "  events: {}", counts.join(", "))?;
        for note in &self.data.notes {
            writeln!(f, "  note: {note}")?;
        }
        if let Some(c) = &self.cached {
            writeln!(f, "  {c}")?;
        }
        Ok(())
    }
}

impl Openf1Args {
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            api_url: self.api_url.clone(),
            requests_per_second: self.requests_per_second,
            retries: self.retries,
            backoff: Duration::from_millis(self.backoff_ms),
            max_retry_after: Duration::from_secs(120),
            timeout: Duration::from_secs(self.timeout_secs),
            max_response_bytes: self.max_response_bytes,
        }
    }

    fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("openf1-downloads"))
    }
}

/// `replay-hub import openf1`: lists or imports, with ctrl-c leaving nothing half-written.
/// Returns the text to print.
pub async fn run_cli(args: Openf1Args) -> Result<String, ImportError> {
    if args.list {
        return list(&args).await;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let import = import(&args, cancel.clone());
    tokio::pin!(import);
    let summary = tokio::select! {
        result = &mut import => result?,
        _ = tokio::signal::ctrl_c() => {
            // Stops the frame writer if it is running; its temporary file is removed.
            cancel.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(10), import).await;
            return Err(ImportError::Interrupted);
        }
    };
    let mut summary = summary;
    if args.cache.cache.as_ref() != Some(&CacheSpec::None) {
        let file_args = crate::config::ImportArgs {
            source: None,
            file: Some(summary.out.clone()),
            data_dir: args.data_dir.clone(),
            cache: args.cache.clone(),
            wait_ms: 5_000,
        };
        summary.cached = Some(
            crate::cli::import_race_file(&file_args)
                .await
                .map_err(|e| ImportError::Store(Box::new(e)))?,
        );
    }
    Ok(summary.to_string())
}

/// `--list`: the year's sessions with their keys.
async fn list(args: &Openf1Args) -> Result<String, ImportError> {
    let client = Client::new(args.client_options(), None)?;
    let year = args.year.unwrap_or_default();
    let mut meetings: Vec<schema::Meeting> =
        client.get("meetings", &format!("year={year}")).await?;
    let sessions: Vec<schema::Session> = client.get("sessions", &format!("year={year}")).await?;
    meetings.sort_by(|a, b| a.date_start.cmp(&b.date_start));
    let mut out = String::new();
    for m in &meetings {
        out.push_str(&format!(
            "{}  {}  ({}, {})  meeting_key={}\n",
            m.date_start
                .as_deref()
                .unwrap_or("?")
                .get(..10)
                .unwrap_or("?"),
            m.meeting_name.as_deref().unwrap_or("?"),
            m.circuit_short_name.as_deref().unwrap_or("?"),
            m.country_name.as_deref().unwrap_or("?"),
            m.meeting_key
        ));
        let mut mine: Vec<&schema::Session> = sessions
            .iter()
            .filter(|s| s.meeting_key == m.meeting_key)
            .collect();
        mine.sort_by(|a, b| a.date_start.cmp(&b.date_start));
        for s in mine {
            out.push_str(&format!(
                "    --session-key {:<6} {}\n",
                s.session_key,
                s.session_name.as_deref().unwrap_or("?")
            ));
        }
    }
    if out.is_empty() {
        return Err(ImportError::NoSession(format!(
            "OpenF1 has no meetings in {year}"
        )));
    }
    Ok(out)
}

/// Downloads (or reads from the download cache) one session and writes its race file.
pub async fn import(
    args: &Openf1Args,
    cancel: Arc<AtomicBool>,
) -> Result<ImportSummary, ImportError> {
    let options = args.client_options();
    let session = find_session(args, &options).await?;
    let key = session.session_key;
    let cache = DownloadCache::new(args.download_dir().join(key.to_string()));
    let client = Client::new(options, Some(cache))?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(9)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} requests  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let step = |msg: String| {
        bar.set_message(msg);
        bar.inc(1);
    };
    let s = format!("session_key={key}");
    let mut data = SessionData::default();
    step("meeting".into());
    data.meeting = client
        .get::<schema::Meeting>("meetings", &format!("meeting_key={}", session.meeting_key))
        .await?
        .into_iter()
        .next();
    step("drivers".into());
    data.drivers = client.get("drivers", &s).await?;
    step("laps".into());
    data.laps = client.get("laps", &s).await?;
    step("stints".into());
    data.stints = client.get("stints", &s).await?;
    step("pit".into());
    data.pits = client.get("pit", &s).await?;
    step("race_control".into());
    data.race_control = client.get("race_control", &s).await?;
    step("weather".into());
    data.weather = client.get("weather", &s).await?;
    step("position".into());
    data.positions = client.get("position", &s).await?;

    // The stretch of time worth downloading telemetry for.
    let d = |x: &Option<String>| x.as_deref().and_then(parse_date);
    let lap_starts = data.laps.iter().filter_map(|l| d(&l.date_start));
    let lap_ends = data
        .laps
        .iter()
        .filter_map(|l| Some(d(&l.date_start)? + l.lap_duration?));
    let from = lap_starts
        .clone()
        .reduce(f64::min)
        .or(d(&session.date_start));
    let to = lap_ends
        .chain(lap_starts)
        .reduce(f64::max)
        .or(d(&session.date_end));
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ImportError::NoData("the session has no dates".into()));
    };
    let (from, to) = (from - 60.0, to + 60.0);
    let window = f64::from(args.window_minutes) * 60.0;
    let windows = ((to - from) / window).ceil().max(1.0) as u32;
    let mut numbers: Vec<u32> = data.drivers.iter().map(|d| d.driver_number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    bar.inc_length(u64::from(1 + 2 * windows) * numbers.len() as u64);
    for (i, &n) in numbers.iter().enumerate() {
        let who = format!("driver {n} ({}/{})", i + 1, numbers.len());
        step(format!("intervals, {who}"));
        data.intervals.extend(
            client
                .get::<schema::Interval>("intervals", &format!("{s}&driver_number={n}"))
                .await?,
        );
        for endpoint in ["location", "car_data"] {
            for w in 0..windows {
                step(format!("{endpoint}, {who}"));
                let a = from + f64::from(w) * window;
                let b = (a + window).min(to);
                let q = format!(
                    "{s}&driver_number={n}&date>={}&date<{}",
                    schema::format_date(a),
                    schema::format_date(b)
                );
                if endpoint == "location" {
                    let rows: Vec<schema::Location> = client.get(endpoint, &q).await?;
                    data.location.entry(n).or_default().extend(rows);
                } else {
                    let rows: Vec<schema::CarData> = client.get(endpoint, &q).await?;
                    data.car_data.entry(n).or_default().extend(rows);
                }
            }
        }
    }
    bar.finish_and_clear();
    data.session = Some(session.clone());
    let stats = client.stats().await;

    let (id, title) = naming(&session, data.meeting.as_ref());
    let id = args.id.clone().unwrap_or(id);
    crate::ids::RaceId::parse(id.as_str())?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.data_dir.join(format!("{id}.race")));
    let max_frames = args.max_minutes.saturating_mul(60 * 25);
    let quiet = args.quiet;
    let name = title.clone();
    let (meta, events, report) = tokio::task::spawn_blocking({
        let out = out.clone();
        move || write_file(data, id, name, max_frames, &out, &cancel, quiet)
    })
    .await
    .map_err(|e| ImportError::Io(out.clone(), io::Error::other(e.to_string())))??;
    Ok(ImportSummary {
        session_key: key,
        title,
        id: meta.id.clone(),
        out,
        cars: meta.drivers.len(),
        laps: meta.total_laps,
        frames: meta.total_frames,
        track_length_m: meta.track.length_m,
        client: stats,
        data: report,
        events,
        cached: None,
    })
}

async fn find_session(
    args: &Openf1Args,
    options: &ClientOptions,
) -> Result<schema::Session, ImportError> {
    if let Some(key) = args.session_key {
        let cache = DownloadCache::new(args.download_dir().join(key.to_string()));
        let client = Client::new(options.clone(), Some(cache))?;
        let found: Vec<schema::Session> = client
            .get("sessions", &format!("session_key={key}"))
            .await?;
        return found
            .into_iter()
            .next()
            .ok_or_else(|| ImportError::NoSession(format!("OpenF1 has no session {key}")));
    }
    let client = Client::new(options.clone(), None)?;
    let year = args.year.unwrap_or_default();
    let country = args.country.clone().unwrap_or_default();
    let q = format!(
        "year={year}&country_name={country}&session_name={}",
        args.session
    );
    let found: Vec<schema::Session> = client.get("sessions", &q).await?;
    found.into_iter().next().ok_or_else(|| {
        ImportError::NoSession(format!(
            "no {} in {country} in {year} (see --list --year {year})",
            args.session
        ))
    })
}

/// Default id (circuit-year[-session]) and display name of a session.
fn naming(session: &schema::Session, meeting: Option<&schema::Meeting>) -> (String, String) {
    let place = session
        .circuit_short_name
        .clone()
        .or_else(|| session.country_name.clone())
        .unwrap_or_else(|| format!("session-{}", session.session_key));
    let year = session.year.map(|y| y.to_string()).unwrap_or_default();
    let kind = session
        .session_name
        .clone()
        .unwrap_or_else(|| "Race".into());
    let mut id = format!("{place}-{year}");
    if kind != "Race" {
        id.push('-');
        id.push_str(&kind);
    }
    let slug: String = id
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let slug = slug
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug: String = slug.chars().take(64).collect();
    let meeting_name = meeting
        .and_then(|m| m.meeting_name.clone())
        .unwrap_or(place);
    let mut title = format!("{meeting_name} {year}");
    if kind != "Race" {
        title.push_str(&format!(" ({kind})"));
    }
    (slug, title.trim().to_string())
}

/// Builds the frames and writes them to a temporary file renamed into place at the end, so an
/// error or a cancel leaves no race file behind.
fn write_file(
    data: SessionData,
    id: String,
    name: String,
    max_frames: u32,
    out: &Path,
    cancel: &AtomicBool,
    quiet: bool,
) -> Result<(crate::race::RaceMeta, Vec<RaceEvent>, DataReport), ImportError> {
    let mut builder = Builder::new(data, id, name, max_frames)?;
    let meta = builder.meta().clone();
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ImportError::Io(dir.to_owned(), e))?;
    }
    let tmp = out.with_extension("race.tmp");
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(meta.total_frames))
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} frames ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = (|| -> Result<(), ImportError> {
        let file = fs::File::create(&tmp).map_err(|e| ImportError::Io(tmp.clone(), e))?;
        let mut w = BufWriter::new(file);
        let frames = std::iter::from_fn(|| {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let f = builder.next();
            bar.inc(1);
            f
        });
        write_race(&mut w, &meta, frames).map_err(|e| ImportError::Write(out.to_owned(), e))?;
        if cancel.load(Ordering::Relaxed) {
            return Err(ImportError::Interrupted);
        }
        w.flush().map_err(|e| ImportError::Io(tmp.clone(), e))?;
        w.get_ref()
            .sync_all()
            .map_err(|e| ImportError::Io(tmp.clone(), e))
    })();
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(if cancel.load(Ordering::Relaxed) {
            ImportError::Interrupted
        } else {
            e
        });
    }
    let report = builder.report().clone();
    let events = builder.into_events();
    // Lap starts are found while the frames are built, and the metadata (which carries the
    // timeline) comes first in the file: the frames are written again behind the full metadata.
    let (timeline, dropped) = events::to_timeline(&events, &meta);
    if dropped > 0 {
        tracing::info!(dropped, "events the race format cannot hold were left out");
    }
    let meta = crate::race::RaceMeta { timeline, ..meta };
    let finished = with_timeline(&tmp, out, &meta);
    let _ = fs::remove_file(&tmp);
    finished?;
    Ok((meta, events, report))
}

/// Writes the race at `tmp` again to `out` (through a temporary file of its own) with `meta`,
/// which differs from the written one only in its timeline.
fn with_timeline(tmp: &Path, out: &Path, meta: &crate::race::RaceMeta) -> Result<(), ImportError> {
    let staged = out.with_extension("race.tmp2");
    let result = (|| -> Result<(), ImportError> {
        let file = fs::File::open(tmp).map_err(|e| ImportError::Io(tmp.to_owned(), e))?;
        let reader = crate::race::RaceReader::new(std::io::BufReader::new(file))
            .map_err(|e| ImportError::Write(out.to_owned(), e))?;
        let mut failed = None;
        let frames = reader.map_while(|f| f.map_err(|e| failed = Some(e)).ok());
        let file = fs::File::create(&staged).map_err(|e| ImportError::Io(staged.clone(), e))?;
        let mut w = BufWriter::new(file);
        let written = write_race(&mut w, meta, frames);
        if let Some(e) = failed {
            return Err(ImportError::Write(out.to_owned(), e));
        }
        written.map_err(|e| ImportError::Write(out.to_owned(), e))?;
        w.flush().map_err(|e| ImportError::Io(staged.clone(), e))?;
        w.get_ref()
            .sync_all()
            .map_err(|e| ImportError::Io(staged.clone(), e))?;
        fs::rename(&staged, out).map_err(|e| ImportError::Io(out.to_owned(), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}
