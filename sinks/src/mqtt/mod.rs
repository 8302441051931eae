//! The MQTT sink: publishes messages and status changes, QoS 1, and counts a batch as
//! written only when the broker has acknowledged every publish (PUBACK).

pub mod config;
pub mod mapping;
pub mod recent;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use runtime::mqtt::MqttConnection;
use runtime::{Record, Reject, Stage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::MqttConfig;
use recent::RecentIds;

pub struct MqttSink {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    event_loop: JoinHandle<()>,
    recent: RecentIds,
    config: MqttConfig,
    prefix: String,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

impl MqttSink {
    pub fn new(connection: &MqttConnection, config: MqttConfig) -> Self {
        let (client, mut event_loop) =
            AsyncClient::new(connection.options(&config.client_id), 1024);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        tracing::info!(?ack.code, "mqtt connected")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "mqtt connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Self {
            client,
            acks,
            event_loop,
            recent: RecentIds::new(config.dedup_capacity),
            config,
            prefix: connection.topic_prefix.clone(),
        }
    }
}

impl Stage for MqttSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let (decoded, rejects) = crate::decode_events(batch);
        while self.acks.try_recv().is_ok() {} // acks of an abandoned attempt
        let mut published = Vec::new();
        for (index, event) in &decoded {
            let scoped = event.scoped_id();
            if self.recent.contains(&scoped) || published.contains(&scoped) {
                continue;
            }
            let Some(topic) = mapping::topic_for(&self.prefix, event) else {
                continue;
            };
            let payload = batch
                .get(*index)
                .map(|r| events::codec::json_part(&r.value).to_vec())
                .unwrap_or_default();
            self.client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await?;
            published.push(scoped);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.ack_timeout_ms);
        for _ in 0..published.len() {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => anyhow::bail!("mqtt event loop stopped"),
                Err(_) => anyhow::bail!(
                    "mqtt broker did not acknowledge {} publishes in time",
                    published.len()
                ),
            }
        }
        for id in published {
            self.recent.insert(id);
        }
        Ok(rejects)
    }
}
