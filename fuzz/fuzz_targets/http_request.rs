//! HTTP request heads and the WebSocket upgrade: parse with the default head bound, then
//! answer the upgrade; no input may panic.
#![no_main]

use std::sync::OnceLock;

use engine::{config::Config, http::request, ws::handshake};
use libfuzzer_sys::fuzz_target;

/// `--handshake-bytes-max` as the engine defaults it.
fn head_bytes_max() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| Config::default().handshake_bytes_max)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, head_len))) = request::parse(data, head_bytes_max()) {
        assert!(head_len <= data.len());
        let _ = handshake::accept(&req);
        let _ = req.query_param("token");
        let _ = req.keep_alive();
    }
});
