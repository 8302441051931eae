//! The producer every role writes with: idempotent, `acks=all`, values encoded in
//! the Confluent wire format when a Schema Registry is configured.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema_registry_converter::async_impl::easy_json::EasyJsonEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;

use super::KafkaError;

#[derive(Clone)]
struct Registry {
    encoder: EasyJsonEncoder,
    schemas: Arc<HashMap<&'static str, serde_json::Value>>,
}

/// Produces values and waits for the broker's acknowledgement.
///
/// An idempotent producer whose sends timed out (a broker that froze) bumps its
/// epoch, and a broker may answer that with a fatal error (tansu: `ProducerFenced`):
/// from then on that producer refuses everything. The publisher then replaces it
/// with a new one, so the next attempt of the caller's retry goes through; a role
/// never stays unable to produce after a broker hiccup.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<FutureProducer>>,
    /// How to create the producer again.
    config: ClientConfig,
    registry: Option<Registry>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("client_id", &self.config.get("client.id"))
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

/// A record to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub value: Vec<u8>,
    pub headers: Vec<(&'a str, String)>,
}

impl Publisher {
    /// The publisher of a producer configured by `config`, encoding through the
    /// registry at `schema_registry_url` (none when empty).
    pub(crate) fn new(config: ClientConfig, schema_registry_url: &str) -> Result<Self, KafkaError> {
        let producer = Arc::new(RwLock::new(config.create()?));
        let registry = (!schema_registry_url.is_empty()).then(|| Registry {
            encoder: EasyJsonEncoder::new(SrSettings::new(schema_registry_url.to_string())),
            schemas: Arc::new(events::schema::topic_value_schemas().into_iter().collect()),
        });
        Ok(Self {
            producer,
            config,
            registry,
        })
    }

    /// Serializes `value` as JSON and produces it.
    pub async fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        headers: Vec<(&str, String)>,
    ) -> Result<(), KafkaError> {
        let encode_error = |e: serde_json::Error| KafkaError::Encode {
            topic: topic.into(),
            reason: e.to_string(),
        };
        let bytes = if self.registry.is_some() {
            let json = serde_json::to_value(value).map_err(encode_error)?;
            self.encode(topic, &json).await?
        } else {
            serde_json::to_vec(value).map_err(encode_error)? // the common path: one pass
        };
        self.send(Outgoing {
            topic,
            key,
            value: bytes,
            headers,
        })
        .await
    }

    /// Produces every `(key, value)` to `topic` as JSON, retrying them all with the
    /// one policy until every one is acknowledged (a broker that is down or frozen
    /// is waited for, never a reason to end the role). False only when `shutdown`
    /// came first; a retry may produce some of them twice, which the readers' ids
    /// absorb.
    pub async fn send_all_until_ok<'a, T: Serialize + 'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (&'a str, &'a T)>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let records: Vec<(&str, &T)> = records.into_iter().collect();
        crate::RetryPolicy::default()
            .until_ok(&format!("producing to {topic}"), shutdown, || {
                let sends = records
                    .iter()
                    .map(|(key, value)| self.send_json(topic, key, *value, vec![]));
                futures::future::try_join_all(sends)
            })
            .await
            .is_some()
    }

    /// JSON bytes as they go on the wire: framed with the registry's schema id when a
    /// registry is configured and the topic has a schema.
    pub async fn encode(
        &self,
        topic: &str,
        json: &serde_json::Value,
    ) -> Result<Vec<u8>, KafkaError> {
        if let Some(registry) = &self.registry
            && let Some(schema) = registry.schemas.get(topic)
        {
            let supplied = SuppliedSchema::new(None, SchemaType::Json, schema.to_string());
            let strategy =
                SubjectNameStrategy::TopicNameStrategyWithSchema(topic.into(), false, supplied);
            return registry
                .encoder
                .encode(json, strategy)
                .await
                .map_err(|e| KafkaError::Encode {
                    topic: topic.into(),
                    reason: e.to_string(),
                });
        }
        serde_json::to_vec(json).map_err(|e| KafkaError::Encode {
            topic: topic.into(),
            reason: e.to_string(),
        })
    }

    /// Produces raw bytes and waits until the broker has them (`acks=all`).
    pub async fn send(&self, record: Outgoing<'_>) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let future = FutureRecord::to(record.topic)
            .key(record.key)
            .payload(&record.value)
            .headers(headers);
        let producer = self.producer();
        let sent = producer.send(future, Duration::from_secs(5)).await;
        sent.map(|_| ()).map_err(|(err, _)| {
            self.replace_if_fatal(&producer, &err);
            KafkaError::Client(err)
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces `failed` with a new producer if it is in a fatal state or was fenced
    /// (and no other send has replaced it already).
    fn replace_if_fatal(&self, failed: &FutureProducer, err: &rdkafka::error::KafkaError) {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let fenced = matches!(
            err.rdkafka_error_code(),
            Some(Code::ProducerFenced | Code::InvalidProducerEpoch | Code::Fatal)
        );
        let Some((code, reason)) = failed
            .client()
            .fatal_error()
            .or_else(|| fenced.then(|| (Code::ProducerFenced, err.to_string())))
        else {
            return;
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "producer in a fatal state; replaced by a new one");
                *current = fresh;
            }
            Err(err) => {
                tracing::error!(?code, %reason, %err, "producer in a fatal state and cannot be replaced yet")
            }
        }
    }

    /// Whether the brokers answer a metadata request within `timeout` (ingest's
    /// readiness: it can store nothing without them).
    pub async fn reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(KafkaError::Client)
        })
        .await
        .unwrap_or_else(|join| Err(KafkaError::Probe(join.to_string())))
    }

    /// Waits for everything in flight (used at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer().flush(timeout) {
            tracing::warn!(%err, "producer flush at shutdown did not complete");
        }
    }
}
