//! Reading a topic as a table, without a consumer group: the whole topic (or some of
//! its partitions) up to its end as of now, then, if asked, live from there. How a
//! processor rebuilds its state from its own outputs at start, how presence is kept
//! (every router reads all of `agents.presence`), and how every role follows the
//! directory (`directory.changes`, DESIGN.md). One reader for all of them.

use std::collections::{BTreeSet, HashMap};
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
/// committed). Tables (the directory, presence) change seldom and are not on the
/// path of a message to a device, so a follower waits the long fetch wait
/// (`kafka.background_fetch_wait_max_ms`), which makes it cheap for the broker at
/// rest.
pub fn reader_config(kafka: &KafkaConfig, purpose: &str) -> ClientConfig {
    let mut config = kafka.client();
    config
        .set("group.id", format!("{}-{purpose}", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set(
            "fetch.wait.max.ms",
            kafka.background_fetch_wait_max_ms.to_string(),
        )
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
    let mut reader = Reader::open(kafka, topic, purpose, From::Beginning, only)?;
    let mut values = Vec::new();
    while let Some(record) = reader.next(TIMEOUT)? {
        values.push(TableRecord {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms.unwrap_or_default(),
            value: record.value,
        });
    }
    Ok((values, reader.ends()))
}

/// Where a [`Reader`] starts in each partition.
#[derive(Debug, Clone)]
pub enum From {
    /// The oldest record kept.
    Beginning,
    /// The first record at or after this time (ms); the start where the broker
    /// cannot say (slower, never wrong).
    Time(i64),
    /// These offsets, each partition up to its end offset (exclusive), or to the end
    /// of the partition as of the read when `None`. Partitions not named are not read.
    Spans(Vec<(i32, i64, Option<i64>)>),
}

/// A group-less reader of a topic up to its end: the one way every role reads a
/// topic without a consumer group (rebuilds, tables, the whatsapp sink's ledger,
/// replay). "The end" is where librdkafka reports end-of-partition, not a watermark
/// fetched beforehand: on a freshly created topic tansu's ListOffsets answer could
/// lag what a fetch returns, and a rebuild then missed records. Blocking.
pub struct Reader {
    consumer: BaseConsumer<EndIsNews>,
    topic: String,
    /// Partitions not yet at their end, with their end offset if they have one.
    open: HashMap<i32, Option<i64>>,
    /// The next offset of every partition read.
    next: HashMap<i32, i64>,
}

impl Reader {
    /// Opens `topic` (the partitions in `only`, all when `None`) from `from`.
    pub fn open(
        kafka: &KafkaConfig,
        topic: &str,
        purpose: &str,
        from: From,
        only: Option<&BTreeSet<i32>>,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<EndIsNews> = reader_config(kafka, purpose)
            .set("enable.partition.eof", "true")
            .create_with_context(EndIsNews)?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.id())
            .filter(|p| only.is_none_or(|only| only.contains(p)))
            .collect();
        let mut starts: Vec<(i32, Offset, Option<i64>)> = match &from {
            From::Spans(spans) => spans
                .iter()
                .filter(|(p, _, _)| partitions.contains(p))
                .map(|&(p, start, end)| (p, Offset::Offset(start), end))
                .collect(),
            _ => partitions
                .iter()
                .map(|&p| (p, Offset::Beginning, None))
                .collect(),
        };
        if let From::Time(since) = from
            && !starts.is_empty()
        {
            let mut times = TopicPartitionList::new();
            for (p, _, _) in &starts {
                times.add_partition_offset(topic, *p, Offset::Offset(since))?;
            }
            if let Ok(found) = consumer.offsets_for_times(times, TIMEOUT) {
                for element in found.elements() {
                    if let (Offset::Offset(o), Some(start)) = (
                        element.offset(),
                        starts
                            .iter_mut()
                            .find(|(p, _, _)| *p == element.partition()),
                    ) {
                        start.1 = Offset::Offset(o);
                    }
                }
            }
        }
        starts.retain(|(_, start, end)| match (start, end) {
            (Offset::Offset(start), Some(end)) => start < end,
            _ => true,
        });
        let mut assignment = TopicPartitionList::new();
        for (p, start, _) in &starts {
            assignment.add_partition_offset(topic, *p, *start)?;
        }
        if !starts.is_empty() {
            consumer.assign(&assignment)?;
        }
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            open: starts.iter().map(|&(p, _, end)| (p, end)).collect(),
            next: starts.iter().map(|&(p, _, _)| (p, 0)).collect(),
        })
    }

    /// The next record, `None` once every partition is at its end. Waits at most
    /// `quiet` for the broker to say anything, then fails.
    pub fn next(&mut self, quiet: Duration) -> anyhow::Result<Option<crate::Record>> {
        while !self.open.is_empty() {
            match self.consumer.poll(quiet) {
                None => anyhow::bail!("{} stopped answering", self.topic),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                    // At the end of the partition as of now; one with an end offset
                    // not reached yet (records deleted since) is done too.
                    self.open.remove(&partition);
                }
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let Some(end) = self.open.get(&partition).copied() else {
                        continue;
                    };
                    if end.is_some_and(|end| message.offset() >= end) {
                        self.open.remove(&partition);
                        continue;
                    }
                    if end.is_some_and(|end| message.offset() + 1 >= end) {
                        self.open.remove(&partition);
                    }
                    self.next.insert(partition, message.offset() + 1);
                    return Ok(Some(crate::Record::from_message(&message)));
                }
            }
        }
        Ok(None)
    }

    /// Where each partition read ended: the offset after its last record read.
    pub fn ends(&self) -> PartitionEnds {
        let mut ends: PartitionEnds = self.next.iter().map(|(p, o)| (*p, *o)).collect();
        ends.sort_unstable();
        ends
    }
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
