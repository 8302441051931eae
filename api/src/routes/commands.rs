//! Writes, as commands on Kafka: send a message, mark read, claim / transfer /
//! resolve / reopen / force-assign / note. Each is validated here, answered
//! `202 Accepted` with its command id; the outcome reaches the issuer's MQTT inbox and
//! `GET /v1/commands/{command_id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::delivery::OutboundMessage;
use events::inbox::{CommandAction, ConversationCommand};
use events::outbound::{self, Media, MessageBody, MessagePayload, OutboundPayload};
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{Accepted, accepted, valid_id};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::idempotency::{self, Claim, IdempotencyKey};
use crate::state::AppState;

/// What to send. `reply_to` quotes an earlier message of the conversation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SendRequest {
    Text {
        #[schema(pattern = r"\S", max_length = 4096)]
        body: String,
        reply_to: Option<String>,
        preview_url: Option<bool>,
    },
    /// An approved template (the only kind allowed outside the 24-hour window).
    Template {
        name: String,
        language: String,
        #[schema(value_type = Option<Vec<Object>>)]
        components: Option<Vec<Value>>,
        reply_to: Option<String>,
    },
    /// Image, video, audio, document or sticker: by Meta media id, by https link, or
    /// by the `s3_key` `POST /v1/media` answered (exactly one of the three).
    Media {
        kind: MediaKind,
        id: Option<String>,
        link: Option<String>,
        s3_key: Option<String>,
        caption: Option<String>,
        filename: Option<String>,
        reply_to: Option<String>,
    },
    Reaction {
        message_id: String,
        /// One emoji; empty removes the reaction.
        emoji: String,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

/// What to send for `req` (the whatsapp sink adds the envelope), or why it is not
/// sendable.
pub fn outbound_payload(req: &SendRequest) -> Result<OutboundPayload, String> {
    let (body, reply_to) = match req {
        SendRequest::Text {
            body: text,
            reply_to,
            preview_url,
        } => {
            if text.trim().is_empty() || text.chars().count() > 4096 {
                return Err("text body must be 1-4096 characters".into());
            }
            let text = outbound::Text {
                body: text.clone(),
                preview_url: preview_url.unwrap_or(false),
            };
            (MessageBody::Text { text }, reply_to)
        }
        SendRequest::Template {
            name,
            language,
            components,
            reply_to,
        } => {
            if name.is_empty() || name.len() > 512 || language.is_empty() || language.len() > 16 {
                return Err("template needs a name and a language code".into());
            }
            let OutboundPayload::Message(m) =
                OutboundPayload::template(name, language, components.clone())
            else {
                unreachable!("a template is a message")
            };
            (m.body, reply_to)
        }
        SendRequest::Media {
            kind,
            id,
            link,
            s3_key,
            caption,
            filename,
            reply_to,
        } => {
            let mut media = match (id, link, s3_key) {
                (Some(id), None, None) if !id.is_empty() && id.len() <= 128 => Media {
                    id: Some(id.clone()),
                    ..Media::default()
                },
                (None, Some(link), None) if link.starts_with("https://") && link.len() <= 2048 => {
                    Media {
                        link: Some(link.clone()),
                        ..Media::default()
                    }
                }
                (None, None, Some(key)) if !key.is_empty() && key.len() <= 512 => Media {
                    s3_key: Some(key.clone()),
                    ..Media::default()
                },
                _ => {
                    return Err(
                        "media needs exactly one of id, an https link or an uploaded s3_key".into(),
                    );
                }
            };
            if let Some(caption) = caption {
                if matches!(kind, MediaKind::Audio | MediaKind::Sticker) {
                    return Err("audio and stickers take no caption".into());
                }
                if caption.chars().count() > 1024 {
                    return Err("caption is at most 1024 characters".into());
                }
                media.caption = Some(caption.clone());
            }
            if let Some(filename) = filename {
                if *kind != MediaKind::Document {
                    return Err("only documents have a filename".into());
                }
                media.filename = Some(filename.clone());
            }
            let body = match kind {
                MediaKind::Image => MessageBody::Image { image: media },
                MediaKind::Video => MessageBody::Video { video: media },
                MediaKind::Audio => MessageBody::Audio { audio: media },
                MediaKind::Document => MessageBody::Document { document: media },
                MediaKind::Sticker => MessageBody::Sticker { sticker: media },
            };
            (body, reply_to)
        }
        SendRequest::Reaction { message_id, emoji } => {
            if message_id.is_empty() || emoji.chars().count() > 8 {
                return Err("a reaction names a message and one emoji".into());
            }
            let reaction = outbound::Reaction {
                message_id: message_id.clone(),
                emoji: emoji.clone(),
            };
            (MessageBody::Reaction { reaction }, &None)
        }
    };
    Ok(OutboundPayload::Message(MessagePayload {
        body,
        context: reply_to.as_ref().map(|wamid| outbound::Context {
            message_id: wamid.clone(),
        }),
    }))
}

/// Send a message in a conversation.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/messages", tag = "commands",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (1-128 visible ASCII) answers the first command id and sends nothing again; the same key with another request is 422.")), request_body = SendRequest,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn send_message(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    Path(conversation_id): Path<String>,
    Body(req): Body<SendRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let conversation = super::conversations::find(&state, &caller.org, &conversation_id).await?;
    let (number, to) = parties(&conversation)?;
    let payload = outbound_payload(&req).map_err(ApiError::invalid)?;
    if let SendRequest::Media {
        s3_key: Some(key), ..
    } = &req
    {
        super::upload::check_key(&state, &caller.org, key).await?;
    }
    outbound(
        &state,
        &caller,
        &key,
        &conversation_id,
        &number,
        &to,
        payload,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MarkRead {
    /// The newest inbound message read.
    #[schema(pattern = r"^[A-Za-z0-9._@=+-]{1,128}$")]
    pub message_id: String,
}

/// Mark a conversation read up to a message (blue ticks for the customer).
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/read", tag = "commands",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (1-128 visible ASCII) answers the first command id and sends nothing again; the same key with another request is 422.")), request_body = MarkRead,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    Path(conversation_id): Path<String>,
    Body(req): Body<MarkRead>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let conversation = super::conversations::find(&state, &caller.org, &conversation_id).await?;
    super::valid_wamid("message_id", &req.message_id)?;
    use store::inbox::Message as M;
    let message = state
        .read(store::inbox::MESSAGES)
        .find_one(doc! {
            M::KEY: store::key(&caller.org, &req.message_id),
            M::CONVERSATION_ID: &conversation_id,
        })
        .await?;
    if message.is_none() {
        return Err(ApiError::not_found("message"));
    }
    let (number, to) = parties(&conversation)?;
    let payload = OutboundPayload::read(&req.message_id);
    outbound(
        &state,
        &caller,
        &key,
        &conversation_id,
        &number,
        &to,
        payload,
    )
    .await
}

fn parties(conversation: &store::inbox::Conversation) -> ApiResult<(String, String)> {
    match (
        conversation.phone_number_id.clone(),
        conversation.contact_wa_id.clone(),
    ) {
        (Some(n), Some(c)) if !n.is_empty() && !c.is_empty() => Ok((n, c)),
        _ => Err(ApiError::conflict(
            "the conversation has no customer to write to",
        )),
    }
}

async fn outbound(
    state: &AppState,
    caller: &Caller,
    key: &IdempotencyKey,
    conversation_id: &str,
    number: &str,
    to: &str,
    payload: OutboundPayload,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let payload = payload.to_value();
    let fingerprint = idempotency::fingerprint(&format!("outbound:{conversation_id}"), &payload);
    let reservation = match idempotency::claim(state, caller, key, &fingerprint).await? {
        Claim::Replay(id) => return Ok(accepted(id)),
        Claim::Fresh(reservation) => reservation,
    };
    let id = reservation.command_id.clone();
    let message = OutboundMessage {
        id: id.clone(),
        org: caller.org.clone(),
        phone_number_id: number.to_string(),
        conversation_id: conversation_id.to_string(),
        to: to.to_string(),
        sent_by: caller.user_id.clone(),
        at_ms: crate::now_ms(),
        payload,
    };
    if let Err(err) = state
        .publisher
        .send_json(events::topics::MESSAGES_OUTBOUND, number, &message, vec![])
        .await
    {
        reservation.release(state).await;
        return Err(err.into());
    }
    Ok(accepted(id))
}

/// The body of a conversation command: the OpenAPI shape of [`CommandAction`]'s JSON
/// (tagged by `action`), so a generated client cannot build a note without text or
/// a force-assign without an agent.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
#[serde(tag = "action")]
pub enum CommandRequest {
    Claim,
    /// Absent `to_agent`: back to the queue.
    Transfer {
        #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
        to_agent: Option<String>,
    },
    Resolve,
    Reopen,
    /// Admins only.
    ForceAssign {
        #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
        to_agent: String,
    },
    Note {
        #[schema(pattern = r"\S", min_length = 1, max_length = 4000)]
        text: String,
    },
}

/// Claim, transfer, resolve, reopen, force-assign or annotate a conversation.
#[utoipa::path(post, path = "/v1/conversations/{conversation_id}/commands", tag = "commands",
    security(("bearer" = [])), params(("conversation_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$"), ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key (1-128 visible ASCII) answers the first command id and sends nothing again; the same key with another request is 422.")), request_body = CommandRequest,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn conversation_command(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyKey,
    Path(conversation_id): Path<String>,
    Body(action): Body<CommandAction>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let conversation = super::conversations::find(&state, &caller.org, &conversation_id).await?;
    let to_agent = match &action {
        CommandAction::ForceAssign { to_agent } => {
            if !caller.is_admin() {
                return Err(ApiError::forbidden());
            }
            Some(to_agent)
        }
        CommandAction::Transfer { to_agent } => to_agent.as_ref(),
        CommandAction::Note { text } => {
            if text.trim().is_empty() || text.chars().count() > 4000 {
                return Err(ApiError::invalid("a note is 1-4000 characters"));
            }
            None
        }
        CommandAction::Claim | CommandAction::Resolve | CommandAction::Reopen => None,
    };
    if let Some(agent) = to_agent {
        valid_id("to_agent", agent)?;
        let found = super::agents::find(&state, &caller.org, agent).await?;
        if found.is_none_or(|a| !a.active) {
            return Err(ApiError::not_found("agent"));
        }
    }
    let number = conversation
        .phone_number_id
        .ok_or_else(|| ApiError::conflict("the conversation has no business number"))?;
    let fingerprint = idempotency::fingerprint(
        &format!("command:{conversation_id}"),
        &serde_json::to_value(&action).map_err(ApiError::unavailable)?,
    );
    let reservation = match idempotency::claim(&state, &caller, &key, &fingerprint).await? {
        Claim::Replay(id) => return Ok(accepted(id)),
        Claim::Fresh(reservation) => reservation,
    };
    let id = reservation.command_id.clone();
    let command = ConversationCommand {
        id: id.clone(),
        org: caller.org.clone(),
        phone_number_id: number.clone(),
        conversation_id,
        issued_by: caller.user_id.clone(),
        at_ms: crate::now_ms(),
        action,
    };
    if let Err(err) = state
        .publisher
        .send_json(
            events::topics::CONVERSATION_COMMANDS,
            &number,
            &command,
            vec![],
        )
        .await
    {
        reservation.release(&state).await;
        return Err(err.into());
    }
    Ok(accepted(id))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommandResult {
    pub command_id: String,
    pub kind: Option<String>,
    pub accepted: bool,
    pub reason: Option<String>,
    pub at_ms: Option<i64>,
}

/// The outcome of a command (the same as arrives on MQTT). 404 until it is known.
#[utoipa::path(get, path = "/v1/commands/{command_id}", tag = "commands",
    security(("bearer" = [])), params(("command_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 200, body = CommandResult), (status = 404, body = crate::error::ErrorBody)))]
pub async fn command_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(command_id): Path<String>,
) -> ApiResult<Json<CommandResult>> {
    valid_id("command_id", &command_id)?;
    let result = state
        .read(store::inbox::COMMAND_RESULTS)
        .find_one(doc! { store::KEY_FIELD: store::key(&caller.org, &command_id) })
        .await?
        .ok_or_else(|| ApiError::not_found("command result (yet)"))?;
    Ok(Json(CommandResult {
        command_id,
        kind: result.kind,
        accepted: result.accepted,
        reason: result.reason,
        at_ms: result.at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payloads_follow_the_graph_api() {
        let text = SendRequest::Text {
            body: "hi".into(),
            reply_to: Some("wamid.X".into()),
            preview_url: None,
        };
        assert_eq!(
            outbound_payload(&text).unwrap().to_value(),
            json!({"type":"text","text":{"body":"hi","preview_url":false},
                   "context":{"message_id":"wamid.X"}})
        );
        let doc = SendRequest::Media {
            kind: MediaKind::Document,
            id: None,
            link: Some("https://x.test/a.pdf".into()),
            s3_key: None,
            caption: Some("c".into()),
            filename: Some("a.pdf".into()),
            reply_to: None,
        };
        let body = outbound_payload(&doc).unwrap().to_value();
        assert_eq!(body["type"], "document");
        assert_eq!(body["document"]["filename"], "a.pdf");
        let reaction = SendRequest::Reaction {
            message_id: "wamid.Y".into(),
            emoji: "👍".into(),
        };
        assert_eq!(
            outbound_payload(&reaction).unwrap().to_value()["reaction"]["emoji"],
            "👍"
        );
    }

    #[test]
    fn unsendable_requests_say_why() {
        let empty = SendRequest::Text {
            body: " ".into(),
            reply_to: None,
            preview_url: None,
        };
        assert!(outbound_payload(&empty).is_err());
        let both = SendRequest::Media {
            kind: MediaKind::Image,
            id: Some("1".into()),
            link: Some("https://x".into()),
            s3_key: None,
            caption: None,
            filename: None,
            reply_to: None,
        };
        assert!(outbound_payload(&both).is_err());
        let audio_caption = SendRequest::Media {
            kind: MediaKind::Audio,
            id: Some("1".into()),
            link: None,
            s3_key: None,
            caption: Some("no".into()),
            filename: None,
            reply_to: None,
        };
        assert!(outbound_payload(&audio_caption).is_err());
    }
}
