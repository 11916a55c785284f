//! Property tests of the parsers of outside input: race files, cache entries, client commands,
//! WebSocket frame headers and look-ahead windows. Arbitrary or damaged bytes give a typed error,
//! never a panic, and damage is never read as a different race. The same entry points are fuzzed
//! by the targets under fuzz/; `write_fuzz_seeds` (ignored) writes their seed corpus.

use std::sync::OnceLock;

use bytes::Bytes;
use proptest::prelude::*;
use replay_hub::cache::{decode_entry, encode_entry, CacheError, Compression, CHUNK_FRAMES};
use replay_hub::clock::SPEED_RANGE;
use replay_hub::encode::{decode_window, window_indices, window_message, EncodedRace};
use replay_hub::frame_guard::{HeaderScanner, Violation};
use replay_hub::race::{
    generate, read_meta, write_race, Frame, GenParams, RaceFileError, RaceMeta, RaceReader,
    Timeline,
};
use replay_hub::session::{CloseReason, Command, Request};

/// Frames in the small race the properties work on: enough for a few seconds of replay.
const SMALL_FRAMES: u32 = 60;

/// A generated race cut down to `count` frames, with a coarser track and no timeline, so its
/// file is a few kilobytes; still valid by every rule a race file must pass.
fn cut_race(count: u32) -> (RaceMeta, Vec<Frame>) {
    let params = GenParams {
        laps: 2,
        drivers: 2,
        seed: 11,
        id: "fuzz".into(),
        name: "Fuzz".into(),
    };
    let (mut meta, all) = generate(&params, |_, _| {}).unwrap();
    let frames: Vec<Frame> = all.into_iter().take(count as usize).collect();
    assert_eq!(frames.len(), count as usize, "the race is long enough");
    meta.total_frames = frames.len() as u32;
    meta.timeline = Timeline::default();
    let last_t = frames.last().unwrap().t;
    meta.track_status.retain(|iv| iv.start_t <= last_t);
    let every = |v: &mut Vec<f32>| *v = v.iter().step_by(16).copied().collect();
    let track = &mut meta.track;
    for v in [
        &mut track.centre_x,
        &mut track.centre_y,
        &mut track.inner_x,
        &mut track.inner_y,
        &mut track.outer_x,
        &mut track.outer_y,
    ] {
        every(v);
    }
    track.sector = track.sector.iter().step_by(16).copied().collect();
    (meta, frames)
}

fn small_race() -> &'static (RaceMeta, Vec<Frame>) {
    static RACE: OnceLock<(RaceMeta, Vec<Frame>)> = OnceLock::new();
    RACE.get_or_init(|| cut_race(SMALL_FRAMES))
}

fn race_file_bytes(meta: &RaceMeta, frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    write_race(&mut out, meta, frames.iter().cloned()).unwrap();
    out
}

fn small_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let (meta, frames) = small_race();
        race_file_bytes(meta, frames)
    })
}

fn encoded(meta: &RaceMeta, frames: &[Frame]) -> EncodedRace {
    EncodedRace::build(meta.clone(), frames.iter().cloned().map(Ok::<_, ()>)).unwrap()
}

fn small_encoded() -> &'static EncodedRace {
    static RACE: OnceLock<EncodedRace> = OnceLock::new();
    RACE.get_or_init(|| {
        let (meta, frames) = small_race();
        encoded(meta, frames)
    })
}

/// Everything a race file reader makes of `bytes`: the metadata and every frame, or the first
/// error. Checks on the way that the reader stops at its first error.
fn read_all(bytes: &[u8]) -> Result<(RaceMeta, Vec<Frame>), RaceFileError> {
    let listed = read_meta(bytes);
    let reader = RaceReader::new(bytes)?;
    assert_eq!(
        listed.as_ref().ok(),
        Some(reader.meta()),
        "a file the reader opens also lists, with the same metadata"
    );
    let meta = reader.meta().clone();
    let mut frames = Vec::new();
    let mut items = reader;
    for item in items.by_ref() {
        match item {
            Ok(frame) => frames.push(frame),
            Err(err) => {
                assert!(items.next().is_none(), "the reader stops after an error");
                return Err(err);
            }
        }
    }
    Ok((meta, frames))
}

/// A damaged copy of `bytes`.
#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte (at a position modulo the length) with a non-zero mask.
    Flip(usize, u8),
    /// Keep only the first bytes.
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize, usize),
    /// Overwrite four bytes with a big-endian number: a length or count.
    Number(usize, u32),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Insert(at, b)),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Damage::Remove(at, n)),
        (any::<usize>(), any::<u32>()).prop_map(|(at, n)| Damage::Number(at, n)),
    ]
}

fn apply(bytes: &[u8], damage: &Damage) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.is_empty() {
        return out;
    }
    let len = out.len();
    match *damage {
        Damage::Flip(at, mask) => out[at % len] ^= mask,
        Damage::Truncate(at) => out.truncate(at % len),
        Damage::Insert(at, b) => out.insert(at % (len + 1), b),
        Damage::Remove(at, n) => {
            let at = at % len;
            out.drain(at..(at + n).min(len));
        }
        Damage::Number(at, n) => {
            let at = at % len.saturating_sub(3).max(1);
            let end = (at + 4).min(len);
            out[at..end].copy_from_slice(&n.to_be_bytes()[..end - at]);
        }
    }
    out
}

fn race_error_is_explained(err: &RaceFileError) {
    assert!(!err.to_string().is_empty());
}

fn cache_error_is_corrupt(err: &CacheError) {
    assert!(
        matches!(err, CacheError::Corrupt { .. }),
        "pure decoding only finds damage: {err}"
    );
    assert!(!err.to_string().is_empty());
}

/// A cache entry's values, with chunks as `decode_entry` takes them.
struct Entry {
    manifest: Vec<u8>,
    meta: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

impl Entry {
    fn of(race: &EncodedRace, compression: Compression) -> Self {
        let values = encode_entry(race, compression, "e1-seed").unwrap();
        Self {
            manifest: values.manifest.to_vec(),
            meta: values.meta.to_vec(),
            chunks: values.chunks.iter().map(|c| c.to_vec()).collect(),
        }
    }

    fn decode(&self, max_bytes: u64) -> Result<Option<EncodedRace>, CacheError> {
        let chunks: Vec<Option<Bytes>> = self
            .chunks
            .iter()
            .map(|c| Some(Bytes::copy_from_slice(c)))
            .collect();
        decode_entry("fuzz", None, &self.manifest, &self.meta, &chunks, max_bytes)
    }
}

fn same_race(a: &EncodedRace, b: &EncodedRace) -> bool {
    *a.meta == *b.meta
        && a.total_frames() == b.total_frames()
        && (0..a.total_frames()).all(|i| a.frame(i) == b.frame(i))
}

/// Which part of a cache entry a damage hits.
#[derive(Debug, Clone, Copy)]
enum Part {
    Manifest,
    Meta,
    Chunk,
}

/// A frame header as a client sends it; the payload is zeros, and is not sent when the header
/// declares more than `MAX_SENT` bytes.
#[derive(Debug, Clone)]
struct WsFrame {
    first: u8,
    masked: bool,
    len: u64,
    /// 0: shortest length encoding; 1: 16-bit; 2: 64-bit (when the length fits).
    encoding: u8,
}

const MAX_SENT: u64 = 600;

fn ws_frame() -> impl Strategy<Value = WsFrame> {
    let len = prop_oneof![
        6 => 0..200u64,
        2 => 200..=MAX_SENT,
        1 => any::<u64>(),
        1 => Just(u64::MAX >> 1),
        1 => Just(1u64 << 63),
    ];
    // Mostly well-formed opcodes and no reserved bits, sometimes anything.
    let first = prop_oneof![
        8 => (any::<bool>(), prop_oneof![Just(0u8), Just(1), Just(2), Just(8), Just(9), Just(10)])
            .prop_map(|(fin, op)| (u8::from(fin) << 7) | op),
        1 => any::<u8>(),
    ];
    (first, any::<bool>(), len, 0..3u8).prop_map(|(first, masked, len, encoding)| WsFrame {
        first,
        masked,
        len,
        encoding,
    })
}

impl WsFrame {
    fn bytes(&self, out: &mut Vec<u8>) {
        out.push(self.first);
        let mask = if self.masked { 0x80 } else { 0 };
        let wide = self.len > u64::from(u16::MAX) || self.encoding == 2;
        if wide {
            out.push(mask | 127);
            out.extend_from_slice(&self.len.to_be_bytes());
        } else if self.len >= 126 || self.encoding == 1 {
            out.push(mask | 126);
            out.extend_from_slice(&(self.len as u16).to_be_bytes());
        } else {
            out.push(mask | self.len as u8);
        }
        if self.masked {
            out.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        }
        if self.len <= MAX_SENT {
            out.resize(out.len() + self.len as usize, 0);
        }
    }
}

/// A plain reading of RFC 6455 §5.2 over the whole byte stream at once: the verdict the hub's
/// incremental scanner must reach however the stream is cut.
fn reference_verdict(bytes: &[u8], limit: usize) -> Result<(), Violation> {
    let mut at = 0usize;
    let mut message = 0u64;
    while at + 2 <= bytes.len() {
        let (b0, b1) = (bytes[at], bytes[at + 1]);
        let (ext, len) = match b1 & 0x7f {
            126 => match bytes.get(at + 2..at + 4) {
                Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
                None => return Ok(()),
            },
            127 => match bytes.get(at + 2..at + 10) {
                Some(b) => (8, u64::from_be_bytes(b.try_into().unwrap())),
                None => return Ok(()),
            },
            short => (0, u64::from(short)),
        };
        let header = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
        if at + header > bytes.len() {
            return Ok(());
        }
        if b0 & 0x70 != 0 {
            return Err(Violation::ReservedBits);
        }
        if len >= 1 << 63 {
            return Err(Violation::BadLength);
        }
        let opcode = b0 & 0x0f;
        if opcode >= 8 {
            if len > limit as u64 {
                return Err(Violation::TooBig {
                    declared: len,
                    limit,
                });
            }
        } else {
            message = if opcode == 0 {
                message.saturating_add(len)
            } else {
                len
            };
            if message > limit as u64 {
                return Err(Violation::TooBig {
                    declared: message,
                    limit,
                });
            }
            if b0 & 0x80 != 0 {
                message = 0;
            }
        }
        let Some(next) = (at + header).checked_add(len as usize) else {
            return Ok(());
        };
        at = next;
    }
    Ok(())
}

/// A JSON value of the kinds a command's fields hold, including ones no command accepts.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        (-1e6..1e7f64).prop_map(|f| json!(f)),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        (0u32..200_000).prop_map(|i| json!(i)),
        prop_oneof![
            Just(0.0f64),
            Just(0.25),
            Just(16.0),
            Just(16.000001),
            Just(-0.0)
        ]
        .prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::String),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!([1, 2])),
        Just(json!({"a": 1})),
    ]
}

fn command_text() -> impl Strategy<Value = String> {
    let names = prop_oneof![
        Just("play".to_owned()),
        Just("pause".to_owned()),
        Just("seek".to_owned()),
        Just("speed".to_owned()),
        Just("time".to_owned()),
        Just("auth".to_owned()),
        "[a-z]{0,6}",
    ];
    let fields = proptest::collection::vec(
        (
            prop_oneof![
                Just("frame".to_owned()),
                Just("t".to_owned()),
                Just("value".to_owned()),
                Just("t0".to_owned()),
                Just("cmd".to_owned()),
                Just("token".to_owned()),
                "[a-z]{1,4}",
            ],
            json_value(),
        ),
        0..4,
    );
    prop_oneof![
        4 => (names, fields).prop_map(|(name, fields)| {
            let mut object = serde_json::Map::new();
            object.insert("cmd".into(), serde_json::Value::String(name));
            for (key, value) in fields {
                object.insert(key, value);
            }
            serde_json::Value::Object(object).to_string()
        }),
        1 => ".{0,40}",
        1 => json_value().prop_map(|v| v.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_never_a_race(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let err = read_all(&bytes).expect_err("random bytes are not a race file");
        race_error_is_explained(&err);
        if let Err(err) = read_meta(&bytes[..]) {
            race_error_is_explained(&err);
        }
    }

    #[test]
    fn a_file_with_a_valid_head_and_arbitrary_frames_is_refused(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        keep in 0usize..4096,
    ) {
        let file = small_file();
        let head = (keep % file.len()).max(1);
        let mut bytes = file[..head].to_vec();
        bytes.extend_from_slice(&tail);
        match read_all(&bytes) {
            Ok((meta, frames)) => {
                // Only the original, whole again, reads.
                prop_assert_eq!(&bytes[..], file);
                prop_assert_eq!((&meta, &frames), (&small_race().0, &small_race().1));
            }
            Err(err) => race_error_is_explained(&err),
        }
    }

    #[test]
    fn a_damaged_race_file_reads_identically_or_is_refused(damage in damage()) {
        let original = small_file();
        let bytes = apply(original, &damage);
        match read_all(&bytes) {
            Ok((meta, frames)) => {
                prop_assert_eq!(&meta, &small_race().0, "damage read as other metadata");
                prop_assert_eq!(&frames, &small_race().1, "damage read as other frames");
            }
            Err(err) => race_error_is_explained(&err),
        }
    }

    #[test]
    fn arbitrary_cache_values_are_never_a_race(
        manifest in proptest::collection::vec(any::<u8>(), 0..128),
        meta in proptest::collection::vec(any::<u8>(), 0..128),
        chunk in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let chunks = [Some(Bytes::from(chunk))];
        match decode_entry("fuzz", None, &manifest, &meta, &chunks, 1 << 20) {
            Ok(None) => {}
            Ok(Some(race)) => prop_assert!(false, "random values decoded as {}", race.id()),
            Err(err) => cache_error_is_corrupt(&err),
        }
        // Valid metadata, random manifest and chunk.
        let entry = Entry::of(small_encoded(), Compression::None);
        if let Err(err) = decode_entry("fuzz", None, &manifest, &entry.meta, &chunks, 1 << 20) {
            cache_error_is_corrupt(&err);
        }
    }

    #[test]
    fn a_damaged_cache_entry_reads_identically_or_is_refused(
        zstd in any::<bool>(),
        part in prop_oneof![Just(Part::Manifest), Just(Part::Meta), Just(Part::Chunk)],
        damage in damage(),
    ) {
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let original = small_encoded();
        let mut entry = Entry::of(original, compression);
        let target = match part {
            Part::Manifest => &mut entry.manifest,
            Part::Meta => &mut entry.meta,
            Part::Chunk => &mut entry.chunks[0],
        };
        *target = apply(target, &damage);
        match entry.decode(1 << 20) {
            // A manifest damaged into another encoding version is a miss, as for any such entry.
            Ok(None) => prop_assert!(matches!(part, Part::Manifest)),
            Ok(Some(race)) => prop_assert!(same_race(&race, original), "damage read as another race"),
            Err(err) => cache_error_is_corrupt(&err),
        }
    }

    #[test]
    fn header_scanner_agrees_with_the_reference_however_the_stream_is_cut(
        frames in proptest::collection::vec(ws_frame(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        limit in prop_oneof![Just(125usize), Just(1024), Just(64 << 10), 0usize..2000],
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            frame.bytes(&mut bytes);
        }
        let expected = reference_verdict(&bytes, limit);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut scanner = HeaderScanner::new(limit);
        let verdict = points
            .windows(2)
            .try_for_each(|w| scanner.scan(&bytes[w[0]..w[1]]));
        prop_assert_eq!(verdict, expected);
        if let Err(violation) = verdict {
            prop_assert!(matches!(CloseReason::Guard(violation).code(), 1002 | 1009));
        }
    }

    #[test]
    fn commands_never_panic_and_what_is_accepted_is_in_range(
        text in command_text(),
        total_frames in prop_oneof![Just(0u32), Just(1), 2u32..200_000, Just(u32::MAX)],
    ) {
        let parsed = Request::parse(&text, total_frames);
        let value: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |key: &str| value.as_ref().and_then(|v| v.get(key)).and_then(|v| v.as_f64());
        match parsed {
            Ok(Request::Control(Command::Seek(frame))) => {
                let last = total_frames.saturating_sub(1);
                prop_assert!(frame <= last, "seek to {frame} past the last frame {last}");
                if let Some(asked) = field("frame") {
                    prop_assert_eq!(f64::from(frame), asked);
                }
            }
            Ok(Request::Control(Command::Speed(speed))) => {
                prop_assert!((SPEED_RANGE.0..=SPEED_RANGE.1).contains(&speed));
                prop_assert_eq!(Some(speed), field("value"));
            }
            Ok(Request::Time { t0 }) => {
                prop_assert!(t0.is_finite());
                prop_assert_eq!(Some(t0), field("t0"));
            }
            Ok(Request::Control(Command::Play | Command::Pause)) => {
                let name = value.as_ref().and_then(|v| v.get("cmd")).and_then(|v| v.as_str());
                prop_assert!(matches!(name, Some("play" | "pause")));
            }
            Ok(Request::Auth { token }) => {
                let given = value.as_ref().and_then(|v| v.get("token")).and_then(|v| v.as_str());
                prop_assert_eq!(Some(token.as_str()), given);
            }
            Err(err) => {
                prop_assert!(matches!(
                    err.code.as_str(),
                    "bad_json" | "bad_command" | "bad_argument" | "out_of_range" | "unknown_command"
                ));
                prop_assert!(!err.message.is_empty());
            }
        }
    }

    #[test]
    fn a_whole_seek_in_range_is_accepted(total_frames in 1u32..1_000_000, pick in any::<u32>()) {
        let frame = pick % total_frames;
        let text = format!(r#"{{"cmd":"seek","frame":{frame}}}"#);
        prop_assert_eq!(
            Request::parse(&text, total_frames),
            Ok(Request::Control(Command::Seek(frame)))
        );
    }

    #[test]
    fn windows_decode_to_what_was_sent_and_garbage_is_an_error(
        epoch in any::<u64>(),
        picks in proptest::collection::vec(0..SMALL_FRAMES, 0..8),
        garbage in proptest::collection::vec(any::<u8>(), 0..256),
        damage in damage(),
    ) {
        let race = small_encoded();
        let bytes = window_message(race, epoch, &picks);
        prop_assert_eq!(window_indices(&bytes), Some((epoch, picks.clone())));
        let window = decode_window(&bytes).unwrap();
        prop_assert_eq!(window.epoch, epoch);
        prop_assert_eq!(&window.indices, &picks);
        let frames: Vec<u32> = window.frames.iter().map(|f| f.i).collect();
        prop_assert_eq!(&frames, &picks);
        // Garbage and damaged windows: an error or a value, never a panic, and the quick reader
        // agrees with the full decoder when both accept the bytes.
        for bytes in [garbage, apply(&bytes, &damage)] {
            if let (Ok(window), Some((epoch, indices))) =
                (decode_window(&bytes), window_indices(&bytes))
            {
                prop_assert_eq!(window.epoch, epoch);
                prop_assert_eq!(window.indices, indices);
            }
        }
    }
}

/// The cut-down race is valid and round-trips, so the properties above start from a real race.
#[test]
fn the_small_race_is_a_valid_race() {
    let (meta, frames) = small_race();
    assert_eq!(meta.total_frames, SMALL_FRAMES);
    let (read_meta, read_frames) = read_all(small_file()).unwrap();
    assert_eq!(&read_meta, meta);
    assert_eq!(&read_frames, frames);
    assert!(
        small_file().len() < 32 << 10,
        "{} bytes",
        small_file().len()
    );
    for compression in [Compression::None, Compression::Zstd] {
        let race = Entry::of(small_encoded(), compression)
            .decode(1 << 20)
            .unwrap();
        assert!(same_race(&race.unwrap(), small_encoded()));
    }
}

/// Writes the fuzz targets' seed corpus under fuzz/seeds/ (see fuzz/README.md):
/// `cargo test --test it properties::write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand when the formats change"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let tiny = cut_race(3);
    write("race_file", "small-60-frames", small_file());
    write(
        "race_file",
        "tiny-3-frames",
        &race_file_bytes(&tiny.0, &tiny.1),
    );

    // Two chunks, so the chunk boundary is exercised too.
    let long = cut_race(CHUNK_FRAMES + 5);
    let entry_input = |race: &EncodedRace, compression, flags: u8| {
        let entry = Entry::of(race, compression);
        let mut out = vec![flags];
        for section in [&entry.manifest, &entry.meta]
            .into_iter()
            .chain(&entry.chunks)
        {
            out.extend_from_slice(&(section.len() as u32).to_le_bytes());
            out.extend_from_slice(section);
        }
        out
    };
    let tiny_encoded = encoded(&tiny.0, &tiny.1);
    write(
        "cache_entry",
        "small-plain",
        &entry_input(small_encoded(), Compression::None, 1),
    );
    write(
        "cache_entry",
        "small-zstd",
        &entry_input(small_encoded(), Compression::Zstd, 0),
    );
    write(
        "cache_entry",
        "tiny-plain",
        &entry_input(&tiny_encoded, Compression::None, 0),
    );
    write(
        "cache_entry",
        "two-chunks-zstd",
        &entry_input(&encoded(&long.0, &long.1), Compression::Zstd, 0),
    );

    let ws = |limit_byte: u8, cut: u8, total: u32, body: &[u8]| {
        let mut out = vec![limit_byte, cut];
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(body);
        out
    };
    let commands = [
        r#"{"cmd":"play"}"#,
        r#"{"cmd":"pause"}"#,
        r#"{"cmd":"seek","frame":1200}"#,
        r#"{"cmd":"seek","t":48.5}"#,
        r#"{"cmd":"speed","value":4}"#,
        r#"{"cmd":"time","t0":1712345678901.5}"#,
    ];
    for (n, command) in commands.iter().enumerate() {
        write(
            "ws_input",
            &format!("command-{n}"),
            &ws(6, 3, 28_191, command.as_bytes()),
        );
    }
    // A masked text frame, a fragmented message with a ping between, a 64-bit length.
    let mut stream = Vec::new();
    for frame in [
        WsFrame {
            first: 0x81,
            masked: true,
            len: 14,
            encoding: 0,
        },
        WsFrame {
            first: 0x01,
            masked: true,
            len: 300,
            encoding: 1,
        },
        WsFrame {
            first: 0x89,
            masked: true,
            len: 4,
            encoding: 0,
        },
        WsFrame {
            first: 0x80,
            masked: true,
            len: 70,
            encoding: 2,
        },
    ] {
        frame.bytes(&mut stream);
    }
    write("ws_input", "frames", &ws(6, 17, 100, &stream));

    write(
        "window",
        "window-3",
        &window_message(small_encoded(), 7, &[0, 1, 2]),
    );
    write(
        "window",
        "window-empty",
        &window_message(small_encoded(), 0, &[]),
    );
    write("window", "frame-0", &small_encoded().frame(0).unwrap());
    write(
        "window",
        "frame-last",
        &small_encoded().frame(SMALL_FRAMES - 1).unwrap(),
    );
}

/// Found by `a_damaged_cache_entry_reads_identically_or_is_refused`: metadata has no checksum
/// of its own, so one flipped bit in the race's name decoded as valid metadata and the damaged
/// entry loaded as another race. The manifest now holds the metadata's CRC-32.
#[test]
fn cached_metadata_damaged_into_other_valid_metadata_is_refused() {
    let mut entry = Entry::of(small_encoded(), Compression::Zstd);
    let at = entry
        .meta
        .windows(4)
        .position(|w| w == b"Fuzz")
        .expect("the name is stored");
    entry.meta[at + 3] ^= 0x01;
    let Err(err) = entry.decode(1 << 20) else {
        panic!("damaged metadata is refused");
    };
    assert!(
        matches!(&err, CacheError::Corrupt { key, reason } if key == "meta" && reason.contains("checksum")),
        "{err}"
    );
}

/// Found by fuzzing `race_file` (its input is kept as fuzz/seeds/race_file/regression-nan-track):
/// a track coordinate of NaN or infinity passed the metadata rules, and viewers would have been
/// sent it (JSON writes NaN as null). Non-finite coordinates and bounds are now refused.
#[test]
fn a_track_coordinate_that_is_not_finite_is_refused() {
    let found = include_bytes!("../../fuzz/seeds/race_file/regression-nan-track");
    let err = read_meta(&found[..]).expect_err("the fuzzer's input is refused");
    assert!(
        matches!(&err, RaceFileError::Invalid(m) if m.contains("inner_x[11]") && m.contains("finite")),
        "{err}"
    );
    let (meta, _) = small_race();
    let mut needle = vec![0xca];
    needle.extend_from_slice(&meta.track.centre_y[4].to_be_bytes());
    let file = small_file();
    let at = file
        .windows(5)
        .position(|w| w == needle)
        .expect("the coordinate is stored as a msgpack f32");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bytes = file.to_vec();
        bytes[at + 1..at + 5].copy_from_slice(&bad.to_be_bytes());
        let err = read_meta(&bytes[..]).expect_err("a coordinate that is not finite is refused");
        assert!(
            matches!(&err, RaceFileError::Invalid(m) if m.contains("centre_y[4]")),
            "{err}"
        );
        assert!(RaceReader::new(&bytes[..]).is_err());
    }
}
