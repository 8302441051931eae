//! Records → MQTT publishes (pure): the topic scheme of DESIGN.md.
//!
//! - `{prefix}/{org}/conversations/{conversation_id}`: new messages, edits, revokes
//!   and reactions (updates of an earlier message), status transitions (forward
//!   only, from `messages.status`) and the Graph API's answers to outbound messages.
//! - `{prefix}/{org}/agents/{agent_id}/inbox`: what one agent must see: assignments
//!   (to the new owner), the outcome of a command (to whoever issued it, so a
//!   transfer also reaches the agent who gave the conversation away), and new
//!   customer messages of the agent's conversations. Every device of the agent
//!   subscribes to it.

use std::collections::HashMap;

use events::WhatsAppEvent;
use events::delivery::{OutboundResult, StatusTransition};
use events::inbox::{AssignmentEvent, ConversationState};
use events::semantics;

/// Re-exported for the API, which reads it from here until it stops depending on
/// `sinks`; the definition is [`events::inbox::BUSINESS_APP`].
pub use events::inbox::BUSINESS_APP;

/// `{prefix}/{org}/conversations/{conversation_id}`.
pub fn conversation_topic(prefix: &str, org: &str, conversation_id: &str) -> String {
    format!("{prefix}/{org}/conversations/{conversation_id}")
}

/// `{prefix}/{org}/agents/{agent_id}/inbox`.
pub fn inbox_topic(prefix: &str, org: &str, agent_id: &str) -> String {
    format!("{prefix}/{org}/agents/{agent_id}/inbox")
}

/// Who owns each conversation now, folded from `conversations.assignments`: the
/// sink's only state, rebuilt from that topic at start.
#[derive(Debug, Default, Clone)]
pub struct Owners {
    /// `org:conversation_id` → agent.
    owners: HashMap<String, String>,
}

/// A change to [`Owners`], so a batch that was not written can be undone.
#[derive(Debug)]
pub struct Undo {
    key: String,
    previous: Option<String>,
}

impl Owners {
    pub fn get(&self, org: &str, conversation_id: &str) -> Option<&str> {
        self.owners
            .get(&format!("{org}:{conversation_id}"))
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Applies an assignment; a rejected command changes nothing.
    pub fn apply(&mut self, a: &AssignmentEvent) -> Option<Undo> {
        if a.rejected.is_some() {
            return None;
        }
        let key = format!("{}:{}", a.org, a.conversation_id);
        let previous = match (a.state, &a.assignee) {
            (ConversationState::Assigned, Some(agent)) => {
                self.owners.insert(key.clone(), agent.clone())
            }
            _ => self.owners.remove(&key),
        };
        Some(Undo { key, previous })
    }

    /// Reverts changes, newest first.
    pub fn undo(&mut self, undo: Vec<Undo>) {
        for change in undo.into_iter().rev() {
            match change.previous {
                Some(agent) => self.owners.insert(change.key, agent),
                None => self.owners.remove(&change.key),
            };
        }
    }
}

fn is_agent(id: &str) -> bool {
    !id.is_empty() && id != BUSINESS_APP
}

/// Where an event of `whatsapp.events` goes: new messages, and edits, revokes and
/// reactions (updates of the message they name by `wamid`), to their conversation
/// (history imports are not news: they are read over REST); the customer writing
/// also to the inbox of the conversation's owner. Meta's raw statuses go nowhere:
/// devices get statuses from `messages.status` ([`status_topics`]), where they only
/// move forward.
pub fn event_topics(prefix: &str, event: &WhatsAppEvent, owners: &Owners) -> Vec<String> {
    let Some(conversation_id) = event.conversation_id() else {
        return Vec::new();
    };
    if !semantics::is_live_conversation_news(event) {
        return Vec::new();
    }
    let mut topics = vec![conversation_topic(prefix, &event.org, conversation_id)];
    if semantics::is_customer_writing(event)
        && let Some(agent) = owners.get(&event.org, conversation_id)
        && is_agent(agent)
    {
        topics.push(inbox_topic(prefix, &event.org, agent));
    }
    topics
}

/// A status transition (`messages.status`) goes to its message's conversation.
pub fn status_topics(prefix: &str, t: &StatusTransition) -> Vec<String> {
    if t.conversation_id.is_empty() {
        return Vec::new();
    }
    vec![conversation_topic(prefix, &t.org, &t.conversation_id)]
}

/// What a device receives for a status transition: the transition, with the
/// `kind: "status"`, `wamid` and `status` fields a status event has, so one reader
/// handles both.
pub fn status_payload(t: &StatusTransition) -> Vec<u8> {
    let mut value = serde_json::to_value(t).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), "status".into());
        object.insert("status".into(), t.to.as_str().into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Where an assignment goes: the new owner's inbox, and the issuer's when it
/// answers a command. A rejected command reaches its issuer only. An accepted note
/// also goes to its conversation, where every agent of the org following it sees it.
///
/// Not to the previous owner: the owners table is rebuilt from the whole topic at
/// start, ahead of where the group resumes, so "previous" would be wrong while it
/// catches up.
pub fn assignment_topics(prefix: &str, a: &AssignmentEvent) -> Vec<String> {
    let mut agents: Vec<&str> = Vec::new();
    if a.rejected.is_none()
        && a.state == ConversationState::Assigned
        && let Some(owner) = a.assignee.as_deref()
    {
        agents.push(owner);
    }
    if a.command_id.is_some() {
        agents.extend(a.issued_by.as_deref());
    }
    let mut topics: Vec<String> = Vec::new();
    if a.rejected.is_none() && a.note.is_some() {
        topics.push(conversation_topic(prefix, &a.org, &a.conversation_id));
    }
    for agent in agents.into_iter().filter(|a| is_agent(a)) {
        let topic = inbox_topic(prefix, &a.org, agent);
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics
}

/// An outbound message's result goes to its conversation.
/// Login codes and sync requests belong to no conversation and go nowhere.
pub fn outbound_result_topics(prefix: &str, r: &OutboundResult) -> Vec<String> {
    if !r.in_conversation() {
        return Vec::new();
    }
    vec![conversation_topic(prefix, &r.org, &r.conversation_id)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(assignee: Option<&str>, state: ConversationState) -> AssignmentEvent {
        AssignmentEvent {
            id: "a1".into(),
            org: "o".into(),
            phone_number_id: "p".into(),
            conversation_id: "c".into(),
            state,
            assignee: assignee.map(str::to_string),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: 0,
        }
    }

    #[test]
    fn only_the_customer_writing_reaches_the_owners_inbox() {
        let mut owners = Owners::default();
        let mut owned = assignment(Some("ann"), ConversationState::Assigned);
        owned.conversation_id = "p-c".into();
        owners.apply(&owned);
        for event in events::semantics::samples::not_customer_writing("o", "p", "c", 1) {
            let topics = event_topics("x", &event, &owners);
            assert!(
                topics.iter().all(|t| !t.ends_with("/inbox")),
                "{:?} reached {topics:?}",
                event.body
            );
            // Live changes reach the conversation (an update of the message they
            // name); history never.
            let history = matches!(
                events::semantics::classify(&event),
                events::semantics::Kind::NewMessage(events::event::Origin::History)
                    | events::semantics::Kind::Edit(events::event::Origin::History)
                    | events::semantics::Kind::Revoke(events::event::Origin::History)
                    | events::semantics::Kind::Reaction(events::event::Origin::History)
            );
            assert_eq!(topics.is_empty(), history, "{:?}", event.body);
        }
        let wrote = events::semantics::samples::message(
            "o",
            "p",
            "c",
            "m",
            events::event::Origin::Customer,
            1,
        );
        assert_eq!(
            event_topics("x", &wrote, &owners),
            ["x/o/conversations/p-c", "x/o/agents/ann/inbox"]
        );
    }

    #[test]
    fn an_assignment_reaches_the_new_owner_only() {
        let a = assignment(Some("ann"), ConversationState::Assigned);
        assert_eq!(assignment_topics("x", &a), ["x/o/agents/ann/inbox"]);
        let queued = assignment(None, ConversationState::Open);
        assert!(assignment_topics("x", &queued).is_empty());
        let app = assignment(Some(BUSINESS_APP), ConversationState::Assigned);
        assert!(assignment_topics("x", &app).is_empty());
    }

    #[test]
    fn a_command_result_reaches_its_issuer_once_and_a_rejection_only_the_issuer() {
        let mut transfer = assignment(Some("bob"), ConversationState::Assigned);
        transfer.command_id = Some("cmd1".into());
        transfer.issued_by = Some("ann".into());
        assert_eq!(
            assignment_topics("x", &transfer),
            ["x/o/agents/bob/inbox", "x/o/agents/ann/inbox"]
        );
        let mut claim = assignment(Some("ann"), ConversationState::Assigned);
        claim.command_id = Some("cmd2".into());
        claim.issued_by = Some("ann".into());
        assert_eq!(assignment_topics("x", &claim), ["x/o/agents/ann/inbox"]);
        let mut rejected = assignment(Some("bob"), ConversationState::Assigned);
        rejected.command_id = Some("cmd3".into());
        rejected.issued_by = Some("cy".into());
        rejected.rejected = Some("not the owner".into());
        assert_eq!(assignment_topics("x", &rejected), ["x/o/agents/cy/inbox"]);
    }

    #[test]
    fn an_accepted_note_reaches_its_conversation_and_a_rejected_one_only_the_issuer() {
        let mut note = assignment(None, ConversationState::Open);
        note.command_id = Some("cmd4".into());
        note.issued_by = Some("ann".into());
        note.note = Some("vip".into());
        assert_eq!(
            assignment_topics("x", &note),
            ["x/o/conversations/c", "x/o/agents/ann/inbox"]
        );
        note.rejected = Some("unknown conversation c".into());
        assert_eq!(assignment_topics("x", &note), ["x/o/agents/ann/inbox"]);
    }

    #[test]
    fn owners_follow_assignments_ignore_rejections_and_undo_in_reverse() {
        let mut owners = Owners::default();
        let mut undo = Vec::new();
        undo.extend(owners.apply(&assignment(Some("ann"), ConversationState::Assigned)));
        assert_eq!(owners.get("o", "c"), Some("ann"));
        let mut rejected = assignment(Some("bob"), ConversationState::Assigned);
        rejected.rejected = Some("no".into());
        assert!(owners.apply(&rejected).is_none());
        undo.extend(owners.apply(&assignment(Some("bob"), ConversationState::Assigned)));
        undo.extend(owners.apply(&assignment(None, ConversationState::Resolved)));
        assert_eq!(owners.get("o", "c"), None);
        owners.undo(undo);
        assert!(owners.is_empty());
    }
}
