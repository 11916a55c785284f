//! Arbitrary bytes as a race file: `read_meta` and a full `RaceReader` pass return frames or a
//! typed error, never panic, and never yield more frames than the metadata declares.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_hub::race::{read_meta, RaceReader};

fuzz_target!(|data: &[u8]| {
    let listed = read_meta(data);
    let Ok(reader) = RaceReader::new(data) else {
        return;
    };
    let meta = listed.expect("a file the reader opens also lists");
    // Compared as encoded, where NaN equals itself (and must not get this far: see validate_meta).
    let encoded = replay_hub::encode::to_compact_msgpack;
    assert_eq!(encoded(reader.meta()), encoded(&meta));
    let mut frames = 0u32;
    let mut failed = false;
    for item in reader {
        assert!(!failed, "the reader stops after its first error");
        match item {
            Ok(frame) => {
                frames += 1;
                assert!(frames <= meta.total_frames, "more frames than declared");
                assert_eq!(frame.drivers.len(), meta.drivers.len());
            }
            Err(_) => failed = true,
        }
    }
    if !failed {
        assert_eq!(frames, meta.total_frames, "a clean read yields every frame");
    }
});
