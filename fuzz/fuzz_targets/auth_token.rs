//! Auth tokens and key sets (issue 22): any bytes as a JWT, checked against an HS256
//! secret and an RS256 key, and any bytes as a JSON Web Key Set; no input may panic, and
//! none is taken (a valid signature cannot be guessed).
#![no_main]

use engine::protocol::jwt::{keys, Verifier};
use libfuzzer_sys::fuzz_target;

const JWKS: &[u8] = include_bytes!("../../engine/src/protocol/jwt/testdata/jwks.json");

thread_local! {
    static VERIFIER: Verifier = Verifier::new(
        Some(b"0123456789abcdef0123456789abcdef".to_vec()),
        keys::from_jwks(JWKS, "jwks.json").expect("the test key set"),
        true,
    );
}

fuzz_target!(|data: &[u8]| {
    let _ = keys::from_jwks(data, "input");
    if let Ok(token) = std::str::from_utf8(data) {
        VERIFIER.with(|verifier| {
            assert!(verifier.verify(token, "fuzzer", 0).is_err(), "a forged token was taken");
        });
    }
});
