//! The steady stream `coexist chaos` sends, and what each store must hold once it
//! has been handled. Pure: item `i` of a run always produces the same webhooks, so
//! what was sent is known without recording it.

use std::collections::BTreeSet;

use events::delivery::OutboundMessage;
use serde_json::{Value, json};

/// The shape of one run's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// Makes wamids unique to the run.
    pub run: String,
    /// The org the numbers belong to.
    pub org: String,
    /// Business numbers (`phone_number_id`), used in turn.
    pub numbers: Vec<String>,
    /// Customers per number.
    pub contacts: usize,
    /// Every `reply_every`-th item also carries a reply from the Business app
    /// (`smb_message_echoes`) and its statuses sent → delivered → read (0: never).
    pub reply_every: usize,
    /// Every `send_every`-th item (offset by one from the replies) also has an agent
    /// send a template to the customer: a command on `messages.outbound`, as the API
    /// writes it (0: never). Templates go out whatever the 24-hour window says.
    pub send_every: usize,
}

/// One signed-to-be webhook body and the event ids it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub body: Value,
}

/// What one item must leave behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Message wamids (customer's and Business-app replies): one MongoDB `messages`
    /// document each.
    pub messages: BTreeSet<String>,
    /// `wamid:status` of every status: one `message_statuses` document, and one
    /// `status_transitions` row each (statuses are sent in order).
    pub statuses: BTreeSet<String>,
    /// Replies, whose MongoDB status must end at `read`.
    pub replies: BTreeSet<String>,
    /// `{number}-{contact}`: one MongoDB conversation, assigned once.
    pub conversations: BTreeSet<String>,
    /// Ids of agents' send commands: one call to the Graph API each, and one
    /// accepted outcome in MongoDB's `command_results`.
    pub commands: BTreeSet<String>,
}

impl Expected {
    /// Every event id: one `message_events` row and one MQTT delivery each.
    pub fn event_ids(&self) -> BTreeSet<String> {
        self.messages.union(&self.statuses).cloned().collect()
    }

    pub fn extend(&mut self, other: Expected) {
        self.messages.extend(other.messages);
        self.statuses.extend(other.statuses);
        self.replies.extend(other.replies);
        self.conversations.extend(other.conversations);
        self.commands.extend(other.commands);
    }
}

/// The statuses a reply goes through, in the order they are sent.
pub const REPLY_STATUSES: [&str; 3] = ["sent", "delivered", "read"];

impl Traffic {
    /// The business number and customer of item `i`: numbers in turn, then customers.
    pub fn parties(&self, i: u64) -> (&str, String) {
        let numbers = self.numbers.len().max(1) as u64;
        let number = &self.numbers[(i % numbers) as usize];
        let contact = (i / numbers) % self.contacts.max(1) as u64;
        (number, format!("1555{contact:07}"))
    }

    /// The webhooks of item `i`, in the order they must be sent, and what they leave.
    pub fn item(&self, i: u64, at_secs: u64) -> (Vec<Webhook>, Expected) {
        let (number, contact) = self.parties(i);
        let mut expected = Expected::default();
        expected.conversations.insert(format!("{number}-{contact}"));
        let inbound = format!("wamid.chaos.{}.in.{i}", self.run);
        let mut hooks = vec![Webhook {
            body: crate::simulate::inbound_text(
                number,
                &contact,
                "Chaos Customer",
                &inbound,
                &format!("message {i}"),
                at_secs,
            ),
        }];
        expected.messages.insert(inbound);
        if self.reply_every > 0 && i % self.reply_every as u64 == self.reply_every as u64 - 1 {
            let reply = format!("wamid.chaos.{}.out.{i}", self.run);
            hooks.push(Webhook {
                body: echo(number, &contact, &reply, at_secs),
            });
            for (step, status) in REPLY_STATUSES.iter().enumerate() {
                hooks.push(Webhook {
                    body: status_update(number, &contact, &reply, status, at_secs + step as u64),
                });
                expected.statuses.insert(format!("{reply}:{status}"));
            }
            expected.messages.insert(reply.clone());
            expected.replies.insert(reply);
        }
        if let Some(command) = self.command(i, 0) {
            expected.commands.insert(command.id);
        }
        (hooks, expected)
    }
}

impl Traffic {
    /// The agent's send command of item `i`, if it has one.
    pub fn command(&self, i: u64, at_ms: i64) -> Option<OutboundMessage> {
        let every = self.send_every as u64;
        if every == 0 || i % every != 1 % every {
            return None;
        }
        let (number, contact) = self.parties(i);
        Some(OutboundMessage {
            id: format!("chaos-{}-send-{i}", self.run),
            org: self.org.clone(),
            phone_number_id: number.to_string(),
            conversation_id: events::ids::conversation_id(number, &contact),
            to: contact,
            sent_by: "agent0".into(),
            at_ms,
            payload: json!({
                "type": "template",
                "template": { "name": "order_update", "language": { "code": "en_US" } }
            }),
        })
    }
}

fn envelope(number: &str, field: &str, value: Value) -> Value {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({ "display_phone_number": "15550783881", "phone_number_id": number });
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": field, "value": value }] }]
    })
}

/// A reply typed in the WhatsApp Business app, as Meta echoes it.
fn echo(number: &str, contact: &str, wamid: &str, at: u64) -> Value {
    envelope(
        number,
        "smb_message_echoes",
        json!({ "message_echoes": [{
            "from": "15550783881", "to": contact, "id": wamid, "timestamp": at.to_string(),
            "type": "text", "text": { "body": "On its way!" }
        }]}),
    )
}

/// A delivery status of a message we (or the Business app) sent.
fn status_update(number: &str, contact: &str, wamid: &str, status: &str, at: u64) -> Value {
    envelope(
        number,
        "messages",
        json!({ "statuses": [{
            "id": wamid, "status": status, "timestamp": at.to_string(), "recipient_id": contact
        }]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic() -> Traffic {
        Traffic {
            run: "r1".into(),
            org: "acme".into(),
            numbers: vec!["111".into(), "222".into()],
            contacts: 3,
            reply_every: 4,
            send_every: 4,
        }
    }

    #[test]
    fn items_cycle_numbers_then_customers() {
        let t = traffic();
        let parties: Vec<_> = (0..7).map(|i| t.parties(i)).collect();
        assert_eq!(parties[0], ("111", "15550000000".into()));
        assert_eq!(parties[1], ("222", "15550000000".into()));
        assert_eq!(parties[2], ("111", "15550000001".into()));
        assert_eq!(parties[6], ("111", "15550000000".into()));
    }

    #[test]
    fn every_fourth_item_carries_a_reply_and_its_three_statuses() {
        let t = traffic();
        let (hooks, expected) = t.item(2, 1_700_000_000);
        assert_eq!(hooks.len(), 1);
        assert_eq!(expected.event_ids().len(), 1);
        let (hooks, expected) = t.item(3, 1_700_000_000);
        assert_eq!(hooks.len(), 5);
        assert_eq!(
            expected.statuses,
            BTreeSet::from([
                "wamid.chaos.r1.out.3:sent".to_string(),
                "wamid.chaos.r1.out.3:delivered".to_string(),
                "wamid.chaos.r1.out.3:read".to_string(),
            ])
        );
        assert_eq!(expected.event_ids().len(), 5);
        assert_eq!(
            hooks[1].body["entry"][0]["changes"][0]["field"],
            "smb_message_echoes"
        );
        assert_eq!(
            hooks[4].body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"],
            "read"
        );
    }

    #[test]
    fn every_fourth_item_but_another_one_carries_a_template_send() {
        let t = traffic();
        let sends: Vec<u64> = (0..12).filter(|i| t.command(*i, 0).is_some()).collect();
        assert_eq!(sends, vec![1, 5, 9]);
        let command = t.command(5, 7).expect("a send");
        assert_eq!(command.id, "chaos-r1-send-5");
        assert_eq!(command.conversation_id, "222-15550000002");
        assert_eq!(command.payload["type"], "template");
    }

    #[test]
    fn the_bodies_parse_into_exactly_the_expected_events() {
        let t = traffic();
        for i in 0..8 {
            let (hooks, expected) = t.item(i, 1_700_000_000);
            let mut ids = BTreeSet::new();
            for hook in hooks {
                let webhook: events::Webhook =
                    serde_json::from_value(hook.body).expect("a well-formed webhook");
                let orgs = events::OrgDirectory::new("chaos", []);
                let normalized = events::normalize(&webhook, 0, &orgs);
                assert!(normalized.rejected.is_empty(), "{:?}", normalized.rejected);
                ids.extend(normalized.events.into_iter().map(|e| e.id));
            }
            assert_eq!(ids, expected.event_ids(), "item {i}");
        }
    }
}
