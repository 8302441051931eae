//! Meta's WhatsApp Cloud API webhook body, as it arrives on `POST /webhooks/whatsapp`.
//!
//! The shapes follow Meta's webhook reference (see `tests/fixtures/README.md` for the
//! documented example behind each fixture). Two rules shape every type here:
//!
//! - **Tolerant**: every object keeps the fields we do not model in `extra`, so a field
//!   Meta adds tomorrow is carried through (and re-serialized) instead of rejected.
//! - **Faithful**: values keep Meta's own representation (timestamps are decimal
//!   strings, ids are strings), so a parsed body serializes back to the same JSON.
//!
//! A message is one struct rather than an enum over `type`: Meta puts the payload in a
//! field named after the type (`"type":"image","image":{…}`), and an enum would have to
//! drop the payload of a type it does not know.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Unknown fields of an object, kept verbatim.
pub type Extra = Map<String, Value>;

/// The whole POST body: `{"object": "whatsapp_business_account", "entry": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One WhatsApp Business Account's changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The WhatsApp Business Account id.
    pub id: String,
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One change: `field` names what `value` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub field: String,
    #[serde(default)]
    pub value: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Change {
    /// Parses `value` for the fields we model; anything else is [`ChangeValue::Other`].
    pub fn parse_value(&self) -> Result<ChangeValue, serde_json::Error> {
        Ok(match self.field.as_str() {
            "messages" => ChangeValue::Messages(serde_json::from_value(self.value.clone())?),
            "smb_message_echoes" => {
                ChangeValue::MessageEchoes(serde_json::from_value(self.value.clone())?)
            }
            "smb_app_state_sync" => {
                ChangeValue::AppStateSync(serde_json::from_value(self.value.clone())?)
            }
            "history" => ChangeValue::History(serde_json::from_value(self.value.clone())?),
            _ => ChangeValue::Other,
        })
    }
}

/// The typed value of a change, by its `field`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeValue {
    /// `messages`: inbound messages and/or statuses of outbound ones.
    Messages(MessagesValue),
    /// `smb_message_echoes`: messages the business sent from the WhatsApp Business app.
    MessageEchoes(EchoesValue),
    /// `smb_app_state_sync`: contacts added, edited or removed in the Business app.
    AppStateSync(StateSyncValue),
    /// `history`: past chats of the Business app, in chunks.
    History(HistoryValue),
    /// A field we do not model (account_update, templates, ...): carried as is.
    Other,
}

/// The business number a change belongs to.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub display_phone_number: String,
    pub phone_number_id: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Value of a `messages` change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesValue {
    #[serde(default)]
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contacts: Vec<Contact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<Status>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The sender's WhatsApp profile, next to their messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub wa_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One message, inbound (`messages`), echoed (`smb_message_echoes`) or past (`history`).
/// The payload sits in the field named by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The wamid.
    pub id: String,
    #[serde(default)]
    pub from: String,
    /// Set on echoes: the customer the business wrote to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Unix seconds, as a decimal string.
    #[serde(default)]
    pub timestamp: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Referral>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticker: Option<Media>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<SharedContact>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Interactive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<Button>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Message {
    /// A short human-readable text for previews and push bodies: the text, caption,
    /// emoji, reply title or location name, whichever the type has.
    pub fn preview(&self) -> Option<String> {
        let media = [
            &self.image,
            &self.video,
            &self.document,
            &self.audio,
            &self.sticker,
        ];
        self.text
            .as_ref()
            .map(|t| t.body.clone())
            .or_else(|| media.iter().find_map(|m| m.as_ref()?.caption.clone()))
            .or_else(|| self.reaction.as_ref().and_then(|r| r.emoji.clone()))
            .or_else(|| self.button.as_ref().map(|b| b.text.clone()))
            .or_else(|| self.interactive.as_ref().and_then(Interactive::title))
            .or_else(|| self.location.as_ref().and_then(|l| l.name.clone()))
            .or_else(|| self.system.as_ref().map(|s| s.body.clone()))
            .or_else(|| self.order.as_ref().and_then(|o| o.text.clone()))
    }

    /// The media object of an image/audio/video/document/sticker message.
    pub fn media(&self) -> Option<&Media> {
        [
            &self.image,
            &self.audio,
            &self.video,
            &self.document,
            &self.sticker,
        ]
        .into_iter()
        .find_map(Option::as_ref)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub body: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Image, audio, video, document or sticker: Meta sends a media id, not the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A contact card shared in a `contacts` message; its parts (phones, emails, ...) are
/// kept as Meta sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedContact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A reply to an interactive message: `button_reply` or `list_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interactive {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button_reply: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_reply: Option<Reply>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Interactive {
    fn title(&self) -> Option<String> {
        let reply = self.button_reply.as_ref().or(self.list_reply.as_ref())?;
        Some(reply.title.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A template's quick-reply button pressed by the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Button {
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub text: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    /// The wamid reacted to.
    #[serde(default)]
    pub message_id: String,
    /// Absent when a reaction is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    #[serde(default)]
    pub catalog_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default)]
    pub product_items: Vec<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A system notice, e.g. the customer changed their number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct System {
    #[serde(default)]
    pub body: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What the message replies to (or was forwarded from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequently_forwarded: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The click-to-WhatsApp ad the customer came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Referral {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An error as Meta reports it on messages, statuses and changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiError {
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub href: Option<String>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// A delivery status of a message the business sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The wamid of the outbound message.
    pub id: String,
    /// sent, delivered, read, failed (or a value Meta adds later).
    pub status: String,
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub recipient_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Value of an `smb_message_echoes` change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoesValue {
    #[serde(default)]
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub message_echoes: Vec<Message>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Value of an `smb_app_state_sync` change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSyncValue {
    #[serde(default)]
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub state_sync: Vec<StateSyncItem>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSyncItem {
    /// `contact` today.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<SyncedContact>,
    /// `add` (also used for edits) or `remove`.
    #[serde(default)]
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncedContact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default)]
    pub phone_number: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Value of a `history` change: one chunk of past chats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryValue {
    #[serde(default)]
    pub messaging_product: String,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryChunk>,
    /// The media follow-up form: media of past messages, sent after their chunk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryChunk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<HistoryMetadata>,
    #[serde(default)]
    pub threads: Vec<HistoryThread>,
    /// Set when the business declined history sharing (or it failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Where the sync stands: `phase` (0, 1, 2: the day ranges), `chunk_order` within the
/// phase, `progress` in percent of the whole sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMetadata {
    #[serde(default)]
    pub phase: i64,
    #[serde(default)]
    pub chunk_order: i64,
    #[serde(default)]
    pub progress: i64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Past messages with one customer (`id` is their wa_id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryThread {
    pub id: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub extra: Extra,
}
