//! An established TLS 1.3 session: records sealed and opened in the caller's buffers.

use rustls::ExtractedSecrets;

use crate::record::{self, Traffic, ALERT, APPLICATION_DATA, HANDSHAKE, PLAINTEXT_BYTES_MAX};
use crate::Error;

/// The handshake message type of a key update (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// The handshake message type of a session ticket (RFC 8446 §4.6.1).
const NEW_SESSION_TICKET: u8 = 4;
/// The alert that ends a session cleanly.
const CLOSE_NOTIFY: u8 = 0;

/// What [`Session::open`] found at the front of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Application data bytes, now at the front of the input.
    pub plaintext: usize,
    /// Input bytes consumed: whole records. What follows is the start of a record.
    pub used: usize,
    /// The peer sent `close_notify`: it sends nothing more.
    pub closed: bool,
}

/// One established TLS 1.3 session: both directions' traffic secrets, keys and sequence
/// numbers, about 230 bytes (`tls_memory` bench), where rustls' own connection keeps
/// kilobytes.
pub struct Session {
    pub(crate) tx: Traffic,
    rx: Traffic,
    /// Records one key may seal (RFC 8446 §5.5): the session updates its key before.
    pub(crate) tx_limit: u64,
    /// A client's session takes session tickets (and ignores them); a server's refuses.
    client: bool,
}

impl Session {
    /// The session a handshake left: rustls' extracted keys and sequence numbers, the
    /// traffic secrets they came from (`tx_secret`, `rx_secret`), and which end it is.
    pub fn new(
        secrets: ExtractedSecrets,
        (tx_secret, rx_secret): (&[u8], &[u8]),
        client: bool,
    ) -> Result<Self, Error> {
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let tx = Traffic::new(tx_seq, tx, tx_secret)?;
        Ok(Session {
            tx_limit: tx.confidentiality_limit(),
            tx,
            rx: Traffic::new(rx_seq, rx, rx_secret)?,
            client,
        })
    }

    /// Opens every whole record at the front of `data` in place and gathers their
    /// application data at its front. A key update that asks for ours appends it, sealed,
    /// to `reply`, which must be sent before anything sealed later.
    ///
    /// Hot path: allocates nothing; expands the peer's key once per call (and per update).
    pub fn open(&mut self, data: &mut [u8], reply: &mut Vec<u8>) -> Result<Opened, Error> {
        let mut key = None;
        let (mut used, mut plaintext) = (0, 0);
        while let Some(len) = record::record_len(&data[used..])? {
            if data.len() - used < len {
                break;
            }
            let key_now = key.get_or_insert_with(|| self.rx.key());
            let record = &mut data[used..used + len];
            let (kind, range) = self.rx.open(key_now, record)?;
            let start = used;
            used += len;
            match kind {
                APPLICATION_DATA => {
                    data.copy_within(start + range.start..start + range.end, plaintext);
                    plaintext += range.len();
                }
                ALERT => match data[start + range.start..start + range.end] {
                    [_, CLOSE_NOTIFY] => {
                        return Ok(Opened {
                            plaintext,
                            used,
                            closed: true,
                        })
                    }
                    [_, description] => return Err(Error::Alert(description)),
                    _ => return Err(Error::Unexpected("a malformed alert")),
                },
                HANDSHAKE => {
                    let messages = &data[start + range.start..start + range.end];
                    if self.handshake_messages(messages, reply)? {
                        key = None; // the peer's next records use its new key
                    }
                }
                _ => return Err(Error::Unexpected("a record content type")),
            }
        }
        Ok(Opened {
            plaintext,
            used,
            closed: false,
        })
    }

    /// Acts on post-handshake messages (each whole in its record); whether the peer's key
    /// changed.
    fn handshake_messages(
        &mut self,
        mut messages: &[u8],
        reply: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let mut updated = false;
        while let [kind, a, b, c, rest @ ..] = messages {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            let Some(body) = rest.get(..len) else {
                return Err(Error::Unexpected(
                    "a handshake message split across records",
                ));
            };
            match (*kind, body) {
                (KEY_UPDATE, [request]) if *request <= 1 => {
                    self.rx.update();
                    updated = true;
                    if *request == 1 {
                        self.update_key(reply);
                    }
                }
                // A client resumes no session: a ticket is taken and forgotten.
                (NEW_SESSION_TICKET, _) if self.client => {}
                _ => return Err(Error::Unexpected("a handshake message after the handshake")),
            }
            messages = &rest[len..];
        }
        if !messages.is_empty() {
            return Err(Error::Unexpected(
                "a handshake message split across records",
            ));
        }
        Ok(updated)
    }

    /// Appends `chunks` to `out` as application data records, each as full as it can be
    /// (so small frames written together share one record's header and tag).
    ///
    /// Hot path: allocates nothing once `out` has grown; expands the key once per call.
    pub fn seal<'a>(&mut self, chunks: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        if self.tx.seq >= self.tx_limit {
            self.update_key(out);
        }
        let key = self.tx.key();
        let mut start = None;
        for mut chunk in chunks {
            while !chunk.is_empty() {
                let at = *start.get_or_insert_with(|| Traffic::begin_record(out));
                let room = PLAINTEXT_BYTES_MAX - (out.len() - at - record::HEADER_BYTES);
                let (now, later) = chunk.split_at(room.min(chunk.len()));
                out.extend_from_slice(now);
                chunk = later;
                if room == now.len() {
                    self.tx.end_record(&key, APPLICATION_DATA, out, at);
                    start = None;
                }
            }
        }
        if let Some(at) = start {
            self.tx.end_record(&key, APPLICATION_DATA, out, at);
        }
    }

    /// Appends a sealed `close_notify` alert to `out`: nothing more will be sent.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) {
        let key = self.tx.key();
        // Level 1 (warning), as RFC 8446 §6.1 has close_notify sent.
        self.tx.seal(&key, ALERT, &[1, CLOSE_NOTIFY], out);
    }

    /// Moves to the next key now (as before a long idle time): the key update, sealed
    /// with the old key, is appended to `out`, which must be sent before anything sealed
    /// later.
    pub fn update_key(&mut self, out: &mut Vec<u8>) {
        let key = self.tx.key();
        self.tx
            .seal(&key, HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out);
        self.tx.update();
    }
}
