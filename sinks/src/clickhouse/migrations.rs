//! Schema migrations, run at start. Each is idempotent DDL that ClickHouse 18.16 (the
//! local stack) and current ClickHouse both accept: `DateTime` plus a separate
//! millisecond column instead of `DateTime64`, no `LowCardinality`, no
//! `SimpleAggregateFunction`, materialized views written `TO` an explicit table.
//!
//! Deduplication by event id: base tables are `ReplacingMergeTree` ordered by
//! `(org, phone_number_id, event_id)`, so repeats collapse at merge time (and `FINAL`
//! collapses them at query time); the sink also skips ids already present before
//! inserting and dedupes within a batch, so a repeat never lands at all. That
//! pre-insert check is what keeps the summing and quantile views exact: a
//! materialized view sees every inserted block, so a row inserted twice would be
//! counted twice. Panels over base tables count distinct event ids, so they stay
//! exact even if a duplicate slipped past the check.
//!
//! Views only see rows inserted after they exist (no `POPULATE`, which would race
//! with the sink): on a database that already holds data, rebuild by replaying.

/// `(version, name, statement)`, applied in order; `{db}` is the database.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
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
    ),
    (
        2,
        "status_transitions",
        // One row per step a message's status moved forward (`messages.status`), with
        // when the message reached the step it left (`from_time`) and the template it
        // was sent with (`template_name`), both filled by the sink (0 / '' when
        // unknown), so a latency or a template's funnel step is one row, not a join.
        "CREATE TABLE IF NOT EXISTS {db}.status_transitions (
        event_id String,
        org String,
        phone_number_id String,
        conversation_id String,
        wamid String,
        from_status String,
        to_status String,
        error_code Int32,
        error_title String,
        event_time DateTime,
        from_time DateTime,
        template_name String,
        event_date Date DEFAULT toDate(event_time)
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_date)
    ORDER BY (org, phone_number_id, event_id)",
    ),
    (
        3,
        "assignments",
        // Who owns each conversation after every change (`conversations.assignments`).
        "CREATE TABLE IF NOT EXISTS {db}.assignments (
        event_id String,
        org String,
        phone_number_id String,
        conversation_id String,
        state String,
        assignee String,
        command_id String,
        issued_by String,
        rejected String,
        event_time DateTime,
        event_ms UInt16,
        event_date Date DEFAULT toDate(event_time)
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_date)
    ORDER BY (org, phone_number_id, event_id)",
    ),
    (
        4,
        "outbound_messages",
        // Our sends (`messages.outbound`, kind `message`: who sent what template) and
        // the Graph API's answers (`messages.outbound.results`, kind `result`: the
        // wamid or the error), joined on `outbound_id`.
        "CREATE TABLE IF NOT EXISTS {db}.outbound_messages (
        event_id String,
        kind String,
        org String,
        phone_number_id String,
        conversation_id String,
        outbound_id String,
        sent_by String,
        message_type String,
        template_name String,
        wamid String,
        error_code Int32,
        error_title String,
        event_time DateTime,
        event_ms UInt16,
        event_date Date DEFAULT toDate(event_time)
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_date)
    ORDER BY (org, phone_number_id, event_id)",
    ),
    (
        5,
        "delivery_daily",
        // The funnel per number, day and template: sends attempted (from
        // `outbound_messages`), then how many messages crossed each step. A
        // transition from F to T crosses every step after F up to T (statuses skip
        // steps when Meta reports read before delivered); `accepted` is the first
        // transition of a message Meta gave a wamid to.
        "CREATE TABLE IF NOT EXISTS {db}.delivery_daily (
        org String,
        phone_number_id String,
        day Date,
        template_name String,
        attempted UInt64,
        accepted UInt64,
        sent UInt64,
        delivered UInt64,
        read UInt64,
        failed UInt64
    ) ENGINE = SummingMergeTree()
    PARTITION BY toYYYYMM(day)
    ORDER BY (org, phone_number_id, day, template_name)",
    ),
    (
        6,
        "delivery_daily_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.delivery_daily_mv TO {db}.delivery_daily AS
    SELECT
        org,
        phone_number_id,
        toDate(event_time) AS day,
        template_name,
        toUInt64(0) AS attempted,
        sum(toUInt64(from_status = '' AND wamid NOT LIKE 'outbound:%')) AS accepted,
        sum(toUInt64(to_status != 'failed' AND indexOf(['accepted', 'sent', 'delivered', 'read'], from_status) < 2
            AND indexOf(['accepted', 'sent', 'delivered', 'read'], to_status) >= 2)) AS sent,
        sum(toUInt64(to_status != 'failed' AND indexOf(['accepted', 'sent', 'delivered', 'read'], from_status) < 3
            AND indexOf(['accepted', 'sent', 'delivered', 'read'], to_status) >= 3)) AS delivered,
        sum(toUInt64(to_status = 'read')) AS read,
        sum(toUInt64(to_status = 'failed')) AS failed
    FROM {db}.status_transitions
    GROUP BY org, phone_number_id, day, template_name",
    ),
    (
        9,
        "failures_daily",
        "CREATE TABLE IF NOT EXISTS {db}.failures_daily (
        org String,
        phone_number_id String,
        day Date,
        error_code Int32,
        error_title String,
        failures UInt64
    ) ENGINE = SummingMergeTree()
    PARTITION BY toYYYYMM(day)
    ORDER BY (org, phone_number_id, day, error_code, error_title)",
    ),
    (
        10,
        "failures_daily_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.failures_daily_mv TO {db}.failures_daily AS
    SELECT org, phone_number_id, toDate(event_time) AS day, error_code, error_title, count() AS failures
    FROM {db}.status_transitions
    WHERE to_status = 'failed'
    GROUP BY org, phone_number_id, day, error_code, error_title",
    ),
    (
        11,
        "replies",
        // Every reply to a customer, whoever sent it: API sends (by agent) and
        // Business-app echoes. Agent first-response times and the coexistence share
        // read this instead of two tables.
        "CREATE TABLE IF NOT EXISTS {db}.replies (
        event_id String,
        org String,
        phone_number_id String,
        conversation_id String,
        channel String,
        replier String,
        message_type String,
        event_time DateTime,
        event_ms UInt16,
        event_date Date DEFAULT toDate(event_time)
    ) ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(event_date)
    ORDER BY (org, phone_number_id, conversation_id, event_id)",
    ),
    (
        12,
        "replies_api_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.replies_api_mv TO {db}.replies AS
    SELECT event_id, org, phone_number_id, conversation_id, 'api' AS channel, sent_by AS replier,
        message_type, event_time, event_ms, event_date
    FROM {db}.outbound_messages
    WHERE kind = 'message'",
    ),
    (
        13,
        "replies_business_app_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.replies_business_app_mv TO {db}.replies AS
    SELECT event_id, org, phone_number_id, conversation_id, 'business_app' AS channel,
        'business_app' AS replier, message_type, event_time, toUInt16(0) AS event_ms, event_date
    FROM {db}.message_events
    WHERE kind = 'message' AND origin = 'business_app'",
    ),
    (
        14,
        "agent_daily",
        // Load: conversations handed to each assignee per number and day.
        "CREATE TABLE IF NOT EXISTS {db}.agent_daily (
        org String,
        phone_number_id String,
        day Date,
        assignee String,
        assigned UInt64
    ) ENGINE = SummingMergeTree()
    PARTITION BY toYYYYMM(day)
    ORDER BY (org, phone_number_id, day, assignee)",
    ),
    (
        15,
        "agent_daily_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.agent_daily_mv TO {db}.agent_daily AS
    SELECT org, phone_number_id, toDate(event_time) AS day, assignee, count() AS assigned
    FROM {db}.assignments
    WHERE state = 'assigned' AND rejected = ''
    GROUP BY org, phone_number_id, day, assignee",
    ),
    (
        16,
        "latency_daily",
        // Sent→delivered and delivered→read per number and day, as mergeable
        // quantile states: the latency panel merges a few states per day instead of
        // pairing millions of messages. `quantileTiming` keeps seconds exactly below
        // 1024 s, in 16 s steps up to 30000 s, and caps longer waits at 30000 s.
        "CREATE TABLE IF NOT EXISTS {db}.latency_daily (
        org String,
        phone_number_id String,
        day Date,
        delivered_pairs AggregateFunction(countIf, UInt8),
        sent_to_delivered AggregateFunction(quantilesTimingIf(0.5, 0.9, 0.99), UInt64, UInt8),
        read_pairs AggregateFunction(countIf, UInt8),
        delivered_to_read AggregateFunction(quantilesTimingIf(0.5, 0.9, 0.99), UInt64, UInt8)
    ) ENGINE = AggregatingMergeTree()
    PARTITION BY toYYYYMM(day)
    ORDER BY (org, phone_number_id, day)",
    ),
    (
        17,
        "latency_daily_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.latency_daily_mv TO {db}.latency_daily AS
    SELECT
        org,
        phone_number_id,
        toDate(event_time) AS day,
        countIfState(toUInt8(from_status = 'sent' AND to_status = 'delivered' AND from_time > 0
            AND event_time >= from_time)) AS delivered_pairs,
        quantilesTimingIfState(0.5, 0.9, 0.99)(toUInt64(toInt64(event_time) - toInt64(from_time)),
            toUInt8(from_status = 'sent' AND to_status = 'delivered' AND from_time > 0
            AND event_time >= from_time)) AS sent_to_delivered,
        countIfState(toUInt8(from_status = 'delivered' AND to_status = 'read' AND from_time > 0
            AND event_time >= from_time)) AS read_pairs,
        quantilesTimingIfState(0.5, 0.9, 0.99)(toUInt64(toInt64(event_time) - toInt64(from_time)),
            toUInt8(from_status = 'delivered' AND to_status = 'read' AND from_time > 0
            AND event_time >= from_time)) AS delivered_to_read
    FROM {db}.status_transitions
    GROUP BY org, phone_number_id, day",
    ),
    (
        18,
        "delivery_daily_sends_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.delivery_daily_sends_mv TO {db}.delivery_daily AS
    SELECT org, phone_number_id, toDate(event_time) AS day, template_name, count() AS attempted,
        toUInt64(0) AS accepted, toUInt64(0) AS sent, toUInt64(0) AS delivered, toUInt64(0) AS read,
        toUInt64(0) AS failed
    FROM {db}.outbound_messages
    WHERE kind = 'message'
    GROUP BY org, phone_number_id, day, template_name",
    ),
    (
        19,
        "sent_wamids",
        // The template each wamid was sent with, ordered by wamid so the sink finds a
        // status's template by the sort key. Filled from the Graph API's answers,
        // which the sink labels with their send's template.
        "CREATE TABLE IF NOT EXISTS {db}.sent_wamids (
        org String,
        phone_number_id String,
        wamid String,
        template_name String
    ) ENGINE = ReplacingMergeTree()
    ORDER BY (org, phone_number_id, wamid)",
    ),
    (
        20,
        "sent_wamids_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sent_wamids_mv TO {db}.sent_wamids AS
    SELECT org, phone_number_id, wamid, template_name
    FROM {db}.outbound_messages
    WHERE kind = 'result' AND wamid != ''",
    ),
];

pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime
) ENGINE = ReplacingMergeTree() ORDER BY version";
