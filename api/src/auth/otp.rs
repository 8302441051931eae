//! One-time codes: the policy (expiry, attempts, lockout, resend cooldown) as pure
//! functions over the stored state, and the peppered hash the state keeps instead of
//! the code.
//!
//! One state per user (`auth_otps`, `_id` = `{org}:{agent_id}`): a new code replaces
//! the last, and the lockout outlives any single challenge, so asking for fresh codes
//! does not buy fresh guesses.

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::OtpPolicy;

/// What is stored per user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OtpState {
    pub challenge_id: String,
    /// HMAC-SHA256(pepper, challenge_id ":" code), hex.
    pub code_hash: String,
    pub expires_at_ms: i64,
    /// Wrong codes against this challenge.
    pub attempts: u32,
    pub last_sent_at_ms: i64,
    pub locked_until_ms: i64,
    pub used: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDecision {
    Send,
    Cooldown { retry_after_ms: i64 },
    Locked { retry_after_ms: i64 },
}

/// May a new code be sent now?
pub fn on_request(state: Option<&OtpState>, now_ms: i64, policy: &OtpPolicy) -> RequestDecision {
    let Some(state) = state else {
        return RequestDecision::Send;
    };
    if state.locked_until_ms > now_ms {
        return RequestDecision::Locked {
            retry_after_ms: state.locked_until_ms - now_ms,
        };
    }
    let next = state.last_sent_at_ms + (policy.resend_cooldown_secs as i64) * 1000;
    if next > now_ms {
        return RequestDecision::Cooldown {
            retry_after_ms: next - now_ms,
        };
    }
    RequestDecision::Send
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyDecision {
    Accept,
    /// A wrong code: the new attempt count, and the lock it triggers, if any.
    Wrong {
        attempts: u32,
        locked_until_ms: Option<i64>,
    },
    Expired,
    Locked {
        retry_after_ms: i64,
    },
    /// No such (live) challenge.
    Unknown,
}

/// The outcome of presenting a code for `challenge_id`.
pub fn on_verify(
    state: Option<&OtpState>,
    challenge_id: &str,
    code_matches: bool,
    now_ms: i64,
    policy: &OtpPolicy,
) -> VerifyDecision {
    let Some(state) = state.filter(|s| s.challenge_id == challenge_id && !s.used) else {
        return VerifyDecision::Unknown;
    };
    if state.locked_until_ms > now_ms {
        return VerifyDecision::Locked {
            retry_after_ms: state.locked_until_ms - now_ms,
        };
    }
    if state.attempts >= policy.max_attempts {
        // Locked earlier and the lock ran out: this code is spent all the same.
        return VerifyDecision::Unknown;
    }
    if state.expires_at_ms <= now_ms {
        return VerifyDecision::Expired;
    }
    if code_matches {
        return VerifyDecision::Accept;
    }
    let attempts = state.attempts + 1;
    let locked_until_ms =
        (attempts >= policy.max_attempts).then(|| now_ms + (policy.lockout_secs as i64) * 1000);
    VerifyDecision::Wrong {
        attempts,
        locked_until_ms,
    }
}

/// Six random digits.
pub fn new_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// The stored hash of a code.
pub fn hash(pepper: &[u8], challenge_id: &str, code: &str) -> String {
    hex::encode(mac(pepper, challenge_id, code).finalize().into_bytes())
}

/// Constant-time check of `code` against a stored hash.
pub fn matches(pepper: &[u8], challenge_id: &str, code: &str, stored_hex: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    mac(pepper, challenge_id, code)
        .verify_slice(&stored)
        .is_ok()
}

fn mac(pepper: &[u8], challenge_id: &str, code: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"-").expect("static key"));
    mac.update(challenge_id.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: OtpPolicy = OtpPolicy {
        ttl_secs: 300,
        max_attempts: 5,
        lockout_secs: 900,
        resend_cooldown_secs: 30,
    };

    fn live(now: i64) -> OtpState {
        OtpState {
            challenge_id: "c".into(),
            code_hash: String::new(),
            expires_at_ms: now + 300_000,
            attempts: 0,
            last_sent_at_ms: now,
            locked_until_ms: 0,
            used: false,
        }
    }

    #[test]
    fn the_fifth_wrong_code_locks_out_and_the_lock_holds_for_requests_too() {
        let now = 1_000_000;
        let mut state = live(now);
        for i in 1..=5 {
            match on_verify(Some(&state), "c", false, now, &P) {
                VerifyDecision::Wrong {
                    attempts,
                    locked_until_ms,
                } => {
                    assert_eq!(attempts, i);
                    assert_eq!(locked_until_ms.is_some(), i == 5);
                    state.attempts = attempts;
                    state.locked_until_ms = locked_until_ms.unwrap_or(0);
                }
                other => panic!("{other:?}"),
            }
        }
        // Even the right code is refused while locked, and so is a new code.
        assert!(matches!(
            on_verify(Some(&state), "c", true, now + 1, &P),
            VerifyDecision::Locked { .. }
        ));
        assert!(matches!(
            on_request(Some(&state), now + 60_000, &P),
            RequestDecision::Locked { .. }
        ));
        assert_eq!(
            on_request(Some(&state), now + 900_000, &P),
            RequestDecision::Send
        );
    }

    #[test]
    fn expiry_cooldown_and_reuse() {
        let now = 1_000_000;
        let state = live(now);
        assert_eq!(
            on_verify(Some(&state), "c", true, now + 300_000, &P),
            VerifyDecision::Expired
        );
        assert_eq!(
            on_request(Some(&state), now + 10_000, &P),
            RequestDecision::Cooldown {
                retry_after_ms: 20_000
            }
        );
        let used = OtpState {
            used: true,
            ..state.clone()
        };
        assert_eq!(
            on_verify(Some(&used), "c", true, now, &P),
            VerifyDecision::Unknown
        );
        assert_eq!(
            on_verify(Some(&state), "other", true, now, &P),
            VerifyDecision::Unknown
        );
    }

    #[test]
    fn hashes_verify_only_their_code() {
        let h = hash(b"pepper", "c1", "123456");
        assert!(matches(b"pepper", "c1", "123456", &h));
        assert!(!matches(b"pepper", "c1", "123457", &h));
        assert!(!matches(b"pepper", "c2", "123456", &h));
        assert!(!matches(b"other", "c1", "123456", &h));
        assert!(!h.contains("123456"));
    }

    proptest! {
        /// However many codes are tried, at most `max_attempts` wrong ones count
        /// before the lock, and nothing is accepted while locked.
        #[test]
        fn never_more_than_max_attempts_guesses(guesses in proptest::collection::vec(any::<bool>(), 0..40)) {
            let now = 1_000_000;
            let mut state = live(now);
            let mut wrong = 0;
            for (i, right) in guesses.into_iter().enumerate() {
                let t = now + i as i64;
                match on_verify(Some(&state), "c", right, t, &P) {
                    VerifyDecision::Accept => { prop_assert!(state.locked_until_ms <= t); break; }
                    VerifyDecision::Wrong { attempts, locked_until_ms } => {
                        wrong += 1;
                        state.attempts = attempts;
                        if let Some(l) = locked_until_ms { state.locked_until_ms = l; }
                    }
                    VerifyDecision::Locked { .. } | VerifyDecision::Unknown => {}
                    VerifyDecision::Expired => prop_assert!(false, "not expired yet"),
                }
            }
            prop_assert!(wrong <= P.max_attempts);
        }
    }
}
