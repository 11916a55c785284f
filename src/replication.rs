//! Replica coordination through Redis, and the records it coordinates: a session's record
//! (race, control-token hash, [`SharedTimeline`]) is stored under `<prefix>:v1:session:{id}` and
//! every change is announced on `<prefix>:v1:sessions`, so hubs serving the same session derive
//! the same frame.
//!
//! The hub creates [`Replication`], asks it for records (to join, list, create and delete
//! sessions) and receives its [`ReplicaEvent`]s. Session actors never hold it: they send a
//! [`TimelineChanged`] to the [`Publisher`] actor after each change and receive an [`Adopt`]
//! when another replica's timeline wins. A write only lands if its epoch is newer than the
//! stored one (a Lua compare-and-set), so concurrent commands on two replicas settle on one
//! timeline. Without Redis, [`crate::session_store::LocalStore`] takes the same messages and
//! keeps the records in the data directory.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::ids::{RaceId, TokenHash};
use crate::shutdown::Tasks;
use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{wall_ms, SPEED_RANGE};

/// A timeline as replicas share it through Redis: anchored in wall-clock time, so every
/// replica whose clock is synchronised (NTP) derives the same frame at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct SharedTimeline {
    pub playing: bool,
    pub speed: f64,
    pub anchor_frame: u32,
    pub anchor_ms: i64,
    pub epoch: u64,
}

/// Earliest wall-clock anchor a shared timeline may carry (2020-01-01, Unix ms), and how far in
/// the future one may lie (clock skew between replicas is milliseconds, not days).
const MIN_ANCHOR_MS: i64 = 1_577_836_800_000;
const MAX_ANCHOR_AHEAD_MS: i64 = 24 * 3600 * 1000;

impl SharedTimeline {
    /// Checks a timeline that came from elsewhere (Redis, a file) before it is adopted: a
    /// speed a controller could have chosen, an anchor in sane wall-clock time, an epoch.
    pub fn check(&self) -> Result<(), TimelineRefused> {
        let (min, max) = SPEED_RANGE;
        if !(self.speed.is_finite() && (min..=max).contains(&self.speed)) {
            return Err(TimelineRefused::Speed { speed: self.speed });
        }
        let latest = wall_ms().saturating_add(MAX_ANCHOR_AHEAD_MS);
        if !(MIN_ANCHOR_MS..=latest).contains(&self.anchor_ms) {
            return Err(TimelineRefused::Anchor {
                anchor_ms: self.anchor_ms,
            });
        }
        if self.epoch == 0 {
            return Err(TimelineRefused::Epoch);
        }
        Ok(())
    }
}

/// Why a timeline from elsewhere (Redis, a file) was not adopted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimelineRefused {
    #[error("speed {speed} is outside [{}, {}]", SPEED_RANGE.0, SPEED_RANGE.1)]
    Speed { speed: f64 },
    #[error("anchor_ms {anchor_ms} is not a time between 2020 and a day from now")]
    Anchor { anchor_ms: i64 },
    #[error("epoch is 0")]
    Epoch,
}

/// What replicas know of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub race: RaceId,
    /// SHA-256 of the control token, hex: replicas check tokens without storing them.
    pub token_sha256: TokenHash,
    pub timeline: SharedTimeline,
    /// The session starts again from the beginning a little after it reaches the finish.
    #[serde(default, rename = "loop", skip_serializing_if = "std::ops::Not::not")]
    pub looping: bool,
}

impl SessionRecord {
    /// Checks a record read from Redis before anything acts on it: another process (or
    /// anyone with access to Redis) wrote it.
    /// (Its race id and token hash are checked as it is deserialised.)
    pub fn check(&self) -> Result<(), TimelineRefused> {
        self.timeline.check()
    }

    fn parse(bytes: &[u8]) -> Result<Self, ReplicationError> {
        let record: Self = serde_json::from_slice(bytes)?;
        record.check()?;
        Ok(record)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<SessionRecord>,
}

/// What the broker tells the hub.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ReplicaEvent {
    /// Subscribed (again): local sessions re-sync with what Redis holds.
    Connected,
    Disconnected,
    Updated {
        id: String,
        record: SessionRecord,
    },
    Deleted {
        id: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("broker not connected")]
    NotReady,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bad session record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("invalid session record: {0}")]
    Invalid(#[from] TimelineRefused),
}

/// Stores `ARGV[2]` at `KEYS[1]` and publishes `ARGV[3]` on `KEYS[2]` only if the stored record's
/// epoch is older than `ARGV[1]`; adds `ARGV[4]` to the index `KEYS[3]`. Returns 1 if written.
const PUBLISH_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local stored = cjson.decode(current)['timeline']['epoch']
  if stored >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
"#;

pub struct Replication {
    url: String,
    prefix: String,
    manager: OnceLock<redis::aio::ConnectionManager>,
    /// True while subscribed to announcements: readiness, and what start-up waits for.
    subscribed: watch::Sender<bool>,
    script: redis::Script,
}

impl Replication {
    /// Connects in the background (a Redis that is down does not stop the hub) and forwards
    /// every announcement to `events`.
    pub fn connect(
        url: &str,
        prefix: &str,
        events: Recipient<ReplicaEvent>,
        tasks: &Tasks,
    ) -> Arc<Self> {
        let broker = Arc::new(Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            manager: OnceLock::new(),
            subscribed: watch::Sender::new(false),
            script: redis::Script::new(PUBLISH_IF_NEWER),
        });
        tasks.spawn("redis subscriber", broker.clone().listen(events));
        broker
    }

    /// Subscribed to announcements right now: what readiness reports.
    pub fn is_ready(&self) -> bool {
        *self.subscribed.borrow()
    }

    /// Waits (at most `timeout`) until subscribed; true if it is.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.subscribed.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn channel(&self) -> String {
        format!("{}:v1:sessions", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:v1:session-ids", self.prefix)
    }

    fn key(&self, id: &str) -> String {
        format!("{}:v1:session:{id}", self.prefix)
    }

    async fn listen(self: Arc<Self>, events: Recipient<ReplicaEvent>) {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match self.subscribe().await {
                Ok(mut messages) => {
                    delay = Duration::from_millis(100);
                    warned = false;
                    self.subscribed.send_replace(true);
                    tracing::info!(url = %self.url, "broker subscribed");
                    events.do_send(ReplicaEvent::Connected);
                    while let Some(message) = messages.next().await {
                        let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                        match serde_json::from_slice::<Announcement>(&payload) {
                            Ok(Announcement {
                                id,
                                record: Some(record),
                            }) => match record.check() {
                                Ok(()) => events.do_send(ReplicaEvent::Updated { id, record }),
                                Err(reason) => {
                                    tracing::warn!(session = %id, %reason, "ignoring an invalid announcement")
                                }
                            },
                            Ok(Announcement { id, record: None }) => {
                                events.do_send(ReplicaEvent::Deleted { id })
                            }
                            Err(err) => tracing::warn!(%err, "ignoring a malformed announcement"),
                        }
                    }
                    self.subscribed.send_replace(false);
                    tracing::warn!(url = %self.url, "broker connection lost; sessions play on from local state");
                    events.do_send(ReplicaEvent::Disconnected);
                }
                Err(err) => {
                    if !warned {
                        tracing::warn!(url = %self.url, %err, "broker unreachable; retrying in the background");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn subscribe(
        &self,
    ) -> Result<impl futures_util::Stream<Item = redis::Msg>, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        if self.manager.get().is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)));
            let manager =
                redis::aio::ConnectionManager::new_with_config(client.clone(), config).await?;
            let _ = self.manager.set(manager);
        }
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        Ok(pubsub.into_on_message())
    }

    /// The command connection; just after start-up, waits a moment for the first connect
    /// rather than answering as if Redis knew nothing.
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, ReplicationError> {
        if self.manager.get().is_none() {
            self.wait_ready(Duration::from_secs(1)).await;
        }
        self.manager
            .get()
            .cloned()
            .ok_or(ReplicationError::NotReady)
    }

    /// Stores and announces a record if its epoch is newer than the stored one; false if an
    /// equal or newer timeline is already there (the caller adopts it).
    pub async fn publish(
        &self,
        id: &str,
        record: &SessionRecord,
    ) -> Result<bool, ReplicationError> {
        let mut conn = self.connection().await?;
        let stored = serde_json::to_string(record)?;
        let announcement = serde_json::to_string(&Announcement {
            id: id.to_owned(),
            record: Some(record.clone()),
        })?;
        let written: i32 = self
            .script
            .key(self.key(id))
            .key(self.channel())
            .key(self.index())
            .arg(record.timeline.epoch)
            .arg(stored)
            .arg(announcement)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }

    pub async fn load(&self, id: &str) -> Result<Option<SessionRecord>, ReplicationError> {
        let mut conn = self.connection().await?;
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.key(id))
            .query_async(&mut conn)
            .await?;
        stored
            .map(|s| SessionRecord::parse(s.as_bytes()))
            .transpose()
    }

    /// Every session any replica created, with its record.
    pub async fn all(&self) -> Result<Vec<(String, SessionRecord)>, ReplicationError> {
        let mut conn = self.connection().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.index())
            .query_async(&mut conn)
            .await?;
        let mut records = Vec::new();
        for id in ids {
            match self.load(&id).await {
                Ok(Some(record)) => records.push((id, record)),
                Ok(None) => {}
                Err(err @ (ReplicationError::Invalid(_) | ReplicationError::Record(_))) => {
                    tracing::warn!(session = %id, %err, "skipping an unusable session record")
                }
                Err(err) => return Err(err),
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }

    pub async fn delete(&self, id: &str) -> Result<(), ReplicationError> {
        let mut conn = self.connection().await?;
        let announcement = serde_json::to_string(&Announcement {
            id: id.to_owned(),
            record: None,
        })?;
        redis::pipe()
            .del(self.key(id))
            .ignore()
            .srem(self.index(), id)
            .ignore()
            .publish(self.channel(), announcement)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

/// A session's timeline changed (or should be stored again, after Redis came back): store it,
/// or answer with an [`Adopt`] of the newer one already stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TimelineChanged {
    pub id: Arc<str>,
    pub record: SessionRecord,
    /// The session, to adopt a newer timeline.
    pub session: Recipient<Adopt>,
}

/// A newer timeline from elsewhere (another replica, or the store): the session takes it over
/// unless its own is newer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopt(pub SharedTimeline);

/// Stores session timelines in Redis for the sessions of this hub; one per hub.
pub struct Publisher {
    replication: Arc<Replication>,
}

impl Publisher {
    pub fn new(replication: Arc<Replication>) -> Self {
        Self { replication }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;
}

impl Handler<TimelineChanged> for Publisher {
    type Result = ();
    fn handle(&mut self, msg: TimelineChanged, ctx: &mut Context<Self>) {
        let replication = self.replication.clone();
        ctx.spawn(
            async move {
                let TimelineChanged {
                    id,
                    record,
                    session,
                } = msg;
                let stored = match replication.publish(&id, &record).await {
                    Ok(true) => None,
                    Ok(false) => replication.load(&id).await.ok().flatten(),
                    Err(err) => {
                        tracing::warn!(session = %id, %err, "timeline not shared; playing on locally");
                        None
                    }
                };
                if let Some(stored) = stored {
                    session.do_send(Adopt(stored.timeline));
                }
            }
            .into_actor(self),
        );
    }
}
