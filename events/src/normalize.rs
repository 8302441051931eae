//! Webhook → normalized events: a pure function, so every rule of it is a unit test.
//!
//! One webhook body fans out into one event per message, status, echo, contact-sync
//! item and history chunk (plus one per history message). A change whose value does
//! not fit its field's shape is returned as [`Rejected`] for the dead-letter topic,
//! and the rest of the body still goes through.

use std::collections::HashMap;

use serde_json::Value;

use crate::event::*;
use crate::ids;
use crate::webhook::*;

/// Who owns a business number: the directory in a running system, a static map in
/// development and tests.
pub trait OrgLookup: Send + Sync {
    /// The org of a business number, or, for a change about the account rather than
    /// a number (`phone_number_id` empty), of its WhatsApp Business Account. `None`:
    /// no org owns it, and its events are rejected as [`UNKNOWN_NUMBER`].
    fn org_for(&self, phone_number_id: &str, waba_id: &str) -> Option<String>;
}

/// The reason code of changes for a business number no org owns.
pub const UNKNOWN_NUMBER: &str = "unknown_number";
/// The reason code of changes that do not fit their field's shape.
pub const MALFORMED_CHANGE: &str = "malformed_change";

/// A static map of business numbers to orgs (development seed and tests).
#[derive(Debug, Clone, Default)]
pub struct OrgDirectory {
    by_number: HashMap<String, String>,
    default_org: String,
}

impl OrgDirectory {
    pub fn new(
        default_org: impl Into<String>,
        numbers: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Self {
            by_number: numbers.into_iter().collect(),
            default_org: default_org.into(),
        }
    }

    /// The org of a `phone_number_id`; numbers not listed belong to the default org,
    /// if there is one (an empty default means no org owns them).
    pub fn org_of(&self, phone_number_id: &str) -> Option<&str> {
        self.by_number
            .get(phone_number_id)
            .map(String::as_str)
            .or(Some(self.default_org.as_str()).filter(|o| !o.is_empty()))
    }

    /// Whether the number is listed (not merely covered by the default org).
    pub fn lists(&self, phone_number_id: &str) -> bool {
        self.by_number.contains_key(phone_number_id)
    }
}

impl OrgLookup for OrgDirectory {
    fn org_for(&self, phone_number_id: &str, _waba_id: &str) -> Option<String> {
        self.org_of(phone_number_id).map(str::to_string)
    }
}

/// A change that could not be normalized, with the reason, for the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// [`MALFORMED_CHANGE`] or [`UNKNOWN_NUMBER`].
    pub code: &'static str,
    pub field: String,
    pub reason: String,
    pub value: Value,
}

/// The result of normalizing one webhook body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    pub events: Vec<WhatsAppEvent>,
    pub rejected: Vec<Rejected>,
}

/// Splits a webhook body into normalized events.
pub fn normalize(webhook: &Webhook, received_at_ms: i64, orgs: &dyn OrgLookup) -> Normalized {
    let mut out = Normalized::default();
    for entry in &webhook.entry {
        for change in &entry.changes {
            match change.parse_value() {
                Ok(value) => {
                    let before = out.events.len();
                    let mut builder = Builder {
                        entry,
                        orgs,
                        received_at_ms,
                        out: &mut out,
                    };
                    builder.change(change, value);
                    // A change for a number no org owns is kept whole for a replay
                    // once the number is added, not split into orgless events.
                    if let Some(unowned) = out.events[before..].iter().find(|e| e.org.is_empty()) {
                        let number = if unowned.phone_number_id.is_empty() {
                            format!("WhatsApp Business Account {}", unowned.waba_id)
                        } else {
                            format!("business number {}", unowned.phone_number_id)
                        };
                        out.events.truncate(before);
                        out.rejected.push(Rejected {
                            code: UNKNOWN_NUMBER,
                            field: change.field.clone(),
                            reason: format!("{UNKNOWN_NUMBER}: no org owns {number}"),
                            value: change.value.clone(),
                        });
                    }
                }
                Err(err) => out.rejected.push(Rejected {
                    code: MALFORMED_CHANGE,
                    field: change.field.clone(),
                    reason: format!("`{}` change does not fit its shape: {err}", change.field),
                    value: change.value.clone(),
                }),
            }
        }
    }
    out
}

/// Holds what every event of one change shares.
struct Builder<'a> {
    entry: &'a Entry,
    orgs: &'a dyn OrgLookup,
    received_at_ms: i64,
    out: &'a mut Normalized,
}

impl Builder<'_> {
    fn change(&mut self, change: &Change, value: ChangeValue) {
        match value {
            ChangeValue::Messages(v) => self.messages(&v),
            ChangeValue::MessageEchoes(v) => {
                for echo in &v.message_echoes {
                    let customer = echo.to.clone().unwrap_or_default();
                    let body =
                        message_body(&v.metadata, echo, &customer, None, Origin::BusinessApp);
                    self.push(&v.metadata, echo.id.clone(), body);
                }
            }
            ChangeValue::AppStateSync(v) => {
                for item in &v.state_sync {
                    self.state_sync(&v.metadata, item);
                }
            }
            ChangeValue::History(v) => {
                for chunk in &v.history {
                    self.history(&v.metadata, chunk);
                }
                for message in &v.messages {
                    let customer = history_customer(&v.metadata, message);
                    let body = message_body(&v.metadata, message, &customer, None, Origin::History);
                    self.push(&v.metadata, message.id.clone(), body);
                }
            }
            ChangeValue::Other => {
                let id =
                    ids::content_id("chg", &[&Value::from(change.field.clone()), &change.value]);
                let metadata = other_metadata(&change.value);
                let body = EventBody::Unhandled(UnhandledEvent {
                    field: change.field.clone(),
                    raw: change.value.clone(),
                });
                self.push(&metadata, id, body);
            }
        }
    }

    fn messages(&mut self, v: &MessagesValue) {
        let names: HashMap<&str, &str> = v
            .contacts
            .iter()
            .filter_map(|c| Some((c.wa_id.as_str(), c.profile.as_ref()?.name.as_str())))
            .collect();
        for message in &v.messages {
            let name = names.get(message.from.as_str()).map(|n| n.to_string());
            let mut body =
                message_body(&v.metadata, message, &message.from, name, Origin::Customer);
            // Errors next to the messages (not inside one) are about them: keep them
            // with each message rather than apart.
            if let EventBody::Message(m) = &mut body {
                m.errors.extend(v.errors.iter().cloned());
            }
            self.push(&v.metadata, message.id.clone(), body);
        }
        for status in &v.statuses {
            let event = StatusEvent {
                wamid: status.id.clone(),
                conversation_id: ids::conversation_id(
                    &v.metadata.phone_number_id,
                    &status.recipient_id,
                ),
                status: status.status.clone(),
                recipient_id: status.recipient_id.clone(),
                at: unix_seconds(&status.timestamp),
                errors: status.errors.clone(),
                raw: to_value(status),
            };
            self.push(
                &v.metadata,
                ids::status_id(&status.id, &status.status),
                EventBody::Status(event),
            );
        }
        if !v.errors.is_empty() && v.messages.is_empty() {
            // Errors about the number itself (not a message): carried for operators.
            let raw = serde_json::json!({ "errors": v.errors });
            let id = ids::content_id("chg", &[&Value::from("messages.errors"), &raw]);
            let body = EventBody::Unhandled(UnhandledEvent {
                field: "messages".into(),
                raw,
            });
            self.push(&v.metadata, id, body);
        }
    }

    fn state_sync(&mut self, metadata: &Metadata, item: &StateSyncItem) {
        let raw = to_value(item);
        let id = ids::content_id(
            "sync",
            &[&Value::from(metadata.phone_number_id.clone()), &raw],
        );
        let action = match item.action.as_str() {
            "add" | "edit" | "update" => Some(ContactAction::Upsert),
            "remove" | "delete" => Some(ContactAction::Remove),
            _ => None,
        };
        let body = match (action, &item.contact) {
            (Some(action), Some(contact)) if item.kind == "contact" => {
                EventBody::ContactSync(ContactSyncEvent {
                    action,
                    wa_id: ids::digits(&contact.phone_number),
                    full_name: contact.full_name.clone(),
                    first_name: contact.first_name.clone(),
                    changed_at: item
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get("timestamp"))
                        .map_or(0, timestamp_value),
                    raw,
                })
            }
            _ => EventBody::Unhandled(UnhandledEvent {
                field: "smb_app_state_sync".into(),
                raw,
            }),
        };
        self.push(metadata, id, body);
    }

    fn history(&mut self, metadata: &Metadata, chunk: &HistoryChunk) {
        let mut messages = 0u32;
        for thread in &chunk.threads {
            let customer = ids::digits(&thread.id);
            for message in &thread.messages {
                messages += 1;
                let body = message_body(metadata, message, &customer, None, Origin::History);
                self.push(metadata, message.id.clone(), body);
            }
        }
        let progress_raw =
            serde_json::json!({ "metadata": chunk.metadata, "errors": chunk.errors });
        let id = ids::content_id(
            "hist",
            &[
                &Value::from(metadata.phone_number_id.clone()),
                &progress_raw,
            ],
        );
        let meta = chunk.metadata.as_ref();
        let body = EventBody::HistoryProgress(HistoryProgressEvent {
            phase: meta.map_or(0, |m| m.phase),
            chunk_order: meta.map_or(0, |m| m.chunk_order),
            progress: meta.map_or(0, |m| m.progress),
            threads: u32::try_from(chunk.threads.len()).unwrap_or(u32::MAX),
            messages,
            errors: chunk.errors.clone(),
        });
        self.push(metadata, id, body);
    }

    fn push(&mut self, metadata: &Metadata, id: String, body: EventBody) {
        self.out.events.push(WhatsAppEvent {
            id,
            org: self
                .orgs
                .org_for(&metadata.phone_number_id, &self.entry.id)
                .unwrap_or_default(),
            phone_number_id: metadata.phone_number_id.clone(),
            display_phone_number: metadata.display_phone_number.clone(),
            waba_id: self.entry.id.clone(),
            received_at_ms: self.received_at_ms,
            body,
        });
    }
}

/// The event of one message: a new message, or an edit, revoke or reaction that
/// changes an earlier one. `customer` is the other party's wa_id, whoever wrote.
fn message_body(
    metadata: &Metadata,
    message: &Message,
    customer: &str,
    contact_name: Option<String>,
    origin: Origin,
) -> EventBody {
    let m = message_event(metadata, message, customer, contact_name, origin);
    let original = |kind: &str| {
        message
            .extra
            .get(kind)
            .and_then(|c| c.get("original_message_id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    };
    let change = |wamid: String| MessageChangeEvent {
        wamid,
        change_wamid: m.wamid.clone(),
        conversation_id: m.conversation_id.clone(),
        contact_wa_id: m.contact_wa_id.clone(),
        direction: m.direction,
        origin: m.origin,
        sent_at: m.sent_at,
        message_type: None,
        preview: None,
        media: None,
        raw: m.raw.clone(),
    };
    match message.kind.as_str() {
        "edit" => match original("edit") {
            Some(wamid) => {
                let mut edit = change(wamid.clone());
                // The new content is a message object without an id: read it as one.
                let content = message
                    .extra
                    .get("edit")
                    .and_then(|e| e.get("message"))
                    .cloned()
                    .and_then(|mut v| {
                        v.as_object_mut()?.insert("id".into(), Value::from(wamid));
                        serde_json::from_value::<Message>(v).ok()
                    });
                if let Some(content) = content {
                    edit.message_type = Some(content.kind.clone());
                    edit.preview = content.preview();
                    edit.media = content.media().map(media_ref);
                }
                EventBody::Edit(edit)
            }
            None => EventBody::Message(m),
        },
        "revoke" => match original("revoke") {
            Some(wamid) => EventBody::Revoke(change(wamid)),
            None => EventBody::Message(m),
        },
        "reaction" => match message
            .reaction
            .as_ref()
            .filter(|r| !r.message_id.is_empty())
        {
            Some(reaction) => EventBody::Reaction(ReactionEvent {
                wamid: reaction.message_id.clone(),
                change_wamid: m.wamid.clone(),
                reactor: match m.direction {
                    Direction::Inbound => m.contact_wa_id.clone(),
                    Direction::Outbound => BUSINESS_REACTOR.to_string(),
                },
                // Meta sends no emoji, or an empty one, when a reaction is removed.
                emoji: reaction.emoji.clone().filter(|e| !e.is_empty()),
                conversation_id: m.conversation_id,
                contact_wa_id: m.contact_wa_id,
                direction: m.direction,
                origin: m.origin,
                sent_at: m.sent_at,
                raw: m.raw,
            }),
            None => EventBody::Message(m),
        },
        _ => EventBody::Message(m),
    }
}

fn media_ref(m: &Media) -> MediaRef {
    MediaRef {
        id: m.id.clone(),
        mime_type: m.mime_type.clone(),
        sha256: m.sha256.clone(),
        filename: m.filename.clone(),
    }
}

/// A message event; `customer` is the other party's wa_id, whoever wrote.
fn message_event(
    metadata: &Metadata,
    message: &Message,
    customer: &str,
    contact_name: Option<String>,
    origin: Origin,
) -> MessageEvent {
    let direction = match origin {
        Origin::Customer => Direction::Inbound,
        Origin::BusinessApp | Origin::Api => Direction::Outbound,
        // In a history thread either side may have written.
        Origin::History if from_me(message) => Direction::Outbound,
        Origin::History if ids::digits(&message.from) == customer => Direction::Inbound,
        Origin::History => Direction::Outbound,
    };
    let reply_to = message
        .context
        .as_ref()
        .and_then(|c| c.id.clone())
        .or_else(|| message.reaction.as_ref().map(|r| r.message_id.clone()));
    let history_status = message
        .extra
        .get("history_context")
        .and_then(|h| h.get("status"))
        .and_then(Value::as_str)
        // Meta's docs write DELIVERED, real payloads `delivered`.
        .map(str::to_ascii_lowercase);
    MessageEvent {
        wamid: message.id.clone(),
        conversation_id: if customer.is_empty() {
            String::new()
        } else {
            ids::conversation_id(&metadata.phone_number_id, customer)
        },
        contact_wa_id: customer.to_string(),
        contact_name,
        direction,
        origin,
        sent_at: unix_seconds(&message.timestamp),
        message_type: message.kind.clone(),
        preview: message.preview(),
        reply_to,
        media: message.media().map(media_ref),
        history_status,
        errors: message.errors.clone(),
        raw: to_value(message),
    }
}

/// `history_context.from_me`, when Meta sends it.
fn from_me(message: &Message) -> bool {
    message
        .extra
        .get("history_context")
        .and_then(|h| h.get("from_me"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The customer of a history message outside a thread: whoever is not the business.
fn history_customer(metadata: &Metadata, message: &Message) -> String {
    let business = ids::digits(&metadata.display_phone_number);
    let from = ids::digits(&message.from);
    let from_business = from == business || from_me(message);
    match &message.to {
        Some(to) if from_business => ids::digits(to),
        // A media follow-up of the business's own message names no customer: it fills
        // in a placeholder already stored under the same wamid.
        None if from_business => String::new(),
        _ => from,
    }
}

/// The business number of a change we do not model, if its value names one.
fn other_metadata(value: &Value) -> Metadata {
    value
        .get("metadata")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default()
}

/// A timestamp Meta sent as a JSON string or number.
fn timestamp_value(value: &Value) -> i64 {
    match value {
        Value::String(s) => unix_seconds(s),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// Meta's decimal-string timestamps; 0 when absent or garbled (the raw keeps it).
fn unix_seconds(timestamp: &str) -> i64 {
    timestamp.trim().parse().unwrap_or(0)
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod unknown_number_tests {
    use super::*;

    #[test]
    fn a_change_for_a_number_no_org_owns_is_rejected_whole_and_the_rest_kept() {
        let change = |number: &str| {
            serde_json::json!({ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "1", "phone_number_id": number },
                "contacts": [{ "wa_id": "555", "profile": { "name": "Ann" } }],
                "messages": [{ "from": "555", "id": format!("wamid.{number}"), "timestamp": "1", "type": "text", "text": { "body": "hi" } }]
            }})
        };
        let webhook: Webhook = serde_json::from_value(serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "waba", "changes": [change("111"), change("999")] }]
        }))
        .unwrap();
        let orgs = OrgDirectory::new("", [("111".to_string(), "acme".to_string())]);
        let out = normalize(&webhook, 0, &orgs);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].org, "acme");
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].code, UNKNOWN_NUMBER);
        assert!(
            out.rejected[0].reason.contains("999"),
            "{}",
            out.rejected[0].reason
        );
        let with_default = OrgDirectory::new("dev", []);
        assert_eq!(normalize(&webhook, 0, &with_default).events.len(), 2);
    }
}
