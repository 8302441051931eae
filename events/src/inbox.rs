//! Events about agents and conversation ownership: presence from the MQTT bridge,
//! commands from the API, and the router's assignments.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An agent device's presence or activity (`agents.presence`, keyed per device: `PresenceEvent::table_key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceEvent {
    pub org: String,
    pub agent_id: String,
    pub device_id: String,
    pub state: PresenceState,
    /// The conversation being viewed or typed in, for activity states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    pub at_ms: i64,
}

impl PresenceEvent {
    /// The record key on `agents.presence`: one per device. The topic is compacted and
    /// read whole as a table (router, notifier), and both fold it per device, the
    /// newest state winning (activity counts as online), so the newest record per
    /// device is all a rebuild needs, however long an agent stays online. One key
    /// for presence and activity keeps a device's records in one partition, in order.
    pub fn table_key(&self) -> String {
        format!("{}/{}/{}", self.org, self.agent_id, self.device_id)
    }
}

/// The most devices per agent that the router and the notifier track. Device ids
/// come from the devices themselves, so without a bound one agent's app could grow
/// every processor's memory without end; beyond it, the device heard from longest
/// ago is forgotten (router) or the new one is not tracked (notifier).
pub const MAX_DEVICES_PER_AGENT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Online,
    Away,
    Offline,
    Viewing,
    Typing,
}

/// A change an agent or admin asked for (`conversations.commands`, keyed by
/// `phone_number_id` so it meets the conversation's events in one partition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationCommand {
    /// The command id the API answered with `202 Accepted`.
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    /// The agent (or admin) who issued it.
    pub issued_by: String,
    pub at_ms: i64,
    #[serde(flatten)]
    pub action: CommandAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum CommandAction {
    Claim,
    /// To another agent, or back to the queue when `to_agent` is absent.
    Transfer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_agent: Option<String>,
    },
    Resolve,
    Reopen,
    /// Admin only: assigns regardless of capacity.
    ForceAssign {
        to_agent: String,
    },
    Note {
        text: String,
    },
}

/// The owner id of conversations answered from the WhatsApp Business app. It holds a
/// conversation like an agent does (an [`AssignmentEvent::assignee`]) but has no
/// inbox and no capacity, and is never routed to. The one definition every role uses.
pub const BUSINESS_APP: &str = "business_app";

/// Who owns a conversation now (`conversations.assignments`), or a command's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AssignmentEvent {
    /// Deterministic: derived from the input that caused it.
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub state: ConversationState,
    /// The owner: an agent id, `business_app`, or none while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// The command this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Who issued that command, so its outcome reaches the issuer's inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    /// Set when a command was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// The text of an accepted note command: an entry on the conversation's timeline
    /// for the org's agents, never sent to the customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationState {
    Open,
    Assigned,
    Resolved,
}
