//! An outbound command → the Graph API call that carries it out. Pure.
//!
//! The command's `payload` is an [`OutboundPayload`]: the Graph API message body
//! (`type` plus the object it names) minus the envelope, which is added here and
//! nowhere else: `messaging_product`, `recipient_type`, `to`, and
//! `biz_opaque_callback_data` = the command id, which Meta echoes in every status
//! webhook of the message, so a status can always be traced back to its command.
//!
//! Two conventions on top of Meta's format:
//! - media kept in our S3 bucket: `{"type":"image","image":{"s3_key":"{org}/{sha256}"}}`
//!   is uploaded to `/{phone_number_id}/media` first and sent by the new media id;
//! - `{"type":"smb_app_data","sync_type":"smb_app_state_sync"|"history"}` is the
//!   coexistence onboarding sync request, `POST /{phone_number_id}/smb_app_data`.

use events::delivery::OutboundMessage;
use events::outbound::{OutboundPayload, SyncType};
use serde_json::{Value, json};

/// The Graph API call for one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `POST /{phone_number_id}/messages`.
    Message { body: Value },
    /// Upload `s3_key` to `/{phone_number_id}/media`, then send `body` with the new
    /// id in place of the key ([`with_media_id`]).
    MediaMessage {
        kind: String,
        s3_key: String,
        body: Value,
    },
    /// `POST /{phone_number_id}/smb_app_data`.
    SmbAppData { body: Value },
}

impl Call {
    /// Whether Meta answers this call with a message (a wamid).
    pub fn sends_message(&self) -> bool {
        !matches!(self, Call::SmbAppData { .. })
    }
}

/// The call for `command`, or why it can never be made.
pub fn plan(command: &OutboundMessage) -> Result<Call, String> {
    let payload = OutboundPayload::from_value(&command.payload)?;
    let message = match &payload {
        OutboundPayload::Read(_) => {
            return Ok(Call::Message {
                body: envelope(payload.to_value(), None),
            });
        }
        OutboundPayload::Sync(sync) => {
            let sync_type = match sync.sync_type {
                SyncType::Contacts => "smb_app_state_sync",
                SyncType::History => "history",
            };
            return Ok(Call::SmbAppData {
                body: envelope(json!({ "sync_type": sync_type }), None),
            });
        }
        // The stage opens a sealed payload before planning; one still sealed here
        // did not open.
        OutboundPayload::Sealed(_) => return Err("a sealed payload that was not opened".into()),
        OutboundPayload::Message(message) => message,
    };
    if command.to.trim().is_empty() {
        return Err("no recipient (to)".into());
    }
    let kind = message.body.kind();
    let body = envelope(payload.to_value(), Some(command));
    let Some(media) = message.body.media() else {
        return Ok(Call::Message { body });
    };
    match &media.s3_key {
        Some(key) => {
            let own = key
                .strip_prefix(&command.org)
                .is_some_and(|rest| rest.starts_with('/'));
            if !own {
                return Err(format!(
                    "s3_key {key:?} is not under the org's prefix {:?}",
                    format!("{}/", command.org)
                ));
            }
            Ok(Call::MediaMessage {
                kind: kind.to_string(),
                s3_key: key.clone(),
                body,
            })
        }
        None if media.id.is_some() || media.link.is_some() => Ok(Call::Message { body }),
        None => Err(format!("{kind} needs one of id, link or s3_key")),
    }
}

/// The Graph API envelope, added here only: `messaging_product` on every call, and
/// for a message the recipient and the command id as `biz_opaque_callback_data`.
fn envelope(mut body: Value, message_of: Option<&OutboundMessage>) -> Value {
    body["messaging_product"] = json!("whatsapp");
    if let Some(command) = message_of {
        body["recipient_type"] = json!("individual");
        body["to"] = json!(command.to);
        body["biz_opaque_callback_data"] = json!(command.id);
    }
    body
}

/// Replaces the `s3_key` of a media message with Meta's media id.
pub fn with_media_id(mut body: Value, kind: &str, media_id: &str) -> Value {
    if let Some(object) = body.get_mut(kind).and_then(Value::as_object_mut) {
        object.remove("s3_key");
        object.insert("id".into(), json!(media_id));
    }
    body
}

/// Meta's answer to a message send: the wamid.
pub fn wamid(answer: &Value) -> Option<String> {
    answer["messages"][0]["id"].as_str().map(str::to_string)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A command of org `acme` to customer `222`, for this sink's tests.
    pub(crate) fn command(payload: Value) -> OutboundMessage {
        OutboundMessage {
            id: "cmd-1".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            to: "222".into(),
            sent_by: "ann".into(),
            at_ms: 0,
            payload,
        }
    }

    #[test]
    fn a_text_gets_the_envelope_and_the_command_id_as_callback_data() {
        let call = plan(&command(json!({"type": "text", "text": {"body": "hi"}}))).unwrap();
        assert_eq!(
            call,
            Call::Message {
                body: json!({"type": "text", "text": {"body": "hi", "preview_url": false}, "messaging_product": "whatsapp",
                    "recipient_type": "individual", "to": "222", "biz_opaque_callback_data": "cmd-1"})
            }
        );
    }

    #[test]
    fn s3_media_is_uploaded_then_sent_by_id() {
        let call = plan(&command(
            json!({"type": "image", "image": {"s3_key": "acme/abc", "caption": "x"}}),
        ))
        .unwrap();
        let Call::MediaMessage { kind, s3_key, body } = call else {
            panic!("not a media message");
        };
        assert_eq!((kind.as_str(), s3_key.as_str()), ("image", "acme/abc"));
        let body = with_media_id(body, "image", "42");
        assert_eq!(body["image"], json!({"id": "42", "caption": "x"}));
        assert_eq!(body["to"], "222");
    }

    #[test]
    fn another_orgs_media_and_malformed_payloads_are_refused_with_a_reason() {
        let cases = [
            (
                json!({"type": "image", "image": {"s3_key": "other/abc"}}),
                "prefix",
            ),
            (
                json!({"type": "image", "image": {"s3_key": "acmeX/abc"}}),
                "prefix",
            ),
            (
                json!({"type": "image", "image": {"caption": "x"}}),
                "id, link or s3_key",
            ),
            // The payload's own faults (events::outbound's tests have them all).
            (json!({"type": "fax", "fax": {}}), "unknown message type"),
        ];
        for (payload, reason) in cases {
            let err = plan(&command(payload.clone())).unwrap_err();
            assert!(err.contains(reason), "{payload}: {err}");
        }
    }

    #[test]
    fn read_receipts_and_sync_requests_have_their_own_bodies() {
        let read = plan(&command(json!({"status": "read", "message_id": "wamid.A"}))).unwrap();
        assert_eq!(
            read,
            Call::Message {
                body: json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A"})
            }
        );
        let sync = plan(&command(
            json!({"type": "smb_app_data", "sync_type": "history"}),
        ))
        .unwrap();
        assert!(!sync.sends_message());
        assert_eq!(
            sync,
            Call::SmbAppData {
                body: json!({"messaging_product": "whatsapp", "sync_type": "history"})
            }
        );
    }

    #[test]
    fn the_wamid_is_read_from_metas_answer() {
        let answer = json!({"messaging_product": "whatsapp", "contacts": [{"input": "222", "wa_id": "222"}],
            "messages": [{"id": "wamid.X"}]});
        assert_eq!(wamid(&answer).as_deref(), Some("wamid.X"));
        assert_eq!(wamid(&json!({"success": true})), None);
    }
}
