//! What an event means for the conversation it is about: the one place that decides
//! "does this count as the customer writing?" and "what kind of thing is this?".
//!
//! The router (open, reopen, hand to the Business app), the notifier (push), the
//! whatsapp sink's 24-hour window, the MongoDB conversation (`last_inbound_at`) and
//! the MQTT inbox all ask here, so they cannot disagree. The rules:
//!
//! - Only a **new, live message from the customer** counts as the customer writing.
//!   History is the past; an echo is the business; an edit, a revoke or a reaction
//!   changes an earlier message and is not a new one.
//! - A **new message from the Business app** (an echo) is the business answering.
//! - Everything else is bookkeeping: statuses, contact sync, history progress.

use crate::event::{EventBody, MessageEvent, Origin, WhatsAppEvent};

/// What an event is, for the conversation it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new message, written by `Origin`.
    NewMessage(Origin),
    /// An earlier message's content replaced.
    Edit(Origin),
    /// An earlier message deleted.
    Revoke(Origin),
    /// A reaction put on or taken off an earlier message.
    Reaction(Origin),
    /// A delivery status of an outbound message.
    Status,
    /// A contact changed in the Business app.
    ContactSync,
    /// Where the history import stands.
    HistoryProgress,
    /// A change we do not model.
    Unhandled,
}

/// Classifies an event.
pub fn classify(event: &WhatsAppEvent) -> Kind {
    match &event.body {
        EventBody::Message(m) => Kind::NewMessage(m.origin),
        EventBody::Edit(c) => Kind::Edit(c.origin),
        EventBody::Revoke(c) => Kind::Revoke(c.origin),
        EventBody::Reaction(r) => Kind::Reaction(r.origin),
        EventBody::Status(_) => Kind::Status,
        EventBody::ContactSync(_) => Kind::ContactSync,
        EventBody::HistoryProgress(_) => Kind::HistoryProgress,
        EventBody::Unhandled(_) => Kind::Unhandled,
    }
}

/// A new message in a known conversation (any writer), or `None` for everything
/// else: edits, revokes, reactions, statuses, and history media follow-ups that
/// name no customer.
pub fn new_message(event: &WhatsAppEvent) -> Option<&MessageEvent> {
    match &event.body {
        EventBody::Message(m) if !m.conversation_id.is_empty() => Some(m),
        _ => None,
    }
}

/// Does this event count as the customer writing? Only a new, live message from the
/// customer does: it opens the 24-hour window, creates and reopens work, is pushed
/// and reaches the owner's inbox. Never history, an echo, our own send, an edit, a
/// revoke or a reaction.
pub fn is_customer_writing(event: &WhatsAppEvent) -> bool {
    customer_wrote(event).is_some()
}

/// The customer's new live message, when [`is_customer_writing`].
pub fn customer_wrote(event: &WhatsAppEvent) -> Option<&MessageEvent> {
    new_message(event).filter(|m| m.origin == Origin::Customer && !is_unsupported_change(m))
}

/// A change to an earlier message that Meta cannot deliver to the Cloud API and
/// sends as `type: unsupported` with `unsupported.type` `edit` (how a customer's edit
/// arrives today; it names no original, so it is stored as is): not the customer
/// writing something new.
fn is_unsupported_change(m: &MessageEvent) -> bool {
    m.message_type == "unsupported"
        && matches!(
            m.raw
                .pointer("/unsupported/type")
                .and_then(serde_json::Value::as_str),
            Some("edit" | "revoke" | "reaction")
        )
}

/// Is this the business answering from the WhatsApp Business app (a new echo)?
pub fn is_business_app_writing(event: &WhatsAppEvent) -> bool {
    new_message(event).is_some_and(|m| m.origin == Origin::BusinessApp)
}

/// Is this a new message that belongs in a conversation's timeline (anyone's, history
/// included)? Edits, revokes and reactions change an existing entry instead.
pub fn adds_to_timeline(event: &WhatsAppEvent) -> bool {
    new_message(event).is_some()
}

/// Does a device subscribed to the conversation need to hear about it live? New
/// messages (not history: it is the past, read over REST) and changes to messages
/// (edits, revokes, reactions, history's excepted). Statuses reach devices from
/// `messages.status`, where they only move forward.
pub fn is_live_conversation_news(event: &WhatsAppEvent) -> bool {
    match classify(event) {
        Kind::NewMessage(origin)
        | Kind::Edit(origin)
        | Kind::Revoke(origin)
        | Kind::Reaction(origin) => origin != Origin::History,
        Kind::Status | Kind::ContactSync | Kind::HistoryProgress | Kind::Unhandled => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![
            Just(Origin::Customer),
            Just(Origin::BusinessApp),
            Just(Origin::History),
            Just(Origin::Api),
        ]
    }

    fn direction(origin: Origin) -> Direction {
        match origin {
            Origin::Customer | Origin::History => Direction::Inbound,
            Origin::BusinessApp | Origin::Api => Direction::Outbound,
        }
    }

    fn change(origin: Origin) -> MessageChangeEvent {
        MessageChangeEvent {
            wamid: "orig".into(),
            change_wamid: "chg".into(),
            conversation_id: "p-c".into(),
            contact_wa_id: "c".into(),
            direction: direction(origin),
            origin,
            sent_at: 1,
            message_type: None,
            preview: None,
            media: None,
            raw: Value::Null,
        }
    }

    /// Any body, with the message kinds weighted up.
    pub(crate) fn body() -> impl Strategy<Value = EventBody> {
        (0u8..6, origin(), any::<bool>()).prop_map(|(k, origin, empty)| match k {
            0 | 1 => {
                let (contact, conversation) = if empty { ("", "") } else { ("c", "p-c") };
                let message = MessageEvent::builder("o", "p", contact, "m")
                    .conversation(conversation)
                    .origin(origin)
                    .sent_at(1)
                    .message();
                EventBody::Message(message)
            }
            2 => EventBody::Edit(change(origin)),
            3 => EventBody::Revoke(change(origin)),
            4 => EventBody::Reaction(ReactionEvent {
                wamid: "orig".into(),
                change_wamid: "r".into(),
                conversation_id: "p-c".into(),
                contact_wa_id: "c".into(),
                direction: direction(origin),
                origin,
                reactor: "c".into(),
                emoji: (!empty).then(|| "👍".into()),
                sent_at: 1,
                raw: Value::Null,
            }),
            _ => EventBody::Unhandled(UnhandledEvent {
                field: "x".into(),
                raw: Value::Null,
            }),
        })
    }

    fn event(body: EventBody) -> WhatsAppEvent {
        WhatsAppEvent {
            id: "e".into(),
            org: "o".into(),
            phone_number_id: "p".into(),
            display_phone_number: String::new(),
            waba_id: String::new(),
            received_at_ms: 0,
            body,
        }
    }

    proptest! {
        /// Only a new customer message in a conversation counts as the customer
        /// writing: never history, an echo, our send, an edit, a revoke or a reaction.
        #[test]
        fn only_a_new_live_customer_message_is_the_customer_writing(body in body()) {
            let ev = event(body);
            let expected = matches!(&ev.body,
                EventBody::Message(m) if m.origin == Origin::Customer && !m.conversation_id.is_empty());
            prop_assert_eq!(is_customer_writing(&ev), expected);
            if matches!(classify(&ev),
                Kind::Edit(_) | Kind::Revoke(_) | Kind::Reaction(_) | Kind::NewMessage(Origin::History)
                | Kind::NewMessage(Origin::BusinessApp) | Kind::NewMessage(Origin::Api))
            {
                prop_assert!(!is_customer_writing(&ev));
            }
            prop_assert!(!(is_customer_writing(&ev) && is_business_app_writing(&ev)));
        }
    }

    #[test]
    fn a_customers_edit_meta_sends_as_unsupported_is_not_the_customer_writing() {
        let text = include_str!("../tests/fixtures/msg_unsupported.json");
        let webhook: crate::Webhook = serde_json::from_str(text).unwrap();
        let events = crate::normalize(&webhook, 0, &crate::OrgDirectory::new("o", [])).events;
        assert_eq!(events.len(), 1);
        assert!(adds_to_timeline(&events[0]), "stored, as Meta sent it");
        assert!(!is_customer_writing(&events[0]));
        // Any other unsupported message is still the customer writing.
        let other = text.replace(r#""type": "edit""#, r#""type": "poll""#);
        let webhook: crate::Webhook = serde_json::from_str(&other).unwrap();
        let events = crate::normalize(&webhook, 0, &crate::OrgDirectory::new("o", [])).events;
        assert!(is_customer_writing(&events[0]));
    }

    #[test]
    fn kind_names_match_the_serialized_tags() {
        for body in [
            EventBody::Edit(change(Origin::BusinessApp)),
            EventBody::Revoke(change(Origin::Customer)),
        ] {
            assert_eq!(serde_json::to_value(&body).unwrap()["kind"], body.kind());
        }
    }
}

/// Events of every kind that must never count as the customer writing, for the
/// property tests of the components that call this module (router, notifier,
/// whatsapp window, sinks).
#[cfg(any(test, feature = "testing"))]
pub mod samples {
    use serde_json::Value;

    use crate::event::*;
    use crate::ids;

    /// A new message of `origin` from (or to) customer `contact` on number `pn`.
    pub fn message(
        org: &str,
        pn: &str,
        contact: &str,
        wamid: &str,
        origin: Origin,
        sent_at: i64,
    ) -> WhatsAppEvent {
        MessageEvent::builder(org, pn, contact, wamid)
            .origin(origin)
            .sent_at(sent_at)
            .preview(&format!("{origin:?} says hi"))
            .event()
    }

    /// Everything about customer `contact` that is not the customer writing: history
    /// from either side, an echo, our own send, a customer's edit Meta sends as
    /// `unsupported`, and edits, revokes and reactions (put
    /// on and taken off) by either side, live or imported, all at `sent_at`.
    pub fn not_customer_writing(
        org: &str,
        pn: &str,
        contact: &str,
        sent_at: i64,
    ) -> Vec<WhatsAppEvent> {
        let conversation_id = ids::conversation_id(pn, contact);
        let mut unsupported_edit = message(org, pn, contact, "u1", Origin::Customer, sent_at);
        if let EventBody::Message(m) = &mut unsupported_edit.body {
            m.message_type = "unsupported".into();
            m.raw = serde_json::json!({ "type": "unsupported", "unsupported": { "type": "edit" } });
        }
        let mut out = vec![
            message(org, pn, contact, "h1", Origin::History, sent_at),
            message(org, pn, contact, "e1", Origin::BusinessApp, sent_at),
            message(org, pn, contact, "a1", Origin::Api, sent_at),
            unsupported_edit,
        ];
        for (i, origin) in [
            Origin::Customer,
            Origin::BusinessApp,
            Origin::History,
            Origin::Api,
        ]
        .into_iter()
        .enumerate()
        {
            let direction = if origin == Origin::Customer {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            let change = |id: String| MessageChangeEvent {
                wamid: "orig".into(),
                change_wamid: id,
                conversation_id: conversation_id.clone(),
                contact_wa_id: contact.into(),
                direction,
                origin,
                sent_at,
                message_type: Some("text".into()),
                preview: Some("edited".into()),
                media: None,
                raw: Value::Null,
            };
            let (edit, revoke) = (format!("ed{i}"), format!("rv{i}"));
            out.push(event(org, pn, &edit, EventBody::Edit(change(edit.clone()))));
            out.push(event(
                org,
                pn,
                &revoke,
                EventBody::Revoke(change(revoke.clone())),
            ));
            for emoji in [Some("👍".to_string()), None] {
                let id = format!("re{i}{}", emoji.is_some());
                out.push(event(
                    org,
                    pn,
                    &id,
                    EventBody::Reaction(ReactionEvent {
                        wamid: "orig".into(),
                        change_wamid: id.clone(),
                        conversation_id: conversation_id.clone(),
                        contact_wa_id: contact.into(),
                        direction,
                        origin,
                        reactor: contact.into(),
                        emoji,
                        sent_at,
                        raw: Value::Null,
                    }),
                ));
            }
        }
        out
    }

    fn event(org: &str, pn: &str, id: &str, body: EventBody) -> WhatsAppEvent {
        WhatsAppEvent {
            id: id.into(),
            org: org.into(),
            phone_number_id: pn.into(),
            display_phone_number: String::new(),
            waba_id: String::new(),
            received_at_ms: 0,
            body,
        }
    }

    #[cfg(test)]
    #[test]
    fn none_of_the_samples_is_the_customer_writing() {
        let all = not_customer_writing("o", "p", "c", 1);
        assert_eq!(all.len(), 4 + 4 * 4);
        assert!(all.iter().all(|e| !super::is_customer_writing(e)));
        assert!(super::is_customer_writing(&message(
            "o",
            "p",
            "c",
            "m",
            Origin::Customer,
            1
        )));
    }
}
