//! TLS on the gateway's port (issue 22; DESIGN.md "TLS": "measure before choosing"): the heap
//! one idle server connection keeps once its handshake is done, with rustls' unbuffered API
//! (the caller owns every buffer, as a reactor would), with its buffered one, and with what
//! the engine keeps (rustls dropped after the handshake, a `tls_records::Session` kept),
//! per TLS 1.3 cipher suite; and the server's handshakes a second on one core, for an ECDSA
//! P-256 and an RSA-2048 certificate.
//!
//! Client and server run in this process, over memory: no socket is in the figures. The
//! heap is counted exactly (a counting wrapper around mimalloc): the live bytes after N
//! idle server connections, less those before, over N, with every client dropped.
//! Certificates are made with `openssl` in a temporary directory.
//!
//! `cargo bench -p engine --bench tls_memory -- [connections] [handshakes]`

mod support;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::UnbufferedServerConnection,
    unbuffered::{ConnectionState, EncodeError},
    CipherSuite, ClientConnection, ServerConfig, ServerConnection,
};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

/// A TLS record's largest size on the wire, which each side's scratch buffer holds.
const RECORD_BYTES_MAX: usize = 16 * 1024 + 256;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let handshakes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let dir = std::env::temp_dir().join(format!("tls-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    support::tls::make_certificates(&dir);
    println!("idle server connections after the handshake ({connections} each), heap bytes each:");
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let server = server_config(&dir, "ec", suite);
        let unbuffered = bytes_each(connections, || unbuffered_pair(&server));
        let buffered = bytes_each(connections, || buffered_pair(&server));
        let session = bytes_each(connections, || session_pair(&server));
        println!(
            "  {suite:?}: unbuffered {unbuffered:.0} B, buffered {buffered:.0} B, \
             tls_records session (the engine's) {session:.0} B"
        );
    }
    println!("server handshakes a second on one core (TLS 1.3, AES-128-GCM, {handshakes} each):");
    for key in ["ec", "rsa"] {
        let server = server_config(&dir, key, CipherSuite::TLS13_AES_128_GCM_SHA256);
        let server_time = timed_handshakes(handshakes, &server);
        let per_second = handshakes as f64 / server_time.as_secs_f64();
        let micros = server_time.as_secs_f64() * 1e6 / handshakes as f64;
        println!("  {key}: {per_second:.0} a second ({micros:.0} µs of server time each)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Heap bytes each of `n` connections `make` returns keeps once all are made, plus its
/// own size (where a reactor would keep it).
fn bytes_each<T>(n: usize, mut make: impl FnMut() -> T) -> f64 {
    let mut kept = Vec::with_capacity(n);
    let before = support::LIVE_BYTES.load(Ordering::Relaxed);
    for _ in 0..n {
        kept.push(make());
    }
    let after = support::LIVE_BYTES.load(Ordering::Relaxed);
    drop(kept);
    (after - before) as f64 / n as f64 + std::mem::size_of::<T>() as f64
}

/// A TLS 1.3 server with `key`'s certificate and only `suite`; no session tickets, so a
/// connection keeps nothing for resumption.
fn server_config(dir: &Path, key: &str, suite: CipherSuite) -> Arc<ServerConfig> {
    let file = |name: String| -> PathBuf { dir.join(name) };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(file(format!("{key}.pem")))
            .expect("the certificate")
            .collect::<Result<_, _>>()
            .expect("the certificate parses");
    let private = PrivateKeyDer::from_pem_file(file(format!("{key}.key"))).expect("the key");
    let mut provider = (**ServerConfig::builder().crypto_provider()).clone();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .expect("the certificate and key agree");
    config.send_tls13_tickets = 0;
    // For `session_pair`, as the engine's config has them.
    config.enable_secret_extraction = true;
    config.key_log = tls_records::key_log();
    Arc::new(config)
}

/// A buffered server connection whose handshake with a fresh client is done.
fn buffered_pair(server: &Arc<ServerConfig>) -> ServerConnection {
    let mut server = ServerConnection::new(server.clone()).expect("a server connection");
    let mut client = new_client();
    let mut wire = Vec::new();
    while server.is_handshaking() || client.is_handshaking() {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client output");
        }
        let mut read = &wire[..];
        while !read.is_empty() {
            server.read_tls(&mut read).expect("server input");
            server.process_new_packets().expect("the server takes it");
        }
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("server output");
        }
        let mut read = &wire[..];
        while !read.is_empty() {
            client.read_tls(&mut read).expect("client input");
            client.process_new_packets().expect("the client takes it");
        }
    }
    server
}

fn new_client() -> ClientConnection {
    let name = ServerName::try_from("localhost").expect("a name");
    ClientConnection::new(support::tls::client_config(), name).expect("a client connection")
}

/// An unbuffered server connection whose handshake with a fresh client is done.
/// What the engine keeps of a connection once its handshake is done: the handshake run by
/// rustls (with a buffered client, over memory), then only its `tls_records::Session`.
fn session_pair(server: &Arc<ServerConfig>) -> Box<tls_records::Session> {
    let conn = UnbufferedServerConnection::new(server.clone()).expect("a server");
    let mut handshake = tls_records::Handshake::new(conn);
    let mut client = new_client();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    loop {
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client output");
        }
        let advance = handshake
            .advance(&to_server, &mut to_client)
            .expect("the handshake");
        to_server.clear();
        let mut read = &to_client[..];
        while !read.is_empty() {
            client.read_tls(&mut read).expect("client input");
            client.process_new_packets().expect("the client takes it");
        }
        to_client.clear();
        if let tls_records::Advance::Established(done) = advance {
            return Box::new(done.session);
        }
    }
}

fn unbuffered_pair(server: &Arc<ServerConfig>) -> UnbufferedServerConnection {
    let mut untimed = Duration::ZERO;
    unbuffered_handshake(server, &mut untimed)
}

/// `n` handshakes with the unbuffered server; the time spent in the server's side.
fn timed_handshakes(n: usize, server: &Arc<ServerConfig>) -> Duration {
    let mut server_time = Duration::ZERO;
    for _ in 0..n {
        drop(unbuffered_handshake(server, &mut server_time));
    }
    server_time
}

/// Drives an unbuffered server through a handshake with a buffered client over memory,
/// adding the time the server's calls took to `server_time`.
fn unbuffered_handshake(
    config: &Arc<ServerConfig>,
    server_time: &mut Duration,
) -> UnbufferedServerConnection {
    let mut server = UnbufferedServerConnection::new(config.clone()).expect("a server");
    let mut client = new_client();
    let (mut incoming, mut outgoing) = (
        Vec::with_capacity(RECORD_BYTES_MAX),
        vec![0u8; RECORD_BYTES_MAX],
    );
    let mut written = 0;
    loop {
        while client.wants_write() {
            client.write_tls(&mut incoming).expect("client output");
        }
        let started = Instant::now();
        let status = server.process_tls_records(&mut incoming);
        let discard = status.discard;
        let state = status.state.expect("the server takes the handshake");
        let done = match state {
            ConnectionState::EncodeTlsData(mut encode) => {
                match encode.encode(&mut outgoing[written..]) {
                    Ok(n) => written += n,
                    Err(EncodeError::InsufficientSize(_)) => panic!("a record over the buffer"),
                    Err(e) => panic!("encode: {e}"),
                }
                false
            }
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                *server_time += started.elapsed();
                let mut read = &outgoing[..written];
                while !read.is_empty() {
                    client.read_tls(&mut read).expect("client input");
                    client.process_new_packets().expect("the client takes it");
                }
                written = 0;
                incoming.drain(..discard);
                continue;
            }
            ConnectionState::BlockedHandshake => false,
            ConnectionState::WriteTraffic(_) => true,
            _ => panic!("an unexpected state during the handshake"),
        };
        *server_time += started.elapsed();
        incoming.drain(..discard);
        if done && !client.is_handshaking() {
            return server;
        }
    }
}
