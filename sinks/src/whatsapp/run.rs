//! The whatsapp sink's wiring: the Graph client, the ledger and window book rebuilt
//! from Kafka (and again when a partition is gained), then its loop.

use events::topics;
use runtime::{RetryPolicy, RoleContext};

use super::{WhatsAppConfig, WhatsAppSink};
use crate::graph::GraphConfig;

/// What the whatsapp sink reads.
pub const TOPICS: &[&str] = &[topics::MESSAGES_OUTBOUND, topics::WHATSAPP_EVENTS];

/// Runs the sink until shutdown.
pub async fn run(
    ctx: &RoleContext,
    graph: &GraphConfig,
    config: &WhatsAppConfig,
) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let graph = crate::graph::following_directory(ctx, graph).await?;
    let rebuilt = RetryPolicy::default()
        .until_ok("rebuilding the whatsapp sink", &ctx.shutdown, || {
            let (kafka, config) = (ctx.kafka.clone(), config.clone());
            async move {
                tokio::task::spawn_blocking(move || super::rebuild(&kafka, &config))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|rebuilt| rebuilt)
            }
        })
        .await;
    let Some(state) = rebuilt else {
        return Ok(());
    };
    let s3 = (ctx.s3.client(), ctx.s3.bucket.clone());
    let sink = WhatsAppSink::new(graph, config.clone(), publisher.clone(), Some(s3), state)
        .rebuild_on_new_partitions(ctx.kafka.clone());
    ctx.consume(&publisher, TOPICS, sink, ctx.batch.clone())
        .await
}
