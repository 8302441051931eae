//! The router: decides who owns each conversation of a business number.
//!
//! Inputs are WhatsApp events, agent presence, conversation commands and ticks, in
//! one ordered sequence per partition; outputs are [`AssignmentEvent`]s for
//! `conversations.assignments`: one per change of owner or state, and one result per
//! command. The machine ([`Router`]) is pure and rebuilt at startup by replaying its
//! own outputs ([`Input::Replayed`]); the policies and agents are in [`RouterConfig`].
//!
//! - `config.rs`: the settings (policies per number, agents and capacities, grace).
//! - `machine.rs`: the state machine and its rules.
//! - `tests.rs`: a test per rule, and properties over random interleavings.
//!
//! [`AssignmentEvent`]: events::inbox::AssignmentEvent

mod config;
mod machine;
pub mod stage;
#[cfg(test)]
mod tests;

pub use config::{AgentConfig, ConfigError, Policy, RouterConfig};
pub use machine::{AgentLoad, BUSINESS_APP, ConversationSnapshot, Input, Router, Snapshot};
