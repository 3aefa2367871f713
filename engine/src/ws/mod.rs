//! The WebSocket protocol (RFC 6455), pure: bytes in, frames and errors out.
//!
//! Nothing here touches a socket. `handshake` validates an upgrade request and writes the
//! 101 response; `frame` parses client frames (unmasking in place) and encodes server
//! frames; `mask` is the XOR unmasking; `close` holds the close codes this gateway uses.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
