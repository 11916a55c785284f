//! A viewer's socket writer: the WebSocket response body, polled by the HTTP dispatcher whenever
//! the socket has room. Its viewer actor queues replies into it; once joined, it reads the
//! session's broadcast ([`crate::feed`]) directly, taking only the newest value, so a frame costs
//! each viewer one wake and no copy, framing or allocation of its own.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;
use prometheus::local::LocalHistogram;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use crate::feed::Feed;
use crate::session::DeliveryStats;

/// A writer that has written nothing for this long counts its drops as "stalled", not "slow".
const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How often local delivery counts are added to the shared metrics.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What a viewer actor hands its writer, in order.
pub enum Out {
    /// A framed message (hello, state, reply, ping, pong).
    Message(Bytes),
    /// Start writing the session's broadcast, after everything queued before.
    Subscribe(Subscription),
}

/// A joined viewer's view of its session's broadcast.
pub struct Subscription {
    pub feed: watch::Receiver<Arc<Feed>>,
    pub stats: Arc<DeliveryStats>,
    /// The epoch of the state the viewer's hello carried: its state message is not repeated.
    pub epoch: u64,
}

/// What the writer has done, read by its viewer actor on the same thread (no lock: a viewer
/// actor and its socket live on one worker) to tell a stalled client from an idle one.
#[derive(Debug, Default)]
pub struct Progress {
    /// Chunks handed to the socket.
    pub written: Cell<u64>,
    /// Of those, queued [`Out::Message`]s, which the viewer actor counts as it queues them.
    pub replies: Cell<u64>,
    /// The broadcast `seq` up to which values were written or counted as dropped.
    pub accounted: Cell<u64>,
}

pub struct Outlet {
    replies: mpsc::Receiver<Out>,
    closer: Option<oneshot::Receiver<Bytes>>,
    feed: Option<WatchStream<Arc<Feed>>>,
    tally: Option<Tally>,
    epoch: u64,
    /// No broadcast value written yet: a look-ahead window's catch-up goes first.
    first: bool,
    /// Chunks of the current broadcast value still to write (state, catch-up, message).
    ready: VecDeque<Bytes>,
    progress: Rc<Progress>,
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

impl Outlet {
    /// A writer for a freshly upgraded connection; `socket` is actix-ws's body it replaces.
    pub fn new(
        replies: mpsc::Receiver<Out>,
        closer: oneshot::Receiver<Bytes>,
        progress: Rc<Progress>,
        socket: BoxBody,
    ) -> Self {
        Self {
            replies,
            closer: Some(closer),
            feed: None,
            tally: None,
            epoch: 0,
            first: true,
            ready: VecDeque::with_capacity(3),
            progress,
            last_write: Instant::now(),
            _socket: socket,
            done: false,
        }
    }

    fn subscribe(&mut self, sub: Subscription) {
        let seq = sub.feed.borrow().seq;
        // The current value is the viewer's first, not a drop.
        self.progress.accounted.set(seq.saturating_sub(1));
        self.epoch = sub.epoch;
        self.tally = Some(Tally {
            latency: sub.stats.metrics().send_latency.local(),
            stats: sub.stats,
            frames: 0,
            bytes: 0,
            dropped_slow: 0,
            dropped_stalled: 0,
            flushed: Instant::now(),
        });
        self.feed = Some(WatchStream::new(sub.feed));
    }

    /// Queues the chunks of the newest broadcast value; values skipped since the last one
    /// were dropped for this viewer (latest wins).
    fn take(&mut self, value: &Feed) {
        let accounted = self.progress.accounted.get();
        if value.message.is_empty() || value.seq <= accounted {
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
        }
        self.progress.accounted.set(value.seq);
        if value.epoch > self.epoch {
            self.epoch = value.epoch;
            self.ready.push_back(value.state.clone());
        }
        if std::mem::take(&mut self.first) {
            if let Some(catch_up) = &value.catch_up {
                self.ready.push_back(catch_up.clone());
            }
        }
        self.ready.push_back(value.message.clone());
    }

    fn write(&mut self, chunk: Bytes) -> Poll<Option<Result<Bytes, Box<dyn std::error::Error>>>> {
        let progress = &self.progress;
        progress.written.set(progress.written.get() + 1);
        let now = Instant::now();
        self.last_write = now;
        if let Some(tally) = &mut self.tally {
            if now.duration_since(tally.flushed) > FLUSH_EVERY {
                tally.flush();
            }
        }
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        if let Some(tally) = &mut self.tally {
            tally.flush();
        }
    }
}

impl MessageBody for Outlet {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // A close frame overtakes everything still queued, then the body ends.
        if let Some(closer) = this.closer.as_mut() {
            match Pin::new(closer).poll(cx) {
                Poll::Ready(Ok(frame)) => {
                    this.done = true;
                    return this.write(frame);
                }
                Poll::Ready(Err(_)) => this.closer = None,
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                return this.write(chunk);
            }
            match this.replies.poll_recv(cx) {
                Poll::Ready(Some(Out::Message(bytes))) => {
                    let replies = &this.progress.replies;
                    replies.set(replies.get() + 1);
                    return this.write(bytes);
                }
                Poll::Ready(Some(Out::Subscribe(sub))) => {
                    this.subscribe(sub);
                    continue;
                }
                // The viewer actor is gone without a close of its own: so is the client.
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            let Some(feed) = this.feed.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(feed).poll_next(cx) {
                Poll::Ready(Some(value)) => this.take(&value),
                // The session ended; its `Ended` message makes the viewer close this socket.
                Poll::Ready(None) => {
                    this.feed = None;
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
