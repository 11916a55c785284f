//! What an anonymous WebSocket client controls: the text commands (`session::Request::parse`)
//! and the raw frame headers (`frame_guard::HeaderScanner`).
//!
//! Input layout: byte 0 picks the scanner's limit (`16 << (b % 16)`), byte 1 a split point;
//! bytes 2..6 are the race's total frames (u32 LE); the rest is both the command text (when it
//! is UTF-8) and the client's byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_hub::frame_guard::HeaderScanner;
use replay_hub::session::{Command, Request, SPEED_RANGE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let limit = 16usize << (data[0] % 16);
    let total_frames = u32::from_le_bytes([data[2], data[3], data[4], data[5]]);
    let body = &data[6..];

    if let Ok(text) = std::str::from_utf8(body) {
        match Request::parse(text, total_frames) {
            Ok(Request::Control(Command::Seek(frame))) => {
                assert!(frame <= total_frames.saturating_sub(1), "seek past the end");
            }
            Ok(Request::Control(Command::Speed(speed))) => {
                let (min, max) = SPEED_RANGE;
                assert!((min..=max).contains(&speed), "speed out of range");
            }
            Ok(Request::Time { t0 }) => assert!(t0.is_finite()),
            Ok(_) => {}
            Err(err) => assert!(!err.code.is_empty() && !err.message.is_empty()),
        }
    }

    // The verdict cannot depend on how the bytes were cut into reads.
    let whole = HeaderScanner::new(limit).scan(body);
    let cut = (data[1] as usize).min(body.len());
    let mut split = HeaderScanner::new(limit);
    let parts = split
        .scan(&body[..cut])
        .and_then(|()| split.scan(&body[cut..]));
    assert_eq!(whole, parts);
    let mut bytewise = HeaderScanner::new(limit);
    let one_at_a_time = body.chunks(1).try_for_each(|b| bytewise.scan(b));
    assert_eq!(whole, one_at_a_time);
});
