//! The Kafka edges every role shares: an idempotent producer that encodes values (in
//! the Confluent wire format when a Schema Registry is configured), consumers that
//! never auto-commit, and the admin client for `coexist topics apply`.
//!
//! - [`config`]: `[kafka]` and how every client is configured from it;
//! - [`consumer`]: the group consumer's context (rebalances, readiness, lag, where
//!   a new group starts);
//! - [`publisher`]: the producer every role writes with.

pub mod config;
pub mod consumer;
pub mod publisher;

pub use config::{GroupStart, KafkaConfig};
pub use consumer::{EndIsNews, FreshPartition, GroupConsumer, RebalanceLog, start_offset};
pub use publisher::{Outgoing, Publisher};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("cannot encode value for {topic}: {reason}")]
    Encode { topic: String, reason: String },
    #[error("kafka metadata probe did not finish: {0}")]
    Probe(String),
    #[error(
        "kafka.new_group_start is {0:?}: expected earliest, latest or a Unix time in milliseconds"
    )]
    GroupStart(String),
}
