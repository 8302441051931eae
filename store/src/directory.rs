//! The directory as documents: orgs, agents, business numbers and push tokens,
//! written by the mongo sink from `directory.changes` and read by the API (login,
//! the team, admin pages). Roles that act on the directory follow the topic itself,
//! not these collections.

use std::collections::BTreeMap;

use bson::doc;
use events::directory::{Role, RoutingPolicy, Sealed};
use serde::{Deserialize, Serialize};

use crate::{Collection, Index, fields};

pub const ORGS: Collection<Org> = Collection::new("orgs");
pub const AGENTS: Collection<Agent> = Collection::new("agents");
pub const BUSINESS_NUMBERS: Collection<BusinessNumber> = Collection::new("business_numbers");
pub const PUSH_TOKENS: Collection<PushToken> = Collection::new("push_tokens");

/// An org (`_id` the org id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Org {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub name: Option<String>,
    pub routing: Option<Routing>,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

fields!(Org {
    KEY = "_id", ORG = "org", NAME = "name", ROUTING = "routing",
    CREATED_AT_MS = "created_at_ms", UPDATED_AT_MS = "updated_at_ms",
} paths {
    ROUTING_DEFAULT = "routing.default",
    ROUTING_NUMBERS = "routing.numbers",
});

/// The org's routing policies: its default and per number.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Routing {
    pub default: Option<RoutingPolicy>,
    pub numbers: BTreeMap<String, RoutingPolicy>,
}

fields!(Routing { DEFAULT = "default", NUMBERS = "numbers" });

/// An agent or admin (`_id` `{org}:{agent_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub agent_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub role: Option<Role>,
    pub capacity: Option<i64>,
    /// Deactivated agents cannot log in.
    pub active: bool,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

fields!(Agent {
    KEY = "_id", ORG = "org", AGENT_ID = "agent_id", NAME = "name", EMAIL = "email",
    PHONE = "phone", ROLE = "role", CAPACITY = "capacity", ACTIVE = "active",
    CREATED_AT_MS = "created_at_ms", UPDATED_AT_MS = "updated_at_ms",
});

/// A business number of an org, its credentials sealed (`_id`
/// `{org}:{phone_number_id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BusinessNumber {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub phone_number_id: String,
    pub display_phone_number: Option<String>,
    pub waba_id: Option<String>,
    pub access_token: Option<Sealed>,
    pub app_secret: Option<Sealed>,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

fields!(BusinessNumber {
    KEY = "_id", ORG = "org", PHONE_NUMBER_ID = "phone_number_id",
    DISPLAY_PHONE_NUMBER = "display_phone_number", WABA_ID = "waba_id",
    ACCESS_TOKEN = "access_token", APP_SECRET = "app_secret",
    CREATED_AT_MS = "created_at_ms", UPDATED_AT_MS = "updated_at_ms",
});

/// A device's Expo push token (`_id` `{org}:{token}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushToken {
    #[serde(rename = "_id")]
    pub key: String,
    pub org: String,
    pub agent_id: String,
    pub device_id: String,
    pub token: String,
    pub platform: String,
    pub updated_at_ms: Option<i64>,
}

fields!(PushToken {
    KEY = "_id", ORG = "org", AGENT_ID = "agent_id", DEVICE_ID = "device_id",
    TOKEN = "token", PLATFORM = "platform", UPDATED_AT_MS = "updated_at_ms",
});

/// The directory's indexes: login by email or phone, a number's owner.
pub fn indexes() -> Vec<Index> {
    let (a, n) = (AGENTS.name, BUSINESS_NUMBERS.name);
    vec![
        Index::unique(a, doc! { Agent::ORG: 1, Agent::AGENT_ID: 1 }),
        Index::new(a, doc! { Agent::EMAIL: 1 }),
        Index::new(a, doc! { Agent::PHONE: 1 }),
        Index::unique(
            n,
            doc! { BusinessNumber::ORG: 1, BusinessNumber::PHONE_NUMBER_ID: 1 },
        ),
        Index::new(n, doc! { BusinessNumber::PHONE_NUMBER_ID: 1 }),
        Index::new(
            PUSH_TOKENS.name,
            doc! { PushToken::ORG: 1, PushToken::AGENT_ID: 1 },
        ),
    ]
}
