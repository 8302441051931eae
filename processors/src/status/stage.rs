//! The status processor's Kafka edge: `whatsapp.events` and
//! `messages.outbound.results` in, `messages.status` out. At start the tracker is
//! rebuilt from `messages.status` itself, so a restart neither forgets nor repeats.

use events::delivery::{OutboundResult, StatusTransition};
use events::{WhatsAppEvent, codec, topics};
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
/// Blocking: call it from `spawn_blocking`.
pub fn rebuild(kafka: &KafkaConfig, capacity: usize) -> anyhow::Result<StatusTracker> {
    let mut tracker = StatusTracker::new(capacity);
    let (values, _) = runtime::table::read_whole(kafka, topics::MESSAGES_STATUS, "status-rebuild")?;
    let replayed = values.len();
    for value in values {
        if let Ok(transition) = codec::decode::<StatusTransition>(&value) {
            tracker.handle(StatusInput::Replayed(&transition));
        }
    }
    tracing::info!(
        transitions = replayed,
        "status tracker rebuilt from messages.status"
    );
    Ok(tracker)
}
