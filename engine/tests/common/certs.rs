//! Certificates for TLS tests, made with the `openssl` command in a temporary directory:
//! a test authority, a server certificate for 127.0.0.1 and localhost (ECDSA P-256, and
//! RSA-2048 as `server-rsa`), and a client certificate (ECDSA P-256), all signed by the
//! authority and valid for a day.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The files of one test authority; the directory goes on drop.
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes them, or says why it cannot (no `openssl`): the caller skips.
    pub fn make(name: &str) -> Result<TestCerts, String> {
        let dir = std::env::temp_dir().join(format!("certs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let certs = TestCerts { dir };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&certs.dir)
                .output()
                .map_err(|e| format!("openssl: {e}"))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )),
            }
        };
        let key = |file: &str| {
            run(&[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                file,
            ])
        };
        key("ca.key")?;
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=test authority",
            "-days",
            "1",
            "-out",
            "ca.pem",
        ])?;
        let extensions = [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "server-rsa",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ];
        for (who, ext) in extensions {
            std::fs::write(certs.dir.join(format!("{who}.ext")), ext).map_err(|e| e.to_string())?;
            match who {
                "server-rsa" => run(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    "server-rsa.key",
                ])?,
                _ => key(&format!("{who}.key"))?,
            }
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{who}.key"),
                "-subj",
                &format!("/CN={who}"),
                "-out",
                &format!("{who}.csr"),
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{who}.ext"),
                "-out",
                &format!("{who}.pem"),
            ])?;
        }
        Ok(certs)
    }

    /// The path of `file` (`ca.pem`, `server.pem`, `server.key`, `server-rsa.pem`,
    /// `server-rsa.key`, `client.pem`, `client.key`), as a string for a command line.
    pub fn path(&self, file: &str) -> String {
        let path: &Path = &self.dir.join(file);
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
