//! What a session broadcasts: per delivery mode, the latest message, framed once for the wire.
//!
//! The session actor replaces the value of a `tokio::sync::watch` channel on every new frame
//! (push mode) or window (look-ahead mode). On each worker thread one relay ([`Relay`])
//! follows it and wakes that thread's socket writers ([`crate::writer`]) without locks or shared
//! atomics; a writer takes the newest value when its socket has room, so a slow viewer skips to
//! the latest and never queues.

use std::cell::{Cell, Ref, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

/// How a viewer asks to receive frames (`?mode=` on the WebSocket URL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One message per frame, at 25 FPS, as it becomes current.
    #[default]
    Push,
    /// One message per window of upcoming frames; the client shows each at its time.
    Lookahead,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Lookahead => "lookahead",
        }
    }
}

/// One broadcast value: everything a viewer's socket writes for it, already framed.
#[derive(Debug)]
pub struct Feed {
    /// Grows by one per new value, so a writer can count what it skipped.
    pub seq: u64,
    /// Grows with every state message the session makes. Usually with the epoch, but a replica
    /// that adopts another's timeline of the same epoch (two replicas settling concurrent
    /// commands) makes a new state without a new epoch, and its viewers must get it too.
    pub state_version: u64,
    /// The current state message, written before the first message of a newer state version.
    pub state: Bytes,
    /// The frame or window message; empty before the session has anything to send.
    pub message: Bytes,
    /// Frames of content in `message` (1 in push mode).
    pub frames: u32,
    /// Look-ahead only: the window before `message`, still covering the present, for viewers
    /// that subscribe after it went out.
    pub catch_up: Option<Bytes>,
    /// When the session published it: the start of the send latency.
    pub published: Instant,
}

impl Feed {
    /// The value a channel starts with: nothing to send yet.
    pub fn empty() -> Self {
        Self {
            seq: 0,
            state_version: 0,
            state: Bytes::new(),
            message: Bytes::new(),
            frames: 0,
            catch_up: None,
            published: Instant::now(),
        }
    }
}

/// The sending side of one mode's broadcast, owned by the session actor.
pub struct Broadcast {
    id: u64,
    tx: watch::Sender<Arc<Feed>>,
    seq: u64,
}

/// A subscription to one broadcast: what a viewer hands its socket writer.
#[derive(Clone)]
pub struct FeedHandle {
    /// Process-unique, so each worker thread runs one relay per broadcast.
    pub id: u64,
    pub rx: watch::Receiver<Arc<Feed>>,
}

impl Default for Broadcast {
    fn default() -> Self {
        Self::new()
    }
}

impl Broadcast {
    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx: watch::Sender::new(Arc::new(Feed::empty())),
            seq: 0,
        }
    }

    /// Replaces the current value and wakes every waiting viewer: one allocation per message
    /// per session, whatever the number of viewers.
    pub fn publish(
        &mut self,
        (state_version, state): (u64, &Bytes),
        message: Bytes,
        frames: u32,
        catch_up: Option<Bytes>,
        published: Instant,
    ) {
        self.seq += 1;
        self.tx.send_replace(Arc::new(Feed {
            seq: self.seq,
            state_version,
            state: state.clone(),
            message,
            frames,
            catch_up,
            published,
        }));
    }

    pub fn subscribe(&self) -> FeedHandle {
        FeedHandle {
            id: self.id,
            rx: self.tx.subscribe(),
        }
    }

    /// True when some viewer listens: a session builds nothing for a mode nobody uses.
    pub fn has_viewers(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

/// The newest broadcast value as one worker thread holds it.
pub struct LocalValue {
    pub feed: Arc<Feed>,
    /// This thread's own copy of `feed.message`: writers on this thread share its reference
    /// count without contending with the other threads for it.
    pub message: Bytes,
}

/// One worker thread's relay of a broadcast. A task on the thread follows the watch channel,
/// copies each new message once, and wakes the writers of that thread that wait for it: the
/// session wakes one task per thread, and each writer is woken by its own thread.
pub struct Relay {
    id: u64,
    current: RefCell<LocalValue>,
    waiters: RefCell<Vec<Waker>>,
    spare: Cell<Vec<Waker>>,
    /// Grows each time `waiters` is emptied: a writer whose note matches is still listed.
    generation: Cell<u64>,
    closed: Cell<bool>,
    task: Cell<Option<tokio::task::AbortHandle>>,
}

impl Drop for Relay {
    /// The last writer of this thread is gone: stop following the session now, not at its next
    /// message (a paused session may send none for hours).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = RELAYS.try_with(|r| {
            let mut relays = r.borrow_mut();
            if relays.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
                relays.remove(&self.id);
            }
        });
    }
}

thread_local! {
    static RELAYS: RefCell<HashMap<u64, Weak<Relay>>> = RefCell::new(HashMap::new());
}

impl Relay {
    /// This thread's relay of `handle`'s broadcast, started on first use. Must be called
    /// inside the thread's local task set (an actix or actix-web worker).
    pub fn on_this_thread(handle: &FeedHandle) -> Rc<Self> {
        if let Some(relay) = RELAYS.with(|r| r.borrow().get(&handle.id).and_then(Weak::upgrade)) {
            return relay;
        }
        let mut rx = handle.rx.clone();
        let feed = rx.borrow_and_update().clone();
        let relay = Rc::new(Self {
            id: handle.id,
            current: RefCell::new(LocalValue {
                message: Bytes::copy_from_slice(&feed.message),
                feed,
            }),
            waiters: RefCell::new(Vec::new()),
            spare: Cell::new(Vec::new()),
            generation: Cell::new(0),
            closed: Cell::new(false),
            task: Cell::new(None),
        });
        RELAYS.with(|r| r.borrow_mut().insert(handle.id, Rc::downgrade(&relay)));
        let weak = Rc::downgrade(&relay);
        // The task holds no strong reference: the relay ends (and aborts it) with its last writer.
        let task = tokio::task::spawn_local(async move {
            while rx.changed().await.is_ok() {
                let Some(relay) = weak.upgrade() else {
                    return;
                };
                let feed = rx.borrow_and_update().clone();
                relay.publish(LocalValue {
                    message: Bytes::copy_from_slice(&feed.message),
                    feed,
                });
            }
            // The session is gone: its writers learn it, and new ones will not find this relay.
            if let Some(relay) = weak.upgrade() {
                relay.closed.set(true);
                relay.wake_all();
                RELAYS.with(|r| r.borrow_mut().remove(&relay.id));
            }
        });
        relay.task.set(Some(task.abort_handle()));
        relay
    }

    /// The newest value's `seq` and its frames of content, as this thread has it.
    pub fn latest(&self) -> (u64, u32) {
        let current = self.current.borrow();
        (current.feed.seq, current.feed.frames)
    }

    fn publish(&self, value: LocalValue) {
        *self.current.borrow_mut() = value;
        self.wake_all();
    }

    fn wake_all(&self) {
        // Swap in the spare list so neither list's memory is given up: no allocation per frame.
        let mut batch = self.spare.take();
        std::mem::swap(&mut batch, &mut *self.waiters.borrow_mut());
        self.generation.set(self.generation.get() + 1);
        for waker in batch.drain(..) {
            waker.wake();
        }
        self.spare.set(batch);
    }

    /// The current value if its `seq` is past `seen` (borrowed: writers take the few parts they
    /// write, not a shared reference count); otherwise the writer is woken when one is. `None`
    /// once the session is gone. `registered` is the writer's own note of the value
    /// it waits past, so it is listed once however often it is polled meanwhile.
    pub fn poll_newer(
        self: &Rc<Self>,
        seen: u64,
        registered: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Ref<'_, LocalValue>>> {
        let current = self.current.borrow();
        let seq = current.feed.seq;
        if seq > seen {
            return Poll::Ready(Some(current));
        }
        if self.closed.get() {
            return Poll::Ready(None);
        }
        drop(current);
        // Waiters are taken on every new value, so a note of this generation means still listed.
        if *registered != Some(self.generation.get()) {
            // Writers that went away while nothing was published left their wakers behind:
            // past twice the writers still here, wake everyone and start a new list.
            if self.waiters.borrow().len() >= 2 * Rc::strong_count(self) + 16 {
                self.wake_all();
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            *registered = Some(self.generation.get());
        }
        Poll::Pending
    }
}
