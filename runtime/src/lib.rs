//! The plumbing every role shares: configuration, the Kafka edges ([`kafka`]), the
//! consume→write→commit loop with its dead letters ([`consume`]), the one retry
//! policy ([`retry`]), reading a topic as a table ([`table`]) and following the
//! directory ([`directory`]), what each component's `run` gets ([`role`]),
//! metrics and readiness ([`observe`]), sealing, S3, MQTT settings and shutdown.

pub mod config;
pub mod consume;
pub mod directory;
pub mod kafka;
pub mod mqtt;
pub mod observe;
pub mod presence;
pub mod retry;
pub mod role;
pub mod s3;
pub mod seal;
pub mod shutdown;
pub mod table;

pub use config::Secret;
pub use consume::{DeadLetter, DeadLetters, LoopConfig, Record, Reject, Stage, read_batch};
pub use kafka::{KafkaConfig, Publisher};
pub use retry::RetryPolicy;
pub use role::{RoleContext, Shared};
pub use s3::S3Config;
