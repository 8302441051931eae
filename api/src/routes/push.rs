//! `/v1/push-tokens`: a device's Expo push token, registered or removed through
//! `directory.changes` (the mongo sink writes `push_tokens`, the expo sink reads it).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::directory::Change;
use mongodb::bson::doc;
use serde::Deserialize;
use store::directory::{PUSH_TOKENS, PushToken};
use utoipa::ToSchema;

use super::{Accepted, accepted, valid_id};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct PushTokenRequest {
    #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
    pub device_id: String,
    /// `ExponentPushToken[...]`.
    #[schema(pattern = r"^Expo(nent)?PushToken\[[A-Za-z0-9_-]{1,200}\]$")]
    pub token: String,
    /// `ios`, `android` or `web`.
    #[schema(pattern = r"^(ios|android|web)$")]
    pub platform: String,
}

/// Expo tokens look like `ExponentPushToken[xxxx]` (or `ExpoPushToken[...]`).
pub fn valid_token(token: &str) -> ApiResult<()> {
    let inner = token
        .strip_prefix("ExponentPushToken[")
        .or_else(|| token.strip_prefix("ExpoPushToken["))
        .and_then(|t| t.strip_suffix(']'));
    match inner {
        Some(inner)
            if !inner.is_empty()
                && inner.len() <= 200
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok(())
        }
        _ => Err(ApiError::invalid(
            "token must be an Expo push token: ExponentPushToken[...]",
        )),
    }
}

/// Register this device's push token.
#[utoipa::path(post, path = "/v1/push-tokens", tag = "push", security(("bearer" = [])),
    request_body = PushTokenRequest, responses((status = 202, body = Accepted)))]
pub async fn register_push_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<PushTokenRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_id("device_id", &req.device_id)?;
    valid_token(&req.token)?;
    if !["ios", "android", "web"].contains(&req.platform.as_str()) {
        return Err(ApiError::invalid("platform is ios, android or web"));
    }
    let change = Change::PushTokenRegistered {
        agent_id: caller.user_id.clone(),
        device_id: req.device_id,
        token: req.token,
        platform: req.platform,
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    Ok(accepted(id))
}

/// Remove one of the caller's push tokens.
#[utoipa::path(delete, path = "/v1/push-tokens/{token}", tag = "push", security(("bearer" = [])),
    params(("token" = String, Path, pattern = r"^Expo(nent)?PushToken\[[A-Za-z0-9_-]{1,200}\]$")),
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn unregister_push_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(token): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_token(&token)?;
    let mine = state
        .read(PUSH_TOKENS)
        .find_one(doc! {
            PushToken::KEY: store::key(&caller.org, &token),
            PushToken::AGENT_ID: &caller.user_id,
        })
        .await?;
    if mine.is_none() {
        return Err(ApiError::not_found("push token"));
    }
    let change = Change::PushTokenUnregistered {
        agent_id: caller.user_id.clone(),
        token,
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    Ok(accepted(id))
}
