//! Reading a topic whole, without a consumer group: how a processor rebuilds its
//! state from its own outputs at start, and how presence is kept as a table (every
//! instance reads all of `agents.presence`, DESIGN.md).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runtime::KafkaConfig;

/// `(partition, offset)` pairs: where a topic ended when it was read.
pub type PartitionEnds = Vec<(i32, i64)>;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A group-less reader (the group id only names the client; nothing is committed).
fn reader<C: Consumer + rdkafka::config::FromClientConfig>(
    kafka: &KafkaConfig,
    purpose: &str,
) -> anyhow::Result<C> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("{}-{purpose}", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()?)
}

/// Every value of `topic` from the start to its end as of now, and where it ended.
/// Blocking: call it from `spawn_blocking`.
pub fn read_whole(
    kafka: &KafkaConfig,
    topic: &str,
    purpose: &str,
) -> anyhow::Result<(Vec<Vec<u8>>, PartitionEnds)> {
    let consumer: BaseConsumer = reader(kafka, purpose)?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    let mut ends = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
        ends.push((partition.id(), high));
        if low < high {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            remaining.insert(partition.id(), high);
        }
    }
    let mut values = Vec::new();
    if remaining.is_empty() {
        return Ok((values, ends));
    }
    consumer.assign(&assignment)?;
    while !remaining.is_empty() {
        let message = consumer
            .poll(TIMEOUT)
            .ok_or_else(|| anyhow::anyhow!("{topic} stopped answering"))??;
        values.push(message.payload().unwrap_or_default().to_vec());
        if remaining
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&message.partition());
        }
    }
    Ok((values, ends))
}

/// A live reader of every partition of `topic` from `from` on.
pub fn stream_from(
    kafka: &KafkaConfig,
    topic: &str,
    from: &PartitionEnds,
    purpose: &str,
) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = reader(kafka, purpose)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in from {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}
