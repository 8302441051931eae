//! Presence and activity over REST, for clients that cannot speak MQTT (browsers):
//! published on the caller's own MQTT topics in the format devices use, so the
//! presence bridge, the router and the notifier handle them as any device's.
//!
//! The device id is the caller's session id (one session is one device). Whether
//! the caller may publish there is [`events::access::may`], the broker's own rule.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::access::{Action, may};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceRequest {
    pub status: Status,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    Typing,
    Viewing,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityRequest {
    pub kind: ActivityKind,
}

/// The answer: whether it went out (`false`: throttled, a same one went out less
/// than `[api] activity_min_interval_ms` ago).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Published {
    pub published: bool,
}

/// The device payload devices publish: `{"state": ..., "device_id": ...}`.
pub fn device_payload(state: &str, device_id: &str) -> Vec<u8> {
    json!({ "state": state, "device_id": device_id })
        .to_string()
        .into_bytes()
}

async fn publish(
    state: &AppState,
    caller: &Caller,
    topic: String,
    retain: bool,
    payload: Vec<u8>,
) -> ApiResult<()> {
    if !may(
        &state.mqtt.topic_prefix,
        &caller.org,
        &caller.user_id,
        Action::Publish,
        &topic,
    ) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not yours to publish",
        ));
    }
    state
        .feed
        .publish_mqtt(topic, retain, payload)
        .await
        .map_err(ApiError::unavailable)
}

/// Set the caller's presence (online or away), as their device would on MQTT
/// (retained on `{prefix}/{org}/presence/{agent_id}`).
#[utoipa::path(put, path = "/v1/me/presence", tag = "presence", security(("bearer" = [])),
    request_body = PresenceRequest,
    responses((status = 202, body = Published), (status = 400, body = crate::error::ErrorBody)))]
pub async fn set_presence(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<PresenceRequest>,
) -> ApiResult<(StatusCode, Json<Published>)> {
    let status = match req.status {
        Status::Online => "online",
        Status::Away => "away",
    };
    let topic = format!(
        "{}/{}/presence/{}",
        state.mqtt.topic_prefix, caller.org, caller.user_id
    );
    let payload = device_payload(status, &caller.session_id);
    publish(&state, &caller, topic, true, payload).await?;
    Ok((StatusCode::ACCEPTED, Json(Published { published: true })))
}

/// Says the caller's device (their session) is offline, on their presence topic as
/// a device's last will would: when the browser's last feed stream ends.
pub(crate) async fn say_offline(state: &AppState, caller: &Caller) -> ApiResult<()> {
    let topic = format!(
        "{}/{}/presence/{}",
        state.mqtt.topic_prefix, caller.org, caller.user_id
    );
    let payload = device_payload("offline", &caller.session_id);
    publish(state, caller, topic, true, payload).await
}

/// Say the caller is typing in or viewing a conversation of their org (on
/// `{prefix}/{org}/conversations/{conversation_id}/activity/{agent_id}`). Throttled
/// per agent, conversation and kind: one per `[api] activity_min_interval_ms`
/// (default 2 s); extra ones are answered 202 with `published: false`.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/activity", tag = "presence",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    request_body = ActivityRequest,
    responses((status = 202, body = Published), (status = 404, body = crate::error::ErrorBody)))]
pub async fn conversation_activity(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Body(req): Body<ActivityRequest>,
) -> ApiResult<(StatusCode, Json<Published>)> {
    super::conversations::find(&state, &caller.org, &conversation_id).await?;
    let kind = match req.kind {
        ActivityKind::Typing => "typing",
        ActivityKind::Viewing => "viewing",
    };
    let key = format!("{}:{}:{conversation_id}:{kind}", caller.org, caller.user_id);
    if !state.activity_allowed(key) {
        return Ok((StatusCode::ACCEPTED, Json(Published { published: false })));
    }
    let topic = format!(
        "{}/{}/conversations/{conversation_id}/activity/{}",
        state.mqtt.topic_prefix, caller.org, caller.user_id
    );
    let payload = device_payload(kind, &caller.session_id);
    publish(&state, &caller, topic, false, payload).await?;
    Ok((StatusCode::ACCEPTED, Json(Published { published: true })))
}
