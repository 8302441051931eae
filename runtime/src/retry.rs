//! The one retry policy every loop uses after a transient failure (a store or the
//! broker down, a connection lost): exponential backoff with jitter, from the
//! `backon` crate, until it works or shutdown. The jitter matters: after an outage
//! every consumer of every role retries at once, and without it they would keep
//! doing so in lockstep.
//!
//! The n-th delay is drawn from `[d/2, d)`, where `d` is `initial · 2ⁿ` capped at
//! `max`: never longer than `max`, never two loops on the same beat.

use std::fmt::Display;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How long to wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 200 ms doubling to 5 s: the loop's defaults (`[sinks.batch]`).
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }
}

impl RetryPolicy {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    pub fn from_millis(initial_ms: u64, max_ms: u64) -> Self {
        Self::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
        )
    }

    /// A fresh sequence of delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            delays: self.builder().build(),
        }
    }

    /// The delay before attempt `attempt + 1` (0: after the first failure), for
    /// callers that count attempts themselves (an HTTP client's bounded tries).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut delays = self.backoff();
        (0..attempt).for_each(|_| {
            delays.next_delay();
        });
        delays.next_delay()
    }

    fn builder(&self) -> ExponentialBuilder {
        // backon's jitter adds up to the delay itself: halve both ends so the
        // jittered delay stays within [d/2, d).
        let half = |d: Duration| (d / 2).max(Duration::from_millis(1));
        ExponentialBuilder::new()
            .with_min_delay(half(self.initial.min(self.max)))
            .with_max_delay(half(self.max))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// Runs `attempt` until it succeeds, waiting between failures and logging each
    /// with `what`; `None` only when `shutdown` came first.
    pub async fn until_ok<T, E, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut attempt: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        E: Display,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = self.backoff();
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let error = tokio::select! {
                _ = shutdown.cancelled() => return None,
                outcome = attempt() => match outcome {
                    Ok(value) => return Some(value),
                    Err(error) => error,
                },
            };
            let delay = backoff.next_delay();
            tracing::warn!(%what, error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64,
                "failed; retrying");
            if !backoff.sleep(delay, shutdown).await {
                return None;
            }
        }
    }
}

/// One loop's sequence of delays: for loops whose attempts do not fit in a closure
/// (they borrow the loop's state, or retry a whole connection).
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// The next delay (longer each time, up to the policy's `max`).
    pub fn next_delay(&mut self) -> Duration {
        self.delays
            .next()
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// Sleeps the next delay; false if `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        self.sleep(delay, shutdown).await
    }

    /// Sleeps `delay` (from [`Self::next_delay`]); false if `shutdown` came first.
    pub async fn sleep(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.policy.builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_jittered_within_half_of_each_step() {
        let policy = RetryPolicy::from_millis(200, 5_000);
        let mut backoff = policy.backoff();
        let mut step = Duration::from_millis(200);
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} not in [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(policy.max);
        }
    }

    #[test]
    fn two_loops_do_not_retry_in_lockstep() {
        let policy = RetryPolicy::from_millis(1_000, 60_000);
        let a: Vec<Duration> = (0..8).map(|n| policy.delay(n)).collect();
        let b: Vec<Duration> = (0..8).map(|n| policy.delay(n)).collect();
        assert_ne!(a, b, "jitter drew the same eight delays twice");
    }

    #[test]
    fn reset_starts_from_the_shortest_delay() {
        let policy = RetryPolicy::from_millis(100, 10_000);
        let mut backoff = policy.backoff();
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn until_ok_retries_until_success_and_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        let policy = RetryPolicy::from_millis(10, 100);
        let mut tries = 0;
        let value = policy
            .until_ok("test", &shutdown, || {
                tries += 1;
                let outcome = if tries < 4 { Err("down") } else { Ok(tries) };
                async move { outcome }
            })
            .await;
        assert_eq!(value, Some(4));

        shutdown.cancel();
        let never: Option<()> = policy
            .until_ok("test", &shutdown, || async { Err::<(), _>("down") })
            .await;
        assert_eq!(never, None);
    }
}
