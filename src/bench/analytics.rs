//! `coexist bench analytics`: the heaviest dashboard panel over millions of status
//! rows, next to a plain `count()` over the same table in the same run.
//!
//! Rows are generated inside ClickHouse (`INSERT ... SELECT FROM numbers()`) into a
//! database of their own, through the same migrations and materialized views as
//! production, so the views are filled exactly as the sink's inserts fill them.
//! Every panel that reads status data is timed; the slowest is the heaviest.

use std::time::{Duration, Instant};

use anyhow::Context;
use api::analytics::{AnalyticsQuery, run_panel};

use crate::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct AnalyticsArgs {
    /// Status transitions to generate (three per message: sent, delivered, read or failed).
    #[arg(long, default_value_t = 10_000_000)]
    pub rows: u64,
    /// Timed runs per query; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Rows per INSERT.
    #[arg(long, default_value_t = 1_000_000)]
    pub chunk: u64,
    /// Keep the bench database afterwards (default: dropped).
    #[arg(long)]
    pub keep: bool,
    /// Also write an API send and its Graph API answer for every message, and time
    /// the per-template funnel, which joins them to the per-message view.
    #[arg(long)]
    pub sends: bool,
}

/// What the bench measured.
pub struct AnalyticsReport {
    pub status_rows: u64,
    pub insert: Duration,
    /// `(what, median)` for the baseline first, then each panel.
    pub timings: Vec<(String, Duration)>,
}

const ORG: &str = "bench";
/// Status times start here and advance one second per five messages.
const START: u64 = 1_700_000_000;

pub async fn run(config: Config, args: AnalyticsArgs) -> anyhow::Result<AnalyticsReport> {
    let mut ch = config.sinks.clickhouse.clone();
    ch.database = format!("{}_bench", ch.database);
    let client = ch.client();
    let server = client.clone().with_database("default");
    server
        .query(&format!("DROP DATABASE IF EXISTS {}", ch.database))
        .execute()
        .await
        .context("dropping the previous bench database")?;
    sinks::clickhouse::migrate(&ch).await?;

    let bar = indicatif::ProgressBar::new(args.rows);
    let started = Instant::now();
    let mut offset = 0;
    while offset < args.rows {
        let count = args.chunk.min(args.rows - offset);
        client.query(&insert_sql(offset, count)).execute().await?;
        offset += count;
        bar.set_position(offset);
    }
    if args.sends {
        let messages = args.rows / 3;
        let mut offset = 0;
        while offset < messages {
            let count = args.chunk.min(messages - offset);
            client.query(&sends_sql(offset, count)).execute().await?;
            offset += count;
        }
    }
    bar.finish_and_clear();
    let insert = started.elapsed();

    let status_rows = client
        .query("SELECT count() FROM status_transitions")
        .fetch_one::<u64>()
        .await?;

    let messages = args.rows / 3;
    let query = AnalyticsQuery {
        org: ORG.into(),
        phone_number_id: None,
        from_ms: START as i64 * 1000,
        to_ms: (START + messages / 5 + 86_400) as i64 * 1000,
    };
    let mut timings = Vec::new();
    let baseline = median(args.runs, || async {
        client
            .query("SELECT count() FROM status_transitions WHERE org = ?")
            .bind(ORG)
            .fetch_one::<u64>()
            .await
            .map(drop)
            .map_err(anyhow::Error::from)
    })
    .await?;
    timings.push((
        "baseline: SELECT count() over the status rows".into(),
        baseline,
    ));
    let mut panels = vec!["delivery_latency", "delivery_funnel", "failures_by_code"];
    if args.sends {
        panels.push("delivery_funnel_by_template");
    }
    for panel in panels {
        let time = median(args.runs, || async {
            run_panel(&client, panel, &query)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
        .await?;
        timings.push((format!("panel {panel}"), time));
    }
    if !args.keep {
        server
            .query(&format!("DROP DATABASE IF EXISTS {}", ch.database))
            .execute()
            .await?;
    }
    Ok(AnalyticsReport {
        status_rows,
        insert,
        timings,
    })
}

/// Rows `offset..offset+count`: row n is step `n % 3` of message `n / 3`, on one of
/// ten numbers. Sent→delivered takes 1–30 s, delivered→read 5–600 s; 2% fail
/// instead of being read. Each message carries the template [`sends_sql`] gives it.
fn insert_sql(offset: u64, count: u64) -> String {
    format!(
        "INSERT INTO status_transitions
            (event_id, org, phone_number_id, conversation_id, wamid, from_status, to_status,
             error_code, error_title, event_time, from_time, template_name)
        SELECT
            concat(wamid, ':', to_status), '{ORG}', toString(1000 + msg % 10),
            concat(toString(1000 + msg % 10), '-', toString(msg % 50000)), wamid,
            from_status, to_status,
            if(to_status = 'failed', 131026, 0), if(to_status = 'failed', 'Message undeliverable', ''),
            toDateTime([t0, t1, t2][step + 1]),
            toDateTime([0, t0, t1][step + 1]),
            ['order_update', 'shipping_notice'][msg % 2 + 1]
        FROM
        (
            SELECT
                intDiv(number, 3) AS msg,
                {START} + intDiv(msg, 5) AS t0,
                t0 + 1 + cityHash64(msg) % 30 AS t1,
                t1 + 5 + cityHash64(msg, 1) % 600 AS t2,
                number % 3 AS step,
                concat('wamid.bench.', toString(msg)) AS wamid,
                failed,
                [ '', 'sent', 'delivered' ][step + 1] AS from_status,
                [ 'sent', 'delivered', if(failed, 'failed', 'read') ][step + 1] AS to_status
            FROM
            (
                SELECT number, cityHash64(intDiv(number, 3), 7) % 100 < 2 AS failed
                FROM numbers({offset}, {count})
            )
        )"
    )
}

/// A send (`message`, with one of two templates) and its answer (`result`, with the
/// wamid of [`insert_sql`]'s message) for messages `offset..offset+count`.
fn sends_sql(offset: u64, count: u64) -> String {
    format!(
        "INSERT INTO outbound_messages
            (event_id, kind, org, phone_number_id, conversation_id, outbound_id, sent_by,
             message_type, template_name, wamid, error_code, error_title, event_time, event_ms)
        SELECT
            concat(kind, ':', outbound_id), kind, '{ORG}', toString(1000 + msg % 10),
            concat(toString(1000 + msg % 10), '-', toString(msg % 50000)), outbound_id,
            if(kind = 'message', 'agent', ''), if(kind = 'message', 'template', ''),
            if(kind = 'message', ['order_update', 'shipping_notice'][msg % 2 + 1], ''),
            if(kind = 'result', concat('wamid.bench.', toString(msg)), ''), 0, '',
            toDateTime({START} + intDiv(msg, 5)), 0
        FROM
        (
            SELECT number AS msg, concat('out.', toString(number)) AS outbound_id,
                arrayJoin(['message', 'result']) AS kind
            FROM numbers({offset}, {count})
        )"
    )
}

/// The median of `runs` timed calls (after one untimed warm-up).
async fn median<F, Fut>(runs: usize, mut call: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    call().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        call().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

pub fn report(r: &AnalyticsReport) -> String {
    let mut out = format!(
        "status_transitions: {} rows; inserted (through the views) in {:.1} s\n",
        r.status_rows,
        r.insert.as_secs_f64()
    );
    for (what, time) in &r.timings {
        out.push_str(&format!(
            "{what:<50} median {:>8.1} ms\n",
            time.as_secs_f64() * 1000.0
        ));
    }
    out
}
