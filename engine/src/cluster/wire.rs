//! The NATS client protocol's text framing, as the live relay speaks it on its own
//! connection (docs/cluster.md, "Live delivery"): the server's operations parsed out of a
//! read buffer, and the client's written into a write buffer. No I/O here.
//!
//! The relay speaks it itself, rather than through async-nats, for the memory: an
//! async-nats subscription is a channel whose first block holds 32 messages, about 8 KB a
//! user online with its forwarding task (benches/RESULTS.md, "A cluster node's routing
//! state"). Here a subscription is one map entry.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest control line taken from the server (INFO carries the most).
const LINE_MAX: usize = 64 * 1024;
/// The largest message payload taken (the server's default `max_payload` is 1 MiB).
const PAYLOAD_MAX: usize = 8 << 20;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// `INFO {…}`: the server's description; of it only whether TLS must begin.
    Info {
        /// `tls_required`: the client starts TLS before it says anything.
        tls_required: bool,
    },
    /// `MSG` or `HMSG`: a message for subscription `sid`.
    Msg {
        /// The subscription it matched.
        sid: u64,
        /// Its subject.
        subject: Bytes,
        /// Where an answer goes, for a request.
        reply: Option<Bytes>,
        /// A status in its headers (`503`: no responders), if any.
        status: Option<u16>,
        /// Its header block (empty for a `MSG`): read with [`header`].
        headers: Bytes,
        /// The payload.
        payload: Bytes,
    },
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '…'`.
    Err(String),
}

/// The server sent something this client cannot read: the connection is dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("NATS protocol: {0}")]
pub(super) struct WireError(&'static str);

/// The next whole operation in `buf`, taken out of it; `None` if more bytes are needed.
pub(super) fn next_op(buf: &mut BytesMut) -> Result<Option<Op>, WireError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > LINE_MAX {
            Err(WireError("a control line is too long"))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..eol];
    let (verb, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &[][..]),
    };
    let op = match verb.to_ascii_uppercase().as_slice() {
        b"MSG" | b"HMSG" => return message(buf, eol, verb.len() == 4),
        b"INFO" => {
            let info: serde_json::Value = serde_json::from_slice(args).unwrap_or_default();
            Op::Info {
                tls_required: info["tls_required"].as_bool() == Some(true),
            }
        }
        b"PING" => Op::Ping,
        b"PONG" => Op::Pong,
        b"+OK" => Op::Ok,
        b"-ERR" => Op::Err(String::from_utf8_lossy(args).trim_matches('\'').to_owned()),
        _ => return Err(WireError("an unknown operation")),
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <header size>
/// <size>`, then the body and CRLF; `None` until all of it is in `buf`.
fn message(buf: &mut BytesMut, eol: usize, headers: bool) -> Result<Option<Op>, WireError> {
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| WireError("a line is not UTF-8"))?;
    let fields: Vec<&str> = line.split_ascii_whitespace().skip(1).collect();
    let sizes = if headers { 2 } else { 1 };
    if fields.len() != 2 + sizes && fields.len() != 3 + sizes {
        return Err(WireError("a message line has the wrong fields"));
    }
    let number = |s: &str| s.parse::<usize>().map_err(|_| WireError("a bad number"));
    let total = number(fields[fields.len() - 1])?;
    let header_len = if headers {
        number(fields[fields.len() - 2])?
    } else {
        0
    };
    if total > PAYLOAD_MAX || header_len > total {
        return Err(WireError("a message is too large or its sizes disagree"));
    }
    if buf.len() < eol + 2 + total + 2 {
        return Ok(None);
    }
    let sid = number(fields[1])? as u64;
    let has_reply = fields.len() == 3 + sizes;
    let subject = Bytes::copy_from_slice(fields[0].as_bytes());
    let reply = has_reply.then(|| Bytes::copy_from_slice(fields[2].as_bytes()));
    buf.advance(eol + 2);
    let mut body = buf.split_to(total + 2).freeze();
    if &body[total..] != b"\r\n" {
        return Err(WireError("a message does not end where its size says"));
    }
    body.truncate(total);
    let status = status_of(&body[..header_len]);
    Ok(Some(Op::Msg {
        sid,
        subject,
        reply,
        status,
        headers: body.slice(..header_len),
        payload: body.slice(header_len..),
    }))
}

/// The value of header `name` in a header block (the first, if repeated).
pub(super) fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|b| *b == b':')?;
        let (key, value) = line.split_at(colon);
        key.eq_ignore_ascii_case(name.as_bytes())
            .then(|| value[1..].trim_ascii())
    })
}

/// The status code on a header block's first line (`NATS/1.0 503`), if it has one.
fn status_of(headers: &[u8]) -> Option<u16> {
    let first = headers.split(|b| *b == b'\r').next()?;
    let rest = first.strip_prefix(b"NATS/1.0")?;
    let code = std::str::from_utf8(rest).ok()?.split_whitespace().next()?;
    code.parse().ok()
}

/// `CONNECT {…}` and a `PING` whose `PONG` says the server took it. `echo` off: what this
/// connection publishes never comes back to it.
pub(super) fn connect(out: &mut BytesMut, name: &str, credentials: &Credentials) {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "echo": false,
        "name": name,
    });
    match credentials {
        Credentials::None => {}
        Credentials::UserPassword(user, pass) => {
            options["user"] = user.as_str().into();
            options["pass"] = pass.as_str().into();
        }
        Credentials::Token(token) => options["auth_token"] = token.as_str().into(),
    }
    out.put_slice(b"CONNECT ");
    out.put_slice(options.to_string().as_bytes());
    out.put_slice(b"\r\nPING\r\n");
}

/// How a connection proves who it is to NATS, as its URL says: `nats://user:pass@host`
/// or `nats://token@host` (percent-encoded where needed), as NATS clients read them.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Credentials {
    /// None in the URL.
    None,
    /// A user and its password.
    UserPassword(String, String),
    /// A token.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    /// Never the secret itself, so that it stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword(user, _) => write!(f, "UserPassword({user}, ***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl Credentials {
    /// The credentials in `server`'s URL.
    pub(super) fn of(server: &async_nats::ServerAddr) -> Credentials {
        match (server.username(), server.password()) {
            (Some(user), Some(pass)) => {
                Credentials::UserPassword(percent_decoded(user), percent_decoded(pass))
            }
            (Some(token), None) => Credentials::Token(percent_decoded(token)),
            _ => Credentials::None,
        }
    }
}

/// `text` with its `%XX` escapes decoded (a bad one stays as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `SUB <subject> <sid>`.
pub(super) fn subscribe(out: &mut BytesMut, subject: &str, sid: u64) {
    out.put_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// `UNSUB <sid>`.
pub(super) fn unsubscribe(out: &mut BytesMut, sid: u64) {
    out.put_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

/// `PUB <subject> [reply] <size>`, the payload.
pub(super) fn publish(out: &mut BytesMut, subject: &[u8], reply: Option<&str>, payload: &[u8]) {
    out.put_slice(b"PUB ");
    out.put_slice(subject);
    if let Some(reply) = reply {
        out.put_u8(b' ');
        out.put_slice(reply.as_bytes());
    }
    out.put_slice(format!(" {}\r\n", payload.len()).as_bytes());
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// `HPUB <subject> <reply> <header size> <size>`, the headers `(name, value)` (values
/// must not hold CR or LF), the payload.
pub(super) fn publish_with_headers(
    out: &mut BytesMut,
    subject: &[u8],
    reply: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    let mut block = String::from("NATS/1.0\r\n");
    for (name, value) in headers {
        debug_assert!(!value.contains(['\r', '\n']), "{value:?}");
        block.push_str(&format!("{name}: {value}\r\n"));
    }
    block.push_str("\r\n");
    out.put_slice(b"HPUB ");
    out.put_slice(subject);
    let total = block.len() + payload.len();
    out.put_slice(format!(" {reply} {} {total}\r\n", block.len()).as_bytes());
    out.put_slice(block.as_bytes());
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

/// `PONG`.
pub(super) fn pong(out: &mut BytesMut) {
    out.put_slice(b"PONG\r\n");
}

/// `PING`.
pub(super) fn ping(out: &mut BytesMut) {
    out.put_slice(b"PING\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(wire: &[u8]) -> Vec<Op> {
        let mut buf = BytesMut::from(wire);
        let mut ops = Vec::new();
        while let Some(op) = next_op(&mut buf).unwrap() {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left: {buf:?}");
        ops
    }

    #[test]
    fn the_servers_operations_are_read() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\nPING\r\n+OK\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n\
                     MSG chat.live.bob 7 5\r\nhello\r\nMSG chat.live.bob 7 _INBOX.a.1 0\r\n\r\n";
        let got = ops(wire);
        let info = Op::Info {
            tls_required: false,
        };
        assert_eq!(got[..4], [info, Op::Ping, Op::Ok, Op::Pong]);
        let tls = ops(b"INFO {\"tls_required\":true,\"port\":4222}\r\n");
        assert_eq!(tls, [Op::Info { tls_required: true }]);
        assert_eq!(got[4], Op::Err("Unknown Protocol Operation".into()));
        assert_eq!(
            got[5],
            Op::Msg {
                sid: 7,
                subject: Bytes::from_static(b"chat.live.bob"),
                reply: None,
                status: None,
                headers: Bytes::new(),
                payload: Bytes::from_static(b"hello"),
            }
        );
        let Op::Msg { reply, payload, .. } = &got[6] else {
            panic!("{:?}", got[6]);
        };
        assert_eq!(
            (reply.as_deref(), payload.len()),
            (Some(&b"_INBOX.a.1"[..]), 0)
        );
    }

    #[test]
    fn a_no_responders_status_is_read_from_the_headers() {
        let got = ops(b"HMSG _INBOX.a.3 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n");
        let Op::Msg {
            sid,
            status,
            payload,
            ..
        } = &got[0]
        else {
            panic!("{got:?}");
        };
        assert_eq!((*sid, *status, payload.len()), (1, Some(503), 0));
    }

    #[test]
    fn headers_are_written_and_read_back() {
        let mut out = BytesMut::new();
        let headers = [("Nats-Msg-Id", "ann:m-1")];
        publish_with_headers(&mut out, b"chat.inbox.bob", "_INBOX.a.j1", &headers, b"hi");
        let block = "NATS/1.0\r\nNats-Msg-Id: ann:m-1\r\n\r\n";
        let expected = format!(
            "HPUB chat.inbox.bob _INBOX.a.j1 {} {}\r\n{block}hi\r\n",
            block.len(),
            block.len() + 2
        );
        assert_eq!(out, expected.as_bytes());
        let wire = b"HMSG chat.live.bob 4 47 49\r\nNATS/1.0\r\nNats-Sequence: 12\r\nNats-Stream: I\r\n\r\nhi\r\n";
        let got = ops(wire);
        let Op::Msg {
            headers,
            payload,
            status,
            ..
        } = &got[0]
        else {
            panic!("{got:?}");
        };
        assert_eq!((status, &payload[..]), (&None, &b"hi"[..]));
        assert_eq!(header(headers, "nats-sequence"), Some(&b"12"[..]));
        assert_eq!(header(headers, "Nats-Stream"), Some(&b"I"[..]));
        assert_eq!(header(headers, "Nats-Subject"), None);
    }

    #[test]
    fn a_message_split_across_reads_waits_for_its_end() {
        let wire = b"MSG s 1 3\r\nabc\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(next_op(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            assert!(matches!(next_op(&mut buf), Ok(Some(Op::Msg { .. }))));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"NOPE\r\n"[..],
            b"MSG s x 3\r\nabc\r\n",
            b"MSG s 1\r\n",
            b"MSG s 1 3\r\nabcde\r\n",
            b"HMSG s 1 9 3\r\nabc\r\n",
            b"MSG s 1 99999999999\r\n",
        ] {
            assert!(next_op(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let long = vec![b'x'; LINE_MAX + 1];
        assert!(next_op(&mut BytesMut::from(&long[..])).is_err());
    }

    #[test]
    fn the_clients_operations_are_written() {
        let mut out = BytesMut::new();
        subscribe(&mut out, "chat.live.bob", 3);
        unsubscribe(&mut out, 3);
        publish(&mut out, b"chat.live.bob", Some("_INBOX.a.1"), b"hi");
        publish(&mut out, b"x", None, b"");
        pong(&mut out);
        ping(&mut out);
        assert_eq!(
            &out[..],
            b"SUB chat.live.bob 3\r\nUNSUB 3\r\nPUB chat.live.bob _INBOX.a.1 2\r\nhi\r\nPUB x 0\r\n\r\nPONG\r\nPING\r\n"
        );
        let mut hello = BytesMut::new();
        connect(&mut hello, "n", &Credentials::None);
        assert!(hello.starts_with(b"CONNECT {") && hello.ends_with(b"}\r\nPING\r\n"));
        assert!(std::str::from_utf8(&hello)
            .unwrap()
            .contains("\"echo\":false"));
    }

    #[test]
    fn credentials_come_from_the_url_decoded_and_never_show_in_debug() {
        let of = |url: &str| Credentials::of(&url.parse().unwrap());
        assert_eq!(of("nats://127.0.0.1:4222"), Credentials::None);
        assert_eq!(
            of("nats://chat:s%40cret@127.0.0.1:4222"),
            Credentials::UserPassword("chat".into(), "s@cret".into())
        );
        assert_eq!(of("nats://t0ken@h:1"), Credentials::Token("t0ken".into()));
        assert_eq!(
            format!("{:?}", of("nats://chat:pw@h:1")),
            "UserPassword(chat, ***)"
        );
        let mut out = BytesMut::new();
        connect(&mut out, "n", &of("nats://chat:pw@h:1"));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(r#""pass":"pw""#) && text.contains(r#""user":"chat""#),
            "{text}"
        );
        assert_eq!(percent_decoded("a%2"), "a%2");
    }
}
