//! The router's state machine: one instance owns every conversation of the business
//! numbers in its partition and is driven by one ordered sequence of [`Input`]s.
//!
//! **State is a fold over its own outputs.** Every decision is written as an
//! [`AssignmentEvent`] and applied to the state by the same function ([`Router::apply`])
//! that applies a [`Input::Replayed`] event at startup, so a restarted router that
//! reads `conversations.assignments` back ends in exactly the state it left
//! (conversations, owners, queue order, answered commands, agent loads, round-robin
//! cursors, sticky memory). Presence and the directory are not part of that fold:
//! the Kafka loop reads `agents.presence` and `directory.changes` whole as tables and
//! feeds them as [`Input::Presence`] and [`Input::Directory`]. Who the agents are,
//! their capacity and each number's policy come only from the directory (seeded by
//! [`RouterConfig`]), so what an admin sets through the API is what routes.
//!
//! **Re-processed inputs are recognised from that state**: an answered command id is
//! never answered again, and a message only changes a conversation when it could have
//! been sent after the conversation's last change (Meta's `sent_at`, see
//! [`RouterConfig::clock_tolerance_ms`]), so a redelivered or re-read message neither
//! opens a second assignment nor reopens what an agent resolved since.
//!
//! Output ids are `{cause}:{conversation_id}:{n}`: the cause names the input
//! (`event:{org}:{event id}`, `command:{id}`, `presence:{org}:{agent}:{device}:{at_ms}`,
//! `tick:{now_ms}`) and `n` is the change's position in the fold, so ids are unique
//! and the same state fed the same input yields the same ids.

use std::collections::{BTreeMap, BTreeSet};

use events::WhatsAppEvent;
use events::directory::{Change, Directory, DirectoryChange, Stamp};
use events::inbox::{
    AssignmentEvent, CommandAction, ConversationCommand, ConversationState, PresenceEvent,
    PresenceState,
};
use events::semantics;

use super::config::{Policy, RouterConfig};

pub use events::inbox::BUSINESS_APP;

/// How many agents the directory does not know may have presence tracked.
pub const MAX_UNKNOWN_PRESENCE_AGENTS: usize = 256;

/// One thing that happened, in partition order.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// From `whatsapp.events`: only messages matter.
    Event(Box<WhatsAppEvent>),
    /// From `agents.presence`.
    Presence(PresenceEvent),
    /// From `conversations.commands`.
    Command(ConversationCommand),
    /// Time passed: offline agents past their grace lose their conversations.
    Tick,
    /// An earlier output read back at startup: rebuilds state, emits nothing.
    Replayed(AssignmentEvent),
    /// From `directory.changes`: agents, capacities and policies. A deactivated
    /// agent's conversations go back to the queue at once.
    Directory(Box<DirectoryChange>, Stamp),
}

/// The router: configuration plus the state folded from its outputs and presence.
#[derive(Debug, Clone)]
pub struct Router {
    config: RouterConfig,
    conversations: BTreeMap<String, Conversation>,
    /// Command ids already answered (accepted or rejected), with when they were.
    /// Forgotten after [`RouterConfig::command_ttl_ms`]: a command older than that is
    /// not acted on at all (see [`Router::on_command`]), so the set stays bounded.
    answered: BTreeMap<String, i64>,
    /// Index of `answered` by time, for pruning.
    answered_by_time: BTreeSet<(i64, String)>,
    /// Index of `conversations`: what each agent `(org, agent)` holds. Maintained
    /// only by [`Router::apply`]; never holds [`BUSINESS_APP`].
    held: BTreeMap<(String, String), BTreeSet<String>>,
    /// Index of `conversations`: the queue, by the change that queued each one.
    queue: BTreeMap<u64, String>,
    /// Index of `conversations`: the resolved ones by when they were resolved, so
    /// those past [`RouterConfig::resolved_retention_ms`] are forgotten.
    resolved_by_time: BTreeSet<(i64, String)>,
    /// The last agent each business number assigned a conversation to.
    round_robin: BTreeMap<String, String>,
    /// Changes applied so far: numbers queue positions and output ids.
    changes: u64,
    /// Last state and time of each device, by `(org, agent)`.
    presence: BTreeMap<(String, String), BTreeMap<String, (PresenceState, i64)>>,
    /// Agents, capacities and policies: the config's seed, then `directory.changes`.
    directory: Directory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Conversation {
    org: String,
    phone_number_id: String,
    status: Status,
    /// `at_ms` of the change that set `status`.
    changed_at_ms: i64,
    /// The agent who put it back in the queue by a command: not routed back to them
    /// while it waits (they can still claim it).
    released_by: Option<String>,
    /// The agent who last held it and when they last did (for `Sticky`).
    last_agent: Option<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Queued since change number `since`.
    Open {
        since: u64,
    },
    Assigned(String),
    Resolved,
}

impl Status {
    fn view(&self) -> (ConversationState, Option<&str>) {
        match self {
            Self::Open { .. } => (ConversationState::Open, None),
            Self::Assigned(owner) => (ConversationState::Assigned, Some(owner)),
            Self::Resolved => (ConversationState::Resolved, None),
        }
    }

    /// The agent (not the Business app) holding it.
    fn agent(&self) -> Option<&str> {
        match self {
            Self::Assigned(owner) if owner != BUSINESS_APP => Some(owner),
            _ => None,
        }
    }
}

/// What an event says the conversation is now. `Assigned` without an assignee is
/// read as `Open`, and an assignee on `Open`/`Resolved` is ignored.
fn target_of(ev: &AssignmentEvent) -> (ConversationState, Option<&str>) {
    match (ev.state, ev.assignee.as_deref()) {
        (ConversationState::Assigned, Some(owner)) => (ConversationState::Assigned, Some(owner)),
        (ConversationState::Resolved, _) => (ConversationState::Resolved, None),
        _ => (ConversationState::Open, None),
    }
}

/// A state a command or a rule moves a conversation to.
type Target = (ConversationState, Option<String>);

fn assigned(owner: &str) -> Target {
    (ConversationState::Assigned, Some(owner.to_owned()))
}

/// Sorted plain data describing everything [`Input::Replayed`] rebuilds: two routers
/// with equal snapshots decide alike (given the same presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub conversations: Vec<ConversationSnapshot>,
    pub answered_commands: Vec<String>,
    /// Agents holding at least one conversation, by org and agent id.
    pub loads: Vec<AgentLoad>,
    /// Per business number: the agent round-robin continues after.
    pub round_robin: Vec<(String, String)>,
    pub changes: u64,
}

/// One conversation in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSnapshot {
    pub conversation_id: String,
    pub org: String,
    pub phone_number_id: String,
    pub state: ConversationState,
    pub assignee: Option<String>,
    /// The change that queued it, while `Open` (lower is older).
    pub queued_since: Option<u64>,
    pub changed_at_ms: i64,
    pub released_by: Option<String>,
    pub last_agent: Option<(String, i64)>,
}

/// How many conversations an agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLoad {
    pub org: String,
    pub agent_id: String,
    pub assigned: usize,
}

impl Router {
    pub fn new(config: RouterConfig) -> Self {
        let mut directory = Directory::new();
        for (i, change) in config.seed().iter().enumerate() {
            directory.apply(change, Stamp::seed(i));
        }
        Self {
            directory,
            config,
            conversations: BTreeMap::new(),
            answered: BTreeMap::new(),
            answered_by_time: BTreeSet::new(),
            held: BTreeMap::new(),
            queue: BTreeMap::new(),
            resolved_by_time: BTreeSet::new(),
            round_robin: BTreeMap::new(),
            changes: 0,
            presence: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Drops answered command ids recorded before `cutoff_ms`.
    fn forget_answered_before(&mut self, cutoff_ms: i64) {
        while let Some(first) = self.answered_by_time.first() {
            if first.0 >= cutoff_ms {
                break;
            }
            if let Some((_, id)) = self.answered_by_time.pop_first() {
                self.answered.remove(&id);
            }
        }
    }

    /// How many answered command ids are remembered (bounded by the TTL).
    pub fn remembered_commands(&self) -> usize {
        self.answered.len()
    }

    /// How many conversations are held: the open and assigned ones (live work, all
    /// kept) and the resolved ones within their retention.
    pub fn remembered_conversations(&self) -> usize {
        self.conversations.len()
    }

    /// Forgets conversations resolved longer ago than their retention: the config's
    /// `resolved_retention_ms`, or the number's sticky window if that is longer (a
    /// returning customer goes back to their agent within it). A forgotten one that
    /// the customer writes to again is a new conversation, routed as any other; all
    /// a redelivery older than the retention could do is reopen it, as a new message
    /// would. Returns how many were forgotten.
    fn forget_resolved(&mut self, now_ms: i64) -> usize {
        let cutoff = now_ms.saturating_sub(self.config.resolved_retention_ms);
        let expired: Vec<(i64, String)> = self
            .resolved_by_time
            .range(..(cutoff, String::new()))
            .filter(|(resolved_at, id)| {
                let Some(conv) = self.conversations.get(id) else {
                    return true;
                };
                let window = match self.policy_for(&conv.org, &conv.phone_number_id) {
                    Policy::Sticky { window_ms } => window_ms,
                    _ => 0,
                };
                *resolved_at < now_ms.saturating_sub(window.max(self.config.resolved_retention_ms))
            })
            .cloned()
            .collect();
        for entry in &expired {
            self.resolved_by_time.remove(entry);
            if self
                .conversations
                .get(&entry.1)
                .is_some_and(|c| c.status == Status::Resolved)
            {
                self.conversations.remove(&entry.1);
            }
        }
        expired.len()
    }

    /// Forgets every conversation of the business numbers `lost` says this router no
    /// longer owns (their partitions went to another instance): their state is that
    /// instance's now, and ticks here must not act on it. Answered commands are kept
    /// (a few ids; harmless). Returns how many conversations were dropped.
    pub fn forget_numbers(&mut self, lost: impl Fn(&str) -> bool) -> usize {
        let dropped: Vec<String> = self
            .conversations
            .iter()
            .filter(|(_, c)| lost(&c.phone_number_id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dropped {
            let Some(conv) = self.conversations.remove(id) else {
                continue;
            };
            match &conv.status {
                Status::Open { since } => {
                    self.queue.remove(since);
                }
                Status::Assigned(owner) if owner != BUSINESS_APP => {
                    let key = (conv.org.clone(), owner.clone());
                    if let Some(set) = self.held.get_mut(&key) {
                        set.remove(id);
                        if set.is_empty() {
                            self.held.remove(&key);
                        }
                    }
                }
                Status::Resolved => {
                    self.resolved_by_time
                        .remove(&(conv.changed_at_ms, id.clone()));
                }
                _ => {}
            }
        }
        self.round_robin.retain(|number, _| !lost(number));
        dropped.len()
    }

    /// Handles one input at `now_ms` (the router's clock) and returns what changed, in
    /// order; every output is already applied. After the input, queued conversations
    /// are routed oldest first if anything changed, and after every presence input
    /// and tick (so the Kafka loop should send a tick once replay and presence are
    /// loaded, to route what a crash left queued).
    pub fn handle(&mut self, input: Input, now_ms: i64) -> Vec<AssignmentEvent> {
        let mut out = Vec::new();
        let before = self.changes;
        // Presence, time and the directory can free agents without changing a
        // conversation.
        let timed = matches!(
            input,
            Input::Presence(_) | Input::Tick | Input::Directory(..)
        );
        let cause = match input {
            Input::Replayed(ev) => {
                self.apply(&ev);
                return out;
            }
            Input::Event(ev) => {
                let cause = format!("event:{}", ev.scoped_id());
                self.on_event(&ev, &cause, now_ms, &mut out);
                cause
            }
            Input::Command(cmd) => {
                let cause = format!("command:{}", cmd.id);
                self.on_command(&cmd, &cause, now_ms, &mut out);
                cause
            }
            Input::Presence(p) => {
                let cause = format!(
                    "presence:{}:{}:{}:{}",
                    p.org, p.agent_id, p.device_id, p.at_ms
                );
                self.on_presence(p);
                self.requeue_absent(&cause, now_ms, &mut out);
                cause
            }
            Input::Tick => {
                self.forget_answered_before(now_ms.saturating_sub(self.config.command_ttl_ms));
                self.forget_resolved(now_ms);
                let cause = format!("tick:{now_ms}");
                self.requeue_absent(&cause, now_ms, &mut out);
                cause
            }
            Input::Directory(change, stamp) => {
                let cause = format!("directory:{}", change.id);
                self.directory.apply(&change, stamp);
                if matches!(change.change, Change::AgentDeactivated { .. }) {
                    self.requeue_absent(&cause, now_ms, &mut out);
                }
                cause
            }
        };
        if self.changes != before || timed {
            self.drain(&cause, now_ms, &mut out);
        }
        out
    }

    /// Applies one output (live or replayed) to the state: the only place state
    /// other than presence changes. Returns whether the conversation changed.
    fn apply(&mut self, ev: &AssignmentEvent) -> bool {
        if let Some(id) = &ev.command_id
            && self.answered.insert(id.clone(), ev.at_ms).is_none()
        {
            self.answered_by_time.insert((ev.at_ms, id.clone()));
        }
        if ev.rejected.is_some() {
            return false;
        }
        let (state, owner) = target_of(ev);
        let id = &ev.conversation_id;
        let previous = self.conversations.get(id);
        if previous.is_some_and(|c| c.status.view() == (state, owner)) {
            return false;
        }
        let mut conv = previous.cloned().unwrap_or_else(|| Conversation {
            org: ev.org.clone(),
            phone_number_id: ev.phone_number_id.clone(),
            status: Status::Resolved,
            changed_at_ms: ev.at_ms,
            released_by: None,
            last_agent: None,
        });
        // Leave the old indexes.
        match conv.status {
            Status::Open { since } => {
                self.queue.remove(&since);
            }
            Status::Resolved => {
                self.resolved_by_time
                    .remove(&(conv.changed_at_ms, id.clone()));
            }
            Status::Assigned(_) => {}
        }
        let released = conv.status.agent().map(str::to_owned);
        if let Some(agent) = &released {
            let key = (conv.org.clone(), agent.clone());
            if let Some(set) = self.held.get_mut(&key) {
                set.remove(id);
                if set.is_empty() {
                    self.held.remove(&key);
                }
            }
            conv.last_agent = Some((agent.clone(), ev.at_ms));
        }
        // Enter the new ones.
        conv.released_by = None;
        conv.status = match (state, owner) {
            (ConversationState::Assigned, Some(owner)) => {
                if owner != BUSINESS_APP {
                    self.held
                        .entry((conv.org.clone(), owner.to_owned()))
                        .or_default()
                        .insert(id.clone());
                    self.round_robin
                        .insert(conv.phone_number_id.clone(), owner.to_owned());
                    conv.last_agent = Some((owner.to_owned(), ev.at_ms));
                }
                Status::Assigned(owner.to_owned())
            }
            (ConversationState::Resolved, _) => {
                self.resolved_by_time.insert((ev.at_ms, id.clone()));
                Status::Resolved
            }
            _ => {
                if ev.command_id.is_some() {
                    conv.released_by = released;
                }
                self.queue.insert(self.changes, id.clone());
                Status::Open {
                    since: self.changes,
                }
            }
        };
        conv.changed_at_ms = ev.at_ms;
        self.conversations.insert(id.clone(), conv);
        self.changes += 1;
        true
    }

    /// Builds an output about a conversation, numbered by the next change.
    fn output(
        &self,
        cause: &str,
        (org, phone_number_id, conversation_id): (&str, &str, &str),
        (state, assignee): Target,
        now_ms: i64,
    ) -> AssignmentEvent {
        AssignmentEvent {
            id: format!("{cause}:{conversation_id}:{}", self.changes),
            org: org.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            conversation_id: conversation_id.to_owned(),
            state,
            assignee,
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: now_ms,
        }
    }

    /// Moves a known conversation to `target`, applying and recording the change.
    fn change(
        &mut self,
        cause: &str,
        conversation_id: &str,
        target: Target,
        now_ms: i64,
        out: &mut Vec<AssignmentEvent>,
    ) {
        let Some(conv) = self.conversations.get(conversation_id) else {
            return;
        };
        let ev = self.output(
            cause,
            (&conv.org, &conv.phone_number_id, conversation_id),
            target,
            now_ms,
        );
        self.apply(&ev);
        out.push(ev);
    }

    /// Could a message sent at `sent_at` (Meta's seconds) postdate this change?
    fn is_newer(&self, sent_at: i64, changed_at_ms: i64) -> bool {
        sent_at
            .saturating_add(1)
            .saturating_mul(1000)
            .saturating_add(self.config.clock_tolerance_ms)
            > changed_at_ms
    }

    /// Customer messages create and reopen work; Business-app echoes hand new or
    /// queued conversations to [`BUSINESS_APP`] (never taking one from an agent, never
    /// reopening a resolved one); history and API sends change nothing. A
    /// conversation the Business app holds stays with it until a command moves it.
    fn on_event(
        &mut self,
        ev: &WhatsAppEvent,
        cause: &str,
        now_ms: i64,
        out: &mut Vec<AssignmentEvent>,
    ) {
        // Edits, revokes, reactions and statuses are not new messages (one rule,
        // in `events::semantics`).
        let Some(m) = semantics::new_message(ev) else {
            return;
        };
        let existing = self.conversations.get(&m.conversation_id);
        let newer = existing.is_none_or(|c| self.is_newer(m.sent_at, c.changed_at_ms));
        let customer = semantics::is_customer_writing(ev);
        let business_app = semantics::is_business_app_writing(ev);
        let target = match (customer, business_app, existing.map(|c| &c.status)) {
            (_, _, Some(Status::Assigned(_))) => None,
            (true, _, None) => Some((ConversationState::Open, None)),
            (true, _, Some(Status::Resolved)) if newer => Some((ConversationState::Open, None)),
            (_, true, None | Some(Status::Open { .. })) if newer => Some(assigned(BUSINESS_APP)),
            _ => None,
        };
        let Some(target) = target else {
            return;
        };
        let ev = self.output(
            cause,
            (&ev.org, &ev.phone_number_id, &m.conversation_id),
            target,
            now_ms,
        );
        self.apply(&ev);
        out.push(ev);
    }

    /// Answers a command once: one result event carrying `command_id`, which is also
    /// the change when the command is accepted and changes something.
    fn on_command(
        &mut self,
        cmd: &ConversationCommand,
        cause: &str,
        now_ms: i64,
        out: &mut Vec<AssignmentEvent>,
    ) {
        // Too old to act on: either answered long ago (and forgotten) or so stale that
        // acting now would surprise everyone. Not answering keeps "exactly one result".
        if self.answered.contains_key(&cmd.id)
            || cmd.at_ms < now_ms.saturating_sub(self.config.command_ttl_ms)
        {
            return;
        }
        let current = self
            .conversations
            .get(&cmd.conversation_id)
            .map(|c| c.status.view())
            .map(|(s, o)| (s, o.map(str::to_owned)))
            .unwrap_or((ConversationState::Open, None));
        let decision = self.decide(cmd);
        let target = match &decision {
            Ok(Some(target)) => target.clone(),
            _ => current,
        };
        let mut ev = self.output(
            cause,
            (&cmd.org, &cmd.phone_number_id, &cmd.conversation_id),
            target,
            now_ms,
        );
        ev.command_id = Some(cmd.id.clone());
        ev.issued_by = Some(cmd.issued_by.clone());
        // An accepted note travels with its answer, so the sinks put it on the
        // timeline from this one event.
        if let (CommandAction::Note { text }, Ok(_)) = (&cmd.action, &decision) {
            ev.note = Some(text.clone());
        }
        ev.rejected = decision.err();
        self.apply(&ev);
        out.push(ev);
    }

    /// A command's outcome: `Ok(Some(target))` to change, `Ok(None)` when accepted
    /// without change (a note, or asking for the state it is already in), or the
    /// reason it is refused.
    fn decide(&self, cmd: &ConversationCommand) -> Result<Option<Target>, String> {
        let Some(conv) = self.conversations.get(&cmd.conversation_id) else {
            return Err(format!("unknown conversation {}", cmd.conversation_id));
        };
        if conv.org != cmd.org || conv.phone_number_id != cmd.phone_number_id {
            return Err(format!(
                "conversation {} belongs to number {} of org {}",
                cmd.conversation_id, conv.phone_number_id, conv.org
            ));
        }
        let same = |target: Target| {
            let (state, owner) = conv.status.view();
            if (state, owner) == (target.0, target.1.as_deref()) {
                Ok(None)
            } else {
                Ok(Some(target))
            }
        };
        match &cmd.action {
            CommandAction::Note { .. } => Ok(None),
            CommandAction::Resolve => same((ConversationState::Resolved, None)),
            CommandAction::Reopen => match conv.status {
                Status::Resolved => Ok(Some((ConversationState::Open, None))),
                _ => Ok(None),
            },
            // Taking a conversation for oneself is a claim, whichever command asks:
            // "transfer to me" must not take a colleague's conversation that a
            // claim would refuse.
            CommandAction::Claim => self.claim(conv, &cmd.issued_by),
            CommandAction::Transfer {
                to_agent: Some(agent),
            } if *agent == cmd.issued_by => self.claim(conv, agent),
            CommandAction::Transfer { to_agent: None } => match conv.status {
                Status::Resolved => Err("conversation is resolved: reopen it first".into()),
                _ => same((ConversationState::Open, None)),
            },
            CommandAction::Transfer {
                to_agent: Some(agent),
            } => match &conv.status {
                Status::Resolved => Err("conversation is resolved: reopen it first".into()),
                Status::Assigned(owner) if owner == agent => Ok(None),
                _ => {
                    self.check_room(&conv.org, agent)?;
                    if !self.is_online(&conv.org, agent) {
                        return Err(format!("agent {agent} is offline"));
                    }
                    Ok(Some(assigned(agent)))
                }
            },
            CommandAction::ForceAssign { to_agent } => {
                self.usable_agent(&conv.org, to_agent)?;
                same(assigned(to_agent))
            }
        }
    }

    /// `agent` takes the conversation for themself: only from the queue (their own
    /// is a no-op; a colleague's is refused, naming the owner) and with room left.
    fn claim(&self, conv: &Conversation, agent: &str) -> Result<Option<Target>, String> {
        match &conv.status {
            Status::Assigned(owner) if owner == agent => Ok(None),
            Status::Assigned(owner) => Err(format!("already assigned to {owner}")),
            Status::Resolved => Err("conversation is resolved: reopen it first".into()),
            Status::Open { .. } => {
                self.check_room(&conv.org, agent)?;
                Ok(Some(assigned(agent)))
            }
        }
    }

    /// Refuses an agent who is not in the directory, deactivated, or has no room left.
    fn check_room(&self, org: &str, agent_id: &str) -> Result<(), String> {
        let capacity = self.usable_agent(org, agent_id)?;
        let load = self.load(org, agent_id);
        if load >= capacity {
            return Err(format!(
                "agent {agent_id} is at capacity ({load}/{capacity})"
            ));
        }
        Ok(())
    }

    /// The capacity of an active agent, or why they cannot take work.
    fn usable_agent(&self, org: &str, agent_id: &str) -> Result<usize, String> {
        match self.directory.agent(org, agent_id) {
            Some(agent) if agent_id != BUSINESS_APP && agent.active() => {
                Ok(agent.capacity() as usize)
            }
            Some(_) if agent_id != BUSINESS_APP => Err(format!("agent {agent_id} is deactivated")),
            _ => Err(format!("unknown agent {agent_id} in org {org}")),
        }
    }

    /// The capacity of an active agent of the org; `None` for anyone else. Only
    /// active agents are routed to, can claim or receive transfers.
    fn active_agent(&self, org: &str, agent_id: &str) -> Option<usize> {
        self.usable_agent(org, agent_id).ok()
    }

    /// The active agents of an org with their capacity, in id order.
    fn active_agents<'a>(&'a self, org: &'a str) -> impl Iterator<Item = (&'a str, usize)> {
        self.directory
            .agents(org)
            .filter(|(id, a)| a.active() && *id != BUSINESS_APP)
            .map(|(id, a)| (id, a.capacity() as usize))
    }

    /// The policy of a number: the directory's (the number's, else the org's
    /// default), else the config's seed for the number, else its default.
    fn policy_for(&self, org: &str, phone_number_id: &str) -> Policy {
        self.directory
            .policy_for(org, phone_number_id)
            .unwrap_or_else(|| self.config.policy_for(phone_number_id))
    }

    /// Records a device's state; an event older than the one recorded is ignored.
    /// Agents are bounded by the directory: an agent it does not know (yet: the
    /// directory and presence are read apart, so an invite can land after the new
    /// agent's first presence) is kept only while fewer than
    /// [`MAX_UNKNOWN_PRESENCE_AGENTS`] such agents are.
    fn on_presence(&mut self, p: PresenceEvent) {
        let key = (p.org, p.agent_id);
        if !self.presence.contains_key(&key)
            && self.directory.agent(&key.0, &key.1).is_none()
            && self
                .presence
                .keys()
                .filter(|(org, agent)| self.directory.agent(org, agent).is_none())
                .count()
                >= MAX_UNKNOWN_PRESENCE_AGENTS
        {
            return;
        }
        let devices = self.presence.entry(key).or_default();
        if devices
            .get(&p.device_id)
            .is_some_and(|&(_, at)| at > p.at_ms)
        {
            return;
        }
        if !devices.contains_key(&p.device_id)
            && devices.len() >= events::inbox::MAX_DEVICES_PER_AGENT
            && let Some(oldest) = devices
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(d, _)| d.clone())
        {
            devices.remove(&oldest);
        }
        // Viewing or typing says the device is there, not that its agent came back
        // from away: only the switch (online) does.
        let state = match (devices.get(&p.device_id), p.state) {
            (Some((PresenceState::Away, _)), PresenceState::Viewing | PresenceState::Typing) => {
                PresenceState::Away
            }
            (_, state) => state,
        };
        devices.insert(p.device_id, (state, p.at_ms));
    }

    /// How many devices' states are held, over all agents.
    pub fn tracked_devices(&self) -> usize {
        self.presence.values().map(BTreeMap::len).sum()
    }

    /// Takes new work: at least one device online or active (viewing, typing). An
    /// agent who set themselves away keeps their conversations (they are online,
    /// see [`Self::is_online`]) but is given no new ones until they come back.
    pub fn is_available(&self, org: &str, agent_id: &str) -> bool {
        self.presence
            .get(&(org.to_owned(), agent_id.to_owned()))
            .is_some_and(|devices| {
                devices.values().any(|(state, _)| {
                    !matches!(state, PresenceState::Offline | PresenceState::Away)
                })
            })
    }

    /// Online: at least one device whose last state is not `Offline`.
    pub fn is_online(&self, org: &str, agent_id: &str) -> bool {
        self.presence
            .get(&(org.to_owned(), agent_id.to_owned()))
            .is_some_and(|devices| {
                devices
                    .values()
                    .any(|(state, _)| *state != PresenceState::Offline)
            })
    }

    /// Since when an agent has had no online device: `None` while online, and also
    /// when no presence was ever seen for them (unknown is not offline).
    fn offline_since(&self, key: &(String, String)) -> Option<i64> {
        let devices = self.presence.get(key)?;
        if devices.values().any(|(s, _)| *s != PresenceState::Offline) {
            return None;
        }
        devices.values().map(|&(_, at)| at).max()
    }

    /// How many conversations an agent holds ([`BUSINESS_APP`] holds no load).
    pub fn load(&self, org: &str, agent_id: &str) -> usize {
        self.held
            .get(&(org.to_owned(), agent_id.to_owned()))
            .map_or(0, BTreeSet::len)
    }

    /// Puts back in the queue what agents hold who are offline for longer than the
    /// grace, or no longer active in the directory (removed: no grace at all).
    fn requeue_absent(&mut self, cause: &str, now_ms: i64, out: &mut Vec<AssignmentEvent>) {
        let grace = self.config.offline_grace_ms;
        let absent: Vec<String> = self
            .held
            .iter()
            .filter(|(key, _)| {
                self.active_agent(&key.0, &key.1).is_none()
                    || self
                        .offline_since(key)
                        .is_some_and(|since| now_ms.saturating_sub(since) > grace)
            })
            .flat_map(|(_, conversations)| conversations.iter().cloned())
            .collect();
        for id in absent {
            self.change(cause, &id, (ConversationState::Open, None), now_ms, out);
        }
    }

    /// Routes queued conversations, oldest first, each per its number's policy.
    fn drain(&mut self, cause: &str, now_ms: i64, out: &mut Vec<AssignmentEvent>) {
        let queued: Vec<String> = self.queue.values().cloned().collect();
        for id in queued {
            let Some(conv) = self.conversations.get(&id) else {
                continue;
            };
            let policy = self.policy_for(&conv.org, &conv.phone_number_id);
            if let Some(agent) = self.pick(policy, conv, now_ms) {
                self.change(cause, &id, assigned(&agent), now_ms, out);
            }
        }
    }

    /// The agent a policy gives a queued conversation to, if anyone can take it.
    fn pick(&self, policy: Policy, conv: &Conversation, now_ms: i64) -> Option<String> {
        // Already in id order (the directory is sorted).
        let eligible: Vec<&str> = self
            .active_agents(&conv.org)
            .filter(|(id, _)| conv.released_by.as_deref() != Some(*id))
            .filter(|(id, _)| self.is_available(&conv.org, id))
            .filter(|(id, capacity)| self.load(&conv.org, id) < *capacity)
            .map(|(id, _)| id)
            .collect();
        let least_loaded = || {
            eligible
                .iter()
                .min_by_key(|id| (self.load(&conv.org, id), **id))
                .map(|id| id.to_string())
        };
        match policy {
            Policy::Manual => None,
            Policy::LeastLoaded => least_loaded(),
            Policy::RoundRobin => {
                let last = self.round_robin.get(&conv.phone_number_id);
                eligible
                    .iter()
                    .find(|id| last.is_none_or(|last| **id > last.as_str()))
                    .or_else(|| eligible.first())
                    .map(|id| id.to_string())
            }
            Policy::Sticky { window_ms } => conv
                .last_agent
                .as_ref()
                .filter(|(_, at)| now_ms.saturating_sub(*at) <= window_ms)
                .and_then(|(agent, _)| eligible.iter().find(|id| **id == agent.as_str()))
                .map(|id| id.to_string())
                .or_else(least_loaded),
        }
    }

    /// Who holds a conversation (an agent or [`BUSINESS_APP`]), if anyone.
    pub fn owner(&self, conversation_id: &str) -> Option<&str> {
        match &self.conversations.get(conversation_id)?.status {
            Status::Assigned(owner) => Some(owner),
            _ => None,
        }
    }

    /// Everything replay rebuilds, as sorted plain data.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            conversations: self
                .conversations
                .iter()
                .map(|(id, c)| {
                    let (state, assignee) = c.status.view();
                    ConversationSnapshot {
                        conversation_id: id.clone(),
                        org: c.org.clone(),
                        phone_number_id: c.phone_number_id.clone(),
                        state,
                        assignee: assignee.map(str::to_owned),
                        queued_since: match c.status {
                            Status::Open { since } => Some(since),
                            _ => None,
                        },
                        changed_at_ms: c.changed_at_ms,
                        released_by: c.released_by.clone(),
                        last_agent: c.last_agent.clone(),
                    }
                })
                .collect(),
            answered_commands: self.answered.keys().cloned().collect(),
            loads: self
                .held
                .iter()
                .map(|((org, agent_id), held)| AgentLoad {
                    org: org.clone(),
                    agent_id: agent_id.clone(),
                    assigned: held.len(),
                })
                .collect(),
            round_robin: self
                .round_robin
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            changes: self.changes,
        }
    }

    /// Checks that the indexes agree with the conversations (for tests).
    #[cfg(test)]
    pub(crate) fn check_indexes(&self) {
        let mut held: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut queue = BTreeMap::new();
        for (id, c) in &self.conversations {
            match &c.status {
                Status::Open { since } => {
                    queue.insert(*since, id.clone());
                }
                Status::Assigned(owner) if owner != BUSINESS_APP => {
                    held.entry((c.org.clone(), owner.clone()))
                        .or_default()
                        .insert(id.clone());
                }
                _ => {}
            }
        }
        assert_eq!(held, self.held, "held index");
        assert_eq!(queue, self.queue, "queue index");
    }
}
