//! The session actor: one shared playback timeline over a race, ticking at 25 FPS.
//!
//! The hub starts one per session; viewer actors join it and send it control commands. Each tick
//! derives the current frame from the clock and publishes it, framed once, on the session's
//! broadcast ([`crate::feed`]), plus look-ahead windows when due; frames never queue per viewer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;

use crate::broker::{Broker, SessionRecord};
use crate::encode::{state_message, window_message, ws_binary, ws_text, EncodedRace, PlayState};
use crate::feed::{Broadcast, FeedHandle, Mode};
use crate::metrics::Metrics;
use crate::race::FPS;
use crate::window_codec::{self, WindowEncoding};

/// Slowest and fastest playback speeds a controller may choose.
pub const SPEED_RANGE: (f64, f64) = (0.25, 16.0);

const TICK: Duration = Duration::from_millis(1000 / FPS as u64);

/// A session's play state, anchored in time: the current frame is computed from the clock
/// (anchor frame + elapsed × speed × 25), so late timer ticks never slow playback down.
#[derive(Debug, Clone)]
pub struct Timeline {
    playing: bool,
    speed: f64,
    anchor_frame: u32,
    /// The anchor on this process's monotonic clock, for computing frames.
    anchor_at: Instant,
    /// The same anchor in wall-clock Unix milliseconds, the clock replicas share.
    anchor_ms: i64,
    epoch: u64,
    last_frame: u32,
}

/// A timeline as replicas share it through the broker: anchored in wall-clock time, so every
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
    pub fn check(&self) -> Result<(), String> {
        let (min, max) = SPEED_RANGE;
        if !(self.speed.is_finite() && (min..=max).contains(&self.speed)) {
            return Err(format!("speed {} is outside [{min}, {max}]", self.speed));
        }
        let latest = wall_ms().saturating_add(MAX_ANCHOR_AHEAD_MS);
        if !(MIN_ANCHOR_MS..=latest).contains(&self.anchor_ms) {
            return Err(format!(
                "anchor_ms {} is not a time between 2020 and a day from now",
                self.anchor_ms
            ));
        }
        if self.epoch == 0 {
            return Err("epoch is 0".into());
        }
        Ok(())
    }
}

/// Wall-clock time in Unix microseconds: the server clock clients synchronise to.
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Wall-clock time in Unix milliseconds.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Timeline {
    pub fn new(total_frames: u32, playing: bool, now: Instant) -> Self {
        Self {
            playing,
            speed: 1.0,
            anchor_frame: 0,
            anchor_at: now,
            anchor_ms: wall_ms(),
            epoch: 1,
            last_frame: total_frames.saturating_sub(1),
        }
    }

    /// This timeline as replicas share it.
    pub fn shared(&self) -> SharedTimeline {
        SharedTimeline {
            playing: self.playing,
            speed: self.speed,
            anchor_frame: self.anchor_frame,
            anchor_ms: self.anchor_ms,
            epoch: self.epoch,
        }
    }

    /// Takes over a timeline set elsewhere, converting its wall-clock anchor to this
    /// process's monotonic clock once. Refuses (and leaves this timeline as it was) one that
    /// fails [`SharedTimeline::check`].
    pub fn adopt(&mut self, shared: &SharedTimeline) -> Result<(), String> {
        shared.check()?;
        let (now, now_ms) = (Instant::now(), wall_ms());
        let offset = Duration::from_millis(now_ms.abs_diff(shared.anchor_ms));
        self.anchor_at = if shared.anchor_ms <= now_ms {
            now.checked_sub(offset).unwrap_or(now)
        } else {
            now.checked_add(offset).unwrap_or(now)
        };
        self.anchor_ms = shared.anchor_ms;
        self.playing = shared.playing;
        self.speed = shared.speed;
        self.anchor_frame = shared.anchor_frame.min(self.last_frame);
        self.epoch = shared.epoch;
        Ok(())
    }

    /// The frame to show at `now`, clamped to the last frame.
    pub fn frame_at(&self, now: Instant) -> u32 {
        if !self.playing {
            return self.anchor_frame;
        }
        let elapsed = now.saturating_duration_since(self.anchor_at).as_secs_f64();
        let advanced = (elapsed * self.speed * f64::from(FPS)).floor();
        (f64::from(self.anchor_frame) + advanced).min(f64::from(self.last_frame)) as u32
    }

    pub fn state(&self, now: Instant) -> PlayState {
        PlayState {
            playing: self.playing,
            speed: self.speed,
            frame: self.frame_at(now),
            epoch: self.epoch,
            anchor_frame: self.anchor_frame,
            anchor_ms: self.anchor_ms,
        }
    }

    pub fn playing(&self) -> bool {
        self.playing
    }

    /// The 40 ms display slot (counted from the anchor) that `now` falls in.
    pub fn slot_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.anchor_at).as_micros() / TICK.as_micros()) as u64
    }

    /// When display slot `slot` begins.
    pub fn slot_start(&self, slot: u64) -> Instant {
        self.anchor_at + Duration::from_micros(slot.saturating_mul(TICK.as_micros() as u64))
    }

    /// The frame shown during display slot `slot`: at speed s each slot advances s frames.
    /// Whole-number arithmetic on the slot keeps 1× exact (no float drift onto a neighbour).
    pub fn slot_frame(&self, slot: u64) -> u32 {
        if !self.playing {
            return self.anchor_frame;
        }
        let advanced = (slot as f64 * self.speed + 1e-9).floor();
        (f64::from(self.anchor_frame) + advanced).min(f64::from(self.last_frame)) as u32
    }

    pub fn last_frame(&self) -> u32 {
        self.last_frame
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True once playback has reached the last frame and should stop there.
    pub fn at_end(&self, now: Instant) -> bool {
        self.playing && self.frame_at(now) >= self.last_frame
    }

    /// Applies a command: re-anchors at the current frame and starts a new epoch.
    pub fn apply(&mut self, command: &Command, now: Instant) {
        let frame = self.frame_at(now);
        match *command {
            // Playing from the last frame restarts the race rather than doing nothing.
            Command::Play => {
                self.playing = true;
                self.anchor_frame = if frame >= self.last_frame { 0 } else { frame };
            }
            Command::Pause => {
                self.playing = false;
                self.anchor_frame = frame;
            }
            Command::Seek(target) => self.anchor_frame = target.min(self.last_frame),
            Command::Speed(speed) => {
                self.speed = speed;
                self.anchor_frame = frame;
            }
        }
        self.anchor_ms = wall_ms() - now.elapsed().as_millis() as i64;
        self.anchor_at = now;
        self.epoch += 1;
    }
}

/// A control command, already validated against the race it applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    Play,
    Pause,
    Seek(u32),
    Speed(f64),
}

/// A client's text message: a control command, a time request any viewer may send, or the
/// control token presented after connecting (so it need not be in the URL).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Control(Command),
    /// Asks for the server clock; `t0` is the client's own clock, echoed back.
    Time {
        t0: f64,
    },
    Auth {
        token: String,
    },
}

impl Request {
    /// Parses a client's JSON text message; `total_frames` bounds seeks.
    pub fn parse(text: &str, total_frames: u32) -> Result<Self, CommandError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| CommandError::new("bad_json", format!("not valid JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| {
            CommandError::new(
                "bad_command",
                "a command is a JSON object like {\"cmd\":\"play\"}",
            )
        })?;
        let name = object
            .get("cmd")
            .and_then(|c| c.as_str())
            .ok_or_else(|| CommandError::new("bad_command", "missing string field \"cmd\""))?;
        if name == "auth" {
            let token = object
                .get("token")
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    CommandError::new("bad_argument", "auth needs a string \"token\"")
                })?;
            return Ok(Self::Auth {
                token: token.to_owned(),
            });
        }
        if name == "time" {
            let t0 = number(object, "t0")?
                .filter(|t| t.is_finite())
                .ok_or_else(|| CommandError::new("bad_argument", "time needs a number \"t0\""))?;
            return Ok(Self::Time { t0 });
        }
        Command::parse(name, object, total_frames).map(Self::Control)
    }

    /// Short name used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Control(command) => command.kind(),
            Self::Time { .. } => "time",
            Self::Auth { .. } => "auth",
        }
    }
}

impl Command {
    fn parse(
        name: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        total_frames: u32,
    ) -> Result<Self, CommandError> {
        match name {
            "play" => Ok(Self::Play),
            "pause" => Ok(Self::Pause),
            "seek" => Self::parse_seek(object, total_frames),
            "speed" => {
                let value = number(object, "value")?.ok_or_else(|| {
                    CommandError::new("bad_argument", "speed needs a number \"value\"")
                })?;
                let (min, max) = SPEED_RANGE;
                if !(min..=max).contains(&value) {
                    return Err(CommandError::new(
                        "out_of_range",
                        format!("speed {value} is outside [{min}, {max}]"),
                    ));
                }
                Ok(Self::Speed(value))
            }
            other => Err(CommandError::new(
                "unknown_command",
                format!(
                    "unknown command {other:?}; expected play, pause, seek, speed, time or auth"
                ),
            )),
        }
    }

    fn parse_seek(
        object: &serde_json::Map<String, serde_json::Value>,
        total_frames: u32,
    ) -> Result<Self, CommandError> {
        let last = total_frames.saturating_sub(1);
        let frame = match (number(object, "frame")?, number(object, "t")?) {
            (Some(frame), None) => {
                if frame.fract() != 0.0 || frame < 0.0 || frame > f64::from(last) {
                    return Err(CommandError::new(
                        "out_of_range",
                        format!("frame {frame} is not a whole number in [0, {last}]"),
                    ));
                }
                frame as u32
            }
            (None, Some(t)) => {
                let end = f64::from(last) / f64::from(FPS);
                if !(0.0..=end).contains(&t) {
                    return Err(CommandError::new(
                        "out_of_range",
                        format!("t {t} s is outside [0, {end}]"),
                    ));
                }
                (t * f64::from(FPS)).round().min(f64::from(last)) as u32
            }
            _ => {
                return Err(CommandError::new(
                    "bad_argument",
                    "seek needs exactly one of \"frame\" or \"t\"",
                ))
            }
        };
        Ok(Self::Seek(frame))
    }

    /// Short name used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Play => "play",
            Self::Pause => "pause",
            Self::Seek(_) => "seek",
            Self::Speed(_) => "speed",
        }
    }
}

fn number(
    object: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<f64>, CommandError> {
    match object.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            CommandError::new("bad_argument", format!("\"{key}\" must be a number"))
        }),
    }
}

/// Why a command was not carried out; `code` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    pub code: &'static str,
    pub message: String,
}

impl CommandError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Delivery counters shared by a session and its viewers (atomics, no lock): per session for the
/// API, and added to the hub-wide Prometheus metrics at the same time.
pub struct DeliveryStats {
    frames_sent: AtomicU64,
    frames_dropped: AtomicU64,
    bytes_sent: AtomicU64,
    stalled_closed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl DeliveryStats {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            frames_sent: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            stalled_closed: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Frames (and their bytes) handed to sockets; writers add theirs in batches.
    pub fn count_sent(&self, frames: u64, bytes: u64) {
        if frames == 0 {
            return;
        }
        self.frames_sent.fetch_add(frames, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.metrics.frames_sent.inc_by(frames);
        self.metrics.bytes_sent.inc_by(bytes);
    }

    /// Frames a viewer will not get because a newer one replaced them before its socket had
    /// room; `stalled` when the socket has accepted nothing for a while.
    pub fn count_dropped(&self, frames: u64, stalled: bool) {
        if frames == 0 {
            return;
        }
        self.frames_dropped.fetch_add(frames, Ordering::Relaxed);
        let reason = if stalled { "stalled" } else { "slow" };
        self.metrics
            .frames_dropped
            .with_label_values(&[reason])
            .inc_by(frames);
    }

    pub fn count_stalled_close(&self) {
        self.stalled_closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            stalled_closed: self.stalled_closed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub bytes_sent: u64,
    pub stalled_closed: u64,
}

/// The session is gone; the viewer closes its socket with this code and reason.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Ended {
    pub code: u16,
    pub reason: String,
}

/// A viewer joins: it reads the broadcast of its delivery mode from now on.
#[derive(Message)]
#[rtype(result = "Result<Joined, CommandError>")]
pub struct Join {
    pub ended: Recipient<Ended>,
    pub mode: Mode,
    /// Look-ahead only: how the viewer's windows are encoded.
    pub encoding: WindowEncoding,
}

/// What a viewer needs to greet its client, follow the broadcast and report its deliveries.
pub struct Joined {
    pub viewer: u64,
    pub session: Arc<str>,
    pub race: Arc<EncodedRace>,
    pub state: PlayState,
    pub stats: Arc<DeliveryStats>,
    pub feed: FeedHandle,
    /// The version of `state`, so the writer does not repeat it.
    pub state_version: u64,
    /// The look-ahead window length, for look-ahead viewers.
    pub window: Option<Duration>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub viewer: u64,
}

/// A controller's command, already parsed and permission-checked by the viewer; refused when
/// the session's own command rate is exceeded.
#[derive(Message)]
#[rtype(result = "Result<PlayState, CommandError>")]
pub struct Control(pub Command);

/// Ask for the session's public description.
#[derive(Message)]
#[rtype(result = "SessionInfo")]
pub struct GetInfo;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub race: String,
    pub viewers: usize,
    pub state: PlayState,
    pub stats: StatsSnapshot,
    /// Plays again from the start after the finish.
    #[serde(default, rename = "loop")]
    pub looping: bool,
}

/// The encoded race this session plays (shared with every other session of the same race).
#[derive(Message)]
#[rtype(result = "Arc<EncodedRace>")]
pub struct PlayedRace;

impl Handler<PlayedRace> for Session {
    type Result = MessageResult<PlayedRace>;
    fn handle(&mut self, _: PlayedRace, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.race.clone())
    }
}

/// Close every viewer with `code`/`reason` and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct End {
    pub code: u16,
    pub reason: String,
}

/// A joined viewer. Frames do not go through viewer mailboxes (see [`crate::feed`]): the
/// session keeps viewers to count them and to tell them when it ends.
struct Subscriber {
    ended: Recipient<Ended>,
}

/// The look-ahead schedule of the current epoch. Windows are cut on the grid of 40 ms display
/// slots counted from the timeline's anchor; each goes out one window length before its first
/// slot, and the first of an epoch covers two lengths, so clients always hold what comes next.
#[derive(Default)]
struct Windows {
    /// The epoch this schedule belongs to; another epoch means it must restart.
    epoch: u64,
    /// The first slot not yet sent.
    next_slot: u64,
    /// The window sent last: it covers the present once the next one is out.
    last: Option<Bytes>,
    /// The race's last frame has been sent.
    done: bool,
}

/// One window encoding's broadcast and its own schedule: a session builds windows only in the
/// encodings somebody asked for, once per window each, and each keeps the schedule it would
/// have alone (so a first viewer of one encoding gets a fresh window at once).
#[derive(Default)]
struct Lookahead {
    broadcast: Broadcast,
    windows: Windows,
}

/// How a session shares its timeline with other replicas.
pub struct SessionSync {
    pub broker: Arc<Broker>,
    pub race: String,
    pub token_sha256: String,
    pub looping: bool,
}

pub struct Session {
    sync: Option<SessionSync>,
    /// Without a broker: where this session keeps its record for a restart.
    local: Option<crate::session_store::LocalSync>,
    id: Arc<str>,
    race: Arc<EncodedRace>,
    timeline: Timeline,
    /// The current state message, framed for the wire, and its version (see
    /// [`crate::feed::Feed::state_version`]).
    state_frame: Bytes,
    state_version: u64,
    push: Broadcast,
    /// The (epoch, frame) last pushed.
    pushed: Option<(u64, u32)>,
    /// Per window encoding, indexed by [`WindowEncoding::index`].
    lookahead: [Lookahead; 2],
    window: Duration,
    viewers: HashMap<u64, Subscriber>,
    next_viewer: u64,
    max_viewers: usize,
    stats: Arc<DeliveryStats>,
    /// When the next tick is due, to measure lateness.
    next_tick: Instant,
    ticker: Option<SpawnHandle>,
    on_failure: Option<Recipient<SessionFailed>>,
    /// Commands per second from all controllers together.
    command_rate: Option<governor::DefaultDirectRateLimiter>,
    /// A looping session plays again from the start this long after it reaches the finish.
    loop_pause: Option<Duration>,
    /// When playback last stopped at the finish by itself (not by a command).
    finished_at: Option<Instant>,
    /// Makes the next tick fail, to test how a failing session ends.
    #[cfg(test)]
    poisoned: bool,
}

impl Session {
    pub fn new(
        id: &str,
        race: Arc<EncodedRace>,
        autoplay: bool,
        max_viewers: usize,
        window: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let timeline = Timeline::new(race.total_frames(), autoplay, now);
        Self {
            sync: None,
            local: None,
            id: Arc::from(id),
            state_frame: ws_text(state_message(&timeline.state(now))),
            state_version: 1,
            push: Broadcast::new(),
            pushed: None,
            lookahead: Default::default(),
            window: window.max(TICK),
            timeline,
            race,
            viewers: HashMap::new(),
            next_viewer: 1,
            max_viewers,
            stats: Arc::new(DeliveryStats::new(metrics)),
            next_tick: now + TICK,
            ticker: None,
            on_failure: None,
            command_rate: None,
            loop_pause: None,
            finished_at: None,
            #[cfg(test)]
            poisoned: false,
        }
    }

    /// Makes the session start again from the beginning `pause` after it reaches the finish,
    /// so a hub left running always shows a race.
    pub fn looping(mut self, pause: Duration) -> Self {
        self.loop_pause = Some(pause);
        self
    }

    /// Shares this session's timeline with other replicas: `joined` is the timeline it takes
    /// over (a session created elsewhere), else its own is published as the first one.
    pub fn with_sync(mut self, sync: SessionSync, joined: Option<SharedTimeline>) -> Self {
        if let Some(shared) = joined {
            match self.timeline.adopt(&shared) {
                Ok(()) => self.state_changed(Instant::now()),
                Err(reason) => {
                    tracing::warn!(session = %self.id, %reason, "shared timeline refused; starting from the beginning")
                }
            }
        }
        self.sync = Some(sync);
        self
    }

    /// Keeps this session's record in `local` up to date, so it survives a restart; with
    /// `resumed`, it takes over the timeline it had before.
    pub fn with_local_store(
        mut self,
        local: crate::session_store::LocalSync,
        resumed: Option<SharedTimeline>,
    ) -> Self {
        if let Some(shared) = resumed {
            match self.timeline.adopt(&shared) {
                Ok(()) => self.state_changed(Instant::now()),
                Err(reason) => {
                    tracing::warn!(session = %self.id, %reason, "saved timeline refused; starting from the beginning")
                }
            }
        }
        local.save(&self.id, self.timeline.shared());
        self.local = Some(local);
        self
    }

    /// The timeline as replicas share it.
    pub fn shared(&self) -> SharedTimeline {
        self.timeline.shared()
    }

    fn metrics(&self) -> &Metrics {
        self.stats.metrics()
    }

    fn record(&self, sync: &SessionSync) -> SessionRecord {
        SessionRecord {
            race: sync.race.clone(),
            token_sha256: sync.token_sha256.clone(),
            timeline: self.timeline.shared(),
            looping: self.loop_pause.is_some(),
        }
    }

    /// Announces the local timeline; if another replica's equal or newer one is stored,
    /// adopts that instead, so concurrent commands settle on one timeline everywhere.
    fn publish(&self, ctx: &mut Context<Self>) {
        if let Some(local) = &self.local {
            local.save(&self.id, self.timeline.shared());
        }
        let Some(sync) = &self.sync else {
            return;
        };
        let (broker, id, record) = (sync.broker.clone(), self.id.clone(), self.record(sync));
        let work = async move {
            match broker.publish(&id, &record).await {
                Ok(true) => None,
                Ok(false) => broker.load(&id).await.ok().flatten(),
                Err(err) => {
                    tracing::warn!(session = %id, %err, "timeline not shared; playing on locally");
                    None
                }
            }
        };
        ctx.spawn(work.into_actor(self).map(|stored, act, ctx| {
            if let Some(stored) = stored {
                act.sync_to(&stored.timeline, ctx);
            }
        }));
    }

    /// Takes over another replica's timeline unless ours is newer. At an equal epoch the
    /// stored one wins: Redis decided between two concurrent changes.
    fn sync_to(&mut self, shared: &SharedTimeline, ctx: &mut Context<Self>) {
        if shared.epoch < self.timeline.epoch() || *shared == self.timeline.shared() {
            return;
        }
        if let Err(reason) = self.timeline.adopt(shared) {
            tracing::warn!(session = %self.id, %reason, "shared timeline refused; playing on locally");
            return;
        }
        let now = Instant::now();
        self.state_changed(now);
        self.publish_frames(now);
        self.rephase(ctx);
    }

    /// After the broker reconnects: adopt what Redis holds if newer, else store ours again
    /// (a restarted Redis holds nothing).
    fn resync(&self, ctx: &mut Context<Self>) {
        let Some(sync) = &self.sync else {
            return;
        };
        let (broker, id) = (sync.broker.clone(), self.id.clone());
        let local = self.timeline.epoch();
        let work = async move { broker.load(&id).await.ok().flatten() };
        ctx.spawn(
            work.into_actor(self)
                .map(move |stored, act, ctx| match stored {
                    Some(stored) if stored.timeline.epoch > local => {
                        act.sync_to(&stored.timeline, ctx)
                    }
                    _ => act.publish(ctx),
                }),
        );
    }

    fn rephase(&mut self, ctx: &mut Context<Self>) {
        let (min, max) = SPEED_RANGE;
        let frame_period = TICK.div_f64(self.timeline.shared().speed.clamp(min, max));
        self.start_ticking((frame_period / 2).min(TICK), ctx);
    }

    /// One tick; a session whose tick fails ends cleanly instead of freezing its viewers.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.tick_once(ctx)));
        if ticked.is_err() {
            tracing::error!(session = %self.id, "session failed in its tick; ending it");
            self.fail(ctx);
        }
    }

    /// Ends the session after an internal failure: its viewers are closed with 1011 (they may
    /// reconnect once it is created again) and the hub releases its id.
    fn fail(&mut self, ctx: &mut Context<Self>) {
        if let Some(hub) = &self.on_failure {
            hub.do_send(SessionFailed {
                id: self.id.to_string(),
            });
        }
        self.end(1011, "session failed: reconnect later", ctx);
    }

    fn tick_once(&mut self, ctx: &mut Context<Self>) {
        #[cfg(test)]
        if self.poisoned {
            panic!("poisoned for a test");
        }
        let now = Instant::now();
        let late = now.saturating_duration_since(self.next_tick);
        self.metrics().tick_lateness.observe(late.as_secs_f64());
        self.next_tick = now.max(self.next_tick) + TICK;
        if self.timeline.at_end(now) {
            self.timeline.apply(&Command::Pause, now);
            self.state_changed(now);
            self.publish(ctx);
            self.finished_at = Some(now);
        }
        if let (Some(pause), Some(at)) = (self.loop_pause, self.finished_at) {
            if now.saturating_duration_since(at) >= pause {
                self.finished_at = None;
                // Unless something (another replica's timeline) moved it on meanwhile.
                if !self.timeline.playing()
                    && self.timeline.frame_at(now) >= self.timeline.last_frame()
                {
                    // Play at the finish starts again from the first frame.
                    self.timeline.apply(&Command::Play, now);
                    self.state_changed(now);
                    self.publish(ctx);
                    tracing::info!(session = %self.id, "finished; playing again from the start");
                }
            }
        }
        self.publish_frames(now);
        self.metrics()
            .tick_duration
            .observe(now.elapsed().as_secs_f64());
    }

    /// A new epoch: a new state message, and look-ahead windows restart from the present.
    fn state_changed(&mut self, now: Instant) {
        self.state_frame = ws_text(state_message(&self.timeline.state(now)));
        self.state_version += 1;
        // Push the current frame again, with the new state, even if its index did not change.
        self.pushed = None;
        for lookahead in &mut self.lookahead {
            lookahead.windows = Windows::default();
        }
    }

    /// Publishes whatever is new for each delivery mode somebody uses: the current frame for
    /// push viewers, the next window when one is due for look-ahead viewers.
    fn publish_frames(&mut self, now: Instant) {
        if self.push.has_viewers() {
            self.push_frame(now);
        }
        for encoding in WindowEncoding::ALL {
            if self.lookahead[encoding.index()].broadcast.has_viewers() {
                self.send_windows(encoding, now);
            }
        }
    }

    /// Publishes the current frame unless it already was. Level-triggered: a viewer that missed
    /// frames gets the then-current one when its socket has room.
    fn push_frame(&mut self, now: Instant) {
        let epoch = self.timeline.epoch();
        let index = self.timeline.frame_at(now);
        if self.pushed == Some((epoch, index)) {
            return;
        }
        let Some(bytes) = self.race.frame(index) else {
            return;
        };
        self.pushed = Some((epoch, index));
        let state = (self.state_version, &self.state_frame);
        self.push.publish(state, ws_binary(bytes), 1, None, now);
    }

    /// Sends the windows due by `now`: in a new epoch, the present and the next window length
    /// at once (paused: the one frame shown); then one window length each time the display
    /// reaches the start of the last window sent.
    fn send_windows(&mut self, encoding: WindowEncoding, now: Instant) {
        let epoch = self.timeline.epoch();
        let slots = (self.window.as_micros() / TICK.as_micros()).max(1) as u64;
        let present = self.timeline.slot_at(now);
        let windows = &mut self.lookahead[encoding.index()].windows;
        // Restart in a new epoch, or when nobody listened for a while and the schedule fell behind.
        let behind = self.timeline.playing() && windows.next_slot <= present;
        if windows.epoch != epoch || behind {
            *windows = Windows {
                epoch,
                next_slot: present,
                ..Windows::default()
            };
            if !self.timeline.playing() {
                windows.done = true;
                let frame = self.timeline.frame_at(now);
                self.send_window(encoding, &[frame], now);
                return;
            }
            self.send_slots(encoding, present, present + 2 * slots, now);
        }
        loop {
            let windows = &self.lookahead[encoding.index()].windows;
            let due = !windows.done
                && self.timeline.playing()
                && windows.next_slot >= slots
                && now >= self.timeline.slot_start(windows.next_slot - slots);
            if !due {
                break;
            }
            let from = windows.next_slot;
            self.send_slots(encoding, from, from + slots, now);
        }
    }

    /// Sends the frames shown in display slots `from..to`, once each.
    fn send_slots(&mut self, encoding: WindowEncoding, from: u64, to: u64, now: Instant) {
        let last = self.timeline.last_frame();
        let windows = &mut self.lookahead[encoding.index()].windows;
        let mut indices: Vec<u32> = Vec::with_capacity((to - from) as usize);
        for slot in from..to {
            let frame = self.timeline.slot_frame(slot);
            if indices.last() != Some(&frame) {
                indices.push(frame);
            }
            if frame >= last {
                windows.done = true;
                break;
            }
        }
        windows.next_slot = to;
        self.send_window(encoding, &indices, now);
    }

    /// Builds a window once in `encoding` and publishes it to that encoding's viewers.
    fn send_window(&mut self, encoding: WindowEncoding, indices: &[u32], now: Instant) {
        let epoch = self.timeline.epoch();
        let payload = match encoding {
            WindowEncoding::Msgpack => window_message(&self.race, epoch, indices),
            WindowEncoding::Qdelta1 => match self.compact_window(epoch, indices) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::warn!(session = %self.id, %err, "compact window not built");
                    return;
                }
            },
        };
        let message = ws_binary(payload);
        let lookahead = &mut self.lookahead[encoding.index()];
        let catch_up = lookahead.windows.last.replace(message.clone());
        lookahead.broadcast.publish(
            (self.state_version, &self.state_frame),
            message,
            indices.len() as u32,
            catch_up,
            now,
        );
    }

    /// The `qdelta1` form of a window, built once for every viewer of the encoding.
    fn compact_window(
        &self,
        epoch: u64,
        indices: &[u32],
    ) -> Result<Bytes, window_codec::CodecError> {
        window_codec::encode_frames(&self.race, epoch, indices)
    }

    fn viewers_changed(&self) {
        self.metrics()
            .session_viewers
            .with_label_values(&[&*self.id])
            .set(self.viewers.len() as i64);
    }

    /// Adds a viewer and offers it the current frame at once (it is queued behind the join
    /// reply, so the hello still comes first) instead of at the next tick.
    fn join(&mut self, msg: Join) -> Result<Joined, CommandError> {
        if self.viewers.len() >= self.max_viewers {
            return Err(CommandError::new(
                "session_full",
                format!("session has its maximum of {} viewers", self.max_viewers),
            ));
        }
        let viewer = self.next_viewer;
        self.next_viewer += 1;
        self.viewers.insert(viewer, Subscriber { ended: msg.ended });
        self.viewers_changed();
        let now = Instant::now();
        let (feed, window) = match msg.mode {
            Mode::Push => (self.push.subscribe(), None),
            Mode::Lookahead => (
                self.lookahead[msg.encoding.index()].broadcast.subscribe(),
                Some(self.window),
            ),
        };
        // The new viewer starts from the current value: publish it if nobody was listening.
        self.publish_frames(now);
        Ok(Joined {
            viewer,
            session: self.id.clone(),
            race: self.race.clone(),
            state: self.timeline.state(now),
            stats: self.stats.clone(),
            feed,
            state_version: self.state_version,
            window,
        })
    }

    /// (Re)starts the 25 FPS timer `first` from now. After a command the timeline is anchored
    /// at that instant, so ticks half a frame later sit mid-frame, where timer jitter cannot
    /// turn into a repeated or a skipped frame.
    fn start_ticking(&mut self, first: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.ticker.take() {
            ctx.cancel_future(handle);
        }
        self.next_tick = Instant::now() + first;
        self.ticker = Some(ctx.run_later(first, |act, ctx| {
            act.tick(ctx);
            act.ticker = Some(ctx.run_interval(TICK, |act, ctx| act.tick(ctx)));
        }));
    }

    fn control(&mut self, command: Command) -> PlayState {
        let now = Instant::now();
        self.timeline.apply(&command, now);
        // A command at the finish is the controller's choice: no automatic restart after it.
        self.finished_at = None;
        self.state_changed(now);
        tracing::debug!(session = %self.id, command = command.kind(), "control");
        self.publish_frames(now);
        self.timeline.state(now)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id.to_string(),
            race: self.race.id().to_owned(),
            viewers: self.viewers.len(),
            state: self.timeline.state(Instant::now()),
            stats: self.stats.snapshot(),
            looping: self.loop_pause.is_some(),
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Joins and commands arrive with `send`, which waits for room: keep it modest.
        ctx.set_mailbox_capacity(256);
        self.start_ticking(TICK, ctx);
        // A new session stores its timeline; one joined from elsewhere checks it is current.
        self.resync(ctx);
    }
}

impl Handler<Join> for Session {
    type Result = Result<Joined, CommandError>;
    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> Self::Result {
        self.join(msg)
    }
}

impl Handler<Leave> for Session {
    type Result = ();
    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        if self.viewers.remove(&msg.viewer).is_some() {
            self.viewers_changed();
        }
    }
}

impl Handler<Control> for Session {
    type Result = Result<PlayState, CommandError>;
    fn handle(&mut self, msg: Control, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(limiter) = &self.command_rate {
            if limiter.check().is_err() {
                return Err(CommandError::new(
                    "rate_limited",
                    "this session takes no more commands per second from all its controllers; slow down",
                ));
            }
        }
        let state = self.control(msg.0);
        self.rephase(ctx);
        self.publish(ctx);
        Ok(state)
    }
}

/// A newer timeline from another replica.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Sync(pub SharedTimeline);

impl Handler<Sync> for Session {
    type Result = ();
    fn handle(&mut self, msg: Sync, ctx: &mut Context<Self>) {
        self.sync_to(&msg.0, ctx);
    }
}

/// The broker is back: re-sync with what it holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for Session {
    type Result = ();
    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.resync(ctx);
    }
}

impl Handler<GetInfo> for Session {
    type Result = MessageResult<GetInfo>;
    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.info())
    }
}

impl Handler<End> for Session {
    type Result = ();
    fn handle(&mut self, msg: End, ctx: &mut Context<Self>) {
        self.end(msg.code, &msg.reason, ctx);
    }
}

impl Session {
    /// Closes every viewer with `code`/`reason` and stops.
    fn end(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        for viewer in self.viewers.values() {
            // One message per viewer, once: the bounded-mailbox rule is for frames.
            viewer.ended.do_send(Ended {
                code,
                reason: reason.to_owned(),
            });
        }
        self.viewers.clear();
        // The label goes with the session, so ended sessions do not linger in the metrics.
        let _ = self
            .metrics()
            .session_viewers
            .remove_label_values(&[&*self.id]);
        ctx.stop();
    }

    /// Accepts at most `per_second` control commands per second (bursts up to as many), from
    /// all of its controllers together.
    pub fn with_command_rate(mut self, per_second: std::num::NonZeroU32) -> Self {
        self.command_rate = Some(governor::RateLimiter::direct(governor::Quota::per_second(
            per_second,
        )));
        self
    }

    /// Who to tell if this session fails (the hub, to release its id).
    pub fn on_failure(mut self, hub: Recipient<SessionFailed>) -> Self {
        self.on_failure = Some(hub);
        self
    }
}

/// A session ended by an internal failure, not by a deletion: the hub forgets it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionFailed {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what a session tells it.
    #[derive(Default)]
    struct Listener {
        ended: std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>,
        failed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Actor for Listener {
        type Context = Context<Self>;
    }

    impl Handler<Ended> for Listener {
        type Result = ();
        fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
            self.ended.lock().unwrap().push((msg.code, msg.reason));
        }
    }

    impl Handler<SessionFailed> for Listener {
        type Result = ();
        fn handle(&mut self, msg: SessionFailed, _: &mut Context<Self>) {
            self.failed.lock().unwrap().push(msg.id);
        }
    }

    #[test]
    fn a_session_whose_tick_fails_closes_its_viewers_and_tells_the_hub() {
        let params = crate::race::GenParams {
            laps: 2,
            drivers: 2,
            ..crate::race::GenParams::default()
        };
        let (meta, frames) = crate::race::generate(&params, |_, _| {}).unwrap();
        let race = Arc::new(EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).unwrap());
        let listener = Listener::default();
        let (ended, failed) = (listener.ended.clone(), listener.failed.clone());
        actix::System::new().block_on(async move {
            let listener = listener.start();
            let mut session = Session::new(
                "doomed",
                race,
                true,
                10,
                Duration::from_secs(1),
                Metrics::new(),
            )
            .on_failure(listener.clone().recipient());
            session.poisoned = true;
            let session = session.start();
            let joined = session
                .send(Join {
                    ended: listener.clone().recipient(),
                    mode: Mode::Push,
                    encoding: WindowEncoding::Msgpack,
                })
                .await
                .unwrap();
            assert!(joined.is_ok());
            for _ in 0..100 {
                if !session.connected() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!session.connected(), "the failed session stopped");
            // Let the listener take its messages.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        assert_eq!(failed.lock().unwrap().as_slice(), ["doomed"]);
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!(ended[0].0, 1011);
    }

    #[test]
    fn shared_timelines_from_elsewhere_are_checked_before_they_are_adopted() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        let good = tl.shared();
        assert_eq!(good.check(), Ok(()));
        for (bad, what) in [
            (SharedTimeline { speed: 0.0, ..good }, "speed 0"),
            (
                SharedTimeline {
                    speed: -1.0,
                    ..good
                },
                "speed -1",
            ),
            (
                SharedTimeline {
                    speed: f64::NAN,
                    ..good
                },
                "speed NaN",
            ),
            (
                SharedTimeline {
                    speed: 1e300,
                    ..good
                },
                "speed 1e300",
            ),
            (
                SharedTimeline {
                    anchor_ms: i64::MAX,
                    ..good
                },
                "anchor_ms",
            ),
            (
                SharedTimeline {
                    anchor_ms: i64::MIN,
                    ..good
                },
                "anchor_ms",
            ),
            (
                SharedTimeline {
                    anchor_ms: 0,
                    ..good
                },
                "anchor_ms",
            ),
            (SharedTimeline { epoch: 0, ..good }, "epoch"),
        ] {
            let err = tl.adopt(&bad).unwrap_err();
            assert!(
                err.contains(what.split(' ').next().unwrap()),
                "{what}: {err}"
            );
            assert_eq!(tl.shared(), good, "{what}: left as it was");
        }
        let later = SharedTimeline {
            speed: 2.0,
            epoch: 9,
            ..good
        };
        tl.adopt(&later).unwrap();
        assert_eq!(tl.shared(), later);
    }

    #[test]
    fn frame_follows_the_clock_not_the_ticks() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        assert_eq!(tl.frame_at(t0), 0);
        assert_eq!(tl.frame_at(t0 + Duration::from_millis(1000)), 25);
        tl.apply(&Command::Speed(4.0), t0 + Duration::from_secs(1));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(2)), 125);
        assert_eq!(tl.epoch(), 2);
    }

    #[test]
    fn pause_holds_and_seek_reanchors() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        tl.apply(&Command::Pause, t0 + Duration::from_secs(2));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(60)), 50);
        tl.apply(&Command::Seek(900), t0 + Duration::from_secs(61));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(70)), 900);
        tl.apply(&Command::Play, t0 + Duration::from_secs(70));
        assert_eq!(
            tl.frame_at(t0 + Duration::from_secs(80)),
            999,
            "clamped at the end"
        );
        assert!(tl.at_end(t0 + Duration::from_secs(80)));
    }

    #[test]
    fn a_shared_timeline_gives_the_same_frames_elsewhere() {
        let t0 = Instant::now();
        let mut here = Timeline::new(100_000, true, t0);
        here.apply(&Command::Seek(5000), t0);
        here.apply(&Command::Speed(2.0), t0);
        let mut there = Timeline::new(100_000, false, Instant::now());
        there.adopt(&here.shared()).unwrap();
        assert_eq!(there.shared(), here.shared());
        let later = Instant::now() + Duration::from_secs(3);
        let (a, b) = (here.frame_at(later), there.frame_at(later));
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
        assert!(a >= 5000 + 150 - 1, "playing at 2x: {a}");
    }

    #[test]
    fn play_at_the_end_restarts() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(100, false, t0);
        tl.apply(&Command::Seek(99), t0);
        tl.apply(&Command::Play, t0);
        assert_eq!(tl.frame_at(t0), 0);
    }

    #[test]
    fn commands_parse_and_bad_ones_name_the_problem() {
        let control = |c| Ok(Request::Control(c));
        assert_eq!(
            Request::parse(r#"{"cmd":"play"}"#, 100),
            control(Command::Play)
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"seek","frame":42}"#, 100),
            control(Command::Seek(42))
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"seek","t":2.0}"#, 100),
            control(Command::Seek(50))
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"speed","value":4}"#, 100),
            control(Command::Speed(4.0))
        );
        assert_eq!(
            Request::parse(r#"{"cmd":"time","t0":12.5}"#, 100),
            Ok(Request::Time { t0: 12.5 })
        );
        let cases = [
            ("{", "bad_json"),
            ("[1]", "bad_command"),
            (r#"{"cmd":"rewind"}"#, "unknown_command"),
            (r#"{"cmd":"seek","frame":100}"#, "out_of_range"),
            (r#"{"cmd":"seek","frame":-1}"#, "out_of_range"),
            (r#"{"cmd":"seek","frame":1.5}"#, "out_of_range"),
            (r#"{"cmd":"seek"}"#, "bad_argument"),
            (r#"{"cmd":"seek","frame":"x"}"#, "bad_argument"),
            (r#"{"cmd":"speed","value":32}"#, "out_of_range"),
            (r#"{"cmd":"speed"}"#, "bad_argument"),
            (r#"{"cmd":"time"}"#, "bad_argument"),
            (r#"{"cmd":"time","t0":"now"}"#, "bad_argument"),
        ];
        for (text, code) in cases {
            let err = Request::parse(text, 100).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err}");
            assert!(!err.message.is_empty());
        }
    }
}
