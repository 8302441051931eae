//! Sources: where events enter the pipeline: the WhatsApp webhook receiver, the
//! MQTT presence bridge (agents' devices announcing themselves) and `replay` (a
//! webhook body kept elsewhere, fed again). Ingest never writes a database: it
//! verifies, normalizes and hands to Kafka.

pub mod config;
pub mod owners;
pub mod presence;
pub mod replay;
pub mod signature;
pub mod webhook;

pub use config::IngestConfig;

use std::time::Duration;

use runtime::{RoleContext, observe};

/// How often ingest's Kafka is probed for readiness, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the webhook receiver and, if enabled, the MQTT presence bridge until
/// shutdown. Readiness check `{role}.kafka`: whether the brokers answer (ingest can
/// store nothing without them).
pub async fn run(ctx: &RoleContext, config: &IngestConfig) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let publisher = ctx.publisher().await?;
    let check = format!("{}.kafka", ctx.role);
    observe::global()
        .readiness
        .set_not_ready(&check, "not probed yet");
    tokio::spawn({
        let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
        async move {
            observe::probe(&check, PROBE_EVERY, shutdown, || async {
                publisher
                    .reachable(PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
        }
    });
    // Numbers, orgs and app secrets: the directory, followed live.
    let (directory, _follower) = ctx.follow_directory().await?;
    let numbers = webhook::NumberSource::Directory {
        directory,
        sealer: ctx.sealer()?,
    };
    let webhooks = serve(config.clone(), publisher.clone(), numbers, shutdown.clone());
    if !config.presence.enabled {
        return webhooks.await;
    }
    let presence = presence::run(
        ctx.mqtt.clone(),
        config.presence.clone(),
        publisher,
        shutdown.clone(),
    );
    // Either half stopping (failure or shutdown) stops the other.
    let stop_all = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let (webhooks, presence) = tokio::join!(async { stop_all(webhooks.await) }, async {
        stop_all(presence.await)
    });
    webhooks.and(presence)
}

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
