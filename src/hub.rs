//! The hub actor: the registry of races and sessions.
//!
//! HTTP handlers ask it to list, load, create, look up and delete; it starts session actors and
//! loads each race once (concurrent requests for a race wait on the same load) into an
//! [`EncodedRace`] shared by every session that plays it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use futures_util::future::join_all;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::cache::RaceCache;
use crate::encode::EncodedRace;
use crate::ids::{
    hex, is_valid_id as valid_id, random_token, InvalidId, RaceId, SessionId, TokenHash,
};
use crate::loader::{file_content_id, load_race_file, LoadError, Loader};
use crate::metrics::Metrics;
use crate::race::RaceMeta;
use crate::replication::{Adopt, ReplicaEvent, Replication, SessionRecord, TimelineChanged};
use crate::session::{
    CloseReason, End, GetInfo, PlayedRace, Replica, Resync, Session, SessionFailed, SessionInfo,
    Timeline,
};
use crate::session_store::{Forget, LocalStore};
use crate::writer::DeliveryTotals;

#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("no race {0:?}: GET /api/races lists the races; a race file put in the hub's data directory (--data-dir) is picked up within seconds, or at once with POST /api/races/rescan")]
    RaceNotFound(String),
    #[error("no session {0:?}")]
    SessionNotFound(String),
    #[error("session {0:?} already exists")]
    SessionExists(String),
    #[error("the hub already has its maximum of {0} sessions")]
    TooManySessions(usize),
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    #[error("race {race:?} could not be loaded: {source}")]
    LoadFailed {
        race: String,
        source: Arc<LoadError>,
    },
    #[error("race {0:?} could not be loaded: the hub is shutting down")]
    ShuttingDown(String),
    #[error("invalid race file: {0}")]
    InvalidRace(String),
    #[error("could not store the race: {0}")]
    Storage(String),
    #[error("race {race:?} needs about {needed} bytes and the races being played hold {pinned} of the {budget} byte race memory budget; end a session or raise --race-memory-budget")]
    RaceMemoryFull {
        race: String,
        needed: u64,
        pinned: u64,
        budget: u64,
    },
}

/// How long a looping session waits at the finish by default.
pub const DEFAULT_LOOP_PAUSE: Duration = Duration::from_secs(5);

/// How much memory loaded races may take, how long a failed load is remembered, and how many
/// commands a session takes.
#[derive(Debug, Clone, Copy)]
pub struct RaceLimits {
    /// Bytes of encoded races kept in memory; races no session plays are dropped (least
    /// recently used first) to stay under it.
    pub memory_budget: u64,
    /// A race that failed to load answers with the same error for this long before it is tried
    /// again, so a broken file is not re-read on every request.
    pub load_retry: Duration,
    /// Control commands each session takes per second, from all its controllers together.
    pub session_commands_per_second: std::num::NonZeroU32,
}

impl Default for RaceLimits {
    fn default() -> Self {
        Self {
            memory_budget: 1 << 30,
            load_retry: Duration::from_secs(30),
            session_commands_per_second: std::num::NonZeroU32::new(30)
                .unwrap_or(std::num::NonZeroU32::MIN),
        }
    }
}

/// A race in memory, and when it was last asked for.
struct Loaded {
    race: Arc<EncodedRace>,
    used: std::time::Instant,
}

/// A rough size of a race's encoded frames, from its metadata, before it is loaded.
fn estimated_bytes(meta: &RaceMeta) -> u64 {
    u64::from(meta.total_frames) * (44 + 56 * meta.drivers.len() as u64)
}

/// A race known to the hub: where its file is (none when it is only in the cache) and its
/// metadata, ready to serve over HTTP.
#[derive(Debug, Clone)]
pub struct RaceEntry {
    pub path: Option<PathBuf>,
    pub meta: Arc<RaceMeta>,
    /// `GET /api/races/{race}` body, built once: the metadata without its timeline.
    pub meta_json: Bytes,
    /// Strong ETag of `meta_json`.
    pub etag: String,
    /// `GET /api/races/{race}/events` body, built once: the timeline.
    pub events_json: Bytes,
    /// Strong ETag of `events_json`.
    pub events_etag: String,
}

impl RaceEntry {
    pub fn new(path: Option<PathBuf>, meta: RaceMeta) -> Self {
        // The timeline is served on its own (`/events`), so the metadata stays small.
        // unwrap: race metadata holds only strings, numbers and arrays of them.
        let mut value = serde_json::to_value(&meta).unwrap();
        if let Some(fields) = value.as_object_mut() {
            fields.remove("timeline");
        }
        let json = serde_json::to_vec(&value).unwrap();
        let events = serde_json::to_vec(&meta.timeline).unwrap();
        Self {
            path,
            meta: Arc::new(meta),
            etag: strong_etag(&json),
            meta_json: Bytes::from(json),
            events_etag: strong_etag(&events),
            events_json: Bytes::from(events),
        }
    }

    pub fn summary(&self) -> RaceSummary {
        RaceSummary {
            id: self.meta.id.clone(),
            name: self.meta.name.clone(),
            laps: self.meta.total_laps,
            drivers: self.meta.drivers.len(),
            total_frames: self.meta.total_frames,
        }
    }
}

fn strong_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex(&digest[..16]))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RaceSummary {
    pub id: String,
    pub name: String,
    pub laps: u16,
    pub drivers: usize,
    pub total_frames: u32,
}

struct SessionEntry {
    addr: Addr<Session>,
    race: String,
    /// Only the hash is kept: sessions joined from another replica never see the token.
    token_sha256: TokenHash,
}

type LoadResult = Result<Arc<EncodedRace>, HubError>;

pub struct Hub {
    races: BTreeMap<String, RaceEntry>,
    loaded: HashMap<String, Loaded>,
    loading: HashMap<String, Vec<oneshot::Sender<LoadResult>>>,
    /// Loads that failed recently, and when.
    failed: HashMap<String, (std::time::Instant, HubError)>,
    limits: RaceLimits,
    sessions: BTreeMap<String, SessionEntry>,
    /// The cache, to learn of races only it holds.
    cache: Option<Arc<RaceCache>>,
    /// Cache, then file: how a race not in memory is loaded.
    loader: Loader,
    data_dir: PathBuf,
    max_sessions: usize,
    max_viewers_per_session: usize,
    /// Length of a look-ahead window, for every session.
    lookahead_window: Duration,
    metrics: Arc<Metrics>,
    /// Redis, when replicas share sessions.
    broker: Option<Arc<Replication>>,
    /// Where sessions report their timelines: the Redis publisher, or the local store.
    replica_sink: Option<Recipient<TimelineChanged>>,
    /// This actor's own address, for sessions to report a failure to.
    me: Option<Addr<Hub>>,
    /// Without a broker: where sessions are kept for a restart.
    store: Option<Addr<LocalStore>>,
    /// How long a looping session waits at the finish before it plays again.
    loop_pause: Duration,
}

impl Hub {
    pub fn new(
        races: impl IntoIterator<Item = RaceEntry>,
        cache: Option<Arc<RaceCache>>,
        data_dir: PathBuf,
        max_sessions: usize,
        max_viewers_per_session: usize,
        lookahead_window: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            lookahead_window,
            loader: Loader::new(cache.clone(), metrics.clone()),
            metrics,
            broker: None,
            replica_sink: None,
            me: None,
            store: None,
            loop_pause: DEFAULT_LOOP_PAUSE,
            cache,
            data_dir,
            races: races.into_iter().map(|r| (r.meta.id.clone(), r)).collect(),
            loaded: HashMap::new(),
            loading: HashMap::new(),
            failed: HashMap::new(),
            limits: RaceLimits::default(),
            sessions: BTreeMap::new(),
            max_sessions,
            max_viewers_per_session,
        }
    }

    /// How long looping sessions wait at the finish before they play again.
    pub fn with_loop_pause(mut self, pause: Duration) -> Self {
        self.loop_pause = pause;
        self
    }

    /// Bounds the memory races take and how often a broken race is retried.
    pub fn with_limits(mut self, limits: RaceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Shares sessions with other replicas through Redis: the hub asks `replication` for
    /// records, and sessions report their timelines to `publisher`.
    pub fn with_replication(
        mut self,
        replication: Arc<Replication>,
        publisher: Recipient<TimelineChanged>,
    ) -> Self {
        self.broker = Some(replication);
        self.replica_sink = Some(publisher);
        self
    }

    /// Keeps sessions in `store` so they survive a restart (without Redis).
    pub fn with_store(mut self, store: Addr<LocalStore>) -> Self {
        self.replica_sink = Some(store.clone().recipient());
        self.store = Some(store);
        self
    }

    /// A future of the encoded race: at once when loaded, else joining (or starting) its load.
    fn load(&mut self, race: &str, ctx: &mut Context<Self>) -> oneshot::Receiver<LoadResult> {
        let (tx, rx) = oneshot::channel();
        let now = std::time::Instant::now();
        if let Some(loaded) = self.loaded.get_mut(race) {
            loaded.used = now;
            let _ = tx.send(Ok(loaded.race.clone()));
            return rx;
        }
        let Some(entry) = self.races.get(race) else {
            let _ = tx.send(Err(HubError::RaceNotFound(race.to_owned())));
            return rx;
        };
        if let Some((at, err)) = self.failed.get(race) {
            if now.duration_since(*at) < self.limits.load_retry {
                let _ = tx.send(Err(err.clone()));
                return rx;
            }
        }
        if let Some(waiters) = self.loading.get_mut(race) {
            waiters.push(tx);
            return rx;
        }
        let (needed, pinned) = (estimated_bytes(&entry.meta), self.pinned_bytes());
        let budget = self.limits.memory_budget;
        if pinned.saturating_add(needed) > budget {
            let _ = tx.send(Err(HubError::RaceMemoryFull {
                race: race.to_owned(),
                needed,
                pinned,
                budget,
            }));
            return rx;
        }
        self.loading.insert(race.to_owned(), vec![tx]);
        let path = entry.path.clone();
        let race = race.to_owned();
        tracing::info!(race = %race, "loading race");
        let loader = self.loader.clone();
        let task = {
            let race = race.clone();
            async move { loader.load(&race, path, budget).await }
        };
        ctx.spawn(task.into_actor(self).map(move |result, act, _| {
            act.finish_load(race, result);
        }));
        rx
    }

    fn finish_load(&mut self, race: String, result: Result<Arc<EncodedRace>, LoadError>) {
        let result = match result {
            Ok(encoded) => {
                tracing::info!(
                    race = %race,
                    frames = encoded.total_frames(),
                    bytes = encoded.encoded_bytes(),
                    "race loaded"
                );
                self.keep_loaded(&race, encoded.clone());
                Ok(encoded)
            }
            Err(source) => {
                tracing::error!(race = %race, err = %source, "race load failed");
                let err = HubError::LoadFailed {
                    race: race.clone(),
                    source: Arc::new(source),
                };
                self.failed
                    .insert(race.clone(), (std::time::Instant::now(), err.clone()));
                Err(err)
            }
        };
        for waiter in self.loading.remove(&race).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }

    /// Keeps a just-loaded race in memory, then drops the least recently used races that no
    /// session plays until the loaded races fit the budget again.
    fn keep_loaded(&mut self, race: &str, encoded: Arc<EncodedRace>) {
        let now = std::time::Instant::now();
        self.failed.remove(race);
        self.loaded.insert(
            race.to_owned(),
            Loaded {
                race: encoded,
                used: now,
            },
        );
        let mut held: u64 = self.loaded.values().map(|l| l.race.memory_bytes()).sum();
        while held > self.limits.memory_budget {
            let oldest = self
                .loaded
                .iter()
                .filter(|(id, _)| id.as_str() != race && !self.is_played(id))
                .min_by_key(|(_, l)| l.used)
                .map(|(id, _)| id.clone());
            let Some(id) = oldest else {
                break;
            };
            if let Some(evicted) = self.loaded.remove(&id) {
                held -= evicted.race.memory_bytes();
                self.metrics.races_evicted.inc();
                tracing::info!(race = %id, bytes = evicted.race.memory_bytes(), "race dropped from memory to stay within the budget");
            }
        }
        self.metrics.races_loaded.set(self.loaded.len() as i64);
        self.metrics.race_memory.set(held as i64);
    }

    /// True while a session plays `race`.
    fn is_played(&self, race: &str) -> bool {
        self.sessions.values().any(|s| s.race == race)
    }

    /// Memory of the loaded races that sessions play, which cannot be dropped.
    fn pinned_bytes(&self) -> u64 {
        self.loaded
            .iter()
            .filter(|(id, _)| self.is_played(id))
            .map(|(_, l)| l.race.memory_bytes())
            .sum()
    }

    fn check_new_session(&mut self, id: Option<&str>) -> Result<(), HubError> {
        self.reap();
        if self.sessions.len() >= self.max_sessions {
            return Err(HubError::TooManySessions(self.max_sessions));
        }
        if let Some(id) = id {
            SessionId::parse(id)?;
            if self.sessions.contains_key(id) {
                return Err(HubError::SessionExists(id.to_owned()));
            }
        }
        Ok(())
    }

    /// Learns of a race that only the cache knows (imported elsewhere, or its file is gone),
    /// then carries on: at once when the race is known or there is no cache.
    fn discover(&self, id: &str) -> ResponseActFuture<Self, ()> {
        let cache = match &self.cache {
            Some(cache) if !self.races.contains_key(id) && valid_id(id) => cache.clone(),
            _ => return Box::pin(fut::ready(())),
        };
        let id = id.to_owned();
        let lookup = async move { cache.meta(&id).await };
        Box::pin(lookup.into_actor(self).map(|found, act, _| match found {
            Ok(Some(meta)) => act.learn(None, meta),
            Ok(None) => {}
            Err(err) => tracing::warn!(%err, "cache lookup failed"),
        }))
    }

    /// Adds (or replaces) a race in the catalogue; a file-backed entry wins over a cache-only one.
    fn learn(&mut self, path: Option<PathBuf>, meta: RaceMeta) {
        let id = meta.id.clone();
        if path.is_none() && self.races.get(&id).is_some_and(|r| r.path.is_some()) {
            return;
        }
        self.failed.remove(&id);
        self.races.insert(id, RaceEntry::new(path, meta));
    }

    /// Starts a session: a new one (its token is generated and returned), or the local copy
    /// of one created on another replica (`joined`), which plays that replica's timeline.
    /// With a broker, a new session also returns the record to store before anyone is told it
    /// exists, so every replica can find it from the moment its creation is answered.
    fn start_session(
        &mut self,
        id: Option<String>,
        race: Arc<EncodedRace>,
        autoplay: bool,
        looping: bool,
        joined: Option<SessionRecord>,
    ) -> Result<(Created, Option<SessionRecord>), HubError> {
        // A copy of a session created elsewhere loops as its creator said.
        let looping = joined.as_ref().map_or(looping, |r| r.looping);
        // Checked again: another create may have taken the id or the last slot during the load.
        self.check_new_session(id.as_deref())?;
        let id = id.unwrap_or_else(|| loop {
            let candidate = random_token(4);
            if !self.sessions.contains_key(&candidate) {
                break candidate;
            }
        });
        let (control_token, token_sha256) = match &joined {
            Some(record) => (String::new(), record.token_sha256.clone()),
            None => {
                let token = random_token(16);
                let hash = TokenHash::of(&token);
                (token, hash)
            }
        };
        let mut session = Session::new(
            &id,
            race.clone(),
            autoplay,
            self.max_viewers_per_session,
            self.lookahead_window,
            self.metrics.clone(),
        )
        .with_command_rate(self.limits.session_commands_per_second);
        if looping {
            session = session.looping(self.loop_pause);
        }
        let race_id = RaceId::parse(race.id())?;
        if let Some(sink) = &self.replica_sink {
            let replica = Replica {
                sink: sink.clone(),
                race: race_id.clone(),
                token_sha256: token_sha256.clone(),
            };
            session = session.with_replica(replica, joined.as_ref().map(|r| r.timeline));
        }
        // A new session's record is stored in Redis before anyone is told it exists.
        let record = (self.broker.is_some() && joined.is_none()).then(|| SessionRecord {
            race: race_id,
            token_sha256: token_sha256.clone(),
            timeline: session.shared(),
            looping,
        });
        if let Some(me) = &self.me {
            session = session.on_failure(me.clone().recipient());
        }
        let addr = session.start();
        tracing::info!(session = %id, race = %race.id(), joined = joined.is_some(), "session started");
        self.sessions.insert(
            id.clone(),
            SessionEntry {
                addr,
                race: race.id().to_owned(),
                token_sha256,
            },
        );
        self.metrics.sessions.set(self.sessions.len() as i64);
        let created = Created {
            id,
            race: race.id().to_owned(),
            control_token,
        };
        Ok((created, record))
    }

    /// The local session `id`, starting a local copy if another replica created it.
    fn local_session(&mut self, id: &str) -> ResponseActFuture<Self, Option<Addr<Session>>> {
        if let Some(entry) = self.sessions.get(id) {
            return Box::pin(fut::ready(Some(entry.addr.clone())));
        }
        let Some(broker) = self.broker.clone().filter(|_| valid_id(id)) else {
            return Box::pin(fut::ready(None));
        };
        let id = id.to_owned();
        let lookup = {
            let id = id.clone();
            async move { broker.load(&id).await.ok().flatten() }
        };
        Box::pin(lookup.into_actor(self).then(move |record, act, _| {
            let Some(record) = record else {
                return Box::pin(fut::ready(None)) as ResponseActFuture<Self, _>;
            };
            Box::pin(act.discover(&record.race).then(move |(), act, ctx| {
                let rx = act.load(&record.race, ctx);
                rx.into_actor(act).map(move |loaded, act, _| {
                    // Another request may have started the copy while the race loaded.
                    if let Some(entry) = act.sessions.get(&id) {
                        return Some(entry.addr.clone());
                    }
                    let race = loaded.ok()?.ok()?;
                    let playing = record.timeline.playing;
                    match act.start_session(Some(id.clone()), race, playing, false, Some(record)) {
                        Ok(_) => act.sessions.get(&id).map(|e| e.addr.clone()),
                        Err(err) => {
                            tracing::warn!(session = %id, %err, "could not join a shared session");
                            None
                        }
                    }
                })
            }))
        }))
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address());
    }
}

impl Handler<SessionFailed> for Hub {
    type Result = ();
    fn handle(&mut self, msg: SessionFailed, _: &mut Context<Self>) {
        self.forget_session(&msg.id);
    }
}

impl Hub {
    /// Drops a session that is gone without being ended (it failed, or its actor died): its id
    /// is free again.
    fn forget_session(&mut self, id: &str) {
        if self.sessions.remove(id).is_some() {
            tracing::warn!(session = %id, "session failed; its id is free again");
            self.metrics.sessions.set(self.sessions.len() as i64);
            let _ = self.metrics.session_viewers.remove_label_values(&[id]);
        }
    }

    /// Forgets every session whose actor is no longer running.
    fn reap(&mut self) {
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.addr.connected())
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.forget_session(&id);
        }
    }
}

#[derive(Message)]
#[rtype(result = "Vec<RaceSummary>")]
pub struct ListRaces;

impl Handler<ListRaces> for Hub {
    type Result = ResponseActFuture<Self, Vec<RaceSummary>>;
    fn handle(&mut self, _: ListRaces, _: &mut Context<Self>) -> Self::Result {
        let known: Vec<String> = self.races.keys().cloned().collect();
        let cache = self.cache.clone().filter(|c| c.is_ready());
        let lookup = async move {
            let Some(cache) = cache else {
                return Vec::new();
            };
            let ids = cache.race_ids().await.unwrap_or_default();
            let mut found = Vec::new();
            for id in ids.into_iter().filter(|id| !known.contains(id)) {
                if let Ok(Some(meta)) = cache.meta(&id).await {
                    found.push(meta);
                }
            }
            found
        };
        Box::pin(lookup.into_actor(self).map(|found, act, _| {
            for meta in found {
                act.learn(None, meta);
            }
            act.races.values().map(RaceEntry::summary).collect()
        }))
    }
}

/// Metadata of one race, without loading its frames.
#[derive(Message)]
#[rtype(result = "Option<RaceEntry>")]
pub struct GetRace(pub String);

impl Handler<GetRace> for Hub {
    type Result = ResponseActFuture<Self, Option<RaceEntry>>;
    fn handle(&mut self, msg: GetRace, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.discover(&msg.0)
                .map(move |(), act, _| act.races.get(&msg.0).cloned()),
        )
    }
}

/// The encoded frames of a race, loading them if needed.
#[derive(Message)]
#[rtype(result = "Result<Arc<EncodedRace>, HubError>")]
pub struct LoadRace(pub String);

impl Handler<LoadRace> for Hub {
    type Result = ResponseActFuture<Self, LoadResult>;
    fn handle(&mut self, msg: LoadRace, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.discover(&msg.0).then(move |(), act, ctx| {
            let rx = act.load(&msg.0, ctx);
            async move { rx.await.unwrap_or_else(|_| Err(aborted(&msg.0))) }.into_actor(act)
        }))
    }
}

fn aborted(race: &str) -> HubError {
    HubError::ShuttingDown(race.to_owned())
}

#[derive(Message)]
#[rtype(result = "Result<Created, HubError>")]
pub struct CreateSession {
    pub race: String,
    pub id: Option<String>,
    pub autoplay: bool,
    /// Play again from the start a little after the finish (see [`Hub::with_loop_pause`]).
    pub looping: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub id: String,
    pub race: String,
    pub control_token: String,
}

impl Handler<CreateSession> for Hub {
    type Result = ResponseActFuture<Self, Result<Created, HubError>>;
    fn handle(&mut self, msg: CreateSession, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(err) = self.check_new_session(msg.id.as_deref()) {
            return Box::pin(fut::ready(Err(err)));
        }
        let _ = ctx;
        // An id taken on another replica is taken here too.
        let remote = match (&self.broker, &msg.id) {
            (Some(broker), Some(id)) => {
                let (broker, id) = (broker.clone(), id.clone());
                Some(async move { broker.load(&id).await.ok().flatten().is_some() })
            }
            _ => None,
        };
        let taken = async move {
            match remote {
                Some(check) => check.await,
                None => false,
            }
        };
        Box::pin(taken.into_actor(self).then(move |taken, act, _| {
            if taken {
                let id = msg.id.clone().unwrap_or_default();
                return Box::pin(fut::ready(Err(HubError::SessionExists(id))))
                    as ResponseActFuture<Self, _>;
            }
            Box::pin(act.discover(&msg.race).then(move |(), act, ctx| {
                let rx = act.load(&msg.race, ctx);
                rx.into_actor(act).then(move |loaded, act, _| {
                    let started = loaded
                        .unwrap_or_else(|_| Err(aborted(&msg.race)))
                        .and_then(|race| act.start_session(msg.id, race, msg.autoplay, msg.looping, None));
                    let broker = act.broker.clone();
                    async move {
                        let (created, record) = started?;
                        // Stored before the answer: any replica can join from now on.
                        if let (Some(broker), Some(record)) = (broker, record) {
                            if let Err(err) = broker.publish(&created.id, &record).await {
                                tracing::warn!(session = %created.id, %err, "session not shared yet; it will be when the broker is back");
                            }
                        }
                        Ok(created)
                    }
                    .into_actor(act)
                })
            }))
        }))
    }
}

/// Adds or replaces a race from an uploaded file: validated and encoded before anything is
/// kept, so a bad upload leaves no trace; then moved into the data directory and cached.
#[derive(Message)]
#[rtype(result = "Result<Imported, HubError>")]
pub struct ImportRace {
    pub id: String,
    /// A temporary file in the data directory; removed on failure.
    pub upload: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub race: RaceSummary,
    /// False when an existing race of that id was replaced.
    pub created: bool,
}

impl Handler<ImportRace> for Hub {
    type Result = ResponseActFuture<Self, Result<Imported, HubError>>;
    fn handle(&mut self, msg: ImportRace, _: &mut Context<Self>) -> Self::Result {
        let target = self.data_dir.join(format!("{}.race", msg.id));
        let ImportRace { id, upload } = msg;
        let work = async move {
            let checked = tokio::task::spawn_blocking(move || -> Result<_, HubError> {
                let race =
                    load_race_file(&upload).map_err(|e| HubError::InvalidRace(e.to_string()));
                let race = race.and_then(|race| {
                    if race.id() != id {
                        return Err(HubError::InvalidRace(format!(
                            "the file holds race {:?}, not {id:?}",
                            race.id()
                        )));
                    }
                    let content = file_content_id(&upload)
                        .map_err(|e| HubError::InvalidRace(e.to_string()))?;
                    std::fs::rename(&upload, &target)
                        .map_err(|e| HubError::Storage(format!("{}: {e}", target.display())))?;
                    Ok((race, content, target))
                });
                if race.is_err() {
                    let _ = std::fs::remove_file(&upload);
                }
                race
            });
            checked
                .await
                .map_err(|e| HubError::Storage(e.to_string()))?
        };
        Box::pin(work.into_actor(self).map(|result, act, _| {
            let (race, content, path) = result?;
            let race = Arc::new(race);
            let id = race.id().to_owned();
            let created = !act.races.contains_key(&id);
            act.races
                .insert(id.clone(), RaceEntry::new(Some(path), (*race.meta).clone()));
            act.keep_loaded(&id, race.clone());
            act.loader.write_back(race, content);
            tracing::info!(race = %id, created, "race imported");
            Ok(Imported {
                race: act.races[&id].summary(),
                created,
            })
        }))
    }
}

/// A session's address and its control token's SHA-256, for the WebSocket route; a session
/// created on another replica is joined here.
#[derive(Message)]
#[rtype(result = "Option<(Addr<Session>, TokenHash)>")]
pub struct FindSession(pub String);

impl Handler<FindSession> for Hub {
    type Result = ResponseActFuture<Self, Option<(Addr<Session>, TokenHash)>>;
    fn handle(&mut self, msg: FindSession, _: &mut Context<Self>) -> Self::Result {
        self.reap();
        Box::pin(self.local_session(&msg.0).map(move |addr, act, _| {
            let token = act.sessions.get(&msg.0)?.token_sha256.clone();
            Some((addr?, token))
        }))
    }
}

#[derive(Message)]
#[rtype(result = "Option<SessionInfo>")]
pub struct GetSession(pub String);

impl Handler<GetSession> for Hub {
    type Result = ResponseActFuture<Self, Option<SessionInfo>>;
    fn handle(&mut self, msg: GetSession, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.local_session(&msg.0)
                .then(|addr, act, _| async move { addr?.send(GetInfo).await.ok() }.into_actor(act)),
        )
    }
}

#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct ListSessions;

impl Handler<ListSessions> for Hub {
    type Result = ResponseFuture<Vec<SessionInfo>>;
    fn handle(&mut self, _: ListSessions, _: &mut Context<Self>) -> Self::Result {
        let asks: Vec<_> = self
            .sessions
            .values()
            .map(|s| s.addr.send(GetInfo))
            .collect();
        let broker = self.broker.clone().filter(|b| b.is_ready());
        let frames: HashMap<String, u32> = self
            .races
            .iter()
            .map(|(id, race)| (id.clone(), race.meta.total_frames))
            .collect();
        Box::pin(async move {
            let mut sessions: Vec<SessionInfo> =
                join_all(asks).await.into_iter().flatten().collect();
            // Sessions other replicas created: joinable here too, with no viewers here yet.
            let remote = match broker {
                Some(broker) => broker.all().await.unwrap_or_default(),
                None => Vec::new(),
            };
            for (id, record) in remote {
                if sessions.iter().all(|s| s.id != id) {
                    let total_frames = frames.get(record.race.as_str()).copied();
                    sessions.push(remote_info(id, &record, total_frames));
                }
            }
            sessions.sort_by(|a, b| a.id.cmp(&b.id));
            sessions
        })
    }
}

/// A session only another replica plays, described from its record: its frame now, clamped to
/// the race's end when this hub knows the race (else the frame it was anchored at).
fn remote_info(id: String, record: &SessionRecord, total_frames: Option<u32>) -> SessionInfo {
    let now = std::time::Instant::now();
    let timeline = match total_frames {
        Some(frames) => Timeline::joined(frames, &record.timeline, now),
        None => Timeline::joined(record.timeline.anchor_frame + 1, &record.timeline, now),
    };
    SessionInfo {
        id,
        race: record.race.to_string(),
        viewers: 0,
        state: timeline.state(std::time::Instant::now()),
        stats: DeliveryTotals::default(),
        looping: record.looping,
    }
}

/// Deletes a session: its viewers are closed with [`CloseReason::SessionDeleted`].
#[derive(Message)]
#[rtype(result = "Result<(), HubError>")]
pub struct DeleteSession {
    pub id: String,
}

impl Handler<DeleteSession> for Hub {
    type Result = ResponseActFuture<Self, Result<(), HubError>>;
    fn handle(&mut self, msg: DeleteSession, _: &mut Context<Self>) -> Self::Result {
        let local = self.end_session(&msg.id, CloseReason::SessionDeleted);
        let broker = self.broker.clone();
        let id = msg.id.clone();
        // Every other replica ends its copy when the deletion is announced.
        let remote = async move {
            let Some(broker) = broker else {
                return false;
            };
            let existed = broker.load(&id).await.ok().flatten().is_some();
            if let Err(err) = broker.delete(&id).await {
                tracing::warn!(session = %id, %err, "deletion not announced to other replicas");
            }
            existed
        };
        Box::pin(remote.into_actor(self).map(move |remote, _, _| {
            if local || remote {
                Ok(())
            } else {
                Err(HubError::SessionNotFound(msg.id))
            }
        }))
    }
}

impl Hub {
    /// Ends the local session `id`, if any: its viewers are closed for `reason`.
    fn end_session(&mut self, id: &str, reason: CloseReason) -> bool {
        let Some(entry) = self.sessions.remove(id) else {
            return false;
        };
        tracing::info!(session = %id, race = %entry.race, "session ended");
        self.metrics.sessions.set(self.sessions.len() as i64);
        let _ = self.metrics.session_viewers.remove_label_values(&[id]);
        let end = End(reason);
        let Some(store) = self.store.clone() else {
            entry.addr.do_send(end);
            return true;
        };
        store.do_send(Forget(id.to_owned()));
        // And again once the session has handled what was queued before its end: whatever it
        // saved until then is in the store's mailbox ahead of this.
        let (ended, id) = (entry.addr.send(end), id.to_owned());
        actix::spawn(async move {
            let _ = ended.await;
            store.do_send(Forget(id));
        });
        true
    }
}

impl Handler<ReplicaEvent> for Hub {
    type Result = ();
    fn handle(&mut self, event: ReplicaEvent, _: &mut Context<Self>) {
        match event {
            ReplicaEvent::Connected => {
                for entry in self.sessions.values() {
                    entry.addr.do_send(Resync);
                }
            }
            ReplicaEvent::Disconnected => {}
            ReplicaEvent::Updated { id, record } => {
                if let Some(entry) = self.sessions.get(&id) {
                    entry.addr.do_send(Adopt(record.timeline));
                }
            }
            ReplicaEvent::Deleted { id } => {
                self.end_session(&id, CloseReason::SessionDeleted);
            }
        }
    }
}

/// Ends every session (viewers are closed for `reason`); answers once every session has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub reason: CloseReason,
}

impl Handler<Shutdown> for Hub {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let ends: Vec<_> = std::mem::take(&mut self.sessions)
            .into_values()
            .map(|s| s.addr.send(End(msg.reason.clone())))
            .collect();
        self.loading.clear();
        self.metrics.sessions.set(0);
        Box::pin(async move {
            join_all(ends).await;
        })
    }
}

/// The encoded race a session plays: lets tests and benches check that sessions share one copy.
#[derive(Message)]
#[rtype(result = "Option<Arc<EncodedRace>>")]
pub struct SessionRace(pub String);

impl Handler<SessionRace> for Hub {
    type Result = ResponseFuture<Option<Arc<EncodedRace>>>;
    fn handle(&mut self, msg: SessionRace, _: &mut Context<Self>) -> Self::Result {
        let addr = self.sessions.get(&msg.0).map(|s| s.addr.clone());
        Box::pin(async move { addr?.send(PlayedRace).await.ok() })
    }
}

/// Starts a session kept in the session store by an earlier run of this hub, with its id,
/// control token and timeline. A record whose race is gone is removed.
#[derive(Message)]
#[rtype(result = "Result<(), HubError>")]
pub struct ResumeSession {
    pub id: String,
    pub record: SessionRecord,
}

impl Handler<ResumeSession> for Hub {
    type Result = ResponseActFuture<Self, Result<(), HubError>>;
    fn handle(&mut self, msg: ResumeSession, _: &mut Context<Self>) -> Self::Result {
        let ResumeSession { id, record } = msg;
        Box::pin(self.discover(&record.race).then(move |(), act, ctx| {
            let rx = act.load(&record.race, ctx);
            rx.into_actor(act).map(move |loaded, act, _| {
                let race = match loaded.unwrap_or_else(|_| Err(aborted(&record.race))) {
                    Ok(race) => race,
                    Err(err @ HubError::RaceNotFound(_)) => {
                        if let Some(store) = &act.store {
                            store.do_send(Forget(id.clone()));
                        }
                        return Err(err);
                    }
                    Err(err) => return Err(err),
                };
                let playing = record.timeline.playing;
                act.start_session(Some(id), race, playing, false, Some(record))
                    .map(|_| ())
            })
        }))
    }
}

/// A fresh listing of the data directory's race files (see [`crate::datadir`]): races whose
/// file is new or changed enter the catalogue, races whose file is gone leave it. Sessions
/// playing a changed or removed race play on with the copy they have.
#[derive(Message)]
#[rtype(result = "RescanReport")]
pub struct Rescanned(pub Vec<RaceEntry>);

/// What a rescan changed, by race id.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct RescanReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Races in the catalogue afterwards.
    pub races: usize,
}

impl RescanReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl Handler<Rescanned> for Hub {
    type Result = MessageResult<Rescanned>;
    fn handle(&mut self, msg: Rescanned, _: &mut Context<Self>) -> Self::Result {
        let mut report = RescanReport::default();
        let listed: std::collections::HashSet<String> =
            msg.0.iter().map(|r| r.meta.id.clone()).collect();
        for entry in msg.0 {
            let id = entry.meta.id.clone();
            match self.races.get(&id) {
                Some(known) if known.etag == entry.etag => {
                    if known.path == entry.path {
                        continue;
                    }
                }
                Some(known) if known.path.is_some() => {
                    // New metadata in the file: the next load reads it again.
                    self.loaded.remove(&id);
                    report.changed.push(id.clone());
                }
                _ => report.added.push(id.clone()),
            }
            self.races.insert(id, entry);
        }
        let gone: Vec<String> = self
            .races
            .iter()
            // Checked again here: a listing made just before an upload landed does not hold it.
            .filter(|(id, race)| {
                !listed.contains(*id) && race.path.as_ref().is_some_and(|p| !p.exists())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            // A cache that still holds it is asked again on the next request.
            self.races.remove(&id);
            self.loaded.remove(&id);
            report.removed.push(id);
        }
        self.metrics.races_loaded.set(self.loaded.len() as i64);
        report.races = self.races.len();
        MessageResult(report)
    }
}
