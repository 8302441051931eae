use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[sinks.clickhouse]`: delivery and agent analytics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClickHouseConfig {
    /// HTTP interface.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// Most rows per insert: ClickHouse wants few large inserts, not many small ones.
    pub batch_max_rows: usize,
    /// How long a batch waits to fill once its first record is in.
    pub batch_max_wait_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "coexist".into(),
            user: "default".into(),
            password: Secret::default(),
            batch_max_rows: 5_000,
            batch_max_wait_ms: 200,
        }
    }
}

impl ClickHouseConfig {
    /// A client of this database: the sink's, and the API's for its dashboards.
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(self.password.expose())
            .with_database(&self.database)
            // ClickHouse 18.16 rejects the setting the crate's schema validation sends.
            .with_validation(false)
    }

    /// The consume loop's settings for this sink: its own batch size and wait, the
    /// shared retry backoff.
    pub fn batching(&self, shared: &runtime::LoopConfig) -> runtime::LoopConfig {
        runtime::LoopConfig {
            max_records: self.batch_max_rows.max(1),
            max_wait_ms: self.batch_max_wait_ms,
            ..shared.clone()
        }
    }
}
