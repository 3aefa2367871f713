//! Client configurations for sessions (what a load generator or a bench connects with):
//! TLS 1.3 only, secrets handed to the session, ALPN `http/1.1`.

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Which server certificates a client takes.
pub enum Trust {
    /// Those that chain to these authorities.
    Authorities(RootCertStore),
    /// Any (the handshake's signature is still checked with the key in it, so the session
    /// is with whoever holds that key): for tests and benches against a self-signed server.
    AnyCertificate,
}

/// A client configuration for [`crate::Handshake`]s that end in a [`crate::Session`].
pub fn client_config(trust: Trust) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let mut config = match trust {
        Trust::Authorities(roots) => builder.with_root_certificates(roots),
        Trust::AnyCertificate => {
            let provider = builder.crypto_provider().clone();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        }
    }
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    config.key_log = crate::key_log();
    Arc::new(config)
}

/// Takes any certificate, but checks the handshake's signature with its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
