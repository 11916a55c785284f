//! Replica coordination through Redis: session records (race, control-token hash, shared
//! timeline) are stored under `<prefix>:v1:session:{id}` and every change is published on
//! `<prefix>:v1:sessions`, so hubs serving the same session derive the same frame.
//!
//! The hub creates the broker and receives [`BrokerEvent`]s; session actors publish their timeline
//! after each change. A write only lands if its epoch is newer than the stored one (a Lua
//! compare-and-set), so concurrent commands on two replicas settle on one timeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::session::SharedTimeline;

/// What replicas know of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub race: String,
    /// SHA-256 of the control token, hex: replicas check tokens without storing them.
    pub token_sha256: String,
    pub timeline: SharedTimeline,
    /// The session starts again from the beginning a little after it reaches the finish.
    #[serde(default, rename = "loop", skip_serializing_if = "std::ops::Not::not")]
    pub looping: bool,
}

impl SessionRecord {
    /// Checks a record read from Redis before anything acts on it: another process (or
    /// anyone with access to Redis) wrote it.
    pub fn check(&self) -> Result<(), String> {
        if !crate::hub::valid_id(&self.race) {
            return Err(format!("race id {:?} is not valid", self.race));
        }
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if self.token_sha256.len() != 64 || !self.token_sha256.bytes().all(hex) {
            return Err("token_sha256 is not 64 hex digits".into());
        }
        self.timeline.check()
    }

    fn parse(bytes: &[u8]) -> Result<Self, BrokerError> {
        let record: Self = serde_json::from_slice(bytes)?;
        record.check().map_err(BrokerError::Invalid)?;
        Ok(record)
    }
}

/// SHA-256 of a control token, as stored in session records.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
pub enum BrokerEvent {
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
pub enum BrokerError {
    #[error("broker not connected")]
    NotReady,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bad session record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("invalid session record: {0}")]
    Invalid(String),
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

pub struct Broker {
    url: String,
    prefix: String,
    manager: OnceLock<redis::aio::ConnectionManager>,
    subscribed: AtomicBool,
    script: redis::Script,
}

impl Broker {
    /// Connects in the background (a Redis that is down does not stop the hub) and forwards
    /// every announcement to `events`.
    pub fn connect(url: &str, prefix: &str, events: Recipient<BrokerEvent>) -> Arc<Self> {
        let broker = Arc::new(Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            manager: OnceLock::new(),
            subscribed: AtomicBool::new(false),
            script: redis::Script::new(PUBLISH_IF_NEWER),
        });
        tokio::spawn(broker.clone().listen(events));
        broker
    }

    /// Subscribed to announcements right now: what readiness reports.
    pub fn is_ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
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

    async fn listen(self: Arc<Self>, events: Recipient<BrokerEvent>) {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        loop {
            match self.subscribe().await {
                Ok(mut messages) => {
                    delay = Duration::from_millis(100);
                    warned = false;
                    self.subscribed.store(true, Ordering::Relaxed);
                    tracing::info!(url = %self.url, "broker subscribed");
                    events.do_send(BrokerEvent::Connected);
                    while let Some(message) = messages.next().await {
                        let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                        match serde_json::from_slice::<Announcement>(&payload) {
                            Ok(Announcement {
                                id,
                                record: Some(record),
                            }) => match record.check() {
                                Ok(()) => events.do_send(BrokerEvent::Updated { id, record }),
                                Err(reason) => {
                                    tracing::warn!(session = %id, %reason, "ignoring an invalid announcement")
                                }
                            },
                            Ok(Announcement { id, record: None }) => {
                                events.do_send(BrokerEvent::Deleted { id })
                            }
                            Err(err) => tracing::warn!(%err, "ignoring a malformed announcement"),
                        }
                    }
                    self.subscribed.store(false, Ordering::Relaxed);
                    tracing::warn!(url = %self.url, "broker connection lost; sessions play on from local state");
                    events.do_send(BrokerEvent::Disconnected);
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
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, BrokerError> {
        for _ in 0..20 {
            if let Some(manager) = self.manager.get() {
                return Ok(manager.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.manager.get().cloned().ok_or(BrokerError::NotReady)
    }

    /// Stores and announces a record if its epoch is newer than the stored one; false if an
    /// equal or newer timeline is already there (the caller adopts it).
    pub async fn publish(&self, id: &str, record: &SessionRecord) -> Result<bool, BrokerError> {
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

    pub async fn load(&self, id: &str) -> Result<Option<SessionRecord>, BrokerError> {
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
    pub async fn all(&self) -> Result<Vec<(String, SessionRecord)>, BrokerError> {
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
                Err(err @ (BrokerError::Invalid(_) | BrokerError::Record(_))) => {
                    tracing::warn!(session = %id, %err, "skipping an unusable session record")
                }
                Err(err) => return Err(err),
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }

    pub async fn delete(&self, id: &str) -> Result<(), BrokerError> {
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
