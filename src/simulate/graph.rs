//! The Graph API stand-in: message sends, media, coexistence sync requests, and
//! signed status callbacks to our webhook, in Meta's request and response formats.
//!
//! Routes (`{version}` is any version, e.g. `v23.0`):
//! - `POST /{version}/{phone_number_id}/messages`: text, template, media, interactive,
//!   reaction, location, contacts, and read receipts (`"status": "read"`). Answers
//!   `{messaging_product, contacts: [{input, wa_id}], messages: [{id}]}`, or Meta's
//!   error envelope: 401/190 (token), 400/100 (invalid parameter or recipient),
//!   429/130429 (throughput), 429/131056 (pair rate limit). A recipient starting
//!   with `0000` is accepted and then fails (131026, undeliverable), as Meta does.
//! - `POST /{version}/{phone_number_id}/media` (multipart) → `{id}`.
//! - `GET /{version}/{media_id}` → `{messaging_product, url, mime_type, sha256,
//!   file_size, id}`; the url needs the bearer token too. Ids never uploaded answer
//!   [`synthetic_media`]'s bytes (ids starting with `missing` are 404).
//! - `GET /{version}/{waba_or_phone_number_id}/message_templates` → Meta's
//!   `{data: [{name, language, status, category, id, components}], paging}`: the
//!   fixed set of [`templates`] (approved ones, one pending, one rejected), filtered
//!   by `?status=` as Meta does.
//! - `POST /{version}/{phone_number_id}/smb_app_data` with `sync_type`
//!   `smb_app_state_sync` or `history` → `{messaging_product, request_id}`.
//!
//! For tests and load measurements (not Meta's):
//! - `GET /_sim/graph/sent`: every accepted call, with its receive time in ms;
//! - `GET /_sim/graph/last_code?to=DIGITS`: the newest login code sent to a phone;
//! - `GET /_sim/graph/template_reads`: how many template lists were served;
//! - `POST /_sim/graph/fail_next` `{"count", "status", "code"}`: the next sends fail so;
//! - `POST /_sim/graph/inbound` `{"phone_number_id", "from", "text"?, "image_id"?}`:
//!   a customer's message, posted signed to the webhook.
//!
//! After accepting a message it posts signed `statuses` webhooks (sent → delivered →
//! read; a configured share failed, duplicated or out of order, see [`plan`]),
//! each carrying the message's `biz_opaque_callback_data`.

pub mod plan;

use events::clock::now_ms;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use runtime::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `[simulate.graph]`: how the simulated Graph API behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphSimConfig {
    /// Bearer tokens accepted; empty accepts any non-empty token.
    pub access_tokens: Vec<Secret>,
    /// Per business number, the only token accepted for its calls (as Meta refuses
    /// a token without access to the number's account); unlisted numbers: as above.
    pub number_tokens: Vec<NumberToken>,
    /// Where status and inbound webhooks go; empty: `http://{ingest.listen}/webhooks/whatsapp`.
    pub webhook_url: String,
    /// The app secret webhooks are signed with; empty: the first of `ingest.app_secrets`.
    pub app_secret: Secret,
    /// Post status webhooks for accepted messages.
    pub callbacks: bool,
    /// Delay before each status webhook of a message.
    pub status_delay_ms: u64,
    /// Sends a number may make per second before 130429; 0: no limit.
    pub max_messages_per_second: u32,
    /// Seed of every random decision (the same seed repeats a run).
    pub seed: u64,
    /// How often things go wrong.
    pub shares: plan::Shares,
}

/// A business number and the token the simulator accepts for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NumberToken {
    pub phone_number_id: String,
    pub token: Secret,
}

impl Default for GraphSimConfig {
    fn default() -> Self {
        Self {
            access_tokens: Vec::new(),
            number_tokens: Vec::new(),
            webhook_url: String::new(),
            app_secret: Secret::default(),
            callbacks: true,
            status_delay_ms: 100,
            max_messages_per_second: 0,
            seed: 1,
            shares: plan::Shares::default(),
        }
    }
}

/// One call the simulator accepted, as `GET /_sim/graph/sent` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentRecord {
    pub received_at_ms: i64,
    pub phone_number_id: String,
    /// `messages` or `smb_app_data`.
    pub edge: String,
    /// The message type (`read` for read receipts, the sync type for smb_app_data).
    pub kind: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    pub wamid: Option<String>,
    pub body: Value,
}

/// A failure queued by `POST /_sim/graph/fail_next`.
#[derive(Debug, Clone, Deserialize)]
pub struct FailNext {
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default = "too_many")]
    pub status: u16,
    #[serde(default = "throughput")]
    pub code: i64,
}

fn one() -> u32 {
    1
}
fn too_many() -> u16 {
    429
}
fn throughput() -> i64 {
    130429
}

struct Sim {
    config: GraphSimConfig,
    webhook_url: String,
    app_secret: Option<Secret>,
    http: reqwest::Client,
    counter: AtomicU64,
    template_reads: AtomicU64,
    sent: Mutex<Vec<SentRecord>>,
    uploads: Mutex<HashMap<String, (Vec<u8>, String)>>,
    fail_next: Mutex<VecDeque<(u16, i64)>>,
    /// Per number: the current second and the sends counted in it.
    second: Mutex<HashMap<String, (i64, u32)>>,
}

type Shared = Arc<Sim>;

/// The Graph API's routes.
pub fn router(config: &crate::Config) -> Router {
    let sim = &config.simulate.graph;
    let webhook_url = if sim.webhook_url.is_empty() {
        format!("http://{}/webhooks/whatsapp", config.ingest.listen)
    } else {
        sim.webhook_url.clone()
    };
    let app_secret = if sim.app_secret.is_empty() {
        config.ingest.app_secrets.first().cloned()
    } else {
        Some(sim.app_secret.clone())
    };
    let state = Arc::new(Sim {
        config: sim.clone(),
        webhook_url,
        app_secret,
        http: reqwest::Client::new(),
        counter: AtomicU64::new(0),
        template_reads: AtomicU64::new(0),
        sent: Mutex::default(),
        uploads: Mutex::default(),
        fail_next: Mutex::default(),
        second: Mutex::default(),
    });
    Router::new()
        .route("/_sim/graph/sent", get(list_sent))
        .route("/_sim/graph/last_code", get(last_code))
        .route("/_sim/graph/template_reads", get(template_reads))
        .route("/_sim/graph/fail_next", post(fail_next))
        .route("/_sim/graph/inbound", post(inbound))
        .route("/_sim/graph/download/{media_id}", get(download))
        .route("/{version}/{media_id}", get(media_info))
        .route("/{version}/{phone_number_id}/messages", post(messages))
        .route("/{version}/{phone_number_id}/media", post(upload))
        .route(
            "/{version}/{account_id}/message_templates",
            get(message_templates),
        )
        .route(
            "/{version}/{phone_number_id}/smb_app_data",
            post(smb_app_data),
        )
        .with_state(state)
}

/// A refusal in Meta's error envelope.
#[derive(Debug, Clone)]
pub struct MetaError {
    pub status: u16,
    pub code: i64,
    pub message: String,
    pub details: String,
}

impl IntoResponse for MetaError {
    fn into_response(self) -> Response {
        envelope(self.status, self.code, &self.message, &self.details)
    }
}

fn meta_error(status: u16, code: i64, message: &str, details: &str) -> MetaError {
    MetaError {
        status,
        code,
        message: message.to_string(),
        details: details.to_string(),
    }
}

/// Meta's error envelope.
pub fn envelope(status: u16, code: i64, message: &str, details: &str) -> Response {
    let mut error = json!({
        "message": format!("(#{code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": { "messaging_product": "whatsapp", "details": details },
        "fbtrace_id": format!("Sim{:x}", now_ms()),
    });
    if code == 190 {
        error["message"] = json!(message);
    }
    if code == 131056 {
        error["error_subcode"] = json!(2494071);
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({ "error": error }))).into_response()
}

fn invalid(details: &str) -> MetaError {
    meta_error(400, 100, "Invalid parameter", details)
}

/// 401/190 unless the request carries an accepted bearer token (for the number,
/// when the call names one).
fn authorize(sim: &Sim, headers: &HeaderMap, number: Option<&str>) -> Result<(), MetaError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let own = number.and_then(|n| {
        sim.config
            .number_tokens
            .iter()
            .find(|t| t.phone_number_id == n)
    });
    let accepted = if let Some(own) = own {
        own.token.expose() == token
    } else if sim.config.access_tokens.is_empty() {
        !token.is_empty()
    } else {
        sim.config.access_tokens.iter().any(|t| t.expose() == token)
    };
    if accepted {
        Ok(())
    } else {
        Err(meta_error(
            401,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "The access token is missing, expired or not valid for this app",
        ))
    }
}

fn is_phone(to: &str) -> bool {
    let digits = to.strip_prefix('+').unwrap_or(to);
    (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Meta's message types (one list, the outbound contract's).
const TYPES: &[&str] = events::outbound::MESSAGE_TYPES;

/// Checks a send body as Meta would; `(to, type)` when it is well formed.
fn validate(body: &Value) -> Result<(String, String), MetaError> {
    if body["messaging_product"] != "whatsapp" {
        return Err(invalid(
            "The parameter messaging_product is required and must be whatsapp",
        ));
    }
    let to = body["to"]
        .as_str()
        .ok_or_else(|| invalid("The parameter to is required"))?;
    if !is_phone(to) {
        return Err(invalid(&format!(
            "Invalid WhatsApp recipient: {to:?} is not a phone number"
        )));
    }
    let kind = body["type"].as_str().unwrap_or("text");
    if !TYPES.contains(&kind) {
        return Err(invalid(&format!("Unsupported message type {kind:?}")));
    }
    let object = body[kind]
        .as_object()
        .ok_or_else(|| invalid(&format!("The parameter {kind} is required")))?;
    let media = ["image", "audio", "video", "document", "sticker"].contains(&kind);
    if media && !object.contains_key("id") && !object.contains_key("link") {
        return Err(invalid(&format!("{kind} needs an id or a link")));
    }
    if kind == "text" && !object.get("body").is_some_and(Value::is_string) {
        return Err(invalid("The parameter text['body'] is required"));
    }
    if kind == "template" && !object.get("name").is_some_and(Value::is_string) {
        return Err(invalid("The parameter template['name'] is required"));
    }
    Ok((to.trim_start_matches('+').to_string(), kind.to_string()))
}

fn parse_json(body: &Bytes) -> Result<Value, MetaError> {
    serde_json::from_slice(body)
        .map_err(|e| invalid(&format!("The request body is not valid JSON: {e}")))
}

/// Queued failures first, then the per-second limit, then random throttling.
fn refusal(sim: &Sim, phone_number_id: &str, key: &str) -> Option<MetaError> {
    if let Some((status, code)) = sim.fail_next.lock().ok()?.pop_front() {
        return Some(rate_error(status, code));
    }
    let limit = sim.config.max_messages_per_second;
    if limit > 0 {
        let second = now_ms() / 1000;
        let mut seconds = sim.second.lock().ok()?;
        let entry = seconds
            .entry(phone_number_id.to_string())
            .or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        if entry.1 > limit {
            return Some(rate_error(429, 130429));
        }
    }
    plan::throttle(sim.config.seed, key, &sim.config.shares).map(|code| rate_error(429, code))
}

fn rate_error(status: u16, code: i64) -> MetaError {
    match code {
        130429 => meta_error(
            status,
            code,
            "Rate limit hit",
            "Message failed to send because there were too many messages sent from this phone number in a short period of time",
        ),
        131056 => meta_error(
            status,
            code,
            "(Business Account, Consumer Account) pair rate limit hit",
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time",
        ),
        131047 => meta_error(
            status,
            code,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number",
        ),
        131000 => meta_error(
            status,
            code,
            "Something went wrong",
            "Message failed to send due to an unknown error",
        ),
        _ => meta_error(
            status,
            code,
            "Simulated failure",
            "A failure queued through /_sim/graph/fail_next",
        ),
    }
}

async fn messages(
    State(sim): State<Shared>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, Some(&phone_number_id)) {
        return refused.into_response();
    }
    let body = match parse_json(&body) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    if body["status"] == "read" {
        let Some(message_id) = body["message_id"].as_str() else {
            return invalid("The parameter message_id is required").into_response();
        };
        record(
            &sim,
            &phone_number_id,
            "messages",
            "read",
            None,
            None,
            &body,
        );
        tracing::debug!(%message_id, "simulated read receipt");
        return Json(json!({ "success": true })).into_response();
    }
    let (to, kind) = match validate(&body) {
        Ok(valid) => valid,
        Err(refused) => return refused.into_response(),
    };
    let n = sim.counter.fetch_add(1, Ordering::Relaxed);
    let callback = body["biz_opaque_callback_data"]
        .as_str()
        .map(str::to_string);
    let key = callback
        .clone()
        .unwrap_or_else(|| format!("{phone_number_id}:{n}"));
    if let Some(refused) = refusal(&sim, &phone_number_id, &key) {
        return refused.into_response();
    }
    let wamid = format!("wamid.SIM{:x}{n:08x}", sim.config.seed);
    record(
        &sim,
        &phone_number_id,
        "messages",
        &kind,
        Some(&to),
        Some(&wamid),
        &body,
    );
    if sim.config.callbacks && sim.app_secret.is_some() {
        let undeliverable = to.starts_with("0000");
        tokio::spawn(post_statuses(
            sim.clone(),
            phone_number_id,
            to.clone(),
            wamid.clone(),
            callback,
            undeliverable,
        ));
    }
    Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": body["to"], "wa_id": to }],
        "messages": [{ "id": wamid }],
    }))
    .into_response()
}

fn record(
    sim: &Sim,
    phone_number_id: &str,
    edge: &str,
    kind: &str,
    to: Option<&str>,
    wamid: Option<&str>,
    body: &Value,
) {
    let entry = SentRecord {
        received_at_ms: now_ms(),
        phone_number_id: phone_number_id.to_string(),
        edge: edge.to_string(),
        kind: kind.to_string(),
        to: to.map(str::to_string),
        biz_opaque_callback_data: body["biz_opaque_callback_data"]
            .as_str()
            .map(str::to_string),
        wamid: wamid.map(str::to_string),
        body: body.clone(),
    };
    if let Ok(mut sent) = sim.sent.lock() {
        sent.push(entry);
    }
}

/// A `statuses` webhook body for one status, as Meta sends it.
pub fn status_webhook(
    phone_number_id: &str,
    wamid: &str,
    status: &str,
    recipient: &str,
    callback: Option<&str>,
    at: i64,
    error: Option<(i64, &str)>,
) -> Value {
    let mut item = json!({
        "id": wamid,
        "status": status,
        "timestamp": at.to_string(),
        "recipient_id": recipient,
    });
    if let Some(data) = callback {
        item["biz_opaque_callback_data"] = json!(data);
    }
    if status != "failed" {
        item["conversation"] =
            json!({ "id": format!("conv{recipient}"), "origin": { "type": "service" } });
        item["pricing"] = json!({ "billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service" });
    }
    if let Some((code, title)) = error {
        item["errors"] = json!([{
            "code": code, "title": title, "message": title,
            "error_data": { "details": title },
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
        }]);
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": phone_number_id },
            "statuses": [item],
        }}]}],
    })
}

async fn post_statuses(
    sim: Shared,
    phone_number_id: String,
    to: String,
    wamid: String,
    callback: Option<String>,
    undeliverable: bool,
) {
    let mut statuses = plan::statuses(sim.config.seed, &wamid, &sim.config.shares);
    if undeliverable {
        statuses = vec!["sent", "failed"];
    }
    for status in statuses {
        tokio::time::sleep(Duration::from_millis(sim.config.status_delay_ms)).await;
        let error = (status == "failed").then_some((131026, "Message undeliverable"));
        let body = status_webhook(
            &phone_number_id,
            &wamid,
            status,
            &to,
            callback.as_deref(),
            now_ms() / 1000,
            error,
        );
        post_signed(&sim, body).await;
    }
}

async fn post_signed(sim: &Sim, body: Value) -> bool {
    let Some(secret) = &sim.app_secret else {
        return false;
    };
    let body = body.to_string();
    let signature = ingest::signature::sign(body.as_bytes(), secret.expose());
    match super::post_webhook(&sim.http, &sim.webhook_url, signature, body).await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::warn!(status = %r.status(), "simulated webhook refused");
            false
        }
        Err(err) => {
            tracing::warn!(%err, "webhook receiver not reachable");
            false
        }
    }
}

async fn smb_app_data(
    State(sim): State<Shared>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, Some(&phone_number_id)) {
        return refused.into_response();
    }
    let body = match parse_json(&body) {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    if body["messaging_product"] != "whatsapp" {
        return invalid("The parameter messaging_product is required and must be whatsapp")
            .into_response();
    }
    let Some(sync_type) = body["sync_type"]
        .as_str()
        .filter(|s| ["smb_app_state_sync", "history"].contains(s))
    else {
        return invalid("The parameter sync_type must be smb_app_state_sync or history")
            .into_response();
    };
    record(
        &sim,
        &phone_number_id,
        "smb_app_data",
        sync_type,
        None,
        None,
        &body,
    );
    let n = sim.counter.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "messaging_product": "whatsapp", "request_id": format!("sim-req-{n}") }))
        .into_response()
}

/// The bytes and MIME type the simulator serves for a media id nobody uploaded: a
/// JPEG-framed deterministic payload of 1–9 KB, so tests can compare byte for byte.
pub fn synthetic_media(media_id: &str) -> (Vec<u8>, &'static str) {
    let mut block = Sha256::digest(media_id.as_bytes()).to_vec();
    let size = 1024 + (usize::from(block[0]) << 5);
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    while bytes.len() < size {
        bytes.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    bytes.truncate(size);
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    (bytes, "image/jpeg")
}

fn media(sim: &Sim, media_id: &str) -> Option<(Vec<u8>, String)> {
    if let Some(uploaded) = sim.uploads.lock().ok()?.get(media_id) {
        return Some(uploaded.clone());
    }
    if media_id.starts_with("missing") {
        return None;
    }
    let (bytes, mime) = synthetic_media(media_id);
    Some((bytes, mime.to_string()))
}

fn no_such_media(media_id: &str) -> MetaError {
    meta_error(
        404,
        100,
        "Unsupported get request.",
        &format!(
            "Object with ID '{media_id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        ),
    )
}

async fn media_info(
    State(sim): State<Shared>,
    Path((_version, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, None) {
        return refused.into_response();
    }
    let Some((bytes, mime)) = media(&sim, &media_id) else {
        return no_such_media(&media_id).into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({
        "messaging_product": "whatsapp",
        "url": format!("http://{host}/_sim/graph/download/{media_id}"),
        "mime_type": mime,
        "sha256": hex::encode(Sha256::digest(&bytes)),
        "file_size": bytes.len(),
        "id": media_id,
    }))
    .into_response()
}

async fn download(
    State(sim): State<Shared>,
    Path(media_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, None) {
        return refused.into_response();
    }
    match media(&sim, &media_id) {
        Some((bytes, mime)) => ([(header::CONTENT_TYPE, mime)], bytes).into_response(),
        None => no_such_media(&media_id).into_response(),
    }
}

async fn upload(
    State(sim): State<Shared>,
    Path((_version, _phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, None) {
        return refused.into_response();
    }
    let mut file = None;
    let mut product = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let mime = field.content_type().map(str::to_string);
                let Ok(data) = field.bytes().await else {
                    return invalid("unreadable multipart field").into_response();
                };
                match name.as_str() {
                    "file" => {
                        file = Some((
                            data.to_vec(),
                            mime.unwrap_or_else(|| "application/octet-stream".into()),
                        ))
                    }
                    "messaging_product" => {
                        product = Some(String::from_utf8_lossy(&data).into_owned())
                    }
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(err) => {
                return invalid(&format!("The request is not valid multipart: {err}"))
                    .into_response();
            }
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return invalid("The parameter messaging_product is required and must be whatsapp")
            .into_response();
    }
    let Some(file) = file else {
        return invalid("The parameter file is required").into_response();
    };
    let id = format!("sim-media-{}", sim.counter.fetch_add(1, Ordering::Relaxed));
    if let Ok(mut uploads) = sim.uploads.lock() {
        uploads.insert(id.clone(), file);
    }
    Json(json!({ "id": id })).into_response()
}

async fn list_sent(State(sim): State<Shared>) -> Json<Vec<SentRecord>> {
    Json(sim.sent.lock().map(|s| s.clone()).unwrap_or_default())
}

/// `?to=` (digits): who a phone would show a login code to.
#[derive(Debug, Deserialize)]
pub struct CodeQuery {
    pub to: String,
}

/// The newest one-time code sent to `to` (the first parameter of the newest
/// authentication template), as plain text: what the person's WhatsApp would show,
/// so a demo can log in with `curl`. 404 when none was sent.
async fn last_code(State(sim): State<Shared>, Query(q): Query<CodeQuery>) -> Response {
    let to = q.to.trim_start_matches('+');
    let sent = sim.sent.lock().map(|s| s.clone()).unwrap_or_default();
    sent.iter()
        .rev()
        .filter(|r| r.kind == "template" && r.to.as_deref() == Some(to))
        .find_map(|r| {
            r.body["template"]["components"][0]["parameters"][0]["text"]
                .as_str()
                .map(str::to_string)
        })
        .map_or_else(
            || (StatusCode::NOT_FOUND, "no code sent to this number\n").into_response(),
            |code| format!("{code}\n").into_response(),
        )
}

async fn fail_next(State(sim): State<Shared>, Json(next): Json<FailNext>) -> StatusCode {
    if let Ok(mut queue) = sim.fail_next.lock() {
        for _ in 0..next.count {
            queue.push_back((next.status, next.code));
        }
    }
    StatusCode::NO_CONTENT
}

/// A customer's message for `POST /_sim/graph/inbound`.
#[derive(Debug, Deserialize)]
pub struct Inbound {
    pub phone_number_id: String,
    pub from: String,
    #[serde(default)]
    pub text: Option<String>,
    /// Sends an image with this media id instead of a text.
    #[serde(default)]
    pub image_id: Option<String>,
}

/// The webhook body of one inbound image, as Meta sends it.
pub fn inbound_image(
    phone_number_id: &str,
    contact: &str,
    wamid: &str,
    media_id: &str,
    at: u64,
) -> Value {
    let (bytes, mime) = synthetic_media(media_id);
    let mut body = super::inbound_text(phone_number_id, contact, "Sim Customer", wamid, "", at);
    body["entry"][0]["changes"][0]["value"]["messages"][0] = json!({
        "from": contact, "id": wamid, "timestamp": at.to_string(), "type": "image",
        "image": { "mime_type": mime, "sha256": hex::encode(Sha256::digest(&bytes)), "id": media_id },
    });
    body
}

async fn inbound(State(sim): State<Shared>, Json(message): Json<Inbound>) -> Response {
    let n = sim.counter.fetch_add(1, Ordering::Relaxed);
    let wamid = format!("wamid.SIMIN{:x}{n:08x}", now_ms());
    let at = (now_ms() / 1000) as u64;
    let body = match &message.image_id {
        Some(id) => inbound_image(&message.phone_number_id, &message.from, &wamid, id, at),
        None => super::inbound_text(
            &message.phone_number_id,
            &message.from,
            "Sim Customer",
            &wamid,
            message.text.as_deref().unwrap_or("Hello"),
            at,
        ),
    };
    if post_signed(&sim, body).await {
        Json(json!({ "wamid": wamid })).into_response()
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "the webhook receiver refused or is not reachable",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_media_is_deterministic_and_framed_as_jpeg() {
        let (a, mime) = synthetic_media("123");
        assert_eq!(mime, "image/jpeg");
        assert_eq!(a, synthetic_media("123").0);
        assert_ne!(a, synthetic_media("124").0);
        assert_eq!(&a[..3], &[0xFF, 0xD8, 0xFF]);
        assert_eq!(&a[a.len() - 2..], &[0xFF, 0xD9]);
    }

    #[test]
    fn sends_are_validated_as_meta_does() {
        let ok = json!({"messaging_product": "whatsapp", "to": "+16505551234", "type": "text", "text": {"body": "hi"}});
        assert_eq!(
            validate(&ok).ok(),
            Some(("16505551234".into(), "text".into()))
        );
        for bad in [
            json!({"to": "16505551234", "type": "text", "text": {"body": "hi"}}),
            json!({"messaging_product": "whatsapp", "to": "abc", "type": "text", "text": {"body": "hi"}}),
            json!({"messaging_product": "whatsapp", "to": "16505551234", "type": "image", "image": {}}),
            json!({"messaging_product": "whatsapp", "to": "16505551234", "type": "template", "template": {}}),
            json!({"messaging_product": "whatsapp", "to": "16505551234", "type": "fax", "fax": {}}),
        ] {
            let refused = validate(&bad).unwrap_err();
            assert_eq!((refused.status, refused.code), (400, 100), "{bad}");
        }
    }

    #[test]
    fn a_status_webhook_parses_and_carries_the_callback_data() {
        let body = status_webhook(
            "111",
            "wamid.A",
            "failed",
            "222",
            Some("cmd-1"),
            1_750_000_000,
            Some((131026, "Message undeliverable")),
        );
        let webhook: events::webhook::Webhook = serde_json::from_value(body.clone()).unwrap();
        let events = events::normalize(&webhook, 0, &events::OrgDirectory::new("acme", [])).events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "wamid.A:failed");
        // The whatsapp sink finds an in-doubt command's wamid by this field.
        let events::event::EventBody::Status(status) = &events[0].body else {
            panic!("not a status");
        };
        assert_eq!(status.raw["biz_opaque_callback_data"], "cmd-1");
        assert_eq!(
            body["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"],
            "cmd-1"
        );
    }
}

/// The templates every account has in the simulator, in Meta's format: approved
/// ones (with and without body parameters), one pending and one rejected.
pub fn templates() -> Vec<Value> {
    vec![
        json!({
            "name": "hello_world", "language": "en_US", "status": "APPROVED",
            "category": "UTILITY", "id": "1000000000000001",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
                {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp message notification from the Cloud API."},
                {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"}
            ]
        }),
        json!({
            "name": "order_update", "language": "en_US", "status": "APPROVED",
            "category": "UTILITY", "id": "1000000000000002", "parameter_format": "POSITIONAL",
            "components": [
                {"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way.",
                 "example": {"body_text": [["Ann", "#1042"]]}},
                {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Thanks"}]}
            ]
        }),
        json!({
            "name": "follow_up", "language": "en_US", "status": "APPROVED",
            "category": "MARKETING", "id": "1000000000000003", "parameter_format": "POSITIONAL",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Still there, {{1}}?",
                 "example": {"header_text": ["Ann"]}},
                {"type": "BODY", "text": "We have not heard from you in a while. Reply to this message to pick up where we left off."}
            ]
        }),
        json!({
            "name": "coexist_login", "language": "en_US", "status": "APPROVED",
            "category": "AUTHENTICATION", "id": "1000000000000004",
            "components": [
                {"type": "BODY", "add_security_recommendation": true},
                {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]}
            ]
        }),
        json!({
            "name": "summer_sale", "language": "en_US", "status": "PENDING",
            "category": "MARKETING", "id": "1000000000000005",
            "components": [{"type": "BODY", "text": "Everything is {{1}} off this week."}]
        }),
        json!({
            "name": "win_big", "language": "en_US", "status": "REJECTED",
            "category": "MARKETING", "id": "1000000000000006",
            "components": [{"type": "BODY", "text": "You won!"}]
        }),
    ]
}

#[derive(Deserialize)]
struct TemplateQuery {
    #[serde(default)]
    status: Option<String>,
}

async fn message_templates(
    State(sim): State<Shared>,
    Path((_version, account_id)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<TemplateQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&sim, &headers, Some(&account_id)) {
        return refused.into_response();
    }
    sim.template_reads.fetch_add(1, Ordering::Relaxed);
    let data: Vec<Value> = templates()
        .into_iter()
        .filter(|t| query.status.as_deref().is_none_or(|s| t["status"] == s))
        .collect();
    let (first, last) = (
        data.first().map(|t| t["id"].clone()).unwrap_or_default(),
        data.last().map(|t| t["id"].clone()).unwrap_or_default(),
    );
    Json(json!({
        "data": data,
        "paging": {"cursors": {"before": first, "after": last}},
    }))
    .into_response()
}

async fn template_reads(State(sim): State<Shared>) -> Json<Value> {
    Json(json!({ "template_reads": sim.template_reads.load(Ordering::Relaxed) }))
}
