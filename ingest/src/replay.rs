//! `coexist replay`: re-reads raw webhooks from `whatsapp.webhooks.raw` and runs them
//! through normalization again. This is how a parser fix (or a new org mapping)
//! reaches old data: the events come out with the same deterministic ids, so sinks
//! update what they have instead of duplicating it.

use std::time::Duration;

use events::{Webhook, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use runtime::consume::{DeadLetter, DeadLetters};
use runtime::table::{From, Reader};
use runtime::{KafkaConfig, Publisher};

use crate::webhook::{publish_normalized, raw_headers};

/// Which part of the raw topic to replay. Times are ms since the epoch.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Start at this offset in every partition (overrides `from_ms`).
    pub from_offset: Option<i64>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub records: u64,
    pub events: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may say nothing while a replay still has records to read.
const QUIET: Duration = Duration::from_secs(30);

/// What to read of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub partition: i32,
    pub start: i64,
    /// Exclusive end from `to_ms`; `None` reads to the end of the partition as found
    /// while reading (end-of-partition), not as a watermark fetched beforehand said:
    /// on a fresh topic tansu's answer can lag what a fetch returns.
    pub end: Option<i64>,
    /// The high watermark when planned: only for progress.
    pub estimated_end: i64,
}

impl Span {
    /// Records this span is expected to hold.
    pub fn estimated_len(&self) -> u64 {
        (self.end.unwrap_or(self.estimated_end) - self.start).max(0) as u64
    }
}

/// The spans to read, one per partition with something to read.
pub fn plan(kafka: &KafkaConfig, range: &Range) -> anyhow::Result<Vec<Span>> {
    let consumer = reader(kafka)?;
    let metadata = consumer.fetch_metadata(Some(topics::WEBHOOKS_RAW), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let at_time = |ms: i64| -> anyhow::Result<Vec<i64>> {
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition_offset(topics::WEBHOOKS_RAW, *p, Offset::Offset(ms))?;
        }
        let found = consumer.offsets_for_times(list, TIMEOUT)?;
        Ok(partitions
            .iter()
            .map(|p| {
                match found
                    .find_partition(topics::WEBHOOKS_RAW, *p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => i64::MAX, // no record at or after that time
                }
            })
            .collect())
    };
    let starts = match (range.from_offset, range.from_ms) {
        (Some(offset), _) => vec![offset; partitions.len()],
        (None, Some(ms)) => at_time(ms)?,
        (None, None) => vec![0; partitions.len()],
    };
    let ends = range.to_ms.map(at_time).transpose()?;
    let mut plan = Vec::new();
    for (i, partition) in partitions.iter().enumerate() {
        let (low, high) = consumer.fetch_watermarks(topics::WEBHOOKS_RAW, *partition, TIMEOUT)?;
        if starts[i] == i64::MAX {
            continue; // nothing at or after from_ms
        }
        let start = starts[i].max(low);
        // `to_ms` past the last record gives no offset: then read to the end.
        let end = ends.as_ref().map(|e| e[i]).filter(|e| *e != i64::MAX);
        if end.is_none_or(|end| start < end) {
            plan.push(Span {
                partition: *partition,
                start,
                end,
                estimated_end: high,
            });
        }
    }
    Ok(plan)
}

/// Replays the planned offsets, calling `progress(done, total)` as it goes.
///
/// A body that named a number no org owned when it arrived (raw header
/// `coexist.owner: unknown`) had its signature checked only against the secrets
/// known then; now that its number may be owned, the stored signature is checked
/// against that number's own secret, and a body it does not speak for goes to
/// `deadletter` (`invalid_signature`) instead of into the pipeline.
pub async fn run(
    kafka: &KafkaConfig,
    publisher: &Publisher,
    orgs: &crate::owners::Owners,
    plan: &[Span],
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let total: u64 = plan.iter().map(Span::estimated_len).sum();
    let mut summary = Summary::default();
    if plan.is_empty() {
        return Ok(summary);
    }
    let dead_letters = DeadLetters::new(publisher.clone(), "replay");
    let spans = plan.iter().map(|s| (s.partition, s.start, s.end)).collect();
    let mut reader = Reader::open(
        kafka,
        topics::WEBHOOKS_RAW,
        "replay",
        From::Spans(spans),
        None,
    )?;
    while let Some(record) = reader.next(QUIET)? {
        let (partition, offset) = (record.partition, record.offset);
        let body = record.value.as_slice();
        let key = record.key_str().to_string();
        let received_at_ms = record
            .header(raw_headers::RECEIVED_AT_MS)
            .and_then(|v| v.parse().ok())
            .or(record.timestamp_ms)
            .unwrap_or_default();
        let header = |name: &str| record.header(name).map(str::to_string);
        let was_unowned = header(raw_headers::OWNER).as_deref() == Some("unknown");
        let signature = header(raw_headers::SIGNATURE);
        let dead_letter = |reason: String, code: &'static str| DeadLetter {
            key: &key,
            value: body.to_vec(),
            reason,
            source: topics::WEBHOOKS_RAW.into(),
            position: Some((partition, offset)),
            extra: vec![("coexist.reason", code.into())],
        };
        match serde_json::from_slice::<Webhook>(events::codec::json_part(body)) {
            Ok(webhook)
                if was_unowned
                    && orgs
                        .authorize(signature.as_deref(), body, &webhook)
                        .is_err() =>
            {
                let reason = "invalid_signature: not signed by the app secret of the number that now owns it";
                dead_letters
                    .send_letter(dead_letter(reason.into(), "invalid_signature"))
                    .await?;
                summary.dead_lettered += 1;
            }
            Ok(webhook) => {
                let (events, rejected) =
                    publish_normalized(publisher, orgs, &webhook, received_at_ms, &key).await?;
                summary.events += events as u64;
                summary.rejected += rejected as u64;
            }
            Err(err) => {
                let reason = format!("not a WhatsApp webhook: {err}");
                dead_letters
                    .send_letter(dead_letter(reason, "malformed_body"))
                    .await?;
                summary.dead_lettered += 1;
            }
        }
        summary.records += 1;
        progress(summary.records, total);
    }
    Ok(summary)
}

/// A group-less reader: a replay must not move any consumer group's offsets.
fn reader(kafka: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    Ok(runtime::table::reader_config(kafka, "replay").create()?)
}
