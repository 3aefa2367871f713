//! TLS to the server (`--tls`): rustls' handshake, then only a [`tls_records::Session`] per
//! connection (as the engine keeps), so a worker holding hundreds of thousands of
//! connections does not hold kilobytes of TLS state for each.

use std::{path::Path, sync::Arc};

use rustls::{
    client::UnbufferedClientConnection,
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use tls_records::{Advance, Handshake, Session, Trust};

/// How the loadgen's connections speak TLS.
#[derive(Debug, Clone)]
pub struct Tls {
    /// rustls' client configuration (TLS 1.3, secrets handed to the session).
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate is checked against (and sent as SNI).
    pub name: ServerName<'static>,
}

impl Tls {
    /// A client trusting the authorities in `ca` (PEM), or, with `insecure`, any
    /// certificate at all (for tests and benches against a self-signed server).
    pub fn new(ca: Option<&Path>, insecure: bool, name: &str) -> Result<Tls, String> {
        let trust = match (ca, insecure) {
            (_, true) => Trust::AnyCertificate,
            (Some(ca), false) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no certificate in it", ca.display()));
                }
                Trust::Authorities(roots)
            }
            (None, false) => return Err("needs --tls-ca FILE or --tls-insecure".into()),
        };
        let name = ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
        Ok(Tls {
            config: tls_records::client_config(trust),
            name,
        })
    }

    /// Starts a connection's handshake; its first flight goes to `out`.
    pub fn connect(&self, out: &mut Vec<u8>) -> Result<ClientTls, tls_records::Error> {
        let conn = UnbufferedClientConnection::new(self.config.clone(), self.name.clone())?;
        let mut handshake = Handshake::new(conn);
        match handshake.advance(&[], out)? {
            Advance::Handshaking => Ok(ClientTls::Handshaking(Box::new(handshake))),
            Advance::Established(_) => {
                Err(tls_records::Error::Unexpected("a one-flight handshake"))
            }
        }
    }
}

/// One connection's TLS: its handshake, then its session and the start of a record not
/// all read yet.
pub enum ClientTls {
    /// Under way.
    Handshaking(Box<Handshake<UnbufferedClientConnection>>),
    /// Done.
    Established(Box<Session>, Vec<u8>),
}

/// What a read gave.
pub struct Input {
    /// The handshake ended with this read: the upgrade may go.
    pub established: bool,
    /// The server sent `close_notify`.
    pub closed: bool,
}

impl ClientTls {
    /// Takes bytes read from the socket: plaintext is appended to `plaintext`, what must
    /// be sent back to `out`.
    pub fn input(
        &mut self,
        data: &[u8],
        plaintext: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Input, tls_records::Error> {
        let established = match self {
            ClientTls::Handshaking(handshake) => match handshake.advance(data, out)? {
                Advance::Handshaking => {
                    return Ok(Input {
                        established: false,
                        closed: false,
                    })
                }
                Advance::Established(done) => {
                    plaintext.extend_from_slice(&done.plaintext);
                    *self = ClientTls::Established(Box::new(done.session), done.rest);
                    true
                }
            },
            ClientTls::Established(..) => false,
        };
        let ClientTls::Established(session, partial) = self else {
            unreachable!("established above");
        };
        if !established {
            partial.extend_from_slice(data); // (the handshake took this read's bytes)
        }
        let opened = session.open(partial, out)?;
        plaintext.extend_from_slice(&partial[..opened.plaintext]);
        partial.drain(..opened.used);
        if partial.is_empty() {
            *partial = Vec::new(); // an idle connection keeps no buffer
        }
        Ok(Input {
            established,
            closed: opened.closed,
        })
    }

    /// Seals `bytes` onto `out`; `false` before the handshake is done.
    pub fn seal(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            ClientTls::Handshaking(_) => false,
            ClientTls::Established(session, _) => {
                session.seal([bytes], out);
                true
            }
        }
    }
}
