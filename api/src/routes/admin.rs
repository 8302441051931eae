//! Admin-only: business numbers (credentials sealed before they leave the API),
//! routing policy, and the coexistence sync of a newly onboarded number.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::delivery::OutboundMessage;
use events::directory::{Change, RoutingPolicy};
use futures::TryStreamExt;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use store::directory::{BUSINESS_NUMBERS, BusinessNumber as Stored};
use store::inbox::{HISTORY_SYNCS, HistorySync};
use utoipa::ToSchema;

use super::{Accepted, accepted, valid_digits};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BusinessNumber {
    pub phone_number_id: String,
    pub display_phone_number: Option<String>,
    pub waba_id: Option<String>,
    /// Credentials are never returned; this says whether they are set.
    pub has_credentials: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NumberUpsert {
    #[schema(pattern = r"\S", max_length = 4096)]
    pub display_phone_number: String,
    pub waba_id: Option<String>,
    /// The Graph API access token of the number (sealed at once, never returned).
    #[schema(pattern = r"\S", max_length = 4096)]
    pub access_token: String,
    /// The Meta app secret that signs its webhooks (sealed likewise).
    #[schema(pattern = r"\S", max_length = 4096)]
    pub app_secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PolicyRequest {
    /// A number's policy; absent sets the org's default.
    #[schema(pattern = r"^[0-9]{1,32}$")]
    pub phone_number_id: Option<String>,
    #[schema(value_type = PolicyShape)]
    pub policy: RoutingPolicy,
}

/// The OpenAPI shape of [`RoutingPolicy`]'s JSON, tagged by `kind`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
#[serde(tag = "kind")]
pub enum PolicyShape {
    RoundRobin,
    LeastLoaded,
    /// The agent who last had the contact, within the window.
    Sticky {
        /// At most 30 days.
        #[schema(minimum = 1, maximum = 2_592_000_000_i64)]
        window_ms: i64,
    },
    Manual,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncRequest {
    /// `contacts` (the Business app's contacts) or `history` (past chats).
    pub kind: SyncKind,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncKind {
    Contacts,
    History,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncProgress {
    pub phone_number_id: String,
    /// History import progress in percent, as Meta reports it (absent: not started).
    pub progress: Option<i64>,
    /// Chunks received, as `phase:chunk_order`.
    pub chunks: Vec<String>,
    pub updated_at_ms: Option<i64>,
    /// `in_progress`, `completed`, `declined` (the business declined sharing its
    /// history, Meta's 2593109) or `failed`; absent: not started.
    pub status: Option<String>,
    /// The latest phase Meta reported (0, 1, 2: the day ranges).
    pub phase: Option<i64>,
    /// Meta's error when declined or failed: `{code, title, message}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    /// When it completed, was declined or failed.
    pub finished_at_ms: Option<i64>,
}

/// The business number `phone_number_id` of `org` (404 for another org's).
pub async fn number_of(state: &AppState, org: &str, phone_number_id: &str) -> ApiResult<Stored> {
    state
        .read(BUSINESS_NUMBERS)
        .find_one(doc! { Stored::KEY: store::key(org, phone_number_id) })
        .await?
        .ok_or_else(|| ApiError::not_found("business number"))
}

/// The org's business numbers.
#[utoipa::path(get, path = "/v1/business-numbers", tag = "admin", security(("bearer" = ["admin"])),
    responses((status = 200, body = Vec<BusinessNumber>)))]
pub async fn list_numbers(
    State(state): State<AppState>,
    Admin(caller): Admin,
) -> ApiResult<Json<Vec<BusinessNumber>>> {
    let found: Vec<Stored> = state
        .read(BUSINESS_NUMBERS)
        .find(doc! { Stored::ORG: &caller.org })
        .sort(doc! { Stored::KEY: 1 })
        .limit(1000)
        .await?
        .try_collect()
        .await?;
    Ok(Json(
        found
            .into_iter()
            .map(|d| BusinessNumber {
                has_credentials: d.access_token.is_some(),
                phone_number_id: d.phone_number_id,
                display_phone_number: d.display_phone_number,
                waba_id: d.waba_id,
            })
            .collect(),
    ))
}

/// Add a business number, or rotate its credentials. A number belongs to exactly one
/// org: registering another org's number is refused with 409 `conflict`.
#[utoipa::path(put, path = "/v1/business-numbers/{phone_number_id}", tag = "admin",
    security(("bearer" = ["admin"])), params(("phone_number_id" = String, Path, pattern = r"^[0-9]{1,32}$")),
    request_body = NumberUpsert,
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)))]
pub async fn upsert_number(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(phone_number_id): Path<String>,
    Body(req): Body<NumberUpsert>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_digits("phone_number_id", &phone_number_id)?;
    let nonempty = |what: &str, s: &str| {
        if s.trim().is_empty() || s.chars().count() > 4096 {
            Err(ApiError::invalid(format!(
                "{what} must be 1-4096 characters"
            )))
        } else {
            Ok(())
        }
    };
    nonempty("display_phone_number", &req.display_phone_number)?;
    nonempty("access_token", &req.access_token)?;
    nonempty("app_secret", &req.app_secret)?;
    // A number belongs to exactly one org. Its id is Meta's, global: saying it is
    // taken is the answer the registering admin needs (and reveals no other org).
    let owner = state
        .read(BUSINESS_NUMBERS)
        .find_one(
            doc! { Stored::PHONE_NUMBER_ID: &phone_number_id, Stored::ORG: { "$ne": &caller.org } },
        )
        .await?;
    if owner.is_some() {
        return Err(ApiError::conflict(format!(
            "business number {phone_number_id} is registered to another org"
        )));
    }
    let change = Change::BusinessNumberUpserted {
        phone_number_id,
        display_phone_number: req.display_phone_number,
        waba_id: req.waba_id,
        access_token: state.sealer.seal(&req.access_token),
        app_secret: state.sealer.seal(&req.app_secret),
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    Ok(accepted(id))
}

/// Set the routing policy of the org or of one of its numbers.
#[utoipa::path(put, path = "/v1/routing-policy", tag = "admin", security(("bearer" = ["admin"])),
    request_body = PolicyRequest,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn set_routing_policy(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Body(req): Body<PolicyRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    if let Some(number) = &req.phone_number_id {
        valid_digits("phone_number_id", number)?;
        number_of(&state, &caller.org, number).await?;
    }
    if let RoutingPolicy::Sticky { window_ms } = req.policy
        && !(1..=30 * 86_400_000).contains(&window_ms)
    {
        return Err(ApiError::invalid(
            "window_ms must be between 1 ms and 30 days",
        ));
    }
    let change = Change::RoutingPolicySet {
        phone_number_id: req.phone_number_id,
        policy: req.policy,
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    Ok(accepted(id))
}

/// What starts a coexistence sync (sent by the whatsapp sink).
pub fn sync_payload(kind: SyncKind) -> serde_json::Value {
    let sync_type = match kind {
        SyncKind::Contacts => events::outbound::SyncType::Contacts,
        SyncKind::History => events::outbound::SyncType::History,
    };
    events::outbound::OutboundPayload::sync(sync_type).to_value()
}

/// Start the coexistence sync of a number: its Business-app contacts or its history.
/// Progress arrives as webhooks; follow it with `GET` on the same path.
#[utoipa::path(post, path = "/v1/business-numbers/{phone_number_id}/sync", tag = "admin",
    security(("bearer" = ["admin"])), params(("phone_number_id" = String, Path, pattern = r"^[0-9]{1,32}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key answers the first command id and starts nothing again; the same key with another request is 422.")),
    request_body = SyncRequest,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn start_sync(
    State(state): State<AppState>,
    Admin(caller): Admin,
    key: crate::idempotency::IdempotencyKey,
    Path(phone_number_id): Path<String>,
    Body(req): Body<SyncRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_digits("phone_number_id", &phone_number_id)?;
    number_of(&state, &caller.org, &phone_number_id).await?;
    let payload = sync_payload(req.kind);
    let fingerprint = crate::idempotency::fingerprint(&format!("sync:{phone_number_id}"), &payload);
    let reservation = match crate::idempotency::claim(&state, &caller, &key, &fingerprint).await? {
        crate::idempotency::Claim::Replay(id) => return Ok(accepted(id)),
        crate::idempotency::Claim::Fresh(reservation) => reservation,
    };
    let id = reservation.command_id.clone();
    let message = OutboundMessage {
        id: id.clone(),
        org: caller.org.clone(),
        phone_number_id: phone_number_id.clone(),
        conversation_id: String::new(),
        to: String::new(),
        sent_by: caller.user_id.clone(),
        at_ms: crate::now_ms(),
        payload,
    };
    if let Err(err) = state
        .publisher
        .send_json(
            events::topics::MESSAGES_OUTBOUND,
            &phone_number_id,
            &message,
            vec![],
        )
        .await
    {
        reservation.release(&state).await;
        return Err(err.into());
    }
    Ok(accepted(id))
}

/// How far the history sync of a number has come.
#[utoipa::path(get, path = "/v1/business-numbers/{phone_number_id}/sync", tag = "admin",
    security(("bearer" = ["admin"])), params(("phone_number_id" = String, Path, pattern = r"^[0-9]{1,32}$")),
    responses((status = 200, body = SyncProgress), (status = 404, body = crate::error::ErrorBody)))]
pub async fn sync_progress(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(phone_number_id): Path<String>,
) -> ApiResult<Json<SyncProgress>> {
    valid_digits("phone_number_id", &phone_number_id)?;
    number_of(&state, &caller.org, &phone_number_id).await?;
    let sync = state
        .read(HISTORY_SYNCS)
        .find_one(doc! { HistorySync::KEY: store::key(&caller.org, &phone_number_id) })
        .await?
        .unwrap_or_default();
    let ms = |at: Option<mongodb::bson::DateTime>| at.map(|d| d.timestamp_millis());
    Ok(Json(SyncProgress {
        phone_number_id,
        progress: sync.progress,
        chunks: sync.chunks,
        updated_at_ms: ms(sync.updated_at),
        status: sync.status.map(|s| s.as_str().to_string()),
        phase: sync.phase,
        error: sync.error.and_then(|e| serde_json::to_value(e).ok()),
        finished_at_ms: ms(sync.finished_at),
    }))
}
