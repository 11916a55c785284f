//! Compact look-ahead windows (`qdelta1`): quantised, delta-coded by column, deflated once.
//!
//! A session builds each window once per encoding its viewers asked for ([`crate::session`]);
//! this module turns the window's frames into the `qdelta1` message and back. The browser's
//! worker decodes the same format (`web/src/codec.js`), and the load tool reads its header.
//! docs/PROTOCOL.md ("Compact windows") specifies it byte by byte.
//!
//! Every value is quantised to a fixed step (1 cm, 0.1 km/h, 1 ms, ...: [`QUANTA`]), so it is an
//! integer. The window is laid out column by column (all frames of one value of one car in a
//! row), the first frame whole and the others as first, second or third differences, whichever
//! is shortest for that column, written as zigzag LEB128 varints: smooth telemetry becomes runs of
//! small numbers that deflate well. The columns are compressed with raw deflate, which browsers
//! decode natively (`DecompressionStream("deflate-raw")`).

use std::io::{Read, Write};

use bytes::Bytes;

use crate::encode::{decode_frame, DecodedFrame, DecodedWindow, EncodedRace};
use crate::race::{DriverFrame, DriverStatus};

/// First byte of a compact window. 0xC1 is never valid msgpack, so a compact window can be
/// told from a msgpack frame or window by its first byte alone.
pub const MARKER: u8 = 0xC1;
/// Format version, the second byte.
pub const VERSION: u8 = 1;

/// The step each value is rounded to, in [`DRIVER_FIELDS`] order: a value travels as
/// `round(value × scale)` and is read back as `integer / scale`, so it is within half a step of
/// what push frames carry.
pub const QUANTA: [(&str, f64); 15] = [
    ("x", 100.0),                // 1 cm
    ("y", 100.0),                // 1 cm
    ("speed", 10.0),             // 0.1 km/h
    ("gear", 1.0),               // exact
    ("throttle", 1.0),           // 1 %
    ("brake", 100.0),            // 0.01
    ("drs", 1.0),                // exact
    ("lap", 1.0),                // exact
    ("position", 1.0),           // exact
    ("tyre", 1.0),               // exact
    ("dist", 100.0),             // 1 cm
    ("rel_dist", 10_000.0),      // 0.0001 of a lap (50 cm on a 5 km lap)
    ("gap_to_leader", 1000.0),   // 1 ms
    ("gap_to_previous", 1000.0), // 1 ms
    ("status", 1.0),             // exact
];
/// The frame's time `t` travels in milliseconds; the leader's lap exactly.
pub const T_SCALE: f64 = 1000.0;

/// Quantised values saturate at ±2^31 steps (21,000 km at 1 cm), so every difference a
/// decoder adds up stays exact in a JavaScript number.
const MAX_QUANT: i64 = i32::MAX as i64;
/// Deflate level: a window is compressed once per session, whatever the number of viewers.
const LEVEL: u32 = 9;
/// The highest difference order a column may use.
const MAX_ORDER: u8 = 3;

/// How a look-ahead viewer wants its windows (`?enc=` on the WebSocket URL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum WindowEncoding {
    /// Today's window: a msgpack map holding push-mode frames (what clients get by default).
    #[default]
    Msgpack,
    /// This module's compact window.
    Qdelta1,
}

impl WindowEncoding {
    /// Every encoding, in the order the hub prefers them.
    pub const ALL: [Self; 2] = [Self::Msgpack, Self::Qdelta1];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Msgpack => "msgpack",
            Self::Qdelta1 => "qdelta1",
        }
    }

    /// Position in [`WindowEncoding::ALL`], for per-encoding arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The first encoding of a client's comma-separated list (its preference order) that the
    /// hub speaks; `None` when it names none of them.
    pub fn negotiate(accepted: &str) -> Option<Self> {
        accepted
            .split(',')
            .map(str::trim)
            .find_map(|name| Self::ALL.into_iter().find(|e| e.as_str() == name))
    }
}

/// Limits a decoder applies to what it reads, before it allocates from it.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Frames in one window (a 5 s window at 25 slots a second holds 125).
    pub max_frames: usize,
    /// Cars per frame.
    pub max_drivers: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_frames: 1024,
            max_drivers: 64,
        }
    }
}

/// Why a window could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a compact window (first byte {0:#04x}, expected 0xc1)")]
    NotCompact(u8),
    #[error("compact window version {0} is not supported (this hub speaks 1)")]
    Version(u8),
    #[error("the window ends early: {0}")]
    Truncated(&'static str),
    #[error("a varint is longer than 10 bytes")]
    Overlong,
    #[error("{what} {value} exceeds the limit of {limit}")]
    TooMany {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("frame indices must increase: {0}")]
    Indices(String),
    #[error("frame {frame} has {got} cars, the window's first has {expected}")]
    Cars {
        frame: u32,
        got: usize,
        expected: usize,
    },
    #[error("column uses difference order {0}, at most 3 is defined")]
    Order(u8),
    #[error("{field} value {value} does not fit its type")]
    Value { field: &'static str, value: i64 },
    #[error("the compressed columns are {got} bytes, the header says {expected}")]
    Length { got: usize, expected: usize },
    #[error("{0} bytes follow the last column")]
    Trailing(usize),
    #[error("deflate: {0}")]
    Deflate(#[from] std::io::Error),
    #[error("a race frame does not decode: {0}")]
    Frame(#[from] rmp_serde::decode::Error),
}

/// Builds the `qdelta1` message of a window of `frames` (increasing indices, one epoch).
pub fn encode(epoch: u64, frames: &[DecodedFrame]) -> Result<Bytes, CodecError> {
    let first = frames.first().ok_or(CodecError::Truncated("no frames"))?;
    let cars = first.drivers.len();
    let limits = DecodeLimits::default();
    check_count("frames", frames.len(), limits.max_frames)?;
    check_count("cars", cars, limits.max_drivers)?;
    let mut out = vec![MARKER, VERSION];
    put_varint(&mut out, epoch);
    put_varint(&mut out, frames.len() as u64);
    put_varint(&mut out, cars as u64);
    let mut previous: Option<u32> = None;
    for frame in frames {
        if frame.drivers.len() != cars {
            return Err(CodecError::Cars {
                frame: frame.i,
                got: frame.drivers.len(),
                expected: cars,
            });
        }
        match previous {
            None => put_varint(&mut out, u64::from(frame.i)),
            Some(p) if frame.i > p => put_varint(&mut out, u64::from(frame.i - p)),
            Some(p) => return Err(CodecError::Indices(format!("{} after {p}", frame.i))),
        }
        previous = Some(frame.i);
    }

    let mut body = Vec::with_capacity(frames.len() * (2 + cars * QUANTA.len()) * 2);
    let mut column = Vec::with_capacity(frames.len());
    column.extend(frames.iter().map(|f| quantise(f.t, T_SCALE)));
    put_column(&mut body, &column);
    column.clear();
    column.extend(frames.iter().map(|f| i64::from(f.lap)));
    put_column(&mut body, &column);
    for field in 0..QUANTA.len() {
        for car in 0..cars {
            column.clear();
            column.extend(frames.iter().map(|f| field_value(&f.drivers[car], field)));
            put_column(&mut body, &column);
        }
    }
    put_varint(&mut out, body.len() as u64);
    let mut deflate = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(LEVEL));
    deflate.write_all(&body)?;
    Ok(Bytes::from(deflate.finish()?))
}

/// The `qdelta1` window of frames `indices` of an encoded race: its frames decoded from the
/// race's shared buffer, then [`encode`]d. What a session builds once per window, and what the
/// frames endpoint serves with `enc=qdelta1`.
pub fn encode_frames(race: &EncodedRace, epoch: u64, indices: &[u32]) -> Result<Bytes, CodecError> {
    let frames = indices
        .iter()
        .map(|&i| {
            let bytes = race.frame(i).ok_or(CodecError::Indices(format!(
                "frame {i} is not in the race ({} frames)",
                race.total_frames()
            )))?;
            Ok(decode_frame(&bytes)?)
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    encode(epoch, &frames)
}

/// Reads a compact window's epoch and frame indices from its header, without inflating it:
/// enough to drop a stale window or count its frames.
pub fn peek(bytes: &[u8]) -> Result<(u64, Vec<u32>), CodecError> {
    let header = Header::read(bytes, &DecodeLimits::default())?;
    Ok((header.epoch, header.indices))
}

/// Decodes a compact window back into frames (values within half a step of the originals).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedWindow, CodecError> {
    let header = Header::read(bytes, limits)?;
    let (n, cars) = (header.indices.len(), header.cars);
    // Each value is at most 10 bytes, each column one more for its order: the most the body
    // can honestly be, checked before anything is inflated.
    let columns = 2 + cars * QUANTA.len();
    let bound = columns * (1 + n * 10);
    if header.body_len > bound {
        return Err(CodecError::TooMany {
            what: "column bytes",
            value: header.body_len as u64,
            limit: bound as u64,
        });
    }
    let mut body = Vec::with_capacity(header.body_len);
    flate2::read::DeflateDecoder::new(&bytes[header.consumed..])
        .take(header.body_len as u64 + 1)
        .read_to_end(&mut body)?;
    if body.len() != header.body_len {
        return Err(CodecError::Length {
            got: body.len(),
            expected: header.body_len,
        });
    }
    let mut rd = &body[..];
    let mut column = Vec::with_capacity(n);
    get_column(&mut rd, n, &mut column)?;
    let mut frames: Vec<DecodedFrame> = header
        .indices
        .iter()
        .zip(&column)
        .map(|(&i, &t)| DecodedFrame {
            kind: "frame".into(),
            i,
            t: t as f64 / T_SCALE,
            lap: 0,
            drivers: Vec::with_capacity(cars),
        })
        .collect();
    get_column(&mut rd, n, &mut column)?;
    for (frame, &lap) in frames.iter_mut().zip(&column) {
        frame.lap = u16::try_from(lap).map_err(|_| CodecError::Value {
            field: "lap",
            value: lap,
        })?;
    }
    for frame in &mut frames {
        frame.drivers.resize(cars, EMPTY_CAR);
    }
    for field in 0..QUANTA.len() {
        for car in 0..cars {
            get_column(&mut rd, n, &mut column)?;
            for (frame, &value) in frames.iter_mut().zip(&column) {
                set_field(&mut frame.drivers[car], field, value)?;
            }
        }
    }
    if !rd.is_empty() {
        return Err(CodecError::Trailing(rd.len()));
    }
    Ok(DecodedWindow {
        kind: "window".into(),
        epoch: header.epoch,
        indices: header.indices,
        frames,
    })
}

/// The first value of `got` further than half a quantisation step from the same value of
/// `want` (plus the float32 rounding of the value itself), described; `None` when every value
/// of every car is within its step. A value that is not a number on either side is a
/// mismatch: the format carries none. What tests hold decoded windows to.
pub fn first_mismatch(got: &DecodedFrame, want: &DecodedFrame) -> Option<String> {
    if got.i != want.i || got.lap != want.lap || got.drivers.len() != want.drivers.len() {
        return Some(format!(
            "frame {} (lap {}, {} cars) against frame {} (lap {}, {} cars)",
            got.i,
            got.lap,
            got.drivers.len(),
            want.i,
            want.lap,
            want.drivers.len()
        ));
    }
    // Written as "not within" so that a NaN on either side is a mismatch, never a pass.
    let within = |a: f64, b: f64, bound: f64| a == b || (a - b).abs() <= bound;
    if !within(got.t, want.t, 0.5 / T_SCALE + 1e-9) {
        return Some(format!("frame {}: t {} against {}", want.i, got.t, want.t));
    }
    for (car, (g, w)) in got.drivers.iter().zip(&want.drivers).enumerate() {
        for (field, &(name, scale)) in QUANTA.iter().enumerate() {
            let (a, b) = (real_value(g, field), real_value(w, field));
            let bound = 0.5 / scale + b.abs() * f64::from(f32::EPSILON) + 1e-9;
            if !within(a, b, bound) {
                return Some(format!(
                    "frame {} car {car} {name}: {a} against {b} (at most {bound} apart)",
                    want.i
                ));
            }
        }
    }
    None
}

/// Field `field` of a car as a number, unquantised.
fn real_value(car: &DriverFrame, field: usize) -> f64 {
    match field {
        0 => f64::from(car.x),
        1 => f64::from(car.y),
        2 => f64::from(car.speed),
        3 => f64::from(car.gear),
        4 => f64::from(car.throttle),
        5 => f64::from(car.brake),
        6 => f64::from(car.drs),
        7 => f64::from(car.lap),
        8 => f64::from(car.position),
        9 => f64::from(car.tyre),
        10 => f64::from(car.dist),
        11 => f64::from(car.rel_dist),
        12 => f64::from(car.gap_to_leader),
        13 => f64::from(car.gap_to_previous),
        _ => f64::from(u8::from(car.status)),
    }
}

struct Header {
    epoch: u64,
    indices: Vec<u32>,
    cars: usize,
    body_len: usize,
    /// Bytes of the header; the deflated columns follow.
    consumed: usize,
}

impl Header {
    fn read(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, CodecError> {
        match bytes {
            [MARKER, VERSION, ..] => {}
            [MARKER, version, ..] => return Err(CodecError::Version(*version)),
            [first, ..] if *first != MARKER => return Err(CodecError::NotCompact(*first)),
            _ => return Err(CodecError::Truncated("header")),
        }
        let mut rd = &bytes[2..];
        let epoch = get_varint(&mut rd)?;
        let n = get_varint(&mut rd)?;
        check_count("frames", n as usize, limits.max_frames)?;
        if n == 0 {
            return Err(CodecError::Truncated("no frames"));
        }
        let cars = get_varint(&mut rd)?;
        check_count("cars", cars as usize, limits.max_drivers)?;
        let mut indices = Vec::with_capacity(n as usize);
        let mut index = get_varint(&mut rd)?;
        for k in 0..n {
            if k > 0 {
                let step = get_varint(&mut rd)?;
                if step == 0 {
                    return Err(CodecError::Indices("a step of 0".into()));
                }
                index = index.saturating_add(step);
            }
            let i = u32::try_from(index)
                .map_err(|_| CodecError::Indices(format!("index {index} is over 2^32")))?;
            indices.push(i);
        }
        let body_len = get_varint(&mut rd)? as usize;
        Ok(Self {
            epoch,
            indices,
            cars: cars as usize,
            body_len,
            consumed: bytes.len() - rd.len(),
        })
    }
}

fn check_count(what: &'static str, value: usize, limit: usize) -> Result<(), CodecError> {
    if value > limit {
        return Err(CodecError::TooMany {
            what,
            value: value as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

const EMPTY_CAR: DriverFrame = DriverFrame {
    x: 0.0,
    y: 0.0,
    speed: 0.0,
    gear: 0,
    throttle: 0.0,
    brake: 0.0,
    drs: 0,
    lap: 0,
    position: 0,
    tyre: 0,
    dist: 0.0,
    rel_dist: 0.0,
    gap_to_leader: 0.0,
    gap_to_previous: 0.0,
    status: DriverStatus::Running,
};

fn quantise(value: f64, scale: f64) -> i64 {
    let q = (value * scale).round();
    if q.is_nan() {
        0
    } else {
        (q as i64).clamp(-MAX_QUANT, MAX_QUANT)
    }
}

/// Field `field` (in [`DRIVER_FIELDS`] order) of a car, quantised.
fn field_value(car: &DriverFrame, field: usize) -> i64 {
    let scale = QUANTA[field].1;
    let f = |v: f32| quantise(f64::from(v), scale);
    match field {
        0 => f(car.x),
        1 => f(car.y),
        2 => f(car.speed),
        3 => i64::from(car.gear),
        4 => f(car.throttle),
        5 => f(car.brake),
        6 => i64::from(car.drs),
        7 => i64::from(car.lap),
        8 => i64::from(car.position),
        9 => i64::from(car.tyre),
        10 => f(car.dist),
        11 => f(car.rel_dist),
        12 => f(car.gap_to_leader),
        13 => f(car.gap_to_previous),
        _ => i64::from(u8::from(car.status)),
    }
}

fn set_field(car: &mut DriverFrame, field: usize, value: i64) -> Result<(), CodecError> {
    let name = QUANTA[field].0;
    let bad = || CodecError::Value { field: name, value };
    let real = || (value as f64 / QUANTA[field].1) as f32;
    match field {
        0 => car.x = real(),
        1 => car.y = real(),
        2 => car.speed = real(),
        3 => car.gear = u8::try_from(value).map_err(|_| bad())?,
        4 => car.throttle = real(),
        5 => car.brake = real(),
        6 => car.drs = u8::try_from(value).map_err(|_| bad())?,
        7 => car.lap = u16::try_from(value).map_err(|_| bad())?,
        8 => car.position = u8::try_from(value).map_err(|_| bad())?,
        9 => car.tyre = i8::try_from(value).map_err(|_| bad())?,
        10 => car.dist = real(),
        11 => car.rel_dist = real(),
        12 => car.gap_to_leader = real(),
        13 => car.gap_to_previous = real(),
        _ => {
            let code = u8::try_from(value).map_err(|_| bad())?;
            car.status = DriverStatus::try_from(code).map_err(|_| bad())?;
        }
    }
    Ok(())
}

/// Writes one column: its difference order, then its values differenced that many times (each
/// pass keeps the first value), as zigzag varints. The order is whichever is shortest.
fn put_column(out: &mut Vec<u8>, values: &[i64]) {
    let mut best = (cost(values), 0u8, values.to_vec());
    let mut work = values.to_vec();
    for order in 1..=MAX_ORDER {
        difference(&mut work);
        let c = cost(&work);
        if c < best.0 {
            best = (c, order, work.clone());
        }
    }
    out.push(best.1);
    for &v in &best.2 {
        put_varint(out, zigzag(v));
    }
}

/// Reads one column of `n` values into `values`.
fn get_column(rd: &mut &[u8], n: usize, values: &mut Vec<i64>) -> Result<(), CodecError> {
    let (&order, rest) = rd.split_first().ok_or(CodecError::Truncated("column"))?;
    *rd = rest;
    if order > MAX_ORDER {
        return Err(CodecError::Order(order));
    }
    values.clear();
    for _ in 0..n {
        values.push(unzigzag(get_varint(rd)?));
    }
    for _ in 0..order {
        for k in 1..values.len() {
            values[k] = values[k].wrapping_add(values[k - 1]);
        }
    }
    Ok(())
}

fn difference(values: &mut [i64]) {
    for k in (1..values.len()).rev() {
        values[k] -= values[k - 1];
    }
}

/// Bits the values need: what deflate can save on small numbers even within one varint byte.
fn cost(values: &[i64]) -> usize {
    values
        .iter()
        .map(|&v| 64 - zigzag(v).leading_zeros() as usize)
        .sum()
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(rd: &mut &[u8]) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for k in 0..10 {
        let (&byte, rest) = rd.split_first().ok_or(CodecError::Truncated("varint"))?;
        *rd = rest;
        value |= u64::from(byte & 0x7f) << (7 * k);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CodecError::Overlong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::{generate, GenParams, DRIVER_FIELDS};

    fn race(laps: u16) -> EncodedRace {
        let params = GenParams {
            laps,
            drivers: 20,
            ..GenParams::default()
        };
        let (meta, frames) = generate(&params, |_, _| {}).unwrap();
        EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).unwrap()
    }

    fn push_frames(race: &EncodedRace, indices: &[u32]) -> Vec<DecodedFrame> {
        indices
            .iter()
            .map(|&i| decode_frame(&race.frame(i).unwrap()).unwrap())
            .collect()
    }

    /// Asserts every value of `got` is within half a quantisation step of `want`.
    fn assert_within_quanta(got: &DecodedFrame, want: &DecodedFrame) {
        if let Some(mismatch) = first_mismatch(got, want) {
            panic!("{mismatch}");
        }
    }

    fn round_trip(race: &EncodedRace, epoch: u64, indices: &[u32]) -> usize {
        let frames = push_frames(race, indices);
        let bytes = encode(epoch, &frames).unwrap();
        assert_eq!(peek(&bytes).unwrap(), (epoch, indices.to_vec()));
        let window = decode(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(window.kind, "window");
        assert_eq!(window.epoch, epoch);
        assert_eq!(window.indices, indices);
        assert_eq!(window.frames.len(), frames.len());
        for (got, want) in window.frames.iter().zip(&frames) {
            assert_within_quanta(got, want);
        }
        bytes.len()
    }

    #[test]
    fn the_quanta_name_the_wire_fields_in_order() {
        let names: Vec<&str> = QUANTA.iter().map(|q| q.0).collect();
        assert_eq!(names, DRIVER_FIELDS);
    }

    #[test]
    fn a_whole_race_round_trips_within_the_quanta_window_by_window() {
        let race = race(2);
        let total = race.total_frames();
        let mut bytes = 0;
        let mut from = 0;
        while from < total {
            let to = (from + 25).min(total);
            let indices: Vec<u32> = (from..to).collect();
            bytes += round_trip(&race, 3, &indices);
            from = to;
        }
        let per_frame = bytes as f64 / f64::from(total);
        eprintln!("{per_frame:.1} bytes per frame at 1x");
        // The msgpack frames are about 1,080 bytes: the compact form must be far smaller.
        assert!(per_frame < 300.0, "{per_frame:.0} bytes per frame");
    }

    #[test]
    fn fast_and_slow_windows_round_trip() {
        let race = race(2);
        // 16×: every sixteenth frame; 0.25×: each frame spans four slots, so a 25-slot window
        // holds 7 distinct frames; 4×: every fourth.
        let fast: Vec<u32> = (0..25).map(|k| 2000 + 16 * k).collect();
        let slow: Vec<u32> = (0..7).map(|k| 3000 + k).collect();
        let quad: Vec<u32> = (0..25).map(|k| 1000 + 4 * k).collect();
        for indices in [fast, slow, quad] {
            round_trip(&race, 9, &indices);
        }
        // A paused window: one frame.
        round_trip(&race, 10, &[1234]);
    }

    #[test]
    fn a_window_cut_by_a_seek_starts_whole_at_the_new_frame() {
        let race = race(2);
        // A seek mid-window: the new epoch's window starts at the target, far from the last.
        let before: Vec<u32> = (500..512).collect();
        let after: Vec<u32> = (4000..4025).collect();
        round_trip(&race, 4, &before);
        round_trip(&race, 5, &after);
        let decoded = decode(
            &encode(5, &push_frames(&race, &after)).unwrap(),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(
            decoded.frames[0].i, 4000,
            "the first frame of a window is whole"
        );
    }

    #[test]
    fn values_are_rounded_to_their_steps() {
        let race = race(2);
        let mut frames = push_frames(&race, &[100, 101]);
        frames[0].drivers[0].x = 12.344_9;
        frames[0].drivers[0].speed = 287.26;
        frames[0].drivers[0].gap_to_leader = 1.2344;
        frames[0].drivers[0].rel_dist = 0.123_46;
        let window = decode(&encode(1, &frames).unwrap(), &DecodeLimits::default()).unwrap();
        let car = &window.frames[0].drivers[0];
        assert_eq!(car.x, 12.34_f32);
        assert_eq!(car.speed, 287.3_f32);
        assert_eq!(car.gap_to_leader, 1.234_f32);
        assert_eq!(car.rel_dist, 0.1235_f32);
        frames[1].drivers[0].throttle = 99.6;
        let window = decode(&encode(1, &frames).unwrap(), &DecodeLimits::default()).unwrap();
        assert_eq!(window.frames[1].drivers[0].throttle, 100.0);
    }

    #[test]
    fn a_value_that_is_not_a_number_never_passes_for_its_decoded_form() {
        let race = race(2);
        let mut frames = push_frames(&race, &[100, 101]);
        frames[1].drivers[3].gap_to_leader = f32::NAN;
        let window = decode(&encode(1, &frames).unwrap(), &DecodeLimits::default()).unwrap();
        assert!(first_mismatch(&window.frames[0], &frames[0]).is_none());
        let mismatch = first_mismatch(&window.frames[1], &frames[1]).expect("NaN is no match");
        assert!(mismatch.contains("car 3 gap_to_leader"), "{mismatch}");
        assert!(
            first_mismatch(&frames[1], &frames[1]).is_some(),
            "not even itself"
        );
        let mut t = frames[0].clone();
        t.t = f64::NAN;
        assert!(first_mismatch(&t, &frames[0]).is_some());
        assert!(first_mismatch(&frames[0], &t).is_some());
        // Equal infinities are equal (the difference of two is NaN).
        let mut inf = frames[0].clone();
        inf.drivers[0].dist = f32::INFINITY;
        assert!(first_mismatch(&inf, &inf).is_none());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason_and_never_panics() {
        let race = race(2);
        let frames = push_frames(&race, &(200..225).collect::<Vec<_>>());
        let good = encode(2, &frames).unwrap().to_vec();
        let limits = DecodeLimits::default();
        assert!(matches!(
            decode(b"\x84\xa4type", &limits),
            Err(CodecError::NotCompact(0x84))
        ));
        assert!(matches!(
            decode(b"\xc1\x02", &limits),
            Err(CodecError::Version(2))
        ));
        assert!(matches!(
            decode(b"", &limits),
            Err(CodecError::Truncated(_))
        ));
        // A header claiming a million frames is refused before anything is allocated.
        let mut huge = vec![MARKER, VERSION, 1];
        put_varint(&mut huge, 1_000_000);
        assert!(matches!(
            decode(&huge, &limits),
            Err(CodecError::TooMany { what: "frames", .. })
        ));
        let mut cars = vec![MARKER, VERSION, 1, 1];
        put_varint(&mut cars, 1000);
        assert!(matches!(
            decode(&cars, &limits),
            Err(CodecError::TooMany { what: "cars", .. })
        ));
        let overlong = [
            MARKER, VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(matches!(
            decode(&overlong, &limits),
            Err(CodecError::Overlong)
        ));
        // Every truncation of a good window fails cleanly.
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], &limits).is_err(), "cut at {cut}");
        }
        // Flipped bytes either fail or decode to something; they never panic.
        for at in 2..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            let _ = decode(&bad, &limits);
        }
        // Indices that do not increase cannot be encoded.
        let backwards = [frames[3].clone(), frames[1].clone()];
        assert!(matches!(encode(2, &backwards), Err(CodecError::Indices(_))));
        assert!(encode(2, &[]).is_err());
    }

    #[test]
    fn clients_name_the_encodings_they_accept_in_preference_order() {
        use WindowEncoding::*;
        assert_eq!(WindowEncoding::negotiate("qdelta1"), Some(Qdelta1));
        assert_eq!(
            WindowEncoding::negotiate("qdelta2, qdelta1,msgpack"),
            Some(Qdelta1)
        );
        assert_eq!(WindowEncoding::negotiate("msgpack,qdelta1"), Some(Msgpack));
        assert_eq!(WindowEncoding::negotiate("zstd-9"), None);
        assert_eq!(WindowEncoding::negotiate(""), None);
    }

    fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i32::MAX as i64,
            -(i32::MAX as i64),
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            assert_eq!(out.len(), varint_len(zigzag(v)), "{v}");
            let mut rd = &out[..];
            assert_eq!(unzigzag(get_varint(&mut rd).unwrap()), v);
            assert!(rd.is_empty());
        }
    }
}
