//! The WebSocket protocol (RFC 6455), pure: bytes in, frames and errors out.
//!
//! Nothing here touches a socket. `handshake` validates an upgrade request and writes the
//! 101 response; `frame`, `mask` and `close` are the `ws-frame` crate (frames parsed and
//! unmasked in place, server frames encoded, close codes), shared with the loadgen.

pub use ws_frame::{close, frame, mask};
pub mod handshake;
