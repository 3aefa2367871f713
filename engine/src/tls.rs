//! TLS on the gateway's port (`--tls-cert`, `--tls-key`): the server's configuration, its
//! certificate reloaded on SIGHUP, and each connection's TLS state.
//!
//! Memory decides the design (benches/RESULTS.md "TLS per connection"): rustls keeps
//! about 3 KB per idle connection even unbuffered, and this VM's kernel has no kTLS. So
//! rustls runs the handshake only; then the connection keeps a [`tls_records::Session`]
//! (its traffic secrets, keys and sequence numbers: 232 bytes) and the reactor seals and opens
//! records in its own buffers, shared by every connection. TLS 1.3 only (every browser and
//! phone OS of the last years speaks it), ALPN `http/1.1`, ECDSA, RSA or Ed25519
//! certificates, stateless session tickets (a reconnecting client resumes without a
//! certificate signature, the costly part of a handshake).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection},
    sign::CertifiedKey,
    ServerConfig,
};

/// The handshake of a connection that has not finished it.
pub type Handshake = tls_records::Handshake<UnbufferedServerConnection>;
/// An established connection's record state.
pub type Session = tls_records::Session;

/// One connection's TLS state (kept in its [`crate::conn::Aux`]).
pub enum ConnTls {
    /// The handshake is under way: rustls' whole connection, for a few round trips.
    Handshaking(Box<Handshake>),
    /// The handshake is done: the session, and the start of a record not all read yet.
    Established {
        /// Keys and sequence numbers.
        session: Box<Session>,
        /// Bytes of a record whose rest has not arrived (`None` when reads end on record
        /// boundaries, as they mostly do).
        partial: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for ConnTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnTls::Handshaking(_) => f.write_str("Handshaking"),
            ConnTls::Established { partial, .. } => f
                .debug_struct("Established")
                .field("partial", &partial.as_ref().map(Vec::len))
                .finish(),
        }
    }
}

/// What a read of a TLS connection left to process.
pub enum TlsInput {
    /// This many bytes of plaintext at the front of the read buffer (maybe none).
    Plaintext(usize),
    /// The same, and the client sent `close_notify`: nothing more comes.
    PlaintextThenEnd(usize),
    /// The connection is closed (a failed handshake or record).
    Closed,
}

/// The certificate and key files, and the server configuration that serves them.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    config: Arc<ServerConfig>,
}

/// The certificate every new handshake gets; replaced by [`Certificates::reload`].
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Certificates {
    /// Loads the PEM certificate chain and private key and builds the server's
    /// configuration; the error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificates, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(cert, key)?))));
        // The crate's one crypto provider (ring), and its safe defaults.
        let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The reactor seals and opens records itself once the handshake is done, and
        // updates keys itself from the traffic secrets this hands over.
        config.enable_secret_extraction = true;
        config.key_log = tls_records::key_log();
        // Stateless tickets (keys rotated by rustls): resumption keeps nothing per client.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        config.send_tls13_tickets = 1;
        Ok(Certificates {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and serves the new certificate to every later handshake
    /// (connections already open keep theirs). On an error the old one stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(certified_key(&self.cert, &self.key)?);
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// A handshake for a freshly accepted connection.
    pub fn accept(&self) -> Result<Handshake, rustls::Error> {
        Ok(tls_records::Handshake::new(
            UnbufferedServerConnection::new(self.config.clone())?,
        ))
    }
}

/// The chain and key in `cert` and `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = ServerConfig::builder().crypto_provider().clone();
    let certified = CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(certified)
}
