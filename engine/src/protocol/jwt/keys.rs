//! The public keys RS256 and ES256 tokens are checked with, read at start-up from a PEM
//! file (`--jwt-public-key`) or a JSON Web Key Set (`--jwt-jwks`, RFC 7517), and checked
//! there: an RSA key under 2048 bits or an EC key off P-256 stops start-up.
//!
//! Setup code, not a hot path: what a verification needs (an RSA modulus and exponent, an
//! EC point) is extracted once.

use std::path::Path;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rustls_pki_types::{pem::PemObject, SubjectPublicKeyInfoDer};

/// Which signature a key checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA keys of 2048 bits or more.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Algorithm {
    /// The name in a token's header (`alg`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }
}

/// One public key, ready to verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The JWKS `kid`, which a token's header may name.
    pub kid: Option<String>,
    /// What it verifies.
    pub algorithm: Algorithm,
    /// The material: an RSA key's modulus and exponent (big-endian), or an EC key's
    /// uncompressed point.
    pub material: Material,
}

/// A key's numbers, as ring takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// RSA: modulus `n` and exponent `e`, big-endian without leading zeros.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// EC P-256: `04 || x || y`.
    Point(Vec<u8>),
}

impl PublicKey {
    /// Whether `signature` signs `message` under this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature;
        match (&self.material, self.algorithm) {
            (Material::Rsa { n, e }, Algorithm::Rs256) => {
                signature::RsaPublicKeyComponents { n, e }
                    .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                    .is_ok()
            }
            (Material::Point(point), Algorithm::Es256) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// Reads every `PUBLIC KEY` block of a PEM file.
pub fn from_pem_file(path: &Path) -> Result<Vec<PublicKey>, String> {
    let shown = path.display();
    let blocks = SubjectPublicKeyInfoDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut keys = Vec::new();
    for block in blocks {
        let der = block.map_err(|e| format!("{shown}: {e}"))?;
        keys.push(from_spki(&der).map_err(|e| format!("{shown}: {e}"))?);
    }
    if keys.is_empty() {
        return Err(format!("{shown} holds no PEM 'PUBLIC KEY' block"));
    }
    Ok(keys)
}

/// Reads a JSON Web Key Set: the RSA and P-256 signing keys in it. Keys for other uses or
/// algorithms (`"use":"enc"`, `RS512`, symmetric keys) are left out; a set with no key
/// left, or a key of ours that is malformed, is an error.
pub fn from_jwks_file(path: &Path) -> Result<Vec<PublicKey>, String> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    from_jwks(&text, &shown.to_string())
}

/// A JSON Web Key Set's text (`shown` names it in errors): see [`from_jwks_file`].
pub fn from_jwks(text: &[u8], shown: &str) -> Result<Vec<PublicKey>, String> {
    let set: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("{shown} is not JSON: {e}"))?;
    let Some(entries) = set.get("keys").and_then(|k| k.as_array()) else {
        return Err(format!("{shown} has no \"keys\" array (RFC 7517)"));
    };
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(key) = from_jwk(entry).map_err(|e| format!("{shown}: keys[{i}]: {e}"))? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(format!("{shown} holds no RS256 or ES256 signing key"));
    }
    Ok(keys)
}

/// One JWK: `Some` for an RSA or P-256 signing key, `None` for a key of another kind.
fn from_jwk(jwk: &serde_json::Value) -> Result<Option<PublicKey>, String> {
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name).ok_or_else(|| format!("missing \"{name}\""))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let algorithm = match (field("kty"), field("alg")) {
        (Some("RSA"), None | Some("RS256")) => Algorithm::Rs256,
        (Some("EC"), None | Some("ES256")) => Algorithm::Es256,
        _ => return Ok(None),
    };
    let material = match algorithm {
        Algorithm::Rs256 => rsa(bytes("n")?, bytes("e")?)?,
        Algorithm::Es256 => {
            if field("crv") != Some("P-256") {
                return Err("an ES256 key must be on curve P-256".into());
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("a P-256 key's \"x\" and \"y\" are 32 bytes each".into());
            }
            Material::Point([&[4u8][..], &x, &y].concat())
        }
    };
    Ok(Some(PublicKey {
        kid: field("kid").map(str::to_owned),
        algorithm,
        material,
    }))
}

/// DER object identifiers of the keys taken.
const RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// DER tags read here.
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;

/// A SubjectPublicKeyInfo (RFC 5280): `SEQUENCE { SEQUENCE { algorithm, parameters },
/// BIT STRING key }`.
fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
    let malformed = || "not a DER SubjectPublicKeyInfo".to_owned();
    let (info, _) = tlv(der, SEQUENCE).ok_or_else(malformed)?;
    let (identifier, rest) = tlv(info, SEQUENCE).ok_or_else(malformed)?;
    let (bits, _) = tlv(rest, BIT_STRING).ok_or_else(malformed)?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(malformed()),
    };
    let (oid, parameters) = tlv(identifier, OID).ok_or_else(malformed)?;
    let (algorithm, material) = if oid == RSA_ENCRYPTION {
        let (numbers, _) = tlv(key, SEQUENCE).ok_or_else(malformed)?;
        let (n, rest) = tlv(numbers, INTEGER).ok_or_else(malformed)?;
        let (e, _) = tlv(rest, INTEGER).ok_or_else(malformed)?;
        (Algorithm::Rs256, rsa(n.to_vec(), e.to_vec())?)
    } else if oid == EC_PUBLIC_KEY {
        let curve = tlv(parameters, OID).map(|(curve, _)| curve);
        if curve != Some(P256) || key.len() != 65 || key[0] != 4 {
            return Err("an EC key must be an uncompressed P-256 point (ES256)".into());
        }
        (Algorithm::Es256, Material::Point(key.to_vec()))
    } else {
        return Err("only RSA (RS256) and EC P-256 (ES256) public keys are taken".into());
    };
    Ok(PublicKey {
        kid: None,
        algorithm,
        material,
    })
}

/// An RSA key's numbers without leading zeros, refused under 2048 bits.
fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<Material, String> {
    let unpadded = |v: Vec<u8>| v.iter().position(|&b| b != 0).map(|i| v[i..].to_vec());
    let (Some(n), Some(e)) = (unpadded(n), unpadded(e)) else {
        return Err("an RSA key's modulus and exponent must not be zero".into());
    };
    if n.len() < 256 {
        return Err(format!(
            "an RSA key of {} bits is too weak; RS256 keys need at least 2048",
            n.len() * 8
        ));
    }
    Ok(Material::Rsa { n, e })
}

/// The contents of the DER element at the front of `input` if its tag is `tag`, and what
/// follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let (length, rest) = if length < 0x80 {
        (usize::from(length), rest)
    } else {
        let width = usize::from(length & 0x7F);
        if width == 0 || width > 4 || rest.len() < width {
            return None;
        }
        let length = rest[..width]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[width..])
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/protocol/jwt/testdata")
            .join(name)
    }

    #[test]
    fn a_pem_rsa_key_and_its_jwk_are_the_same_numbers() {
        let pem = from_pem_file(&testdata("rsa-2048.pem")).unwrap();
        let jwks = from_jwks_file(&testdata("jwks.json")).unwrap();
        assert_eq!(pem.len(), 1);
        // The set's `enc` key and symmetric key are left out.
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks[0].kid.as_deref(), Some("rsa-1"));
        assert_eq!(pem[0].material, jwks[0].material);
        assert_eq!(pem[0].algorithm, Algorithm::Rs256);
    }

    #[test]
    fn an_ec_p256_key_is_read_from_its_spki() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        use ring::signature::KeyPair;
        let point = pair.public_key().as_ref().to_vec();
        let key = from_spki(&p256_spki(&point)).unwrap();
        assert_eq!(key.algorithm, Algorithm::Es256);
        let signature = pair.sign(&rng, b"message").unwrap();
        assert!(key.verifies(b"message", signature.as_ref()));
        assert!(!key.verifies(b"massage", signature.as_ref()));
    }

    /// The SubjectPublicKeyInfo of a P-256 point (what `openssl ec -pubout` writes).
    pub(crate) fn p256_spki(point: &[u8]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06,
            0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(point);
        der
    }

    #[test]
    fn weak_or_foreign_keys_and_broken_files_are_refused() {
        let short = rsa(vec![0x80; 128], vec![1, 0, 1]).unwrap_err();
        assert!(short.contains("1024 bits"), "{short}");
        assert!(from_spki(b"\x30\x03\x02\x01\x05").is_err());
        assert!(from_spki(&[]).is_err());
        let dir = std::env::temp_dir().join(format!("engine-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, expected) in [
            ("not json", "not JSON"),
            (r#"{"keys":5}"#, "\"keys\" array"),
            (r#"{"keys":[{"kty":"oct","k":"abc"}]}"#, "no RS256 or ES256"),
            (
                r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#,
                "keys[0]: missing \"n\"",
            ),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#,
                "P-256",
            ),
        ] {
            let path = dir.join("set.json");
            std::fs::write(&path, text).unwrap();
            let err = from_jwks_file(&path).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(from_pem_file(&empty).unwrap_err().contains("no PEM"));
        assert!(from_pem_file(&dir.join("missing.pem"))
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn any_der_bytes_are_read_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = from_spki(&bytes);
        }
    }
}
