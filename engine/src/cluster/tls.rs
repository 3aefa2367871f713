//! TLS to NATS: a `tls://` URL, or a server whose `INFO` requires it. One rustls client
//! configuration serves both of a node's connections (membership's, through async-nats,
//! and the live relay's own): the system's root certificates, or `--cluster-ca`'s, and a
//! client certificate (`--cluster-cert`, `--cluster-key`) for servers that verify
//! clients. It is built once at start, so a bad file stops start-up with its reason.

use std::{path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// The files `--cluster-ca`, `--cluster-cert` and `--cluster-key` name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the authorities to trust (else the system's).
    pub ca: Option<PathBuf>,
    /// PEM certificate chain to prove this node with, and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Checks the three flags together: a certificate needs its key and the other way
    /// round. An error names the flag and the problem.
    pub fn parse(
        ca: Option<String>,
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<TlsFiles, (&'static str, String)> {
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            (Some(_), None) => return Err(("cluster-cert", "needs --cluster-key".into())),
            (None, Some(_)) => return Err(("cluster-key", "needs --cluster-cert".into())),
        };
        let files = TlsFiles {
            ca: ca.map(PathBuf::from),
            client,
        };
        client_config(&files)?;
        Ok(files)
    }
}

/// The client configuration `files` make; an error names the flag and the problem.
pub(super) fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(path) => {
            for cert in certificates("cluster-ca", path)? {
                roots
                    .add(cert)
                    .map_err(|e| ("cluster-ca", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            // The system's roots; one it cannot read is left out, as by async-nats.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    // The crate's one crypto provider (ring, as async-nats's), and its safe defaults.
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("cluster-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("cluster-key", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("cluster-key", e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

/// Every certificate of PEM file `path` (at least one), for flag `flag`'s error.
fn certificates(
    flag: &'static str,
    path: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| (flag, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((
            flag,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_needs_its_key_and_bad_files_name_their_flag() {
        let parse = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| {
            TlsFiles::parse(
                ca.map(Into::into),
                cert.map(Into::into),
                key.map(Into::into),
            )
        };
        assert_eq!(parse(None, None, None).unwrap(), TlsFiles::default());
        assert_eq!(parse(None, Some("c"), None).unwrap_err().0, "cluster-cert");
        assert_eq!(parse(None, None, Some("k")).unwrap_err().0, "cluster-key");
        assert_eq!(
            parse(Some("/nonexistent/ca.pem"), None, None)
                .unwrap_err()
                .0,
            "cluster-ca"
        );
        let dir = std::env::temp_dir().join(format!("tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let (flag, problem) = parse(empty.to_str(), None, None).unwrap_err();
        assert_eq!(flag, "cluster-ca");
        assert!(problem.contains("no PEM certificate"), "{problem}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
