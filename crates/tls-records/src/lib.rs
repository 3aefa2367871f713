//! TLS 1.3 records after rustls' handshake, in the caller's buffers.
//!
//! rustls keeps about 3 KB per connection once its handshake is done, even with its
//! unbuffered API (the engine's `tls_memory` bench). A gateway holding a million idle
//! connections cannot afford that, and kTLS (which would take the records into the kernel)
//! is not on every box. So rustls runs the handshake ([`Handshake`]) and is then dropped;
//! this crate's [`Session`] keeps the two directions' traffic secrets, keys, IVs and
//! sequence numbers (about 230 bytes) and seals and opens application records itself, in
//! place, in buffers the caller owns and shares between connections. (rustls' own
//! `KernelConnection`, made for this, is 550 bytes before its heap.) The configs given to
//! a handshake must allow TLS 1.3 only, enable secret extraction, and carry [`key_log`],
//! through which rustls hands over the traffic secrets that key updates start from.
//!
//! Only TLS 1.3 is spoken after the handshake (the configs given must allow only it), with
//! its three AEADs: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (by `ring`). Key
//! updates go both ways (RFC 8446 §7.2, derived here): the peer's are followed, and the
//! session updates its own before a suite's confidentiality limit. A `close_notify` alert ends input; any other alert, a
//! record that does not open, or a handshake message other than a key update (or, to a
//! client, a session ticket) is an error, after which the connection must be closed.

mod capture;
mod client;
mod handshake;
mod record;
mod session;

pub use capture::key_log;
pub use client::{client_config, Trust};
pub use handshake::{Advance, Established, Handshake, Unbuffered};
pub use record::{HEADER_BYTES, PLAINTEXT_BYTES_MAX, RECORD_BYTES_MAX};
pub use session::{Opened, Session};

/// Why a TLS connection cannot go on: it is closed after any of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustls refused the handshake or a key update.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A record's header is not a TLS 1.3 application record's, or its length is out of
    /// bounds.
    #[error("TLS: a malformed record header")]
    BadRecord,
    /// A record did not open with the peer's key (forged, corrupted or out of order).
    #[error("TLS: a record failed authentication")]
    BadRecordMac,
    /// The peer sent something TLS 1.3 does not allow here.
    #[error("TLS: unexpected {0}")]
    Unexpected(&'static str),
    /// The peer sent an alert other than `close_notify`.
    #[error("TLS: the peer sent alert {0}")]
    Alert(u8),
    /// The handshake's input grew past what a handshake needs.
    #[error("TLS: handshake input over {0} bytes")]
    HandshakeTooLarge(usize),
}

#[cfg(test)]
mod tests;
