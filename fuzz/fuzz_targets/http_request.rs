//! HTTP request heads and the WebSocket upgrade: parse with the default head bound, then
//! answer the upgrade; no input may panic.
#![no_main]

use engine::{config::HANDSHAKE_BYTES_MAX_DEFAULT, http::request, ws::handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, head_len))) = request::parse(data, HANDSHAKE_BYTES_MAX_DEFAULT) {
        assert!(head_len <= data.len());
        let _ = handshake::accept(&req);
        let _ = req.query_param("token");
        let _ = req.keep_alive();
    }
});
