//! The REST API for agent apps (web, Expo) and admins: `/v1`, JSON, OpenAPI at
//! `/openapi.json`, Swagger UI at `/docs`.
//!
//! It reads the stores (MongoDB) and turns every change into a command on Kafka,
//! answered `202 Accepted` with the command id. One exception, on purpose: auth
//! state (`auth_otps`, `auth_sessions`) is the API's own and written directly, since
//! a one-time code and a refresh token must be spendable exactly once, which needs
//! an atomic compare-and-swap and read-your-writes; a trip through Kafka would leave
//! a window in which a stolen token is used twice.

pub mod analytics;
pub mod app;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod console;
pub mod cursor;
pub mod directory;
pub mod emqx;
pub mod error;
pub mod extract;
pub mod feed;
pub mod idempotency;
pub mod mqtt_access;
pub mod openapi;
pub mod routes;
/// Sealing moved to `runtime` (the roles that open credentials share it).
pub use runtime::seal;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use mongodb::IndexModel;
use mongodb::bson::{Document, doc};

pub use config::{ApiConfig, MqttBroker};
pub use state::{AppState, Deps, Inner};

/// Milliseconds since the epoch: the one clock.
pub use events::clock::now_ms;

/// The served OpenAPI document (for tests and tooling).
pub fn openapi() -> utoipa::openapi::OpenApi {
    crate::openapi::finish(routes::router().split_for_parts().1)
}

/// Serves the API until `shutdown`.
pub async fn serve(
    deps: Deps,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let listen = deps.config.listen.clone();
    let state: AppState = Arc::new(Inner::new(deps)?);
    if let Err(err) = ensure_indexes(&state.db, state.config.idempotency_ttl_secs).await {
        tracing::warn!(error = %err, "auth indexes not created (is MongoDB up?)");
    }
    tokio::spawn(prune_limiters(state.clone(), shutdown.clone()));
    tokio::spawn(feed::run(
        state.mqtt.clone(),
        state.feed.clone(),
        shutdown.clone(),
    ));
    if state.config.mqtt_reconcile_secs > 0 && state.config.mqtt_broker == MqttBroker::Mosquitto {
        tokio::spawn(reconcile_mqtt(state.clone(), shutdown.clone()));
    }
    let hooks = if state.config.hooks_listen.is_empty() {
        None
    } else {
        let hooks_listen = state.config.hooks_listen.clone();
        let listener = tokio::net::TcpListener::bind(&hooks_listen).await?;
        tracing::info!(listen = %hooks_listen, "emqx hooks up");
        let app = emqx::router(state.clone());
        let shutdown = shutdown.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }))
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, "api up");
    axum::serve(
        listener,
        app::build(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    if let Some(hooks) = hooks {
        hooks.await??;
    }
    Ok(())
}

/// The keyed rate limiters forget keys whose buckets are full again, so memory does
/// not grow with every address that ever called.
async fn prune_limiters(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        state.prune_limiters();
    }
}

/// Broker logins expire with their sessions: every `mqtt_reconcile_secs`, the
/// clients of ended sessions are deleted.
async fn reconcile_mqtt(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    let every = std::time::Duration::from_secs(state.config.mqtt_reconcile_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match mqtt_access::reconcile(&state.mqtt, &state.db, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "mqtt logins of ended sessions deleted"),
            Err(err) => tracing::warn!(error = %err, "mqtt reconcile failed; retrying"),
        }
    }
}

async fn ensure_indexes(db: &mongodb::Database, idempotency_ttl_secs: u64) -> anyhow::Result<()> {
    let index = |keys: Document| IndexModel::builder().keys(keys).build();
    db.collection::<Document>(auth::sessions::SESSIONS)
        .create_indexes([index(doc! { "org": 1, "agent_id": 1 })])
        .await?;
    db.collection::<Document>(auth::sessions::OTPS)
        .create_indexes([index(doc! { "challenge_id": 1 })])
        .await?;
    // Idempotency keys are unique by `_id`; they are forgotten after their TTL.
    let ttl = mongodb::options::IndexOptions::builder()
        .expire_after(std::time::Duration::from_secs(idempotency_ttl_secs))
        .build();
    db.collection::<Document>(idempotency::COLLECTION)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "created_at": 1 })
                .options(ttl)
                .build(),
        )
        .await?;
    Ok(())
}
