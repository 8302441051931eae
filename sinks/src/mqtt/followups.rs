//! Changes (edits, revokes, reactions) that reached the sink before the message they
//! change. MQTT has no upsert, and an app that gets "replace message X" before X
//! has nothing to replace. The change is published at once (never held back from
//! the commit, so never lost), kept here, and published again right after X, so a
//! device that ignored it the first time ends in the right state. Bounded: the
//! oldest are forgotten beyond `capacity`.

use std::collections::{HashMap, VecDeque};

use events::WhatsAppEvent;
use events::event::EventBody;

/// Topics and payload of one publish.
pub type Publish = (Vec<String>, Vec<u8>);

#[derive(Debug)]
pub struct Followups {
    capacity: usize,
    /// `org:wamid` of the original → the changes to publish after it.
    waiting: HashMap<String, Vec<Publish>>,
    order: VecDeque<String>,
}

/// The original a change applies to, as `org:wamid` (the original's scoped id).
pub fn original_of(event: &WhatsAppEvent) -> Option<String> {
    match &event.body {
        EventBody::Edit(c) | EventBody::Revoke(c) => Some(format!("{}:{}", event.org, c.wamid)),
        EventBody::Reaction(r) => Some(format!("{}:{}", event.org, r.wamid)),
        _ => None,
    }
}

impl Followups {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            waiting: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Keeps a change published before its `original` (once: a batch that is
    /// redone keeps it again).
    pub fn wait(&mut self, original: String, publish: Publish) {
        if !self.waiting.contains_key(&original) {
            self.order.push_back(original.clone());
        }
        let changes = self.waiting.entry(original).or_default();
        if !changes.contains(&publish) {
            changes.push(publish);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.waiting.remove(&old);
            }
        }
    }

    /// The changes to publish again after `original` (its scoped id), in the order
    /// they came; kept until [`Self::release`], so a batch that fails loses none.
    pub fn after(&self, original: &str) -> Vec<Publish> {
        self.waiting.get(original).cloned().unwrap_or_default()
    }

    /// Forgets the changes of `original`, published again after it.
    pub fn release(&mut self, original: &str) -> Vec<Publish> {
        match self.waiting.remove(original) {
            Some(changes) => {
                self.order.retain(|o| o != original);
                changes
            }
            None => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(n: u8) -> Publish {
        (vec![format!("t{n}")], vec![n])
    }

    #[test]
    fn changes_are_released_once_after_their_original_in_order() {
        let mut f = Followups::new(10);
        f.wait("o:m1".into(), publish(1));
        f.wait("o:m1".into(), publish(2));
        f.wait("o:m1".into(), publish(1)); // a redone batch
        f.wait("o:m2".into(), publish(3));
        assert_eq!(f.after("o:m1"), [publish(1), publish(2)]);
        assert!(f.release("o:m9").is_empty());
        assert_eq!(f.release("o:m1"), [publish(1), publish(2)]);
        assert!(f.release("o:m1").is_empty());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn bounded_by_capacity_forgetting_the_oldest() {
        let mut f = Followups::new(2);
        for i in 0..100u8 {
            f.wait(format!("o:m{i}"), publish(i));
        }
        assert_eq!(f.len(), 2);
        assert!(f.release("o:m0").is_empty());
        assert_eq!(f.release("o:m99"), [publish(99)]);
    }

    #[test]
    fn only_changes_have_an_original() {
        for event in events::semantics::samples::not_customer_writing("o", "p", "c", 1) {
            let expected = match &event.body {
                EventBody::Edit(c) | EventBody::Revoke(c) => Some(format!("o:{}", c.wamid)),
                EventBody::Reaction(r) => Some(format!("o:{}", r.wamid)),
                _ => None,
            };
            assert_eq!(original_of(&event), expected);
        }
    }
}
