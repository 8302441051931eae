//! What the sink knows about each command, so no command is ever sent twice.
//!
//! Before each Graph API call the sink writes an intent (`messages.outbound.intents`)
//! and waits for Kafka's acknowledgement; after the answer it writes the result
//! (`messages.outbound.results`). At start both topics are read back. A command then
//! is either answered (skip it), intended but unanswered (the process died during
//! the call: Meta may or may not have it, and the Graph API has no idempotency key
//! to ask, so it is answered "outcome unknown" and never resent), or fresh.
//!
//! Meta's `biz_opaque_callback_data` carries the command id into every status webhook
//! of the message, so an in-doubt command whose `sent` status is on `whatsapp.events`
//! is known to have gone out: it is answered with that wamid instead.

use std::collections::{HashMap, HashSet};

use events::delivery::OutboundResult;

/// The decision for one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Never tried: send it.
    Fresh,
    /// Answered and the answer is on Kafka: nothing to do.
    Answered,
    /// Answered, but the answer's produce failed: produce it again, do not resend.
    Republish(Box<OutboundResult>),
    /// Tried, with no answer on record, but a status webhook names it: it went out
    /// as this wamid.
    SentAs(String),
    /// Tried, with no answer on record: report it, never resend.
    InDoubt,
}

#[derive(Debug, Default)]
pub struct Ledger {
    intended: HashSet<String>,
    answered: HashSet<String>,
    unpublished: HashMap<String, OutboundResult>,
    /// wamids of in-doubt commands, from status webhooks.
    seen_as: HashMap<String, String>,
}

impl Ledger {
    pub fn decide(&self, id: &str) -> Decision {
        if self.answered.contains(id) {
            Decision::Answered
        } else if let Some(result) = self.unpublished.get(id) {
            Decision::Republish(Box::new(result.clone()))
        } else if let Some(wamid) = self.seen_as.get(id) {
            Decision::SentAs(wamid.clone())
        } else if self.intended.contains(id) {
            Decision::InDoubt
        } else {
            Decision::Fresh
        }
    }

    /// An intent is on Kafka (read back, or just acknowledged).
    pub fn intended(&mut self, id: &str) {
        self.intended.insert(id.to_string());
    }

    /// Meta answered that it did not take the message (throttled, refused): the
    /// command may be tried again in this process without risk.
    pub fn not_sent(&mut self, id: &str) {
        self.intended.remove(id);
    }

    /// A status webhook of `wamid` carried `id` as its callback data. Kept only for
    /// commands in doubt, so memory stays bounded by them.
    pub fn status_seen(&mut self, id: &str, wamid: &str) {
        if self.intended.contains(id) && !self.answered.contains(id) {
            self.seen_as.insert(id.to_string(), wamid.to_string());
        }
    }

    /// Takes in what a re-read of the topics found (after a rebalance).
    pub fn merge(&mut self, read: Ledger) {
        for id in read.intended {
            self.intended(&id);
        }
        for (id, wamid) in read.seen_as {
            self.status_seen(&id, &wamid);
        }
        for id in read.answered {
            self.published(&id);
        }
    }

    /// The answer is known; until [`Self::published`] it is kept to publish again.
    pub fn answered(&mut self, result: OutboundResult) {
        self.unpublished.insert(result.id.clone(), result);
    }

    /// The result is on Kafka (read back, or just acknowledged).
    pub fn published(&mut self, id: &str) {
        self.unpublished.remove(id);
        self.seen_as.remove(id);
        self.answered.insert(id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> OutboundResult {
        OutboundResult {
            id: id.into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            wamid: Some("wamid.A".into()),
            error: None,
            at_ms: 0,
            to: "222".into(),
            sent_by: "ana".into(),
            message_type: "text".into(),
            preview: None,
        }
    }

    #[test]
    fn a_command_moves_from_fresh_to_answered_and_never_back() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.decide("a"), Decision::Fresh);
        ledger.intended("a");
        assert_eq!(ledger.decide("a"), Decision::InDoubt);
        ledger.answered(result("a"));
        assert_eq!(
            ledger.decide("a"),
            Decision::Republish(Box::new(result("a")))
        );
        ledger.published("a");
        assert_eq!(ledger.decide("a"), Decision::Answered);
        ledger.intended("a"); // a replayed intent changes nothing
        assert_eq!(ledger.decide("a"), Decision::Answered);
    }

    #[test]
    fn a_refused_send_may_be_tried_again_but_a_restart_still_doubts_it() {
        let mut ledger = Ledger::default();
        ledger.intended("a");
        ledger.not_sent("a");
        assert_eq!(ledger.decide("a"), Decision::Fresh);
        let mut restarted = Ledger::default();
        restarted.intended("a"); // read back from the intents topic
        assert_eq!(restarted.decide("a"), Decision::InDoubt);
    }

    #[test]
    fn a_command_in_doubt_that_a_status_names_went_out_as_that_wamid() {
        let mut ledger = Ledger::default();
        ledger.status_seen("a", "wamid.X"); // not in doubt: not kept
        assert_eq!(ledger.decide("a"), Decision::Fresh);
        ledger.intended("a");
        ledger.status_seen("a", "wamid.X");
        assert_eq!(ledger.decide("a"), Decision::SentAs("wamid.X".into()));
        ledger.published("a");
        assert_eq!(ledger.decide("a"), Decision::Answered);
    }

    #[test]
    fn a_re_read_adds_another_owners_intents_and_answers() {
        let mut mine = Ledger::default();
        mine.intended("a");
        mine.answered(result("a"));
        let mut read = Ledger::default();
        read.intended("b");
        read.intended("c");
        read.published("c");
        mine.merge(read);
        assert_eq!(mine.decide("a"), Decision::Republish(Box::new(result("a"))));
        assert_eq!(mine.decide("b"), Decision::InDoubt);
        assert_eq!(mine.decide("c"), Decision::Answered);
    }

    #[test]
    fn results_read_back_before_their_intents_still_count_as_answered() {
        let mut ledger = Ledger::default();
        ledger.published("a");
        ledger.intended("a");
        assert_eq!(ledger.decide("a"), Decision::Answered);
    }
}
