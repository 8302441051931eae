use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[sinks.mongo]`: the system of record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MongoConfig {
    /// Connection string. Credentials may be in it, hence a secret.
    pub uri: Secret,
    pub database: String,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: Secret::new("mongodb://127.0.0.1:27017"),
            database: "coexist".into(),
        }
    }
}
