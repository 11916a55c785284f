//! What clients send on a session's socket: control commands (play, pause, seek, speed),
//! clock requests and a late control token, parsed and checked against the race before the
//! session sees them. Viewers parse; the session applies ([`super::timeline`]).

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
