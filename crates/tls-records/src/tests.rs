//! Sessions against rustls' own buffered client, over memory: what a peer sends opens,
//! what the session seals the peer reads, key updates both ways, alerts and forgeries.

use std::{io::Read, io::Write, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::UnbufferedServerConnection,
    ClientConfig, ClientConnection, RootCertStore, ServerConfig,
};

use crate::{Advance, Error, Handshake, Session, PLAINTEXT_BYTES_MAX};

const CERT: &[u8] = include_bytes!("../testdata/ec.pem");
/// The authority that signed it (its key is not kept).
const CA: &[u8] = include_bytes!("../testdata/ca.pem");
const KEY: &[u8] = include_bytes!("../testdata/ec.key");

fn server_config() -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.enable_secret_extraction = true;
    config.key_log = crate::key_log();
    Arc::new(config)
}

fn client() -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

/// Moves everything `client` has to send into `wire`.
fn client_output(client: &mut ClientConnection, wire: &mut Vec<u8>) {
    while client.wants_write() {
        client.write_tls(wire).unwrap();
    }
}

/// Feeds `wire` to the client; returns the plaintext it then has.
fn client_input(client: &mut ClientConnection, wire: &[u8]) -> Vec<u8> {
    let mut read = wire;
    while !read.is_empty() {
        client.read_tls(&mut read).unwrap();
        client.process_new_packets().unwrap();
    }
    let mut plaintext = Vec::new();
    match client.reader().read_to_end(&mut plaintext) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("{e}"),
    }
    plaintext
}

/// A server session and its rustls client, handshake done; the client's first bytes
/// (sent with its Finished) already opened.
fn pair(first: &[u8]) -> (Session, ClientConnection, Vec<u8>) {
    let mut server = Handshake::new(UnbufferedServerConnection::new(server_config()).unwrap());
    let mut client = client();
    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    let mut sent_first = false;
    loop {
        client_output(&mut client, &mut to_server);
        if !client.is_handshaking() && !sent_first {
            client.writer().write_all(first).unwrap();
            client_output(&mut client, &mut to_server);
            sent_first = true;
        }
        let advance = server.advance(&to_server, &mut to_client).unwrap();
        to_server.clear();
        client_input(&mut client, &to_client);
        to_client.clear();
        if let Advance::Established(done) = advance {
            let mut rest = done.rest;
            let mut reply = Vec::new();
            let mut plaintext = done.plaintext;
            let mut session = done.session;
            let opened = session.open(&mut rest, &mut reply).unwrap();
            plaintext.extend_from_slice(&rest[..opened.plaintext]);
            assert!(reply.is_empty());
            return (session, client, plaintext);
        }
    }
}

#[test]
fn a_session_is_small() {
    // What an idle TLS connection keeps beyond a plain one, but for its box.
    assert!(
        std::mem::size_of::<Session>() <= 240,
        "{}",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn data_goes_both_ways_after_the_hand_over() {
    let (mut session, mut client, first) = pair(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(first, b"GET / HTTP/1.1\r\n\r\n");
    // Client to server, with a record split across reads.
    let mut wire = Vec::new();
    client.writer().write_all(b"hello").unwrap();
    client.writer().write_all(b" world").unwrap();
    client_output(&mut client, &mut wire);
    let mut reply = Vec::new();
    let cut = wire.len() - 3;
    let mut head = wire[..cut].to_vec();
    let opened = session.open(&mut head, &mut reply).unwrap();
    let whole = opened.used;
    let mut got = head[..opened.plaintext].to_vec();
    let mut tail = wire[whole..].to_vec();
    let opened = session.open(&mut tail, &mut reply).unwrap();
    assert_eq!(opened.used, tail.len());
    got.extend_from_slice(&tail[..opened.plaintext]);
    assert_eq!(got, b"hello world");
    // Server to client: small chunks share a record; a large one spans several.
    let big = vec![7u8; PLAINTEXT_BYTES_MAX * 2 + 100];
    let mut out = Vec::new();
    session.seal([&b"ab"[..], b"cd", &big], &mut out);
    assert_eq!(out.len(), 3 * 22 + 4 + big.len(), "three full-ish records");
    let mut expected = b"abcd".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(client_input(&mut client, &out), expected);
}

#[test]
fn key_updates_are_followed_and_answered() {
    let (mut session, mut client, _) = pair(b"");
    for round in 0..3 {
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"after update").unwrap();
        let mut wire = Vec::new();
        client_output(&mut client, &mut wire);
        let mut reply = Vec::new();
        let opened = session.open(&mut wire, &mut reply).unwrap();
        assert_eq!(&wire[..opened.plaintext], b"after update", "round {round}");
        // rustls asks for ours: the reply carries it, and later records use the new key.
        assert!(!reply.is_empty());
        session.seal([&b"answer"[..]], &mut reply);
        assert_eq!(client_input(&mut client, &reply), b"answer");
    }
}

#[test]
fn the_session_updates_its_key_before_the_limit() {
    let (mut session, mut client, _) = pair(b"");
    session.tx_limit = session.tx.seq; // the limit is reached
    let mut out = Vec::new();
    session.seal([&b"fresh key"[..]], &mut out);
    assert_eq!(session.tx.seq, 1, "the new key sealed one record");
    session.tx_limit = u64::MAX;
    assert_eq!(client_input(&mut client, &out), b"fresh key");
}

#[test]
fn close_notify_ends_input() {
    let (mut session, mut client, _) = pair(b"");
    client.writer().write_all(b"bye").unwrap();
    client.send_close_notify();
    let mut wire = Vec::new();
    client_output(&mut client, &mut wire);
    let opened = session.open(&mut wire, &mut Vec::new()).unwrap();
    assert!(opened.closed);
    assert_eq!(&wire[..opened.plaintext], b"bye");
    // And ours reaches the client.
    let mut out = Vec::new();
    session.seal_close_notify(&mut out);
    client_input(&mut client, &out);
    let mut buf = [0u8; 8];
    assert_eq!(client.reader().read(&mut buf).unwrap(), 0, "clean EOF");
}

#[test]
fn forged_and_malformed_records_are_errors() {
    let (mut session, mut client, _) = pair(b"");
    client.writer().write_all(b"payload").unwrap();
    let mut wire = Vec::new();
    client_output(&mut client, &mut wire);
    let mut forged = wire.clone();
    *forged.last_mut().unwrap() ^= 1;
    let forged = session.open(&mut forged, &mut Vec::new());
    assert!(matches!(forged, Err(Error::BadRecordMac)), "{forged:?}");
    // A plaintext handshake record, an old version, an oversize length.
    for header in [
        [22u8, 3, 3, 0, 40],
        [23, 3, 1, 0, 40],
        [23, 3, 3, 0x48, 0x01],
        [23, 3, 3, 0, 5],
    ] {
        let mut record = header.to_vec();
        record.resize(64, 0);
        let result = session.open(&mut record, &mut Vec::new());
        assert!(
            matches!(result, Err(Error::BadRecord)),
            "{header:?}: {result:?}"
        );
    }
}

#[test]
fn a_garbage_client_hello_fails_the_handshake() {
    let mut server = Handshake::new(UnbufferedServerConnection::new(server_config()).unwrap());
    let result = server.advance(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut Vec::new());
    assert!(result.is_err());
    let mut server = Handshake::new(UnbufferedServerConnection::new(server_config()).unwrap());
    let huge = vec![22u8; 70_000];
    assert!(matches!(
        server.advance(&huge, &mut Vec::new()),
        Err(Error::HandshakeTooLarge(_))
    ));
}

/// A server session and the client session facing it, with fixed keys of `cipher`'s kind
/// (no handshake: for the property tests).
fn fixed_pair(aes: bool) -> (Session, Session) {
    use rustls::{
        crypto::cipher::{AeadKey, Iv},
        ConnectionTrafficSecrets, ExtractedSecrets,
    };
    let direction = |seed: u8| {
        let (key, iv) = (AeadKey::from([seed; 32]), Iv::from([seed ^ 0x5a; 12]));
        match aes {
            true => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            false => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        }
    };
    let secret_len = if aes { 48 } else { 32 };
    let (up, down) = (vec![0xa1; secret_len], vec![0xa2; secret_len]);
    let server = Session::new(
        ExtractedSecrets {
            tx: (0, direction(2)),
            rx: (0, direction(1)),
        },
        (&down, &up),
        false,
    )
    .unwrap();
    let client = Session::new(
        ExtractedSecrets {
            tx: (0, direction(1)),
            rx: (0, direction(2)),
        },
        (&up, &down),
        true,
    )
    .unwrap();
    (server, client)
}

proptest::proptest! {
    /// Whatever is sealed, in whatever chunks, with key updates between, opens whole and
    /// in order however the reads cut the records.
    #[test]
    fn sealed_opens_as_it_was_whatever_the_cuts(
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40_000), 1..6),
        read in 1usize..20_000,
        updates in proptest::collection::vec(proptest::bool::ANY, 6),
        aes in proptest::bool::ANY,
    ) {
        let (mut server, mut client) = fixed_pair(aes);
        let mut wire = Vec::new();
        for (chunk, update) in chunks.iter().zip(&updates) {
            client.seal([&chunk[..]], &mut wire);
            if *update {
                client.update_key(&mut wire);
            }
        }
        let (mut got, mut pending, mut reply) = (Vec::new(), Vec::new(), Vec::new());
        for cut in wire.chunks(read) {
            pending.extend_from_slice(cut);
            let opened = server.open(&mut pending, &mut reply).unwrap();
            got.extend_from_slice(&pending[..opened.plaintext]);
            pending.drain(..opened.used);
        }
        proptest::prop_assert!(pending.is_empty());
        proptest::prop_assert_eq!(got, chunks.concat());
        proptest::prop_assert!(reply.is_empty(), "no update asked for ours");
    }

    /// Any bytes, as records: an error or nothing opened, never a panic or plaintext.
    #[test]
    fn noise_never_opens(mut noise in proptest::collection::vec(proptest::num::u8::ANY, 0..2_000)) {
        let (mut server, _) = fixed_pair(false);
        if let Ok(opened) = server.open(&mut noise, &mut Vec::new()) {
            proptest::prop_assert_eq!(opened.plaintext, 0);
        }
    }
}
