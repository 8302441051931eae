//! JSON Schemas of every topic's value, generated from the Rust types. They are
//! checked in under `schemas/` for data teams (a test fails when they are stale) and
//! the local broker validates produced values against them.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use crate::{delivery, directory, event, inbox, topics};

/// The raw topic holds Meta's body verbatim; its schema covers the envelope only,
/// since change values are whatever Meta sends for the field.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct RawWebhook {
    /// Always `whatsapp_business_account` for WhatsApp.
    object: String,
    entry: Vec<RawEntry>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct RawEntry {
    /// The WhatsApp Business Account id.
    id: String,
    changes: Vec<RawChange>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct RawChange {
    /// messages, smb_message_echoes, smb_app_state_sync, history, or another field.
    field: String,
    value: Value,
}

/// `(topic, value schema)` for every topic that has one. `deadletter` has none: it
/// holds whatever could not be read, byte for byte.
pub fn topic_value_schemas() -> Vec<(&'static str, Value)> {
    let schemas = [
        (topics::WEBHOOKS_RAW, schema_for!(RawWebhook)),
        (topics::WHATSAPP_EVENTS, schema_for!(event::WhatsAppEvent)),
        (topics::AGENTS_PRESENCE, schema_for!(inbox::PresenceEvent)),
        (
            topics::CONVERSATION_COMMANDS,
            schema_for!(inbox::ConversationCommand),
        ),
        (
            topics::CONVERSATION_ASSIGNMENTS,
            schema_for!(inbox::AssignmentEvent),
        ),
        (
            topics::MESSAGES_OUTBOUND,
            schema_for!(delivery::OutboundMessage),
        ),
        (
            topics::OUTBOUND_RESULTS,
            schema_for!(delivery::OutboundResult),
        ),
        (
            topics::OUTBOUND_INTENTS,
            schema_for!(delivery::OutboundIntent),
        ),
        (
            topics::MESSAGES_STATUS,
            schema_for!(delivery::StatusTransition),
        ),
        (
            topics::NOTIFICATIONS_PUSH,
            schema_for!(delivery::PushNotification),
        ),
        (topics::MEDIA_STORED, schema_for!(delivery::MediaStored)),
        (
            topics::DIRECTORY_CHANGES,
            schema_for!(directory::DirectoryChange),
        ),
    ];
    schemas
        .into_iter()
        .map(|(topic, schema)| {
            let mut schema = schema.to_value();
            state_open_content(&mut schema);
            (topic, schema)
        })
        .collect()
}

/// States the open-content policy on every object schema that does not close
/// itself: `additionalProperties: true`. Consumers must ignore properties they do
/// not know, so a new optional property is a compatible change (`compat`, under the
/// FORWARD level compose configures); a type that closes itself
/// (`deny_unknown_fields`) keeps `false`.
pub fn state_open_content(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(true));
            }
            map.values_mut().for_each(state_open_content);
        }
        Value::Array(items) => items.iter_mut().for_each(state_open_content),
        _ => {}
    }
}

/// The file a topic's schema is checked in as.
pub fn schema_file_name(topic: &str) -> String {
    format!("{topic}.json")
}

/// The checked-in text of a schema: pretty JSON with a trailing newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
