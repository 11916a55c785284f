//! A viewer's socket writer: the WebSocket response body, polled by the HTTP dispatcher whenever
//! the socket has room. Its viewer actor queues replies into it; once joined, it reads the
//! session's broadcast ([`crate::feed`]) directly, taking only the newest value, so a frame costs
//! each viewer one wake and no copy, framing or allocation of its own.
//!
//! The writer is the one place that counts a viewer's deliveries ([`DeliveryStats`]): frames
//! sent, frames dropped (latest wins), and stalled closes. A stuck socket is not polled, so the
//! viewer's heartbeat asks the [`Wire`] how long it has been stuck, and the writer's side of the
//! wire counts what it will never write there and then.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;
use prometheus::local::LocalHistogram;
use serde::Serialize;

use crate::feed::{FeedHandle, LocalValue, Relay};
use crate::metrics::Metrics;

/// A writer that has written nothing for this long counts its drops as "stalled", not "slow".
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How often local delivery counts are added to the shared metrics.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Larger messages (long look-ahead windows) go to the dispatcher in pieces of this size, each
/// written out before the next, so a connection's write buffer (which actix-http keeps at its
/// largest size, up to 128 KiB) stays bounded. Smaller pieces would save more memory but cost
/// a `send` each: with 8 KiB pieces a 1 s window took four, and look-ahead CPU per frame rose
/// from 0.8 to 2.3 µs (BENCHMARKS.md). One second of frames (27 KB) goes whole.
const PIECE: usize = 64 * 1024;

/// The link between a viewer actor and its socket writer. Both live on the same worker thread
/// (actix-web runs a connection's handler and its response body on one), so it needs no lock:
/// the actor queues and the writer takes, and the writer is woken only when something arrives.
#[derive(Default)]
pub struct Wire {
    queue: RefCell<VecDeque<Out>>,
    close: RefCell<Option<Bytes>>,
    hung_up: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    pub progress: Progress,
    /// What the writer follows once subscribed, for the stall bookkeeping.
    subscribed: RefCell<Option<Subscribed>>,
    /// The writer's count of written chunks at the last stall check…
    seen_written: Cell<u64>,
    /// …and since when it has not moved although something waits to be written.
    stuck_since: Cell<Option<Instant>>,
}

/// The broadcast a subscribed writer follows and where it counts.
struct Subscribed {
    relay: Rc<Relay>,
    stats: Arc<DeliveryStats>,
}

impl Wire {
    /// Queues `out` after everything queued before.
    pub fn send(&self, out: Out) {
        self.queue.borrow_mut().push_back(out);
        self.wake();
    }

    /// Messages queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }

    /// A close frame: it overtakes everything queued, then the response ends.
    pub fn close(&self, frame: Bytes) {
        *self.close.borrow_mut() = Some(frame);
        self.wake();
    }

    /// A close frame for a client that stopped reading: counted as a stalled close.
    pub fn close_stalled(&self, frame: Bytes) {
        if let Some(subscribed) = &*self.subscribed.borrow() {
            subscribed.stats.count_stalled_close();
        }
        self.close(frame);
    }

    /// How long the writer has written nothing while something waited for it (`None` if it is
    /// not stuck), asked on the viewer's heartbeat. Meanwhile, broadcast values it skips are
    /// counted as dropped (stalled) now, not when it next writes: the newest may still go out,
    /// everything before it will not.
    pub fn stuck_for(&self, now: Instant) -> Option<Duration> {
        let progress = &self.progress;
        let written = progress.written.get();
        let subscribed = self.subscribed.borrow();
        let latest = subscribed.as_ref().map(|s| s.relay.latest());
        let waiting = !self.queue.borrow().is_empty()
            || latest.is_some_and(|(seq, _)| seq > progress.accounted.get());
        if !waiting || written != self.seen_written.get() {
            self.seen_written.set(written);
            self.stuck_since.set(None);
            return None;
        }
        let since = self.stuck_since.get().unwrap_or(now);
        self.stuck_since.set(Some(since));
        if let (Some(subscribed), Some((latest, frames))) = (&*subscribed, latest) {
            let accounted = progress.accounted.get();
            if latest > accounted + 1 {
                let skipped = (latest - 1 - accounted) * u64::from(frames);
                subscribed.stats.count_dropped(skipped, true);
                progress.accounted.set(latest - 1);
            }
        }
        Some(now.duration_since(since))
    }

    /// The viewer actor is gone: the writer ends after what is queued.
    pub fn hang_up(&self) {
        self.hung_up.set(true);
        self.wake();
    }

    fn wake(&self) {
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn wait(&self, cx: &Context<'_>) {
        let mut waker = self.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }
}

/// What a viewer actor hands its writer, in order.
pub enum Out {
    /// A framed message (hello, state, reply, ping, pong).
    Message(Bytes),
    /// Start writing the session's broadcast, after everything queued before.
    Subscribe(Subscription),
}

/// A joined viewer's view of its session's broadcast.
pub struct Subscription {
    pub feed: FeedHandle,
    pub stats: Arc<DeliveryStats>,
    /// The state the viewer's hello carried (see [`crate::feed::Feed::state_version`]): it is
    /// not repeated.
    pub state_version: u64,
}

/// What the writer has done (no lock: a viewer actor and its socket live on one worker).
#[derive(Debug, Default)]
pub struct Progress {
    /// Chunks handed to the socket.
    written: Cell<u64>,
    /// Of those, queued [`Out::Message`]s: the viewer actor, which numbers what it queues,
    /// reads this to know when its last ping went out.
    pub replies: Cell<u64>,
    /// The broadcast `seq` up to which values were written or counted as dropped.
    accounted: Cell<u64>,
}

pub struct Writer {
    wire: Rc<Wire>,
    feed: Option<Rc<Relay>>,
    /// The broadcast seq this writer is listed as waiting past (see [`Relay::poll_newer`]).
    waiting: Option<u64>,
    tally: Option<Tally>,
    /// The state version last written: a value with a newer one brings its state first.
    state_version: u64,
    /// No broadcast value written yet: a look-ahead window's catch-up goes first.
    first: bool,
    /// Chunks of the current broadcast value still to write (state, catch-up, message).
    ready: VecDeque<Bytes>,
    /// The unwritten rest of a message cut into pieces: nothing else may go out before it.
    rest: Option<Bytes>,
    /// Give the dispatcher a chance to write out the last piece before the next.
    flush_first: bool,
    last_write: Instant,
    /// actix-ws's own response body, never polled: dropping it tells the message stream the
    /// connection is gone.
    _socket: BoxBody,
    done: bool,
}

/// Delivery counts kept locally and added to the shared metrics once a second, so the send
/// path touches no shared atomics per frame.
struct Tally {
    stats: Arc<DeliveryStats>,
    latency: LocalHistogram,
    frames: u64,
    bytes: u64,
    dropped_slow: u64,
    dropped_stalled: u64,
    flushed: Instant,
}

impl Tally {
    fn flush(&mut self) {
        self.stats.count_sent(self.frames, self.bytes);
        self.stats.count_dropped(self.dropped_slow, false);
        self.stats.count_dropped(self.dropped_stalled, true);
        self.latency.flush();
        (
            self.frames,
            self.bytes,
            self.dropped_slow,
            self.dropped_stalled,
        ) = (0, 0, 0, 0);
        self.flushed = Instant::now();
    }
}

impl Writer {
    /// A writer for a freshly upgraded connection; `socket` is actix-ws's body it replaces.
    pub fn new(wire: Rc<Wire>, socket: BoxBody) -> Self {
        Self {
            wire,
            feed: None,
            waiting: None,
            tally: None,
            state_version: 0,
            first: true,
            ready: VecDeque::with_capacity(3),
            rest: None,
            flush_first: false,
            last_write: Instant::now(),
            _socket: socket,
            done: false,
        }
    }

    fn subscribe(&mut self, sub: Subscription) {
        let seq = sub.feed.rx.borrow().seq;
        // The current value is the viewer's first, not a drop.
        let accounted = &self.wire.progress.accounted;
        accounted.set(accounted.get().max(seq.saturating_sub(1)));
        self.state_version = sub.state_version;
        let stats = sub.stats;
        self.tally = Some(Tally {
            latency: stats.metrics().send_latency.local(),
            stats: stats.clone(),
            frames: 0,
            bytes: 0,
            dropped_slow: 0,
            dropped_stalled: 0,
            flushed: Instant::now(),
        });
        let relay = Relay::on_this_thread(&sub.feed);
        *self.wire.subscribed.borrow_mut() = Some(Subscribed {
            relay: relay.clone(),
            stats: stats.clone(),
        });
        self.feed = Some(relay);
    }

    /// Queues the chunks of the newest broadcast value; values skipped since the last one
    /// were dropped for this viewer (latest wins).
    fn take(&mut self, local: &LocalValue) {
        let value = &local.feed;
        let accounted = self.wire.progress.accounted.get();
        if value.seq <= accounted {
            return;
        }
        if value.message.is_empty() {
            // Nothing published yet: there is nothing to write, nor any drop to count.
            self.wire.progress.accounted.set(value.seq);
            return;
        }
        let now = Instant::now();
        if let Some(tally) = &mut self.tally {
            let skipped = (value.seq - accounted - 1) * u64::from(value.frames);
            if now.duration_since(self.last_write) > STALLED_AFTER {
                tally.dropped_stalled += skipped;
            } else {
                tally.dropped_slow += skipped;
            }
            tally.frames += u64::from(value.frames);
            tally.bytes += value.message.len() as u64;
            tally
                .latency
                .observe(now.duration_since(value.published).as_secs_f64());
            if now.duration_since(tally.flushed) > FLUSH_EVERY {
                tally.flush();
            }
        }
        // Written now: the dispatcher takes the chunks at once. One clock read per value.
        self.last_write = now;
        self.wire.progress.accounted.set(value.seq);
        if value.state_version > self.state_version {
            self.state_version = value.state_version;
            self.ready.push_back(value.state.clone());
        }
        if std::mem::take(&mut self.first) {
            if let Some(catch_up) = &value.catch_up {
                self.ready.push_back(catch_up.clone());
            }
        }
        self.ready.push_back(local.message.clone());
    }

    fn write(
        &mut self,
        mut chunk: Bytes,
    ) -> Poll<Option<Result<Bytes, Box<dyn std::error::Error>>>> {
        if chunk.len() > PIECE {
            self.rest = Some(chunk.split_off(PIECE));
            self.flush_first = true;
        }
        let progress = &self.wire.progress;
        progress.written.set(progress.written.get() + 1);
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(tally) = &mut self.tally {
            tally.flush();
        }
    }
}

impl MessageBody for Writer {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.flush_first {
            // Returning pending makes the dispatcher write out its buffer; the wake brings it
            // straight back for the next piece.
            this.flush_first = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(rest) = this.rest.take() {
            return this.write(rest);
        }
        if this.done {
            return Poll::Ready(None);
        }
        // A close frame overtakes everything still queued, then the body ends.
        let close = this.wire.close.borrow_mut().take();
        if let Some(frame) = close {
            this.done = true;
            return this.write(frame);
        }
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                return this.write(chunk);
            }
            let next = this.wire.queue.borrow_mut().pop_front();
            match next {
                Some(Out::Message(bytes)) => {
                    let replies = &this.wire.progress.replies;
                    replies.set(replies.get() + 1);
                    return this.write(bytes);
                }
                Some(Out::Subscribe(sub)) => {
                    this.subscribe(sub);
                    continue;
                }
                // The viewer actor is gone without a close of its own: so is the client.
                None if this.wire.hung_up.get() => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                None => this.wire.wait(cx),
            }
            let Some(feed) = this.feed.clone() else {
                return Poll::Pending;
            };
            let seen = this.wire.progress.accounted.get();
            let ended = match feed.poll_newer(seen, &mut this.waiting, cx) {
                Poll::Ready(Some(value)) => {
                    this.take(&value);
                    false
                }
                Poll::Ready(None) => true,
                Poll::Pending => return Poll::Pending,
            };
            // The session ended; its `Ended` message makes the viewer close this socket.
            if ended {
                this.feed = None;
                return Poll::Pending;
            }
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

    pub fn snapshot(&self) -> DeliveryTotals {
        DeliveryTotals {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            stalled_closed: self.stalled_closed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct DeliveryTotals {
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub bytes_sent: u64,
    pub stalled_closed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Broadcast;

    fn publish(broadcast: &mut Broadcast, n: usize) {
        for _ in 0..n {
            let state = Bytes::from_static(b"state");
            broadcast.publish(
                (1, &state),
                Bytes::from_static(b"frame"),
                1,
                None,
                Instant::now(),
            );
        }
    }

    /// Everything the writer has to send now, as the HTTP dispatcher would take it.
    fn drain(writer: &mut Pin<Box<Writer>>) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut chunks = 0;
        while let Poll::Ready(Some(Ok(_))) = writer.as_mut().poll_next(&mut cx) {
            chunks += 1;
        }
        chunks
    }

    #[test]
    fn a_stuck_writer_counts_what_it_will_not_write_and_its_stalled_close() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let stats = Arc::new(DeliveryStats::new(Metrics::new()));
            let mut broadcast = Broadcast::new();
            publish(&mut broadcast, 1);
            let wire = Rc::new(Wire::default());
            wire.send(Out::Subscribe(Subscription {
                feed: broadcast.subscribe(),
                stats: stats.clone(),
                state_version: 1,
            }));
            let mut writer = Box::pin(Writer::new(wire.clone(), BoxBody::new(())));
            assert_eq!(drain(&mut writer), 1, "the current frame");
            let t0 = Instant::now();
            assert_eq!(wire.stuck_for(t0), None, "nothing waits");

            // Five more frames while the socket takes nothing: the writer is not polled.
            publish(&mut broadcast, 5);
            tokio::task::yield_now().await;
            assert_eq!(wire.stuck_for(t0), Some(Duration::ZERO));
            let later = t0 + Duration::from_secs(2);
            assert_eq!(wire.stuck_for(later), Some(Duration::from_secs(2)));
            // The newest may still go out; the four before it will not.
            assert_eq!(stats.snapshot().frames_dropped, 4);
            assert_eq!(stats.snapshot().stalled_closed, 0);

            wire.close_stalled(Bytes::from_static(b"close"));
            assert_eq!(stats.snapshot().stalled_closed, 1);
            drop(writer);
            let totals = stats.snapshot();
            assert_eq!((totals.frames_sent, totals.frames_dropped), (1, 4));
        });
    }
}
