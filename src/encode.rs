//! Wire encoding: every frame of a race is encoded once into one shared buffer.
//!
//! The hub builds an [`EncodedRace`] when a race is loaded; sessions hand out cheap [`Bytes`]
//! slices of it to every viewer, and the frames endpoint concatenates the same slices. The JSON
//! control messages (hello, state, error) are built here too, so the protocol lives in one place.

use std::sync::Arc;

use actix_codec::Encoder;
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::race::{DriverFrame, Frame, RaceMeta};

/// Protocol version announced in `hello`; bump on any incompatible message change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the wire frame encoding; bump whenever [`encode_frame`]'s output changes, so no
/// cache ever serves bytes of an older encoding.
pub const ENCODING_VERSION: u32 = 1;

/// Frames whose room is reserved on the word of a race's metadata alone.
const PREALLOC_FRAMES: usize = 10_000;
/// Most bytes reserved up front on a size hint.
const MAX_PREALLOC_BYTES: u64 = 1 << 30;

/// A race's metadata plus every frame already encoded for the wire, shared by all sessions that
/// play it: one copy in memory however many sessions and viewers use it.
#[derive(Debug)]
pub struct EncodedRace {
    pub meta: Arc<RaceMeta>,
    buf: Bytes,
    /// `offsets[i]..offsets[i + 1]` is frame `i` in `buf`; one more entry than frames.
    offsets: Vec<u32>,
}

impl EncodedRace {
    /// Encodes frames as they arrive, so a loader never holds more than one decoded frame.
    pub fn build<E>(
        meta: RaceMeta,
        frames: impl IntoIterator<Item = Result<Frame, E>>,
    ) -> Result<Self, E> {
        Self::build_sized(meta, frames, 0)
    }

    /// As [`EncodedRace::build`], reserving about `size_hint` bytes up front (a race file's
    /// length is a good hint). The frame count in `meta` comes from outside, so what is reserved
    /// from it alone is capped; the buffer grows as real frames arrive, and is trimmed at the end
    /// if it grew well past what they need.
    pub fn build_sized<E>(
        meta: RaceMeta,
        frames: impl IntoIterator<Item = Result<Frame, E>>,
        size_hint: u64,
    ) -> Result<Self, E> {
        let claimed = (meta.total_frames as usize).min(PREALLOC_FRAMES);
        let reserve = (claimed * 1400).max(size_hint.min(MAX_PREALLOC_BYTES) as usize);
        let mut buf = BytesMut::with_capacity(reserve);
        let mut offsets = Vec::with_capacity(claimed + 1);
        offsets.push(0);
        for (index, frame) in frames.into_iter().enumerate() {
            let frame = frame?;
            encode_frame(index as u32, &frame, &mut buf);
            offsets.push(buf.len() as u32);
        }
        offsets.shrink_to_fit();
        let buf = if buf.capacity() > buf.len() + buf.len() / 8 + (1 << 20) {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        Ok(Self {
            meta: Arc::new(meta),
            buf,
            offsets,
        })
    }

    /// Rebuilds a race from bytes produced by [`EncodedRace::build`] (read back from a cache).
    pub fn from_parts(meta: RaceMeta, buf: Bytes, offsets: Vec<u32>) -> Self {
        Self {
            meta: Arc::new(meta),
            buf,
            offsets,
        }
    }

    pub fn id(&self) -> &str {
        &self.meta.id
    }

    pub fn total_frames(&self) -> u32 {
        (self.offsets.len() - 1) as u32
    }

    /// Frame `index` as a cheap reference-counted slice of the shared buffer.
    pub fn frame(&self, index: u32) -> Option<Bytes> {
        let i = index as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        Some(self.buf.slice(start as usize..end as usize))
    }

    /// Frames `from..to` as one msgpack array, built from the already-encoded bytes.
    /// The caller has checked the range.
    pub fn frames_msgpack(&self, from: u32, to: u32) -> Bytes {
        let frames = self.frames_bytes(from, to);
        let mut out = BytesMut::with_capacity(frames.len() + 5);
        // unwrap: writing into a growable buffer cannot fail.
        rmp::encode::write_array_len(&mut (&mut out).writer(), to - from).unwrap();
        out.extend_from_slice(&frames);
        out.freeze()
    }

    /// Frames `from..to` back to back, as one cheap slice of the shared buffer.
    pub fn frames_bytes(&self, from: u32, to: u32) -> Bytes {
        self.buf
            .slice(self.offsets[from as usize] as usize..self.offsets[to as usize] as usize)
    }

    /// Memory the race holds: its frames and their offsets.
    pub fn memory_bytes(&self) -> u64 {
        (self.buf.len() + self.offsets.len() * 4) as u64
    }

    /// Bytes held by the encoded frames.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// One wire frame: `{"type":"frame","i":..,"t":..,"lap":..,"drivers":[[..],..]}`. The outer value
/// is a map so clients can read it by name; each driver is an array in `meta.fields` order.
struct WireFrame<'a> {
    index: u32,
    frame: &'a Frame,
}

impl Serialize for WireFrame<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(5))?;
        map.serialize_entry("type", "frame")?;
        map.serialize_entry("i", &self.index)?;
        map.serialize_entry("t", &self.frame.t)?;
        map.serialize_entry("lap", &self.frame.lap)?;
        map.serialize_entry("drivers", &self.frame.drivers)?;
        map.end()
    }
}

/// Appends the wire encoding of frame `index` to `out`.
pub fn encode_frame(index: u32, frame: &Frame, out: &mut BytesMut) {
    let mut ser = rmp_serde::Serializer::new(out.writer());
    // unwrap: the frame holds only numbers and short strings, and the writer is growable memory,
    // so serialisation cannot fail.
    WireFrame { index, frame }.serialize(&mut ser).unwrap();
}

/// The bytes every wire frame starts with: a 5-entry map, `"type": "frame"`, then the key `"i"`.
const FRAME_PREFIX: &[u8] = b"\x85\xa4type\xa5frame\xa1i";

/// A cheap check that `bytes` begins like the wire encoding of frame `index` (its header and
/// its index), so frame bytes from elsewhere (a cache) cannot be misaligned or filler.
pub fn is_wire_frame(bytes: &[u8], index: u32) -> bool {
    let Some(mut rest) = bytes.strip_prefix(FRAME_PREFIX) else {
        return false;
    };
    rmp::decode::read_int::<u32, _>(&mut rest).is_ok_and(|i| i == index)
}

/// Decodes a wire frame back into its parts; used by tests, benches and the load tool.
pub fn decode_frame(bytes: &[u8]) -> Result<DecodedFrame, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Decodes a look-ahead window with its frames; used by tests.
pub fn decode_window(bytes: &[u8]) -> Result<DecodedWindow, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// The decoded form of a look-ahead window.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DecodedWindow {
    #[serde(rename = "type")]
    pub kind: String,
    pub epoch: u64,
    pub indices: Vec<u32>,
    pub frames: Vec<DecodedFrame>,
}

/// The decoded form of a wire frame.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DecodedFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub i: u32,
    pub t: f64,
    pub lap: u16,
    pub drivers: Vec<DriverFrame>,
}

/// The shared play state every viewer sees; `epoch` grows on every control change, so a client
/// can tell which frames belong to the latest command.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct PlayState {
    pub playing: bool,
    pub speed: f64,
    pub frame: u32,
    pub epoch: u64,
    /// The timeline's anchor: frame `anchor_frame` is current at server wall-clock time
    /// `anchor_ms` (Unix ms), and playback advances `speed × 25` frames per second from there.
    /// A client that knows its offset to the server clock derives the frame to show from these.
    pub anchor_frame: u32,
    pub anchor_ms: i64,
}

/// `{"type":"state",...}`, sent to every viewer on each control change.
pub fn state_message(state: &PlayState) -> ByteString {
    #[derive(Serialize)]
    struct Msg<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        state: &'a PlayState,
    }
    json(&Msg {
        kind: "state",
        state,
    })
}

/// Everything a viewer is told on connect.
#[derive(Debug, Serialize)]
pub struct Hello<'a> {
    pub session: &'a str,
    pub race: &'a str,
    pub total_frames: u32,
    pub fields: &'a [String],
    pub can_control: bool,
    /// The delivery mode the viewer asked for: "push" or "lookahead".
    pub mode: &'a str,
    /// Look-ahead only: how much playback one window covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Look-ahead only: the window encoding in force ("msgpack" or "qdelta1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'a str>,
    pub state: PlayState,
}

/// `{"type":"hello","protocol":1,...}`.
pub fn hello_message(hello: &Hello<'_>) -> ByteString {
    #[derive(Serialize)]
    struct Msg<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        protocol: u32,
        fps: u32,
        #[serde(flatten)]
        hello: &'a Hello<'a>,
    }
    json(&Msg {
        kind: "hello",
        protocol: PROTOCOL_VERSION,
        fps: crate::race::FPS,
        hello,
    })
}

/// `{"type":"auth","can_control":..}`: the answer to an accepted `auth` command.
pub fn auth_message(can_control: bool) -> ByteString {
    json(&serde_json::json!({"type": "auth", "can_control": can_control}))
}

/// `{"type":"error","code":..,"message":..}`: the answer to a command that was not carried out.
pub fn error_message(code: &str, message: &str) -> ByteString {
    #[derive(Serialize)]
    struct Msg<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
    }
    json(&Msg {
        kind: "error",
        code,
        message,
    })
}

/// `{"type":"time","t0":..,"server_ms":..}`: the answer to a client's time request, echoing its
/// `t0` so it can pair request and answer and estimate its offset to the server clock.
pub fn time_message(t0: f64, server_ms: f64) -> ByteString {
    #[derive(Serialize)]
    struct Msg {
        #[serde(rename = "type")]
        kind: &'static str,
        t0: f64,
        server_ms: f64,
    }
    json(&Msg {
        kind: "time",
        t0,
        server_ms,
    })
}

/// A look-ahead window: `{"type":"window","epoch":e,"indices":[..],"frames":[..]}` in msgpack,
/// the frames being the race's already-encoded bytes (each carries its own `i`). `indices`
/// repeats them so a client can drop stale frames without decoding any.
pub fn window_message(race: &EncodedRace, epoch: u64, indices: &[u32]) -> Bytes {
    let frames: usize = indices
        .iter()
        .filter_map(|&i| race.frame(i).map(|f| f.len()))
        .sum();
    let mut out = BytesMut::with_capacity(frames + indices.len() * 5 + 48);
    let mut w = (&mut out).writer();
    // unwrap: writing msgpack into a growable buffer cannot fail.
    (|| -> Result<(), rmp::encode::ValueWriteError> {
        rmp::encode::write_map_len(&mut w, 4)?;
        rmp::encode::write_str(&mut w, "type")?;
        rmp::encode::write_str(&mut w, "window")?;
        rmp::encode::write_str(&mut w, "epoch")?;
        rmp::encode::write_uint(&mut w, epoch)?;
        rmp::encode::write_str(&mut w, "indices")?;
        rmp::encode::write_array_len(&mut w, indices.len() as u32)?;
        for &i in indices {
            rmp::encode::write_uint(&mut w, u64::from(i))?;
        }
        rmp::encode::write_str(&mut w, "frames")?;
        rmp::encode::write_array_len(&mut w, indices.len() as u32)?;
        Ok(())
    })()
    .unwrap();
    for &i in indices {
        if let Some(frame) = race.frame(i) {
            out.extend_from_slice(&frame);
        }
    }
    out.freeze()
}

/// Reads a window's epoch and frame indices without touching its frames: the load tool's view.
pub fn window_indices(bytes: &[u8]) -> Option<(u64, Vec<u32>)> {
    let mut rd = bytes;
    let entries = rmp::decode::read_map_len(&mut rd).ok()?;
    let mut key = [0u8; 8];
    let mut epoch = None;
    for _ in 0..entries {
        match rmp::decode::read_str(&mut rd, &mut key).ok()? {
            "type" => {
                let mut value = [0u8; 8];
                if rmp::decode::read_str(&mut rd, &mut value).ok()? != "window" {
                    return None;
                }
            }
            "epoch" => epoch = Some(rmp::decode::read_int(&mut rd).ok()?),
            "indices" => {
                let n = rmp::decode::read_array_len(&mut rd).ok()?;
                let indices = (0..n)
                    .map(|_| rmp::decode::read_int(&mut rd).ok())
                    .collect::<Option<Vec<u32>>>()?;
                return Some((epoch?, indices));
            }
            _ => return None,
        }
    }
    None
}

/// A server WebSocket message framed for the wire. Server frames are unmasked, so the framed
/// bytes are the same for every viewer: a session frames each message once and every socket
/// writes the same shared bytes.
pub fn ws_message(message: actix_http::ws::Message) -> Bytes {
    let mut out = BytesMut::new();
    // unwrap: encoding a server message into memory cannot fail; the codec's size limit only
    // applies to decoding.
    actix_http::ws::Codec::new()
        .encode(message, &mut out)
        .unwrap();
    out.freeze()
}

/// A binary message framed for the wire (see [`ws_message`]).
pub fn ws_binary(payload: Bytes) -> Bytes {
    ws_message(actix_http::ws::Message::Binary(payload))
}

/// A text message framed for the wire (see [`ws_message`]).
pub fn ws_text(text: ByteString) -> Bytes {
    ws_message(actix_http::ws::Message::Text(text))
}

/// Msgpack with structs as arrays, the compact form the race file and the cache use.
pub fn to_compact_msgpack(value: &impl Serialize) -> Vec<u8> {
    // unwrap: the values encoded here (race metadata, cache manifests) hold only strings,
    // numbers and arrays, and the writer is memory, so serialisation cannot fail.
    rmp_serde::to_vec(value).unwrap()
}

fn json(value: &impl Serialize) -> ByteString {
    // unwrap: these messages hold only strings, numbers and booleans; serde_json cannot fail on them.
    ByteString::from(serde_json::to_string(value).unwrap())
}

/// Reads just the frame index `i` of a wire frame without decoding the drivers: what the load
/// tool needs per message, at a fraction of a full decode's cost.
pub fn frame_index(bytes: &[u8]) -> Option<u32> {
    let mut rd = bytes;
    let entries = rmp::decode::read_map_len(&mut rd).ok()?;
    let mut key = [0u8; 8];
    for _ in 0..entries {
        let k = rmp::decode::read_str(&mut rd, &mut key).ok()?;
        match k {
            "type" => {
                let mut value = [0u8; 8];
                if rmp::decode::read_str(&mut rd, &mut value).ok()? != "frame" {
                    return None;
                }
            }
            "i" => return rmp::decode::read_int(&mut rd).ok(),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::{generate, GenParams};

    fn small_race() -> EncodedRace {
        let params = GenParams {
            laps: 2,
            drivers: 4,
            ..GenParams::default()
        };
        let (meta, frames) = generate(&params, |_, _| {}).unwrap();
        EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).unwrap()
    }

    #[test]
    fn frames_decode_to_what_was_encoded_and_share_one_buffer() {
        let params = GenParams {
            laps: 2,
            drivers: 4,
            ..GenParams::default()
        };
        let (meta, frames) = generate(&params, |_, _| {}).unwrap();
        let race = EncodedRace::build(meta, frames.clone().into_iter().map(Ok::<_, ()>)).unwrap();
        assert_eq!(race.total_frames() as usize, frames.len());
        for i in [0, 1, frames.len() as u32 / 2, frames.len() as u32 - 1] {
            let bytes = race.frame(i).unwrap();
            let decoded = decode_frame(&bytes).unwrap();
            let original = &frames[i as usize];
            assert_eq!(decoded.kind, "frame");
            assert_eq!(decoded.i, i);
            assert_eq!(decoded.t, original.t);
            assert_eq!(decoded.lap, original.lap);
            assert_eq!(decoded.drivers, original.drivers);
            assert_eq!(frame_index(&bytes), Some(i));
            // A slice of the shared buffer, not a copy.
            assert_eq!(race.frame(i).unwrap().as_ptr(), bytes.as_ptr());
        }
        assert!(race.frame(race.total_frames()).is_none());
    }

    #[test]
    fn a_frame_range_is_a_msgpack_array_of_the_same_bytes() {
        let race = small_race();
        let body = race.frames_msgpack(10, 13);
        let mut rd = &body[..];
        assert_eq!(rmp::decode::read_array_len(&mut rd).unwrap(), 3);
        let expected: Vec<u8> = (10..13)
            .flat_map(|i| race.frame(i).unwrap().to_vec())
            .collect();
        assert_eq!(rd, &expected[..]);
    }

    #[test]
    fn a_window_holds_the_shared_frame_bytes_and_names_their_indices() {
        let race = small_race();
        let indices = [40, 41, 45, 60];
        let window = window_message(&race, 7, &indices);
        assert_eq!(window_indices(&window), Some((7, indices.to_vec())));
        let decoded = decode_window(&window).unwrap();
        assert_eq!(decoded.kind, "window");
        assert_eq!(decoded.epoch, 7);
        let carried: Vec<u32> = decoded.frames.iter().map(|f| f.i).collect();
        assert_eq!(carried, indices, "every frame carries its own index");
        let frames: Vec<u8> = indices
            .iter()
            .flat_map(|&i| race.frame(i).unwrap().to_vec())
            .collect();
        assert!(
            window.ends_with(&frames),
            "the race's encoded bytes, unchanged"
        );
        assert_eq!(window_indices(&race.frame(3).unwrap()), None);
        assert_eq!(frame_index(&window), None, "a window is not a frame");
    }

    #[test]
    fn messages_are_framed_once_as_unmasked_server_frames() {
        let payload = Bytes::from(vec![7u8; 300]);
        let framed = ws_binary(payload.clone());
        assert_eq!(framed[0], 0x82, "FIN + binary");
        assert_eq!(framed[1], 126, "unmasked, 16-bit length");
        assert_eq!(u16::from_be_bytes([framed[2], framed[3]]), 300);
        assert_eq!(&framed[4..], &payload[..]);
        let text = ws_text(ByteString::from_static("{}"));
        assert_eq!(&text[..], b"\x81\x02{}");
    }

    #[test]
    fn control_messages_are_the_documented_json() {
        let state = PlayState {
            playing: true,
            speed: 2.0,
            frame: 7,
            epoch: 3,
            anchor_frame: 5,
            anchor_ms: 1_700_000_000_000,
        };
        let v: serde_json::Value = serde_json::from_str(&state_message(&state)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"state","playing":true,"speed":2.0,"frame":7,"epoch":3,
                "anchor_frame":5,"anchor_ms":1_700_000_000_000_i64})
        );
        let e: serde_json::Value =
            serde_json::from_str(&error_message("forbidden", "no token")).unwrap();
        assert_eq!(
            e,
            serde_json::json!({"type":"error","code":"forbidden","message":"no token"})
        );
        assert_eq!(frame_index(b"\x80"), None);
        let t: serde_json::Value = serde_json::from_str(&time_message(1.5, 2.25)).unwrap();
        assert_eq!(
            t,
            serde_json::json!({"type":"time","t0":1.5,"server_ms":2.25})
        );
    }
}
