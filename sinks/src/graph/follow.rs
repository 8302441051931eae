//! A role's Graph API client, calling with each number's own token from the
//! directory.

use runtime::RoleContext;

use super::{GraphClient, GraphConfig};

/// The Graph API client of a role, with the directory followed live in the
/// background until the role's shutdown.
pub async fn following_directory(
    ctx: &RoleContext,
    config: &GraphConfig,
) -> anyhow::Result<GraphClient> {
    let (directory, _follower) = ctx.follow_directory().await?;
    Ok(GraphClient::new(config.clone())?.with_directory(directory, ctx.sealer()?))
}
