//! Client frame parsing (unmasking in place) and server frame encoding.
//!
//! `parse_client_frame` takes the bytes read so far and answers `Ok(None)` when a whole
//! frame is not there yet, so the caller keeps the bytes and reads more.

use std::io::Cursor;

use bytes::Bytes;
pub use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::{
    coding::{Control, Data},
    FrameHeader,
};

use super::{close, mask::unmask};

/// The largest header a client frame can have: 2 + 8 (length) + 4 (mask).
pub const CLIENT_HEADER_MAX: usize = 14;
/// The largest header a server frame can have: 2 + 8 (length), never masked.
pub const SERVER_HEADER_MAX: usize = 10;
/// The text opcode, for callers that encode text frames themselves.
pub const TEXT: OpCode = OpCode::Data(Data::Text);
/// The ping opcode (the server's idle check).
pub const PING: OpCode = OpCode::Control(Control::Ping);
/// The pong opcode (a client's answer to a ping).
pub const PONG: OpCode = OpCode::Control(Control::Pong);
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_MAX: usize = 125;

/// What kind of frame arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opcode 0x0: the next piece of a fragmented message.
    Continuation,
    /// Opcode 0x1.
    Text,
    /// Opcode 0x2.
    Binary,
    /// Opcode 0x8.
    Close,
    /// Opcode 0x9.
    Ping,
    /// Opcode 0xA.
    Pong,
}

/// One parsed client frame; its payload is `buf[payload]`, already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFrame {
    /// The FIN bit: the last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub kind: Kind,
    /// Where the payload sits in the parsed buffer.
    pub payload: std::ops::Range<usize>,
}

/// A frame the peer must not have sent; the value is the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV bits, reserved opcodes, unmasked client frames, bad control frames.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A payload over the configured limit.
    #[error("frame payload of {0} bytes is over the limit")]
    TooBig(u64),
}

impl FrameError {
    /// The close code that answers this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => close::PROTOCOL_ERROR,
            FrameError::TooBig(_) => close::MESSAGE_TOO_BIG,
        }
    }
}

/// Parses one client frame from the front of `buf`, unmasking its payload in place.
///
/// Returns the frame and the bytes it used, or `Ok(None)` when `buf` does not yet hold a
/// whole frame. `payload_max` bounds a data frame's payload. Hot path: no allocation.
pub fn parse_client_frame(
    buf: &mut [u8],
    payload_max: usize,
) -> Result<Option<(ParsedFrame, usize)>, FrameError> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    let header_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let Some(mask) = header.mask else {
        return Err(FrameError::Protocol("client frames must be masked"));
    };
    let kind = kind_of(header.opcode)?;
    let is_control = matches!(kind, Kind::Close | Kind::Ping | Kind::Pong);
    if is_control && (!header.is_final || length > CONTROL_PAYLOAD_MAX as u64) {
        return Err(FrameError::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    if length > payload_max as u64 {
        return Err(FrameError::TooBig(length));
    }
    let length = length as usize;
    let total = header_len + length;
    if buf.len() < total {
        return Ok(None);
    }
    unmask(&mut buf[header_len..total], mask, 0);
    Ok(Some((
        ParsedFrame {
            fin: header.is_final,
            kind,
            payload: header_len..total,
        },
        total,
    )))
}

/// The frame kind of an opcode; reserved opcodes are protocol errors.
fn kind_of(opcode: OpCode) -> Result<Kind, FrameError> {
    Ok(match opcode {
        OpCode::Data(Data::Continue) => Kind::Continuation,
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Control(Control::Close) => Kind::Close,
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(FrameError::Protocol("reserved opcode"))
        }
    })
}

/// Validates a close frame's payload: empty, or a valid code followed by UTF-8 reason.
///
/// Returns the code to echo back (1000 for an empty payload).
pub fn parse_close_payload(payload: &[u8]) -> Result<u16, u16> {
    match payload.len() {
        0 => Ok(close::NORMAL),
        1 => Err(close::PROTOCOL_ERROR),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::peer_code_is_valid(code) {
                return Err(close::PROTOCOL_ERROR);
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(close::INVALID_PAYLOAD);
            }
            Ok(code)
        }
    }
}

/// Checks that a whole text message is UTF-8 (RFC 6455 §8.1); `Err` carries close code 1007.
///
/// Called once per reassembled message, so a message split inside a multi-byte character
/// across fragments is still valid.
pub fn check_text(payload: &[u8]) -> Result<(), u16> {
    std::str::from_utf8(payload)
        .map(|_| ())
        .map_err(|_| close::INVALID_PAYLOAD)
}

/// Writes a server frame (FIN set, unmasked) with `payload` into one shareable buffer.
///
/// One allocation per frame; the frame is then shared by refcount with every recipient.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(SERVER_HEADER_MAX + payload.len());
    write_header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Writes a text frame.
pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// Writes a text frame whose payload is `parts` one after the other (one allocation, as
/// [`encode`]).
pub fn encode_text_parts(parts: &[&[u8]]) -> Bytes {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(SERVER_HEADER_MAX + len);
    write_header(OpCode::Data(Data::Text), len, &mut out);
    for part in parts {
        out.extend_from_slice(part);
    }
    Bytes::from(out)
}

/// The payload of a frame [`encode_text`] wrote (server frames are unmasked), sharing its
/// bytes: how an encoded message is kept without its framing.
pub fn payload_of(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.slice(header.min(frame.len())..)
}

/// Writes a close frame with `code` and a reason (cut to fit the 125-byte control limit).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(CONTROL_PAYLOAD_MAX - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OpCode::Control(Control::Close), &payload)
}

/// Writes a pong answering a ping with `payload`.
pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// Writes a client frame (FIN set, masked with `mask`) onto `out`: for load generators
/// and tests that play the client side.
pub fn encode_client(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
}

/// One server frame as a client sees it: FIN bit, opcode, payload range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode.
    pub kind: Kind,
    /// Where the payload sits in the parsed buffer.
    pub payload: std::ops::Range<usize>,
}

/// Parses one (unmasked) server frame from the front of `buf`; `Ok(None)` needs more bytes.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(ServerFrame, usize)>, FrameError> {
    let mut cursor = Cursor::new(buf);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    if header.mask.is_some() {
        return Err(FrameError::Protocol("server frames must not be masked"));
    }
    let kind = kind_of(header.opcode)?;
    let start = cursor.position() as usize;
    let Some(end) = usize::try_from(length)
        .ok()
        .and_then(|l| start.checked_add(l))
    else {
        return Err(FrameError::TooBig(length));
    };
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        ServerFrame {
            fin: header.is_final,
            kind,
            payload: start..end,
        },
        end,
    )))
}

fn write_header(opcode: OpCode, length: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: None,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(length as u64, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a masked client frame the way a browser would.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_a_masked_text_frame() {
        let mut buf = client_frame(0x81, b"hello", [1, 2, 3, 4]);
        let (frame, used) = parse_client_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert!(frame.fin);
        assert_eq!(frame.kind, Kind::Text);
        assert_eq!(&buf[frame.payload], b"hello");
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let full = client_frame(0x81, &[b'x'; 300], [9, 8, 7, 6]);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert_eq!(
                parse_client_frame(&mut part, 1024),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unmasked_frames_are_protocol_errors() {
        let mut buf = vec![0x81, 0x02, b'h', b'i'];
        assert!(matches!(
            parse_client_frame(&mut buf, 1024),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_protocol_errors() {
        for first in [0xC1, 0xA1, 0x91, 0x83, 0x8B] {
            let mut buf = client_frame(first, b"x", [1, 1, 1, 1]);
            let err = parse_client_frame(&mut buf, 1024).unwrap_err();
            assert_eq!(
                err.close_code(),
                close::PROTOCOL_ERROR,
                "first byte {first:#x}"
            );
        }
    }

    #[test]
    fn fragmented_or_long_control_frames_are_protocol_errors() {
        let mut ping_not_final = client_frame(0x09, b"", [0; 4]);
        assert!(parse_client_frame(&mut ping_not_final, 1024).is_err());
        let mut long_ping = client_frame(0x89, &[0; 126], [0; 4]);
        assert!(parse_client_frame(&mut long_ping, 1024).is_err());
    }

    #[test]
    fn oversize_payloads_are_refused_from_the_header_alone() {
        let full = client_frame(0x81, &[0; 2000], [0; 4]);
        let mut header_only = full[..8].to_vec();
        let err = parse_client_frame(&mut header_only, 1000).unwrap_err();
        assert_eq!(err, FrameError::TooBig(2000));
        assert_eq!(err.close_code(), close::MESSAGE_TOO_BIG);
    }

    #[test]
    fn close_payloads_are_validated() {
        assert_eq!(parse_close_payload(b""), Ok(1000));
        assert_eq!(parse_close_payload(&[3]), Err(1002));
        assert_eq!(parse_close_payload(&[0x03, 0xE8, b'o', b'k']), Ok(1000));
        assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(1002)); // 1005 is reserved
        assert_eq!(parse_close_payload(&[0x03, 0xE8, 0xFF]), Err(1007));
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(check_text("héllo ✓ 😀".as_bytes()), Ok(()));
        for bad in [
            &b"\xff"[..],
            b"\xc3",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
        ] {
            // truncated, overlong, surrogate, above U+10FFFF
            assert_eq!(check_text(bad), Err(close::INVALID_PAYLOAD), "{bad:?}");
        }
        // A character split across two fragments is fine once reassembled.
        let whole = "é".as_bytes();
        assert!(check_text(&whole[..1]).is_err());
        assert_eq!(check_text(&[&whole[..1], &whole[1..]].concat()), Ok(()));
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let frame = encode_close(4003, &"é".repeat(100));
        assert!(frame.len() <= 2 + CONTROL_PAYLOAD_MAX);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn client_encoding_parses_back_on_the_server_side_and_vice_versa() {
        let mut out = Vec::new();
        encode_client(OpCode::Data(Data::Text), b"hello", [7, 7, 7, 7], &mut out);
        let (frame, used) = parse_client_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!((&out[frame.payload], used), (&b"hello"[..], out.len()));
        let server = encode_text(b"world");
        let (frame, used) = parse_server_frame(&server).unwrap().unwrap();
        assert_eq!(
            (frame.kind, &server[frame.payload], used),
            (Kind::Text, &b"world"[..], server.len())
        );
        assert_eq!(parse_server_frame(&server[..3]), Ok(None));
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                                    mask in any::<[u8; 4]>(), fin in any::<bool>()) {
            let first = if fin { 0x82 } else { 0x02 };
            let mut buf = client_frame(first, &payload, mask);
            buf.extend_from_slice(b"next");
            let (frame, used) = parse_client_frame(&mut buf, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(frame.fin, fin);
            prop_assert_eq!(&buf[frame.payload.clone()], &payload[..]);
            prop_assert_eq!(&buf[used..], b"next");
        }

        #[test]
        fn server_frames_parse_back(payload in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let encoded = encode_text(&payload);
            let mut cursor = Cursor::new(&encoded[..]);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            prop_assert!(header.is_final && header.mask.is_none());
            prop_assert_eq!(len as usize, payload.len());
            prop_assert_eq!(&encoded[cursor.position() as usize..], &payload[..]);
        }

        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_client_frame(&mut bytes, 1024);
        }
    }
}
