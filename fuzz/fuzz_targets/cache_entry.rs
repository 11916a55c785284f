//! Arbitrary stored values as a cache entry, through `cache::decode_entry` (the path
//! `RaceCache::load` takes once it has fetched the values): a race or a typed error, never a
//! panic, and a decoded race is consistent with its metadata.
//!
//! Input layout (see fuzz/README.md): one flag byte (bit 0: expect content `e1-seed`), then
//! sections of a u32 little-endian length and that many bytes: the manifest, the metadata, then
//! each chunk in order. A length past the end takes what is left.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use replay_hub::cache::decode_entry;

/// Small enough that no input can make the target allocate much.
const MAX_BYTES: u64 = 8 << 20;

fn sections(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 4 && out.len() < 64 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let (section, tail) = rest.split_at(len.min(rest.len()));
        out.push(section);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let parts = sections(rest);
    let (Some(manifest), Some(meta)) = (parts.first(), parts.get(1)) else {
        return;
    };
    let chunks: Vec<Option<Bytes>> = parts[2..]
        .iter()
        .map(|c| Some(Bytes::copy_from_slice(c)))
        .collect();
    let content = (flags & 1 != 0).then_some("e1-seed");
    if let Ok(Some(race)) = decode_entry("fuzz", content, manifest, meta, &chunks, MAX_BYTES) {
        assert_eq!(race.id(), "fuzz");
        assert!(race.encoded_bytes() as u64 <= MAX_BYTES);
        for i in 0..race.total_frames() {
            let frame = race
                .frame(i)
                .expect("every frame of a decoded race is there");
            assert!(replay_hub::encode::is_wire_frame(&frame, i));
        }
        assert!(race.frame(race.total_frames()).is_none());
    }
});
