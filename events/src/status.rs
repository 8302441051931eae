//! The order of delivery statuses: the one place that says a status may only move
//! forward (accepted → sent → delivered → read), with `failed` terminal.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A message's delivery status, in the order it can only move forward.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by the Cloud API (the send call answered), not yet sent.
    Accepted,
    Sent,
    Delivered,
    Read,
    /// Terminal: no later status replaces it.
    Failed,
}

impl DeliveryStatus {
    /// Meta's status string, or `None` for one we do not order (e.g. `deleted`).
    pub fn from_meta(status: &str) -> Option<Self> {
        Some(match status {
            "accepted" => Self::Accepted,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "read" | "played" => Self::Read,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    /// Whether a message now at `self` may move to `next`: only forward, and never
    /// out of `failed`. A duplicate (same status) is not an advance.
    pub fn advances_to(self, next: Self) -> bool {
        self != Self::Failed && next > self
    }

    /// The status after seeing `next`: the furthest one reached.
    pub fn merge(current: Option<Self>, next: Self) -> Self {
        match current {
            Some(now) if !now.advances_to(next) => now,
            _ => next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::{self, *};
    use proptest::prelude::*;

    #[test]
    fn only_forward_and_failed_is_terminal() {
        assert!(Sent.advances_to(Delivered));
        assert!(Sent.advances_to(Read));
        assert!(!Read.advances_to(Delivered));
        assert!(!Read.advances_to(Read));
        assert!(Read.advances_to(Failed));
        assert!(!Failed.advances_to(Read));
    }

    fn any_status() -> impl Strategy<Value = DeliveryStatus> {
        prop_oneof![
            Just(Accepted),
            Just(Sent),
            Just(Delivered),
            Just(Read),
            Just(Failed)
        ]
    }

    proptest! {
        /// Whatever the order and duplication, the result is the furthest status seen.
        #[test]
        fn merge_is_order_independent(seen in proptest::collection::vec(any_status(), 1..20)) {
            let folded = seen.iter().fold(None, |acc, s| Some(DeliveryStatus::merge(acc, *s)));
            prop_assert_eq!(folded, seen.iter().max().copied());
        }
    }
}
