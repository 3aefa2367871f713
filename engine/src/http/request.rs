//! Parses one HTTP/1.1 request head from bytes; knows nothing of sockets.

/// The most headers a request may carry.
pub const HEADERS_MAX: usize = 32;
/// The largest request body accepted: 64 KiB, the same as the default message limit.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

/// The parts of a request head the gateway acts on, copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// HTTP/1.1 (`true`) or HTTP/1.0 (`false`).
    pub http11: bool,
    /// Headers as `(lower-case name, value)`.
    pub headers: Vec<(String, String)>,
    /// From `Content-Length` (0 when absent).
    pub content_length: usize,
}

/// A request the gateway refuses to read; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not HTTP/1.x at all.
    #[error("malformed request")]
    Malformed,
    /// The head is over its bound (`--handshake-bytes-max`) or has too many headers.
    #[error("request head too large")]
    HeadTooLarge,
    /// The body is over [`BODY_BYTES_MAX`].
    #[error("request body too large")]
    BodyTooLarge,
    /// `Transfer-Encoding` bodies are not accepted.
    #[error("transfer-encoding is not supported")]
    TransferEncoding,
    /// More than one `Content-Length`, or one that is not plain digits.
    #[error("one Content-Length of plain digits is allowed")]
    ContentLength,
}

impl RequestError {
    /// The HTTP status that answers this error.
    pub fn status(self) -> u16 {
        match self {
            RequestError::Malformed | RequestError::ContentLength => 400,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
            RequestError::TransferEncoding => 501,
        }
    }
}

impl Request {
    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return false;
        }
        self.http11 || self.header_has_token("connection", "keep-alive")
    }

    /// The value of query parameter `key`, percent-decoding left to the caller.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Decodes `%XX` escapes in a path segment or query value; `None` for a broken escape or
/// bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail
                .get(..2)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Parses a request head from the front of `buf`.
///
/// `Ok(None)`: the head is not complete yet. `Ok(Some((request, head_len)))`: the body,
/// if any, starts at `head_len` and is `request.content_length` bytes long.
pub fn parse(buf: &[u8], head_bytes_max: usize) -> Result<Option<(Request, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > head_bytes_max => {
            return Err(RequestError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(_) => return Err(RequestError::Malformed),
    };
    if head_len > head_bytes_max {
        return Err(RequestError::HeadTooLarge);
    }
    let (method, target, version) = match (parsed.method, parsed.path, parsed.version) {
        (Some(m), Some(p), Some(v)) => (m, p, v),
        _ => return Err(RequestError::Malformed),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        http11: version == 1,
        headers: Vec::with_capacity(parsed.headers.len()),
        content_length: 0,
    };
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| RequestError::Malformed)?;
        request
            .headers
            .push((header.name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    if request.header("transfer-encoding").is_some() {
        return Err(RequestError::TransferEncoding);
    }
    request.content_length = content_length(&request)?;
    Ok(Some((request, head_len)))
}

/// The body's length (PROTOCOL.md v2, "Transport security and safe defaults"): at most
/// one `Content-Length`, plain digits only. A lenient reading (the first of two, `+5`)
/// lets a proxy in front and the gateway disagree on where a request ends, which is
/// request smuggling; so both are refused.
fn content_length(request: &Request) -> Result<usize, RequestError> {
    let mut lengths = request
        .headers
        .iter()
        .filter(|(name, _)| name == "content-length");
    let Some((_, length)) = lengths.next() else {
        return Ok(0);
    };
    if lengths.next().is_some() {
        return Err(RequestError::ContentLength);
    }
    if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::ContentLength);
    }
    match length.parse::<usize>() {
        Ok(length) if length <= BODY_BYTES_MAX => Ok(length),
        _ => Err(RequestError::BodyTooLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEAD_BYTES_MAX: usize = 8192;

    #[test]
    fn parses_a_get_with_query_and_headers() {
        let raw = b"GET /ws?token=abc&x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\nrest";
        let (req, len) = parse(raw, HEAD_BYTES_MAX).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query_param("token"), Some("abc"));
        assert!(req.header_has_token("connection", "upgrade"));
        assert!(req.keep_alive());
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", HEAD_BYTES_MAX),
            Ok(None)
        );
    }

    #[test]
    fn oversize_heads_and_bodies_are_refused() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', HEAD_BYTES_MAX + 1));
        assert_eq!(parse(&raw, HEAD_BYTES_MAX), Err(RequestError::HeadTooLarge));
        let body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            BODY_BYTES_MAX + 1
        );
        assert_eq!(
            parse(body.as_bytes(), HEAD_BYTES_MAX),
            Err(RequestError::BodyTooLarge)
        );
        assert_eq!(
            parse(
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HEAD_BYTES_MAX
            ),
            Err(RequestError::ContentLength)
        );
        assert_eq!(
            parse(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HEAD_BYTES_MAX
            ),
            Err(RequestError::TransferEncoding)
        );
    }

    #[test]
    fn only_one_content_length_of_plain_digits_is_read() {
        for head in [
            "Content-Length: 0\r\nContent-Length: 5",
            "Content-Length: 5\r\nContent-Length: 5",
            "Content-Length: +5",
            "Content-Length: 0x5",
            "Content-Length: 5, 5",
            "Content-Length: ",
        ] {
            let raw = format!("POST /api/messages/send HTTP/1.1\r\n{head}\r\n\r\nhello");
            assert_eq!(
                parse(raw.as_bytes(), HEAD_BYTES_MAX),
                Err(RequestError::ContentLength),
                "{head:?}"
            );
        }
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parse(raw, HEAD_BYTES_MAX), Err(RequestError::BodyTooLarge));
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 005\r\n\r\nhello";
        let (request, _) = parse(raw, HEAD_BYTES_MAX).unwrap().unwrap();
        assert_eq!(request.content_length, 5);
    }

    #[test]
    fn the_head_bound_is_the_callers() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789\r\n\r\n";
        assert!(parse(raw, raw.len()).unwrap().is_some());
        assert_eq!(parse(raw, raw.len() - 1), Err(RequestError::HeadTooLarge));
        assert_eq!(parse(&raw[..30], 20), Err(RequestError::HeadTooLarge));
    }

    #[test]
    fn http10_closes_unless_asked() {
        let (req, _) = parse(b"GET / HTTP/1.0\r\n\r\n", HEAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(!req.keep_alive());
        let (req, _) = parse(
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            HEAD_BYTES_MAX,
        )
        .unwrap()
        .unwrap();
        assert!(!req.keep_alive());
    }

    #[test]
    fn percent_escapes_decode_to_utf8_or_nothing() {
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("a%2fb").as_deref(), Some("a/b"));
        for broken in ["%", "%4", "%zz", "%+1", "%FF"] {
            assert_eq!(percent_decode(broken), None, "{broken}");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            parse(b"\x00\x01\x02 nonsense\r\n\r\n", HEAD_BYTES_MAX),
            Err(RequestError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, HEAD_BYTES_MAX);
        }

        #[test]
        fn percent_encoded_text_decodes_to_itself(text in "\\PC{0,40}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&encoded), Some(text.clone()));
            let _ = percent_decode(&text);
        }
    }
}
