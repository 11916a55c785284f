//! Sessions kept on disk, so a hub without a broker resumes them after a restart with the
//! same id, control token and timeline: every link handed out keeps working.
//!
//! One JSON file per session under `<data-dir>/sessions/`, holding what the broker keeps in
//! Redis ([`SessionRecord`]: race, control-token hash, shared timeline), written atomically
//! (a temporary file, then a rename). The hub saves a record when it starts a session and
//! removes it when the session is deleted; the session saves it again after each change of
//! its timeline; [`crate::App::build`] loads them all at start. With a broker, sessions live
//! in Redis instead and this store is not used.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use actix::prelude::*;

use crate::ids::is_valid_id as valid_id;
use crate::replication::{SessionRecord, TimelineChanged};

/// Largest session file read back; a record is a few hundred bytes.
pub const MAX_RECORD_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("session record {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("session record {path}: over {MAX_RECORD_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("session record {path}: invalid session id {id:?}")]
    BadId { path: PathBuf, id: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSession {
    id: String,
    #[serde(flatten)]
    record: SessionRecord,
}

/// The directory of session records; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// The store under `data_dir`, created if missing.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("sessions");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record of session `id`, replacing the previous one whole.
    pub fn save(&self, id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        let path = self.path(id);
        let tmp = self.dir.join(format!(".{id}.json.tmp"));
        let stored = StoredSession {
            id: id.to_owned(),
            record: record.clone(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        fs::write(&tmp, json).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)
    }

    /// Forgets session `id`; a record already gone is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Every stored session, at most `max` of them (sorted by id). A record that cannot be
    /// read is skipped with a warning and left in place for an operator to look at.
    pub fn load_all(&self, max: usize) -> Vec<(String, SessionRecord)> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), %err, "cannot list stored sessions");
                return Vec::new();
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        let mut sessions = Vec::new();
        for path in paths {
            if sessions.len() == max {
                tracing::warn!(
                    max,
                    "more stored sessions than --max-sessions; the rest are not resumed"
                );
                break;
            }
            match read_record(&path) {
                Ok(stored) => sessions.push((stored.id, stored.record)),
                Err(err) => tracing::warn!(%err, "stored session skipped"),
            }
        }
        sessions
    }
}

fn read_record(path: &Path) -> Result<StoredSession, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
        });
    }
    let stored: StoredSession =
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: path.to_owned(),
            source,
        })?;
    let named = path.file_stem().is_some_and(|s| *s == *stored.id);
    if !valid_id(&stored.id) || !named {
        return Err(StoreError::BadId {
            path: path.to_owned(),
            id: stored.id,
        });
    }
    Ok(stored)
}

/// The store as an actor: sessions send it their [`TimelineChanged`] as they would to the
/// Redis publisher, and the hub its [`Forget`]s; one mailbox keeps them in order, so a record
/// a session saved just before it was deleted cannot be written back after its removal.
pub struct LocalStore {
    store: SessionStore,
}

impl LocalStore {
    pub fn new(store: SessionStore) -> Self {
        Self { store }
    }
}

impl Actor for LocalStore {
    type Context = Context<Self>;
}

impl Handler<TimelineChanged> for LocalStore {
    type Result = ();
    fn handle(&mut self, msg: TimelineChanged, _: &mut Context<Self>) {
        if let Err(err) = self.store.save(&msg.id, &msg.record) {
            tracing::warn!(session = %msg.id, %err, "session not saved; it will not survive a restart");
        }
    }
}

/// Removes a session's record: it was deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget(pub String);

impl Handler<Forget> for LocalStore {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        if let Err(err) = self.store.remove(&msg.0) {
            tracing::warn!(session = %msg.0, %err, "stored session not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::SharedTimeline;

    fn record(epoch: u64) -> SessionRecord {
        SessionRecord {
            race: crate::ids::RaceId::parse("demo").unwrap(),
            token_sha256: crate::ids::TokenHash::of("token"),
            timeline: SharedTimeline {
                playing: false,
                speed: 2.0,
                anchor_frame: 500,
                anchor_ms: 1_700_000_000_000,
                epoch,
            },
            looping: epoch.is_multiple_of(2),
        }
    }

    #[test]
    fn records_round_trip_and_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path()).unwrap();
        store.save("friday", &record(1)).unwrap();
        store.save("friday", &record(2)).unwrap();
        store.save("another", &record(1)).unwrap();
        let loaded = store.load_all(10);
        assert_eq!(
            loaded,
            vec![("another".into(), record(1)), ("friday".into(), record(2))]
        );
        assert_eq!(store.load_all(1).len(), 1, "bounded by the session limit");
        store.remove("friday").unwrap();
        store.remove("friday").unwrap();
        assert_eq!(store.load_all(10), vec![("another".into(), record(1))]);
    }

    #[test]
    fn bad_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path()).unwrap();
        store.save("good", &record(1)).unwrap();
        let sessions = dir.path().join("sessions");
        fs::write(sessions.join("broken.json"), b"{not json").unwrap();
        fs::write(
            sessions.join("huge.json"),
            vec![b' '; MAX_RECORD_BYTES as usize + 1],
        )
        .unwrap();
        // A file whose name does not match the id inside it.
        fs::copy(sessions.join("good.json"), sessions.join("other.json")).unwrap();
        let loaded = store.load_all(10);
        assert_eq!(loaded, vec![("good".into(), record(1))]);
    }
}
