//! Events → MQTT publishes (pure): the topic scheme of DESIGN.md.

use events::WhatsAppEvent;
use events::event::{EventBody, Origin};

/// `{prefix}/{org}/conversations/{conversation_id}`.
pub fn conversation_topic(prefix: &str, org: &str, conversation_id: &str) -> String {
    format!("{prefix}/{org}/conversations/{conversation_id}")
}

/// Where an event is published, if anywhere: new messages and status changes go to
/// their conversation; history imports are not news and are read over REST.
pub fn topic_for(prefix: &str, event: &WhatsAppEvent) -> Option<String> {
    match &event.body {
        EventBody::Message(m) if m.origin != Origin::History => {
            Some(conversation_topic(prefix, &event.org, &m.conversation_id))
        }
        EventBody::Status(s) => Some(conversation_topic(prefix, &event.org, &s.conversation_id)),
        _ => None,
    }
}
