//! The status processor's state machine: every message's delivery status moves only
//! forward (accepted → sent → delivered → read; failed terminal), whatever order and
//! however often Meta reports it. Input: status events from webhooks and the Graph
//! API's answers to our sends; output: one `messages.status` transition per step
//! forward. Pure: the Kafka loop feeds it and produces what it returns.
//!
//! State is a fold over its own outputs ([`StatusInput::Replayed`]), so a restarted
//! processor rebuilds it from `messages.status` and re-processed inputs emit nothing new.

pub mod stage;

use std::collections::{HashMap, VecDeque};

use events::delivery::{OutboundResult, StatusTransition};
use events::event::EventBody;
use events::{DeliveryStatus, WhatsAppEvent, ids};

/// `[processors.status]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StatusConfig {
    /// Messages whose status is remembered (the oldest are forgotten beyond it).
    pub capacity: usize,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
        }
    }
}

/// What the machine reads.
#[derive(Debug, Clone, Copy)]
pub enum StatusInput<'a> {
    /// A webhook event (only `status` events matter).
    Event(&'a WhatsAppEvent),
    /// The Graph API's answer to one of our sends: accepted with a wamid, or failed.
    OutboundResult(&'a OutboundResult),
    /// A transition this processor emitted before (state rebuild; emits nothing).
    Replayed(&'a StatusTransition),
}

/// Per-message delivery state, bounded: beyond `capacity` messages the oldest are
/// forgotten (Meta stops reporting a message's statuses within days; the MongoDB
/// sink still refuses to move a forgotten message backwards).
#[derive(Debug)]
pub struct StatusTracker {
    current: HashMap<String, DeliveryStatus>,
    order: VecDeque<String>,
    capacity: usize,
}

impl StatusTracker {
    pub fn new(capacity: usize) -> Self {
        Self {
            current: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The furthest status seen for `wamid` in `org`.
    pub fn status(&self, org: &str, wamid: &str) -> Option<DeliveryStatus> {
        self.current.get(&key(org, wamid)).copied()
    }

    /// Feeds one input; returns the transition to emit, if the status moved forward.
    pub fn handle(&mut self, input: StatusInput<'_>) -> Option<StatusTransition> {
        let proposed = match input {
            StatusInput::Event(event) => from_event(event)?,
            StatusInput::OutboundResult(result) => from_result(result),
            StatusInput::Replayed(transition) => {
                self.advance(&transition.org, &transition.wamid, transition.to);
                return None;
            }
        };
        let from = self.status(&proposed.org, &proposed.wamid);
        if !from.is_none_or(|now| now.advances_to(proposed.to)) {
            return None; // a duplicate, or late news of an earlier step
        }
        self.advance(&proposed.org, &proposed.wamid, proposed.to);
        Some(StatusTransition { from, ..proposed })
    }

    /// Undoes `transitions` (newest first), for a batch whose outputs could not be
    /// written: the retry must see the same state and emit them again.
    pub fn rewind(&mut self, transitions: &[StatusTransition]) {
        for t in transitions.iter().rev() {
            let key = key(&t.org, &t.wamid);
            match t.from {
                Some(previous) => {
                    self.current.insert(key, previous);
                }
                None => {
                    self.current.remove(&key);
                    self.order.retain(|k| k != &key);
                }
            }
        }
    }

    fn advance(&mut self, org: &str, wamid: &str, to: DeliveryStatus) {
        let key = key(org, wamid);
        match self.current.get_mut(&key) {
            Some(now) => *now = DeliveryStatus::merge(Some(*now), to),
            None => {
                self.current.insert(key.clone(), to);
                self.order.push_back(key);
                while self.order.len() > self.capacity {
                    if let Some(old) = self.order.pop_front() {
                        self.current.remove(&old);
                    }
                }
            }
        }
    }
}

fn key(org: &str, wamid: &str) -> String {
    format!("{org}:{wamid}")
}

/// A status webhook as a proposed transition (`from` is filled in by the tracker).
fn from_event(event: &WhatsAppEvent) -> Option<StatusTransition> {
    let EventBody::Status(status) = &event.body else {
        return None;
    };
    let to = DeliveryStatus::from_meta(&status.status)?;
    Some(StatusTransition {
        id: ids::status_id(&status.wamid, to.as_str()),
        org: event.org.clone(),
        phone_number_id: event.phone_number_id.clone(),
        conversation_id: status.conversation_id.clone(),
        wamid: status.wamid.clone(),
        from: None,
        to,
        at: status.at,
        error: status.errors.first().cloned(),
    })
}

/// Accepted with a wamid, or failed before Meta gave it one (then the outbound id
/// stands in for the wamid, prefixed so it cannot collide with one).
fn from_result(result: &OutboundResult) -> StatusTransition {
    let outcome = result.outcome();
    let (wamid, to) = (outcome.message_id(), outcome.status());
    StatusTransition {
        id: ids::status_id(&wamid, to.as_str()),
        org: result.org.clone(),
        phone_number_id: result.phone_number_id.clone(),
        conversation_id: result.conversation_id.clone(),
        wamid,
        from: None,
        to,
        at: result.at_ms / 1000,
        error: result.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::event::StatusEvent;
    use proptest::prelude::*;

    fn status_event(wamid: &str, status: &str) -> WhatsAppEvent {
        WhatsAppEvent {
            id: ids::status_id(wamid, status),
            org: "acme".into(),
            phone_number_id: "1".into(),
            display_phone_number: String::new(),
            waba_id: String::new(),
            received_at_ms: 0,
            body: EventBody::Status(StatusEvent {
                wamid: wamid.into(),
                conversation_id: "1-2".into(),
                status: status.into(),
                recipient_id: "2".into(),
                at: 10,
                errors: vec![],
                raw: serde_json::Value::Null,
            }),
        }
    }

    fn run(tracker: &mut StatusTracker, statuses: &[&str]) -> Vec<StatusTransition> {
        statuses
            .iter()
            .filter_map(|s| tracker.handle(StatusInput::Event(&status_event("w", s))))
            .collect()
    }

    #[test]
    fn read_before_delivered_never_moves_back() {
        let mut tracker = StatusTracker::new(10);
        let out = run(&mut tracker, &["sent", "read", "delivered", "read"]);
        let steps: Vec<_> = out.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            steps,
            vec![
                (None, DeliveryStatus::Sent),
                (Some(DeliveryStatus::Sent), DeliveryStatus::Read)
            ]
        );
        assert_eq!(out[1].id, "w:read");
    }

    #[test]
    fn failed_is_terminal_and_unknown_statuses_are_ignored() {
        let mut tracker = StatusTracker::new(10);
        let out = run(&mut tracker, &["sent", "deleted", "failed", "read"]);
        assert_eq!(out.last().map(|t| t.to), Some(DeliveryStatus::Failed));
        assert_eq!(tracker.status("acme", "w"), Some(DeliveryStatus::Failed));
    }

    #[test]
    fn rewind_lets_a_failed_batch_emit_again() {
        let mut tracker = StatusTracker::new(10);
        let first = run(&mut tracker, &["sent", "read"]);
        tracker.rewind(&first);
        assert_eq!(tracker.status("acme", "w"), None);
        assert_eq!(run(&mut tracker, &["sent", "read"]), first);
    }

    #[test]
    fn ids_are_scoped_per_org() {
        let mut tracker = StatusTracker::new(10);
        let mut other = status_event("w", "read");
        other.org = "globex".into();
        assert!(
            tracker
                .handle(StatusInput::Event(&status_event("w", "read")))
                .is_some()
        );
        assert!(
            tracker.handle(StatusInput::Event(&other)).is_some(),
            "another org's message is another message"
        );
    }

    #[test]
    fn outbound_results_accept_or_fail() {
        let mut tracker = StatusTracker::new(10);
        let accepted = OutboundResult {
            id: "cmd-1".into(),
            org: "acme".into(),
            phone_number_id: "1".into(),
            conversation_id: "1-2".into(),
            wamid: Some("w".into()),
            error: None,
            at_ms: 5_000,
            to: "2".into(),
            sent_by: "ana".into(),
            message_type: "text".into(),
            preview: Some("hi".into()),
        };
        let t = tracker
            .handle(StatusInput::OutboundResult(&accepted))
            .unwrap();
        assert_eq!(
            (t.to, t.at, t.id.as_str()),
            (DeliveryStatus::Accepted, 5, "w:accepted")
        );
        let failed = OutboundResult {
            wamid: None,
            id: "cmd-2".into(),
            ..accepted
        };
        let failed = OutboundResult {
            error: Some(serde_json::from_value(serde_json::json!({"code": 131047})).unwrap()),
            ..failed
        };
        let t = tracker
            .handle(StatusInput::OutboundResult(&failed))
            .unwrap();
        assert_eq!(
            (t.to, t.wamid.as_str()),
            (DeliveryStatus::Failed, "outbound:cmd-2")
        );
    }

    fn any_status() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("sent"),
            Just("delivered"),
            Just("read"),
            Just("failed"),
            Just("deleted")
        ]
    }

    proptest! {
        /// For any order and duplication of status events: transitions only go
        /// forward, and the last one is the highest status reached (failed terminal).
        #[test]
        fn monotonic_whatever_the_order(statuses in proptest::collection::vec(any_status(), 1..30)) {
            let mut tracker = StatusTracker::new(100);
            let out = run(&mut tracker, &statuses);
            for pair in out.windows(2) {
                prop_assert!(pair[0].to.advances_to(pair[1].to));
                prop_assert_eq!(pair[1].from, Some(pair[0].to));
            }
            let highest = statuses.iter().filter_map(|s| DeliveryStatus::from_meta(s)).max();
            prop_assert_eq!(out.last().map(|t| t.to), highest);
            prop_assert_eq!(tracker.status("acme", "w"), highest);
        }

        /// A restarted tracker, rebuilt from the transitions already emitted, emits
        /// nothing for inputs it had handled and continues exactly where it was.
        #[test]
        fn rebuilt_from_its_outputs(
            before in proptest::collection::vec(any_status(), 1..20),
            after in proptest::collection::vec(any_status(), 0..20),
        ) {
            let mut original = StatusTracker::new(100);
            let emitted = run(&mut original, &before);
            let mut rebuilt = StatusTracker::new(100);
            for t in &emitted {
                prop_assert!(rebuilt.handle(StatusInput::Replayed(t)).is_none());
            }
            prop_assert!(run(&mut rebuilt, &before).is_empty(), "re-processed inputs emitted again");
            prop_assert_eq!(run(&mut rebuilt, &after), run(&mut original, &after));
        }
    }
}
