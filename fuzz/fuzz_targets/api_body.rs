//! HTTP API bodies (`POST /api/send` and `/api/broadcast`); no input may panic.
#![no_main]

use engine::http::api;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = api::parse_send(data);
    let _ = api::parse_broadcast(data);
});
