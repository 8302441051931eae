//! The handlers, one file per resource, and what they share: the 202 answer of
//! commands, field readers for the API's own auth documents, and publishing to Kafka.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod commands;
pub mod contacts;
pub mod conversations;
pub mod feed;
pub mod mqtt;
pub mod presence;
pub mod push;
pub mod templates;
pub mod upload;

use mongodb::bson::{Bson, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Every route of the API, with its OpenAPI operation (one source for both, so the
/// served spec cannot disagree with the router).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(auth::request_otp))
        .routes(routes!(auth::verify_otp))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::logout_all))
        .routes(routes!(auth::list_sessions))
        .routes(routes!(auth::revoke_session))
        .routes(routes!(auth::me))
        .routes(routes!(agents::list_agents, agents::invite_agent))
        .routes(routes!(
            agents::get_agent,
            agents::update_agent,
            agents::deactivate_agent
        ))
        .routes(routes!(admin::list_numbers))
        .routes(routes!(admin::upsert_number))
        .routes(routes!(admin::start_sync, admin::sync_progress))
        .routes(routes!(admin::set_routing_policy))
        .routes(routes!(contacts::list_contacts))
        .routes(routes!(contacts::get_contact))
        .routes(routes!(contacts::contact_conversations))
        .routes(routes!(conversations::list_conversations))
        .routes(routes!(conversations::get_conversation))
        .routes(routes!(
            conversations::list_messages,
            commands::send_message
        ))
        .routes(routes!(conversations::message_statuses))
        .routes(routes!(conversations::media_url))
        .routes(routes!(commands::mark_read))
        .routes(routes!(commands::conversation_command))
        .routes(routes!(commands::command_result))
        .routes(routes!(push::register_push_token))
        .routes(routes!(push::unregister_push_token))
        .routes(routes!(mqtt::credentials))
        .routes(routes!(feed::feed))
        .routes(routes!(presence::set_presence))
        .routes(routes!(presence::conversation_activity))
        .routes(routes!(templates::list_templates))
        .routes(routes!(upload::upload_media))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String)))]
pub async fn health() -> &'static str {
    "ok"
}

/// The answer to a command: it is on Kafka; its result arrives on the issuer's MQTT
/// inbox and at `GET /v1/commands/{command_id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub command_id: String,
}

pub fn accepted(command_id: String) -> (axum::http::StatusCode, axum::Json<Accepted>) {
    (
        axum::http::StatusCode::ACCEPTED,
        axum::Json(Accepted { command_id }),
    )
}

/// A new command id.
pub fn command_id() -> String {
    crate::auth::sessions::random_id(16)
}

/// A string field of the API's own auth documents (`auth_otps`, `auth_sessions`).
/// The read model (what the sinks write) is read through `store`'s types instead.
pub fn text(doc: &Document, key: &str) -> Option<String> {
    match doc.get(key) {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A time field (BSON date or integer milliseconds) as milliseconds.
pub fn millis(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key) {
        Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
        Some(Bson::Int64(i)) => Some(*i),
        Some(Bson::Int32(i)) => Some(i64::from(*i)),
        Some(Bson::Double(f)) => Some(*f as i64),
        _ => None,
    }
}

/// The most a `limit` parameter may say (the spec's maximum); pages are further
/// capped by `[api] max_page`.
pub const LIMIT_MAX: u32 = 1000;

/// Page size from a request: 1..=LIMIT_MAX or 400, then at most `max_page`.
pub fn page_size(state: &AppState, asked: Option<u32>) -> ApiResult<i64> {
    let asked = asked.unwrap_or(state.config.default_page);
    if !(1..=LIMIT_MAX).contains(&asked) {
        return Err(ApiError::invalid(format!("limit is 1-{LIMIT_MAX}")));
    }
    Ok(i64::from(asked.min(state.config.max_page.max(1))))
}

/// Ids in paths and bodies: the one rule of [`events::ids::is_valid_id`] (no MQTT
/// wildcards or levels, no `$`, no `:`), as a 400.
pub fn valid_id(what: &str, id: &str) -> ApiResult<()> {
    if events::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} must be 1-{} characters of {}",
            events::ids::ID_MAX_LEN,
            events::ids::ID_CHARS
        )))
    }
}

/// Meta's message ids (`wamid.` + base64, which may hold `+`): never part of a topic
/// or a composite key's first part, so `+` is allowed here and only here.
pub fn valid_wamid(what: &str, id: &str) -> ApiResult<()> {
    let plain = id.replace('+', "-");
    if events::ids::is_valid_id(&plain) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} must be 1-{} characters of {} +",
            events::ids::ID_MAX_LEN,
            events::ids::ID_CHARS
        )))
    }
}

/// Phone numbers and Meta ids: digits only.
pub fn valid_digits(what: &str, id: &str) -> ApiResult<()> {
    if !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("{what} must be 1-32 digits")))
    }
}
