//! What a session broadcasts: per delivery mode, the latest message, framed once for the wire.
//!
//! The session actor replaces the value of a `tokio::sync::watch` channel on every new frame
//! (push mode) or window (look-ahead mode); each viewer's socket writer ([`crate::outlet`]) reads
//! the newest value when it has room, so a slow viewer skips to the latest and never queues.

use std::sync::Arc;
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
    /// The timeline epoch the message belongs to.
    pub epoch: u64,
    /// The epoch's state message, written before the first message of a newer epoch.
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
            epoch: 0,
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
    tx: watch::Sender<Arc<Feed>>,
    seq: u64,
}

impl Default for Broadcast {
    fn default() -> Self {
        Self::new()
    }
}

impl Broadcast {
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Arc::new(Feed::empty())),
            seq: 0,
        }
    }

    /// Replaces the current value and wakes every waiting viewer: one allocation per message
    /// per session, whatever the number of viewers.
    pub fn publish(
        &mut self,
        epoch: u64,
        state: &Bytes,
        message: Bytes,
        frames: u32,
        catch_up: Option<Bytes>,
        published: Instant,
    ) {
        self.seq += 1;
        self.tx.send_replace(Arc::new(Feed {
            seq: self.seq,
            epoch,
            state: state.clone(),
            message,
            frames,
            catch_up,
            published,
        }));
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Feed>> {
        self.tx.subscribe()
    }

    /// True when some viewer listens: a session builds nothing for a mode nobody uses.
    pub fn has_viewers(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}
