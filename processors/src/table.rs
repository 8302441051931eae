//! Reading a topic whole, without a consumer group: how a processor rebuilds its
//! state from its own outputs at start, and how presence is kept as a table (every
//! instance reads all of `agents.presence`, DESIGN.md).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use events::inbox::PresenceEvent;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runtime::KafkaConfig;
use runtime::kafka::EndIsNews;
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
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
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
                values.push((
                    message.partition(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
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

/// Presence as it happens: decoded `agents.presence` events from `from` on, for a
/// processor's loop to select on next to its own inputs.
pub fn presence_feed(
    kafka: &KafkaConfig,
    from: &PartitionEnds,
    purpose: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    mpsc::Receiver<PresenceEvent>,
    JoinHandle<anyhow::Result<()>>,
)> {
    let consumer = stream_from(kafka, events::topics::AGENTS_PRESENCE, from, purpose)?;
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => message?,
            };
            if let Ok(event) =
                events::codec::decode::<PresenceEvent>(message.payload().unwrap_or_default())
                && tx.send(event).await.is_err()
            {
                return Ok(());
            }
        }
    });
    Ok((rx, task))
}
