//! One-time codes: the policy (expiry, attempts, lockout, resend cooldown) as pure
//! functions over the stored state, and the peppered hash the state keeps instead of
//! the code.
//!
//! One state per user (`auth_otps`, `_id` = `{org}:{agent_id}`): a new code replaces
//! the last, but the count of wrong codes does not start again with it. Wrong codes
//! count across every code of the user and reset only on a successful login (or when
//! a lockout has run its course), so asking for fresh codes does not buy fresh
//! guesses.
//!
//! A guess is paid for before it is looked at: the API first *reserves* the attempt
//! with one atomic update (`$inc` of `attempts`, filtered on everything
//! [`reservable`] checks), and compares the code only if the reservation matched.
//! Fifty concurrent guesses therefore get at most `max_attempts` comparisons between
//! them. [`reserve`] is the same rule on plain data, for the property tests.

use hmac::{Hmac, Mac};
use mongodb::bson::{Document, doc};
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
    /// Attempts reserved since the last login (or the end of the last lockout),
    /// across codes. A right code resets it; every other attempt leaves it counted.
    pub attempts: u32,
    /// When the last attempt was reserved: a lockout runs `lockout_secs` from the
    /// attempt that reached `max_attempts`, so the lock is derived, never stored.
    #[serde(default)]
    pub last_attempt_at_ms: i64,
    pub last_sent_at_ms: i64,
    pub used: bool,
}

impl OtpState {
    /// Until when the user is locked out, if they are at `now_ms`.
    pub fn locked_until(&self, now_ms: i64, policy: &OtpPolicy) -> Option<i64> {
        let until = self.last_attempt_at_ms + (policy.lockout_secs as i64) * 1000;
        (self.attempts >= policy.max_attempts && until > now_ms).then_some(until)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDecision {
    /// Send a new code; the new state starts with these attempts already counted.
    Send {
        attempts: u32,
    },
    Cooldown {
        retry_after_ms: i64,
    },
    Locked {
        retry_after_ms: i64,
    },
}

/// May a new code be sent now, and how many wrong attempts does it inherit?
pub fn on_request(state: Option<&OtpState>, now_ms: i64, policy: &OtpPolicy) -> RequestDecision {
    let Some(state) = state else {
        return RequestDecision::Send { attempts: 0 };
    };
    if let Some(until) = state.locked_until(now_ms, policy) {
        return RequestDecision::Locked {
            retry_after_ms: until - now_ms,
        };
    }
    let next = state.last_sent_at_ms + (policy.resend_cooldown_secs as i64) * 1000;
    if next > now_ms {
        return RequestDecision::Cooldown {
            retry_after_ms: next - now_ms,
        };
    }
    // A lockout that has run its course clears the slate; anything short of one
    // carries over to the new code.
    let attempts = if state.attempts >= policy.max_attempts {
        0
    } else {
        state.attempts
    };
    RequestDecision::Send { attempts }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyDecision {
    /// An attempt may be reserved (and then the code compared).
    Reserve,
    Expired,
    Locked {
        retry_after_ms: i64,
    },
    /// No such (live) challenge, or its attempts are spent.
    Unknown,
}

/// May an attempt be made on `challenge_id` now? Also says why a reservation that
/// did not match was refused.
pub fn on_verify(
    state: Option<&OtpState>,
    challenge_id: &str,
    now_ms: i64,
    policy: &OtpPolicy,
) -> VerifyDecision {
    let Some(state) = state.filter(|s| s.challenge_id == challenge_id && !s.used) else {
        return VerifyDecision::Unknown;
    };
    if let Some(until) = state.locked_until(now_ms, policy) {
        return VerifyDecision::Locked {
            retry_after_ms: until - now_ms,
        };
    }
    if state.attempts >= policy.max_attempts {
        // Locked earlier and the lock ran out: this code is spent all the same.
        return VerifyDecision::Unknown;
    }
    if state.expires_at_ms <= now_ms {
        return VerifyDecision::Expired;
    }
    VerifyDecision::Reserve
}

/// The MongoDB filter that matches `key`'s state only when [`on_verify`] would say
/// `Reserve`: the reservation is `update_one(filter, reservation_update(now))`.
pub fn reservable(key: &str, challenge_id: &str, now_ms: i64, policy: &OtpPolicy) -> Document {
    doc! {
        "_id": key,
        "challenge_id": challenge_id,
        "used": false,
        "attempts": { "$lt": i64::from(policy.max_attempts) },
        "expires_at_ms": { "$gt": now_ms },
    }
}

/// The reservation itself: one more attempt, at `now_ms`.
pub fn reservation_update(now_ms: i64) -> Document {
    doc! { "$inc": { "attempts": 1 }, "$set": { "last_attempt_at_ms": now_ms } }
}

/// [`reservable`] + [`reservation_update`] on plain data: the state after a
/// reservation, or `None` when the update would match nothing.
pub fn reserve(
    state: &OtpState,
    challenge_id: &str,
    now_ms: i64,
    policy: &OtpPolicy,
) -> Option<OtpState> {
    let matches = state.challenge_id == challenge_id
        && !state.used
        && state.attempts < policy.max_attempts
        && state.expires_at_ms > now_ms;
    matches.then(|| OtpState {
        attempts: state.attempts + 1,
        last_attempt_at_ms: now_ms,
        ..state.clone()
    })
}

/// What a wrong code answers, given the attempt count its reservation reached:
/// the lock it completes, if any.
pub fn after_wrong(attempts: u32, now_ms: i64, policy: &OtpPolicy) -> Option<i64> {
    (attempts >= policy.max_attempts).then(|| now_ms + (policy.lockout_secs as i64) * 1000)
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

    fn live(now: i64, challenge: &str, attempts: u32) -> OtpState {
        OtpState {
            challenge_id: challenge.into(),
            code_hash: String::new(),
            expires_at_ms: now + 300_000,
            attempts,
            last_attempt_at_ms: 0,
            last_sent_at_ms: now,
            used: false,
        }
    }

    #[test]
    fn the_fifth_reservation_locks_out_and_the_lock_holds_for_requests_too() {
        let now = 1_000_000;
        let mut state = live(now, "c", 0);
        for i in 1..=5 {
            assert_eq!(
                on_verify(Some(&state), "c", now, &P),
                VerifyDecision::Reserve
            );
            state = reserve(&state, "c", now, &P).unwrap();
            assert_eq!(state.attempts, i);
            assert_eq!(after_wrong(i, now, &P).is_some(), i == 5);
        }
        // Even the right code cannot be tried while locked, and no new code is sent.
        assert_eq!(reserve(&state, "c", now + 1, &P), None);
        assert!(matches!(
            on_verify(Some(&state), "c", now + 1, &P),
            VerifyDecision::Locked { .. }
        ));
        assert!(matches!(
            on_request(Some(&state), now + 60_000, &P),
            RequestDecision::Locked { .. }
        ));
        // Once the lock has run out, a new code starts from a clean slate.
        assert_eq!(
            on_request(Some(&state), now + 900_000, &P),
            RequestDecision::Send { attempts: 0 }
        );
    }

    #[test]
    fn wrong_attempts_carry_over_to_a_new_code() {
        let now = 1_000_000;
        let state = live(now, "c", 4);
        assert_eq!(
            on_request(Some(&state), now + 30_000, &P),
            RequestDecision::Send { attempts: 4 }
        );
        let next = live(now + 30_000, "d", 4);
        let reserved = reserve(&next, "d", now + 30_001, &P).unwrap();
        assert_eq!(
            after_wrong(reserved.attempts, now, &P).map(|_| ()),
            Some(())
        );
        assert_eq!(reserve(&reserved, "d", now + 30_002, &P), None);
    }

    #[test]
    fn expiry_cooldown_and_reuse() {
        let now = 1_000_000;
        let state = live(now, "c", 0);
        assert_eq!(
            on_verify(Some(&state), "c", now + 300_000, &P),
            VerifyDecision::Expired
        );
        assert_eq!(reserve(&state, "c", now + 300_000, &P), None);
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
            on_verify(Some(&used), "c", now, &P),
            VerifyDecision::Unknown
        );
        assert_eq!(reserve(&used, "c", now, &P), None);
        assert_eq!(
            on_verify(Some(&state), "other", now, &P),
            VerifyDecision::Unknown
        );
        assert_eq!(reserve(&state, "other", now, &P), None);
    }

    #[test]
    fn the_filter_names_what_reserve_checks() {
        let filter = reservable("acme:ann", "c", 7, &P);
        assert_eq!(filter.get_str("_id").unwrap(), "acme:ann");
        assert_eq!(filter.get_str("challenge_id").unwrap(), "c");
        assert!(!filter.get_bool("used").unwrap());
        assert_eq!(
            filter
                .get_document("attempts")
                .unwrap()
                .get_i64("$lt")
                .unwrap(),
            5
        );
        assert_eq!(
            filter
                .get_document("expires_at_ms")
                .unwrap()
                .get_i64("$gt")
                .unwrap(),
            7
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

    #[derive(Debug, Clone)]
    enum Step {
        /// Ask for a new code after this many seconds.
        Resend(u16),
        /// A wrong guess on the current code.
        Guess,
    }

    proptest! {
        /// Whatever mix of wrong guesses and new codes an attacker makes within one
        /// lockout window, at most `max_attempts` codes are compared.
        #[test]
        fn never_more_than_max_attempts_guesses_per_lockout(
            steps in proptest::collection::vec(
                prop_oneof![ (0u16..120).prop_map(Step::Resend), Just(Step::Guess) ], 0..80)
        ) {
            let start = 1_000_000;
            let mut now = start;
            let mut state = live(now, "c0", 0);
            let mut compared = 0;
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Resend(secs) => {
                        now += i64::from(secs) * 1000;
                        if now - start >= 900_000 { break; }
                        if let RequestDecision::Send { attempts } = on_request(Some(&state), now, &P) {
                            let last = state.last_attempt_at_ms;
                            state = live(now, &format!("c{i}"), attempts);
                            state.last_attempt_at_ms = last;
                        }
                    }
                    Step::Guess => {
                        let challenge = state.challenge_id.clone();
                        if let Some(next) = reserve(&state, &challenge, now, &P) {
                            compared += 1;
                            state = next;
                        }
                    }
                }
            }
            prop_assert!(compared <= P.max_attempts);
        }
    }
}
