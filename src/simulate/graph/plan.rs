//! What the simulated Meta does with an accepted message: which statuses it reports,
//! in which order, and whether it throttles a send. Pure and deterministic: every
//! decision is a hash of the run's seed and the message, so a run can be repeated.

use serde::{Deserialize, Serialize};

/// How often things go wrong, each a share between 0 and 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Shares {
    /// Messages that fail after `sent` (131026, message undeliverable).
    pub failed: f64,
    /// Messages with one status reported twice (Meta redelivers).
    pub duplicated: f64,
    /// Messages whose statuses arrive newest first.
    pub out_of_order: f64,
    /// Sends refused with 429 / 130429 (throughput).
    pub throttled: f64,
    /// Sends refused with 429 / 131056 (business–consumer pair rate limit).
    pub pair_limited: f64,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            failed: 0.0,
            duplicated: 0.0,
            out_of_order: 0.0,
            throttled: 0.0,
            pair_limited: 0.0,
        }
    }
}

/// A number in [0, 1) from the seed, the message and what is being decided.
pub fn roll(seed: u64, key: &str, what: &str) -> f64 {
    // FNV-1a: stable across runs and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in key.bytes().chain([0]).chain(what.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The statuses to report for `wamid`, in the order they are posted.
pub fn statuses(seed: u64, wamid: &str, shares: &Shares) -> Vec<&'static str> {
    let mut plan = if roll(seed, wamid, "failed") < shares.failed {
        vec!["sent", "failed"]
    } else {
        vec!["sent", "delivered", "read"]
    };
    if roll(seed, wamid, "duplicated") < shares.duplicated {
        let which = (roll(seed, wamid, "which") * plan.len() as f64) as usize;
        plan.insert(which, plan[which.min(plan.len() - 1)]);
    }
    if roll(seed, wamid, "out_of_order") < shares.out_of_order {
        plan.reverse();
    }
    plan
}

/// Whether a send is refused for rate (code), before it is accepted.
pub fn throttle(seed: u64, key: &str, shares: &Shares) -> Option<i64> {
    let r = roll(seed, key, "throttle");
    if r < shares.throttled {
        Some(130429)
    } else if r < shares.throttled + shares.pair_limited {
        Some(131056)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn by_default_every_message_is_sent_delivered_and_read_in_order() {
        for i in 0..100 {
            let plan = statuses(7, &format!("wamid.{i}"), &Shares::default());
            assert_eq!(plan, ["sent", "delivered", "read"]);
            assert_eq!(throttle(7, &format!("wamid.{i}"), &Shares::default()), None);
        }
    }

    #[test]
    fn shares_are_met_roughly_and_repeatably() {
        let shares = Shares {
            failed: 0.2,
            throttled: 0.1,
            pair_limited: 0.1,
            ..Default::default()
        };
        let n = 10_000;
        let failed = (0..n)
            .filter(|i| statuses(1, &format!("w{i}"), &shares).contains(&"failed"))
            .count();
        let throttled = (0..n)
            .filter(|i| throttle(1, &format!("w{i}"), &shares) == Some(130429))
            .count();
        let paired = (0..n)
            .filter(|i| throttle(1, &format!("w{i}"), &shares) == Some(131056))
            .count();
        for (count, share) in [(failed, 0.2), (throttled, 0.1), (paired, 0.1)] {
            let seen = count as f64 / n as f64;
            assert!((seen - share).abs() < 0.02, "{seen} vs {share}");
        }
        assert_eq!(statuses(1, "w1", &shares), statuses(1, "w1", &shares));
    }

    proptest! {
        /// Whatever the shares, a plan starts from `sent` (possibly reversed), ends in
        /// read or failed, and only ever repeats a status it has.
        #[test]
        fn every_plan_is_a_real_sequence_of_statuses(seed: u64, wamid in "[a-z0-9.]{1,20}",
            failed in 0.0f64..1.0, duplicated in 0.0f64..1.0, out_of_order in 0.0f64..1.0) {
            let shares = Shares { failed, duplicated, out_of_order, ..Default::default() };
            let plan = statuses(seed, &wamid, &shares);
            let mut sorted = plan.clone();
            sorted.dedup();
            let mut forward = sorted.clone();
            if forward.first() != Some(&"sent") {
                forward.reverse();
            }
            prop_assert!(forward == ["sent", "delivered", "read"] || forward == ["sent", "failed"], "{plan:?}");
            prop_assert!(plan.len() == forward.len() || plan.len() == forward.len() + 1);
        }
    }
}
