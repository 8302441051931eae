//! `[mqtt]`: the broker every MQTT client of ours connects to (the sink that publishes
//! to devices, the bridge that reads agents' presence). Each brings its own client id.

use std::time::Duration;

use rumqttc::MqttOptions;
use serde::{Deserialize, Serialize};

use crate::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConnection {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    /// First level of every topic (`{prefix}/{org}/...`).
    pub topic_prefix: String,
}

impl Default for MqttConnection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            username: "coexist".into(),
            password: Secret::default(),
            topic_prefix: "coexist".into(),
        }
    }
}

impl MqttConnection {
    /// Options for a persistent session (`clean_session = false`): QoS 1 messages in
    /// flight survive a reconnect in both directions.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options
            .set_credentials(&self.username, self.password.expose())
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        options
    }
}
