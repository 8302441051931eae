//! Sources: where events enter the pipeline. Today the WhatsApp webhook receiver.
//! Ingest never writes a database: it verifies, normalizes and hands to Kafka.

pub mod config;
pub mod owners;
pub mod presence;
pub mod replay;
pub mod signature;
pub mod webhook;

pub use config::IngestConfig;

/// Serves the webhook receiver until `shutdown`.
pub async fn serve(
    config: IngestConfig,
    publisher: runtime::Publisher,
    numbers: webhook::NumberSource,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("ingest cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "ingest: webhook receiver up");
    let app = webhook::router(config, publisher.clone(), numbers);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    publisher.flush(std::time::Duration::from_secs(5));
    Ok(())
}
