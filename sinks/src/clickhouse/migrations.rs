//! Schema migrations, run at start. Each is idempotent DDL that ClickHouse 18.16 (the
//! local stack) and current ClickHouse both accept: `DateTime` plus a separate
//! millisecond column instead of `DateTime64`, no `LowCardinality`.
//!
//! Deduplication by event id: tables are `ReplacingMergeTree` ordered by the event id,
//! so repeats collapse at merge time (and `FINAL` collapses them at query time); the
//! sink also skips ids already present before inserting, so in practice a repeat
//! never lands at all.

/// `(version, name, statement)`, applied in order; `{db}` is the database.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[(
    1,
    "message_events",
    "CREATE TABLE IF NOT EXISTS {db}.message_events (
        event_id String,
        org String,
        phone_number_id String,
        conversation_id String,
        contact_wa_id String,
        kind String,
        wamid String,
        direction String,
        origin String,
        message_type String,
        status String,
        error_code Int32,
        event_time DateTime,
        received_at DateTime,
        received_ms UInt16,
        event_date Date DEFAULT toDate(event_time)
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_date)
    ORDER BY (org, phone_number_id, event_id)",
)];

pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime
) ENGINE = ReplacingMergeTree() ORDER BY version";
