//! The expo sink's wiring: MongoDB (its receipts' indexes) as its readiness check,
//! push tokens from the directory, then its loop over `notifications.push`.

use events::topics;
use runtime::RoleContext;

use super::{ExpoConfig, ExpoSink};
use crate::mongo::MongoConfig;

/// What the expo sink reads.
pub const TOPICS: &[&str] = &[topics::NOTIFICATIONS_PUSH];

/// Runs the sink until shutdown; readiness check `{role}.mongodb` until connected.
pub async fn run(
    ctx: &RoleContext,
    mongo: &MongoConfig,
    config: &ExpoConfig,
) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let connect = || async {
        let db = crate::mongo::connect(mongo).await?;
        super::ensure_indexes(&db).await?;
        Ok(db)
    };
    let Some(db) = ctx.until_ready("mongodb", connect).await else {
        return Ok(());
    };
    // Push tokens: the directory, followed live.
    let (directory, _follower) = ctx.follow_directory().await?;
    let sink = ExpoSink::new(db, config.clone(), directory, publisher.clone())?;
    ctx.consume(&publisher, TOPICS, sink, ctx.batch.clone())
        .await
}
