//! The webhook receiver: `GET /webhooks/whatsapp` (Meta's subscription handshake) and
//! `POST /webhooks/whatsapp` (signed events).
//!
//! A POST is answered 200 only once the raw body and every event split from it are
//! acknowledged by Kafka; if Kafka cannot take them the answer is 503, so Meta retries
//! (it redelivers for days; the deterministic ids absorb the repeats).

use events::clock::now_ms;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use events::normalize::Rejected;
use events::{OrgLookup, Webhook, WhatsAppEvent, topics};
use futures::future::try_join_all;
use runtime::Publisher;
use runtime::kafka::{KafkaError, Outgoing};
use runtime::observe;
use serde::Deserialize;
use serde_json::json;

use crate::config::IngestConfig;
use crate::owners::{Owners, Ownership};
use crate::signature::SignatureError;

/// The role name: metrics label, readiness checks, Kafka client id.
pub const ROLE: &str = "ingest";

/// Header names on `whatsapp.webhooks.raw`, so a replay sees what ingest saw.
pub mod raw_headers {
    pub const RECEIVED_AT_MS: &str = "coexist.received_at_ms";
    pub const SIGNATURE: &str = "x-hub-signature-256";
    /// `unknown` on a body naming a number no org owned when it arrived: a replay
    /// checks its signature again against the number's own secret.
    pub const OWNER: &str = "coexist.owner";
}

struct Shared {
    config: IngestConfig,
    /// Who owns which number, rebuilt on every directory change.
    owners: std::sync::RwLock<Arc<Owners>>,
    publisher: Publisher,
}

/// Where ingest learns numbers, orgs and app secrets: the directory (opened with
/// the sealing keys) over the static seed, or the seed alone.
pub enum NumberSource {
    Seed,
    Directory {
        directory: runtime::directory::DirectoryHandle,
        sealer: runtime::seal::Sealer,
    },
}

/// The webhook routes, ready to serve.
pub fn router(config: IngestConfig, publisher: Publisher, numbers: NumberSource) -> Router {
    let limit = config.max_body_bytes;
    let owners = match &numbers {
        NumberSource::Seed => Owners::seed(&config),
        NumberSource::Directory { directory, sealer } => {
            Owners::build(&directory.get(), sealer, &config)
        }
    };
    let edge = Edge {
        timeout: std::time::Duration::from_millis(config.request_timeout_ms.max(1)),
        slots: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_requests.max(1),
        )),
    };
    let shared = Arc::new(Shared {
        owners: std::sync::RwLock::new(Arc::new(owners)),
        config,
        publisher,
    });
    if let NumberSource::Directory {
        mut directory,
        sealer,
    } = numbers
    {
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while directory.changed().await {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let owners = Owners::build(&directory.get(), &sealer, &shared.config);
                if let Ok(mut current) = shared.owners.write() {
                    *current = Arc::new(owners);
                }
            }
        });
    }
    Router::new()
        .route("/webhooks/whatsapp", get(verify_subscription).post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(observe::readyz_public))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(edge, bounded))
        .with_state(shared)
}

/// What bounds each request at the edge.
#[derive(Clone)]
struct Edge {
    timeout: std::time::Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

/// At most `max_concurrent_requests` requests at once (503 beyond: Meta retries),
/// and each, body included, within `request_timeout_ms` (503 after it), so slow or
/// stalled senders cannot hold 4 MiB buffers and tasks without end.
async fn bounded(
    State(edge): State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_slot) = edge.slots.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many concurrent requests",
        )
            .into_response();
    };
    tokio::time::timeout(edge.timeout, next.run(req))
        .await
        .unwrap_or_else(|_| (StatusCode::SERVICE_UNAVAILABLE, "request timed out").into_response())
}

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Meta's subscription check: echo the challenge if the token is ours.
async fn verify_subscription(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<Handshake>,
) -> Response {
    let expected = shared.config.verify_token.expose();
    let token_ok = !expected.is_empty()
        && q.verify_token
            .as_deref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()));
    match (q.mode.as_deref(), token_ok, q.challenge) {
        (Some("subscribe"), true, Some(challenge)) => (StatusCode::OK, challenge).into_response(),
        _ => error(
            StatusCode::FORBIDDEN,
            "verify_token_mismatch",
            "hub.mode or hub.verify_token is wrong",
        ),
    }
}

fn unauthorized(err: SignatureError) -> Response {
    let code = match err {
        SignatureError::Missing => "missing_signature",
        SignatureError::Malformed | SignatureError::Mismatch => "invalid_signature",
    };
    rejected(StatusCode::UNAUTHORIZED, code, &err.to_string())
}

/// A body is verified against the secret of each number it names (see
/// [`Owners::authorize`]), so it is parsed first; a body that does not parse must
/// still carry a signature of some known secret, or it is a 401 like any forgery.
async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature_header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let owners = match shared.owners.read() {
        Ok(owners) => owners.clone(),
        Err(_) => return unauthorized(SignatureError::Mismatch),
    };
    if signature_header.is_none() {
        return unauthorized(SignatureError::Missing);
    }
    let parsed = serde_json::from_slice::<Webhook>(&body);
    let ownership = match &parsed {
        Ok(webhook) => owners.authorize(signature_header, &body, webhook),
        Err(_) => owners
            .authorize_unparsed(signature_header, &body)
            .map(|()| Ownership::Known),
    };
    let ownership = match ownership {
        Ok(ownership) => ownership,
        Err(err) => return unauthorized(err),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return rejected(
            StatusCode::BAD_REQUEST,
            "not_json",
            "Content-Type must be application/json",
        );
    }
    let webhook: Webhook = match parsed {
        Ok(webhook) => webhook,
        Err(err) => {
            return rejected(
                StatusCode::BAD_REQUEST,
                "malformed_body",
                &format!("not a WhatsApp webhook: {err}"),
            );
        }
    };
    let received_at_ms = now_ms();
    let signature = signature_header.unwrap_or_default().to_string();
    match store(
        &shared.publisher,
        owners.as_ref(),
        ownership,
        &webhook,
        &body,
        &signature,
        received_at_ms,
    )
    .await
    {
        Ok(()) => {
            observe::global().metrics.webhook(true, "ok");
            (StatusCode::OK, "EVENT_RECEIVED").into_response()
        }
        Err(err) => {
            tracing::error!(%err, "webhook not stored; answering 503 so Meta retries");
            rejected(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka_unavailable",
                "the event log did not acknowledge; retry",
            )
        }
    }
}

/// Produces the raw body, its events and its rejects, and waits for every ack.
async fn store(
    publisher: &Publisher,
    owners: &Owners,
    ownership: Ownership,
    webhook: &Webhook,
    body: &[u8],
    signature: &str,
    received_at_ms: i64,
) -> Result<(), KafkaError> {
    let raw_key = raw_key(webhook);
    let mut headers = vec![
        (raw_headers::RECEIVED_AT_MS, received_at_ms.to_string()),
        (raw_headers::SIGNATURE, signature.to_string()),
    ];
    if ownership == Ownership::Unknown {
        headers.push((raw_headers::OWNER, "unknown".to_string()));
    }
    let raw = publisher.send(Outgoing {
        topic: topics::WEBHOOKS_RAW,
        key: &raw_key,
        value: body.to_vec(),
        headers,
    });
    let normalized = publish_normalized(publisher, owners, webhook, received_at_ms, &raw_key);
    let (_, (events, _)) = tokio::try_join!(raw, normalized)?;
    observe::global().metrics.produced(ROLE, events);
    Ok(())
}

/// Normalizes a webhook and produces its events and rejects; returns how many of
/// each. Shared by the receiver and `coexist replay`, so both split alike.
pub async fn publish_normalized(
    publisher: &Publisher,
    orgs: &dyn OrgLookup,
    webhook: &Webhook,
    received_at_ms: i64,
    key: &str,
) -> Result<(usize, usize), KafkaError> {
    let normalized = events::normalize(webhook, received_at_ms, orgs);
    let events = try_join_all(
        normalized
            .events
            .iter()
            .map(|e| publish_event(publisher, e)),
    );
    let rejects = try_join_all(
        normalized
            .rejected
            .iter()
            .map(|r| publish_reject(publisher, r, key)),
    );
    tokio::try_join!(events, rejects)?;
    Ok((normalized.events.len(), normalized.rejected.len()))
}

/// Keyed by business number; a change about the account rather than a number
/// (e.g. `account_update`) is keyed by its WhatsApp Business Account id.
pub async fn publish_event(publisher: &Publisher, event: &WhatsAppEvent) -> Result<(), KafkaError> {
    let key = if event.phone_number_id.is_empty() {
        &event.waba_id
    } else {
        &event.phone_number_id
    };
    publisher
        .send_json(
            topics::WHATSAPP_EVENTS,
            key,
            event,
            vec![
                ("coexist.kind", event.body.kind().to_string()),
                // The start of the real-time path's stage timings (the MQTT sink's
                // `coexist_path_seconds`).
                (
                    raw_headers::RECEIVED_AT_MS,
                    event.received_at_ms.to_string(),
                ),
            ],
        )
        .await
}

/// A change that did not fit its shape: to `deadletter`, with the reason.
pub async fn publish_reject(
    publisher: &Publisher,
    rejected: &Rejected,
    key: &str,
) -> Result<(), KafkaError> {
    runtime::DeadLetters::with_role(publisher.clone(), "ingest.normalize", ROLE)
        .send_letter(runtime::DeadLetter {
            key,
            value: serde_json::to_vec(&rejected.value).unwrap_or_default(),
            reason: rejected.reason.clone(),
            source: topics::WEBHOOKS_RAW.into(),
            position: None,
            extra: vec![
                ("coexist.reason", rejected.code.to_string()),
                ("coexist.field", rejected.field.clone()),
            ],
        })
        .await
}

/// The raw topic is keyed like the others, by the first business number in the body,
/// so a replay meets each number's events in order.
pub fn raw_key(webhook: &Webhook) -> String {
    webhook
        .entry
        .iter()
        .flat_map(|e| &e.changes)
        .find_map(|c| {
            c.value
                .get("metadata")?
                .get("phone_number_id")?
                .as_str()
                .map(str::to_string)
        })
        .or_else(|| webhook.entry.first().map(|e| e.id.clone()))
        .unwrap_or_default()
}

/// An error answer to a webhook POST, counted by its code.
fn rejected(status: StatusCode, code: &'static str, message: &str) -> Response {
    observe::global().metrics.webhook(false, code);
    error(status, code, message)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
