//! The mongo sink's wiring: its input topics and its readiness check.

use events::topics;
use runtime::RoleContext;

use super::{MongoConfig, MongoSink};

/// What the mongo sink reads.
pub const TOPICS: &[&str] = &[
    topics::WHATSAPP_EVENTS,
    topics::CONVERSATION_ASSIGNMENTS,
    topics::MESSAGES_OUTBOUND,
    topics::OUTBOUND_RESULTS,
    topics::MEDIA_STORED,
    topics::DIRECTORY_CHANGES,
];

/// Runs the sink until shutdown; readiness check `{role}.mongodb` until connected.
pub async fn run(ctx: &RoleContext, config: &MongoConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let Some(db) = ctx.until_ready("mongodb", || super::connect(config)).await else {
        return Ok(());
    };
    let batching = config.batching(&ctx.batch);
    ctx.consume(&publisher, TOPICS, MongoSink::new(db), batching)
        .await
}
