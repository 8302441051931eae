//! The notifier's state machine: who gets a push, and when. A push goes to an agent
//! only when none of their devices is online (an online device already gets the
//! MQTT message), never for history imports, at most once per conversation within a
//! collapse window, and at most `max_per_minute` per agent. Pure: the Kafka loop feeds
//! it assignments, inbound messages and presence, and produces what it returns.
//!
//! Presence is read from its own topic, by a follower that waits the long fetch wait,
//! so the news that an agent's last device went offline can reach the notifier after
//! a message that came later. "Online" is judged as of when the message came: what
//! was withheld because a device looked online is kept for [`LATE_PRESENCE_MS`], and
//! an offline that turns out to be older than it releases it.

pub mod stage;

use std::collections::{HashMap, HashSet, VecDeque};

use events::WhatsAppEvent;
use events::delivery::PushNotification;
use events::inbox::{AssignmentEvent, ConversationState, PresenceEvent, PresenceState};
use events::semantics;
use serde::{Deserialize, Serialize};

/// `[processors.notifier]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NotifierConfig {
    /// Further news of a conversation within this window does not push again.
    pub collapse_window_ms: i64,
    /// Most pushes one agent receives per minute.
    pub max_per_minute: usize,
    /// Where a new consumer group starts: `latest` (pushes about the past are
    /// noise) or `earliest` (tests that must not race the group's join).
    pub new_group_starts_at: String,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            collapse_window_ms: 60_000,
            max_per_minute: 6,
            new_group_starts_at: "latest".into(),
        }
    }
}

/// What the machine reads.
#[derive(Debug, Clone, Copy)]
pub enum NotifierInput<'a> {
    Assignment(&'a AssignmentEvent),
    Event(&'a WhatsAppEvent),
    Presence(&'a PresenceEvent),
}

#[derive(Debug, Default)]
pub struct Notifier {
    config: NotifierConfig,
    /// `org:conversation` → assigned agent.
    owners: HashMap<String, String>,
    /// `org:agent` → devices currently online.
    online: HashMap<String, HashSet<String>>,
    /// `org:agent:conversation` → when it was last pushed.
    last_push: HashMap<String, i64>,
    /// `org:agent` → times of recent pushes (for the per-minute limit).
    recent: HashMap<String, VecDeque<i64>>,
    /// `org:agent` → pushes withheld because a device was online, oldest first.
    withheld: HashMap<String, VecDeque<Draft>>,
    /// `last_push` and `recent` are pruned of what no longer decides anything when
    /// they reach this size (then twice what is left), so they stay bounded by the
    /// pushes of the last collapse window, not by every conversation ever pushed.
    prune_at: usize,
}

/// The smallest size at which the push books are pruned.
const PRUNE_FROM: usize = 1024;

/// How late the news of a device going offline may reach the notifier and still
/// release what was withheld meanwhile. The presence follower waits at most the
/// background fetch wait (1 s by default) for a record; this covers that many times.
pub const LATE_PRESENCE_MS: i64 = 10_000;

/// Withheld pushes kept per agent (the oldest go first): one per conversation is all
/// a release can push within the collapse window.
const MAX_WITHHELD_PER_AGENT: usize = 32;

/// A push about to be decided: what it says and when its cause happened (when
/// ingest received the message; when the router assigned the conversation).
#[derive(Debug, Clone)]
struct Draft {
    org: String,
    agent: String,
    conversation_id: String,
    cause: String,
    title: String,
    body: String,
    happened_at_ms: i64,
}

impl Notifier {
    pub fn new(config: NotifierConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Learns who owns a conversation without pushing or spending any rate limit:
    /// how state is rebuilt from `conversations.assignments` at start.
    pub fn remember(&mut self, a: &AssignmentEvent) {
        if a.rejected.is_some() {
            return;
        }
        let key = format!("{}:{}", a.org, a.conversation_id);
        match (a.state, &a.assignee) {
            (ConversationState::Assigned, Some(agent)) => self.owners.insert(key, agent.clone()),
            _ => self.owners.remove(&key),
        };
    }

    /// Feeds one input at `now_ms`; returns the pushes to send (at most one, except
    /// when a late offline releases what was withheld).
    pub fn handle(&mut self, input: NotifierInput<'_>, now_ms: i64) -> Vec<PushNotification> {
        match input {
            NotifierInput::Presence(p) => self.presence(p, now_ms),
            NotifierInput::Assignment(a) => self.assignment(a, now_ms).into_iter().collect(),
            NotifierInput::Event(e) => self.event(e, now_ms).into_iter().collect(),
        }
    }

    fn presence(&mut self, p: &PresenceEvent, now_ms: i64) -> Vec<PushNotification> {
        let agent_key = format!("{}:{}", p.org, p.agent_id);
        let devices = self.online.entry(agent_key.clone()).or_default();
        match p.state {
            PresenceState::Offline => {
                devices.remove(&p.device_id);
                if !devices.is_empty() {
                    return Vec::new();
                }
                self.online.remove(&agent_key);
                // Whatever came after the last device went offline would have been
                // pushed, had this been known in time.
                let withheld = self.withheld.remove(&agent_key).unwrap_or_default();
                withheld
                    .into_iter()
                    .filter(|d| {
                        d.happened_at_ms > p.at_ms && now_ms - d.happened_at_ms <= LATE_PRESENCE_MS
                    })
                    .filter_map(|d| self.push(d, now_ms))
                    .collect()
            }
            // Bounded: a device beyond the cap is not tracked (at worst, one push
            // too many).
            _ if devices.len() >= events::inbox::MAX_DEVICES_PER_AGENT => Vec::new(),
            _ => {
                devices.insert(p.device_id.clone());
                Vec::new()
            }
        }
    }

    fn assignment(&mut self, a: &AssignmentEvent, now_ms: i64) -> Option<PushNotification> {
        let key = format!("{}:{}", a.org, a.conversation_id);
        let agent = match (&a.rejected, a.state, &a.assignee) {
            (Some(_), _, _) => return None, // a refused command changes nothing
            (None, ConversationState::Assigned, Some(agent)) => agent.clone(),
            _ => {
                self.owners.remove(&key);
                return None;
            }
        };
        let newly = self.owners.insert(key, agent.clone()).as_ref() != Some(&agent);
        if !newly {
            return None;
        }
        let draft = Draft {
            org: a.org.clone(),
            agent,
            conversation_id: a.conversation_id.clone(),
            cause: a.id.clone(),
            title: "New conversation".into(),
            body: "A conversation was assigned to you".into(),
            happened_at_ms: a.at_ms,
        };
        self.push(draft, now_ms)
    }

    fn event(&mut self, e: &WhatsAppEvent, now_ms: i64) -> Option<PushNotification> {
        // Only the customer writing is news: not history, echoes, our own sends,
        // edits, revokes or reactions (`events::semantics`).
        let m = semantics::customer_wrote(e)?;
        let agent = self
            .owners
            .get(&format!("{}:{}", e.org, m.conversation_id))?
            .clone();
        let title = m
            .contact_name
            .clone()
            .unwrap_or_else(|| format!("+{}", m.contact_wa_id));
        let body = m
            .preview
            .clone()
            .unwrap_or_else(|| format!("New {} message", m.message_type));
        let draft = Draft {
            org: e.org.clone(),
            agent,
            conversation_id: m.conversation_id.clone(),
            cause: e.id.clone(),
            title,
            body,
            happened_at_ms: e.received_at_ms,
        };
        self.push(draft, now_ms)
    }

    fn push(&mut self, d: Draft, now_ms: i64) -> Option<PushNotification> {
        if d.agent == events::inbox::BUSINESS_APP {
            return None;
        }
        let agent_key = format!("{}:{}", d.org, d.agent);
        if self
            .online
            .get(&agent_key)
            .is_some_and(|devices| !devices.is_empty())
        {
            // An online device already has it over MQTT, unless the news that it
            // went offline before this is still on its way.
            let withheld = self.withheld.entry(agent_key).or_default();
            while withheld.front().is_some_and(|w| {
                now_ms - w.happened_at_ms > LATE_PRESENCE_MS
                    || withheld.len() >= MAX_WITHHELD_PER_AGENT
            }) {
                withheld.pop_front();
            }
            withheld.push_back(d);
            return None;
        }
        let collapse_key = format!("{agent_key}:{}", d.conversation_id);
        if self
            .last_push
            .get(&collapse_key)
            .is_some_and(|at| now_ms - at < self.config.collapse_window_ms)
        {
            return None;
        }
        let recent = self.recent.entry(agent_key).or_default();
        while recent.front().is_some_and(|at| now_ms - at >= 60_000) {
            recent.pop_front();
        }
        if recent.len() >= self.config.max_per_minute {
            return None;
        }
        recent.push_back(now_ms);
        self.last_push.insert(collapse_key, now_ms);
        if self.last_push.len() + self.recent.len() + self.withheld.len()
            >= self.prune_at.max(PRUNE_FROM)
        {
            self.prune(now_ms);
        }
        Some(PushNotification {
            id: format!("{}:{}", d.cause, d.agent),
            org: d.org,
            agent_id: d.agent,
            title: d.title,
            body: d.body,
            conversation_id: d.conversation_id,
            at_ms: now_ms,
        })
    }
}

impl Notifier {
    /// Forgets collapse marks older than the collapse window and per-minute books
    /// with nothing in the last minute: neither can refuse a push any more.
    fn prune(&mut self, now_ms: i64) {
        let window = self.config.collapse_window_ms;
        self.last_push.retain(|_, at| now_ms - *at < window);
        self.recent.retain(|_, times| {
            while times.front().is_some_and(|at| now_ms - at >= 60_000) {
                times.pop_front();
            }
            !times.is_empty()
        });
        self.withheld.retain(|_, withheld| {
            withheld.retain(|w| now_ms - w.happened_at_ms <= LATE_PRESENCE_MS);
            !withheld.is_empty()
        });
        self.prune_at = 2 * (self.last_push.len() + self.recent.len() + self.withheld.len());
    }

    /// How many entries the push books hold (the bound the pruning keeps).
    pub fn booked(&self) -> usize {
        let withheld: usize = self.withheld.values().map(VecDeque::len).sum();
        self.last_push.len() + self.recent.len() + self.online.len() + withheld
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::event::{EventBody, MessageEvent, Origin};
    use proptest::prelude::*;

    fn assign(conversation: &str, agent: &str) -> AssignmentEvent {
        AssignmentEvent {
            id: format!("a-{conversation}-{agent}"),
            org: "acme".into(),
            phone_number_id: "1".into(),
            conversation_id: conversation.into(),
            state: ConversationState::Assigned,
            assignee: Some(agent.into()),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: 0,
        }
    }

    fn message(id: &str, conversation: &str, origin: Origin) -> WhatsAppEvent {
        MessageEvent::builder("acme", "1", "2", id)
            .conversation(conversation)
            .origin(origin)
            .contact_name("Ann")
            .preview("hi")
            .event()
    }

    /// `handle` where at most one push may come out.
    fn handle1(n: &mut Notifier, input: NotifierInput<'_>, now: i64) -> Option<PushNotification> {
        let mut pushes = n.handle(input, now);
        assert!(pushes.len() <= 1, "{pushes:?}");
        pushes.pop()
    }

    fn presence(agent: &str, device: &str, state: PresenceState) -> PresenceEvent {
        PresenceEvent {
            org: "acme".into(),
            agent_id: agent.into(),
            device_id: device.into(),
            state,
            conversation_id: None,
            at_ms: 0,
        }
    }

    #[test]
    fn pushes_only_agents_with_no_online_device() {
        let mut n = Notifier::new(NotifierConfig::default());
        handle1(
            &mut n,
            NotifierInput::Presence(&presence("ann", "phone", PresenceState::Online)),
            0,
        );
        assert!(handle1(&mut n, NotifierInput::Assignment(&assign("c1", "ann")), 0).is_none());
        handle1(
            &mut n,
            NotifierInput::Presence(&presence("ann", "phone", PresenceState::Offline)),
            1,
        );
        let push = handle1(
            &mut n,
            NotifierInput::Event(&message("m1", "c1", Origin::Customer)),
            2,
        )
        .unwrap();
        assert_eq!(
            (
                push.agent_id.as_str(),
                push.title.as_str(),
                push.body.as_str()
            ),
            ("ann", "Ann", "hi")
        );
        assert_eq!(push.id, "m1:ann");
    }

    /// The agent's phone went offline at 100, but the notifier hears of it only after
    /// the customer wrote at 50 (while online), 150 and 160: the offline releases a
    /// push for 150 (160 is collapsed into it), none for 50 and none for the
    /// assignment at 10.
    #[test]
    fn an_offline_heard_late_releases_what_came_after_it() {
        let mut n = Notifier::new(NotifierConfig::default());
        let at = |mut p: PresenceEvent, ms| {
            p.at_ms = ms;
            p
        };
        let written = |id, ms| {
            let mut e = message(id, "c1", Origin::Customer);
            e.received_at_ms = ms;
            e
        };
        let online = at(presence("ann", "phone", PresenceState::Online), 0);
        assert!(n.handle(NotifierInput::Presence(&online), 0).is_empty());
        let mut assigned = assign("c1", "ann");
        assigned.at_ms = 10;
        for input in [
            NotifierInput::Assignment(&assigned),
            NotifierInput::Event(&written("m50", 50)),
            NotifierInput::Event(&written("m150", 150)),
            NotifierInput::Event(&written("m160", 160)),
        ] {
            assert!(n.handle(input, 200).is_empty(), "withheld: online");
        }
        let offline = at(presence("ann", "phone", PresenceState::Offline), 100);
        let released = n.handle(NotifierInput::Presence(&offline), 300);
        let ids: Vec<&str> = released.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["m150:ann"]);
        // Released once: another offline (a second device) releases nothing more.
        let tablet = at(presence("ann", "tablet", PresenceState::Offline), 90);
        assert!(n.handle(NotifierInput::Presence(&tablet), 310).is_empty());
    }

    /// While another device stays online, or once the news is older than
    /// `LATE_PRESENCE_MS`, nothing is released; and what is withheld stays bounded.
    #[test]
    fn withheld_pushes_are_released_only_by_the_last_device_and_only_while_recent() {
        let mut n = Notifier::new(NotifierConfig::default());
        let device = |d: &str, state, ms| {
            let mut p = presence("ann", d, state);
            p.at_ms = ms;
            p
        };
        n.remember(&assign("c1", "ann"));
        for d in ["phone", "tablet"] {
            n.handle(
                NotifierInput::Presence(&device(d, PresenceState::Online, 0)),
                0,
            );
        }
        for i in 0..100i64 {
            let mut e = message(&format!("m{i}"), "c1", Origin::Customer);
            e.received_at_ms = 1_000 + i;
            assert!(n.handle(NotifierInput::Event(&e), 1_000 + i).is_empty());
        }
        assert!(n.booked() <= 3 + MAX_WITHHELD_PER_AGENT, "{}", n.booked());
        let phone_off = device("phone", PresenceState::Offline, 500);
        assert!(
            n.handle(NotifierInput::Presence(&phone_off), 1_200)
                .is_empty(),
            "the tablet is still online"
        );
        let tablet_off = device("tablet", PresenceState::Offline, 500);
        let too_late = 1_100 + LATE_PRESENCE_MS;
        assert!(
            n.handle(NotifierInput::Presence(&tablet_off), too_late)
                .is_empty(),
            "heard too late to matter"
        );
    }

    #[test]
    fn collapses_per_conversation_and_never_pushes_history() {
        let mut n = Notifier::new(NotifierConfig::default());
        assert!(handle1(&mut n, NotifierInput::Assignment(&assign("c1", "ann")), 0).is_some());
        assert!(
            handle1(
                &mut n,
                NotifierInput::Event(&message("m1", "c1", Origin::Customer)),
                10
            )
            .is_none(),
            "collapsed"
        );
        assert!(
            handle1(
                &mut n,
                NotifierInput::Event(&message("m2", "c1", Origin::History)),
                70_000
            )
            .is_none()
        );
        assert!(
            handle1(
                &mut n,
                NotifierInput::Event(&message("m3", "c1", Origin::Customer)),
                70_000
            )
            .is_some()
        );
    }

    #[test]
    fn remembering_owners_spends_no_rate_limit() {
        let mut n = Notifier::new(NotifierConfig {
            collapse_window_ms: 60_000,
            max_per_minute: 1,
            ..NotifierConfig::default()
        });
        for i in 0..5 {
            n.remember(&assign(&format!("c{i}"), "ann"));
        }
        // Known owner: the next customer message pushes at once.
        assert!(
            handle1(
                &mut n,
                NotifierInput::Event(&message("m1", "c3", Origin::Customer)),
                0
            )
            .is_some()
        );
    }

    #[test]
    fn the_push_books_stay_bounded_by_the_recent_pushes() {
        let mut n = Notifier::new(NotifierConfig::default());
        let mut pushed = 0;
        // A push a second for half a day, each to a new conversation of one of 50
        // agents: without pruning, 43,200 collapse marks.
        for i in 0..43_200i64 {
            let a = assign(&format!("c{i}"), &format!("agent{}", i % 50));
            pushed += handle1(&mut n, NotifierInput::Assignment(&a), i * 1000).is_some() as usize;
            n.remember(&AssignmentEvent {
                state: ConversationState::Resolved,
                assignee: None,
                ..a
            });
        }
        assert_eq!(pushed, 43_200, "none refused: each agent gets ~1 a minute");
        assert!(n.booked() < 2 * PRUNE_FROM, "{} entries", n.booked());
    }

    #[test]
    fn rate_limited_per_agent() {
        let mut n = Notifier::new(NotifierConfig {
            collapse_window_ms: 0,
            max_per_minute: 2,
            ..NotifierConfig::default()
        });
        let pushed: Vec<bool> = (0..4)
            .map(|i| {
                handle1(
                    &mut n,
                    NotifierInput::Assignment(&assign(&format!("c{i}"), "ann")),
                    i,
                )
                .is_some()
            })
            .collect();
        assert_eq!(pushed, vec![true, true, false, false]);
        assert!(
            handle1(
                &mut n,
                NotifierInput::Assignment(&assign("c9", "ann")),
                60_001
            )
            .is_some()
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Presence(usize, usize, bool),
        Assign(usize, usize),
        Message(usize, bool),
        /// Anything that is not the customer writing (history, echo, edit, ...).
        Other(usize, usize),
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..2usize, any::<bool>()).prop_map(|(a, d, on)| Step::Presence(a, d, on)),
            (0..4usize, 0..3usize).prop_map(|(c, a)| Step::Assign(c, a)),
            (0..4usize, any::<bool>()).prop_map(|(c, history)| Step::Message(c, history)),
            (0..4usize, 0..20usize).prop_map(|(c, k)| Step::Other(c, k)),
        ]
    }

    /// Points a sample event at conversation `c` (the tests' conversation ids).
    fn retarget(event: &mut WhatsAppEvent, c: &str) {
        match &mut event.body {
            EventBody::Message(m) => m.conversation_id = c.into(),
            EventBody::Edit(x) | EventBody::Revoke(x) => x.conversation_id = c.into(),
            EventBody::Reaction(x) => x.conversation_id = c.into(),
            _ => {}
        }
    }

    proptest! {
        /// Whatever happens, nobody with an online device is pushed, and nothing that
        /// is not the customer writing (history, echoes, edits, ...) ever is.
        #[test]
        fn never_pushes_online_agents_or_history(steps in proptest::collection::vec(any_step(), 1..60)) {
            let mut n = Notifier::new(NotifierConfig::default());
            let mut online: HashMap<usize, HashSet<usize>> = HashMap::new();
            for (t, step) in steps.iter().enumerate() {
                let now = t as i64 * 1_000;
                let pushes: Vec<PushNotification> = match step {
                    Step::Presence(a, d, on) => {
                        let state = if *on { PresenceState::Online } else { PresenceState::Offline };
                        if *on { online.entry(*a).or_default().insert(*d); } else { online.entry(*a).or_default().remove(d); }
                        let mut p = presence(&format!("agent{a}"), &format!("d{d}"), state);
                        p.at_ms = now;
                        n.handle(NotifierInput::Presence(&p), now)
                    }
                    Step::Assign(c, a) => {
                        let mut a = assign(&format!("c{c}"), &format!("agent{a}"));
                        a.at_ms = now;
                        n.handle(NotifierInput::Assignment(&a), now)
                    }
                    Step::Message(c, history) => {
                        let origin = if *history { Origin::History } else { Origin::Customer };
                        let mut event = message(&format!("m{t}"), &format!("c{c}"), origin);
                        event.received_at_ms = now;
                        let pushed = n.handle(NotifierInput::Event(&event), now);
                        prop_assert!(!*history || pushed.is_empty(), "pushed a history item");
                        pushed
                    }
                    Step::Other(c, k) => {
                        let samples = events::semantics::samples::not_customer_writing("acme", "1", &format!("x{c}"), 1);
                        let mut event = samples[k % samples.len()].clone();
                        retarget(&mut event, &format!("c{c}"));
                        event.received_at_ms = now;
                        let pushed = n.handle(NotifierInput::Event(&event), now);
                        prop_assert!(pushed.is_empty(), "pushed {:?}", event.body);
                        pushed
                    }
                };
                // In order, an offline releases nothing: what was withheld came
                // while a device was online.
                if matches!(step, Step::Presence(..)) {
                    prop_assert!(pushes.is_empty(), "released {pushes:?}");
                }
                for push in pushes {
                    let agent: usize = push.agent_id.trim_start_matches("agent").parse().unwrap();
                    prop_assert!(online.get(&agent).is_none_or(HashSet::is_empty), "pushed an online agent");
                }
            }
        }
    }
}
