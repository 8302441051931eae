//! The one configuration every role shares: `coexist.toml` (see
//! `coexist.example.toml`) over built-in defaults, overridden by `COEXIST_*`
//! environment variables named after each key's path (`sinks.mongo.uri` is
//! `COEXIST_SINKS_MONGO_URI`). Secrets belong in the environment.

use std::path::Path;

use ingest::IngestConfig;
use runtime::mqtt::MqttConnection;
use runtime::{KafkaConfig, LoopConfig};
use serde::{Deserialize, Serialize};
use sinks::clickhouse::ClickHouseConfig;
use sinks::expo::ExpoConfig;
use sinks::mongo::MongoConfig;
use sinks::mqtt::MqttConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub mqtt: MqttConnection,
    pub s3: runtime::S3Config,
    pub graph: sinks::graph::GraphConfig,
    pub topics: TopicsConfig,
    pub ingest: IngestConfig,
    pub processors: ProcessorsConfig,
    pub sinks: SinksConfig,
    pub api: api::ApiConfig,
    /// Keys that seal business-number credentials: the API seals, ingest and the
    /// whatsapp and media sinks open.
    pub sealing: runtime::seal::SealingConfig,
    pub metrics: runtime::observe::MetricsConfig,
    pub simulate: crate::simulate::SimulateConfig,
}

/// `[processors]`: each processor's own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessorsConfig {
    pub router: processors::router::stage::RouterStageConfig,
    pub status: processors::status::StatusConfig,
    pub notifier: processors::notifier::NotifierConfig,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,sinks=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[topics]`: how `topics.yaml` is applied to the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicsConfig {
    /// Create missing topics when `coexist all` starts.
    pub apply_on_start: bool,
    /// Which of topics.yaml's `environments` places the topics (replication factor,
    /// `min.insync.replicas`): `development` (one broker) or `production`.
    pub env: String,
    /// Overrides the environment's replication factor when > 0.
    pub replication_factor: i32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            apply_on_start: true,
            env: "development".into(),
            replication_factor: 0,
        }
    }
}

/// `[sinks]`: the batching loop shared by every sink, and each sink's own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SinksConfig {
    pub batch: LoopConfig,
    pub mongo: MongoConfig,
    pub clickhouse: ClickHouseConfig,
    pub mqtt: MqttConfig,
    pub whatsapp: sinks::whatsapp::WhatsAppConfig,
    pub expo: ExpoConfig,
}

impl Config {
    /// Loads the file (if given) and the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(runtime::config::load(file, std::env::vars())?)
    }

    /// Every environment variable that sets a key.
    pub fn env_keys() -> Vec<String> {
        runtime::config::env_keys::<Self>()
    }
}
