//! `directory.changes` → the directory collections (`orgs`, `agents`,
//! `business_numbers`, `push_tokens`). The mapping is pure; [`write`] runs it.
//!
//! Every change of an org is on one partition (keyed by org), so changes arrive in the
//! order the API issued them; each write is an upsert or delete by a deterministic
//! `_id`, so replaying the topic rebuilds the same documents.

use events::directory::{Change, DirectoryChange};
use mongodb::Database;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use runtime::{Record, Reject};

use super::mapping::Upsert;

/// Collections the directory lives in.
pub mod collections {
    pub const ORGS: &str = "orgs";
    pub const AGENTS: &str = "agents";
    pub const BUSINESS_NUMBERS: &str = "business_numbers";
    pub const PUSH_TOKENS: &str = "push_tokens";
}

/// One write of the plan, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Upsert(Upsert),
    Delete {
        collection: &'static str,
        filter: Document,
    },
}

/// `{org}:{id}`.
pub fn key(org: &str, id: &str) -> String {
    format!("{org}:{id}")
}

fn to_bson<T: serde::Serialize>(value: &T) -> Bson {
    mongodb::bson::to_bson(value).unwrap_or(Bson::Null)
}

/// The writes for a batch of `(record index, change)`, in batch order.
pub fn plan<'a>(changes: impl IntoIterator<Item = (usize, &'a DirectoryChange)>) -> Vec<Write> {
    let mut out = Vec::new();
    for (source, c) in changes {
        let upsert = |collection, id: String, update| {
            Write::Upsert(Upsert {
                collection,
                filter: doc! { "_id": id },
                update,
                collision_means_done: false,
                upsert: true,
                source,
            })
        };
        let org = c.org.as_str();
        let created = doc! { "org": org, "created_at_ms": c.at_ms };
        match &c.change {
            Change::OrgCreated { name } => out.push(upsert(
                collections::ORGS,
                org.to_string(),
                doc! { "$set": { "name": name, "updated_at_ms": c.at_ms }, "$setOnInsert": created },
            )),
            Change::AgentInvited {
                agent_id,
                name,
                email,
                phone,
                role,
                capacity,
            } => out.push(upsert(
                collections::AGENTS,
                key(org, agent_id),
                doc! {
                    "$set": {
                        "agent_id": agent_id, "name": name, "email": to_bson(email),
                        "phone": to_bson(phone), "role": role.as_str(), "capacity": *capacity as i64,
                        "active": true, "updated_at_ms": c.at_ms,
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
                let mut set = doc! { "agent_id": agent_id, "updated_at_ms": c.at_ms };
                if let Some(name) = name {
                    set.insert("name", name);
                }
                if let Some(role) = role {
                    set.insert("role", role.as_str());
                }
                if let Some(capacity) = capacity {
                    set.insert("capacity", *capacity as i64);
                }
                out.push(upsert(
                    collections::AGENTS,
                    key(org, agent_id),
                    doc! { "$set": set, "$setOnInsert": created },
                ));
            }
            Change::AgentDeactivated { agent_id } => out.push(upsert(
                collections::AGENTS,
                key(org, agent_id),
                doc! {
                    "$set": { "agent_id": agent_id, "active": false, "updated_at_ms": c.at_ms },
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
                collections::BUSINESS_NUMBERS,
                key(org, phone_number_id),
                doc! {
                    "$set": {
                        "phone_number_id": phone_number_id,
                        "display_phone_number": display_phone_number,
                        "waba_id": to_bson(waba_id),
                        "access_token": to_bson(access_token),
                        "app_secret": to_bson(app_secret),
                        "updated_at_ms": c.at_ms,
                    },
                    "$setOnInsert": created,
                },
            )),
            Change::RoutingPolicySet {
                phone_number_id,
                policy,
            } => {
                let field = match phone_number_id {
                    Some(number) => format!("routing.numbers.{number}"),
                    None => "routing.default".to_string(),
                };
                let mut set = doc! { "updated_at_ms": c.at_ms };
                set.insert(field, to_bson(policy));
                out.push(upsert(
                    collections::ORGS,
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
                collections::PUSH_TOKENS,
                key(org, token),
                doc! {
                    "$set": {
                        "org": org, "agent_id": agent_id, "device_id": device_id,
                        "token": token, "platform": platform, "updated_at_ms": c.at_ms,
                    },
                },
            )),
            // Only the agent who registered a token can remove it.
            Change::PushTokenUnregistered { agent_id, token } => out.push(Write::Delete {
                collection: collections::PUSH_TOKENS,
                filter: doc! { "_id": key(org, token), "agent_id": agent_id },
            }),
        }
    }
    out
}

/// The indexes the API's queries need.
pub async fn ensure_indexes(db: &Database) -> anyhow::Result<()> {
    let index = |keys: Document, unique: bool| {
        IndexModel::builder()
            .keys(keys)
            .options(unique.then(|| IndexOptions::builder().unique(true).build()))
            .build()
    };
    let specs = [
        (
            collections::AGENTS,
            vec![
                index(doc! { "org": 1, "agent_id": 1 }, true),
                index(doc! { "email": 1 }, false),
                index(doc! { "phone": 1 }, false),
            ],
        ),
        (
            collections::BUSINESS_NUMBERS,
            vec![
                index(doc! { "org": 1, "phone_number_id": 1 }, true),
                index(doc! { "phone_number_id": 1 }, false),
            ],
        ),
        (
            collections::PUSH_TOKENS,
            vec![index(doc! { "org": 1, "agent_id": 1 }, false)],
        ),
    ];
    for (collection, models) in specs {
        db.collection::<Document>(collection)
            .create_indexes(models)
            .await?;
    }
    Ok(())
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
                (collections::AGENTS, "acme:ann".into()),
                (collections::BUSINESS_NUMBERS, "acme:111".into()),
                (collections::PUSH_TOKENS, "acme:ExponentPushToken[x]".into()),
                (collections::PUSH_TOKENS, "acme:ExponentPushToken[x]".into()),
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
