//! The clickhouse sink's wiring: migrations as its readiness check, then its loop
//! over [`super::TOPICS`].

use runtime::RoleContext;

use super::{ClickHouseConfig, ClickHouseSink, TOPICS};

/// Runs the sink until shutdown; readiness check `{role}.clickhouse` until the
/// migrations are applied.
pub async fn run(ctx: &RoleContext, config: &ClickHouseConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    if ctx
        .until_ready("clickhouse", || super::migrate(config))
        .await
        .is_none()
    {
        return Ok(());
    }
    let batching = config.batching(&ctx.batch);
    ctx.consume(&publisher, TOPICS, ClickHouseSink::new(config), batching)
        .await
}
