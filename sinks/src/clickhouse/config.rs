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
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "coexist".into(),
            user: "default".into(),
            password: Secret::default(),
        }
    }
}
