//! The viewer actor: one per WebSocket connection, between a session actor and the socket.
//!
//! It joins the session, hands its socket writer ([`crate::writer::Writer`]) the session's
//! broadcast to follow, parses the client's commands, answers pings and time requests, and closes
//! the socket with a documented code when something is wrong. Frames never pass through it: see
//! [`crate::feed`].

use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_codec::Encoder;
use actix_http::ws::Codec;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, Message};
use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;

use crate::admission::Ticket;
use crate::encode::{
    auth_message, error_message, hello_message, time_message, ws_message, ws_text, EncodedRace,
    Hello,
};
use crate::feed::{Feed, Mode};
use crate::frame_guard::Verdict;
use crate::metrics::{Disconnect, Metrics};
use crate::session::{
    CloseReason, ControlCommand, Ended, ErrorCode, Join, Joined, Leave, Request, Session,
};
use crate::window_codec::WindowEncoding;
use crate::writer::{Out, Wire};

/// Messages a viewer's socket writer may hold (hello, state, replies, pings) before the client
/// is considered abusive: it sends but does not read.
const MAX_OUTBOX: usize = 64;

/// Limits a viewer enforces, taken from the config.
#[derive(Debug, Clone)]
pub struct ViewerLimits {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
    pub stall_timeout: Duration,
    pub commands_per_second: NonZeroU32,
}

/// What a connection may do: control (from `?token=`, or later an `auth` message checked
/// against the token's hash) and its delivery mode.
pub struct Access {
    pub can_control: bool,
    pub token_sha256: crate::ids::TokenHash,
    pub mode: Mode,
    /// How look-ahead windows are encoded for this client.
    pub encoding: WindowEncoding,
}

/// The upgraded connection a viewer drives: the client's messages, the socket writer's end of
/// the wire, what the frame guard refused, and the connection slot its address holds.
pub struct Connection {
    pub stream: AggregatedMessageStream,
    pub wire: Rc<Wire>,
    pub verdict: Verdict,
    pub ticket: Ticket,
}

pub struct Viewer {
    session: Addr<Session>,
    metrics: Arc<Metrics>,
    /// Why this viewer ends, for the disconnect metric; a client that just goes is the default.
    gone: Disconnect,
    can_control: bool,
    /// The session's control-token hash, for a token presented with `auth`.
    token_sha256: crate::ids::TokenHash,
    mode: Mode,
    encoding: WindowEncoding,
    limits: ViewerLimits,
    /// Given back (to the per-address count) when the viewer goes.
    _ticket: Ticket,
    stream: Option<AggregatedMessageStream>,
    /// To the socket writer; messages on it are bounded by [`MAX_OUTBOX`].
    wire: Rc<Wire>,
    closing: bool,
    joined: Option<JoinedState>,
    /// Messages queued for the writer so far; it counts those it wrote.
    queued: u64,
    /// `queued` just after the last ping: once the writer's count reaches it, the ping is out.
    ping_at: u64,
    last_heard: Instant,
    limiter: DefaultDirectRateLimiter,
    /// What the connection's [`crate::frame_guard::FrameGuard`] refused, if it stopped the stream.
    verdict: Verdict,
}

struct JoinedState {
    viewer: u64,
    race: Arc<EncodedRace>,
    /// The session's broadcast, to notice a session that failed without an `Ended`.
    feed: watch::Receiver<Arc<Feed>>,
}

impl Viewer {
    /// Starts a viewer for an upgraded connection whose writer is at the other end of `wire`.
    pub fn start(
        session: Addr<Session>,
        metrics: Arc<Metrics>,
        access: Access,
        limits: ViewerLimits,
        connection: Connection,
    ) -> Addr<Self> {
        let limiter = RateLimiter::direct(Quota::per_second(limits.commands_per_second));
        let Connection {
            stream,
            wire,
            verdict,
            ticket,
        } = connection;
        Viewer {
            session,
            metrics,
            gone: Disconnect::Client,
            can_control: access.can_control,
            token_sha256: access.token_sha256,
            mode: access.mode,
            encoding: access.encoding,
            limits,
            stream: Some(stream),
            wire,
            _ticket: ticket,
            closing: false,
            joined: None,
            queued: 0,
            ping_at: 0,
            last_heard: Instant::now(),
            limiter,
            verdict,
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
            mode: self.mode.as_str(),
            window_ms: joined.window.map(|w| w.as_millis() as u64),
            encoding: joined.window.map(|_| self.encoding.as_str()),
            state: joined.state,
        });
        self.metrics.viewers.inc();
        self.metrics.ws_connects.inc();
        self.joined = Some(JoinedState {
            viewer: joined.viewer,
            race: joined.race,
            feed: joined.subscription.feed.rx.clone(),
        });
        self.queue(ws_text(hello), ctx);
        self.wire.send(Out::Subscribe(joined.subscription));
    }

    /// Queues a framed message for the writer; a client that lets [`MAX_OUTBOX`] pile up is
    /// closed rather than buffered for.
    fn queue(&mut self, message: Bytes, ctx: &mut Context<Self>) {
        if self.wire.queued() >= MAX_OUTBOX {
            self.close(CloseReason::TooManyReplies, ctx);
            return;
        }
        self.wire.send(Out::Message(message));
        self.queued += 1;
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let stall_timeout = self.limits.stall_timeout;
        if self.wire.stuck_for(now).is_some_and(|d| d >= stall_timeout) {
            self.close(CloseReason::Stalled, ctx);
            return;
        }
        // The session's broadcast is gone but no `Ended` came: the session failed.
        if self
            .joined
            .as_ref()
            .is_some_and(|j| j.feed.has_changed().is_err())
        {
            self.close(CloseReason::SessionFailed, ctx);
            return;
        }
        if now.duration_since(self.last_heard) > self.limits.client_timeout {
            self.close(CloseReason::HeartbeatTimeout, ctx);
            return;
        }
        // One ping waiting is enough; a busy socket still gets it.
        if self.wire.progress.replies.get() >= self.ping_at {
            self.queue(ws_message(Message::Ping(Bytes::new())), ctx);
            self.ping_at = self.queued;
        }
    }

    fn command(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Some(joined) = &self.joined else {
            return;
        };
        if self.limiter.check().is_err() {
            self.count_command("unknown", ErrorCode::RateLimited.as_str());
            let limit = self.limits.commands_per_second;
            let reply = error_message(
                ErrorCode::RateLimited.as_str(),
                &format!("more than {limit} commands per second; slow down"),
            );
            self.queue(ws_text(reply), ctx);
            return;
        }
        let command = match Request::parse(text, joined.race.total_frames()) {
            Ok(Request::Time { t0 }) => {
                self.count_command("time", "ok");
                let server_ms = crate::clock::wall_us() as f64 / 1000.0;
                self.queue(ws_text(time_message(t0, server_ms)), ctx);
                return;
            }
            Ok(Request::Auth { token }) => {
                let matches = self.token_sha256.matches(&token);
                if matches {
                    self.can_control = true;
                    self.count_command("auth", "ok");
                    self.queue(ws_text(auth_message(true)), ctx);
                } else {
                    self.count_command("auth", ErrorCode::Forbidden.as_str());
                    let reply = error_message(
                        ErrorCode::Forbidden.as_str(),
                        "that is not this session's control token",
                    );
                    self.queue(ws_text(reply), ctx);
                }
                return;
            }
            Ok(Request::Control(command)) => command,
            Err(err) => {
                self.count_command("invalid", err.code.as_str());
                self.queue(ws_text(error_message(err.code.as_str(), &err.message)), ctx);
                return;
            }
        };
        if !self.can_control {
            self.count_command(command.kind(), ErrorCode::Forbidden.as_str());
            let reply = error_message(
                ErrorCode::Forbidden.as_str(),
                "this connection has no control token; send {\"cmd\":\"auth\",\"token\":..} or connect with ?token=<control token>",
            );
            self.queue(ws_text(reply), ctx);
            return;
        }
        // The new state reaches every viewer, this one included, through the session's broadcast.
        // If the session is ending, its `Ended` message closes this viewer with the reason.
        let kind = command.kind();
        ctx.spawn(
            self.session
                .send(ControlCommand(command))
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Ok(_)) => act.count_command(kind, "ok"),
                    Ok(Err(refused)) => {
                        act.count_command(kind, refused.code.as_str());
                        act.queue(
                            ws_text(error_message(refused.code.as_str(), &refused.message)),
                            ctx,
                        );
                    }
                    Err(_) => {}
                }),
        );
    }

    fn client_message(&mut self, message: AggregatedMessage, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match message {
            AggregatedMessage::Text(text) => self.command(&text, ctx),
            AggregatedMessage::Binary(_) => {
                let reply = error_message(
                    ErrorCode::BinaryNotSupported.as_str(),
                    "commands are JSON text messages, e.g. {\"cmd\":\"play\"}",
                );
                self.queue(ws_text(reply), ctx);
            }
            AggregatedMessage::Ping(payload) => self.queue(ws_message(Message::Pong(payload)), ctx),
            AggregatedMessage::Pong(_) => {}
            AggregatedMessage::Close(reason) => {
                let code = reason.map_or(CloseCode::Normal.into(), |r| u16::from(r.code));
                self.close(CloseReason::Echo(code), ctx);
            }
        }
    }

    fn count_command(&self, kind: &str, result: &str) {
        self.metrics
            .commands
            .with_label_values(&[kind, result])
            .inc();
    }

    /// Closes for `reason`: the close frame overtakes whatever is still queued for the socket.
    fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.gone = reason.disconnect();
        self.closing = true;
        let frame = close_frame(reason.code(), &reason.reason());
        if reason == CloseReason::Stalled {
            self.wire.close_stalled(frame);
        } else {
            self.wire.close(frame);
        }
        ctx.stop();
    }
}

impl Actor for Viewer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        ctx.run_interval(self.limits.heartbeat, |act, ctx| act.heartbeat(ctx));
        let join = Join {
            ended: ctx.address().recipient(),
            mode: self.mode,
            encoding: self.encoding,
        };
        ctx.wait(
            self.session
                .send(join)
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(Ok(joined)) => act.on_joined(joined, ctx),
                    Ok(Err(full)) => act.close(CloseReason::SessionFull(full.message), ctx),
                    Err(_) => act.close(CloseReason::SessionEnded, ctx),
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.wire.hang_up();
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

impl Handler<Ended> for Viewer {
    type Result = ();
    fn handle(&mut self, msg: Ended, ctx: &mut Context<Self>) {
        self.close(msg.0, ctx);
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
            Err(actix_ws::ProtocolError::Overflow) => self.close(CloseReason::TooBig, ctx),
            Err(actix_ws::ProtocolError::Io(err)) => {
                if let Some(violation) = self.verdict.take() {
                    self.close(CloseReason::Guard(violation), ctx);
                } else if err.kind() != std::io::ErrorKind::InvalidData {
                    // The connection itself failed: the client is gone, there is no one to tell.
                    ctx.stop();
                } else if is_utf8_error(&err) {
                    self.close(CloseReason::InvalidUtf8, ctx);
                } else {
                    self.close(CloseReason::Protocol(err.to_string()), ctx);
                }
            }
            Err(err) => self.close(CloseReason::Protocol(err.to_string()), ctx),
        }
    }
}

/// True for actix-ws's error for a text message that is not UTF-8.
fn is_utf8_error(err: &std::io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<std::str::Utf8Error>().is_some())
}

/// An encoded server close frame (unmasked), ready to write after whatever the socket holds.
fn close_frame(code: u16, reason: &str) -> Bytes {
    // A close frame's payload is at most 125 bytes: the code and up to 123 bytes of reason.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = actix_ws::CloseReason {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frame_is_an_unmasked_close_with_code_and_reason() {
        let frame = close_frame(CloseReason::Stalled.code(), "stalled");
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
            let frame = close_frame(CloseReason::ShuttingDown.code(), &reason);
            assert_eq!(frame[1] as usize, frame.len() - 2, "short form length");
            assert!(frame.len() <= 2 + 125, "{} bytes", frame.len());
            assert!(
                std::str::from_utf8(&frame[4..]).is_ok(),
                "cut on a char boundary"
            );
        }
    }
}
