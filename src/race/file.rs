//! The `.race` file: header, msgpack metadata, streamed msgpack frames, checksummed trailer.
//! The server lists races with [`read_meta`] and streams frames with [`RaceReader`]; the
//! generator CLI and exporters write files with [`write_race`]. Layout: docs/RACE_FORMAT.md.

use super::model::{Frame, RaceMeta, DRIVER_FIELDS, FPS, MAX_TOTAL_FRAMES};
use serde::Deserialize;
use std::io::{self, BufReader, BufWriter, Read, Write};

/// Bumped on any incompatible layout change; the writer writes this version.
/// Version 2 added the timeline (events and weather) as the metadata's last field.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest version readers still accept: version 1 files read with an empty timeline.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// First 8 bytes of every race file.
pub const MAGIC: [u8; 8] = *b"F1REPLAY";
/// First 8 bytes of the trailer, right after the last frame.
pub const END_MAGIC: [u8; 8] = *b"F1RPLEND";

/// Magic + u16 version + u32 metadata length.
const HEADER_LEN: usize = 14;
/// End magic + u32 frame count + u32 CRC-32.
const TRAILER_LEN: usize = 16;
/// Guards against allocating for a corrupted length; real metadata is tens of KB.
pub const MAX_META_LEN: u32 = 16 << 20;
/// msgpack array32 marker, used for the frame array header.
const ARRAY32: u8 = 0xdd;
const IO_BUF: usize = 64 << 10;

/// Everything that can be wrong with a race file, each with a message naming the problem.
#[derive(thiserror::Error, Debug)]
pub enum RaceFileError {
    #[error("race file I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a race file: expected magic \"F1REPLAY\", found \"{}\"", escape(.found))]
    NotARaceFile { found: Vec<u8> },
    #[error("unsupported race file version {found} (this build reads versions 1 to {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("truncated race file: {0}")]
    Truncated(Truncation),
    #[error("malformed race file{}: {reason}", at_frame(*.frame))]
    Malformed { frame: Option<u32>, reason: String },
    #[error("corrupted race file: checksum mismatch (trailer says {stored:08x}, content hashes to {computed:08x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("trailing garbage: {bytes} unexpected byte(s) after the race file trailer")]
    TrailingData { bytes: u64 },
    /// The metadata is inconsistent, or `write_race` was given data it cannot store.
    #[error("invalid race: {0}")]
    Invalid(String),
}

/// Where a file ended early; tells a partial copy from a damaged one.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    #[error("file ends after {found} of the 14 header bytes")]
    Header { found: usize },
    #[error("metadata block is {expected} bytes but the file ends after {found}")]
    Meta { expected: u32, found: u64 },
    #[error("expected {expected} frames, found {found}")]
    Frames { expected: u32, found: u32 },
    #[error("file ends after {found} of the 16 trailer bytes")]
    Trailer { found: usize },
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn at_frame(frame: Option<u32>) -> String {
    match frame {
        Some(i) => format!(" at frame {i}"),
        None => String::new(),
    }
}

/// CRC-32 (IEEE, as zlib/`binascii.crc32`) catches corruption, and every language has it.
type Crc32 = crc32fast::Hasher;

/// Hashes every byte consumed and remembers whether the source ran dry.
struct HashingReader<R> {
    inner: R,
    hash: Crc32,
    eof: bool,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Crc32,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Checks the metadata rules of docs/RACE_FORMAT.md; the message names the first violation.
fn validate_meta(meta: &RaceMeta) -> Result<(), String> {
    if let Err(err) = crate::ids::RaceId::parse(meta.id.as_str()) {
        return Err(err.to_string());
    }
    if meta.fps != FPS {
        return Err(format!("fps is {}, must be {FPS}", meta.fps));
    }
    if meta.fields != DRIVER_FIELDS {
        return Err(format!(
            "fields {:?} do not match the driver fields {DRIVER_FIELDS:?}",
            meta.fields
        ));
    }
    if meta.total_laps == 0 {
        return Err("total_laps is 0".into());
    }
    if !(1..=MAX_TOTAL_FRAMES).contains(&meta.total_frames) {
        return Err(format!(
            "total_frames is {}, must be 1 to {MAX_TOTAL_FRAMES}",
            meta.total_frames
        ));
    }
    if meta.drivers.is_empty() || meta.drivers.len() > 255 {
        return Err(format!(
            "{} drivers listed, must be 1 to 255",
            meta.drivers.len()
        ));
    }
    for (i, d) in meta.drivers.iter().enumerate() {
        if d.code.len() != 3 || !d.code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "driver {i} code {:?} must be 3 upper-case letters",
                d.code
            ));
        }
        if meta.drivers[..i].iter().any(|o| o.code == d.code) {
            return Err(format!("driver code {:?} appears twice", d.code));
        }
    }
    let tr = &meta.track;
    let n = tr.centre_x.len();
    let lens = [
        ("centre_y", tr.centre_y.len()),
        ("inner_x", tr.inner_x.len()),
        ("inner_y", tr.inner_y.len()),
        ("outer_x", tr.outer_x.len()),
        ("outer_y", tr.outer_y.len()),
        ("sector", tr.sector.len()),
    ];
    if n < 3 {
        return Err(format!("track centreline has {n} points, needs at least 3"));
    }
    if let Some((name, len)) = lens.iter().find(|(_, len)| *len != n) {
        return Err(format!(
            "track {name} has {len} points but centre_x has {n}"
        ));
    }
    let coords = [
        ("centre_x", &tr.centre_x),
        ("centre_y", &tr.centre_y),
        ("inner_x", &tr.inner_x),
        ("inner_y", &tr.inner_y),
        ("outer_x", &tr.outer_x),
        ("outer_y", &tr.outer_y),
    ];
    for (name, values) in coords {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "track {name}[{i}] is {}, not a finite number",
                values[i]
            ));
        }
    }
    if let Some(s) = tr.sector.iter().find(|s| !(1..=3).contains(*s)) {
        return Err(format!("track sector value {s} is not 1, 2 or 3"));
    }
    if !(tr.length_m.is_finite() && tr.length_m > 0.0) {
        return Err(format!("track length_m {} is not positive", tr.length_m));
    }
    let b = &tr.bounds;
    let finite = [b.x_min, b.x_max, b.y_min, b.y_max]
        .iter()
        .all(|v| v.is_finite());
    if !(finite && b.x_min <= b.x_max && b.y_min <= b.y_max) {
        return Err(format!("track bounds {b:?} are empty or not finite"));
    }
    let mut prev_start = f64::NEG_INFINITY;
    for (i, iv) in meta.track_status.iter().enumerate() {
        if !(iv.start_t >= prev_start && iv.start_t <= iv.end_t) {
            return Err(format!(
                "track status interval {i} [{}, {}] is reversed or out of order",
                iv.start_t, iv.end_t
            ));
        }
        prev_start = iv.start_t;
    }
    meta.timeline
        .validate(meta.total_frames, meta.total_laps, &meta.drivers)
        .map_err(|e| format!("timeline: {e}"))
}

/// Fields of the metadata array in each file version: version 2 added the timeline.
fn meta_fields(version: u16) -> u32 {
    if version >= 2 {
        10
    } else {
        9
    }
}

/// Checks metadata read from elsewhere (a cache) by the same rules as a file's.
pub fn check_meta(meta: &RaceMeta) -> Result<(), RaceFileError> {
    validate_meta(meta).map_err(RaceFileError::Invalid)
}

/// Per-frame rules; `prev_t` is the previous frame's time.
fn validate_frame(frame: &Frame, drivers: usize, prev_t: f64) -> Result<(), String> {
    if frame.drivers.len() != drivers {
        return Err(format!(
            "frame has {} driver entries, metadata lists {drivers} drivers",
            frame.drivers.len()
        ));
    }
    if !frame.t.is_finite() || frame.t < prev_t {
        return Err(format!(
            "time t={} goes backwards (previous frame at t={prev_t})",
            frame.t
        ));
    }
    Ok(())
}

/// Reads and checks the header and metadata; leaves `r` at the frame array.
fn read_head(r: &mut impl Read) -> Result<RaceMeta, RaceFileError> {
    let mut head = [0u8; HEADER_LEN];
    let n = read_full(r, &mut head)?;
    let magic_len = n.min(MAGIC.len());
    if head[..magic_len] != MAGIC[..magic_len] {
        return Err(RaceFileError::NotARaceFile {
            found: head[..magic_len].to_vec(),
        });
    }
    if n < HEADER_LEN {
        return Err(RaceFileError::Truncated(Truncation::Header { found: n }));
    }
    let version = u16::from_be_bytes([head[8], head[9]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(RaceFileError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let meta_len = u32::from_be_bytes([head[10], head[11], head[12], head[13]]);
    if meta_len > MAX_META_LEN {
        return Err(RaceFileError::Malformed {
            frame: None,
            reason: format!("metadata length {meta_len} exceeds the {MAX_META_LEN} byte limit"),
        });
    }
    let mut bytes = Vec::new();
    r.take(u64::from(meta_len)).read_to_end(&mut bytes)?;
    if bytes.len() < meta_len as usize {
        return Err(RaceFileError::Truncated(Truncation::Meta {
            expected: meta_len,
            found: bytes.len() as u64,
        }));
    }
    let mut rest = &bytes[..];
    let fields = rmp::decode::read_array_len(&mut &bytes[..]).ok();
    if let Some(n) = fields.filter(|&n| n != meta_fields(version)) {
        return Err(RaceFileError::Malformed {
            frame: None,
            reason: format!(
                "metadata has {n} fields, version {version} has {}",
                meta_fields(version)
            ),
        });
    }
    let meta =
        RaceMeta::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).map_err(|e| {
            RaceFileError::Malformed {
                frame: None,
                reason: format!("metadata does not decode: {e}"),
            }
        })?;
    if !rest.is_empty() {
        return Err(RaceFileError::Malformed {
            frame: None,
            reason: format!(
                "metadata block has {} unused byte(s) after the metadata value",
                rest.len()
            ),
        });
    }
    validate_meta(&meta).map_err(RaceFileError::Invalid)?;
    Ok(meta)
}

/// Writes streaming: never needs all frames in memory.
/// `meta.total_frames` must equal the number of frames yielded, since it is written first;
/// a different count is `Invalid`. On error the output is incomplete and should be discarded.
pub fn write_race<W: Write>(
    out: W,
    meta: &RaceMeta,
    frames: impl IntoIterator<Item = Frame>,
) -> Result<(), RaceFileError> {
    validate_meta(meta).map_err(RaceFileError::Invalid)?;
    let meta_bytes = rmp_serde::to_vec(meta)
        .map_err(|e| RaceFileError::Invalid(format!("metadata does not encode: {e}")))?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|&len| len <= MAX_META_LEN)
        .ok_or_else(|| {
            RaceFileError::Invalid(format!(
                "metadata encodes to {} bytes, over the {MAX_META_LEN} byte limit",
                meta_bytes.len()
            ))
        })?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(IO_BUF, out),
        hash: Crc32::new(),
    };
    w.put(&MAGIC)?;
    w.put(&FORMAT_VERSION.to_be_bytes())?;
    w.put(&meta_len.to_be_bytes())?;
    w.put(&meta_bytes)?;
    w.put(&[ARRAY32])?;
    w.put(&meta.total_frames.to_be_bytes())?;

    let mut count: u32 = 0;
    let mut prev_t = f64::NEG_INFINITY;
    let mut buf = Vec::with_capacity(4096);
    for frame in frames {
        if count == meta.total_frames {
            return Err(RaceFileError::Invalid(format!(
                "more frames than meta.total_frames ({})",
                meta.total_frames
            )));
        }
        validate_frame(&frame, meta.drivers.len(), prev_t)
            .map_err(|r| RaceFileError::Invalid(format!("frame {count}: {r}")))?;
        prev_t = frame.t;
        buf.clear();
        rmp_serde::encode::write(&mut buf, &frame)
            .map_err(|e| RaceFileError::Invalid(format!("frame {count} does not encode: {e}")))?;
        w.put(&buf)?;
        count += 1;
    }
    if count != meta.total_frames {
        return Err(RaceFileError::Invalid(format!(
            "got {count} frames but meta.total_frames is {}",
            meta.total_frames
        )));
    }
    let checksum = w.hash.clone().finalize();
    w.put(&END_MAGIC)?;
    w.put(&count.to_be_bytes())?;
    w.put(&checksum.to_be_bytes())?;
    w.inner.flush()?;
    Ok(())
}

/// The checksum stored in a race file's trailer, read without touching the frames: a cheap
/// identity of the file's content (the cache keys encoded frames by it). It does not validate
/// the file; loading does.
pub fn stored_checksum<R: Read + std::io::Seek>(mut input: R) -> Result<u32, RaceFileError> {
    use std::io::SeekFrom;
    let len = input.seek(SeekFrom::End(0))?;
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(RaceFileError::Truncated(Truncation::Trailer {
            found: len.saturating_sub(HEADER_LEN as u64) as usize,
        }));
    }
    input.seek(SeekFrom::End(-(TRAILER_LEN as i64)))?;
    let mut trailer = [0u8; TRAILER_LEN];
    input.read_exact(&mut trailer)?;
    if trailer[..8] != END_MAGIC {
        return Err(RaceFileError::Invalid(
            "no end marker where the trailer should be: truncated or not a race file".into(),
        ));
    }
    Ok(u32::from_be_bytes([
        trailer[12],
        trailer[13],
        trailer[14],
        trailer[15],
    ]))
}

/// Reads only the header and metadata, so listing a directory of races stays cheap.
/// It does not look at the frames, so a file with damaged frames still lists.
pub fn read_meta<R: Read>(mut input: R) -> Result<RaceMeta, RaceFileError> {
    read_head(&mut input)
}

/// Streaming reader: validates header and metadata on construction, then yields frames one
/// at a time so the server never holds a whole decoded race. After the last frame it checks
/// the trailer, checksum and end of input, and yields an error if any is wrong; a short file
/// is always a `Truncated` error, never a silently short race. It stops after the first error.
pub struct RaceReader<R> {
    src: HashingReader<BufReader<R>>,
    meta: RaceMeta,
    next_index: u32,
    prev_t: f64,
    done: bool,
}

impl<R: Read> RaceReader<R> {
    pub fn new(input: R) -> Result<Self, RaceFileError> {
        let mut src = HashingReader {
            inner: BufReader::with_capacity(IO_BUF, input),
            hash: Crc32::new(),
            eof: false,
        };
        let meta = read_head(&mut src)?;
        let count = rmp::decode::read_array_len(&mut src).map_err(|e| {
            if src.eof {
                RaceFileError::Truncated(Truncation::Frames {
                    expected: meta.total_frames,
                    found: 0,
                })
            } else {
                RaceFileError::Malformed {
                    frame: None,
                    reason: format!("frame array header does not decode: {e}"),
                }
            }
        })?;
        if count != meta.total_frames {
            return Err(RaceFileError::Malformed {
                frame: None,
                reason: format!(
                    "frame array holds {count} frames but metadata says {}",
                    meta.total_frames
                ),
            });
        }
        Ok(RaceReader {
            src,
            meta,
            next_index: 0,
            prev_t: f64::NEG_INFINITY,
            done: false,
        })
    }

    pub fn meta(&self) -> &RaceMeta {
        &self.meta
    }

    /// Only the unit tests take the metadata out of a reader.
    #[cfg(test)]
    pub fn into_meta(self) -> RaceMeta {
        self.meta
    }

    fn read_frame(&mut self) -> Result<Frame, RaceFileError> {
        let index = self.next_index;
        let frame =
            Frame::deserialize(&mut rmp_serde::Deserializer::new(&mut self.src)).map_err(|e| {
                if self.src.eof {
                    RaceFileError::Truncated(Truncation::Frames {
                        expected: self.meta.total_frames,
                        found: index,
                    })
                } else {
                    RaceFileError::Malformed {
                        frame: Some(index),
                        reason: format!("frame does not decode: {e}"),
                    }
                }
            })?;
        validate_frame(&frame, self.meta.drivers.len(), self.prev_t).map_err(|reason| {
            RaceFileError::Malformed {
                frame: Some(index),
                reason,
            }
        })?;
        self.prev_t = frame.t;
        self.next_index += 1;
        Ok(frame)
    }

    fn check_trailer(&mut self) -> Result<(), RaceFileError> {
        let computed = self.src.hash.clone().finalize();
        let mut trailer = [0u8; TRAILER_LEN];
        let n = read_full(&mut self.src, &mut trailer)?;
        if n < TRAILER_LEN {
            return Err(RaceFileError::Truncated(Truncation::Trailer { found: n }));
        }
        if trailer[..8] != END_MAGIC {
            return Err(RaceFileError::Malformed {
                frame: None,
                reason: format!(
                    "expected end marker \"F1RPLEND\" after the last frame, found \"{}\"",
                    escape(&trailer[..8])
                ),
            });
        }
        let count = u32::from_be_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
        if count != self.meta.total_frames {
            return Err(RaceFileError::Malformed {
                frame: None,
                reason: format!(
                    "trailer counts {count} frames but metadata says {}",
                    self.meta.total_frames
                ),
            });
        }
        let stored = u32::from_be_bytes([trailer[12], trailer[13], trailer[14], trailer[15]]);
        if stored != computed {
            return Err(RaceFileError::ChecksumMismatch { stored, computed });
        }
        let extra = io::copy(&mut self.src, &mut io::sink())?;
        if extra > 0 {
            return Err(RaceFileError::TrailingData { bytes: extra });
        }
        Ok(())
    }
}

impl<R: Read> Iterator for RaceReader<R> {
    type Item = Result<Frame, RaceFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.next_index == self.meta.total_frames {
            self.done = true;
            return self.check_trailer().err().map(Err);
        }
        let item = self.read_frame();
        self.done = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::generate::{generate, GenParams};
    use crate::race::model::{DriverFrame, DriverStatus};
    use serde::Serialize;
    use std::sync::OnceLock;

    /// A small generated race, shared by the tests (generation is the slow part in debug).
    fn sample() -> &'static (RaceMeta, Vec<Frame>, Vec<u8>) {
        static SAMPLE: OnceLock<(RaceMeta, Vec<Frame>, Vec<u8>)> = OnceLock::new();
        SAMPLE.get_or_init(|| {
            let params = GenParams {
                laps: 2,
                drivers: 6,
                seed: 7,
                id: "file-test".into(),
                name: "File Test GP".into(),
            };
            let (meta, frames) = generate(&params, |_, _| {}).unwrap();
            let mut bytes = Vec::new();
            write_race(&mut bytes, &meta, frames.iter().cloned()).unwrap();
            (meta, frames, bytes)
        })
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, RaceFileError> {
        RaceReader::new(bytes)?.collect()
    }

    /// Offset of the first frame: header + metadata + array32 header.
    fn frames_offset(bytes: &[u8]) -> usize {
        let meta_len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]);
        HEADER_LEN + meta_len as usize + 5
    }

    /// A file whose header claims `total_frames` but that holds no frame at all.
    fn claiming(total_frames: u32) -> Vec<u8> {
        let (meta, _, _) = sample();
        let meta = RaceMeta {
            total_frames,
            ..meta.clone()
        };
        let meta_bytes = rmp_serde::to_vec(&meta).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend(FORMAT_VERSION.to_be_bytes());
        bytes.extend((meta_bytes.len() as u32).to_be_bytes());
        bytes.extend(meta_bytes);
        bytes.push(ARRAY32);
        bytes.extend(total_frames.to_be_bytes());
        bytes
    }

    #[test]
    fn frame_counts_are_bounded_before_anything_is_allocated() {
        for (claimed, expected) in [
            (1_000_000_000, "must be 1 to 1000000"),
            (MAX_TOTAL_FRAMES + 1, "must be 1 to 1000000"),
            (0, "total_frames is 0"),
        ] {
            let err = read_meta(&claiming(claimed)[..]).unwrap_err();
            assert!(matches!(err, RaceFileError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(expected), "{claimed}: {err}");
            assert!(RaceReader::new(&claiming(claimed)[..]).is_err());
        }
        // At the limit the header is fine, and the missing frames are reported as such.
        let err = read_all(&claiming(MAX_TOTAL_FRAMES)).unwrap_err();
        assert!(
            matches!(
                err,
                RaceFileError::Truncated(Truncation::Frames { found: 0, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn crc_matches_zlib() {
        let mut c = Crc32::new();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finalize(), 0xcbf4_3926);
    }

    #[test]
    fn round_trip() {
        let (meta, frames, bytes) = sample();
        let reader = RaceReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.meta(), meta);
        let back: Vec<Frame> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(&back, frames);
        assert_eq!(read_meta(&bytes[..]).unwrap(), *meta);
        assert_eq!(RaceReader::new(&bytes[..]).unwrap().into_meta(), *meta);
    }

    #[test]
    fn read_meta_ignores_frames() {
        let (meta, _, bytes) = sample();
        let cut = &bytes[..frames_offset(bytes) + 100];
        assert_eq!(read_meta(cut).unwrap(), *meta);
        let cut = &bytes[..frames_offset(bytes) - 5];
        assert_eq!(read_meta(cut).unwrap(), *meta);
    }

    #[test]
    fn bad_magic() {
        let (_, _, bytes) = sample();
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(b"PK\x03\x04");
        let err = read_all(&bad).unwrap_err();
        assert!(matches!(err, RaceFileError::NotARaceFile { .. }), "{err}");
        assert!(err.to_string().contains("not a race file"), "{err}");
        assert!(matches!(
            read_meta(&b"{\"json\": 1}"[..]),
            Err(RaceFileError::NotARaceFile { .. })
        ));
    }

    #[test]
    fn wrong_version() {
        let (_, _, bytes) = sample();
        let mut bad = bytes.clone();
        bad[8..10].copy_from_slice(&7u16.to_be_bytes());
        let err = read_all(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                RaceFileError::UnsupportedVersion {
                    found: 7,
                    supported: FORMAT_VERSION
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("version 7"), "{err}");
    }

    #[test]
    fn truncated_in_header() {
        let (_, _, bytes) = sample();
        let err = read_meta(&bytes[..10]).unwrap_err();
        assert!(
            matches!(
                err,
                RaceFileError::Truncated(Truncation::Header { found: 10 })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("truncated race file"), "{err}");
        let err = read_meta(&bytes[..HEADER_LEN + 40]).unwrap_err();
        assert!(
            matches!(
                err,
                RaceFileError::Truncated(Truncation::Meta { found: 40, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("metadata block"), "{err}");
        let err = read_meta(&b""[..]).unwrap_err();
        assert!(matches!(
            err,
            RaceFileError::Truncated(Truncation::Header { found: 0 })
        ));
    }

    #[test]
    fn truncated_mid_frames() {
        let (meta, frames, bytes) = sample();
        // Cut inside the 11th frame: exactly 10 whole frames remain.
        let start = frames_offset(bytes);
        let frame_len = rmp_serde::to_vec(&frames[0]).unwrap().len();
        let cut = &bytes[..start + frame_len * 10 + 3];
        let mut reader = RaceReader::new(cut).unwrap();
        for _ in 0..10 {
            assert!(reader.next().unwrap().is_ok());
        }
        let err = reader.next().unwrap().unwrap_err();
        assert!(reader.next().is_none(), "reader stops after an error");
        let total = meta.total_frames;
        assert!(
            matches!(err, RaceFileError::Truncated(Truncation::Frames { expected, found: 10 }) if expected == total),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("truncated race file: expected {total} frames, found 10")
        );
        // Cut exactly at a frame boundary: still truncated, not a short race.
        let cut = &bytes[..start + frame_len * 3];
        let err = read_all(cut).unwrap_err();
        assert!(matches!(
            err,
            RaceFileError::Truncated(Truncation::Frames { found: 3, .. })
        ));
        // Cut in the trailer.
        let err = read_all(&bytes[..bytes.len() - 6]).unwrap_err();
        assert!(
            matches!(
                err,
                RaceFileError::Truncated(Truncation::Trailer { found: 10 })
            ),
            "{err}"
        );
    }

    #[test]
    fn trailing_garbage_and_corruption() {
        let (_, _, bytes) = sample();
        let mut extra = bytes.clone();
        extra.extend_from_slice(b"junk");
        let err = read_all(&extra).unwrap_err();
        assert!(
            matches!(err, RaceFileError::TrailingData { bytes: 4 }),
            "{err}"
        );
        assert!(err.to_string().contains("trailing garbage"), "{err}");

        // Flip a bit inside a float of some frame: still decodes, but the checksum catches it.
        let mut flipped = bytes.clone();
        // Frame 0 starts with 12 header bytes, then driver 0: 0x9f, 0xca and x as 4 bytes.
        let at = frames_offset(bytes) + 12 + 4;
        flipped[at] ^= 0x01;
        let err = read_all(&flipped).unwrap_err();
        assert!(
            matches!(err, RaceFileError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        let mut bad_end = bytes.clone();
        let end = bad_end.len() - TRAILER_LEN;
        bad_end[end] = b'X';
        let err = read_all(&bad_end).unwrap_err();
        assert!(
            matches!(err, RaceFileError::Malformed { frame: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("end marker"), "{err}");
    }

    /// Re-encodes `meta` into a copy of `bytes` (checksum not updated: meta is checked first).
    fn with_meta(bytes: &[u8], meta: &RaceMeta) -> Vec<u8> {
        let old_len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
        let new_meta = rmp_serde::to_vec(meta).unwrap();
        let mut out = bytes[..10].to_vec();
        out.extend_from_slice(&(new_meta.len() as u32).to_be_bytes());
        out.extend_from_slice(&new_meta);
        out.extend_from_slice(&bytes[HEADER_LEN + old_len..]);
        out
    }

    #[test]
    fn inconsistent_meta() {
        let (meta, frames, bytes) = sample();
        let mut bad = meta.clone();
        bad.fields.swap(0, 1);
        let err = read_meta(&with_meta(bytes, &bad)[..]).unwrap_err();
        assert!(matches!(err, RaceFileError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("fields"), "{err}");
        let err = write_race(Vec::new(), &bad, frames.iter().cloned()).unwrap_err();
        assert!(matches!(err, RaceFileError::Invalid(_)), "{err}");

        let mut bad = meta.clone();
        bad.track.inner_y.pop();
        let err = RaceReader::new(&with_meta(bytes, &bad)[..]).err().unwrap();
        assert!(err.to_string().contains("inner_y"), "{err}");

        let mut bad = meta.clone();
        bad.id = "Has Spaces".into();
        assert!(read_meta(&with_meta(bytes, &bad)[..])
            .unwrap_err()
            .to_string()
            .contains("id"));

        let mut bad = meta.clone();
        bad.fps = 30;
        assert!(read_meta(&with_meta(bytes, &bad)[..])
            .unwrap_err()
            .to_string()
            .contains("fps"));

        // Frame count in the metadata disagrees with the frame array.
        let mut bad = meta.clone();
        bad.total_frames += 1;
        let err = RaceReader::new(&with_meta(bytes, &bad)[..]).err().unwrap();
        assert!(
            matches!(err, RaceFileError::Malformed { frame: None, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("frame array holds"), "{err}");
    }

    /// The metadata as version 1 wrote it: the first 9 fields, no timeline.
    fn v1_file(meta: &RaceMeta, frames: &[Frame]) -> Vec<u8> {
        let v1 = (
            &meta.id,
            &meta.name,
            meta.total_laps,
            meta.fps,
            meta.total_frames,
            &meta.fields,
            &meta.track,
            &meta.drivers,
            &meta.track_status,
        );
        let meta_bytes = rmp_serde::to_vec(&v1).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta_bytes);
        rmp::encode::write_array_len(&mut out, frames.len() as u32).unwrap();
        for f in frames {
            rmp_serde::encode::write(&mut out, f).unwrap();
        }
        let mut h = Crc32::new();
        h.update(&out);
        out.extend_from_slice(&END_MAGIC);
        out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
        out.extend_from_slice(&h.finalize().to_be_bytes());
        out
    }

    #[test]
    fn reads_version_1_files_with_an_empty_timeline() {
        let (meta, frames, bytes) = sample();
        assert_eq!(&bytes[8..10], &FORMAT_VERSION.to_be_bytes());
        assert!(
            !meta.timeline.events.is_empty(),
            "generated races have events"
        );
        let old = v1_file(meta, frames);
        let reader = RaceReader::new(&old[..]).unwrap();
        let read = reader.meta().clone();
        assert!(read.timeline.is_empty());
        assert_eq!(
            RaceMeta {
                timeline: meta.timeline.clone(),
                ..read
            },
            *meta
        );
        let back: Vec<Frame> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(&back, frames);

        // Each version has its own number of metadata fields.
        let mut mislabelled = old.clone();
        mislabelled[8..10].copy_from_slice(&2u16.to_be_bytes());
        let err = read_meta(&mislabelled[..]).unwrap_err();
        assert!(
            err.to_string()
                .contains("metadata has 9 fields, version 2 has 10"),
            "{err}"
        );
        let mut mislabelled = bytes.clone();
        mislabelled[8..10].copy_from_slice(&1u16.to_be_bytes());
        let err = read_meta(&mislabelled[..]).unwrap_err();
        assert!(err.to_string().contains("version 1 has 9"), "{err}");
    }

    #[test]
    fn refuses_a_timeline_that_breaks_the_rules() {
        let (meta, frames, bytes) = sample();
        let mut bad = meta.clone();
        bad.timeline.events[1].frame = meta.total_frames;
        let err = write_race(Vec::new(), &bad, frames.iter().cloned()).unwrap_err();
        assert!(matches!(err, RaceFileError::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains("timeline: event 1: frame"),
            "{err}"
        );
        let err = read_meta(&with_meta(bytes, &bad)[..]).unwrap_err();
        assert!(err.to_string().contains("timeline: event 1"), "{err}");

        let mut bad = meta.clone();
        bad.timeline.events.swap(1, 2);
        bad.timeline.events[1].frame += 1;
        let err = read_meta(&with_meta(bytes, &bad)[..]).unwrap_err();
        assert!(err.to_string().contains("before the previous"), "{err}");

        let mut bad = meta.clone();
        bad.timeline.weather[0].frame = u32::MAX;
        let err = read_meta(&with_meta(bytes, &bad)[..]).unwrap_err();
        assert!(err.to_string().contains("weather sample 0"), "{err}");
    }

    #[test]
    fn frame_with_wrong_driver_count() {
        let (meta, frames, _) = sample();
        let mut bad = frames.clone();
        bad[5].drivers.pop();
        // The writer refuses it...
        let err = write_race(Vec::new(), meta, bad.iter().cloned()).unwrap_err();
        assert!(matches!(err, RaceFileError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("frame 5"), "{err}");
        // ...and the reader rejects a file that has it anyway.
        let bytes = raw_file(meta, &bad);
        let mut reader = RaceReader::new(&bytes[..]).unwrap();
        let err = reader.find_map(Result::err).unwrap();
        assert!(
            matches!(err, RaceFileError::Malformed { frame: Some(5), .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at frame 5"), "{err}");
        assert!(err.to_string().contains("driver entries"), "{err}");
    }

    #[test]
    fn writer_checks_frame_count_and_time() {
        let (meta, frames, _) = sample();
        let short = frames[..frames.len() - 1].iter().cloned();
        let err = write_race(Vec::new(), meta, short).unwrap_err();
        assert!(err.to_string().contains("total_frames"), "{err}");
        let long = frames.iter().cloned().chain(frames.last().cloned());
        let err = write_race(Vec::new(), meta, long).unwrap_err();
        assert!(err.to_string().contains("more frames"), "{err}");
        let mut back = frames.clone();
        back[3].t = -1.0;
        let err = write_race(Vec::new(), meta, back).unwrap_err();
        assert!(err.to_string().contains("backwards"), "{err}");
    }

    /// Encodes a file the way an external exporter would, with values the writer refuses.
    fn raw_file<F: Serialize>(meta: &RaceMeta, frames: &[F]) -> Vec<u8> {
        let meta_bytes = rmp_serde::to_vec(meta).unwrap();
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&meta_bytes);
        // A compact array header, as msgpack libraries write it, is accepted too.
        rmp::encode::write_array_len(&mut out, frames.len() as u32).unwrap();
        for f in frames {
            rmp_serde::encode::write(&mut out, f).unwrap();
        }
        let mut h = Crc32::new();
        h.update(&out);
        out.extend_from_slice(&END_MAGIC);
        out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
        out.extend_from_slice(&h.finalize().to_be_bytes());
        out
    }

    #[test]
    fn accepts_float64_values_from_other_encoders() {
        // Python's msgpack writes float64 by default; the reader narrows them to f32.
        #[derive(Serialize)]
        struct WideFrame(f64, u16, Vec<[f64; 15]>);
        let (meta, frames, _) = sample();
        let wide: Vec<WideFrame> = frames
            .iter()
            .map(|f| {
                let ds = f.drivers.iter().map(|d: &DriverFrame| {
                    [
                        d.x.into(),
                        d.y.into(),
                        d.speed.into(),
                        d.gear.into(),
                        d.throttle.into(),
                        d.brake.into(),
                        d.drs.into(),
                        d.lap.into(),
                        d.position.into(),
                        d.tyre.into(),
                        d.dist.into(),
                        d.rel_dist.into(),
                        d.gap_to_leader.into(),
                        d.gap_to_previous.into(),
                        u8::from(d.status).into(),
                    ]
                });
                WideFrame(f.t, f.lap, ds.collect())
            })
            .collect();
        let bytes = raw_file(meta, &wide);
        // Integer fields written as floats are rejected with a frame index...
        let err = read_all(&bytes).unwrap_err();
        assert!(
            matches!(err, RaceFileError::Malformed { frame: Some(0), .. }),
            "{err}"
        );
        // ...while floats as float64 and integers as integers are fine.
        type WideDriver = (
            f64,
            f64,
            f64,
            u8,
            f64,
            f64,
            u8,
            u16,
            u8,
            i8,
            f64,
            f64,
            f64,
            f64,
            u8,
        );
        #[derive(Serialize)]
        struct Mixed(f64, u16, Vec<WideDriver>);
        let mixed: Vec<Mixed> = frames
            .iter()
            .map(|f| {
                let ds = f.drivers.iter().map(|d| {
                    (
                        d.x.into(),
                        d.y.into(),
                        d.speed.into(),
                        d.gear,
                        d.throttle.into(),
                        d.brake.into(),
                        d.drs,
                        d.lap,
                        d.position,
                        d.tyre,
                        d.dist.into(),
                        d.rel_dist.into(),
                        d.gap_to_leader.into(),
                        d.gap_to_previous.into(),
                        u8::from(d.status),
                    )
                });
                Mixed(f.t, f.lap, ds.collect())
            })
            .collect();
        let back = read_all(&raw_file(meta, &mixed)).unwrap();
        assert_eq!(&back, frames);
        assert!(back
            .iter()
            .any(|f| f.drivers.iter().any(|d| d.status == DriverStatus::Pit)));
    }
}
