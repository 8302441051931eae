//! Reading a topic as a table, without a consumer group: the whole topic (or some of
//! its partitions) up to its end as of now, then, if asked, live from there. How a
//! processor rebuilds its state from its own outputs at start, how presence is kept
//! (every router reads all of `agents.presence`), and how every role follows the
//! directory (`directory.changes`, DESIGN.md). One reader for all of them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use events::inbox::PresenceEvent;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;

use crate::KafkaConfig;
use crate::kafka::EndIsNews;
use crate::retry::RetryPolicy;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `(partition, offset)` pairs: where a topic ended when it was read.
pub type PartitionEnds = Vec<(i32, i64)>;

/// Values read from a topic, each with its partition.
pub type PartitionedValues = Vec<(i32, Vec<u8>)>;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a group-less reader (the group id only names the client; nothing is
/// committed).
fn reader_config(kafka: &KafkaConfig, purpose: &str) -> ClientConfig {
    let mut config = kafka.client();
    config
        .set("group.id", format!("{}-{purpose}", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    config
}

/// Every value of `topic` from the start to its end as of now, and where it ended.
/// "The end" is where librdkafka reports end-of-partition for every partition, not a
/// watermark fetched beforehand: on a freshly created topic tansu's ListOffsets
/// answer could lag what a fetch returns, and a rebuild then missed records.
/// Blocking: call it from `spawn_blocking`.
pub fn read_whole(
    kafka: &KafkaConfig,
    topic: &str,
    purpose: &str,
) -> anyhow::Result<(Vec<Vec<u8>>, PartitionEnds)> {
    let (values, ends) = read_partitions(kafka, topic, None, purpose)?;
    Ok((values.into_iter().map(|(_, v)| v).collect(), ends))
}

/// Like [`read_whole`], for the partitions in `only` (all when `None`), with the
/// partition of each value: how a processor rebuilds the state of partitions it
/// has just been given.
pub fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<&BTreeSet<i32>>,
    purpose: &str,
) -> anyhow::Result<(PartitionedValues, PartitionEnds)> {
    let (records, ends) = read_records(kafka, topic, only, purpose)?;
    Ok((
        records
            .into_iter()
            .map(|r| (r.partition, r.value))
            .collect(),
        ends,
    ))
}

/// [`read_partitions`] off the async runtime, retried with the one policy until the
/// broker answers: a broker that is down when a role starts, or when it gains a
/// partition, delays the role; it does not end it. `None` only at shutdown.
pub async fn read_until_ok(
    kafka: &KafkaConfig,
    topic: &'static str,
    only: Option<BTreeSet<i32>>,
    purpose: &str,
    shutdown: &CancellationToken,
) -> Option<(PartitionedValues, PartitionEnds)> {
    let what = format!("reading {topic} ({purpose})");
    RetryPolicy::default()
        .until_ok(&what, shutdown, || {
            let (kafka, only, purpose) = (kafka.clone(), only.clone(), purpose.to_string());
            async move {
                tokio::task::spawn_blocking(move || {
                    read_partitions(&kafka, topic, only.as_ref(), &purpose)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|read| read)
            }
        })
        .await
}

/// One record of a table, with where it sits in the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRecord<T> {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub value: T,
}

/// Like [`read_partitions`], with each record's offset and timestamp.
pub fn read_records(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<&BTreeSet<i32>>,
    purpose: &str,
) -> anyhow::Result<(Vec<TableRecord<Vec<u8>>>, PartitionEnds)> {
    let consumer: BaseConsumer<EndIsNews> = reader_config(kafka, purpose)
        .set("enable.partition.eof", "true")
        .create_with_context(EndIsNews)?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        if only.is_some_and(|only| !only.contains(&partition.id())) {
            continue;
        }
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        next.insert(partition.id(), 0);
    }
    let mut values = Vec::new();
    if next.is_empty() {
        return Ok((values, Vec::new()));
    }
    consumer.assign(&assignment)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    while at_end.len() < next.len() {
        match consumer.poll(TIMEOUT) {
            None => anyhow::bail!("{topic} stopped answering"),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(message)) => {
                values.push(TableRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
                    value: message.payload().unwrap_or_default().to_vec(),
                });
                next.insert(message.partition(), message.offset() + 1);
                at_end.remove(&message.partition());
            }
        }
    }
    let mut ends: PartitionEnds = next.into_iter().collect();
    ends.sort_unstable();
    Ok((values, ends))
}

/// A live reader of every partition of `topic` from `from` on.
pub fn stream_from(
    kafka: &KafkaConfig,
    topic: &str,
    from: &PartitionEnds,
    purpose: &str,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = reader_config(kafka, purpose).create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in from {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// A table's records as they happen, decoded, from `from` on, for a loop to select
/// on next to its own inputs. Records that do not decode are skipped (the table's
/// writers are ours and validated; a stray record must not stop a role), and a
/// broker error is retried: a follower never ends on a transient error.
pub fn follow<T>(
    kafka: &KafkaConfig,
    topic: &'static str,
    from: &PartitionEnds,
    purpose: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(mpsc::Receiver<TableRecord<T>>, JoinHandle<()>)>
where
    T: DeserializeOwned + Send + 'static,
{
    let consumer = stream_from(kafka, topic, from, purpose)?;
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut backoff = RetryPolicy::default().backoff();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%err, topic, retry_in_ms = delay.as_millis() as u64,
                        "table reader: broker error; retrying");
                    if !backoff.sleep(delay, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let Ok(value) = events::codec::decode::<T>(message.payload().unwrap_or_default())
            else {
                tracing::warn!(
                    topic,
                    offset = message.offset(),
                    "table reader: record skipped: does not decode"
                );
                continue;
            };
            let record = TableRecord {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
                value,
            };
            if tx.send(record).await.is_err() {
                return;
            }
        }
    });
    Ok((rx, task))
}

/// Presence as it happens: decoded `agents.presence` events from `from` on.
pub fn presence_feed(
    kafka: &KafkaConfig,
    from: &PartitionEnds,
    purpose: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(mpsc::Receiver<PresenceEvent>, JoinHandle<()>)> {
    let (mut records, task) = follow::<PresenceEvent>(
        kafka,
        events::topics::AGENTS_PRESENCE,
        from,
        purpose,
        shutdown,
    )?;
    let (tx, rx) = mpsc::channel(1024);
    let forward = tokio::spawn(async move {
        while let Some(record) = records.recv().await {
            if tx.send(record.value).await.is_err() {
                break;
            }
        }
        task.abort();
    });
    Ok((rx, forward))
}
