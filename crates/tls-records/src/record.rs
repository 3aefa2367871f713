//! One direction's traffic keys, and one TLS 1.3 record sealed or opened with them.

use std::ops::Range;

use ring::{
    aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN},
    hkdf,
};
use rustls::ConnectionTrafficSecrets;

use crate::Error;

/// A record's header: content type, legacy version, length.
pub const HEADER_BYTES: usize = 5;
/// The most plaintext one record carries (RFC 8446 §5.1).
pub const PLAINTEXT_BYTES_MAX: usize = 1 << 14;
/// The largest record on the wire: header, plaintext, content type, tag, padding
/// (RFC 8446 §5.2 allows the ciphertext 2^14 + 256 bytes).
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + PLAINTEXT_BYTES_MAX + 256;
/// Every AEAD here has a 16-byte tag.
const TAG_BYTES: usize = 16;
/// The outer content type of every TLS 1.3 protected record.
pub(crate) const APPLICATION_DATA: u8 = 23;
/// Inner content types.
pub(crate) const ALERT: u8 = 21;
pub(crate) const HANDSHAKE: u8 = 22;

/// Which AEAD a session's keys are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// The longest traffic secret (SHA-384's output).
const SECRET_BYTES_MAX: usize = 48;

/// One direction's traffic secret (for the next key), key, IV and next sequence number:
/// about 100 bytes, where ring's expanded key would keep hundreds (the key is expanded for
/// each batch of records instead) and rustls' kernel connection more.
pub(crate) struct Traffic {
    cipher: Cipher,
    secret: [u8; SECRET_BYTES_MAX],
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
    /// The next record's sequence number.
    pub(crate) seq: u64,
}

impl Traffic {
    /// The keys rustls hands over for one direction, starting at record `seq`, with the
    /// traffic secret they came from (`secret`, for key updates).
    pub(crate) fn new(
        seq: u64,
        secrets: ConnectionTrafficSecrets,
        secret: &[u8],
    ) -> Result<Traffic, Error> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => {
                return Err(Error::Unexpected(
                    "a cipher suite this crate does not speak",
                ))
            }
        };
        if secret.len() != cipher.hash_len() {
            return Err(Error::Unexpected("a traffic secret of the wrong length"));
        }
        let mut traffic = Traffic {
            cipher,
            secret: [0; SECRET_BYTES_MAX],
            key: [0; 32],
            iv: [0; NONCE_LEN],
            seq,
        };
        let key = key.as_ref();
        traffic.key[..key.len()].copy_from_slice(key);
        traffic.iv.copy_from_slice(iv.as_ref());
        traffic.secret[..secret.len()].copy_from_slice(secret);
        Ok(traffic)
    }

    /// Moves to the next traffic secret, and the key and IV from it, at sequence number 0
    /// (RFC 8446 §7.2: `HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)`).
    pub(crate) fn update(&mut self) {
        let hash = self.cipher.hkdf();
        let len = self.cipher.hash_len();
        let mut next = [0u8; SECRET_BYTES_MAX];
        expand_label(hash, &self.secret[..len], b"traffic upd", &mut next[..len]);
        self.secret = next;
        let key_len = self.cipher.key_len();
        let mut key = [0u8; 32];
        expand_label(hash, &self.secret[..len], b"key", &mut key[..key_len]);
        self.key = key;
        expand_label(hash, &self.secret[..len], b"iv", &mut self.iv);
        self.seq = 0;
        next.fill(0);
        key.fill(0);
    }

    /// Records one key may seal before it must be updated (RFC 8446 §5.5; rustls' own
    /// figures).
    pub(crate) fn confidentiality_limit(&self) -> u64 {
        match self.cipher {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => 1 << 24,
            Cipher::Chacha20Poly1305 => u64::MAX,
        }
    }

    /// The expanded key, for the records of one call.
    pub(crate) fn key(&self) -> LessSafeKey {
        let algorithm = match self.cipher {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        let key = &self.key[..self.cipher.key_len()];
        LessSafeKey::new(UnboundKey::new(algorithm, key).expect("the key's length fits"))
    }

    /// The next record's nonce (RFC 8446 §5.3), and the sequence number moved on.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *byte ^= seq;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }

    /// Begins a record at the end of `out`: its header, with the length filled in by
    /// [`Traffic::end_record`]. Returns where it starts.
    pub(crate) fn begin_record(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0, 0]);
        start
    }

    /// Seals the record begun at `start` (its plaintext is what follows the header in
    /// `out`) as content type `kind`.
    pub(crate) fn end_record(
        &mut self,
        key: &LessSafeKey,
        kind: u8,
        out: &mut Vec<u8>,
        start: usize,
    ) {
        out.push(kind);
        let length = (out.len() - start - HEADER_BYTES + TAG_BYTES) as u16;
        out[start + 3..start + HEADER_BYTES].copy_from_slice(&length.to_be_bytes());
        let header: [u8; HEADER_BYTES] = out[start..start + HEADER_BYTES]
            .try_into()
            .expect("five bytes");
        let nonce = self.next_nonce();
        let tag = key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER_BYTES..])
            .expect("a record's plaintext is far below the AEAD's limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Appends one record of content type `kind` holding `plaintext` (at most
    /// [`PLAINTEXT_BYTES_MAX`]).
    pub(crate) fn seal(
        &mut self,
        key: &LessSafeKey,
        kind: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        debug_assert!(plaintext.len() <= PLAINTEXT_BYTES_MAX);
        let start = Self::begin_record(out);
        out.extend_from_slice(plaintext);
        self.end_record(key, kind, out, start);
    }

    /// Opens the whole record in `record` (header first) in place: its inner content type
    /// and where its plaintext is in `record`.
    pub(crate) fn open(
        &mut self,
        key: &LessSafeKey,
        record: &mut [u8],
    ) -> Result<(u8, Range<usize>), Error> {
        let header: [u8; HEADER_BYTES] = record[..HEADER_BYTES].try_into().expect("a header");
        let nonce = self.next_nonce();
        let plaintext = key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER_BYTES..])
            .map_err(|_| Error::BadRecordMac)?;
        // The inner content type is the last byte that is not padding.
        let end = plaintext
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(Error::Unexpected("a record without a content type"))?;
        let kind = plaintext[end];
        if end > PLAINTEXT_BYTES_MAX {
            return Err(Error::BadRecord);
        }
        Ok((kind, HEADER_BYTES..HEADER_BYTES + end))
    }
}

impl Cipher {
    /// The suite's hash, as HKDF.
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Cipher::Aes256Gcm => hkdf::HKDF_SHA384,
            Cipher::Aes128Gcm | Cipher::Chacha20Poly1305 => hkdf::HKDF_SHA256,
        }
    }

    /// Its hash's output: a traffic secret's length.
    fn hash_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => 48,
            Cipher::Aes128Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }
}

/// `HKDF-Expand-Label(secret, label, "", out.len())` (RFC 8446 §7.1).
fn expand_label(hash: hkdf::Algorithm, secret: &[u8], label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(hash, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("a label's output is far below HKDF's limit");
}

impl Drop for Traffic {
    fn drop(&mut self) {
        // The keys do not outlive the connection in freed memory.
        let bytes = self.key.iter_mut().chain(self.iv.iter_mut());
        for byte in bytes.chain(self.secret.iter_mut()) {
            // SAFETY: a plain write to a byte we own; volatile so it is not elided.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// The length of the record at the front of `data` (header included), if its header is
/// there: `Err` when the header is not a TLS 1.3 protected record's.
pub(crate) fn record_len(data: &[u8]) -> Result<Option<usize>, Error> {
    let Some(header) = data.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let length = u16::from_be_bytes([header[3], header[4]]) as usize;
    let fits = length > TAG_BYTES && length <= RECORD_BYTES_MAX - HEADER_BYTES;
    if header[..3] != [APPLICATION_DATA, 3, 3] || !fits {
        return Err(Error::BadRecord);
    }
    Ok(Some(HEADER_BYTES + length))
}
