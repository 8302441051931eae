//! `directory.changes` → the directory collections (`orgs`, `agents`,
//! `business_numbers`, `push_tokens`). The mapping is pure; [`write`] runs it.
//!
//! Every change of an org is on one partition (keyed by org), so changes arrive in the
//! order the API issued them; each write is an upsert or delete by a deterministic
//! `_id`, so replaying the topic rebuilds the same documents.

use events::directory::{Change, DirectoryChange};
use mongodb::Database;
use mongodb::bson::{Document, doc};
use runtime::{Record, Reject};
use store::directory::{
    AGENTS, Agent, BUSINESS_NUMBERS, BusinessNumber, ORGS, Org, PUSH_TOKENS, PushToken,
};
use store::{key, to_bson};

use super::mapping::Upsert;

/// One write of the plan, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Upsert(Upsert),
    Delete {
        collection: &'static str,
        filter: Document,
    },
}

/// The writes for a batch of `(record index, change)`, in batch order.
pub fn plan<'a>(changes: impl IntoIterator<Item = (usize, &'a DirectoryChange)>) -> Vec<Write> {
    let mut out = Vec::new();
    for (source, c) in changes {
        let upsert = |collection, id: String, update| {
            Write::Upsert(Upsert {
                collection,
                filter: doc! { store::KEY_FIELD: id },
                update,
                collision_means_done: false,
                upsert: true,
                source,
                on_collision: None,
            })
        };
        let org = c.org.as_str();
        // Every directory document has these two (`Org`, `Agent`, `BusinessNumber`).
        let created = doc! { Org::ORG: org, Org::CREATED_AT_MS: c.at_ms };
        match &c.change {
            Change::OrgCreated { name } => out.push(upsert(
                ORGS.name,
                org.to_string(),
                doc! { "$set": { Org::NAME: name, Org::UPDATED_AT_MS: c.at_ms }, "$setOnInsert": created },
            )),
            Change::AgentInvited {
                agent_id,
                name,
                email,
                phone,
                role,
                capacity,
            } => out.push(upsert(
                AGENTS.name,
                key(org, agent_id),
                doc! {
                    "$set": {
                        Agent::AGENT_ID: agent_id, Agent::NAME: name, Agent::EMAIL: to_bson(email),
                        Agent::PHONE: to_bson(phone), Agent::ROLE: role.as_str(),
                        Agent::CAPACITY: i64::from(*capacity), Agent::ACTIVE: true,
                        Agent::UPDATED_AT_MS: c.at_ms,
                    },
                    "$setOnInsert": created,
                },
            )),
            Change::AgentUpdated {
                agent_id,
                name,
                role,
                capacity,
            } => {
                let mut set = doc! { Agent::AGENT_ID: agent_id, Agent::UPDATED_AT_MS: c.at_ms };
                if let Some(name) = name {
                    set.insert(Agent::NAME, name);
                }
                if let Some(role) = role {
                    set.insert(Agent::ROLE, role.as_str());
                }
                if let Some(capacity) = capacity {
                    set.insert(Agent::CAPACITY, i64::from(*capacity));
                }
                out.push(upsert(
                    AGENTS.name,
                    key(org, agent_id),
                    doc! { "$set": set, "$setOnInsert": created },
                ));
            }
            Change::AgentDeactivated { agent_id } => out.push(upsert(
                AGENTS.name,
                key(org, agent_id),
                doc! {
                    "$set": { Agent::AGENT_ID: agent_id, Agent::ACTIVE: false, Agent::UPDATED_AT_MS: c.at_ms },
                    "$setOnInsert": created,
                },
            )),
            Change::BusinessNumberUpserted {
                phone_number_id,
                display_phone_number,
                waba_id,
                access_token,
                app_secret,
            } => out.push(upsert(
                BUSINESS_NUMBERS.name,
                key(org, phone_number_id),
                doc! {
                    "$set": {
                        BusinessNumber::PHONE_NUMBER_ID: phone_number_id,
                        BusinessNumber::DISPLAY_PHONE_NUMBER: display_phone_number,
                        BusinessNumber::WABA_ID: to_bson(waba_id),
                        BusinessNumber::ACCESS_TOKEN: to_bson(access_token),
                        BusinessNumber::APP_SECRET: to_bson(app_secret),
                        BusinessNumber::UPDATED_AT_MS: c.at_ms,
                    },
                    "$setOnInsert": created,
                },
            )),
            Change::RoutingPolicySet {
                phone_number_id,
                policy,
            } => {
                let field = match phone_number_id {
                    Some(number) => format!("{}.{number}", Org::ROUTING_NUMBERS),
                    None => Org::ROUTING_DEFAULT.to_string(),
                };
                let mut set = doc! { Org::UPDATED_AT_MS: c.at_ms };
                set.insert(field, to_bson(policy));
                out.push(upsert(
                    ORGS.name,
                    org.to_string(),
                    doc! { "$set": set, "$setOnInsert": created },
                ));
            }
            Change::PushTokenRegistered {
                agent_id,
                device_id,
                token,
                platform,
            } => out.push(upsert(
                PUSH_TOKENS.name,
                key(org, token),
                doc! {
                    "$set": {
                        PushToken::ORG: org, PushToken::AGENT_ID: agent_id,
                        PushToken::DEVICE_ID: device_id, PushToken::TOKEN: token,
                        PushToken::PLATFORM: platform, PushToken::UPDATED_AT_MS: c.at_ms,
                    },
                },
            )),
            // Only the agent who registered a token can remove it.
            Change::PushTokenUnregistered { agent_id, token } => out.push(Write::Delete {
                collection: PUSH_TOKENS.name,
                filter: doc! { PushToken::KEY: key(org, token), PushToken::AGENT_ID: agent_id },
            }),
        }
    }
    out
}

/// Decodes and writes a batch of `directory.changes` records (indexes into `batch`
/// are kept, so rejects name the right record). `Err` is transient.
pub async fn write(
    db: &Database,
    batch: &[Record],
    indexes: &[usize],
) -> anyhow::Result<Vec<Reject>> {
    let mut changes = Vec::new();
    let mut rejects = Vec::new();
    for &index in indexes {
        match batch[index].decode::<DirectoryChange>("a directory change") {
            Ok(change) => changes.push((index, change)),
            Err(reason) => rejects.push(Reject { index, reason }),
        }
    }
    let writes = plan(changes.iter().map(|(i, c)| (*i, c)));
    // Runs of upserts go as one command; a delete flushes the run before it, so a
    // register → unregister → register sequence ends as it was issued.
    let mut run = Vec::new();
    for write in writes {
        match write {
            Write::Upsert(upsert) => run.push(upsert),
            Write::Delete { collection, filter } => {
                rejects.extend(super::execute(db, std::mem::take(&mut run)).await?);
                db.run_command(doc! {
                    "delete": collection,
                    "deletes": [ { "q": filter, "limit": 1 } ],
                })
                .await?;
            }
        }
    }
    rejects.extend(super::execute(db, run).await?);
    Ok(rejects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::directory::{Role, Sealed};

    fn change(change: Change) -> DirectoryChange {
        DirectoryChange {
            id: "c".into(),
            org: "acme".into(),
            issued_by: "root".into(),
            at_ms: 5,
            change,
        }
    }

    fn id_of(write: &Write) -> (&'static str, String) {
        match write {
            Write::Upsert(u) => (u.collection, u.filter.get_str("_id").unwrap().into()),
            Write::Delete { collection, filter } => {
                (collection, filter.get_str("_id").unwrap().into())
            }
        }
    }

    #[test]
    fn every_write_is_keyed_by_org() {
        let sealed = Sealed {
            key_id: "k".into(),
            data: "x".into(),
        };
        let changes = [
            change(Change::AgentInvited {
                agent_id: "ann".into(),
                name: "Ann".into(),
                email: Some("ann@acme.test".into()),
                phone: None,
                role: Role::Admin,
                capacity: 3,
            }),
            change(Change::BusinessNumberUpserted {
                phone_number_id: "111".into(),
                display_phone_number: "+1".into(),
                waba_id: None,
                access_token: sealed.clone(),
                app_secret: sealed,
            }),
            change(Change::PushTokenRegistered {
                agent_id: "ann".into(),
                device_id: "d1".into(),
                token: "ExponentPushToken[x]".into(),
                platform: "ios".into(),
            }),
            change(Change::PushTokenUnregistered {
                agent_id: "ann".into(),
                token: "ExponentPushToken[x]".into(),
            }),
        ];
        let writes = plan(changes.iter().enumerate());
        let ids: Vec<_> = writes.iter().map(id_of).collect();
        assert_eq!(
            ids,
            vec![
                (AGENTS.name, "acme:ann".into()),
                (BUSINESS_NUMBERS.name, "acme:111".into()),
                (PUSH_TOKENS.name, "acme:ExponentPushToken[x]".into()),
                (PUSH_TOKENS.name, "acme:ExponentPushToken[x]".into()),
            ]
        );
        assert!(matches!(writes[3], Write::Delete { .. }));
    }

    #[test]
    fn a_number_policy_sets_only_that_number() {
        let c = change(Change::RoutingPolicySet {
            phone_number_id: Some("111".into()),
            policy: events::directory::RoutingPolicy::Manual,
        });
        let writes = plan([(0, &c)]);
        let Write::Upsert(u) = &writes[0] else {
            panic!("upsert expected")
        };
        let set = u.update.get_document("$set").unwrap();
        assert_eq!(
            set.get_document("routing.numbers.111")
                .unwrap()
                .get_str("kind")
                .unwrap(),
            "manual"
        );
    }
}
