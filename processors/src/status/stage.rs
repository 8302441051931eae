//! The status processor's Kafka edge: `whatsapp.events` and
//! `messages.outbound.results` in, `messages.status` out. At start the tracker is
//! rebuilt from `messages.status` itself, so a restart neither forgets nor repeats.

use std::time::Duration;

use events::delivery::{OutboundResult, StatusTransition};
use events::{WhatsAppEvent, codec, topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runtime::{KafkaConfig, Publisher, Record, Reject, Stage};

use super::{StatusInput, StatusTracker};

pub struct StatusStage {
    tracker: StatusTracker,
    publisher: Publisher,
}

impl StatusStage {
    pub fn new(tracker: StatusTracker, publisher: Publisher) -> Self {
        Self { tracker, publisher }
    }
}

impl Stage for StatusStage {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let mut rejects = Vec::new();
        let mut transitions = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let decoded = match record.topic.as_str() {
                topics::WHATSAPP_EVENTS => codec::decode::<WhatsAppEvent>(&record.value)
                    .map(|e| self.tracker.handle(StatusInput::Event(&e))),
                topics::OUTBOUND_RESULTS => codec::decode::<OutboundResult>(&record.value)
                    .map(|r| self.tracker.handle(StatusInput::OutboundResult(&r))),
                other => {
                    rejects.push(Reject {
                        index,
                        reason: format!("status does not read {other}"),
                    });
                    continue;
                }
            };
            match decoded {
                Ok(transition) => transitions.extend(transition),
                Err(err) => rejects.push(Reject {
                    index,
                    reason: format!("undecodable: {err}"),
                }),
            }
        }
        let sends = transitions.iter().map(|t| {
            self.publisher
                .send_json(topics::MESSAGES_STATUS, &t.phone_number_id, t, vec![])
        });
        if let Err(err) = futures::future::try_join_all(sends).await {
            self.tracker.rewind(&transitions);
            return Err(err.into());
        }
        Ok(rejects)
    }
}

/// Reads `messages.status` from the start to its current end into a tracker.
pub fn rebuild(kafka: &KafkaConfig, capacity: usize) -> anyhow::Result<StatusTracker> {
    let mut tracker = StatusTracker::new(capacity);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("{}-status-rebuild", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topics::MESSAGES_STATUS), timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topics::MESSAGES_STATUS, partition.id(), timeout)?;
        if low < high {
            assignment.add_partition_offset(
                topics::MESSAGES_STATUS,
                partition.id(),
                Offset::Offset(low),
            )?;
            remaining.insert(partition.id(), high);
        }
    }
    if remaining.is_empty() {
        return Ok(tracker);
    }
    consumer.assign(&assignment)?;
    let mut replayed = 0u64;
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(timeout) else {
            anyhow::bail!("messages.status stopped answering during the rebuild");
        };
        let message = message?;
        if let Ok(transition) =
            codec::decode::<StatusTransition>(message.payload().unwrap_or_default())
        {
            tracker.handle(StatusInput::Replayed(&transition));
            replayed += 1;
        }
        if remaining
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            remaining.remove(&message.partition());
        }
    }
    tracing::info!(
        transitions = replayed,
        "status tracker rebuilt from messages.status"
    );
    Ok(tracker)
}
