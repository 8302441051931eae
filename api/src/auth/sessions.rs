//! Sessions, one per device, and their refresh tokens.
//!
//! A refresh token is `{session_id}.{generation}.{secret}`; the session stores only
//! the SHA-256 of the current one. Every use rotates it (generation + 1) with a
//! compare-and-swap on the stored hash, so a token works once. Presenting a spent
//! token means a copy of it is in someone's hands: the whole session (the token
//! family) is revoked, the thief's and the owner's copies alike. "Spent" is checked
//! on the secret, not on the generation number: the session keeps the hashes of its
//! last [`SPENT_KEPT`] tokens, and a token that matches none of them (a guess, any
//! generation) is merely invalid; it cannot revoke anyone's session.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Collections the API itself writes (see the crate docs for why).
pub const SESSIONS: &str = "auth_sessions";
pub const OTPS: &str = "auth_otps";

/// A stored session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "_id")]
    pub id: String,
    pub org: String,
    pub agent_id: String,
    pub role: String,
    pub device_id: String,
    #[serde(default)]
    pub device_name: Option<String>,
    pub refresh_hash: String,
    pub generation: i64,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    pub expires_at_ms: i64,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// Hashes of the last [`SPENT_KEPT`] tokens of this session, newest last.
    #[serde(default)]
    pub spent_hashes: Vec<String>,
}

/// How many spent tokens a session remembers for reuse detection.
pub const SPENT_KEPT: usize = 16;

/// The spent hashes after rotating away from `current`.
pub fn spend(spent: &[String], current: &str) -> Vec<String> {
    let mut next: Vec<String> = spent.to_vec();
    next.push(current.to_string());
    let drop = next.len().saturating_sub(SPENT_KEPT);
    next.drain(..drop);
    next
}

/// A refresh token taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub session_id: String,
    pub generation: i64,
    pub secret: String,
}

impl RefreshToken {
    pub fn new(session_id: &str, generation: i64) -> Self {
        Self {
            session_id: session_id.to_string(),
            generation,
            secret: random_id(32),
        }
    }

    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.splitn(3, '.');
        let session_id = parts.next().filter(|s| !s.is_empty())?.to_string();
        let generation = parts.next()?.parse().ok()?;
        let secret = parts.next().filter(|s| !s.is_empty())?.to_string();
        Some(Self {
            session_id,
            generation,
            secret,
        })
    }

    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.session_id, self.generation, self.secret)
    }

    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.encode().as_bytes()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshDecision {
    /// The current token: issue the next generation.
    Rotate,
    /// A spent token: revoke the family.
    Reuse,
    Revoked,
    Expired,
    /// Not a token of this session.
    Invalid,
}

/// What presenting `token` to `session` means.
pub fn on_refresh(session: Option<&Session>, token: &RefreshToken, now_ms: i64) -> RefreshDecision {
    let Some(session) = session.filter(|s| s.id == token.session_id) else {
        return RefreshDecision::Invalid;
    };
    if session.revoked_at_ms.is_some() {
        return RefreshDecision::Revoked;
    }
    if session.expires_at_ms <= now_ms {
        return RefreshDecision::Expired;
    }
    let hash = token.hash();
    if token.generation == session.generation && hash == session.refresh_hash {
        return RefreshDecision::Rotate;
    }
    // Only a token this session really issued (its secret checks out) is reuse.
    if session.spent_hashes.contains(&hash) {
        return RefreshDecision::Reuse;
    }
    RefreshDecision::Invalid
}

/// `n` random bytes, base64url: ids and secrets that are unguessable.
pub fn random_id(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session_with(token: &RefreshToken) -> Session {
        Session {
            id: token.session_id.clone(),
            org: "acme".into(),
            agent_id: "ann".into(),
            role: "agent".into(),
            device_id: "d".into(),
            device_name: None,
            refresh_hash: token.hash(),
            generation: token.generation,
            created_at_ms: 0,
            last_used_at_ms: 0,
            expires_at_ms: 1_000,
            revoked_at_ms: None,
            revoked_reason: None,
            spent_hashes: Vec::new(),
        }
    }

    #[test]
    fn current_rotates_spent_is_reuse_forged_is_invalid() {
        let t0 = RefreshToken::new("s", 0);
        let t1 = RefreshToken::new("s", 1);
        let session = Session {
            spent_hashes: spend(&[], &t0.hash()),
            ..session_with(&t1)
        };
        assert_eq!(on_refresh(Some(&session), &t1, 10), RefreshDecision::Rotate);
        assert_eq!(on_refresh(Some(&session), &t0, 10), RefreshDecision::Reuse);
        let forged = RefreshToken {
            secret: "x".into(),
            ..t1.clone()
        };
        assert_eq!(
            on_refresh(Some(&session), &forged, 10),
            RefreshDecision::Invalid
        );
        assert_eq!(
            on_refresh(Some(&session), &t1, 1_000),
            RefreshDecision::Expired
        );
        let revoked = Session {
            revoked_at_ms: Some(5),
            ..session
        };
        assert_eq!(
            on_refresh(Some(&revoked), &t1, 10),
            RefreshDecision::Revoked
        );
        assert_eq!(on_refresh(None, &t1, 10), RefreshDecision::Invalid);
    }

    #[test]
    fn a_guessed_older_generation_is_invalid_not_reuse() {
        let t1 = RefreshToken::new("s", 1);
        let session = session_with(&t1);
        for generation in [-1, 0] {
            let guess = RefreshToken::new("s", generation);
            assert_eq!(
                on_refresh(Some(&session), &guess, 10),
                RefreshDecision::Invalid
            );
        }
    }

    #[test]
    fn spent_hashes_keep_the_newest() {
        let mut spent = Vec::new();
        for i in 0..40 {
            spent = spend(&spent, &i.to_string());
        }
        assert_eq!(spent.len(), SPENT_KEPT);
        assert_eq!(spent.last().map(String::as_str), Some("39"));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(generation in 0i64..1_000_000) {
            let t = RefreshToken::new(&random_id(16), generation);
            prop_assert_eq!(RefreshToken::parse(&t.encode()), Some(t));
        }

        #[test]
        fn parsing_never_panics(s in ".*") {
            let _ = RefreshToken::parse(&s);
        }
    }
}
