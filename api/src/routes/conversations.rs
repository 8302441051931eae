//! `/v1/conversations`, their messages (newest first, by cursor), a message's status
//! history, and presigned media URLs.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use axum::Json;
use axum::extract::State;
use events::inbox::ConversationState;
use futures::TryStreamExt;
use mongodb::bson::{DateTime, doc};
use serde::{Deserialize, Serialize};
use store::inbox::{self, CONVERSATIONS, MESSAGE_STATUSES, MESSAGES, Message as Stored};
use utoipa::{IntoParams, ToSchema};

use super::{page_size, valid_id};
use crate::auth::Caller;
use crate::cursor::Cursor;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    pub conversation_id: String,
    pub phone_number_id: Option<String>,
    pub contact_wa_id: Option<String>,
    /// `open`, `assigned` or `resolved`.
    pub state: Option<String>,
    pub assignee: Option<String>,
    pub unread_count: i64,
    pub last_message_at_ms: Option<i64>,
    /// The last message's text (or `[type]`), as edited; `null` once it was deleted.
    pub last_message_preview: Option<String>,
    /// When the 24-hour customer service window closes: 24 h after the customer's
    /// last live message (history, echoes, edits and reactions do not count). Absent:
    /// the customer never wrote, so only templates can be sent.
    pub window_expires_at_ms: Option<i64>,
    /// Who answers it now: `agent` (see `assignee`), `business_app` (someone
    /// replies from the WhatsApp Business app) or `nobody` (waiting or resolved).
    pub handled_by: HandledBy,
}

/// Who handles a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandledBy {
    Agent,
    BusinessApp,
    Nobody,
}

/// The 24-hour customer service window.
pub const WINDOW_MS: i64 = 24 * 3_600_000;

/// Who handles a conversation in `state` with `assignee`.
pub fn handled_by(state: Option<&str>, assignee: Option<&str>) -> HandledBy {
    match (state, assignee) {
        (Some("assigned"), Some(events::inbox::BUSINESS_APP)) => HandledBy::BusinessApp,
        (Some("assigned"), Some(a)) if !a.is_empty() => HandledBy::Agent,
        _ => HandledBy::Nobody,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    pub items: Vec<Conversation>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationQuery {
    /// `open`, `assigned` or `resolved`.
    #[param(pattern = r"^(open|assigned|resolved)$")]
    pub state: Option<String>,
    /// An agent id, or `me`.
    #[param(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
    pub assignee: Option<String>,
    /// From the last page's `next`.
    #[param(pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Meta's message id; `note:{command_id}` for a note.
    pub wamid: String,
    /// `inbound`, `outbound`, or `internal` for a note (seen by the org's agents
    /// only, never sent to the customer).
    pub direction: Option<String>,
    /// Who wrote it: `customer`, `business_app` (the WhatsApp Business app), `api`
    /// (sent through Coexist) or `history` (imported from the Business app).
    pub origin: Option<String>,
    /// WhatsApp's message type (`text`, `image`, ...) of the current content (an
    /// edit may change it), or `note`.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// The current text: the newest edit's, else the original's (a note's whole
    /// text); `null` once deleted.
    pub preview: Option<String>,
    /// The agent who sent it through the API, or wrote the note.
    pub sent_by: Option<String>,
    pub reply_to: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub media: Option<serde_json::Value>,
    pub status: Option<String>,
    pub sent_at_ms: Option<i64>,
    /// When it was last edited; the earlier versions are in `versions`.
    pub edited_at_ms: Option<i64>,
    /// When it was deleted (revoked) for everyone: its content is no longer shown.
    pub deleted_at_ms: Option<i64>,
    /// Earlier versions, oldest first (empty when never edited or deleted).
    pub versions: Vec<MessageVersion>,
    /// One reaction per reactor (removed ones are left out).
    pub reactions: Vec<MessageReaction>,
    /// Errors Meta reported with the message.
    #[schema(value_type = Option<Object>)]
    pub errors: Option<serde_json::Value>,
}

/// An earlier version of an edited message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageVersion {
    pub preview: Option<String>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// When it was written (the original) or edited.
    pub at_ms: Option<i64>,
}

/// A reaction on a message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageReaction {
    /// The customer's wa_id, or `business`.
    pub reactor: String,
    pub emoji: String,
    pub at_ms: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    pub items: Vec<Message>,
    /// Older messages: pass as `cursor`.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// From the last page's `next`.
    #[param(pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusChange {
    pub status: String,
    pub at_ms: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub errors: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MediaUrl {
    pub url: String,
    pub expires_in_secs: u64,
    pub mime_type: Option<String>,
}

/// The API's word for a conversation state (the stored one).
pub fn state_name(state: ConversationState) -> &'static str {
    match state {
        ConversationState::Open => "open",
        ConversationState::Assigned => "assigned",
        ConversationState::Resolved => "resolved",
    }
}

fn ms(at: Option<DateTime>) -> Option<i64> {
    at.map(|d| d.timestamp_millis())
}

/// A value as JSON (errors, media: passed through as Meta sent them).
fn json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// The conversation as the API shows it; `unread_count` is counted apart
/// ([`with_unread`]).
pub fn conversation_of(d: &inbox::Conversation) -> Conversation {
    let state = d.state.map(|s| state_name(s).to_string());
    Conversation {
        conversation_id: d.id.clone(),
        phone_number_id: d.phone_number_id.clone(),
        contact_wa_id: d.contact_wa_id.clone(),
        handled_by: handled_by(state.as_deref(), d.assignee.as_deref()),
        state,
        assignee: d.assignee.clone(),
        unread_count: 0,
        last_message_at_ms: ms(d.last_message_at),
        last_message_preview: d.last_message.as_ref().and_then(|l| l.preview.clone()),
        window_expires_at_ms: ms(d.last_inbound_at).map(|at| at.saturating_add(WINDOW_MS)),
    }
}

fn message_of(d: &Stored) -> Message {
    let deleted = ms(d.deleted_at);
    let current = inbox::current_content(d);
    let (preview, message_type) = current.unwrap_or((None, d.message_type.clone()));
    let mut versions = Vec::new();
    if deleted.is_none() {
        let mut edits: Vec<&inbox::Edit> = d.edits.iter().collect();
        edits.sort_by_key(|e| (ms(e.at), e.id.as_str()));
        if !edits.is_empty() {
            versions.push(MessageVersion {
                preview: d.preview.clone(),
                message_type: d.message_type.clone(),
                at_ms: ms(d.sent_at),
            });
            // Every edit but the newest (the current content) is an earlier version.
            for e in &edits[..edits.len() - 1] {
                versions.push(MessageVersion {
                    preview: e.preview.clone(),
                    message_type: e.message_type.clone(),
                    at_ms: ms(e.at),
                });
            }
        }
    }
    // One per reactor, in reactor order (a map); removed ones are left out.
    let reactions = d
        .reactions
        .iter()
        .filter_map(|(reactor, r)| {
            Some(MessageReaction {
                reactor: reactor.clone(),
                emoji: r.emoji.clone()?,
                at_ms: ms(r.at),
            })
        })
        .collect();
    Message {
        wamid: d.id.clone(),
        direction: d.direction.clone(),
        origin: d
            .origin
            .as_ref()
            .and_then(json)
            .and_then(|o| o.as_str().map(String::from)),
        message_type,
        preview,
        sent_by: d.sent_by.clone(),
        reply_to: d.reply_to.clone(),
        // A deleted message shows no content (the raw webhook keeps it for audit).
        media: if deleted.is_some() {
            None
        } else {
            d.media.as_ref().and_then(json)
        },
        status: d.status.clone(),
        sent_at_ms: ms(d.sent_at),
        edited_at_ms: ms(d.edited_at),
        deleted_at_ms: deleted,
        versions,
        reactions,
        errors: d.errors.as_ref().and_then(json),
    }
}

fn cursor_of(text: &Option<String>) -> ApiResult<Option<Cursor>> {
    text.as_deref()
        .map(|c| Cursor::decode(c).ok_or_else(|| ApiError::invalid("cursor is not one we issued")))
        .transpose()
}

/// The conversation `id` of the caller's org (404 otherwise).
pub async fn find(state: &AppState, org: &str, id: &str) -> ApiResult<inbox::Conversation> {
    valid_id("conversation_id", id)?;
    state
        .read(CONVERSATIONS)
        .find_one(doc! { inbox::Conversation::KEY: store::key(org, id) })
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))
}

/// Conversations by state and assignee, most recent activity first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", security(("bearer" = [])),
    params(ConversationQuery), responses((status = 200, body = ConversationPage)))]
pub async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ConversationQuery>,
) -> ApiResult<Json<ConversationPage>> {
    use store::inbox::Conversation as C;
    let mut filter = doc! { C::ORG: &caller.org };
    if let Some(s) = &query.state {
        if !["open", "assigned", "resolved"].contains(&s.as_str()) {
            return Err(ApiError::invalid("state is open, assigned or resolved"));
        }
        filter.insert(C::STATE, s);
    }
    if let Some(a) = &query.assignee {
        let who = if a == "me" {
            caller.user_id.clone()
        } else {
            a.clone()
        };
        valid_id("assignee", &who)?;
        filter.insert(C::ASSIGNEE, who);
    }
    let mut conditions = vec![filter];
    if let Some(c) = cursor_of(&query.cursor)? {
        conditions.push(c.after(C::LAST_MESSAGE_AT));
    }
    let limit = page_size(&state, query.limit)?;
    let found: Vec<inbox::Conversation> = state
        .read(CONVERSATIONS)
        .find(doc! { "$and": conditions })
        .sort(doc! { C::LAST_MESSAGE_AT: -1, C::KEY: -1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    let next = next_cursor(
        found.last().map(|c| (c.last_message_at, c.key.as_str())),
        found.len(),
        limit,
    );
    let items = with_unread(&state, &caller.org, &found).await?;
    Ok(Json(ConversationPage { items, next }))
}

/// The conversations as the API shows them, each with its unread count.
pub async fn with_unread(
    state: &AppState,
    org: &str,
    found: &[inbox::Conversation],
) -> ApiResult<Vec<Conversation>> {
    let mut items = Vec::with_capacity(found.len());
    for d in found {
        let mut conversation = conversation_of(d);
        conversation.unread_count = unread(state, org, d).await?;
        items.push(conversation);
    }
    Ok(items)
}

/// Customer messages after the conversation's `read_up_to` (the sink keeps no
/// counter, so a redelivered message can never be counted twice). One indexed count
/// (org, conversation_id, sent_at) per listed conversation.
async fn unread(state: &AppState, org: &str, conversation: &inbox::Conversation) -> ApiResult<i64> {
    if conversation.id.is_empty() {
        return Ok(0);
    }
    let mut filter = doc! {
        Stored::ORG: org,
        Stored::CONVERSATION_ID: &conversation.id,
        Stored::DIRECTION: store::to_bson(&events::event::Direction::Inbound),
        Stored::ORIGIN: { "$ne": store::to_bson(&events::event::Origin::History) },
    };
    if let Some(read) = conversation.read_up_to {
        filter.insert(Stored::SENT_AT, doc! { "$gt": read });
    }
    let count = state.read(MESSAGES).count_documents(filter).await?;
    Ok(count as i64)
}

/// The cursor after a full page: the last item's `(time, _id)`.
fn next_cursor(last: Option<(Option<DateTime>, &str)>, len: usize, limit: i64) -> Option<String> {
    if (len as i64) < limit {
        return None;
    }
    let (t, id) = last?;
    Some(
        Cursor {
            t: ms(t).unwrap_or(0),
            id: id.to_string(),
        }
        .encode(),
    )
}

/// One conversation.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}", tag = "conversations",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 200, body = Conversation), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
) -> ApiResult<Json<Conversation>> {
    let conversation = find(&state, &caller.org, &conversation_id).await?;
    let mut shown = with_unread(&state, &caller.org, &[conversation]).await?;
    Ok(Json(shown.remove(0)))
}

/// A conversation's messages, newest first; `next` pages to older ones and stays
/// stable while new messages arrive.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "conversations",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$"), PageQuery),
    responses((status = 200, body = MessagePage), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: Caller,
    Path(conversation_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<MessagePage>> {
    find(&state, &caller.org, &conversation_id).await?;
    let mut conditions =
        vec![doc! { Stored::ORG: &caller.org, Stored::CONVERSATION_ID: &conversation_id }];
    if let Some(c) = cursor_of(&query.cursor)? {
        conditions.push(c.after(Stored::SENT_AT));
    }
    let limit = page_size(&state, query.limit)?;
    let found: Vec<Stored> = state
        .read(MESSAGES)
        .find(doc! { "$and": conditions })
        .sort(doc! { Stored::SENT_AT: -1, Stored::KEY: -1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    let next = next_cursor(
        found.last().map(|m| (m.sent_at, m.key.as_str())),
        found.len(),
        limit,
    );
    Ok(Json(MessagePage {
        items: found.iter().map(message_of).collect(),
        next,
    }))
}

/// Every status a message reached, in order.
#[utoipa::path(get, path = "/v1/messages/{wamid}/statuses", tag = "conversations",
    security(("bearer" = [])), params(("wamid" = String, Path, pattern = r"^[A-Za-z0-9._@=+-]{1,128}$")),
    responses((status = 200, body = Vec<StatusChange>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn message_statuses(
    State(state): State<AppState>,
    caller: Caller,
    Path(wamid): Path<String>,
) -> ApiResult<Json<Vec<StatusChange>>> {
    super::valid_wamid("wamid", &wamid)?;
    use store::inbox::MessageStatus as S;
    let exists = state
        .read(MESSAGES)
        .find_one(doc! { Stored::KEY: store::key(&caller.org, &wamid) })
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("message"));
    }
    let found: Vec<S> = state
        .read(MESSAGE_STATUSES)
        .find(doc! { S::ORG: &caller.org, S::WAMID: &wamid })
        .sort(doc! { S::AT: 1 })
        .limit(100)
        .await?
        .try_collect()
        .await?;
    Ok(Json(
        found
            .into_iter()
            .map(|d| StatusChange {
                at_ms: ms(d.at),
                errors: d.errors.as_ref().and_then(json),
                status: d.status,
            })
            .collect(),
    ))
}

/// A short-lived URL to download a media file the media sink stored (a message's
/// `stored_media`), by its Meta media id. Served as an attachment, never inline.
#[utoipa::path(get, path = "/v1/media/{media_id}", tag = "conversations",
    security(("bearer" = [])), params(("media_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 200, body = MediaUrl), (status = 404, body = crate::error::ErrorBody)))]
pub async fn media_url(
    State(state): State<AppState>,
    caller: Caller,
    Path(media_id): Path<String>,
) -> ApiResult<Json<MediaUrl>> {
    valid_id("media_id", &media_id)?;
    let stored = state
        .read(MESSAGES)
        .find_one(doc! { Stored::ORG: &caller.org, Stored::STORED_MEDIA_ID: &media_id })
        .await?
        .and_then(|m| m.stored_media)
        .ok_or_else(|| ApiError::not_found("media"))?;
    let key = stored.key;
    // Keys are `{org}/{sha256}`: refuse anything outside the caller's prefix.
    if key.is_empty() || !key.starts_with(&format!("{}/", caller.org)) {
        return Err(ApiError::not_found("media"));
    }
    let bucket = Some(stored.bucket)
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| state.s3_bucket.clone());
    let ttl = state.config.media_url_ttl_secs;
    let presign =
        PresigningConfig::expires_in(Duration::from_secs(ttl)).map_err(ApiError::unavailable)?;
    let request = state
        .s3
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .response_content_disposition("attachment")
        .presigned(presign)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(MediaUrl {
        url: request.uri().to_string(),
        expires_in_secs: ttl,
        mime_type: Some(stored.mime_type).filter(|m| !m.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_schema_describes_the_read_model_fields() {
        let spec = serde_json::to_value(crate::openapi()).unwrap();
        let schemas = &spec["components"]["schemas"];
        let conversation = &schemas["Conversation"]["properties"];
        for field in ["window_expires_at_ms", "handled_by", "last_message_preview"] {
            assert!(conversation.get(field).is_some(), "{field}: {conversation}");
        }
        let message = &schemas["Message"]["properties"];
        for field in ["edited_at_ms", "deleted_at_ms", "versions", "reactions"] {
            assert!(message.get(field).is_some(), "{field}: {message}");
        }
        let origin = message["origin"]["description"].as_str().unwrap();
        assert!(!origin.contains("cloud_api"), "{origin}");
    }

    #[test]
    fn handled_by_follows_state_and_assignee() {
        assert_eq!(handled_by(Some("assigned"), Some("ann")), HandledBy::Agent);
        assert_eq!(
            handled_by(Some("assigned"), Some("business_app")),
            HandledBy::BusinessApp
        );
        assert_eq!(handled_by(Some("open"), None), HandledBy::Nobody);
        assert_eq!(handled_by(Some("resolved"), Some("ann")), HandledBy::Nobody);
        assert_eq!(handled_by(None, None), HandledBy::Nobody);
    }

    #[test]
    fn a_deleted_message_shows_no_content_and_an_edited_one_its_newest_version() {
        use mongodb::bson::Bson;
        let at = |s: i64| DateTime::from_millis(s * 1000);
        let mut d = doc! {
            "id": "w", "type": "text", "preview": "first", "sent_at": at(10), "media": { "id": "m" },
            "edits": [
                { "id": "e2", "at": at(30), "type": "text", "preview": "third" },
                { "id": "e1", "at": at(20), "type": "text", "preview": "second" },
            ],
            "edited_at": at(30),
            "reactions": { "222": { "emoji": "👍", "at": at(40) }, "business": { "emoji": Bson::Null, "at": at(41) } },
        };
        let read = |d: &mongodb::bson::Document| -> Stored {
            mongodb::bson::from_document(d.clone()).unwrap()
        };
        let m = message_of(&read(&d));
        assert_eq!(m.preview.as_deref(), Some("third"));
        let earlier: Vec<_> = m
            .versions
            .iter()
            .map(|v| v.preview.clone().unwrap())
            .collect();
        assert_eq!(earlier, ["first", "second"]);
        assert_eq!(m.edited_at_ms, Some(30_000));
        assert_eq!(m.reactions.len(), 1, "a removed reaction is not shown");
        assert_eq!(m.reactions[0].reactor, "222");
        d.insert("deleted_at", at(50));
        let m = message_of(&read(&d));
        assert_eq!((m.preview, m.media), (None, None));
        assert!(m.versions.is_empty());
        assert_eq!(m.deleted_at_ms, Some(50_000));
    }
}
