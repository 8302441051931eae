//! The REST API for agent apps and admins. It reads stores and writes commands to
//! Kafka; it never writes a store itself.

pub mod analytics;

use axum::Router;
use axum::routing::get;

/// The API's routes.
pub fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

/// Serves the API on `listen` until `shutdown`.
pub async fn serve(
    listen: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "api up");
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
