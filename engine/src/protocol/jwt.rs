//! HS256 JSON Web Tokens (RFC 7519): the gateway checks `alg`, the signature, `sub`, `exp`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use simd_json::prelude::*;

/// The longest token accepted, in bytes; a real HS256 token is a few hundred.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Why a token was refused (the client sees `auth_failed` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or parts that are not JSON.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not HS256.
    #[error("token algorithm must be HS256")]
    Algorithm,
    /// The signature does not match the secret.
    #[error("bad token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `sub` is missing or not the `userId` the client claims.
    #[error("token subject does not match userId")]
    Subject,
}

/// Verifies `token` against `secret` for `user_id` at time `now_s` (Unix seconds).
pub fn verify(token: &str, secret: &[u8], user_id: &str, now_s: u64) -> Result<(), JwtError> {
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
    if header_value.get_str("alg") != Some("HS256") {
        return Err(JwtError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| JwtError::Signature)?;
    mac.update(&token.as_bytes()[..header.len() + 1 + payload.len()]);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::Signature)?;
    let mut claims_json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtError::Malformed)?;
    let claims = simd_json::to_borrowed_value(&mut claims_json).map_err(|_| JwtError::Malformed)?;
    if let Some(exp) = claims.get("exp") {
        let exp = exp
            .as_i64()
            .map(|v| v as f64)
            .or_else(|| exp.as_f64())
            .ok_or(JwtError::Malformed)?;
        if exp <= now_s as f64 {
            return Err(JwtError::Expired);
        }
    }
    if claims.get_str("sub") != Some(user_id) {
        return Err(JwtError::Subject);
    }
    Ok(())
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

    const SECRET: &[u8] = b"s3cret";

    #[test]
    fn accepts_a_good_token() {
        let token = sign(r#"{"sub":"u1","exp":2000}"#, SECRET);
        assert_eq!(verify(&token, SECRET, "u1", 1000), Ok(()));
    }

    #[test]
    fn refuses_expired_wrong_subject_wrong_secret_and_garbage() {
        let token = sign(r#"{"sub":"u1","exp":2000}"#, SECRET);
        assert_eq!(verify(&token, SECRET, "u1", 2000), Err(JwtError::Expired));
        assert_eq!(verify(&token, SECRET, "u2", 1000), Err(JwtError::Subject));
        assert_eq!(
            verify(&token, b"other", "u1", 1000),
            Err(JwtError::Signature)
        );
        assert_eq!(verify("a.b", SECRET, "u1", 0), Err(JwtError::Malformed));
        assert_eq!(verify("a.b.c.d", SECRET, "u1", 0), Err(JwtError::Malformed));
        assert_eq!(
            verify("!!.??.##", SECRET, "u1", 0),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn refuses_other_algorithms() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u1"}"#);
        assert_eq!(
            verify(&format!("{header}.{payload}."), SECRET, "u1", 0),
            Err(JwtError::Algorithm)
        );
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let token = sign(r#"{"sub":"u1"}"#, SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        assert_eq!(
            verify(
                &format!("{}.{forged}.{}", parts[0], parts[2]),
                SECRET,
                "admin",
                0
            ),
            Err(JwtError::Signature)
        );
    }
}
