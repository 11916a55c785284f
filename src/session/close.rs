//! Why a viewer's socket is closed: every close code the hub sends, with its reason, in one
//! place (docs/PROTOCOL.md, "Close codes"). The hub and the session end sessions with one,
//! the viewer closes its socket with one and counts the disconnect by it.

use crate::frame_guard::Violation;
use crate::metrics::Disconnect;

/// Why the hub closes a viewer's socket; [`Self::code`] and [`Self::reason`] are what the
/// close frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The answer to the client's own close frame, with the code it sent (1000 if none).
    Echo(u16),
    /// The session was deleted: it is over, reconnecting finds nothing.
    SessionDeleted,
    /// The server is shutting down; the session goes on elsewhere or after a restart.
    ShuttingDown,
    /// The session stopped before this viewer could join it.
    SessionEnded,
    /// The session failed on the server; its id is free again.
    SessionFailed,
    /// The session has its maximum number of viewers (the message says which).
    SessionFull(String),
    /// The client kept sending while reading nothing.
    TooManyReplies,
    /// A message over the size limit, refused while actix-ws read it.
    TooBig,
    /// What the frame guard refused, from its header, before reading the payload.
    Guard(Violation),
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// Any other WebSocket protocol error (the message says which).
    Protocol(String),
    /// The socket accepted nothing for `stall_timeout`.
    Stalled,
    /// Nothing, not even a pong, arrived for `client_timeout`.
    HeartbeatTimeout,
}

/// The application close codes (4000–4999), documented in docs/PROTOCOL.md.
pub mod code {
    pub const STALLED: u16 = 4001;
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    pub const SESSION_DELETED: u16 = 4003;
}

impl CloseReason {
    /// The close code.
    pub fn code(&self) -> u16 {
        match self {
            Self::Echo(code) => *code,
            Self::ShuttingDown | Self::SessionEnded => 1001,
            Self::Protocol(_) | Self::Guard(Violation::ReservedBits | Violation::BadLength) => 1002,
            Self::InvalidUtf8 => 1007,
            Self::TooManyReplies => 1008,
            Self::TooBig | Self::Guard(Violation::TooBig { .. }) => 1009,
            Self::SessionFailed => 1011,
            Self::SessionFull(_) => 1013,
            Self::Stalled => code::STALLED,
            Self::HeartbeatTimeout => code::HEARTBEAT_TIMEOUT,
            Self::SessionDeleted => code::SESSION_DELETED,
        }
    }

    /// The close reason, for people: a client decides by [`Self::code`].
    pub fn reason(&self) -> String {
        match self {
            Self::Echo(_) => String::new(),
            Self::SessionDeleted => "session deleted".into(),
            Self::ShuttingDown => "server shutting down: reconnect".into(),
            Self::SessionEnded => "session ended".into(),
            Self::SessionFailed => "session failed: reconnect later".into(),
            Self::TooManyReplies => "too many unread replies: read your socket".into(),
            Self::TooBig => "message too big".into(),
            Self::Guard(violation) => violation.reason(),
            Self::InvalidUtf8 => "text message is not valid UTF-8".into(),
            Self::SessionFull(message) | Self::Protocol(message) => message.clone(),
            Self::Stalled => "stalled: the client is not reading".into(),
            Self::HeartbeatTimeout => "heartbeat timeout".into(),
        }
    }

    /// How the disconnect is counted in `replay_hub_ws_disconnects_total`.
    pub fn disconnect(&self) -> Disconnect {
        match self {
            Self::Echo(_) => Disconnect::Client,
            Self::SessionDeleted
            | Self::ShuttingDown
            | Self::SessionEnded
            | Self::SessionFailed => Disconnect::SessionEnded,
            Self::Protocol(_)
            | Self::InvalidUtf8
            | Self::Guard(Violation::ReservedBits | Violation::BadLength) => Disconnect::Protocol,
            Self::TooManyReplies => Disconnect::Policy,
            Self::TooBig | Self::Guard(Violation::TooBig { .. }) => Disconnect::TooBig,
            Self::SessionFull(_) => Disconnect::SessionFull,
            Self::Stalled => Disconnect::Stalled,
            Self::HeartbeatTimeout => Disconnect::HeartbeatTimeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_documented_code() {
        let cases = [
            (CloseReason::Echo(1000), 1000),
            (CloseReason::ShuttingDown, 1001),
            (CloseReason::SessionEnded, 1001),
            (CloseReason::Guard(Violation::ReservedBits), 1002),
            (CloseReason::Guard(Violation::BadLength), 1002),
            (CloseReason::Protocol("bad opcode".into()), 1002),
            (CloseReason::InvalidUtf8, 1007),
            (CloseReason::TooManyReplies, 1008),
            (CloseReason::TooBig, 1009),
            (
                CloseReason::Guard(Violation::TooBig {
                    declared: 9000,
                    limit: 4096,
                }),
                1009,
            ),
            (CloseReason::SessionFailed, 1011),
            (CloseReason::SessionFull("full".into()), 1013),
            (CloseReason::Stalled, 4001),
            (CloseReason::HeartbeatTimeout, 4002),
            (CloseReason::SessionDeleted, 4003),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.code(), code, "{reason:?}");
            let echoed = matches!(reason, CloseReason::Echo(_));
            assert_eq!(reason.reason().is_empty(), echoed, "{reason:?}");
        }
    }

    #[test]
    fn a_deleted_session_is_told_apart_from_a_restart() {
        let deleted = CloseReason::SessionDeleted;
        let restart = CloseReason::ShuttingDown;
        assert_ne!(deleted.code(), restart.code());
        assert_eq!(deleted.disconnect(), Disconnect::SessionEnded);
        assert!(restart.reason().contains("reconnect"));
    }
}
