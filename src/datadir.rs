//! The data directory's race files: listing them, and keeping the hub's catalogue in step
//! with them while it runs.
//!
//! [`crate::App::build`] lists the directory once with [`scan_races`] and starts a
//! [`DataDirWatcher`], which lists it again whenever the file system reports a `*.race` file
//! created, changed, renamed or removed (through `notify`), and every `--rescan-interval-ms`
//! as a fallback where notifications do not work (network file systems, exhausted inotify
//! watches). `POST /api/races/rescan` calls [`rescan`] directly. Each listing goes to the hub
//! as a [`Rescanned`] message; the hub works out what was added, changed and removed.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::Addr;
use notify::Watcher as _;

use crate::hub::{Hub, RaceEntry, RescanReport, Rescanned};
use crate::race::read_meta;

/// How long the watcher waits after a change for more to come, so a file being copied in is
/// listed once it is written rather than at every write.
const SETTLE: Duration = Duration::from_millis(300);

/// Why the data directory could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "data directory {path}: not a directory (give --data-dir a directory, or a path to create one at)"
    )]
    NotADirectory { path: PathBuf },
}

/// Why a rescan did not reach the hub.
#[derive(Debug, thiserror::Error)]
pub enum RescanError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("the directory listing failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the hub is shutting down")]
    Hub(#[from] actix::MailboxError),
}

/// Lists the race files in `dir` (creating it if needed). Unreadable files are skipped with a
/// warning; loading them later gives the precise error.
pub fn scan_races(dir: &Path) -> Result<Vec<RaceEntry>, ScanError> {
    let dir_err = |source| ScanError::Io {
        path: dir.to_owned(),
        source,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(ScanError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    fs::create_dir_all(dir).map_err(dir_err)?;
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(dir_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_race_file(p))
        .collect();
    paths.sort();
    let mut races: Vec<RaceEntry> = Vec::new();
    for path in paths {
        let meta = File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| read_meta(BufReader::new(f)).map_err(|e| e.to_string()));
        match meta {
            Ok(meta) if races.iter().any(|r| r.meta.id == meta.id) => {
                tracing::warn!(path = %path.display(), id = %meta.id, "duplicate race id; skipped");
            }
            Ok(meta) => races.push(RaceEntry::new(Some(path), meta)),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "not a usable race file; skipped")
            }
        }
    }
    Ok(races)
}

/// Removes the staging files (`.{id}.{random}.upload`) of uploads that a crash or a kill cut
/// short: at start-up no upload is in progress, so every one of them is left over.
pub fn remove_stale_uploads(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let staged = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".upload"));
        if staged && path.is_file() {
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "could not remove a stale upload")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed staging files of interrupted uploads");
    }
    removed
}

fn is_race_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "race")
}

/// Lists `dir` again (on the blocking pool) and hands the listing to the hub.
pub async fn rescan(dir: &Path, hub: &Addr<Hub>) -> Result<RescanReport, RescanError> {
    let dir = dir.to_owned();
    let races = tokio::task::spawn_blocking(move || scan_races(&dir)).await??;
    let report = hub.send(Rescanned(races)).await?;
    if !report.is_empty() {
        tracing::info!(
            added = ?report.added,
            changed = ?report.changed,
            removed = ?report.removed,
            "race files changed in the data directory"
        );
    }
    Ok(report)
}

/// Keeps the hub's catalogue in step with the data directory until dropped.
pub struct DataDirWatcher {
    /// Kept alive: dropping it stops the notifications.
    _notify: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl DataDirWatcher {
    /// Watches `dir` for the hub, and lists it every `interval` as well (never with `None`).
    /// Must run inside an actix system.
    pub fn start(dir: PathBuf, hub: Addr<Hub>, interval: Option<Duration>) -> Self {
        // One pending signal is enough: a listing made after it sees every change before it.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let notify = match watch(&dir, tx) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(
                    dir = %dir.display(),
                    %err,
                    interval_ms = interval.map(|i| i.as_millis() as u64),
                    "cannot watch the data directory; new race files appear at the next periodic rescan or POST /api/races/rescan"
                );
                None
            }
        };
        let task = actix_web::rt::spawn(async move {
            let mut periodic = interval.map(|every| {
                let mut timer =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                timer
            });
            loop {
                let tick = async {
                    match &mut periodic {
                        Some(timer) => {
                            timer.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    Some(()) = rx.recv() => {
                        tokio::time::sleep(SETTLE).await;
                        while rx.try_recv().is_ok() {}
                    }
                    () = tick => {}
                }
                match rescan(&dir, &hub).await {
                    Ok(_) => {}
                    Err(RescanError::Hub(_)) => break,
                    Err(err) => tracing::warn!(%err, "rescanning the data directory failed"),
                }
            }
        });
        Self {
            _notify: notify,
            task,
        }
    }
}

impl Drop for DataDirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// File-system notifications for `dir`: each event about a `*.race` file signals `tx`.
fn watch(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                !matches!(event.kind, notify::EventKind::Access(_))
                    && event.paths.iter().any(|p| is_race_file(p))
            }
            // Lost events (a queue overflow): list the directory to be sure.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_race_files_count() {
        assert!(is_race_file(Path::new("data/gp57.race")));
        assert!(!is_race_file(Path::new("data/gp57.race.tmp")));
        assert!(!is_race_file(Path::new("data/.gp57.ab12.upload")));
        assert!(!is_race_file(Path::new("data/cache")));
    }

    #[test]
    fn a_file_is_not_a_data_directory() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = scan_races(file.path()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
