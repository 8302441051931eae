//! The mqtt sink's wiring: who owns each conversation (rebuilt from
//! `conversations.assignments`, so new messages reach the owner's inbox), then its
//! loop.

use events::inbox::AssignmentEvent;
use events::topics;
use runtime::RoleContext;

use super::{MqttConfig, MqttSink};

/// What the mqtt sink reads.
pub const TOPICS: &[&str] = &[
    topics::WHATSAPP_EVENTS,
    topics::CONVERSATION_ASSIGNMENTS,
    // Statuses reach devices from here, forward only.
    topics::MESSAGES_STATUS,
    topics::OUTBOUND_RESULTS,
];

/// Runs the sink until shutdown.
pub async fn run(ctx: &RoleContext, config: &MqttConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let mut sink = MqttSink::new(&ctx.mqtt, config.clone());
    let Some((assignments, _)) = runtime::table::read_until_ok(
        &ctx.kafka,
        topics::CONVERSATION_ASSIGNMENTS,
        None,
        "sink-mqtt-owners",
        &ctx.shutdown,
    )
    .await
    else {
        return Ok(());
    };
    for (_, value) in &assignments {
        if let Ok(assignment) = events::codec::decode::<AssignmentEvent>(value) {
            sink.remember(&assignment);
        }
    }
    tracing::info!(
        owned = sink.owned_conversations(),
        "mqtt sink rebuilt conversation owners"
    );
    let batching = config.batching(&ctx.batch);
    ctx.consume(&publisher, TOPICS, sink, batching).await
}
