//! The server side of the opening handshake (RFC 6455 §4.2): checks an upgrade request and
//! writes the 101 response with `Sec-WebSocket-Accept`.

use bytes::Bytes;
use tungstenite::handshake::derive_accept_key;

use crate::http::request::Request;

/// Why an upgrade request was refused, with the HTTP status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("the upgrade must be a GET")]
    NotGet,
    /// Missing `Upgrade: websocket` or `Connection: upgrade`.
    #[error("missing Upgrade: websocket / Connection: upgrade")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("only WebSocket version 13 is supported")]
    BadVersion,
    /// Missing or malformed `Sec-WebSocket-Key`.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status that answers this error.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::NotGet => 405,
            HandshakeError::BadVersion | HandshakeError::NotUpgrade => 426,
            HandshakeError::BadKey => 400,
        }
    }
}

/// Whether the request asks for a WebSocket at all (so errors get upgrade answers).
pub fn wants_upgrade(request: &Request) -> bool {
    request
        .header("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Checks `request` and returns the 101 response to send.
pub fn accept(request: &Request) -> Result<Bytes, HandshakeError> {
    if request.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if !wants_upgrade(request) || !request.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if request.header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = request
        .header("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    // A valid key is 16 random bytes in base64: 24 characters ending in "==".
    if key.len() != 24 || !key.ends_with("==") {
        return Err(HandshakeError::BadKey);
    }
    let accept = derive_accept_key(key.as_bytes());
    Ok(Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn request(extra: &str) -> Request {
        let raw = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        parse(raw.as_bytes(), 8192).unwrap().unwrap().0
    }

    #[test]
    fn rfc_example_key_gives_rfc_accept() {
        let req = request(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        let response = accept(&req).unwrap();
        let text = std::str::from_utf8(&response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn refusals_name_the_problem() {
        let no_key =
            request("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n");
        assert_eq!(accept(&no_key), Err(HandshakeError::BadKey));
        let old = request("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(accept(&old), Err(HandshakeError::BadVersion));
        let plain = request("");
        assert_eq!(accept(&plain), Err(HandshakeError::NotUpgrade));
        assert!(!wants_upgrade(&plain));
    }

    proptest::proptest! {
        /// Whatever headers an upgrade carries, the answer is a 101 or a refusal, never a
        /// panic; a well-formed key of any 16 bytes is always accepted.
        #[test]
        fn any_upgrade_is_answered(
            headers in proptest::collection::vec(("[A-Za-z-]{1,24}", "[ -~]{0,40}"), 0..8),
            key in proptest::array::uniform16(proptest::num::u8::ANY),
        ) {
            use base64::Engine as _;
            let mut extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
            if let Some(req) = parse(format!("GET /ws HTTP/1.1\r\n{extra}\r\n").as_bytes(), 8192)
                .ok()
                .flatten()
            {
                let _ = accept(&req.0);
            }
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            extra = format!("Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n");
            proptest::prop_assert!(accept(&request(&extra)).is_ok());
        }
    }
}
