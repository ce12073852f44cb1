//! The cache's value frame (what the gateway reads back from Redis, which another writer may
//! have filled): any bytes are refused or give a payload; a frame the cache wrote decodes to
//! exactly its payload, and flipping any byte of it is caught.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unclip_cache::fuzzing::{decode_frame, encode_frame};

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_frame("text", bytes);
    let Some(framed) = encode_frame("text", bytes) else {
        return;
    };
    assert_eq!(decode_frame("text", &framed), Some(bytes));
    assert_eq!(decode_frame("image", &framed), None);
    if !framed.is_empty() {
        let at = bytes.first().map_or(0, |&b| usize::from(b)) % framed.len();
        let mut flipped = framed.clone();
        flipped[at] ^= 0x01;
        assert_ne!(decode_frame("text", &flipped), Some(bytes));
    }
});
