//! A webhook receiver for the hook tests (push notifications, events): it reads each
//! request's head and body, answers, and hands them over.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::mpsc,
};

/// One request as a webhook got it: the head (request line and headers) and the body.
pub type Request = (String, Vec<u8>);

/// Reads one HTTP/1.1 request from `reader`; `None` when the client sent nothing whole.
pub fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let (mut head, mut line, mut length) = (String::new(), String::new(), 0);
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A plain-HTTP webhook on an ephemeral port at `path`: answers 503 to the first
/// `failing` requests and 200 to the rest, and hands over each one it answered 200.
pub fn start(path: &str, failing: usize) -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let (requests, received) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let Some(request) = read_request(&mut reader) else {
                continue;
            };
            let status = if n < failing {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            if stream.write_all(answer.as_bytes()).is_ok() && n >= failing {
                let _ = requests.send(request);
            }
        }
    });
    (url, received)
}

/// Checks a hook request's `X-Engine-Signature` as a receiver does: HMAC-SHA256 of
/// `"<t>.<body>"` with the shared `secret`; panics unless it matches.
pub fn check_signature((head, body): (&str, &[u8]), secret: &str) {
    use hmac::Mac;
    let signature = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-engine-signature: ")
                .or_else(|| l.strip_prefix("X-Engine-Signature: "))
        })
        .unwrap_or_else(|| panic!("no signature in {head}"));
    let (t, v1) = signature.trim().split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature checks");
}
