use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use serde::{Deserialize, Serialize};

/// `[sinks.whatsapp]`: sending `messages.outbound` through the Graph API. Tokens and
/// per-number rates are in `[graph]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WhatsAppConfig {
    /// Messages per second per business number (Meta's default throughput is 80;
    /// `[graph].numbers` overrides it per number).
    pub messages_per_second: u32,
    /// Sends a number may make back to back before the rate applies. 1 spaces every
    /// send evenly, so no 1-second window ever holds more than the rate.
    pub burst: u32,
    /// Attempts of one send while Meta throttles it (429, 130429, 131056) before the
    /// command is answered with Meta's error.
    pub max_attempts: u32,
    /// First delay between attempts; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Free-form messages only within this many hours of the customer's last message
    /// (WhatsApp's customer service window); templates any time.
    pub window_hours: u64,
    /// A command older than this is answered "expired" and not sent: a reply that
    /// arrives hours late (a new consumer group reading a backlog) does harm.
    pub max_command_age_ms: i64,
    /// Conversations of one number sent to at the same time within a batch (each
    /// conversation stays in order).
    pub concurrency: usize,
}

impl Default for WhatsAppConfig {
    fn default() -> Self {
        Self {
            messages_per_second: 80,
            burst: 1,
            max_attempts: 6,
            retry_initial_ms: 500,
            retry_max_ms: 10_000,
            window_hours: 24,
            max_command_age_ms: 3_600_000,
            concurrency: 64,
        }
    }
}

impl WhatsAppConfig {
    /// The token bucket of a number sending `per_second` (0: the default rate).
    pub fn quota(&self, per_second: u32) -> Quota {
        let rate = if per_second == 0 {
            self.messages_per_second
        } else {
            per_second
        };
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate).allow_burst(burst)
    }

    /// The delay before attempt `attempt` (1-based) of a throttled send: the one
    /// retry policy (doubling, capped, jittered; [`runtime::retry`]).
    pub fn backoff(&self, attempt: u32) -> Duration {
        runtime::RetryPolicy::from_millis(self.retry_initial_ms, self.retry_max_ms)
            .delay(attempt.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_quota_spaces_sends_evenly_at_80_per_second() {
        let config = WhatsAppConfig::default();
        let quota = config.quota(0);
        assert_eq!(quota.burst_size().get(), 1);
        assert_eq!(quota.replenish_interval(), Duration::from_micros(12_500));
        let own = config.quota(20);
        assert_eq!(own.replenish_interval(), Duration::from_millis(50));
        let zero = WhatsAppConfig {
            messages_per_second: 0,
            burst: 0,
            ..config
        };
        assert_eq!(zero.quota(0).burst_size().get(), 1, "never a zero quota");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_jittered() {
        let config = WhatsAppConfig::default();
        let steps = [500, 1000, 2000, 4000, 8000, 10_000, 10_000];
        for (attempt, step) in (1..=7).zip(steps) {
            let delay = config.backoff(attempt).as_millis() as u64;
            assert!(
                (step / 2..=step).contains(&delay),
                "attempt {attempt}: {delay} ms"
            );
        }
    }
}
