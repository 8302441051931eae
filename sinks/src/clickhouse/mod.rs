//! The ClickHouse sink: delivery and agent analytics. It reads five topics and
//! writes one table per kind of event; materialized views built on those tables
//! (see [`migrations`]) feed the dashboards (`dashboards/`).
//!
//! | topic | table |
//! | --- | --- |
//! | `whatsapp.events` | `message_events` (messages and Meta's raw statuses) |
//! | `messages.status` | `status_transitions` |
//! | `conversations.assignments` | `assignments` |
//! | `messages.outbound`, `messages.outbound.results` | `outbound_messages` |
//!
//! Each write is deduplicated by `(org, event_id)`: within the batch, then against
//! what the table already holds, so a redelivered or re-consumed event never lands
//! twice (and the summing views never count it twice).

pub mod config;
pub mod mapping;
pub mod migrations;
mod run;

use std::collections::{HashMap, HashSet};

use clickhouse::{Client, Row, RowOwned, RowWrite};
use events::delivery::{OutboundMessage, OutboundResult, StatusTransition, unsent_outbound_id};
use events::inbox::AssignmentEvent;
use events::topics;
use runtime::{Record, Reject, Stage};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use config::ClickHouseConfig;
use mapping::{AssignmentRow, Keyed, MessageEventRow, OutboundRow, StatusTransitionRow};
pub use run::run;

/// The topics this sink reads.
pub const TOPICS: &[&str] = &[
    topics::WHATSAPP_EVENTS,
    topics::MESSAGES_STATUS,
    topics::CONVERSATION_ASSIGNMENTS,
    topics::MESSAGES_OUTBOUND,
    topics::OUTBOUND_RESULTS,
];

/// Creates the database and applies migrations not yet applied. Idempotent.
pub async fn migrate(config: &ClickHouseConfig) -> anyhow::Result<()> {
    let server = config.client().with_database("default");
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

/// A batch split by table.
#[derive(Default)]
struct Rows {
    messages: Vec<MessageEventRow>,
    statuses: Vec<StatusTransitionRow>,
    assignments: Vec<AssignmentRow>,
    outbound: Vec<OutboundRow>,
}

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig) -> Self {
        Self {
            client: config.client(),
        }
    }

    /// Inserts the rows whose `(org, event_id)` is new to the batch and the table.
    async fn write_new<T>(&self, mut rows: Vec<T>) -> anyhow::Result<()>
    where
        T: Keyed + RowOwned + RowWrite,
    {
        let mut seen = HashSet::new();
        rows.retain(|r| seen.insert((r.org().to_string(), r.event_id().to_string())));
        if rows.is_empty() {
            return Ok(());
        }
        // Skip what an earlier attempt (or a redelivered event) already wrote. The org
        // and number sets let ClickHouse narrow the scan by the sort key.
        let (orgs, numbers, ids) = key_sets(&rows);
        let existing: HashSet<(String, String)> = self
            .client
            .query(&format!(
                "SELECT org, event_id FROM {} WHERE org IN (SELECT arrayJoin(?)) \
                 AND phone_number_id IN (SELECT arrayJoin(?)) AND event_id IN (SELECT arrayJoin(?))",
                T::TABLE
            ))
            .bind(orgs)
            .bind(numbers)
            .bind(ids)
            .fetch_all::<ExistingId>()
            .await?
            .into_iter()
            .map(|e| (e.org, e.event_id))
            .collect();
        rows.retain(|r| !existing.contains(&(r.org().to_string(), r.event_id().to_string())));
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(T::TABLE).await?;
        for row in &rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Fills in when each transition's message reached the status it left: from an
    /// earlier row of the batch, else from the table (a message's transitions come
    /// in order on one partition, so the earlier step is written by then).
    async fn fill_from_times(&self, rows: &mut [StatusTransitionRow]) -> anyhow::Result<()> {
        let mut known: HashMap<(String, String), u32> = rows
            .iter()
            .map(|r| ((r.org.clone(), r.event_id.clone()), r.event_time))
            .collect();
        let from_id = |r: &StatusTransitionRow| events::ids::status_id(&r.wamid, &r.from_status);
        let missing: Vec<StatusTransitionRow> = rows
            .iter()
            .filter(|r| !r.from_status.is_empty())
            .filter(|r| !known.contains_key(&(r.org.clone(), from_id(r))))
            .map(|r| StatusTransitionRow {
                event_id: from_id(r),
                ..r.clone()
            })
            .collect();
        if !missing.is_empty() {
            let (orgs, numbers, ids) = key_sets(&missing);
            let found = self
                .client
                .query(
                    "SELECT org, event_id, event_time FROM status_transitions \
                     WHERE org IN (SELECT arrayJoin(?)) AND phone_number_id IN (SELECT arrayJoin(?)) \
                     AND event_id IN (SELECT arrayJoin(?))",
                )
                .bind(orgs)
                .bind(numbers)
                .bind(ids)
                .fetch_all::<ReachedAt>()
                .await?;
            known.extend(
                found
                    .into_iter()
                    .map(|f| ((f.org, f.event_id), f.event_time)),
            );
        }
        for row in rows.iter_mut().filter(|r| !r.from_status.is_empty()) {
            row.from_time = known
                .get(&(row.org.clone(), from_id(row)))
                .copied()
                .unwrap_or_default();
        }
        Ok(())
    }
}

impl ClickHouseSink {
    /// Labels each Graph API answer with its send's template, and each status
    /// transition with its message's: from the batch first, else by sort-key lookups
    /// (`outbound_messages` by send, `sent_wamids` by wamid). A status read before
    /// its send's answer is written stays unlabelled ('').
    async fn fill_templates(&self, rows: &mut Rows) -> anyhow::Result<()> {
        type Key = (String, String);
        let mut by_send: HashMap<Key, String> = rows
            .outbound
            .iter()
            .filter(|r| r.kind == "message")
            .map(|r| {
                (
                    (r.org.clone(), r.outbound_id.clone()),
                    r.template_name.clone(),
                )
            })
            .collect();
        // Sends whose template is not in the batch: answers, and refused sends' statuses.
        let mut wanted: Vec<(String, String, String)> = rows
            .outbound
            .iter()
            .filter(|r| r.kind == "result")
            .map(|r| {
                (
                    r.org.clone(),
                    r.phone_number_id.clone(),
                    r.outbound_id.clone(),
                )
            })
            .chain(rows.statuses.iter().filter_map(|r| {
                unsent_outbound_id(&r.wamid)
                    .map(|id| (r.org.clone(), r.phone_number_id.clone(), id.to_string()))
            }))
            .filter(|(org, _, id)| !by_send.contains_key(&(org.clone(), id.clone())))
            .collect();
        wanted.sort();
        wanted.dedup();
        if !wanted.is_empty() {
            let (orgs, numbers) = org_number_sets(wanted.iter().map(|(o, n, _)| (o, n)));
            let ids: Vec<String> = wanted
                .iter()
                .map(|(_, _, id)| format!("message:{id}"))
                .collect();
            let found = self
                .client
                .query(
                    "SELECT org, outbound_id AS key, template_name FROM outbound_messages \
                     WHERE org IN (SELECT arrayJoin(?)) AND phone_number_id IN (SELECT arrayJoin(?)) \
                     AND event_id IN (SELECT arrayJoin(?))",
                )
                .bind(orgs)
                .bind(numbers)
                .bind(ids)
                .fetch_all::<Template>()
                .await?;
            by_send.extend(found.into_iter().map(|t| ((t.org, t.key), t.template_name)));
        }
        for row in rows.outbound.iter_mut().filter(|r| r.kind == "result") {
            if let Some(t) = by_send.get(&(row.org.clone(), row.outbound_id.clone())) {
                row.template_name = t.clone();
            }
        }
        let mut by_wamid: HashMap<Key, String> = rows
            .outbound
            .iter()
            .filter(|r| r.kind == "result" && !r.wamid.is_empty())
            .map(|r| ((r.org.clone(), r.wamid.clone()), r.template_name.clone()))
            .collect();
        let mut wanted: Vec<(String, String, String)> = rows
            .statuses
            .iter()
            .filter(|r| unsent_outbound_id(&r.wamid).is_none())
            .filter(|r| !by_wamid.contains_key(&(r.org.clone(), r.wamid.clone())))
            .map(|r| (r.org.clone(), r.phone_number_id.clone(), r.wamid.clone()))
            .collect();
        wanted.sort();
        wanted.dedup();
        if !wanted.is_empty() {
            let (orgs, numbers) = org_number_sets(wanted.iter().map(|(o, n, _)| (o, n)));
            let wamids: Vec<&str> = wanted.iter().map(|(_, _, w)| w.as_str()).collect();
            let found = self
                .client
                .query(
                    "SELECT org, wamid AS key, template_name FROM sent_wamids \
                     WHERE org IN (SELECT arrayJoin(?)) AND phone_number_id IN (SELECT arrayJoin(?)) \
                     AND wamid IN (SELECT arrayJoin(?))",
                )
                .bind(orgs)
                .bind(numbers)
                .bind(wamids)
                .fetch_all::<Template>()
                .await?;
            by_wamid.extend(found.into_iter().map(|t| ((t.org, t.key), t.template_name)));
        }
        for row in rows.statuses.iter_mut() {
            let found = match unsent_outbound_id(&row.wamid) {
                Some(id) => by_send.get(&(row.org.clone(), id.to_string())),
                None => by_wamid.get(&(row.org.clone(), row.wamid.clone())),
            };
            if let Some(t) = found {
                row.template_name = t.clone();
            }
        }
        Ok(())
    }
}

/// Distinct orgs and numbers, to bind as `IN` sets that narrow a lookup by sort key.
fn org_number_sets<'a>(
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut orgs = HashSet::new();
    let mut numbers = HashSet::new();
    for (org, number) in pairs {
        orgs.insert(org.as_str());
        numbers.insert(number.as_str());
    }
    (orgs.into_iter().collect(), numbers.into_iter().collect())
}

#[derive(Row, Deserialize)]
struct Template {
    org: String,
    key: String,
    template_name: String,
}

/// The distinct orgs, numbers and event ids of `rows`, to bind as `IN` sets.
fn key_sets<T: Keyed>(rows: &[T]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let distinct = |f: fn(&T) -> &str| {
        let set: HashSet<&str> = rows.iter().map(f).collect();
        set.into_iter().collect::<Vec<_>>()
    };
    (
        distinct(Keyed::org),
        distinct(Keyed::phone_number_id),
        rows.iter().map(Keyed::event_id).collect(),
    )
}

#[derive(Row, Deserialize)]
struct ExistingId {
    org: String,
    event_id: String,
}

#[derive(Row, Deserialize)]
struct ReachedAt {
    org: String,
    event_id: String,
    event_time: u32,
}

/// Decodes a record of `topic`'s type and maps it, or says why it cannot be.
fn decode<T: DeserializeOwned, R>(
    record: &Record,
    index: usize,
    map: impl Fn(&T) -> R,
    rejects: &mut Vec<Reject>,
) -> Option<R> {
    let what = format!("a valid {} value", record.topic);
    match record.decode::<T>(&what) {
        Ok(value) => Some(map(&value)),
        Err(reason) => {
            rejects.push(Reject { index, reason });
            None
        }
    }
}

/// Splits a batch into rows per table, and records that cannot be read.
fn split(batch: &[Record]) -> (Rows, Vec<Reject>) {
    let mut rows = Rows::default();
    let mut rejects = Vec::new();
    let r = &mut rejects;
    for (i, record) in batch.iter().enumerate() {
        match record.topic.as_str() {
            topics::WHATSAPP_EVENTS => {
                if let Some(Some(row)) = decode(record, i, mapping::row, r) {
                    rows.messages.push(row);
                }
            }
            topics::MESSAGES_STATUS => rows.statuses.extend(decode::<StatusTransition, _>(
                record,
                i,
                mapping::status_row,
                r,
            )),
            topics::CONVERSATION_ASSIGNMENTS => rows.assignments.extend(
                decode::<AssignmentEvent, _>(record, i, mapping::assignment_row, r),
            ),
            topics::MESSAGES_OUTBOUND => rows.outbound.extend(decode::<OutboundMessage, _>(
                record,
                i,
                mapping::outbound_row,
                r,
            )),
            topics::OUTBOUND_RESULTS => rows.outbound.extend(decode::<OutboundResult, _>(
                record,
                i,
                mapping::result_row,
                r,
            )),
            other => r.push(Reject {
                index: i,
                reason: format!("the clickhouse sink does not read topic {other}"),
            }),
        }
    }
    (rows, rejects)
}

impl Stage for ClickHouseSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let (mut rows, rejects) = split(batch);
        self.fill_from_times(&mut rows.statuses).await?;
        self.fill_templates(&mut rows).await?;
        // Base tables before the tables whose views read them is not required (each
        // view reads one table), but a fixed order keeps retries predictable.
        self.write_new(rows.messages).await?;
        self.write_new(rows.outbound).await?;
        self.write_new(rows.statuses).await?;
        self.write_new(rows.assignments).await?;
        Ok(rejects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, value: &str) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            value: value.as_bytes().to_vec(),
            headers: vec![],
            timestamp_ms: None,
        }
    }

    #[test]
    fn split_routes_by_topic_and_rejects_what_it_cannot_read() {
        let status = r#"{"id":"w:sent","org":"o","phone_number_id":"1","conversation_id":"1-2","wamid":"w","to":"sent","at":10}"#;
        let assignment = r#"{"id":"a","org":"o","phone_number_id":"1","conversation_id":"1-2","state":"resolved","at_ms":10}"#;
        let batch = [
            record(topics::MESSAGES_STATUS, status),
            record(topics::CONVERSATION_ASSIGNMENTS, assignment),
            record(topics::MESSAGES_STATUS, "{not json"),
            record(topics::AGENTS_PRESENCE, "{}"),
        ];
        let (rows, rejects) = split(&batch);
        assert_eq!(rows.statuses.len(), 1);
        assert_eq!(rows.assignments.len(), 1);
        let rejected: Vec<usize> = rejects.iter().map(|r| r.index).collect();
        assert_eq!(rejected, vec![2, 3]);
        assert!(rejects[0].reason.contains("messages.status"));
    }
}
