//! The inbox: messages, their status history, contacts, conversations, history
//! syncs and command results. The mongo sink writes them from `whatsapp.events` and
//! the inbox topics; the API reads them.
//!
//! Documents are written piecewise (an edit, a status or a reaction may create a
//! message before the message itself arrives), so almost every field is optional and
//! a missing one reads as its default.

use std::collections::BTreeMap;

use bson::{Bson, DateTime, doc};
use events::event::{MediaRef, Origin};
use events::inbox::ConversationState;
use events::webhook::ApiError;
use serde::{Deserialize, Serialize};

use crate::{Collection, Index, fields};

pub const MESSAGES: Collection<Message> = Collection::new("messages");
pub const MESSAGE_STATUSES: Collection<MessageStatus> = Collection::new("message_statuses");
pub const CONTACTS: Collection<Contact> = Collection::new("contacts");
pub const CONVERSATIONS: Collection<Conversation> = Collection::new("conversations");
pub const HISTORY_SYNCS: Collection<HistorySync> = Collection::new("history_syncs");
pub const COMMAND_RESULTS: Collection<CommandResult> = Collection::new("command_results");

/// A message (`_id` `{org}:{wamid}`, or `{org}:outbound:{command}` for a failed
/// send, `{org}:note:{command}` for a note).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    /// Meta's wamid (or the `outbound:`/`note:` id).
    pub id: String,
    pub phone_number_id: Option<String>,
    pub conversation_id: Option<String>,
    pub contact_wa_id: Option<String>,
    /// `inbound`, `outbound`, or `internal` for a note.
    pub direction: Option<String>,
    pub origin: Option<Origin>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// The original text (or a note's whole text).
    pub preview: Option<String>,
    pub reply_to: Option<String>,
    pub media: Option<MediaRef>,
    pub history_status: Option<String>,
    pub sent_at: Option<DateTime>,
    /// The webhook's message, for audit; never shown.
    pub raw: Option<Bson>,
    /// Errors Meta reported with the message.
    pub errors: Option<Vec<ApiError>>,
    pub first_seen_at: Option<DateTime>,
    /// Every edit, in any order ([`current_content`] picks the newest).
    pub edits: Vec<Edit>,
    pub edited_at: Option<DateTime>,
    pub deleted_at: Option<DateTime>,
    pub revokes: Vec<Revoke>,
    /// One reaction per reactor, under [`reaction_field`] of the reactor.
    pub reactions: BTreeMap<String, Reaction>,
    /// The furthest delivery status (`events::DeliveryStatus::as_str`).
    pub status: Option<String>,
    /// Its rank (`DeliveryStatus as i32`): statuses only move to a higher one.
    pub status_rank: Option<i32>,
    pub status_at: Option<DateTime>,
    pub error: Option<ApiError>,
    /// The agent who sent it through the API, or wrote the note.
    pub sent_by: Option<String>,
    pub command_id: Option<String>,
    /// The copy the media sink stored in S3 (`media.stored`).
    pub stored_media: Option<StoredMedia>,
}

fields!(Message {
    KEY = "_id", ORG = "org", ID = "id", PHONE_NUMBER_ID = "phone_number_id",
    CONVERSATION_ID = "conversation_id", CONTACT_WA_ID = "contact_wa_id",
    DIRECTION = "direction", ORIGIN = "origin", TYPE = "type", PREVIEW = "preview",
    REPLY_TO = "reply_to", MEDIA = "media", HISTORY_STATUS = "history_status",
    SENT_AT = "sent_at", RAW = "raw", ERRORS = "errors", FIRST_SEEN_AT = "first_seen_at",
    EDITS = "edits", EDITED_AT = "edited_at", DELETED_AT = "deleted_at",
    REVOKES = "revokes", REACTIONS = "reactions", STATUS = "status",
    STATUS_RANK = "status_rank", STATUS_AT = "status_at", ERROR = "error",
    SENT_BY = "sent_by", COMMAND_ID = "command_id", STORED_MEDIA = "stored_media",
} paths {
    STORED_MEDIA_ID = "stored_media.media_id",
});

/// `direction` of a note.
pub const INTERNAL: &str = "internal";

/// An edit: a version kept beside the original.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Edit {
    /// The edit's own wamid.
    pub id: String,
    pub at: Option<DateTime>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    pub preview: Option<String>,
    pub media: Option<MediaRef>,
    pub origin: Option<Origin>,
}

fields!(Edit { ID = "id", AT = "at", TYPE = "type", PREVIEW = "preview", MEDIA = "media", ORIGIN = "origin" });

/// A revoke of the message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Revoke {
    pub id: String,
    pub origin: Option<Origin>,
}

fields!(Revoke { ID = "id", ORIGIN = "origin" });

/// A reactor's reaction; `emoji` is `None` once removed (its time stays, so an
/// older reaction cannot come back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reaction {
    pub emoji: Option<String>,
    pub at: Option<DateTime>,
    pub id: String,
    pub origin: Option<Origin>,
}

fields!(Reaction { EMOJI = "emoji", AT = "at", ID = "id", ORIGIN = "origin" });

/// Where the media sink stored a message's media.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredMedia {
    pub media_id: String,
    pub bucket: String,
    /// `{org}/{sha256}`.
    pub key: String,
    pub mime_type: String,
    pub bytes: i64,
}

fields!(StoredMedia { MEDIA_ID = "media_id", BUCKET = "bucket", KEY = "key", MIME_TYPE = "mime_type", BYTES = "bytes" });

/// A reactor as a field name under `reactions`: wa_ids are digits; anything else
/// loses what MongoDB would read as a path (`.`) or an operator (`$`).
pub fn reaction_field(reactor: &str) -> String {
    format!(
        "{}.{}",
        Message::REACTIONS,
        reactor.replace(['.', '$'], "_")
    )
}

/// What a message shows now, as `(preview, type)`: the newest edit (by its time,
/// then id), else the original; `None` when it was deleted. Pure over the set of
/// versions, so the order they arrived in does not matter.
pub fn current_content(message: &Message) -> Option<(Option<String>, Option<String>)> {
    if message.deleted_at.is_some() {
        return None;
    }
    let newest = message
        .edits
        .iter()
        .max_by_key(|e| (e.at.map_or(0, |d| d.timestamp_millis()), e.id.as_str()));
    Some(match newest {
        Some(edit) => (edit.preview.clone(), edit.message_type.clone()),
        None => (message.preview.clone(), message.message_type.clone()),
    })
}

/// One status a message reached (`_id` `{org}:{event id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageStatus {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub wamid: String,
    /// Meta's word for it (`sent`, `delivered`, ...).
    pub status: String,
    pub at: Option<DateTime>,
    pub errors: Option<Vec<ApiError>>,
    pub raw: Option<Bson>,
}

fields!(MessageStatus { KEY = "_id", ORG = "org", WAMID = "wamid", STATUS = "status", AT = "at", ERRORS = "errors", RAW = "raw" });

/// A customer of the org (`_id` `{org}:{wa_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contact {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub wa_id: String,
    pub created_at: Option<DateTime>,
    pub last_message_at: Option<DateTime>,
    /// The name in the customer's WhatsApp profile.
    pub profile_name: Option<String>,
    /// Set on a record that only remembers a Business-app remove of a number that
    /// never wrote: not a contact, and never shown, until the customer writes or the
    /// Business app adds them again.
    pub sync_only: Option<bool>,
    pub in_business_app: Option<bool>,
    /// When and how the Business app last changed this contact.
    pub business_app: Option<BusinessAppChange>,
    pub full_name: Option<String>,
    pub first_name: Option<String>,
}

fields!(Contact {
    KEY = "_id", ORG = "org", WA_ID = "wa_id", CREATED_AT = "created_at",
    LAST_MESSAGE_AT = "last_message_at", PROFILE_NAME = "profile_name",
    SYNC_ONLY = "sync_only", IN_BUSINESS_APP = "in_business_app",
    BUSINESS_APP = "business_app", FULL_NAME = "full_name", FIRST_NAME = "first_name",
} paths {
    BUSINESS_APP_CHANGED_AT = "business_app.changed_at",
});

/// Marks a contacts document that is no contact (see [`Contact::sync_only`]).
pub const SYNC_ONLY: &str = Contact::SYNC_ONLY;

/// The Business app's last change of a contact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BusinessAppChange {
    /// `add` or `remove`.
    pub action: String,
    pub changed_at: Option<DateTime>,
}

fields!(BusinessAppChange { ACTION = "action", CHANGED_AT = "changed_at" });

/// A conversation: one customer and one business number (`_id`
/// `{org}:{phone_number_id}-{wa_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub id: String,
    pub phone_number_id: Option<String>,
    pub contact_wa_id: Option<String>,
    pub state: Option<ConversationState>,
    pub created_at: Option<DateTime>,
    /// Any message's time, the order of the inbox.
    pub last_message_at: Option<DateTime>,
    /// The customer's last live message: the 24-hour window's start.
    pub last_inbound_at: Option<DateTime>,
    /// What the conversation shows as its preview.
    pub last_message: Option<LastMessage>,
    pub assignee: Option<String>,
    /// The assignment shown: its time and offset, so only a newer one replaces it.
    pub assignment_at_ms: Option<i64>,
    pub assignment_offset: Option<i64>,
    /// The latest mark as read: inbound messages after it are unread.
    pub read_up_to: Option<DateTime>,
}

fields!(Conversation {
    KEY = "_id", ORG = "org", ID = "id", PHONE_NUMBER_ID = "phone_number_id",
    CONTACT_WA_ID = "contact_wa_id", STATE = "state", CREATED_AT = "created_at",
    LAST_MESSAGE_AT = "last_message_at", LAST_INBOUND_AT = "last_inbound_at",
    LAST_MESSAGE = "last_message", ASSIGNEE = "assignee",
    ASSIGNMENT_AT_MS = "assignment_at_ms", ASSIGNMENT_OFFSET = "assignment_offset",
    READ_UP_TO = "read_up_to",
} paths {
    // The last message shown as the preview (`last_message`'s fields).
    PREVIEW_ID = "last_message.id",
    PREVIEW_AT = "last_message.at",
    PREVIEW_TEXT = "last_message.preview",
    PREVIEW_VERSION_AT = "last_message.version_at",
    PREVIEW_DELETED = "last_message.deleted",
});

/// A conversation's last message, for its preview.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastMessage {
    pub id: String,
    pub at: Option<DateTime>,
    /// The text as edited, or `[type]`; `None` once deleted.
    pub preview: Option<String>,
    /// The time of the version shown (an edit's), so only a newer edit replaces it.
    pub version_at: Option<DateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
}

fields!(LastMessage { ID = "id", AT = "at", PREVIEW = "preview", VERSION_AT = "version_at", DELETED = "deleted" });

/// The coexistence history sync of a business number (`_id`
/// `{org}:{phone_number_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistorySync {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub phone_number_id: String,
    /// Percent, as Meta reports it.
    pub progress: Option<i64>,
    pub updated_at: Option<DateTime>,
    /// The latest phase (0, 1, 2: the day ranges).
    pub phase: Option<i64>,
    /// Chunks received, as `phase:chunk_order`.
    pub chunks: Vec<String>,
    pub status: Option<SyncStatus>,
    /// Meta's error when declined or failed.
    pub error: Option<SyncError>,
    pub finished_at: Option<DateTime>,
}

fields!(HistorySync {
    KEY = "_id", ORG = "org", PHONE_NUMBER_ID = "phone_number_id", PROGRESS = "progress",
    UPDATED_AT = "updated_at", PHASE = "phase", CHUNKS = "chunks", STATUS = "status",
    ERROR = "error", FINISHED_AT = "finished_at",
});

/// How far a history sync is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    InProgress,
    Completed,
    /// The business declined sharing its history.
    Declined,
    Failed,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Declined => "declined",
            Self::Failed => "failed",
        }
    }
}

/// Meta's code and words when a sync is declined or fails.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncError {
    pub code: i64,
    pub title: Option<String>,
    pub message: Option<String>,
}

fields!(SyncError { CODE = "code", TITLE = "title", MESSAGE = "message" });

/// A command's first outcome, for polling (`_id` `{org}:{command id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandResult {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub command_id: String,
    /// `conversation`, `send` or `read`.
    pub kind: Option<String>,
    pub accepted: bool,
    pub reason: Option<String>,
    pub issued_by: Option<String>,
    pub conversation_id: Option<String>,
    /// The conversation's state after a conversation command.
    pub state: Option<ConversationState>,
    pub assignee: Option<String>,
    pub wamid: Option<String>,
    pub at_ms: Option<i64>,
}

fields!(CommandResult {
    KEY = "_id", ORG = "org", COMMAND_ID = "command_id", KIND = "kind",
    ACCEPTED = "accepted", REASON = "reason", ISSUED_BY = "issued_by",
    CONVERSATION_ID = "conversation_id", STATE = "state", ASSIGNEE = "assignee",
    WAMID = "wamid", AT_MS = "at_ms",
});

/// The inbox's indexes: each serves a query of the API.
pub fn indexes() -> Vec<Index> {
    let m = MESSAGES.name;
    let c = CONVERSATIONS.name;
    vec![
        Index::unique(m, doc! { Message::ORG: 1, Message::ID: 1 }),
        // A conversation's timeline, newest first; its unread count.
        Index::new(
            m,
            doc! { Message::ORG: 1, Message::CONVERSATION_ID: 1, Message::SENT_AT: -1 },
        ),
        // `GET /v1/media/{media_id}`: the message whose media the sink stored.
        Index::new(m, doc! { Message::ORG: 1, Message::STORED_MEDIA_ID: 1 }),
        Index::unique(CONTACTS.name, doc! { Contact::ORG: 1, Contact::WA_ID: 1 }),
        Index::new(
            CONTACTS.name,
            doc! { Contact::ORG: 1, Contact::PROFILE_NAME: 1 },
        ),
        Index::unique(c, doc! { Conversation::ORG: 1, Conversation::ID: 1 }),
        Index::new(
            c,
            doc! { Conversation::ORG: 1, Conversation::STATE: 1, Conversation::LAST_MESSAGE_AT: -1 },
        ),
        Index::new(
            c,
            doc! {
                Conversation::ORG: 1, Conversation::ASSIGNEE: 1, Conversation::STATE: 1,
                Conversation::LAST_MESSAGE_AT: -1,
            },
        ),
        Index::new(
            MESSAGE_STATUSES.name,
            doc! { MessageStatus::ORG: 1, MessageStatus::WAMID: 1, MessageStatus::AT: 1 },
        ),
    ]
}
