//! TLS for the benches: certificates made with `openssl`, a client that takes any
//! certificate (the benches measure the server), and an authenticated WebSocket over TLS
//! that keeps only a [`tls_records::Session`] once its handshake is done.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::Arc,
};

use rustls::{client::UnbufferedClientConnection, pki_types::ServerName, ClientConfig};
use tls_records::{Advance, Handshake, Session};

/// Makes self-signed certificates for `localhost`: `ec.pem`/`ec.key` (P-256) and
/// `rsa.pem`/`rsa.key` (2048 bits).
pub fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (the bench makes its certificates with it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        "ec.key",
    ]);
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.key",
    ]);
    for key in ["ec", "rsa"] {
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{key}.key"),
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-out",
            &format!("{key}.pem"),
        ]);
    }
}

/// A client that takes any certificate (the bench measures the server) and keeps only a
/// session once its handshake is done (see [`connect_authenticated`]).
pub fn client_config() -> Arc<ClientConfig> {
    tls_records::client_config(tls_records::Trust::AnyCertificate)
}

/// A WebSocket over TLS, authenticated as `user` from `source`: its socket and session
/// (the client keeps nothing else, so that its own heap stays small).
pub fn connect_authenticated(
    addr: SocketAddr,
    source: std::net::IpAddr,
    user: &str,
    config: &Arc<ClientConfig>,
) -> (TcpStream, Box<Session>) {
    let mut stream = super::connect_from(addr, source);
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("localhost").expect("a name");
    let conn = UnbufferedClientConnection::new(config.clone(), name).expect("a client");
    let mut handshake = Handshake::new(conn);
    let (mut out, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    let mut input: &[u8] = &[];
    let done = loop {
        let advance = handshake.advance(input, &mut out).expect("the handshake");
        stream.write_all(&out).unwrap();
        out.clear();
        if let Advance::Established(done) = advance {
            break done;
        }
        let n = stream.read(&mut chunk).expect("the server answers");
        assert!(n > 0, "closed during the handshake");
        input = &chunk[..n];
    };
    let mut session = Box::new(done.session);
    let mut request = super::UPGRADE_REQUEST.to_vec();
    request.extend_from_slice(&super::text_frame(&format!(
        r#"{{"type":"auth","userId":"{user}","deviceId":"d"}}"#
    )));
    session.seal([&request[..]], &mut out);
    stream.write_all(&out).unwrap();
    let (mut seen, mut pending) = (Vec::new(), done.rest);
    while !seen.windows(12).any(|w| w == b"auth_success") {
        let n = stream.read(&mut chunk).expect("the answer arrives");
        assert!(n > 0, "closed before auth_success");
        pending.extend_from_slice(&chunk[..n]);
        let opened = session.open(&mut pending, &mut out).expect("records open");
        seen.extend_from_slice(&pending[..opened.plaintext]);
        pending.drain(..opened.used);
    }
    (stream, session)
}
