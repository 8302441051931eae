//! The media sink's wiring: the Graph client, the bucket as its readiness check,
//! then its loop over `whatsapp.events`.

use events::topics;
use runtime::RoleContext;

use super::MediaSink;
use crate::graph::GraphConfig;

/// What the media sink reads.
pub const TOPICS: &[&str] = &[topics::WHATSAPP_EVENTS];

/// Runs the sink until shutdown; readiness check `{role}.s3` until the bucket is
/// there.
pub async fn run(ctx: &RoleContext, graph: &GraphConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let graph = crate::graph::following_directory(ctx, graph).await?;
    let s3 = ctx.s3.client();
    if ctx
        .until_ready("s3", || ctx.s3.ensure_bucket(&s3))
        .await
        .is_none()
    {
        return Ok(());
    }
    let sink = MediaSink::new(graph, s3, ctx.s3.bucket.clone(), publisher.clone());
    ctx.consume(&publisher, TOPICS, sink, ctx.batch.clone())
        .await
}
