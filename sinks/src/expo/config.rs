use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[sinks.expo]`: push notifications through Expo's push service (or
/// `coexist simulate serve`, which speaks its API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ExpoConfig {
    /// Expo's push service; point it at the simulator for demos and tests.
    pub base_url: String,
    /// Expo access token, needed once "enhanced push security" is on for the
    /// project. Empty sends none.
    pub access_token: Secret,
    /// Messages per send request; Expo refuses more than 100.
    pub chunk_size: usize,
    /// How long after a send its receipt is first asked for (Expo suggests waiting;
    /// receipts are kept for a day).
    pub receipt_delay_ms: u64,
    /// How often due receipts are polled.
    pub receipt_poll_ms: u64,
    /// Tries per request on 429, 5xx or a network error before the batch is handed
    /// back to the loop (which retries it later without committing).
    pub max_attempts: u32,
    /// First backoff between tries (doubled each time, capped by `retry_max_ms`);
    /// a `Retry-After` from Expo takes precedence.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub request_timeout_ms: u64,
    /// A notification older than this is dropped, not pushed: after an outage, or
    /// for a new consumer group reading the topic's backlog, it is old news.
    pub max_age_ms: i64,
    /// Expo message fields.
    pub sound: String,
    pub priority: String,
}

impl Default for ExpoConfig {
    fn default() -> Self {
        Self {
            base_url: "https://exp.host".into(),
            access_token: Secret::default(),
            chunk_size: 100,
            receipt_delay_ms: 900_000,
            receipt_poll_ms: 60_000,
            max_attempts: 5,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            request_timeout_ms: 10_000,
            max_age_ms: 600_000,
            sound: "default".into(),
            priority: "high".into(),
        }
    }
}
