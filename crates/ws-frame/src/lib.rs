//! WebSocket frames (RFC 6455), pure: bytes in, frames and errors out. Nothing here
//! touches a socket. `frame` parses client frames (unmasking in place) and encodes server
//! frames (and, for load generators, client frames); `mask` is the XOR unmasking; `close`
//! holds the close codes the gateway uses.
//!
//! A crate of its own, so that the engine and its load generator share it without the
//! load generator depending on the engine.
#![warn(missing_docs, unreachable_pub)]

pub mod close;
pub mod frame;
pub mod mask;
