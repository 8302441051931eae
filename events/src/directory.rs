//! Changes to an org's directory (`directory.changes`, keyed by org): agents, business
//! numbers, routing policy and push tokens. The API issues them; the mongo sink writes
//! them, so the directory is rebuilt by replaying the topic like every other store.
//!
//! Credentials of business numbers travel only encrypted ([`Sealed`]): the API seals
//! them before they reach Kafka, so the topic and its backups never hold them in clear.

use std::collections::BTreeMap;

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

/// Where a change sits in the directory's history: `(at_ms, partition, offset)`.
/// A later stamp wins per field, so the fold does not depend on the order in which
/// partitions (orgs) are read. The seed from static config is stamped before every
/// change on Kafka ([`Stamp::seed`]), so "the directory wins" over the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    pub at_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

impl Stamp {
    pub fn new(at_ms: i64, partition: i32, offset: i64) -> Self {
        Self {
            at_ms,
            partition,
            offset,
        }
    }

    /// The `n`th entry of the static seed: before anything on Kafka.
    pub fn seed(n: usize) -> Self {
        Self::new(i64::MIN, -1, n as i64)
    }
}

/// A value with the stamp of the change that set it (last writer wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub stamp: Stamp,
}

impl<T> Versioned<T> {
    fn new(value: T, stamp: Stamp) -> Self {
        Self { value, stamp }
    }

    /// Sets `value` if `stamp` is later than what is held.
    fn set(&mut self, value: T, stamp: Stamp) {
        if stamp > self.stamp {
            self.value = value;
            self.stamp = stamp;
        }
    }
}

fn set_field<T>(slot: &mut Option<Versioned<T>>, value: T, stamp: Stamp) {
    match slot {
        Some(held) => held.set(value, stamp),
        None => *slot = Some(Versioned::new(value, stamp)),
    }
}

fn field<T>(slot: &Option<Versioned<T>>) -> Option<&T> {
    slot.as_ref().map(|v| &v.value)
}

/// One agent as the directory knows them. Each field is its own last-writer-wins
/// register, so a partial [`Change::AgentUpdated`] never undoes a later invite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentEntry {
    name: Option<Versioned<String>>,
    role: Option<Versioned<Role>>,
    capacity: Option<Versioned<u32>>,
    active: Option<Versioned<bool>>,
}

impl AgentEntry {
    pub fn name(&self) -> &str {
        field(&self.name).map_or("", String::as_str)
    }
    pub fn role(&self) -> Role {
        field(&self.role).copied().unwrap_or(Role::Agent)
    }
    pub fn capacity(&self) -> u32 {
        field(&self.capacity).copied().unwrap_or(0)
    }
    /// Invited and not deactivated since. An agent only ever updated (never invited)
    /// is not active: nobody asked for them to take work.
    pub fn active(&self) -> bool {
        field(&self.active).copied().unwrap_or(false)
    }
}

/// A business number's registration by one org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberEntry {
    pub org: String,
    pub display_phone_number: String,
    pub waba_id: Option<String>,
    pub access_token: Sealed,
    pub app_secret: Sealed,
}

/// Every registration of one number: by org, the first stamp (who registered first
/// owns it) and the latest credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NumberClaims {
    by_org: BTreeMap<String, (Stamp, Versioned<NumberEntry>)>,
}

impl NumberClaims {
    /// A number belongs to exactly one org: the one that registered it first. A later
    /// registration by another org (the API answers it 409) changes nothing.
    fn owner(&self) -> Option<&NumberEntry> {
        self.by_org
            .values()
            .min_by_key(|(first, _)| *first)
            .map(|(_, entry)| &entry.value)
    }
}

/// The directory: a pure fold over `directory.changes` that every role shares
/// (ingest, router, notifier, whatsapp, media, expo). [`Directory::apply`] is
/// commutative over stamped changes, so replaying the topic in any split or
/// interleaving of partitions gives the same directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    orgs: BTreeMap<String, Versioned<String>>,
    agents: BTreeMap<(String, String), AgentEntry>,
    numbers: BTreeMap<String, NumberClaims>,
    /// `(org, Some(number))` for a number, `(org, None)` for the org's default.
    policies: BTreeMap<(String, Option<String>), Versioned<RoutingPolicy>>,
    /// `(org, token)` → the agent and device it belongs to, and whether it is live.
    push_tokens: BTreeMap<(String, String), Versioned<Option<PushToken>>>,
}

/// A device's push token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken {
    pub agent_id: String,
    pub device_id: String,
    pub token: String,
    pub platform: String,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one change in. Later stamps win per field; an older change arriving
    /// late changes only what nothing newer has set.
    pub fn apply(&mut self, change: &DirectoryChange, stamp: Stamp) {
        let org = change.org.clone();
        match &change.change {
            Change::OrgCreated { name } => match self.orgs.get_mut(&org) {
                Some(held) => held.set(name.clone(), stamp),
                None => {
                    self.orgs.insert(org, Versioned::new(name.clone(), stamp));
                }
            },
            Change::AgentInvited {
                agent_id,
                name,
                role,
                capacity,
                ..
            } => {
                let agent = self.agents.entry((org, agent_id.clone())).or_default();
                set_field(&mut agent.name, name.clone(), stamp);
                set_field(&mut agent.role, *role, stamp);
                set_field(&mut agent.capacity, *capacity, stamp);
                set_field(&mut agent.active, true, stamp);
            }
            Change::AgentUpdated {
                agent_id,
                name,
                role,
                capacity,
            } => {
                let agent = self.agents.entry((org, agent_id.clone())).or_default();
                if let Some(name) = name {
                    set_field(&mut agent.name, name.clone(), stamp);
                }
                if let Some(role) = role {
                    set_field(&mut agent.role, *role, stamp);
                }
                if let Some(capacity) = capacity {
                    set_field(&mut agent.capacity, *capacity, stamp);
                }
            }
            Change::AgentDeactivated { agent_id } => {
                let agent = self.agents.entry((org, agent_id.clone())).or_default();
                set_field(&mut agent.active, false, stamp);
            }
            Change::BusinessNumberUpserted {
                phone_number_id,
                display_phone_number,
                waba_id,
                access_token,
                app_secret,
            } => {
                let entry = NumberEntry {
                    org: org.clone(),
                    display_phone_number: display_phone_number.clone(),
                    waba_id: waba_id.clone(),
                    access_token: access_token.clone(),
                    app_secret: app_secret.clone(),
                };
                let claims = self.numbers.entry(phone_number_id.clone()).or_default();
                match claims.by_org.get_mut(&org) {
                    Some((first, latest)) => {
                        *first = (*first).min(stamp);
                        latest.set(entry, stamp);
                    }
                    None => {
                        claims
                            .by_org
                            .insert(org, (stamp, Versioned::new(entry, stamp)));
                    }
                }
            }
            Change::RoutingPolicySet {
                phone_number_id,
                policy,
            } => {
                let key = (org, phone_number_id.clone());
                match self.policies.get_mut(&key) {
                    Some(held) => held.set(*policy, stamp),
                    None => {
                        self.policies.insert(key, Versioned::new(*policy, stamp));
                    }
                }
            }
            Change::PushTokenRegistered {
                agent_id,
                device_id,
                token,
                platform,
            } => {
                let live = Some(PushToken {
                    agent_id: agent_id.clone(),
                    device_id: device_id.clone(),
                    token: token.clone(),
                    platform: platform.clone(),
                });
                self.set_token(org, token, live, stamp);
            }
            Change::PushTokenUnregistered { token, .. } => {
                self.set_token(org, token, None, stamp);
            }
        }
    }

    fn set_token(&mut self, org: String, token: &str, value: Option<PushToken>, stamp: Stamp) {
        let key = (org, token.to_string());
        match self.push_tokens.get_mut(&key) {
            Some(held) => held.set(value, stamp),
            None => {
                self.push_tokens.insert(key, Versioned::new(value, stamp));
            }
        }
    }

    /// Whether the org exists (created, or owning anything).
    pub fn has_org(&self, org: &str) -> bool {
        self.orgs.contains_key(org)
    }

    /// One agent of an org, active or not.
    pub fn agent(&self, org: &str, agent_id: &str) -> Option<&AgentEntry> {
        self.agents.get(&(org.to_string(), agent_id.to_string()))
    }

    /// Every agent of an org with their id, in id order, active or not.
    pub fn agents<'a>(&'a self, org: &'a str) -> impl Iterator<Item = (&'a str, &'a AgentEntry)> {
        self.agents
            .range((org.to_string(), String::new())..)
            .take_while(move |((o, _), _)| o == org)
            .map(|((_, id), agent)| (id.as_str(), agent))
    }

    /// The registration of a business number by the org that owns it.
    pub fn number(&self, phone_number_id: &str) -> Option<&NumberEntry> {
        self.numbers.get(phone_number_id)?.owner()
    }

    /// Every owned number, by `phone_number_id`.
    pub fn numbers(&self) -> impl Iterator<Item = (&str, &NumberEntry)> {
        self.numbers
            .iter()
            .filter_map(|(id, claims)| Some((id.as_str(), claims.owner()?)))
    }

    /// The org of a WhatsApp Business Account, if one of its numbers is registered.
    pub fn org_of_waba(&self, waba_id: &str) -> Option<&str> {
        self.numbers()
            .find(|(_, n)| n.waba_id.as_deref() == Some(waba_id))
            .map(|(_, n)| n.org.as_str())
    }

    /// The policy of a number: its own, else its org's default, if either was set.
    pub fn policy_for(&self, org: &str, phone_number_id: &str) -> Option<RoutingPolicy> {
        let own = (org.to_string(), Some(phone_number_id.to_string()));
        let default = (org.to_string(), None);
        self.policies
            .get(&own)
            .or_else(|| self.policies.get(&default))
            .map(|v| v.value)
    }

    /// The live push tokens of an agent.
    pub fn push_tokens<'a>(
        &'a self,
        org: &'a str,
        agent_id: &'a str,
    ) -> impl Iterator<Item = &'a PushToken> {
        self.push_tokens
            .range((org.to_string(), String::new())..)
            .take_while(move |((o, _), _)| o == org)
            .filter_map(|(_, v)| v.value.as_ref())
            .filter(move |t| t.agent_id == agent_id)
    }
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

#[cfg(test)]
mod fold_tests {
    use super::*;
    use proptest::prelude::*;

    fn change(org: &str, at_ms: i64, change: Change) -> DirectoryChange {
        DirectoryChange {
            id: format!("{org}-{at_ms}"),
            org: org.into(),
            issued_by: "admin".into(),
            at_ms,
            change,
        }
    }

    fn sealed(s: &str) -> Sealed {
        Sealed {
            key_id: "k".into(),
            data: s.into(),
        }
    }

    fn number(org: &str, at_ms: i64, pnid: &str, token: &str) -> DirectoryChange {
        change(
            org,
            at_ms,
            Change::BusinessNumberUpserted {
                phone_number_id: pnid.into(),
                display_phone_number: "+1".into(),
                waba_id: Some(format!("waba-{org}")),
                access_token: sealed(token),
                app_secret: sealed("secret"),
            },
        )
    }

    fn invite(org: &str, at_ms: i64, agent: &str, capacity: u32) -> DirectoryChange {
        change(
            org,
            at_ms,
            Change::AgentInvited {
                agent_id: agent.into(),
                name: agent.into(),
                email: None,
                phone: None,
                role: Role::Agent,
                capacity,
            },
        )
    }

    #[test]
    fn an_invited_agent_is_active_until_deactivated_and_updates_change_only_their_fields() {
        let mut d = Directory::new();
        d.apply(&invite("acme", 1, "ann", 2), Stamp::new(1, 0, 0));
        d.apply(
            &change(
                "acme",
                2,
                Change::AgentUpdated {
                    agent_id: "ann".into(),
                    name: None,
                    role: None,
                    capacity: Some(5),
                },
            ),
            Stamp::new(2, 0, 1),
        );
        let ann = d.agent("acme", "ann").unwrap();
        assert!(ann.active());
        assert_eq!((ann.capacity(), ann.name()), (5, "ann"));
        d.apply(
            &change(
                "acme",
                3,
                Change::AgentDeactivated {
                    agent_id: "ann".into(),
                },
            ),
            Stamp::new(3, 0, 2),
        );
        assert!(!d.agent("acme", "ann").unwrap().active());
        assert!(d.agent("other", "ann").is_none());
    }

    #[test]
    fn a_number_belongs_to_the_org_that_registered_it_first() {
        let mut d = Directory::new();
        d.apply(&number("b", 20, "n1", "b-token"), Stamp::new(20, 1, 0));
        d.apply(&number("a", 10, "n1", "a-token"), Stamp::new(10, 0, 0));
        d.apply(&number("a", 30, "n1", "a-token-2"), Stamp::new(30, 0, 1));
        let n1 = d.number("n1").unwrap();
        assert_eq!(n1.org, "a");
        assert_eq!(
            n1.access_token.data, "a-token-2",
            "the owner rotates its token"
        );
        assert_eq!(d.org_of_waba("waba-a"), Some("a"));
        assert_eq!(d.org_of_waba("waba-b"), None);
    }

    #[test]
    fn a_number_policy_beats_the_org_default_and_tokens_unregister() {
        let mut d = Directory::new();
        let policy = |n: Option<&str>, p| Change::RoutingPolicySet {
            phone_number_id: n.map(str::to_string),
            policy: p,
        };
        d.apply(
            &change("a", 1, policy(None, RoutingPolicy::RoundRobin)),
            Stamp::new(1, 0, 0),
        );
        assert_eq!(d.policy_for("a", "n1"), Some(RoutingPolicy::RoundRobin));
        d.apply(
            &change("a", 2, policy(Some("n1"), RoutingPolicy::Manual)),
            Stamp::new(2, 0, 1),
        );
        assert_eq!(d.policy_for("a", "n1"), Some(RoutingPolicy::Manual));
        assert_eq!(d.policy_for("a", "n2"), Some(RoutingPolicy::RoundRobin));
        assert_eq!(d.policy_for("b", "n1"), None);
        let register = Change::PushTokenRegistered {
            agent_id: "ann".into(),
            device_id: "d1".into(),
            token: "t1".into(),
            platform: "ios".into(),
        };
        d.apply(&change("a", 3, register), Stamp::new(3, 0, 2));
        assert_eq!(d.push_tokens("a", "ann").count(), 1);
        let gone = Change::PushTokenUnregistered {
            agent_id: "ann".into(),
            token: "t1".into(),
        };
        d.apply(&change("a", 4, gone), Stamp::new(4, 0, 3));
        assert_eq!(d.push_tokens("a", "ann").count(), 0);
    }

    #[test]
    fn the_seed_loses_to_any_change_on_kafka() {
        let mut d = Directory::new();
        d.apply(&invite("a", 0, "ann", 9), Stamp::seed(0));
        d.apply(&invite("a", 0, "ann", 1), Stamp::new(0, 0, 0));
        d.apply(&invite("a", 0, "ann", 7), Stamp::seed(1));
        assert_eq!(d.agent("a", "ann").unwrap().capacity(), 1);
    }

    fn any_change() -> impl Strategy<Value = DirectoryChange> {
        let org = prop_oneof![Just("a"), Just("b")];
        let agent = prop_oneof![Just("ann"), Just("bob"), Just("cy")];
        let number_id = prop_oneof![Just("n1"), Just("n2")];
        (org, agent, number_id, 0..6u8, 0..5u32, 0..50i64).prop_map(
            |(org, agent, number_id, kind, n, at)| {
                let c = match kind {
                    0 => Change::AgentInvited {
                        agent_id: agent.into(),
                        name: format!("{agent}{n}"),
                        email: None,
                        phone: None,
                        role: if n % 2 == 0 { Role::Agent } else { Role::Admin },
                        capacity: n,
                    },
                    1 => Change::AgentUpdated {
                        agent_id: agent.into(),
                        name: None,
                        role: None,
                        capacity: Some(n),
                    },
                    2 => Change::AgentDeactivated {
                        agent_id: agent.into(),
                    },
                    3 => Change::BusinessNumberUpserted {
                        phone_number_id: number_id.into(),
                        display_phone_number: "+1".into(),
                        waba_id: None,
                        access_token: sealed(&format!("t{n}")),
                        app_secret: sealed("s"),
                    },
                    4 => Change::RoutingPolicySet {
                        phone_number_id: (n % 2 == 0).then(|| number_id.to_string()),
                        policy: if n % 3 == 0 {
                            RoutingPolicy::RoundRobin
                        } else {
                            RoutingPolicy::LeastLoaded
                        },
                    },
                    _ => Change::PushTokenRegistered {
                        agent_id: agent.into(),
                        device_id: "d".into(),
                        token: format!("tok{n}"),
                        platform: "ios".into(),
                    },
                };
                change(org, at, c)
            },
        )
    }

    proptest! {
        /// Replaying the topic in any order of partitions, in any split, gives the
        /// same directory: stamps, not arrival order, decide.
        #[test]
        fn the_fold_does_not_depend_on_arrival_order(
            changes in proptest::collection::vec(any_change(), 0..40),
            seed in any::<u64>(),
        ) {
            // Each org is its own partition, offsets in topic order.
            let stamped: Vec<(DirectoryChange, Stamp)> = changes
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let partition = if c.org == "a" { 0 } else { 1 };
                    let stamp = Stamp::new(c.at_ms, partition, i as i64);
                    (c, stamp)
                })
                .collect();
            let mut in_order = Directory::new();
            for (c, s) in &stamped {
                in_order.apply(c, *s);
            }
            let mut shuffled = stamped.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut any_order = Directory::new();
            for (c, s) in &shuffled {
                any_order.apply(c, *s);
            }
            prop_assert_eq!(in_order, any_order);
        }

        /// A later change always wins for the field it sets.
        #[test]
        fn the_latest_capacity_wins(capacities in proptest::collection::vec((0..20u32, 0..100i64), 1..20)) {
            let mut d = Directory::new();
            for (i, (capacity, at)) in capacities.iter().enumerate() {
                d.apply(&invite("a", *at, "ann", *capacity), Stamp::new(*at, 0, i as i64));
            }
            let latest = capacities
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, at))| (*at, *i))
                .map(|(_, (c, _))| *c);
            prop_assert_eq!(d.agent("a", "ann").map(AgentEntry::capacity), latest);
        }
    }
}

#[cfg(test)]
mod token_scope_tests {
    use super::*;

    #[test]
    fn tokens_are_scoped_to_their_org_and_agent() {
        let mut d = Directory::new();
        for (i, (org, agent, token)) in [
            ("two-1", "ann", "ann-phone"),
            ("unreg-1", "bob", "bob-live"),
            ("two-1", "ann", "ann-tablet"),
            ("zzz", "bob", "z"),
        ]
        .into_iter()
        .enumerate()
        {
            let change = DirectoryChange {
                id: format!("{i}"),
                org: org.into(),
                issued_by: "t".into(),
                at_ms: 1,
                change: Change::PushTokenRegistered {
                    agent_id: agent.into(),
                    device_id: "d".into(),
                    token: token.into(),
                    platform: "ios".into(),
                },
            };
            d.apply(&change, Stamp::new(1, 0, i as i64));
        }
        let bob: Vec<&str> = d
            .push_tokens("unreg-1", "bob")
            .map(|t| t.token.as_str())
            .collect();
        assert_eq!(bob, ["bob-live"]);
    }
}
