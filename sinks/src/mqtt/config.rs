use serde::{Deserialize, Serialize};

/// `[sinks.mqtt]`: real time to agents' devices (the broker is `[mqtt]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    /// Fixed, with a persistent session, so QoS 1 publishes survive a reconnect.
    pub client_id: String,
    /// How many recent event ids are remembered to skip redelivered webhooks.
    pub dedup_capacity: usize,
    /// How long to wait for the broker's PUBACKs, while connected, before every
    /// batch in flight is redone (a broker that is away is waited for: the client
    /// sends what is out again when it is back).
    pub ack_timeout_ms: u64,
    /// How long a batch waits to fill once its first record is in. This sink is the
    /// real-time path to devices, so it waits less than the stores' sinks; under load
    /// batches fill by themselves.
    pub batch_max_wait_ms: u64,
    /// Publishes the client keeps unacknowledged at once (rumqttc's own default is
    /// 100). A batch under load can make several hundred (a message goes to its
    /// conversation and to its owner's inbox), and with 100 its later publishes
    /// wait for earlier PUBACKs before they can even leave.
    pub max_inflight: u16,
    /// Batches with publishes out at once: the next is published while the broker
    /// still acknowledges the previous ones, and each is committed in order once
    /// its own acks are in. 1 waits for each batch's acks before taking the next.
    pub batches_in_flight: usize,
}

impl MqttConfig {
    /// The consume loop's settings for this sink: its own batch wait, the rest shared.
    pub fn batching(&self, shared: &runtime::LoopConfig) -> runtime::LoopConfig {
        runtime::LoopConfig {
            max_wait_ms: self.batch_max_wait_ms,
            ..shared.clone()
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            client_id: "coexist-sink-mqtt".into(),
            dedup_capacity: 100_000,
            ack_timeout_ms: 10_000,
            batch_max_wait_ms: 2,
            max_inflight: 1000,
            batches_in_flight: 8,
        }
    }
}
