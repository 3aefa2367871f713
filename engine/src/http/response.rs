//! Writes HTTP/1.1 responses into one buffer, ready to queue on a connection.

use bytes::Bytes;

/// The reason phrase for the status codes this gateway sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A whole response: status line, `Content-Type`, `Content-Length`, `Connection`, and
/// any `extra_headers` (each a full `Name: value` line without CRLF), then the body.
pub fn write(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra_headers: &[&str],
) -> Bytes {
    let mut out = Vec::with_capacity(160 + body.len());
    let connection = if keep_alive { "keep-alive" } else { "close" };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
            reason(status),
            body.len()
        )
        .as_bytes(),
    );
    for header in extra_headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A JSON error body `{"error":code,"message":message}` with `status`.
pub fn json_error(status: u16, code: &str, message: &str, keep_alive: bool) -> Bytes {
    let mut body = Vec::with_capacity(64 + message.len());
    crate::protocol::json::Obj::new(&mut body)
        .str("error", code)
        .str("message", message)
        .end();
    write(status, "application/json", &body, keep_alive, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_has_length_and_connection_headers() {
        let out = write(200, "text/plain", b"hi", true, &["X-A: b"]);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("X-A: b\r\n\r\nhi"));
    }
}
