//! The normalized event on `whatsapp.events`: one per message, status, echo, contact
//! sync item, history chunk or unmodelled change, whatever webhook it came in.
//!
//! Every event carries a deterministic `id` (see [`crate::ids`]), so a webhook Meta
//! redelivers yields the same ids and every sink can upsert by them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::webhook::ApiError;

/// An event about one business number, keyed on Kafka by its `phone_number_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WhatsAppEvent {
    /// Deterministic id: the wamid for messages, `wamid:status` for statuses, a
    /// content hash for contact-sync, history and unmodelled items.
    pub id: String,
    /// The org that owns the business number.
    pub org: String,
    /// The business number (Meta's `phone_number_id`): the Kafka key.
    pub phone_number_id: String,
    #[serde(default)]
    pub display_phone_number: String,
    /// The WhatsApp Business Account id.
    #[serde(default)]
    pub waba_id: String,
    /// When ingest received the webhook (ms since the epoch). Not part of the identity.
    pub received_at_ms: i64,
    #[serde(flatten)]
    pub body: EventBody,
}

impl WhatsAppEvent {
    /// `{org}:{id}`: ids are unique within an org, not across orgs (two businesses on
    /// Coexist messaging each other see the same wamid), so every dedup keys on this.
    pub fn scoped_id(&self) -> String {
        format!("{}:{}", self.org, self.id)
    }

    /// The conversation this event belongs to, if any (never empty).
    pub fn conversation_id(&self) -> Option<&str> {
        let id = match &self.body {
            EventBody::Message(m) => &m.conversation_id,
            EventBody::Edit(c) | EventBody::Revoke(c) => &c.conversation_id,
            EventBody::Reaction(r) => &r.conversation_id,
            EventBody::Status(s) => &s.conversation_id,
            EventBody::ContactSync(_) | EventBody::HistoryProgress(_) | EventBody::Unhandled(_) => {
                return None;
            }
        };
        Some(id.as_str()).filter(|id| !id.is_empty())
    }

    /// The customer this event is about, if any.
    pub fn contact_wa_id(&self) -> Option<&str> {
        match &self.body {
            EventBody::Message(m) => Some(&m.contact_wa_id),
            EventBody::Status(s) => Some(&s.recipient_id),
            EventBody::Edit(c) | EventBody::Revoke(c) => Some(&c.contact_wa_id),
            EventBody::Reaction(r) => Some(&r.contact_wa_id),
            EventBody::ContactSync(c) => Some(&c.wa_id),
            EventBody::HistoryProgress(_) | EventBody::Unhandled(_) => None,
        }
    }
}

/// What happened, by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Message(MessageEvent),
    /// An earlier message's content replaced (Meta's `edit`): not a new message.
    Edit(MessageChangeEvent),
    /// An earlier message deleted for everyone (Meta's `revoke`): not a new message.
    Revoke(MessageChangeEvent),
    /// A reaction put on (or, with no emoji, taken off) an earlier message.
    Reaction(ReactionEvent),
    Status(StatusEvent),
    ContactSync(ContactSyncEvent),
    HistoryProgress(HistoryProgressEvent),
    Unhandled(UnhandledEvent),
}

impl EventBody {
    /// The `kind` tag, as serialized.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message(_) => "message",
            Self::Edit(_) => "edit",
            Self::Revoke(_) => "revoke",
            Self::Reaction(_) => "reaction",
            Self::Status(_) => "status",
            Self::ContactSync(_) => "contact_sync",
            Self::HistoryProgress(_) => "history_progress",
            Self::Unhandled(_) => "unhandled",
        }
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the customer to the business.
    Inbound,
    /// From the business to the customer.
    Outbound,
}

/// Where a message came from: this decides whether it is routed and pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A customer wrote to the business (`messages` webhook).
    Customer,
    /// Someone replied from the WhatsApp Business app (`smb_message_echoes`).
    BusinessApp,
    /// A past message imported by the coexistence history sync: never routed or pushed.
    History,
    /// Sent by Coexist through the Cloud API.
    Api,
}

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageEvent {
    pub wamid: String,
    /// `{phone_number_id}-{contact_wa_id}`: one thread per customer and business number.
    /// Empty only for a history media follow-up that names no customer (it completes
    /// a message already stored under the same wamid).
    pub conversation_id: String,
    /// The customer's wa_id (empty in the same case).
    pub contact_wa_id: String,
    /// The customer's WhatsApp profile name, when Meta sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    pub direction: Direction,
    pub origin: Origin,
    /// Unix seconds, from Meta's `timestamp`.
    pub sent_at: i64,
    /// Meta's `type`: text, image, ..., or a type we do not know yet.
    pub message_type: String,
    /// A short text for lists and pushes (text body, caption, emoji, reply title, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The wamid this message replies or reacts to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// For history items: the status the message had in the Business app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_status: Option<String>,
    /// Errors Meta reported next to the message (the change value's `errors` and the
    /// message's own), kept with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    /// The message object exactly as Meta sent it, unknown fields included.
    pub raw: Value,
}

/// An edit or a revoke of an earlier message. It changes that message (`wamid`), so
/// every reader applies it to the original instead of showing a new message; one that
/// arrives before its original is held until the original lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageChangeEvent {
    /// The message changed: Meta's `original_message_id`.
    pub wamid: String,
    /// The wamid of the edit or revoke itself (the event's id).
    pub change_wamid: String,
    /// As on [`MessageEvent`]: the original's conversation.
    pub conversation_id: String,
    pub contact_wa_id: String,
    /// Who changed it: the customer (inbound) or the business (outbound).
    pub direction: Direction,
    pub origin: Origin,
    /// Unix seconds, from Meta's `timestamp`: orders the versions of a message.
    pub sent_at: i64,
    /// An edit's new content: its type, preview and media (`None` on a revoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// The edit or revoke exactly as Meta sent it.
    pub raw: Value,
}

/// A reaction to an earlier message: one per reactor per message, the newest wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReactionEvent {
    /// The message reacted to.
    pub wamid: String,
    /// The wamid of the reaction message itself (the event's id).
    pub change_wamid: String,
    pub conversation_id: String,
    pub contact_wa_id: String,
    pub direction: Direction,
    pub origin: Origin,
    /// Who reacted: the customer's wa_id, or [`BUSINESS_REACTOR`].
    pub reactor: String,
    /// The emoji; `None` when the reaction was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// Unix seconds, from Meta's `timestamp`: the newest reaction of a reactor wins.
    pub sent_at: i64,
    pub raw: Value,
}

/// The reactor of reactions the business sent (from the Business app or the API).
pub const BUSINESS_REACTOR: &str = "business";

/// Meta's handle on a media file; the bytes are fetched by the media sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MediaRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// A delivery status Meta reported for an outbound message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusEvent {
    pub wamid: String,
    pub conversation_id: String,
    /// Meta's status string: sent, delivered, read, failed, or one added later.
    pub status: String,
    /// The customer's wa_id.
    pub recipient_id: String,
    /// Unix seconds, from Meta's `timestamp`.
    pub at: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    /// The status object exactly as Meta sent it (conversation, pricing, ...).
    pub raw: Value,
}

/// A contact added, edited or removed in the WhatsApp Business app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContactSyncEvent {
    pub action: ContactAction,
    /// The contact's number, digits only (their wa_id).
    pub wa_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// When the Business app made the change (Unix seconds, the item's own
    /// `metadata.timestamp`; 0 when absent): a change older than the contact's last
    /// one is stale, whatever order the webhooks arrive in.
    #[serde(default)]
    pub changed_at: i64,
    pub raw: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactAction {
    /// Meta's `add` (also sent for edits).
    Upsert,
    /// Meta's `remove`.
    Remove,
}

/// One chunk of the coexistence history sync: where it stands, for admins to follow.
/// The chunk's messages are separate `message` events with origin `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryProgressEvent {
    pub phase: i64,
    pub chunk_order: i64,
    /// Percent of the whole sync, 0 to 100.
    pub progress: i64,
    pub threads: u32,
    pub messages: u32,
    /// Set when the business declined sharing history, or it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
}

/// A change whose `field` we do not model: carried whole so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnhandledEvent {
    pub field: String,
    pub raw: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_the_serialized_tag() {
        let body = EventBody::Unhandled(UnhandledEvent {
            field: "x".into(),
            raw: Value::Null,
        });
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["kind"], body.kind());
        let body = EventBody::HistoryProgress(HistoryProgressEvent {
            phase: 0,
            chunk_order: 0,
            progress: 0,
            threads: 0,
            messages: 0,
            errors: vec![],
        });
        assert_eq!(serde_json::to_value(&body).unwrap()["kind"], body.kind());
    }
}
