//! `[processors.router]`: the router's timings, and a static seed of agents and
//! policies for development and tests.
//!
//! In a running system agents, capacities and policies come from the directory
//! (`directory.changes`, issued by the API): the seed here is folded in first and
//! loses to any change on Kafka ([`RouterConfig::seed`]).

use std::collections::BTreeMap;

use events::directory::{Change, DirectoryChange, Role};
use serde::{Deserialize, Serialize};

use super::machine::BUSINESS_APP;

/// How queued conversations of a business number find an agent: the directory's
/// policy type, so the API, the directory and the router share one definition.
/// Every policy only picks agents that are online, active, under capacity, and not
/// the agent who just released the conversation back to the queue.
pub type Policy = events::directory::RoutingPolicy;

/// The router's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// The policy of a number whose org set none in the directory.
    pub default_policy: Policy,
    /// Seed: per business number (`phone_number_id`) policies. The directory wins.
    pub numbers: BTreeMap<String, Policy>,
    /// Seed: the agents of each org, by org id (development and tests). The agents
    /// an admin invites through the API come from the directory, which wins. Only
    /// active agents are routed to, can claim or receive transfers; `capacity`
    /// bounds what policy, claims and transfers give them (an admin `ForceAssign`
    /// may exceed it).
    pub orgs: BTreeMap<String, Vec<AgentConfig>>,
    /// How long an agent may have no online device before their assigned
    /// conversations go back to the queue (ms).
    pub offline_grace_ms: i64,
    /// How far Meta's message timestamps (whole seconds) may lag the router's clock
    /// (ms). A message sent before a conversation's last change was already seen
    /// (Meta redelivers for days), so it does not reopen or take a conversation; this
    /// slack errs on the side of treating a message as new.
    pub clock_tolerance_ms: i64,
    /// How long a command stays actionable and its id remembered (ms). A command
    /// older than this when the router sees it is ignored, so the set of answered
    /// ids stays bounded; keep it shorter than `conversations.commands` retention.
    pub command_ttl_ms: i64,
    /// How long a resolved conversation is remembered (ms), so that a late or
    /// redelivered message does not reopen it and a sticky policy finds its last
    /// agent (a number's longer sticky window wins). After that it is forgotten:
    /// the router's memory is its live work plus this much history, not every
    /// conversation ever.
    pub resolved_retention_ms: i64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            default_policy: Policy::LeastLoaded,
            numbers: BTreeMap::new(),
            orgs: BTreeMap::new(),
            offline_grace_ms: 120_000,
            clock_tolerance_ms: 2_000,
            command_ttl_ms: 7 * 24 * 3_600_000,
            resolved_retention_ms: 30 * 24 * 3_600_000,
        }
    }
}

/// One agent of an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub agent_id: String,
    /// Most conversations the router assigns them at once.
    pub capacity: usize,
}

/// A setting the router cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("org {org}: agent {agent_id} is listed twice")]
    DuplicateAgent { org: String, agent_id: String },
    #[error("org {org}: `{BUSINESS_APP}` is reserved for the WhatsApp Business app")]
    ReservedAgentId { org: String },
    #[error("{field} must not be negative")]
    Negative { field: &'static str },
}

impl RouterConfig {
    /// Checks what serde cannot: unique agent ids, no reserved id, no negative time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (org, agents) in &self.orgs {
            for (i, agent) in agents.iter().enumerate() {
                if agent.agent_id == BUSINESS_APP {
                    return Err(ConfigError::ReservedAgentId { org: org.clone() });
                }
                if agents[..i].iter().any(|a| a.agent_id == agent.agent_id) {
                    return Err(ConfigError::DuplicateAgent {
                        org: org.clone(),
                        agent_id: agent.agent_id.clone(),
                    });
                }
            }
        }
        let windows = self
            .numbers
            .values()
            .chain([&self.default_policy])
            .filter_map(|p| match p {
                Policy::Sticky { window_ms } => Some(*window_ms),
                _ => None,
            });
        for (field, value) in [
            ("offline_grace_ms", self.offline_grace_ms),
            ("clock_tolerance_ms", self.clock_tolerance_ms),
            ("command_ttl_ms", self.command_ttl_ms),
            ("resolved_retention_ms", self.resolved_retention_ms),
        ]
        .into_iter()
        .chain(windows.map(|w| ("sticky window_ms", w)))
        {
            if value < 0 {
                return Err(ConfigError::Negative { field });
            }
        }
        Ok(())
    }

    /// The seeded policy of a business number (before the directory).
    pub fn policy_for(&self, phone_number_id: &str) -> Policy {
        self.numbers
            .get(phone_number_id)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// One seeded agent of an org, if listed (the first entry if listed twice).
    pub fn agent(&self, org: &str, agent_id: &str) -> Option<&AgentConfig> {
        self.orgs.get(org)?.iter().find(|a| a.agent_id == agent_id)
    }

    /// The static seed of agents as directory changes: every listed agent invited
    /// with their capacity. (Seeded policies stay in `numbers`: they are not tied to
    /// an org here; the router consults them after the directory.)
    pub fn seed(&self) -> Vec<DirectoryChange> {
        let change = |org: &str, change| DirectoryChange {
            id: format!("seed:{org}"),
            org: org.to_string(),
            issued_by: "config".into(),
            at_ms: 0,
            change,
        };
        let mut out = Vec::new();
        for (org, agents) in &self.orgs {
            for agent in agents {
                out.push(change(
                    org,
                    Change::AgentInvited {
                        agent_id: agent.agent_id.clone(),
                        name: agent.agent_id.clone(),
                        email: None,
                        phone: None,
                        role: Role::Agent,
                        capacity: u32::try_from(agent.capacity).unwrap_or(u32::MAX),
                    },
                ));
            }
        }
        out
    }
}
