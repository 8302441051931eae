//! The MQTT presence bridge: agents' presence and activity, published by their apps
//! on the broker, become `agents.presence` events on Kafka (keyed by org).
//!
//! Nothing is lost: the bridge holds a persistent session with manual acks, and
//! acknowledges an MQTT message only after Kafka has acknowledged its event (or its
//! dead letter). If Kafka refuses, the bridge drops the connection without acking;
//! the broker redelivers on reconnect.

pub mod parse;

use events::clock::now_ms;
use std::time::Duration;

use events::topics;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use runtime::Publisher;
use runtime::consume::{DeadLetter, DeadLetters};
use runtime::kafka::KafkaError;
use runtime::mqtt::MqttConnection;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[ingest.presence]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// Run the bridge with the webhook receiver.
    pub enabled: bool,
    /// Fixed, so the broker keeps the session (and unacked messages) across restarts.
    pub client_id: String,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            client_id: "coexist-ingest-presence".into(),
        }
    }
}

/// Runs the bridge until `shutdown`.
pub async fn run(
    connection: MqttConnection,
    config: PresenceConfig,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut options = connection.options(&config.client_id);
    options.set_manual_acks(true);
    let mut backoff = runtime::RetryPolicy::default().backoff();
    while !shutdown.is_cancelled() {
        let (client, mut event_loop) = AsyncClient::new(options.clone(), 100);
        tracing::info!(client_id = %config.client_id, "presence bridge connecting");
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = event_loop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Subscribing again is harmless and covers a broker that lost the session.
                    for filter in parse::filters(&connection.topic_prefix) {
                        client.subscribe(filter, QoS::AtLeastOnce).await?;
                    }
                    backoff.reset();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Err(err) = forward(&connection.topic_prefix, &publisher, &publish).await
                    {
                        tracing::warn!(%err, "presence not stored; reconnecting so the broker redelivers");
                        break;
                    }
                    client.ack(&publish).await?;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "presence bridge lost the broker");
                    break;
                }
            }
        }
        drop(client);
        backoff.wait(&shutdown).await;
    }
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

/// One MQTT message to Kafka: the event, or a dead letter saying why not. A message
/// that can never be produced (refused by parse, or by the broker for its size or
/// shape) is dead-lettered and acknowledged: redelivering it would stall presence
/// for every org behind it. Only a transient Kafka failure returns `Err` (the
/// caller reconnects without acking, so the broker redelivers).
async fn forward(prefix: &str, publisher: &Publisher, publish: &Publish) -> Result<(), KafkaError> {
    let error = match parse::parse(prefix, &publish.topic, &publish.payload, now_ms()) {
        Ok(Some(event)) => {
            match publisher
                .send_json(topics::AGENTS_PRESENCE, &event.table_key(), &event, vec![])
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) if permanent(&err) => err.to_string(),
                Err(err) => return Err(err),
            }
        }
        Ok(None) => return Ok(()),
        Err(err) => err.to_string(),
    };
    let kept = publish.payload.len().min(parse::MAX_PAYLOAD_BYTES);
    DeadLetters::with_role(publisher.clone(), "ingest.presence", crate::webhook::ROLE)
        .send_letter(DeadLetter {
            key: truncate(&publish.topic, 512),
            value: publish.payload[..kept].to_vec(),
            reason: error,
            source: format!("mqtt:{}", truncate(&publish.topic, 512)),
            position: None,
            extra: vec![(DEADLETTER_ORIGINAL_BYTES, publish.payload.len().to_string())],
        })
        .await
}

/// The size of a dead-lettered MQTT payload before it was cut to
/// `parse::MAX_PAYLOAD_BYTES`.
pub const DEADLETTER_ORIGINAL_BYTES: &str = "coexist.original_bytes";

/// Errors that producing the same record again cannot fix.
fn permanent(err: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match err {
        KafkaError::Encode { .. } => true,
        KafkaError::Client(client) => matches!(
            client.rdkafka_error_code(),
            Some(
                Code::MessageSizeTooLarge
                    | Code::InvalidMessageSize
                    | Code::InvalidMessage
                    | Code::InvalidRecord
            )
        ),
        _ => false,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
