//! The status processor's Kafka edge: `whatsapp.events` and
//! `messages.outbound.results` in, `messages.status` out. At start the tracker is
//! rebuilt from `messages.status` itself, so a restart neither forgets nor repeats.

use events::delivery::{OutboundResult, StatusTransition};
use events::{WhatsAppEvent, codec, topics};
use runtime::{Publisher, Record, Reject, RoleContext, Stage};

use super::{StatusConfig, StatusInput, StatusTracker};

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
        let tracker = &mut self.tracker;
        let (read, rejects) = runtime::read_batch(batch, |_, record| {
            Ok(match record.topic.as_str() {
                topics::WHATSAPP_EVENTS => {
                    let event = record.decode::<WhatsAppEvent>("a whatsapp event")?;
                    tracker.handle(StatusInput::Event(&event))
                }
                topics::OUTBOUND_RESULTS => {
                    let result = record.decode::<OutboundResult>("an outbound result")?;
                    tracker.handle(StatusInput::OutboundResult(&result))
                }
                _ => return Err(record.unread_topic("status")),
            })
        });
        let transitions: Vec<StatusTransition> = read.into_iter().filter_map(|(_, t)| t).collect();
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

/// What the status processor reads.
pub const TOPICS: &[&str] = &[topics::WHATSAPP_EVENTS, topics::OUTBOUND_RESULTS];

/// Runs the status processor until shutdown: the tracker rebuilt from
/// `messages.status` itself, then the loop over [`TOPICS`].
pub async fn run(ctx: &RoleContext, config: &StatusConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let Some((values, _)) = runtime::table::read_until_ok(
        &ctx.kafka,
        topics::MESSAGES_STATUS,
        None,
        "status-rebuild",
        &ctx.shutdown,
    )
    .await
    else {
        return Ok(());
    };
    let tracker = rebuild(config.capacity, values.iter().map(|(_, value)| value));
    let stage = StatusStage::new(tracker, publisher.clone());
    ctx.consume(&publisher, TOPICS, stage, ctx.batch.clone())
        .await
}

/// A tracker holding the transitions `messages.status` already has.
pub fn rebuild<'a>(capacity: usize, values: impl Iterator<Item = &'a Vec<u8>>) -> StatusTracker {
    let mut tracker = StatusTracker::new(capacity);
    let mut replayed = 0;
    for value in values {
        replayed += 1;
        if let Ok(transition) = codec::decode::<StatusTransition>(value) {
            tracker.handle(StatusInput::Replayed(&transition));
        }
    }
    tracing::info!(
        transitions = replayed,
        "status tracker rebuilt from messages.status"
    );
    tracker
}
