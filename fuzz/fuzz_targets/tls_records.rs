//! The TLS record path (issue 22): what a reactor does with bytes from a TLS client.
//! The first byte picks a mode:
//! - 0: the bytes as a client's handshake flight to the engine's server configuration
//!   (rustls' parsing and the crate's driving of it);
//! - 1: the bytes as records to an established session: nothing may panic, and nothing
//!   forged may open;
//! - else: the bytes as plaintext a peer seals (with key updates between),
//!   cut into reads where the fuzzer says: the session opens exactly what was sealed.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rustls::{
    crypto::cipher::{AeadKey, Iv},
    server::UnbufferedServerConnection,
    ConnectionTrafficSecrets, ExtractedSecrets, ServerConfig,
};
use tls_records::{Advance, Handshake, Session};

const CERT: &[u8] = include_bytes!("../../crates/tls-records/testdata/ec.pem");
const KEY: &[u8] = include_bytes!("../../crates/tls-records/testdata/ec.key");

thread_local! {
    static SERVER: Arc<ServerConfig> = {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(CERT).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
        let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.enable_secret_extraction = true;
        config.key_log = tls_records::key_log();
        Arc::new(config)
    };
}

/// Keys for one direction, fixed (the fuzzer cannot learn them from the output), with
/// the traffic secret key updates start from.
fn secrets(seed: u8) -> (ConnectionTrafficSecrets, [u8; 32]) {
    let key = AeadKey::from([seed; 32]);
    let iv = Iv::from([seed ^ 0x5a; 12]);
    (ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }, [seed ^ 0xa5; 32])
}

/// A server session and the client session that talks to it.
fn pair() -> (Session, Session) {
    let ((to_server, to_server_secret), (to_client, to_client_secret)) = (secrets(1), secrets(2));
    let (again_to_server, _) = secrets(1);
    let (again_to_client, _) = secrets(2);
    let server = Session::new(
        ExtractedSecrets { tx: (0, to_client), rx: (0, to_server) },
        (&to_client_secret, &to_server_secret),
        false,
    )
    .unwrap();
    let client = Session::new(
        ExtractedSecrets { tx: (0, again_to_server), rx: (0, again_to_client) },
        (&to_server_secret, &to_client_secret),
        true,
    )
    .unwrap();
    (server, client)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let conn = SERVER.with(|c| UnbufferedServerConnection::new(c.clone()).unwrap());
            let mut handshake = Handshake::new(conn);
            let mut out = Vec::new();
            for chunk in data.chunks(257) {
                match handshake.advance(chunk, &mut out) {
                    Ok(Advance::Handshaking) => {}
                    // Nobody but the fuzzer's client could finish a handshake.
                    Ok(Advance::Established(_)) => panic!("a handshake without a client"),
                    Err(_) => return,
                }
            }
        }
        1 => {
            let (mut server, _) = pair();
            let mut input = data.to_vec();
            let mut reply = Vec::new();
            if let Ok(opened) = server.open(&mut input, &mut reply) {
                assert_eq!(opened.plaintext, 0, "a forged record opened");
            }
        }
        _ => {
            let (mut server, mut client) = pair();
            let mut wire = Vec::new();
            let cut = usize::from(mode).max(1);
            for (i, chunk) in data.chunks(cut * 13).enumerate() {
                client.seal([chunk], &mut wire);
                if i % 7 == 3 {
                    client.update_key(&mut wire); // which the server must follow
                }
            }
            let mut opened_all = Vec::new();
            let mut pending = Vec::new();
            let mut reply = Vec::new();
            for read in wire.chunks(cut) {
                pending.extend_from_slice(read);
                let opened = server.open(&mut pending, &mut reply).expect("sealed records open");
                opened_all.extend_from_slice(&pending[..opened.plaintext]);
                pending.drain(..opened.used);
            }
            assert!(pending.is_empty());
            assert_eq!(opened_all, data);
        }
    }
});
