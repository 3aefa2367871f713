//! JSON Web Tokens (RFC 7519) as the gateway checks them: HS256 with `--jwt-secret`,
//! RS256 and ES256 with public keys (`keys`); `alg`, the signature, `sub`, `exp`
//! (required unless `--jwt-exp-optional`) and `nbf`.
//!
//! An algorithm is checked only with keys of its own kind, so a public key can never be
//! taken as an HS256 secret (the classic algorithm confusion), and `none` is never taken.

pub mod keys;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use simd_json::prelude::*;

pub use keys::{Algorithm, PublicKey};

/// The longest token accepted, in bytes; a real token is a few hundred to 2,000.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// The shortest HS256 secret accepted: 256 bits, the hash's size (RFC 7518 §3.2).
pub const SECRET_BYTES_MIN: usize = 32;

/// Why a token was refused (the client sees `auth_failed` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or parts that are not JSON.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not one this gateway has keys for.
    #[error("token algorithm must be one of: {0}")]
    Algorithm(&'static str),
    /// No configured key has the header's `kid`.
    #[error("no key with this token's kid")]
    UnknownKey,
    /// The signature does not match the secret or key.
    #[error("bad token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// The token has no `exp`, and this gateway requires one.
    #[error("token has no exp, and this gateway requires one")]
    NoExpiry,
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `sub` is missing or not the `userId` the client claims.
    #[error("token subject does not match userId")]
    Subject,
}

/// What a valid token grants a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// When it expires, Unix seconds (`None`: never, where `exp` is optional).
    pub expires_at: Option<u64>,
    /// The `groups` claim: groups its holder may join even when they are invite-only.
    pub groups: Vec<Box<str>>,
}

/// The gateway's token checker, built once at start-up from the configured keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The HS256 secret.
    secret: Option<Vec<u8>>,
    /// The RS256 and ES256 keys.
    public: Vec<PublicKey>,
    /// Whether a token without `exp` is refused.
    exp_required: bool,
}

impl Verifier {
    /// A checker with an HS256 `secret` and `public` keys (either may be empty, not both).
    pub fn new(secret: Option<Vec<u8>>, public: Vec<PublicKey>, exp_required: bool) -> Verifier {
        debug_assert!(secret.is_some() || !public.is_empty());
        Verifier {
            secret,
            public,
            exp_required,
        }
    }

    /// The algorithms this checker takes, for error texts.
    fn algorithms(&self) -> &'static str {
        let rsa = self.public.iter().any(|k| k.algorithm == Algorithm::Rs256);
        let ec = self.public.iter().any(|k| k.algorithm == Algorithm::Es256);
        match (self.secret.is_some(), rsa, ec) {
            (true, false, false) => "HS256",
            (true, true, false) => "HS256, RS256",
            (true, false, true) => "HS256, ES256",
            (true, true, true) => "HS256, RS256, ES256",
            (false, true, false) => "RS256",
            (false, false, true) => "ES256",
            _ => "RS256, ES256",
        }
    }

    /// Verifies `token` for `user_id` at time `now_s` (Unix seconds).
    pub fn verify(&self, token: &str, user_id: &str, now_s: u64) -> Result<Grant, JwtError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let mut header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed)?;
        let header_value =
            simd_json::to_borrowed_value(&mut header_json).map_err(|_| JwtError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| JwtError::Malformed)?;
        let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
        match header_value.get_str("alg") {
            Some("HS256") if self.secret.is_some() => self.check_hmac(signed, &signature)?,
            Some(name @ ("RS256" | "ES256")) => {
                let kid = header_value.get_str("kid");
                self.check_public(name, kid, signed, &signature)?
            }
            _ => return Err(JwtError::Algorithm(self.algorithms())),
        }
        let mut claims_json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| JwtError::Malformed)?;
        let claims =
            simd_json::to_borrowed_value(&mut claims_json).map_err(|_| JwtError::Malformed)?;
        let expires_at = seconds(claims.get("exp"))?;
        match expires_at {
            Some(exp) if exp <= now_s => return Err(JwtError::Expired),
            None if self.exp_required => return Err(JwtError::NoExpiry),
            _ => {}
        }
        if seconds(claims.get("nbf"))?.is_some_and(|nbf| nbf > now_s) {
            return Err(JwtError::NotYetValid);
        }
        if claims.get_str("sub") != Some(user_id) {
            return Err(JwtError::Subject);
        }
        let groups = match claims.get("groups") {
            None => Vec::new(),
            Some(list) => list
                .as_array()
                .ok_or(JwtError::Malformed)?
                .iter()
                .map(|group| group.as_str().map(Box::from).ok_or(JwtError::Malformed))
                .collect::<Result<_, _>>()?,
        };
        Ok(Grant { expires_at, groups })
    }

    fn check_hmac(&self, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        let secret = self.secret.as_deref().unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| JwtError::Signature)?;
        mac.update(signed);
        // verify_slice compares in constant time.
        mac.verify_slice(signature).map_err(|_| JwtError::Signature)
    }

    /// RS256 or ES256 (`name`): the key the header's `kid` names, else each key of the
    /// algorithm in turn.
    fn check_public(
        &self,
        name: &str,
        kid: Option<&str>,
        signed: &[u8],
        signature: &[u8],
    ) -> Result<(), JwtError> {
        let mut candidates = self
            .public
            .iter()
            .filter(|k| k.algorithm.name() == name)
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::Algorithm(self.algorithms()));
        }
        let mut named = candidates
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if named.peek().is_none() {
            return Err(JwtError::UnknownKey);
        }
        if named.any(|k| k.verifies(signed, signature)) {
            Ok(())
        } else {
            Err(JwtError::Signature)
        }
    }
}

/// A NumericDate claim (`exp`, `nbf`): whole or fractional seconds, floored.
fn seconds(value: Option<&simd_json::BorrowedValue<'_>>) -> Result<Option<u64>, JwtError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Some(whole) = value.as_u64() {
        return Ok(Some(whole));
    }
    match value.as_f64() {
        Some(real) if real.is_finite() => Ok(Some(real.max(0.0) as u64)),
        _ => Err(JwtError::Malformed),
    }
}

/// Signs `claims` (a JSON object) with `secret`: for tests, tools and the loadgen.
pub fn sign(claims_json: &str, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims_json.as_bytes());
    let signing_input = format!("{header}.{payload}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs256(exp_required: bool) -> Verifier {
        Verifier::new(Some(SECRET.to_vec()), Vec::new(), exp_required)
    }

    /// An RS256 token for `u1` (exp 2100-01-01, kid `rsa-1`), signed with the private
    /// half of `testdata/rsa-2048.pem` by `openssl dgst -sha256 -sign`.
    fn rs256_token() -> &'static str {
        include_str!("testdata/rs256-u1.jwt").trim()
    }

    fn rsa_keys() -> Vec<PublicKey> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/protocol/jwt/testdata/jwks.json");
        keys::from_jwks_file(&path).unwrap()
    }

    #[test]
    fn accepts_a_good_token_and_grants_until_its_exp() {
        let token = sign(r#"{"sub":"u1","exp":2000}"#, SECRET);
        assert_eq!(
            hs256(true).verify(&token, "u1", 1000),
            Ok(Grant {
                expires_at: Some(2000),
                groups: Vec::new(),
            })
        );
        let token = sign(r#"{"sub":"u1","exp":2000,"groups":["g1","g2"]}"#, SECRET);
        let grant = hs256(true).verify(&token, "u1", 1000).unwrap();
        assert_eq!(grant.groups, vec![Box::from("g1"), Box::from("g2")]);
        let token = sign(r#"{"sub":"u1","exp":2000,"groups":"g1"}"#, SECRET);
        assert_eq!(
            hs256(true).verify(&token, "u1", 1000),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn refuses_expired_wrong_subject_wrong_secret_and_garbage() {
        let token = sign(r#"{"sub":"u1","exp":2000}"#, SECRET);
        let verifier = hs256(true);
        assert_eq!(verifier.verify(&token, "u1", 2000), Err(JwtError::Expired));
        assert_eq!(verifier.verify(&token, "u2", 1000), Err(JwtError::Subject));
        let other = Verifier::new(
            Some(b"another secret of thirty-two byt".to_vec()),
            vec![],
            true,
        );
        assert_eq!(other.verify(&token, "u1", 1000), Err(JwtError::Signature));
        for garbage in ["a.b", "a.b.c.d", "!!.??.##"] {
            assert_eq!(verifier.verify(garbage, "u1", 0), Err(JwtError::Malformed));
        }
    }

    #[test]
    fn exp_is_required_unless_relaxed_and_nbf_is_honoured() {
        let forever = sign(r#"{"sub":"u1"}"#, SECRET);
        assert_eq!(
            hs256(true).verify(&forever, "u1", 5),
            Err(JwtError::NoExpiry)
        );
        assert_eq!(hs256(false).verify(&forever, "u1", 5), Ok(Grant::default()));
        let later = sign(r#"{"sub":"u1","exp":3000,"nbf":2000}"#, SECRET);
        assert_eq!(
            hs256(true).verify(&later, "u1", 1999),
            Err(JwtError::NotYetValid)
        );
        assert!(hs256(true).verify(&later, "u1", 2000).is_ok());
        let fractional = sign(r#"{"sub":"u1","exp":2000.5}"#, SECRET);
        assert!(hs256(true).verify(&fractional, "u1", 1999).is_ok());
        let bad = sign(r#"{"sub":"u1","exp":"soon"}"#, SECRET);
        assert_eq!(hs256(true).verify(&bad, "u1", 1), Err(JwtError::Malformed));
    }

    #[test]
    fn refuses_other_algorithms_and_none() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u1","exp":9}"#);
        assert_eq!(
            hs256(true).verify(&format!("{header}.{payload}."), "u1", 0),
            Err(JwtError::Algorithm("HS256"))
        );
        // An RS256 token where only a secret is configured.
        assert_eq!(
            hs256(true).verify(rs256_token(), "u1", 0),
            Err(JwtError::Algorithm("HS256"))
        );
    }

    #[test]
    fn rs256_checks_with_the_public_key_named_by_kid() {
        let verifier = Verifier::new(None, rsa_keys(), true);
        assert_eq!(
            verifier.verify(rs256_token(), "u1", 1_800_000_000),
            Ok(Grant {
                expires_at: Some(4_102_444_800),
                groups: Vec::new(),
            })
        );
        assert_eq!(
            verifier.verify(rs256_token(), "u2", 0),
            Err(JwtError::Subject)
        );
        // The public key's bytes are no HS256 secret: algorithm confusion fails.
        let (header, payload) = (
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"u1","exp":4102444800}"#),
        );
        let confused = format!("{header}.{payload}.AAAA");
        assert_eq!(
            verifier.verify(&confused, "u1", 0),
            Err(JwtError::Algorithm("RS256"))
        );
        let mut tampered = rs256_token().to_owned();
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert_eq!(
            verifier.verify(&tampered, "u1", 0),
            Err(JwtError::Signature)
        );
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"rsa-9"}"#);
        let rest = rs256_token().split_once('.').unwrap().1;
        assert_eq!(
            verifier.verify(&format!("{header}.{rest}"), "u1", 0),
            Err(JwtError::UnknownKey)
        );
    }

    proptest::proptest! {
        #[test]
        fn no_made_up_token_is_taken(parts in proptest::collection::vec("[A-Za-z0-9_-]{0,60}", 0..5)) {
            let token = parts.join(".");
            let verifier = Verifier::new(Some(SECRET.to_vec()), rsa_keys(), false);
            proptest::prop_assert!(verifier.verify(&token, "u1", 0).is_err());
        }
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let token = sign(r#"{"sub":"u1","exp":9}"#, SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","exp":9}"#);
        assert_eq!(
            hs256(true).verify(&format!("{}.{forged}.{}", parts[0], parts[2]), "admin", 0),
            Err(JwtError::Signature)
        );
    }
}
