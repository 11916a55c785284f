//! What clients send on a session's socket: control commands (play, pause, seek, speed),
//! clock requests and a late control token. A text message is deserialised into a
//! [`ClientMessage`], then [`ClientMessage::validate`] checks it against the race into a [`Request`],
//! before the session sees it. Viewers parse; the session applies ([`super::timeline`]).
//! [`ErrorCode`] holds every error code the protocol answers with (docs/PROTOCOL.md).

use serde::Deserialize;

use crate::clock::SPEED_RANGE;
use crate::race::FPS;

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

/// A client's text message as it is on the wire, before it is checked against the race.
/// Arguments are optional here so that a missing one is answered by [`ClientMessage::validate`]
/// with what the command needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum ClientMessage {
    Play,
    Pause,
    /// Exactly one of `frame` (an index) or `t` (seconds).
    Seek {
        frame: Option<f64>,
        t: Option<f64>,
    },
    Speed {
        value: Option<f64>,
    },
    Time {
        t0: Option<f64>,
    },
    Auth {
        token: Option<String>,
    },
}

impl ClientMessage {
    /// Every command name, as the `cmd` field spells it.
    pub const NAMES: [&'static str; 6] = ["play", "pause", "seek", "speed", "time", "auth"];

    /// Deserialises a client's JSON text message. Its arguments are not checked yet.
    pub fn parse(text: &str) -> Result<Self, CommandError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| CommandError::new(ErrorCode::BadJson, format!("not valid JSON: {e}")))?;
        let object = value.as_object().ok_or_else(|| {
            CommandError::new(
                ErrorCode::BadCommand,
                "a command is a JSON object like {\"cmd\":\"play\"}",
            )
        })?;
        let name = object.get("cmd").and_then(|c| c.as_str()).ok_or_else(|| {
            CommandError::new(ErrorCode::BadCommand, "missing string field \"cmd\"")
        })?;
        let Some(usage) = usage(name) else {
            return Err(CommandError::new(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown command {name:?}; expected play, pause, seek, speed, time or auth"
                ),
            ));
        };
        Self::deserialize(value)
            .map_err(|e| CommandError::new(ErrorCode::BadArgument, format!("{usage} ({e})")))
    }

    /// Checks the arguments; `total_frames` bounds seeks.
    pub fn validate(self, total_frames: u32) -> Result<Request, CommandError> {
        let command = match self {
            Self::Auth { token } => {
                let token = token.ok_or_else(|| bad_argument("auth"))?;
                return Ok(Request::Auth { token });
            }
            Self::Time { t0 } => {
                let t0 = t0
                    .filter(|t| t.is_finite())
                    .ok_or_else(|| bad_argument("time"))?;
                return Ok(Request::Time { t0 });
            }
            Self::Play => Command::Play,
            Self::Pause => Command::Pause,
            Self::Seek { frame, t } => Command::Seek(seek_target(frame, t, total_frames)?),
            Self::Speed { value } => {
                let value = value.ok_or_else(|| bad_argument("speed"))?;
                let (min, max) = SPEED_RANGE;
                if !(min..=max).contains(&value) {
                    return Err(CommandError::new(
                        ErrorCode::OutOfRange,
                        format!("speed {value} is outside [{min}, {max}]"),
                    ));
                }
                Command::Speed(value)
            }
        };
        Ok(Request::Control(command))
    }
}

/// What a command needs, for the error that answers it without; `None` for an unknown one.
fn usage(name: &str) -> Option<&'static str> {
    Some(match name {
        "play" | "pause" => "takes no arguments",
        "seek" => "seek needs exactly one of \"frame\" or \"t\", a number",
        "speed" => "speed needs a number \"value\"",
        "time" => "time needs a number \"t0\"",
        "auth" => "auth needs a string \"token\"",
        _ => return None,
    })
}

fn bad_argument(name: &str) -> CommandError {
    // unwrap: only called with the names of known commands.
    CommandError::new(ErrorCode::BadArgument, usage(name).unwrap())
}

/// The frame a seek goes to, given as a frame index or as seconds.
fn seek_target(frame: Option<f64>, t: Option<f64>, total_frames: u32) -> Result<u32, CommandError> {
    let last = total_frames.saturating_sub(1);
    match (frame, t) {
        (Some(frame), None) => {
            if frame.fract() != 0.0 || frame < 0.0 || frame > f64::from(last) {
                return Err(CommandError::new(
                    ErrorCode::OutOfRange,
                    format!("frame {frame} is not a whole number in [0, {last}]"),
                ));
            }
            Ok(frame as u32)
        }
        (None, Some(t)) => {
            let end = f64::from(last) / f64::from(FPS);
            if !(0.0..=end).contains(&t) {
                return Err(CommandError::new(
                    ErrorCode::OutOfRange,
                    format!("t {t} s is outside [0, {end}]"),
                ));
            }
            Ok((t * f64::from(FPS)).round().min(f64::from(last)) as u32)
        }
        _ => Err(bad_argument("seek")),
    }
}

impl Request {
    /// Parses and checks a client's JSON text message; `total_frames` bounds seeks.
    pub fn parse(text: &str, total_frames: u32) -> Result<Self, CommandError> {
        ClientMessage::parse(text)?.validate(total_frames)
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

/// The `code` of an `error` message: why a client's message was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The text is not JSON.
    BadJson,
    /// Not an object with a string `cmd`.
    BadCommand,
    /// `cmd` names no command.
    UnknownCommand,
    /// A required argument is missing or of the wrong type.
    BadArgument,
    /// A seek outside the race or a speed outside [`SPEED_RANGE`].
    OutOfRange,
    /// A control command without the control token, or a wrong token.
    Forbidden,
    /// More commands than the connection's or the session's limit.
    RateLimited,
    /// The client sent a binary message.
    BinaryNotSupported,
    /// The session has its maximum number of viewers.
    SessionFull,
}

impl ErrorCode {
    pub const ALL: [Self; 9] = [
        Self::BadJson,
        Self::BadCommand,
        Self::UnknownCommand,
        Self::BadArgument,
        Self::OutOfRange,
        Self::Forbidden,
        Self::RateLimited,
        Self::BinaryNotSupported,
        Self::SessionFull,
    ];

    /// The code as the protocol spells it, also the `result` label of the command metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadCommand => "bad_command",
            Self::UnknownCommand => "unknown_command",
            Self::BadArgument => "bad_argument",
            Self::OutOfRange => "out_of_range",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::SessionFull => "session_full",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a command was not carried out; `code` is the protocol's error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            Request::parse(r#"{"cmd":"auth","token":"abc","extra":1}"#, 100),
            Ok(Request::Auth {
                token: "abc".into()
            })
        );
        use ErrorCode::*;
        let cases = [
            ("{", BadJson, "not valid JSON"),
            ("[1]", BadCommand, "JSON object"),
            (r#"{"cmd":7}"#, BadCommand, "\"cmd\""),
            (r#"{"cmd":"rewind"}"#, UnknownCommand, "\"rewind\""),
            (r#"{"cmd":"seek","frame":100}"#, OutOfRange, "[0, 99]"),
            (r#"{"cmd":"seek","frame":-1}"#, OutOfRange, "frame -1"),
            (r#"{"cmd":"seek","frame":1.5}"#, OutOfRange, "whole number"),
            (r#"{"cmd":"seek","t":9}"#, OutOfRange, "t 9 s"),
            (r#"{"cmd":"seek"}"#, BadArgument, "\"frame\" or \"t\""),
            (
                r#"{"cmd":"seek","frame":1,"t":0}"#,
                BadArgument,
                "exactly one",
            ),
            (
                r#"{"cmd":"seek","frame":"x"}"#,
                BadArgument,
                "\"frame\" or \"t\"",
            ),
            (r#"{"cmd":"speed","value":32}"#, OutOfRange, "speed 32"),
            (r#"{"cmd":"speed"}"#, BadArgument, "\"value\""),
            (r#"{"cmd":"speed","value":true}"#, BadArgument, "\"value\""),
            (r#"{"cmd":"time"}"#, BadArgument, "\"t0\""),
            (r#"{"cmd":"time","t0":"now"}"#, BadArgument, "\"t0\""),
            (r#"{"cmd":"auth"}"#, BadArgument, "\"token\""),
            (r#"{"cmd":"auth","token":5}"#, BadArgument, "\"token\""),
        ];
        for (text, code, says) in cases {
            let err = Request::parse(text, 100).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err}");
            assert!(err.message.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn every_command_name_deserialises_and_is_known() {
        for name in ClientMessage::NAMES {
            assert!(usage(name).is_some(), "{name}");
            // Whatever its arguments, a known name is never an unknown command.
            let err = ClientMessage::parse(&format!(r#"{{"cmd":"{name}"}}"#)).err();
            assert!(
                err.is_none_or(|e| e.code == ErrorCode::BadArgument),
                "{name}"
            );
        }
    }

    #[test]
    fn error_codes_serialise_as_their_wire_names() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            assert_eq!(code.to_string(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
    }
}
