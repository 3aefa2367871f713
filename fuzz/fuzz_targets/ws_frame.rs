//! WebSocket frames from a client: every frame in the input is parsed (and unmasked in
//! place) the way a reactor consumes its read buffer; no input may panic or loop.
#![no_main]

use engine::ws::frame::parse_client_frame;
use libfuzzer_sys::fuzz_target;

/// The gateway's default message bound.
const PAYLOAD_MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut pos = 0;
    while let Ok(Some((frame, used))) = parse_client_frame(&mut buf[pos..], PAYLOAD_MAX) {
        assert!(
            used > 0 && frame.payload.end <= used,
            "a frame uses what it spans"
        );
        pos += used;
    }
});
