//! Builders for tests and benches (feature `testing`): a [`MessageEvent`] with every
//! field a test does not care about at a plain default, so a new field is added here
//! once instead of in every test's literal.

use serde_json::Value;

use crate::event::{Direction, EventBody, MediaRef, MessageEvent, Origin};
use crate::{WhatsAppEvent, ids};

/// A message of customer `contact` on a business number, built field by field:
/// `MessageEvent::builder(org, number, contact, wamid).sent_at(t).event()`.
///
/// Defaults: a customer's (inbound) text, conversation `{number}-{contact}`, sent and
/// received at 0, no preview, media, reply or errors, `raw` null; the event's id is
/// the wamid.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    org: String,
    phone_number_id: String,
    received_at_ms: i64,
    message: MessageEvent,
}

impl MessageEvent {
    /// See [`MessageBuilder`].
    pub fn builder(org: &str, phone_number_id: &str, contact: &str, wamid: &str) -> MessageBuilder {
        MessageBuilder {
            org: org.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            received_at_ms: 0,
            message: MessageEvent {
                wamid: wamid.to_owned(),
                conversation_id: ids::conversation_id(phone_number_id, contact),
                contact_wa_id: contact.to_owned(),
                contact_name: None,
                direction: Direction::Inbound,
                origin: Origin::Customer,
                sent_at: 0,
                message_type: "text".into(),
                preview: None,
                reply_to: None,
                media: None,
                history_status: None,
                errors: vec![],
                raw: Value::Null,
            },
        }
    }
}

impl MessageBuilder {
    /// Who wrote it; the direction follows (the customer and history in, the rest out).
    pub fn origin(mut self, origin: Origin) -> Self {
        self.message.direction = match origin {
            Origin::Customer | Origin::History => Direction::Inbound,
            Origin::BusinessApp | Origin::Api => Direction::Outbound,
        };
        self.message.origin = origin;
        self
    }

    /// Overrides the conversation id (`{number}-{contact}` by default).
    pub fn conversation(mut self, conversation_id: &str) -> Self {
        self.message.conversation_id = conversation_id.to_owned();
        self
    }

    /// Meta's `timestamp`, in Unix seconds.
    pub fn sent_at(mut self, seconds: i64) -> Self {
        self.message.sent_at = seconds;
        self
    }

    /// When ingest received it, in ms.
    pub fn received_at_ms(mut self, ms: i64) -> Self {
        self.received_at_ms = ms;
        self
    }

    pub fn contact_name(mut self, name: &str) -> Self {
        self.message.contact_name = Some(name.to_owned());
        self
    }

    pub fn preview(mut self, preview: &str) -> Self {
        self.message.preview = Some(preview.to_owned());
        self
    }

    /// Meta's `type` (`text` by default).
    pub fn message_type(mut self, message_type: &str) -> Self {
        self.message.message_type = message_type.to_owned();
        self
    }

    pub fn media(mut self, media: MediaRef) -> Self {
        self.message.media = Some(media);
        self
    }

    pub fn raw(mut self, raw: Value) -> Self {
        self.message.raw = raw;
        self
    }

    /// The message alone.
    pub fn message(self) -> MessageEvent {
        self.message
    }

    /// The message as an event of `whatsapp.events`.
    pub fn event(self) -> WhatsAppEvent {
        WhatsAppEvent {
            id: self.message.wamid.clone(),
            org: self.org,
            phone_number_id: self.phone_number_id,
            display_phone_number: String::new(),
            waba_id: String::new(),
            received_at_ms: self.received_at_ms,
            body: EventBody::Message(self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_fills_what_the_test_leaves_out() {
        let event = MessageEvent::builder("o", "1", "2", "wamid.A")
            .origin(Origin::BusinessApp)
            .sent_at(7)
            .preview("hi")
            .event();
        assert_eq!(
            (event.id.as_str(), event.conversation_id()),
            ("wamid.A", Some("1-2"))
        );
        let EventBody::Message(m) = event.body else {
            panic!("not a message");
        };
        assert_eq!((m.direction, m.sent_at), (Direction::Outbound, 7));
        assert_eq!(m.preview.as_deref(), Some("hi"));
    }
}
