//! The viewer actor: one per WebSocket connection, between a session actor and an actix-ws socket.
//!
//! The session offers it frames; it keeps at most one pending frame (latest wins) and one send in
//! flight, so a slow client costs dropped frames, never queued memory. It parses the client's
//! commands, answers pings, and closes the socket with a documented code when something is wrong.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::Encoder;
use actix_http::ws::Codec;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Message};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::SinkExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::oneshot;

use crate::encode::{error_message, hello_message, EncodedRace, Hello};
use crate::metrics::{Disconnect, Metrics};
use crate::session::{
    Command, Control, Deliver, DeliveryStats, Ended, Join, Joined, Leave, Session,
};

/// Close codes the hub uses besides the standard ones (1000, 1001, 1002, 1008, 1009, 1013).
pub mod close_code {
    /// The client stopped reading: nothing could be written to it for `stall_timeout`.
    pub const STALLED: u16 = 4001;
    /// Nothing (not even a pong) arrived from the client for `client_timeout`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
}

/// Mailbox of a viewer: a few frame offers at most; the session retries on the next tick.
const MAILBOX: usize = 8;
/// Text messages (hello, state, errors, pongs) waiting for the socket before the client is
/// considered abusive: it sends but does not read.
const MAX_OUTBOX: usize = 64;
/// A socket that accepted nothing for this long counts its drops as "stalled", not "slow".
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Limits a viewer enforces, taken from the config.
#[derive(Debug, Clone)]
pub struct ViewerLimits {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
    pub stall_timeout: Duration,
    pub commands_per_second: NonZeroU32,
}

pub struct Viewer {
    session: Addr<Session>,
    metrics: Arc<Metrics>,
    /// Why this viewer ends, for the disconnect metric; a client that just goes is the default.
    gone: Disconnect,
    can_control: bool,
    limits: ViewerLimits,
    /// `None` while a send holds it.
    ws: Option<actix_ws::Session>,
    stream: Option<AggregatedMessageStream>,
    closer: Option<oneshot::Sender<Bytes>>,
    joined: Option<JoinedState>,
    epoch: u64,
    /// Replies, hello and pings, in order; bounded by [`MAX_OUTBOX`].
    outbox: VecDeque<Message>,
    /// The latest epoch's state message, sent before any frame of that epoch (latest wins).
    pending_state: Option<ByteString>,
    /// The newest unsent frame and when its session offered it.
    pending: Option<(Bytes, Instant)>,
    sending_since: Option<Instant>,
    last_heard: Instant,
    limiter: DefaultDirectRateLimiter,
}

struct JoinedState {
    viewer: u64,
    race: Arc<EncodedRace>,
    stats: Arc<DeliveryStats>,
}

impl Viewer {
    /// Starts a viewer for an upgraded connection. `closer` reaches the response body wrapped in
    /// [`ClosableBody`], so a close frame can go out even when the socket queue is full.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        session: Addr<Session>,
        metrics: Arc<Metrics>,
        can_control: bool,
        limits: ViewerLimits,
        ws: actix_ws::Session,
        stream: AggregatedMessageStream,
        closer: oneshot::Sender<Bytes>,
    ) -> Addr<Self> {
        let limiter = RateLimiter::direct(Quota::per_second(limits.commands_per_second));
        Viewer {
            session,
            metrics,
            gone: Disconnect::Client,
            can_control,
            limits,
            ws: Some(ws),
            stream: Some(stream),
            closer: Some(closer),
            joined: None,
            epoch: 0,
            outbox: VecDeque::new(),
            pending_state: None,
            pending: None,
            sending_since: None,
            last_heard: Instant::now(),
            limiter,
        }
        .start()
    }

    fn on_joined(&mut self, joined: Joined, ctx: &mut Context<Self>) {
        let hello = hello_message(&Hello {
            session: &joined.session,
            race: joined.race.id(),
            total_frames: joined.race.total_frames(),
            fields: &joined.race.meta.fields,
            can_control: self.can_control,
            state: joined.state,
        });
        self.epoch = joined.state.epoch;
        self.metrics.viewers.inc();
        self.metrics.ws_connects.inc();
        self.joined = Some(JoinedState {
            viewer: joined.viewer,
            race: joined.race,
            stats: joined.stats,
        });
        self.queue(Message::Text(hello), ctx);
    }

    /// A frame offer from the session: newer epochs bring their state message first and make the
    /// pending frame stale; within an epoch the newest frame replaces an unsent one.
    fn offer(&mut self, offer: Deliver, ctx: &mut Context<Self>) {
        let Some(joined) = &self.joined else {
            return;
        };
        if offer.epoch < self.epoch {
            return;
        }
        let stalled = self
            .sending_since
            .is_some_and(|since| since.elapsed() > STALLED_AFTER);
        if offer.epoch > self.epoch {
            self.epoch = offer.epoch;
            if self.pending.take().is_some() {
                joined.stats.count_drop_as(stalled);
            }
            // Only the newest state matters; an unsent older one is superseded.
            self.pending_state = Some(offer.state);
        }
        if self
            .pending
            .replace((offer.bytes, offer.offered_at))
            .is_some()
        {
            joined.stats.count_drop_as(stalled);
        }
        self.pump(ctx);
    }

    fn queue(&mut self, message: Message, ctx: &mut Context<Self>) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.close(
                CloseCode::Policy.into(),
                "too many unread replies: read your socket",
                ctx,
            );
            return;
        }
        self.outbox.push_back(message);
        self.pump(ctx);
    }

    /// Hands the next message to the socket unless a send is already in flight.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.sending_since.is_some() {
            return;
        }
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let (message, frame) = if let Some(message) = self.outbox.pop_front() {
            (message, None)
        } else if let Some(state) = self.pending_state.take() {
            (Message::Text(state), None)
        } else if let Some((bytes, offered_at)) = self.pending.take() {
            let len = bytes.len();
            (Message::Binary(bytes), Some((len, offered_at)))
        } else {
            self.ws = Some(ws);
            return;
        };
        self.sending_since = Some(Instant::now());
        let send = async move {
            let result = ws.send(message).await;
            (ws, result)
        };
        ctx.spawn(
            send.into_actor(self)
                .map(move |(ws, result), act, ctx| act.sent(ws, result.is_ok(), frame, ctx)),
        );
    }

    fn sent(
        &mut self,
        ws: actix_ws::Session,
        ok: bool,
        frame: Option<(usize, Instant)>,
        ctx: &mut Context<Self>,
    ) {
        let stalled = self
            .sending_since
            .take()
            .is_some_and(|since| since.elapsed() > STALLED_AFTER);
        if !ok {
            // A send that hung and then failed: the connection was cut under a stalled client.
            if stalled {
                self.gone = Disconnect::Stalled;
            }
            ctx.stop();
            return;
        }
        self.ws = Some(ws);
        if let (Some((len, offered_at)), Some(joined)) = (frame, &self.joined) {
            joined.stats.count_sent(len, offered_at.elapsed());
        }
        self.pump(ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(since) = self.sending_since {
            if now.duration_since(since) > self.limits.stall_timeout {
                if let Some(joined) = &self.joined {
                    joined.stats.count_stalled_close();
                }
                self.close(
                    close_code::STALLED,
                    "stalled: the client is not reading",
                    ctx,
                );
                return;
            }
        }
        if now.duration_since(self.last_heard) > self.limits.client_timeout {
            self.close(close_code::HEARTBEAT_TIMEOUT, "heartbeat timeout", ctx);
            return;
        }
        // One ping waiting is enough; a busy socket still gets it (skipping pings while a send
        // is in flight starved busy viewers of pings, and they timed out).
        let ping_waiting = self.outbox.iter().any(|m| matches!(m, Message::Ping(_)));
        if !ping_waiting {
            self.queue(Message::Ping(Bytes::new()), ctx);
        }
    }

    fn command(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Some(joined) = &self.joined else {
            return;
        };
        if self.limiter.check().is_err() {
            self.count_command("unknown", "rate_limited");
            let limit = self.limits.commands_per_second;
            let reply = error_message(
                "rate_limited",
                &format!("more than {limit} commands per second; slow down"),
            );
            self.queue(Message::Text(reply), ctx);
            return;
        }
        let command = match Command::parse(text, joined.race.total_frames()) {
            Ok(command) => command,
            Err(err) => {
                self.count_command("invalid", err.code);
                self.queue(Message::Text(error_message(err.code, &err.message)), ctx);
                return;
            }
        };
        if !self.can_control {
            self.count_command(command.kind(), "forbidden");
            let reply = error_message(
                "forbidden",
                "this connection has no control token; connect with ?token=<control token>",
            );
            self.queue(Message::Text(reply), ctx);
            return;
        }
        self.count_command(command.kind(), "ok");
        // The new state reaches every viewer, this one included, through the session's offers.
        // If the session is ending, its `Ended` message closes this viewer with the reason.
        ctx.spawn(
            self.session
                .send(Control(command))
                .into_actor(self)
                .map(|_, _, _| ()),
        );
    }

    fn client_message(&mut self, message: AggregatedMessage, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match message {
            AggregatedMessage::Text(text) => self.command(&text, ctx),
            AggregatedMessage::Binary(_) => {
                let reply = error_message(
                    "binary_not_supported",
                    "commands are JSON text messages, e.g. {\"cmd\":\"play\"}",
                );
                self.queue(Message::Text(reply), ctx);
            }
            AggregatedMessage::Ping(payload) => self.queue(Message::Pong(payload), ctx),
            AggregatedMessage::Pong(_) => {}
            AggregatedMessage::Close(reason) => {
                let code = reason.map_or(1000, |r| u16::from(r.code));
                self.close(code, "", ctx);
            }
        }
    }

    fn count_command(&self, kind: &str, result: &str) {
        self.metrics
            .commands
            .with_label_values(&[kind, result])
            .inc();
    }

    /// Closes with `code`: the close frame overtakes whatever is still queued for the socket.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.gone = match code {
            close_code::STALLED => Disconnect::Stalled,
            close_code::HEARTBEAT_TIMEOUT => Disconnect::HeartbeatTimeout,
            1001 => Disconnect::SessionEnded,
            1002 => Disconnect::Protocol,
            1008 => Disconnect::Policy,
            1009 => Disconnect::TooBig,
            1013 => Disconnect::SessionFull,
            _ => Disconnect::Client,
        };
        if let Some(closer) = self.closer.take() {
            let _ = closer.send(close_frame(code, reason));
        }
        ctx.stop();
    }
}

impl Actor for Viewer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        ctx.run_interval(self.limits.heartbeat, |act, ctx| act.heartbeat(ctx));
        let join = Join {
            frames: ctx.address().recipient(),
            ended: ctx.address().recipient(),
        };
        ctx.wait(
            self.session
                .send(join)
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(Ok(joined)) => act.on_joined(joined, ctx),
                    Ok(Err(full)) => act.close(CloseCode::Again.into(), &full.message, ctx),
                    Err(_) => act.close(CloseCode::Away.into(), "session ended", ctx),
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.metrics.disconnected(self.gone);
        if let Some(joined) = &self.joined {
            self.metrics.viewers.dec();
            // One message per viewer lifetime, not per frame.
            self.session.do_send(Leave {
                viewer: joined.viewer,
            });
        }
    }
}

impl Handler<Deliver> for Viewer {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.offer(msg, ctx);
    }
}

impl Handler<Ended> for Viewer {
    type Result = ();
    fn handle(&mut self, msg: Ended, ctx: &mut Context<Self>) {
        self.close(msg.code, &msg.reason, ctx);
    }
}

impl StreamHandler<Result<AggregatedMessage, actix_ws::ProtocolError>> for Viewer {
    fn handle(
        &mut self,
        item: Result<AggregatedMessage, actix_ws::ProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        match item {
            Ok(message) => self.client_message(message, ctx),
            Err(actix_ws::ProtocolError::Overflow) => {
                self.close(CloseCode::Size.into(), "message too big", ctx)
            }
            // The connection itself failed: the client is gone, there is no one to tell.
            Err(actix_ws::ProtocolError::Io(_)) => ctx.stop(),
            Err(err) => self.close(CloseCode::Protocol.into(), &err.to_string(), ctx),
        }
    }
}

/// An encoded server close frame (unmasked), ready to write after whatever the socket holds.
fn close_frame(code: u16, reason: &str) -> Bytes {
    // A close frame's payload is at most 125 bytes: the code and up to 123 bytes of reason.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = CloseReason {
        code: CloseCode::from(code),
        description: (end > 0).then(|| reason[..end].to_owned()),
    };
    let mut out = BytesMut::new();
    // unwrap: encoding a close frame with a reason under 125 bytes into memory cannot fail.
    Codec::new()
        .encode(actix_http::ws::Message::Close(Some(reason)), &mut out)
        .unwrap();
    out.freeze()
}

/// The WebSocket response body: actix-ws's stream, until the viewer asks to close; then a close
/// frame goes out at once (overtaking up to 32 messages actix-ws may still hold) and the body ends.
pub struct ClosableBody {
    inner: BoxBody,
    closer: Option<oneshot::Receiver<Bytes>>,
    done: bool,
}

impl ClosableBody {
    pub fn new(inner: BoxBody, closer: oneshot::Receiver<Bytes>) -> Self {
        Self {
            inner,
            closer: Some(closer),
            done: false,
        }
    }
}

impl MessageBody for ClosableBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(closer) = this.closer.as_mut() {
            match Pin::new(closer).poll(cx) {
                Poll::Ready(Ok(frame)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(frame)));
                }
                // The viewer ended without a close of its own: let actix-ws finish the stream.
                Poll::Ready(Err(_)) => this.closer = None,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frame_is_an_unmasked_close_with_code_and_reason() {
        let frame = close_frame(close_code::STALLED, "stalled");
        assert_eq!(frame[0], 0x88, "FIN + close opcode");
        assert_eq!(
            frame[1] as usize,
            2 + "stalled".len(),
            "unmasked, short length"
        );
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 4001);
        assert_eq!(&frame[4..], b"stalled");
    }

    #[test]
    fn long_reasons_are_cut_to_fit_a_control_frame() {
        for reason in ["x".repeat(500), "é".repeat(300), "🏁".repeat(100)] {
            let frame = close_frame(1001, &reason);
            assert_eq!(frame[1] as usize, frame.len() - 2, "short form length");
            assert!(frame.len() <= 2 + 125, "{} bytes", frame.len());
            assert!(
                std::str::from_utf8(&frame[4..]).is_ok(),
                "cut on a char boundary"
            );
        }
    }
}
