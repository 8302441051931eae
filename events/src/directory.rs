//! Changes to an org's directory (`directory.changes`, keyed by org): agents, business
//! numbers, routing policy and push tokens. The API issues them; the mongo sink writes
//! them, so the directory is rebuilt by replaying the topic like every other store.
//!
//! Credentials of business numbers travel only encrypted ([`Sealed`]): the API seals
//! them before they reach Kafka, so the topic and its backups never hold them in clear.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One directory change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DirectoryChange {
    /// The command id the API answered with (deterministic for bootstrap).
    pub id: String,
    pub org: String,
    /// The admin (or `bootstrap`) who made it.
    pub issued_by: String,
    pub at_ms: i64,
    #[serde(flatten)]
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

/// AES-256-GCM ciphertext, base64 (standard alphabet): `nonce || ciphertext+tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    /// Which key sealed it, so keys can rotate.
    pub key_id: String,
    pub data: String,
}

/// How queued conversations of a number find an agent (the router's policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoutingPolicy {
    RoundRobin,
    LeastLoaded,
    Sticky { window_ms: i64 },
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The org exists (bootstrap); idempotent.
    OrgCreated {
        name: String,
    },
    AgentInvited {
        agent_id: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        role: Role,
        capacity: u32,
    },
    /// Only the fields present change.
    AgentUpdated {
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<u32>,
    },
    AgentDeactivated {
        agent_id: String,
    },
    BusinessNumberUpserted {
        phone_number_id: String,
        display_phone_number: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        waba_id: Option<String>,
        access_token: Sealed,
        app_secret: Sealed,
    },
    /// For one number, or the org's default when `phone_number_id` is absent.
    RoutingPolicySet {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone_number_id: Option<String>,
        policy: RoutingPolicy,
    },
    PushTokenRegistered {
        agent_id: String,
        device_id: String,
        token: String,
        platform: String,
    },
    PushTokenUnregistered {
        agent_id: String,
        token: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_flat_json_tagged_by_change() {
        let change = DirectoryChange {
            id: "c1".into(),
            org: "acme".into(),
            issued_by: "ann".into(),
            at_ms: 1,
            change: Change::AgentDeactivated {
                agent_id: "bob".into(),
            },
        };
        let json = serde_json::to_value(&change).unwrap();
        assert_eq!(json["change"], "agent_deactivated");
        assert_eq!(json["agent_id"], "bob");
        let back: DirectoryChange = serde_json::from_value(json).unwrap();
        assert_eq!(back, change);
    }
}
