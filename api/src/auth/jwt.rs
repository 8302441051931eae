//! Access tokens: short-lived HS256 JWTs naming the caller's org, user, role and
//! session. Every token carries the `kid` of the key that signed it, so keys rotate
//! without logging anyone out: new key first, old key kept until its tokens expire.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::ApiConfig;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The agent id.
    pub sub: String,
    pub org: String,
    /// `admin` or `agent`.
    pub role: String,
    /// The session (device) it belongs to; revoking the session kills the token.
    pub sid: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JwtError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid: {0}")]
    Invalid(String),
}

/// The signing key and every verifying key, by kid.
#[derive(Clone)]
pub struct JwtKeys {
    signing: (String, EncodingKey),
    verifying: Vec<(String, DecodingKey)>,
    issuer: String,
}

impl JwtKeys {
    /// From `[api] jwt_keys`; an empty list gets one random key (dev only).
    pub fn from_config(config: &ApiConfig) -> Self {
        let mut keys: Vec<(String, Vec<u8>)> = config
            .jwt_keys
            .iter()
            .map(|k| (k.kid.clone(), k.secret.expose().as_bytes().to_vec()))
            .collect();
        if keys.is_empty() {
            tracing::warn!(
                "api.jwt_keys is empty: using an ephemeral key (tokens die with the process)"
            );
            let mut secret = vec![0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
            keys.push(("ephemeral".into(), secret));
        }
        Self::new(&keys, &config.jwt_issuer)
    }

    pub fn new(keys: &[(String, Vec<u8>)], issuer: &str) -> Self {
        let (kid, secret) = &keys[0];
        Self {
            signing: (kid.clone(), EncodingKey::from_secret(secret)),
            verifying: keys
                .iter()
                .map(|(kid, s)| (kid.clone(), DecodingKey::from_secret(s)))
                .collect(),
            issuer: issuer.to_string(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing.0.clone());
        jsonwebtoken::encode(&header, claims, &self.signing.1)
            .map_err(|e| JwtError::Invalid(e.to_string()))
    }

    /// Checks signature (by kid), algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Invalid(e.to_string()))?;
        let kid = header.kid.ok_or(JwtError::Invalid("no kid".into()))?;
        let key = self
            .verifying
            .iter()
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key)
            .ok_or(JwtError::Invalid("unknown kid".into()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.issuer]);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => JwtError::Expired,
                _ => JwtError::Invalid(e.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ann".into(),
            org: "acme".into(),
            role: "agent".into(),
            sid: "s1".into(),
            iss: "coexist".into(),
            aud: "coexist".into(),
            iat: 0,
            exp,
        }
    }

    fn now() -> i64 {
        crate::now_ms() / 1000
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_tampering_fails() {
        let old = JwtKeys::new(&[("k1".into(), b"one".to_vec())], "coexist");
        let token = old.sign(&claims(now() + 60)).unwrap();
        let rotated = JwtKeys::new(
            &[
                ("k2".into(), b"two".to_vec()),
                ("k1".into(), b"one".to_vec()),
            ],
            "coexist",
        );
        assert_eq!(rotated.verify(&token).unwrap().sub, "ann");
        let dropped = JwtKeys::new(&[("k2".into(), b"two".to_vec())], "coexist");
        assert!(dropped.verify(&token).is_err());
        // Flip one character of the payload.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let c = parts[1].pop().unwrap();
        parts[1].push(if c == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            old.verify(&parts.join(".")),
            Err(JwtError::Invalid(_))
        ));
        assert_eq!(
            old.verify(&old.sign(&claims(now() - 60)).unwrap()),
            Err(JwtError::Expired)
        );
    }
}
