//! What a viewer (the load tool, tests) decodes from the hub: look-ahead windows and wire
//! frames, through `encode::decode_window`, `window_indices`, `decode_frame` and `frame_index`.
//! Arbitrary bytes give a value or an error, never a panic, and the quick readers agree with
//! the full decoders whenever both accept the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replay_hub::encode::{decode_frame, decode_window, frame_index, is_wire_frame, window_indices};

fuzz_target!(|data: &[u8]| {
    let window = decode_window(data);
    if let (Ok(window), Some((epoch, indices))) = (&window, window_indices(data)) {
        assert_eq!(window.epoch, epoch);
        assert_eq!(window.indices, indices);
    }
    let frame = decode_frame(data);
    let index = frame_index(data);
    if let (Ok(frame), Some(i)) = (&frame, index) {
        assert_eq!(frame.i, i);
    }
    if let Some(i) = index {
        let _ = is_wire_frame(data, i);
    }
});
