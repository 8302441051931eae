//! The outbound contract: what the API asks the whatsapp sink to send
//! ([`OutboundPayload`], the `payload` of `messages.outbound`).
//!
//! A payload is the Graph API body without its envelope: `messaging_product`,
//! `recipient_type`, `to` and `biz_opaque_callback_data` are added by the whatsapp
//! sink alone (`sinks::whatsapp::payload::plan`), from the command's own fields. The
//! JSON is Meta's shape (`{"type":"text","text":{...}}`), so records written before
//! this type existed (which also carried the envelope, now ignored) read the same.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OutboundPayload {
    /// Mark an inbound message read (blue ticks): `{"status":"read","message_id":…}`.
    Read(ReadReceipt),
    /// Start the coexistence sync of the number (`POST /{number}/smb_app_data`).
    Sync(SyncRequest),
    /// Another payload, sealed with the `[sealing] keys` by the API: login codes, so
    /// the code is never in clear on this topic (kept for days, read by data teams)
    /// nor in any store or log. Only the whatsapp sink opens it, just before deciding
    /// on the command, and sends what it holds.
    Sealed(SealedPayload),
    /// A message to the customer.
    Message(MessagePayload),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SealedPayload {
    #[serde(rename = "type")]
    pub kind: SealedTag,
    /// The JSON of the payload it holds, sealed.
    pub sealed: crate::directory::Sealed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SealedTag {
    Sealed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReadReceipt {
    pub status: ReadStatus,
    /// The newest inbound message read.
    pub message_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadStatus {
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncRequest {
    #[serde(rename = "type")]
    pub kind: SmbAppData,
    pub sync_type: SyncType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmbAppData {
    SmbAppData,
}

/// What a coexistence sync brings over from the Business app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SyncType {
    /// Its contacts.
    #[serde(rename = "smb_app_state_sync")]
    Contacts,
    /// Its past chats.
    #[serde(rename = "history")]
    History,
}

/// A message: its body by `type`, and the message it quotes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessagePayload {
    #[serde(flatten)]
    pub body: MessageBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
}

/// The message quoted (replied to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Context {
    pub message_id: String,
}

/// Meta's message types, each with the object its `type` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageBody {
    Text {
        text: Text,
    },
    /// An approved template: the only kind allowed outside the customer service window.
    Template {
        template: Template,
    },
    Image {
        image: Media,
    },
    Audio {
        audio: Media,
    },
    Video {
        video: Media,
    },
    Document {
        document: Media,
    },
    Sticker {
        sticker: Media,
    },
    Reaction {
        reaction: Reaction,
    },
    /// Passed through as Meta defines them; the API does not build these.
    Interactive {
        interactive: Value,
    },
    Location {
        location: Value,
    },
    Contacts {
        contacts: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Text {
    pub body: String,
    #[serde(default)]
    pub preview_url: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Template {
    pub name: String,
    pub language: Language,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Language {
    pub code: String,
}

/// A media file by Meta's media id, by an https link, or by the key of a file in our
/// S3 bucket (`{org}/{sha256}`, uploaded to Meta by the sink first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reaction {
    pub message_id: String,
    /// One emoji; empty takes the reaction off.
    pub emoji: String,
}

impl MessageBody {
    /// Meta's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Template { .. } => "template",
            Self::Image { .. } => "image",
            Self::Audio { .. } => "audio",
            Self::Video { .. } => "video",
            Self::Document { .. } => "document",
            Self::Sticker { .. } => "sticker",
            Self::Reaction { .. } => "reaction",
            Self::Interactive { .. } => "interactive",
            Self::Location { .. } => "location",
            Self::Contacts { .. } => "contacts",
        }
    }

    /// The media file, for the media types.
    pub fn media(&self) -> Option<&Media> {
        match self {
            Self::Image { image: m }
            | Self::Audio { audio: m }
            | Self::Video { video: m }
            | Self::Document { document: m }
            | Self::Sticker { sticker: m } => Some(m),
            _ => None,
        }
    }
}

impl OutboundPayload {
    /// A text message.
    pub fn text(body: &str) -> Self {
        Self::message(MessageBody::Text {
            text: Text {
                body: body.to_owned(),
                preview_url: false,
            },
        })
    }

    /// A template message.
    pub fn template(name: &str, language: &str, components: Option<Vec<Value>>) -> Self {
        Self::message(MessageBody::Template {
            template: Template {
                name: name.to_owned(),
                language: Language {
                    code: language.to_owned(),
                },
                components,
            },
        })
    }

    /// A message quoting nothing.
    pub fn message(body: MessageBody) -> Self {
        Self::Message(MessagePayload {
            body,
            context: None,
        })
    }

    /// A payload sealed by the API (see [`OutboundPayload::Sealed`]).
    pub fn sealed(sealed: crate::directory::Sealed) -> Self {
        Self::Sealed(SealedPayload {
            kind: SealedTag::Sealed,
            sealed,
        })
    }

    /// Marks `message_id` read.
    pub fn read(message_id: &str) -> Self {
        Self::Read(ReadReceipt {
            status: ReadStatus::Read,
            message_id: message_id.to_owned(),
        })
    }

    /// Starts a coexistence sync.
    pub fn sync(sync_type: SyncType) -> Self {
        Self::Sync(SyncRequest {
            kind: SmbAppData::SmbAppData,
            sync_type,
        })
    }

    /// Meta's `type` of the payload (`text`, `template`, `image`, ...), `read` for a
    /// read receipt, `smb_app_data` for a sync request.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read(_) => "read",
            Self::Sync(_) => "smb_app_data",
            Self::Sealed(_) => "sealed",
            Self::Message(m) => m.body.kind(),
        }
    }

    /// Whether it may only go out within the customer service window: everything but
    /// a template, a read receipt and a sync request (a sealed payload is judged by
    /// what it holds, once opened; unopened, it counts as needing the window).
    pub fn needs_window(&self) -> bool {
        !matches!(
            self,
            Self::Read(_)
                | Self::Sync(_)
                | Self::Message(MessagePayload {
                    body: MessageBody::Template { .. },
                    ..
                })
        )
    }

    /// As JSON, the `payload` of `messages.outbound`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads a `payload` of `messages.outbound`, or says what is wrong with it.
    pub fn from_value(payload: &Value) -> Result<Self, String> {
        let object = payload.as_object().ok_or("payload is not a JSON object")?;
        let invalid = |e: serde_json::Error| format!("invalid payload: {e}");
        if object.get("status").and_then(Value::as_str) == Some("read") {
            object
                .get("message_id")
                .and_then(Value::as_str)
                .ok_or("a read receipt needs message_id")?;
            return serde_json::from_value(payload.clone())
                .map(Self::Read)
                .map_err(invalid);
        }
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or("payload has no type")?;
        if kind == "sealed" {
            return serde_json::from_value(payload.clone())
                .map(Self::Sealed)
                .map_err(|_| "a sealed payload needs sealed {key_id, data}".into());
        }
        if kind == "smb_app_data" {
            return serde_json::from_value(payload.clone())
                .map(Self::Sync)
                .map_err(|_| "smb_app_data needs sync_type smb_app_state_sync or history".into());
        }
        if !MESSAGE_TYPES.contains(&kind) {
            return Err(format!("unknown message type {kind:?}"));
        }
        if !object.get(kind).is_some_and(Value::is_object) {
            return Err(format!("payload has no {kind:?} object"));
        }
        serde_json::from_value(payload.clone())
            .map(Self::Message)
            .map_err(invalid)
    }
}

/// Meta's message types the Cloud API sends.
pub const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "interactive",
    "reaction",
    "location",
    "contacts",
];

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payloads_written_before_the_type_read_the_same_without_their_envelope() {
        let old = [
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "1",
                "type": "text", "text": {"body": "hi", "preview_url": false},
                "context": {"message_id": "wamid.Q"}}),
            json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A"}),
            json!({"messaging_product": "whatsapp", "type": "smb_app_data", "sync_type": "history"}),
            json!({"type": "image", "image": {"s3_key": "acme/abc", "caption": "x"}}),
            json!({"type": "template", "template": {"name": "t", "language": {"code": "en"},
                "components": [{"type": "body"}]}}),
            json!({"type": "reaction", "reaction": {"message_id": "wamid.B", "emoji": "👍"}}),
        ];
        let kinds = [
            "text",
            "read",
            "smb_app_data",
            "image",
            "template",
            "reaction",
        ];
        for (value, kind) in old.iter().zip(kinds) {
            let payload = OutboundPayload::from_value(value).unwrap();
            assert_eq!(payload.kind(), kind);
            // What it writes now is the same minus the envelope, and reads back equal.
            let mut without = value.clone();
            for field in ["messaging_product", "recipient_type", "to"] {
                without.as_object_mut().unwrap().remove(field);
            }
            assert_eq!(payload.to_value(), without, "{kind}");
            assert_eq!(
                OutboundPayload::from_value(&payload.to_value()),
                Ok(payload)
            );
        }
    }

    #[test]
    fn a_malformed_payload_says_what_is_wrong() {
        let cases = [
            (json!({"text": {"body": "hi"}}), "no type"),
            (json!({"type": "text"}), "no \"text\" object"),
            (json!({"type": "fax", "fax": {}}), "unknown message type"),
            (
                json!({"type": "smb_app_data", "sync_type": "all"}),
                "sync_type",
            ),
            (json!("hi"), "not a JSON object"),
            (json!({"status": "read"}), "message_id"),
            (
                json!({"type": "text", "text": {"preview_url": true}}),
                "body",
            ),
        ];
        for (payload, reason) in cases {
            let err = OutboundPayload::from_value(&payload).unwrap_err();
            assert!(err.contains(reason), "{payload}: {err}");
        }
    }

    #[test]
    fn only_templates_read_receipts_and_syncs_go_out_of_the_window() {
        assert!(OutboundPayload::text("hi").needs_window());
        assert!(!OutboundPayload::template("t", "en", None).needs_window());
        assert!(!OutboundPayload::read("w").needs_window());
        assert!(!OutboundPayload::sync(SyncType::History).needs_window());
    }
}
