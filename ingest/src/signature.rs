//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the Meta app secret,
//! written `sha256=<hex>`. Compared in constant time; several apps may post to us.

use hmac::{Hmac, Mac};
use runtime::Secret;
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not of the form sha256=<hex>")]
    Malformed,
    #[error("signature does not match the app secret of the business number")]
    Mismatch,
}

/// Checks `header` against `body` for any of `secrets`.
pub fn verify(header: Option<&str>, body: &[u8], secrets: &[Secret]) -> Result<(), SignatureError> {
    verify_any(header, body, &secrets.iter().collect::<Vec<_>>())
}

/// [`verify`] over borrowed secrets.
pub fn verify_any(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&Secret],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    let matches = secrets.iter().filter(|s| !s.is_empty()).any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok() // constant-time comparison
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header value Meta would send for `body` (the simulator and tests sign with it).
pub fn sign(body: &[u8], secret: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_configured_secret_and_nothing_else() {
        let secrets = [Secret::new("first"), Secret::new("second")];
        let body = br#"{"object":"whatsapp_business_account"}"#;
        assert_eq!(verify(Some(&sign(body, "second")), body, &secrets), Ok(()));
        assert_eq!(
            verify(Some(&sign(body, "third")), body, &secrets),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&sign(b"other", "first")), body, &secrets),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(None, body, &secrets), Err(SignatureError::Missing));
        assert_eq!(
            verify(Some("md5=00"), body, &secrets),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("sha256=zz"), body, &secrets),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn no_secret_configured_refuses_everything() {
        let body = b"{}";
        assert_eq!(
            verify(Some(&sign(body, "")), body, &[Secret::default()]),
            Err(SignatureError::Mismatch)
        );
    }
}
