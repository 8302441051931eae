use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[sinks.mqtt]`: real time to agents' devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    /// Fixed, with a persistent session, so QoS 1 publishes survive a reconnect.
    pub client_id: String,
    /// First level of every topic (`{prefix}/{org}/...`).
    pub topic_prefix: String,
    /// How many recent event ids are remembered to skip redelivered webhooks.
    pub dedup_capacity: usize,
    /// How long to wait for the broker's PUBACKs before the batch is retried.
    pub ack_timeout_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            username: "coexist".into(),
            password: Secret::default(),
            client_id: "coexist-sink-mqtt".into(),
            topic_prefix: "coexist".into(),
            dedup_capacity: 100_000,
            ack_timeout_ms: 10_000,
        }
    }
}
