//! Events → rows, one table per kind of event (pure). Times are split into Unix
//! seconds (`DateTime`) and a millisecond column, which ClickHouse 18.16 and current
//! versions both store.

use clickhouse::Row;
use events::WhatsAppEvent;
use events::delivery::{OutboundMessage, OutboundResult, StatusTransition};
use events::event::EventBody;
use events::inbox::AssignmentEvent;
use events::webhook::ApiError;
use serde::{Deserialize, Serialize};

/// Every row carries the org and the event id it is deduplicated by.
pub trait Keyed {
    /// The table the row goes to.
    const TABLE: &'static str;
    fn org(&self) -> &str;
    /// The second column of every table's sort key: lets lookups use the index.
    fn phone_number_id(&self) -> &str;
    fn event_id(&self) -> &str;
}

macro_rules! keyed {
    ($row:ty, $table:literal) => {
        impl Keyed for $row {
            const TABLE: &'static str = $table;
            fn org(&self) -> &str {
                &self.org
            }
            fn phone_number_id(&self) -> &str {
                &self.phone_number_id
            }
            fn event_id(&self) -> &str {
                &self.event_id
            }
        }
    };
}

/// `message_events`: messages, edits, revokes, reactions and Meta's raw statuses from
/// `whatsapp.events` (`kind` tells them apart).
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
keyed!(MessageEventRow, "message_events");

/// `status_transitions`: one step forward of a message's status (`messages.status`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct StatusTransitionRow {
    pub event_id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub wamid: String,
    /// Empty for a message's first transition.
    pub from_status: String,
    pub to_status: String,
    pub error_code: i32,
    pub error_title: String,
    pub event_time: u32,
    /// When the message reached `from_status` (0: unknown); the sink fills it in.
    pub from_time: u32,
    /// The template the message was sent with ('' for none or unknown); the sink
    /// fills it in from the send.
    pub template_name: String,
}
keyed!(StatusTransitionRow, "status_transitions");

/// `assignments`: a conversation's owner after a change, or a command's outcome.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct AssignmentRow {
    pub event_id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub state: String,
    pub assignee: String,
    pub command_id: String,
    pub issued_by: String,
    pub rejected: String,
    pub event_time: u32,
    pub event_ms: u16,
}
keyed!(AssignmentRow, "assignments");

/// `outbound_messages`: a send we asked for (kind `message`) or the Graph API's
/// answer to it (kind `result`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct OutboundRow {
    pub event_id: String,
    pub kind: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub outbound_id: String,
    pub sent_by: String,
    pub message_type: String,
    pub template_name: String,
    pub wamid: String,
    pub error_code: i32,
    pub error_title: String,
    pub event_time: u32,
    pub event_ms: u16,
}
keyed!(OutboundRow, "outbound_messages");

/// One row per message, edit, revoke, reaction or status event; other kinds are not
/// message analytics.
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
        received_at: seconds(event.received_at_ms),
        received_ms: millis(event.received_at_ms),
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
        // Changes to an earlier message are events of their own kind, about that
        // message (`wamid`), never counted as messages.
        EventBody::Edit(c) | EventBody::Revoke(c) => {
            row.kind = event.body.kind().into();
            row.conversation_id = c.conversation_id.clone();
            row.contact_wa_id = c.contact_wa_id.clone();
            row.wamid = c.wamid.clone();
            row.direction = label(&c.direction);
            row.origin = label(&c.origin);
            row.message_type = c.message_type.clone().unwrap_or_default();
            row.event_time = u32::try_from(c.sent_at).unwrap_or_default();
        }
        EventBody::Reaction(r) => {
            row.kind = "reaction".into();
            row.conversation_id = r.conversation_id.clone();
            row.contact_wa_id = r.contact_wa_id.clone();
            row.wamid = r.wamid.clone();
            row.direction = label(&r.direction);
            row.origin = label(&r.origin);
            // The emoji, empty when the reaction was taken off.
            row.message_type = r.emoji.clone().unwrap_or_default();
            row.event_time = u32::try_from(r.sent_at).unwrap_or_default();
        }
        EventBody::Status(s) => {
            row.kind = "status".into();
            row.conversation_id = s.conversation_id.clone();
            row.contact_wa_id = s.recipient_id.clone();
            row.wamid = s.wamid.clone();
            row.direction = "outbound".into();
            row.status = s.status.clone();
            row.error_code = s.errors.first().map_or(0, code);
            row.event_time = u32::try_from(s.at).unwrap_or_default();
        }
        _ => return None,
    }
    Some(row)
}

pub fn status_row(t: &StatusTransition) -> StatusTransitionRow {
    StatusTransitionRow {
        event_id: t.id.clone(),
        org: t.org.clone(),
        phone_number_id: t.phone_number_id.clone(),
        conversation_id: t.conversation_id.clone(),
        wamid: t.wamid.clone(),
        from_status: t.from.map(|s| s.as_str().to_string()).unwrap_or_default(),
        to_status: t.to.as_str().into(),
        error_code: t.error.as_ref().map_or(0, code),
        error_title: t.error.as_ref().map(title).unwrap_or_default(),
        event_time: u32::try_from(t.at).unwrap_or_default(),
        from_time: 0,
        template_name: String::new(),
    }
}

pub fn assignment_row(a: &AssignmentEvent) -> AssignmentRow {
    AssignmentRow {
        event_id: a.id.clone(),
        org: a.org.clone(),
        phone_number_id: a.phone_number_id.clone(),
        conversation_id: a.conversation_id.clone(),
        state: label(&a.state),
        assignee: a.assignee.clone().unwrap_or_default(),
        command_id: a.command_id.clone().unwrap_or_default(),
        issued_by: a.issued_by.clone().unwrap_or_default(),
        rejected: a.rejected.clone().unwrap_or_default(),
        event_time: seconds(a.at_ms),
        event_ms: millis(a.at_ms),
    }
}

/// A send: its type and, for templates, the template's name (what the funnel is
/// broken down by).
pub fn outbound_row(m: &OutboundMessage) -> OutboundRow {
    let message_type = m.payload["type"].as_str().unwrap_or_default().to_string();
    let template_name = m.payload["template"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    OutboundRow {
        event_id: format!("message:{}", m.id),
        kind: "message".into(),
        org: m.org.clone(),
        phone_number_id: m.phone_number_id.clone(),
        conversation_id: m.conversation_id.clone(),
        outbound_id: m.id.clone(),
        sent_by: m.sent_by.clone(),
        message_type,
        template_name,
        wamid: String::new(),
        error_code: 0,
        error_title: String::new(),
        event_time: seconds(m.at_ms),
        event_ms: millis(m.at_ms),
    }
}

/// The Graph API's answer: the wamid that links a send to its statuses, or an error.
/// Its `template_name` is the send's, filled in by the sink.
pub fn result_row(r: &OutboundResult) -> OutboundRow {
    OutboundRow {
        event_id: format!("result:{}", r.id),
        kind: "result".into(),
        org: r.org.clone(),
        phone_number_id: r.phone_number_id.clone(),
        conversation_id: r.conversation_id.clone(),
        outbound_id: r.id.clone(),
        sent_by: String::new(),
        message_type: String::new(),
        template_name: String::new(),
        wamid: r.wamid.clone().unwrap_or_default(),
        error_code: r.error.as_ref().map_or(0, code),
        error_title: r.error.as_ref().map(title).unwrap_or_default(),
        event_time: seconds(r.at_ms),
        event_ms: millis(r.at_ms),
    }
}

/// Meta's error code; one that does not fit an `Int32` is kept as -1, not dropped.
fn code(e: &ApiError) -> i32 {
    i32::try_from(e.code).unwrap_or(-1)
}

fn title(e: &ApiError) -> String {
    e.title.clone().unwrap_or_default()
}

/// Whole seconds of a millisecond timestamp (0 when before 1970 or past 2106).
fn seconds(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000)).unwrap_or_default()
}

fn millis(ms: i64) -> u16 {
    u16::try_from(ms.rem_euclid(1000)).unwrap_or_default()
}

/// The serde name of a unit enum variant (`inbound`, `business_app`, ...).
fn label<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::DeliveryStatus;
    use events::inbox::ConversationState;
    use serde_json::json;

    fn error(code_: i64, title_: &str) -> ApiError {
        serde_json::from_value(json!({"code": code_, "title": title_})).unwrap()
    }

    #[test]
    fn a_transition_keeps_both_ends_and_its_error() {
        let t = StatusTransition {
            id: "w:failed".into(),
            org: "acme".into(),
            phone_number_id: "1".into(),
            conversation_id: "1-2".into(),
            wamid: "w".into(),
            from: Some(DeliveryStatus::Sent),
            to: DeliveryStatus::Failed,
            at: 1_700_000_000,
            error: Some(error(131026, "Message undeliverable")),
        };
        let row = status_row(&t);
        assert_eq!(row.from_status, "sent");
        assert_eq!(row.to_status, "failed");
        assert_eq!(row.error_code, 131026);
        assert_eq!(row.error_title, "Message undeliverable");
        assert_eq!(row.event_time, 1_700_000_000);
        let first = status_row(&StatusTransition {
            from: None,
            error: None,
            ..t
        });
        assert_eq!((first.from_status.as_str(), first.error_code), ("", 0));
    }

    #[test]
    fn an_assignment_splits_milliseconds_and_empties_absent_fields() {
        let a = AssignmentEvent {
            id: "x".into(),
            org: "acme".into(),
            phone_number_id: "1".into(),
            conversation_id: "1-2".into(),
            state: ConversationState::Assigned,
            assignee: Some("ann".into()),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: 1_700_000_000_123,
        };
        let row = assignment_row(&a);
        assert_eq!(row.state, "assigned");
        assert_eq!(row.assignee, "ann");
        assert_eq!((row.event_time, row.event_ms), (1_700_000_000, 123));
        assert_eq!(row.command_id, "");
    }

    #[test]
    fn sends_and_results_share_the_outbound_id_but_not_the_event_id() {
        let m = OutboundMessage {
            id: "cmd-1".into(),
            org: "acme".into(),
            phone_number_id: "1".into(),
            conversation_id: "1-2".into(),
            to: "2".into(),
            sent_by: "ann".into(),
            at_ms: 5_000,
            payload: json!({"type": "template", "template": {"name": "order_update"}}),
        };
        let r = m.result(None, Some(error(131047, "Re-engagement message")), 6_500);
        let (m, r) = (outbound_row(&m), result_row(&r));
        assert_eq!(m.outbound_id, r.outbound_id);
        assert_ne!(m.event_id, r.event_id);
        assert_eq!(
            (m.message_type.as_str(), m.template_name.as_str()),
            ("template", "order_update")
        );
        assert_eq!(
            (r.error_code, r.wamid.as_str(), r.event_ms),
            (131047, "", 500)
        );
    }

    #[test]
    fn out_of_range_times_and_codes_do_not_panic() {
        assert_eq!(seconds(-5), 0);
        assert_eq!(seconds(i64::MAX), 0);
        assert_eq!(millis(-1), 999);
        assert_eq!(code(&error(i64::MAX, "")), -1);
    }
}
