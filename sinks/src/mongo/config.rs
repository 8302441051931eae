use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[sinks.mongo]`: the system of record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MongoConfig {
    /// Connection string. Credentials may be in it, hence a secret.
    pub uri: Secret,
    pub database: String,
    /// Most records per batch: each batch is a few bulk writes, so a store that pays
    /// per call (the local stand-in above all) keeps up by writing more per call.
    pub batch_max_records: usize,
    /// How long a batch waits to fill once its first record is in. MongoDB is not on
    /// the real-time path (MQTT is), so it can wait longer than the shared default.
    pub batch_max_wait_ms: u64,
}

impl MongoConfig {
    /// The consume loop's settings for this sink: its own batch size and wait, the
    /// shared retry backoff.
    pub fn batching(&self, shared: &runtime::LoopConfig) -> runtime::LoopConfig {
        runtime::LoopConfig {
            max_records: self.batch_max_records.max(1),
            max_wait_ms: self.batch_max_wait_ms,
            ..shared.clone()
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: Secret::new("mongodb://127.0.0.1:27017"),
            database: "coexist".into(),
            batch_max_records: 2_000,
            batch_max_wait_ms: 200,
        }
    }
}
