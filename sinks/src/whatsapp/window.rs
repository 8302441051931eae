//! WhatsApp's customer service window: a business may send free-form messages only
//! within 24 hours of the customer's last message; outside it only templates go out.
//! Meta refuses late free-form messages too (131047), but only after accepting them,
//! as a failed status; deciding here gives the agent a clear reason at once.

use std::collections::HashMap;

use events::{WhatsAppEvent, ids, semantics};
use serde_json::Value;

/// The last message of each customer, per conversation.
#[derive(Debug, Default)]
pub struct WindowBook {
    last_inbound_s: HashMap<String, i64>,
}

/// Why a message may not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub reason: String,
}

impl WindowBook {
    /// Takes note of the customer writing (any other event is ignored: history is the
    /// past, and echoes, edits, revokes and reactions are not the customer writing;
    /// the rule is `events::semantics`).
    pub fn observe(&mut self, event: &WhatsAppEvent) {
        let Some(m) = semantics::customer_wrote(event) else {
            return;
        };
        let key = ids::conversation_id(&event.phone_number_id, &m.contact_wa_id);
        let last = self.last_inbound_s.entry(key).or_insert(m.sent_at);
        *last = (*last).max(m.sent_at);
    }

    /// Whether `payload` may be sent to `to` now.
    pub fn check(
        &self,
        phone_number_id: &str,
        to: &str,
        payload: &Value,
        now_ms: i64,
        window_hours: u64,
    ) -> Result<(), Closed> {
        if !needs_window(payload) {
            return Ok(());
        }
        let key = ids::conversation_id(phone_number_id, &ids::digits(to));
        let window_s = (window_hours as i64).saturating_mul(3600);
        match self.last_inbound_s.get(&key) {
            Some(last) if now_ms / 1000 - last < window_s => Ok(()),
            Some(last) => Err(Closed {
                reason: format!(
                    "outside the {window_hours}-hour customer service window: the customer last wrote {} h ago; only a template message can be sent",
                    (now_ms / 1000 - last) / 3600
                ),
            }),
            None => Err(Closed {
                reason: format!(
                    "outside the {window_hours}-hour customer service window: the customer has not written to this number; only a template message can be sent"
                ),
            }),
        }
    }

    /// Takes in what a re-read of `whatsapp.events` found (after a rebalance).
    pub fn merge(&mut self, read: WindowBook) {
        for (key, at) in read.last_inbound_s {
            let last = self.last_inbound_s.entry(key).or_insert(at);
            *last = (*last).max(at);
        }
    }

    /// Forgets customers whose window closed long ago (memory stays bounded).
    pub fn prune(&mut self, now_ms: i64, window_hours: u64) {
        let oldest = now_ms / 1000 - (window_hours as i64).saturating_mul(3600);
        self.last_inbound_s.retain(|_, last| *last >= oldest);
    }

    pub fn len(&self) -> usize {
        self.last_inbound_s.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_inbound_s.is_empty()
    }
}

/// Templates open conversations; read receipts and coexistence sync requests are not
/// messages to the customer. Everything else is free-form.
pub fn needs_window(payload: &Value) -> bool {
    events::outbound::OutboundPayload::from_value(payload).map_or(true, |p| p.needs_window())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::event::{MessageEvent, Origin};
    use proptest::prelude::*;
    use serde_json::json;

    fn inbound(number: &str, contact: &str, sent_at: i64, origin: Origin) -> WhatsAppEvent {
        MessageEvent::builder("acme", number, contact, &format!("wamid.{sent_at}"))
            .origin(origin)
            .sent_at(sent_at)
            .received_at_ms(sent_at * 1000)
            .event()
    }

    const HOUR_MS: i64 = 3_600_000;
    const T0: i64 = 1_750_000_000;

    #[test]
    fn free_form_goes_out_within_24_hours_and_templates_always() {
        let mut book = WindowBook::default();
        book.observe(&inbound("111", "222", T0, Origin::Customer));
        let text = json!({"type": "text", "text": {"body": "hi"}});
        let template = json!({"type": "template", "template": {"name": "hello_world", "language": {"code": "en"}}});
        let now = T0 * 1000;
        assert!(
            book.check("111", "+222", &text, now + 23 * HOUR_MS, 24)
                .is_ok()
        );
        let late = book.check("111", "222", &text, now + 25 * HOUR_MS, 24);
        assert!(late.unwrap_err().reason.contains("25 h ago"));
        assert!(
            book.check("111", "222", &template, now + 25 * HOUR_MS, 24)
                .is_ok()
        );
        let stranger = book.check("111", "333", &text, now, 24).unwrap_err();
        assert!(stranger.reason.contains("template"), "{}", stranger.reason);
        assert!(
            book.check("999", "222", &text, now, 24).is_err(),
            "per number"
        );
    }

    #[test]
    fn the_businesses_own_messages_do_not_open_the_window() {
        let mut book = WindowBook::default();
        book.observe(&inbound("111", "222", T0, Origin::BusinessApp));
        book.observe(&inbound("111", "222", T0, Origin::Api));
        let text = json!({"type": "text", "text": {"body": "hi"}});
        assert!(book.check("111", "222", &text, T0 * 1000, 24).is_err());
    }

    #[test]
    fn history_does_not_open_the_window() {
        let mut book = WindowBook::default();
        // Imported an hour ago, written by the customer a minute before: the past.
        book.observe(&inbound("111", "222", T0 - 60, Origin::History));
        let text = json!({"type": "text", "text": {"body": "hi"}});
        let refused = book.check("111", "222", &text, T0 * 1000, 24).unwrap_err();
        assert!(
            refused.reason.contains("has not written"),
            "{}",
            refused.reason
        );
    }

    #[test]
    fn read_receipts_and_sync_requests_need_no_window() {
        assert!(!needs_window(
            &json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A"})
        ));
        assert!(!needs_window(
            &json!({"type": "smb_app_data", "sync_type": "history"})
        ));
        assert!(needs_window(
            &json!({"type": "reaction", "reaction": {"message_id": "wamid.A", "emoji": "👍"}})
        ));
    }

    proptest! {
        /// Out-of-order and duplicate events: the window follows the latest message.
        #[test]
        fn the_window_follows_the_latest_message_in_any_order(mut times in proptest::collection::vec(0i64..200_000, 1..20)) {
            let mut book = WindowBook::default();
            for t in &times {
                book.observe(&inbound("111", "222", T0 + t, Origin::Customer));
            }
            times.sort_unstable();
            let latest = T0 + times[times.len() - 1];
            let text = json!({"type": "text"});
            prop_assert!(book.check("111", "222", &text, (latest + 24 * 3600 - 1) * 1000, 24).is_ok());
            prop_assert!(book.check("111", "222", &text, (latest + 24 * 3600) * 1000, 24).is_err());
        }

        /// No history, echo, send, edit, revoke or reaction opens or extends the window.
        #[test]
        fn only_the_customer_writing_opens_the_window(picks in proptest::collection::vec(0..20usize, 1..10), wrote in any::<bool>()) {
            let mut book = WindowBook::default();
            if wrote {
                book.observe(&inbound("111", "222", T0, Origin::Customer));
            }
            let samples = events::semantics::samples::not_customer_writing("acme", "111", "222", T0 + 3600);
            for pick in picks {
                book.observe(&samples[pick % samples.len()]);
            }
            let text = json!({"type": "text"});
            // Opened by the customer at T0 (or never): still closed 24 h after T0.
            prop_assert!(book.check("111", "222", &text, (T0 + 24 * 3600) * 1000, 24).is_err());
            prop_assert_eq!(book.check("111", "222", &text, T0 * 1000, 24).is_ok(), wrote);
        }
    }
}
