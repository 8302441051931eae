//! Events → `message_events` rows (pure).

use clickhouse::Row;
use events::WhatsAppEvent;
use events::event::EventBody;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct MessageEventRow {
    pub event_id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub contact_wa_id: String,
    pub kind: String,
    pub wamid: String,
    pub direction: String,
    pub origin: String,
    pub message_type: String,
    pub status: String,
    pub error_code: i32,
    /// Unix seconds.
    pub event_time: u32,
    pub received_at: u32,
    pub received_ms: u16,
}

/// One row per message or status event; other kinds are not message analytics.
pub fn row(event: &WhatsAppEvent) -> Option<MessageEventRow> {
    let mut row = MessageEventRow {
        event_id: event.id.clone(),
        org: event.org.clone(),
        phone_number_id: event.phone_number_id.clone(),
        conversation_id: String::new(),
        contact_wa_id: String::new(),
        kind: String::new(),
        wamid: String::new(),
        direction: String::new(),
        origin: String::new(),
        message_type: String::new(),
        status: String::new(),
        error_code: 0,
        event_time: 0,
        received_at: u32::try_from(event.received_at_ms / 1000).unwrap_or_default(),
        received_ms: u16::try_from(event.received_at_ms.rem_euclid(1000)).unwrap_or_default(),
    };
    match &event.body {
        EventBody::Message(m) => {
            row.kind = "message".into();
            row.conversation_id = m.conversation_id.clone();
            row.contact_wa_id = m.contact_wa_id.clone();
            row.wamid = m.wamid.clone();
            row.direction = label(&m.direction);
            row.origin = label(&m.origin);
            row.message_type = m.message_type.clone();
            row.event_time = u32::try_from(m.sent_at).unwrap_or_default();
        }
        EventBody::Status(s) => {
            row.kind = "status".into();
            row.conversation_id = s.conversation_id.clone();
            row.contact_wa_id = s.recipient_id.clone();
            row.wamid = s.wamid.clone();
            row.direction = "outbound".into();
            row.status = s.status.clone();
            row.error_code = s
                .errors
                .first()
                .map_or(0, |e| i32::try_from(e.code).unwrap_or(-1));
            row.event_time = u32::try_from(s.at).unwrap_or_default();
        }
        _ => return None,
    }
    Some(row)
}

/// The serde name of a unit enum variant (`inbound`, `business_app`, ...).
fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
