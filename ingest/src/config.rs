//! `[ingest]`: the webhook receiver's settings.

use runtime::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// Address of the webhook HTTP server.
    pub listen: String,
    /// The token Meta echoes in the `hub.verify_token` handshake. Empty refuses all.
    pub verify_token: Secret,
    /// Seed (development and tests): Meta app secrets that speak for the numbers in
    /// `numbers` (and the default org's). Numbers registered through the API carry
    /// their own app secret in the directory, which wins: each secret speaks only
    /// for its own numbers.
    pub app_secrets: Vec<Secret>,
    /// Largest webhook body accepted (413 above). History chunks are the largest.
    pub max_body_bytes: usize,
    /// Seed: the org of business numbers that neither the directory nor `numbers`
    /// knows. Empty (the default): such a webhook is answered 200, kept on
    /// `whatsapp.webhooks.raw` and dead-lettered `unknown_number`, for `coexist
    /// replay` once an admin adds the number.
    pub default_org: String,
    /// Seed: which org owns which business number. The directory wins.
    pub numbers: Vec<NumberOwner>,
    /// The MQTT presence bridge.
    pub presence: crate::presence::PresenceConfig,
    /// Longest a webhook request may take, body upload included (503 after).
    pub request_timeout_ms: u64,
    /// Requests handled at once (503 beyond, so Meta retries later).
    pub max_concurrent_requests: usize,
}

/// One business number and its org.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NumberOwner {
    pub phone_number_id: String,
    pub org: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            verify_token: Secret::default(),
            app_secrets: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            default_org: String::new(),
            numbers: Vec::new(),
            presence: Default::default(),
            request_timeout_ms: 15_000,
            max_concurrent_requests: 256,
        }
    }
}

impl IngestConfig {
    pub fn org_directory(&self) -> events::OrgDirectory {
        events::OrgDirectory::new(
            self.default_org.clone(),
            self.numbers
                .iter()
                .map(|n| (n.phone_number_id.clone(), n.org.clone())),
        )
    }
}
