//! The Expo push service stand-in: `POST /--/api/v2/push/send` answers tickets and
//! `POST /--/api/v2/push/getReceipts` answers receipts, in Expo's formats, so the
//! expo sink runs unchanged against it.
//!
//! What real devices would decide is chosen by the token instead:
//! `ExponentPushToken[...unregistered-now...]` gets a `DeviceNotRegistered` ticket
//! error at once, `ExponentPushToken[...unregistered-later...]` an `ok` ticket whose
//! receipt is the error. For tests, `POST /_sim/expo/fail` makes the next send
//! requests fail (429 with `Retry-After`, or 5xx), and `GET /_sim/expo/sent` lists
//! every send request the simulator answered, with its chunk size and messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sinks::expo::mapping::is_expo_push_token;

/// Expo refuses a send request with more messages than this.
pub const MAX_MESSAGES_PER_REQUEST: usize = 100;
/// ... and a receipts request with more ids than this.
pub const MAX_RECEIPT_IDS_PER_REQUEST: usize = 1000;
/// A token containing this is unregistered: the ticket says so.
pub const UNREGISTERED_NOW: &str = "unregistered-now";
/// A token containing this is unregistered: only the receipt says so.
pub const UNREGISTERED_LATER: &str = "unregistered-later";

/// One send request as the simulator saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentRequest {
    /// The HTTP status answered.
    pub status: u16,
    /// How many messages the request carried.
    pub chunk_size: usize,
    /// The messages, as sent.
    pub messages: Vec<Value>,
    /// The `Authorization` header was a bearer token.
    pub authorized: bool,
}

/// Failures to inject into the next send requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// 429 or a 5xx.
    pub status: u16,
    /// How many send requests fail.
    #[serde(default = "one")]
    pub count: usize,
    /// `Retry-After` seconds on a 429.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Default)]
struct SimState {
    sent: Vec<SentRequest>,
    /// Receipt id → the receipt Expo will answer.
    receipts: HashMap<String, Value>,
    failures: Vec<Failure>,
    next_id: u64,
}

type Shared = Arc<Mutex<SimState>>;

/// Expo's routes and the simulator's inspection routes.
pub fn router(_config: &crate::Config) -> Router {
    let state: Shared = Arc::default();
    Router::new()
        .route("/--/api/v2/push/send", post(send))
        .route("/--/api/v2/push/getReceipts", post(get_receipts))
        .route("/_sim/expo/sent", get(sent))
        .route("/_sim/expo/fail", post(fail))
        .with_state(state)
}

fn request_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errors": [{ "code": code, "message": message }] })),
    )
        .into_response()
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, SimState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn send(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    let parsed: Result<Value, _> = serde_json::from_str(&body);
    let (messages, single) = match parsed {
        Ok(Value::Array(items)) => (items, false),
        Ok(object @ Value::Object(_)) => (vec![object], true),
        _ => {
            return request_error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "\"value\" must be an object or an array of push messages",
            );
        }
    };
    let mut sim = lock(&state);
    let mut record = SentRequest {
        status: 200,
        chunk_size: messages.len(),
        messages: messages.clone(),
        authorized,
    };
    if let Some(failure) = sim.failures.first_mut() {
        failure.count = failure.count.saturating_sub(1);
        let failure = failure.clone();
        if failure.count == 0 {
            sim.failures.remove(0);
        }
        record.status = failure.status;
        sim.sent.push(record);
        let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
            request_error(
                status,
                "TOO_MANY_REQUESTS",
                "The project is sending more than 600 notifications per second.",
            )
        } else {
            (status, "upstream unavailable").into_response()
        };
        if let Some(seconds) = failure.retry_after_s
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    if messages.len() > MAX_MESSAGES_PER_REQUEST {
        record.status = 400;
        sim.sent.push(record);
        return request_error(
            StatusCode::BAD_REQUEST,
            "PUSH_TOO_MANY_NOTIFICATIONS",
            "You are trying to send more than 100 push notifications in one request. \
             Make sure you are sending 100 or fewer notifications per request.",
        );
    }
    // Every recipient must be a push token, or the whole request is refused.
    let mut recipients = Vec::new();
    for message in &messages {
        let to: Vec<&str> = match &message["to"] {
            Value::String(token) => vec![token.as_str()],
            Value::Array(tokens) => tokens.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if to.is_empty() || !to.iter().all(|t| is_expo_push_token(t)) {
            record.status = 400;
            sim.sent.push(record);
            return request_error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "\"to\" must be an Expo push token or an array of them",
            );
        }
        recipients.extend(to.into_iter().map(str::to_string));
    }
    let mut tickets = Vec::with_capacity(recipients.len());
    for token in recipients {
        if token.contains(UNREGISTERED_NOW) {
            tickets.push(not_registered(&token));
            continue;
        }
        sim.next_id += 1;
        let id = format!("sim-{:012x}-{}", sim.next_id, token.len());
        let receipt = if token.contains(UNREGISTERED_LATER) {
            not_registered(&token)
        } else {
            json!({ "status": "ok" })
        };
        sim.receipts.insert(id.clone(), receipt);
        tickets.push(json!({ "status": "ok", "id": id }));
    }
    sim.sent.push(record);
    let data = match (single, tickets.as_slice()) {
        (true, [ticket]) => ticket.clone(),
        _ => Value::Array(tickets),
    };
    Json(json!({ "data": data })).into_response()
}

fn not_registered(token: &str) -> Value {
    json!({
        "status": "error",
        "message": format!("\"{token}\" is not a registered push notification recipient"),
        "details": { "error": "DeviceNotRegistered", "expoPushToken": token }
    })
}

#[derive(Deserialize)]
struct ReceiptsRequest {
    ids: Vec<String>,
}

async fn get_receipts(State(state): State<Shared>, body: String) -> Response {
    let Ok(request) = serde_json::from_str::<ReceiptsRequest>(&body) else {
        return request_error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "\"ids\" must be an array of receipt ids",
        );
    };
    if request.ids.len() > MAX_RECEIPT_IDS_PER_REQUEST {
        return request_error(
            StatusCode::BAD_REQUEST,
            "PUSH_TOO_MANY_RECEIPTS",
            "You are trying to get more than 1000 push receipts in one request.",
        );
    }
    let sim = lock(&state);
    // Unknown ids are left out, as Expo does for receipts not ready or expired.
    let data: serde_json::Map<String, Value> = request
        .ids
        .into_iter()
        .filter_map(|id| sim.receipts.get(&id).map(|r| (id, r.clone())))
        .collect();
    Json(json!({ "data": data })).into_response()
}

async fn sent(State(state): State<Shared>) -> Json<Vec<SentRequest>> {
    Json(lock(&state).sent.clone())
}

async fn fail(State(state): State<Shared>, Json(failure): Json<Failure>) -> StatusCode {
    lock(&state).failures.push(failure);
    StatusCode::NO_CONTENT
}
