//! The ClickHouse sink: one row per message event, for delivery analytics.

pub mod config;
pub mod mapping;
pub mod migrations;

use std::collections::HashSet;

use clickhouse::{Client, Row};
use runtime::{Record, Reject, Stage};
use serde::Deserialize;

pub use config::ClickHouseConfig;
use mapping::MessageEventRow;

/// A client for the configured database.
pub fn client(config: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(config.password.expose())
        .with_database(&config.database)
        // ClickHouse 18.16 rejects the setting the crate's schema validation sends.
        .with_validation(false)
}

/// Creates the database and applies migrations not yet applied. Idempotent.
pub async fn migrate(config: &ClickHouseConfig) -> anyhow::Result<()> {
    let server = client(config).with_database("default");
    let db = &config.database;
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    server
        .query(&migrations::MIGRATIONS_TABLE.replace("{db}", db))
        .execute()
        .await?;
    #[derive(Row, Deserialize)]
    struct Applied {
        version: u32,
    }
    let applied: HashSet<u32> = server
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all::<Applied>()
        .await?
        .into_iter()
        .map(|a| a.version)
        .collect();
    for (version, name, statement) in migrations::MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        server
            .query(&statement.replace("{db}", db))
            .execute()
            .await?;
        server
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES (?, ?, now())"
            ))
            .bind(version)
            .bind(name)
            .execute()
            .await?;
        tracing::info!(version, name, "clickhouse migration applied");
    }
    Ok(())
}

pub struct ClickHouseSink {
    client: Client,
}

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig) -> Self {
        Self {
            client: client(config),
        }
    }
}

#[derive(Row, Deserialize)]
struct ExistingId {
    org: String,
    event_id: String,
}

impl Stage for ClickHouseSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let (decoded, rejects) = crate::decode_events(batch);
        let mut rows: Vec<MessageEventRow> = decoded
            .iter()
            .filter_map(|(_, e)| mapping::row(e))
            .collect();
        // Ids are unique per org: dedupe on (org, event_id).
        let mut seen = HashSet::new();
        rows.retain(|r| seen.insert((r.org.clone(), r.event_id.clone())));
        if rows.is_empty() {
            return Ok(rejects);
        }
        // Skip what an earlier attempt (or a redelivered webhook) already wrote.
        let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        let existing: HashSet<(String, String)> = self
            .client
            .query(
                "SELECT org, event_id FROM message_events WHERE event_id IN (SELECT arrayJoin(?))",
            )
            .bind(ids)
            .fetch_all::<ExistingId>()
            .await?
            .into_iter()
            .map(|e| (e.org, e.event_id))
            .collect();
        rows.retain(|r| !existing.contains(&(r.org.clone(), r.event_id.clone())));
        if !rows.is_empty() {
            let mut insert = self
                .client
                .insert::<MessageEventRow>("message_events")
                .await?;
            for row in &rows {
                insert.write(row).await?;
            }
            insert.end().await?;
        }
        Ok(rejects)
    }
}
