//! The session actor: one shared playback timeline over a race, ticking at 25 FPS.
//!
//! The hub starts one per session; viewer actors join it and send it control commands. Each tick
//! derives the current frame from the clock and publishes it, framed once, on the session's
//! broadcast ([`crate::feed`]), plus look-ahead windows when due; frames never queue per viewer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;

use crate::clock::{SPEED_RANGE, TICK};
use crate::encode::{state_message, window_message, ws_binary, ws_text, EncodedRace, PlayState};
use crate::feed::{Broadcast, Mode};
use crate::ids::{RaceId, TokenHash};
use crate::metrics::Metrics;
use crate::replication::{Adopt, SessionRecord, SharedTimeline, TimelineChanged};
use crate::window_codec::{self, WindowEncoding};
use crate::writer::{DeliveryStats, DeliveryTotals, Subscription};

mod close;
mod command;
mod schedule;
mod timeline;

pub use close::CloseReason;
pub use command::{ClientMessage, Command, CommandError, ErrorCode, Request};
pub use schedule::{Due, Schedule};
pub use timeline::Timeline;

/// The session is gone; the viewer closes its socket for this reason.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Ended(pub CloseReason);

/// A viewer joins: it reads the broadcast of its delivery mode from now on.
#[derive(Message)]
#[rtype(result = "Result<Joined, CommandError>")]
pub struct Join {
    pub ended: Recipient<Ended>,
    pub mode: Mode,
    /// Look-ahead only: how the viewer's windows are encoded.
    pub encoding: WindowEncoding,
}

/// What a viewer needs to greet its client and have its socket writer follow the broadcast.
pub struct Joined {
    pub viewer: u64,
    pub session: Arc<str>,
    pub race: Arc<EncodedRace>,
    pub state: PlayState,
    /// For the viewer's socket writer, which writes and counts the deliveries.
    pub subscription: Subscription,
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
pub struct ControlCommand(pub Command);

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
    pub stats: DeliveryTotals,
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

/// Close every viewer for `reason` and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct End(pub CloseReason);

/// A joined viewer. Frames do not go through viewer mailboxes (see [`crate::feed`]): the
/// session keeps viewers to count them and to tell them when it ends.
struct Subscriber {
    ended: Recipient<Ended>,
}

/// One window encoding's broadcast and its own schedule: a session builds windows only in the
/// encodings somebody asked for, once per window each, and each keeps the schedule it would
/// have alone (so a first viewer of one encoding gets a fresh window at once).
struct Lookahead {
    broadcast: Broadcast,
    schedule: Schedule,
    /// The window sent last in this schedule: it covers the present once the next one is out.
    last: Option<Bytes>,
}

impl Lookahead {
    fn new(window: Duration) -> Self {
        Self {
            broadcast: Broadcast::new(),
            schedule: Schedule::new(window),
            last: None,
        }
    }
}

/// Where a session reports its timeline so that it outlives this process: the Redis
/// [`crate::replication::Publisher`] (other replicas follow it) or, without Redis, the
/// [`crate::session_store::LocalStore`] (a restart resumes it). Either may answer [`Adopt`].
pub struct Replica {
    pub sink: Recipient<TimelineChanged>,
    pub race: RaceId,
    pub token_sha256: TokenHash,
}

pub struct Session {
    replica: Option<Replica>,
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
        let window = window.max(TICK);
        Self {
            replica: None,
            id: Arc::from(id),
            state_frame: ws_text(state_message(&timeline.state(now))),
            state_version: 1,
            push: Broadcast::new(),
            pushed: None,
            lookahead: [Lookahead::new(window), Lookahead::new(window)],
            window,
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

    /// Reports every timeline change to `replica`; `joined` is a timeline this session takes
    /// over (a session created on another replica, or resumed after a restart).
    pub fn with_replica(mut self, replica: Replica, joined: Option<SharedTimeline>) -> Self {
        if let Some(shared) = joined {
            match self.timeline.adopt(&shared) {
                Ok(()) => self.state_changed(Instant::now()),
                Err(reason) => {
                    tracing::warn!(session = %self.id, %reason, "shared timeline refused; starting from the beginning")
                }
            }
        }
        self.replica = Some(replica);
        self
    }

    /// The timeline as replicas share it.
    pub fn shared(&self) -> SharedTimeline {
        self.timeline.shared()
    }

    fn metrics(&self) -> &Metrics {
        self.stats.metrics()
    }

    /// Reports the timeline to the replica sink; if another replica's equal or newer one is
    /// stored, the answer is an [`Adopt`] of that, so concurrent commands settle on one timeline
    /// everywhere. Also what the session does when Redis comes back (a restarted Redis holds
    /// nothing, a newer timeline there wins).
    fn publish(&self, ctx: &mut Context<Self>) {
        let Some(replica) = &self.replica else {
            return;
        };
        replica.sink.do_send(TimelineChanged {
            id: self.id.clone(),
            record: SessionRecord {
                race: replica.race.clone(),
                token_sha256: replica.token_sha256.clone(),
                timeline: self.timeline.shared(),
                looping: self.loop_pause.is_some(),
            },
            session: ctx.address().recipient(),
        });
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

    /// Ends the session after an internal failure: its viewers are closed with
    /// [`CloseReason::SessionFailed`] (they may reconnect once it is created again) and the hub
    /// releases its id.
    fn fail(&mut self, ctx: &mut Context<Self>) {
        if let Some(hub) = &self.on_failure {
            hub.do_send(SessionFailed {
                id: self.id.to_string(),
            });
        }
        self.end(CloseReason::SessionFailed, ctx);
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
            lookahead.schedule.reset();
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

    /// Publishes the windows of `encoding` that its [`Schedule`] says are due by `now`.
    fn send_windows(&mut self, encoding: WindowEncoding, now: Instant) {
        let lookahead = &mut self.lookahead[encoding.index()];
        let due = lookahead.schedule.due(&self.timeline, now);
        if due.restarted {
            lookahead.last = None;
        }
        for indices in &due.windows {
            self.send_window(encoding, indices, now);
        }
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
        let catch_up = lookahead.last.replace(message.clone());
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
                ErrorCode::SessionFull,
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
            subscription: Subscription {
                feed,
                stats: self.stats.clone(),
                // The state the hello carries: the writer does not repeat it.
                state_version: self.state_version,
            },
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
        self.publish(ctx);
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

impl Handler<ControlCommand> for Session {
    type Result = Result<PlayState, CommandError>;
    fn handle(&mut self, msg: ControlCommand, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(limiter) = &self.command_rate {
            if limiter.check().is_err() {
                return Err(CommandError::new(
                    ErrorCode::RateLimited,
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

impl Handler<Adopt> for Session {
    type Result = ();
    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) {
        self.sync_to(&msg.0, ctx);
    }
}

/// Redis is back: store this session's timeline again, or adopt the newer one it holds.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Resync> for Session {
    type Result = ();
    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.publish(ctx);
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
        self.end(msg.0, ctx);
    }
}

impl Session {
    /// Closes every viewer for `reason` and stops.
    fn end(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        for viewer in self.viewers.values() {
            // One message per viewer, once: the bounded-mailbox rule is for frames.
            viewer.ended.do_send(Ended(reason.clone()));
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
        ended: std::sync::Arc<std::sync::Mutex<Vec<CloseReason>>>,
        failed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Actor for Listener {
        type Context = Context<Self>;
    }

    impl Handler<Ended> for Listener {
        type Result = ();
        fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
            self.ended.lock().unwrap().push(msg.0);
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
        assert_eq!(ended[0], CloseReason::SessionFailed);
    }
}
