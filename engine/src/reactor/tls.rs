//! TLS on a reactor's connections (`--tls-cert`; see [`crate::tls`]): the handshake driven
//! by input, records opened in place in the shared read buffer, output sealed into one
//! per-reactor buffer as it is written.
//!
//! A connection keeps only its session (keys and sequence numbers) and, between reads, the
//! start of a record whose rest has not come. Its output queue's head holds ciphertext
//! (handshake records, or a sealed batch the socket did not take all of); its lanes hold
//! plaintext frames, shared with other connections, sealed when the socket is writable.

use std::ops::Range;

use tls_records::Advance;
use tracing::debug;

use super::core::Reactor;
use crate::{
    conn::OutQueue,
    router::ConnAddr,
    stats::ReactorStats,
    tls::{ConnTls, TlsInput},
};

/// The most plaintext sealed for one connection per write round: four full records.
const SEAL_BYTES_PER_ROUND: usize = 4 * tls_records::PLAINTEXT_BYTES_MAX;

impl Reactor {
    /// Whether `at` speaks TLS.
    pub(super) fn is_tls(&mut self, at: ConnAddr) -> bool {
        self.conn_mut(at)
            .and_then(|c| c.aux.as_ref())
            .is_some_and(|a| a.tls.is_some())
    }

    /// A connection accepted on a TLS port starts its handshake (or is closed, if rustls
    /// refuses to start one).
    pub(super) fn start_tls(&mut self, at: ConnAddr) {
        let Some(certificates) = self.shared.config.tls.clone() else {
            return;
        };
        match certificates.accept() {
            Ok(handshake) => {
                if let Some(conn) = self.conn_mut(at) {
                    conn.aux_mut().tls = Some(ConnTls::Handshaking(Box::new(handshake)));
                }
            }
            Err(e) => {
                debug!("cannot start a TLS handshake: {e}");
                self.tls_failed(at);
            }
        }
    }

    /// Puts the start of a record kept from the last read at the front of `buffer`;
    /// returns its length (the read goes after it). The connection keeps its copy until
    /// the read's records are opened.
    pub(super) fn tls_carry_over(&mut self, at: ConnAddr, buffer: &mut [u8]) -> usize {
        let Some(ConnTls::Established {
            partial: Some(partial),
            ..
        }) = self
            .conn_mut(at)
            .and_then(|c| c.aux.as_mut())
            .and_then(|a| a.tls.as_mut())
        else {
            return 0;
        };
        buffer[..partial.len()].copy_from_slice(partial);
        partial.len()
    }

    /// Takes `buffer[..len]` (a carried-over record start, then what was read): runs the
    /// handshake, or opens the records in place. Output the handshake or a key update
    /// needs is queued; the plaintext is left at the front of `buffer`.
    ///
    /// Hot path (established): allocates only to keep the start of a record a read cut.
    pub(super) fn tls_input(&mut self, at: ConnAddr, buffer: &mut [u8], len: usize) -> TlsInput {
        let mut out = std::mem::take(&mut self.tls_out);
        out.clear();
        let tls = self
            .conn_mut(at)
            .and_then(|c| c.aux.as_mut())
            .and_then(|a| a.tls.as_mut());
        let outcome = match tls {
            Some(tls) => take_input(tls, buffer, len, &mut out),
            None => Err(tls_records::Error::Unexpected(
                "a TLS read without TLS state",
            )),
        };
        let result = match outcome {
            Ok((opened, handshake_done)) => {
                if handshake_done {
                    ReactorStats::bump(&self.stats().tls_handshakes);
                }
                if !out.is_empty() {
                    self.enqueue_sealed(at, &out);
                }
                match opened.closed {
                    true => TlsInput::PlaintextThenEnd(opened.plaintext),
                    false => TlsInput::Plaintext(opened.plaintext),
                }
            }
            Err(e) => {
                debug!("closing a TLS connection: {e}");
                self.tls_failed(at);
                TlsInput::Closed
            }
        };
        self.tls_out = out;
        result
    }

    /// Queues bytes already sealed (or handshake records) before every unsealed frame.
    pub(super) fn enqueue_sealed(&mut self, at: ConnAddr, sealed: &[u8]) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let first = conn.outbound.is_none();
        conn.outbound
            .get_or_insert_with(Box::<OutQueue>::default)
            .push_sealed(sealed);
        if first && conn.flags.has(crate::conn::Flags::WRITABLE) {
            self.to_write.push(at);
        }
    }

    /// Seals up to [`SEAL_BYTES_PER_ROUND`] of `at`'s queued frames onto `sealed` (the
    /// reactor's buffer for this write round) and takes them off its queue; returns where
    /// they are. Plaintext connections and handshakes seal nothing.
    ///
    /// Hot path: allocates nothing once `sealed` has grown; small frames queued together
    /// share a record.
    pub(super) fn seal_queued(conn: &mut crate::conn::Conn, sealed: &mut Vec<u8>) -> Range<usize> {
        let start = sealed.len();
        let Some(ConnTls::Established { session, .. }) =
            conn.aux.as_mut().and_then(|a| a.tls.as_mut())
        else {
            return start..start;
        };
        let Some(queue) = conn.outbound.as_mut() else {
            return start..start;
        };
        let mut plaintext = 0;
        let chunks = queue
            .unsealed(SEAL_BYTES_PER_ROUND)
            .inspect(|c| plaintext += c.len());
        session.seal(chunks, sealed);
        queue.forget_unsealed(plaintext);
        start..sealed.len()
    }

    /// Closes a connection whose TLS failed.
    pub(super) fn tls_failed(&mut self, at: ConnAddr) {
        ReactorStats::bump(&self.stats().tls_failures);
        self.close_now(at);
    }
}

/// Takes `buffer[..len]` into `tls`: the plaintext it held (at the front of `buffer`),
/// and whether the handshake ended with it. Output owed to the client goes to `out`.
fn take_input(
    tls: &mut ConnTls,
    buffer: &mut [u8],
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(tls_records::Opened, bool), tls_records::Error> {
    match tls {
        ConnTls::Handshaking(handshake) => match handshake.advance(&buffer[..len], out)? {
            Advance::Handshaking => Ok((opened_nothing(), false)),
            Advance::Established(done) => {
                // What rustls opened goes first; then the records after it, which it did
                // not take, as the session opens any (both came in this read: they fit).
                let mut session = Box::new(done.session);
                let early = done.plaintext.len();
                buffer[..early].copy_from_slice(&done.plaintext);
                let mut rest = done.rest;
                let opened = session.open(&mut rest, out)?;
                buffer[early..early + opened.plaintext].copy_from_slice(&rest[..opened.plaintext]);
                rest.drain(..opened.used);
                *tls = ConnTls::Established {
                    session,
                    partial: (!rest.is_empty()).then_some(rest),
                };
                let opened = tls_records::Opened {
                    plaintext: early + opened.plaintext,
                    ..opened
                };
                Ok((opened, true))
            }
        },
        ConnTls::Established { session, partial } => {
            let opened = session.open(&mut buffer[..len], out)?;
            if opened.used < len {
                let kept = partial.get_or_insert_with(Vec::new);
                kept.clear();
                kept.extend_from_slice(&buffer[opened.used..len]);
            } else {
                *partial = None;
            }
            Ok((opened, false))
        }
    }
}

/// A read that gave no plaintext (yet).
fn opened_nothing() -> tls_records::Opened {
    tls_records::Opened {
        plaintext: 0,
        used: 0,
        closed: false,
    }
}
