//! The MongoDB sink: the system of record for contacts, conversations and messages,
//! and the only writer of the read model whose documents `store` defines.
//!
//! A batch becomes one `update` command per collection (many statements, one round
//! trip), which every MongoDB version and wire-compatible server understands.

pub mod config;
pub mod directory;
pub mod inbox;
pub mod mapping;
mod run;

use std::collections::BTreeMap;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Client, Database, IndexModel};
use runtime::{Record, Reject, Stage};

pub use config::MongoConfig;
use mapping::Upsert;
pub use run::{TOPICS, run};

const DUPLICATE_KEY: i32 = 11000;

/// Connects and makes sure the indexes the API's queries need exist.
pub async fn connect(config: &MongoConfig) -> anyhow::Result<Database> {
    let client = Client::with_uri_str(config.uri.expose()).await?;
    let db = client.database(&config.database);
    ensure_indexes(&db).await?;
    Ok(db)
}

/// The read model's indexes ([`store::index::all`]): the sink owns the collections.
async fn ensure_indexes(db: &Database) -> anyhow::Result<()> {
    let mut by_collection: BTreeMap<&str, Vec<IndexModel>> = BTreeMap::new();
    for index in store::index::all() {
        let options = index
            .unique
            .then(|| IndexOptions::builder().unique(true).build());
        by_collection.entry(index.collection).or_default().push(
            IndexModel::builder()
                .keys(index.keys)
                .options(options)
                .build(),
        );
    }
    for (collection, models) in by_collection {
        db.collection::<Document>(collection)
            .create_indexes(models)
            .await?;
    }
    Ok(())
}

/// The sink as a pipeline stage.
pub struct MongoSink {
    db: Database,
}

impl MongoSink {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl Stage for MongoSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        // Directory changes share the consumer (one group, one commit); they are
        // written on their own, the rest in batch order.
        let (directory, others): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| batch[i].topic == events::topics::DIRECTORY_CHANGES);
        if directory.is_empty() {
            return self.handle_inbox(batch).await;
        }
        let mut rejects = directory::write(&self.db, batch, &directory).await?;
        let sub: Vec<Record> = others.iter().map(|&i| batch[i].clone()).collect();
        for mut reject in self.handle_inbox(&sub).await? {
            reject.index = others[reject.index];
            rejects.push(reject);
        }
        Ok(rejects)
    }
}

impl MongoSink {
    /// Webhook events and the inbox topics: statements in batch order.
    async fn handle_inbox(&self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let mut plan = Vec::new();
        let mut rejects = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let statements = if record.topic == events::topics::WHATSAPP_EVENTS {
                record
                    .decode::<events::WhatsAppEvent>("a whatsapp event")
                    .map(|event| mapping::plan([(index, &event)]))
            } else {
                inbox::plan_record(record, index)
            };
            match statements {
                Ok(statements) => plan.extend(statements),
                Err(reason) => rejects.push(Reject { index, reason }),
            }
        }
        rejects.extend(execute(&self.db, plan).await?);
        Ok(rejects)
    }
}

/// Runs the statements, grouped per collection in batch order. Returns the records
/// whose statements the server refused for good; `Err` is a transient failure.
async fn execute(db: &Database, plan: Vec<Upsert>) -> anyhow::Result<Vec<Reject>> {
    let mut by_collection: BTreeMap<&str, Vec<Upsert>> = BTreeMap::new();
    for upsert in plan {
        by_collection
            .entry(upsert.collection)
            .or_default()
            .push(upsert);
    }
    let mut rejects = Vec::new();
    for (collection, mut statements) in by_collection {
        // A statement that collided may leave a rest to write (`on_collision`): one
        // more command with those, after the others.
        while !statements.is_empty() {
            statements = run_update(db, collection, statements, &mut rejects).await?;
        }
    }
    Ok(rejects)
}

/// One unordered `update` command; returns what the statements that collided leave
/// to write.
async fn run_update(
    db: &Database,
    collection: &str,
    statements: Vec<Upsert>,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<Vec<Upsert>> {
    let updates: Vec<Document> = statements
        .iter()
        .map(|u| doc! { "q": u.filter.clone(), "u": u.update.clone(), "upsert": u.upsert })
        .collect();
    // Unordered: one refused statement must not hold back the others.
    let reply = db
        .run_command(doc! { "update": collection, "updates": updates, "ordered": false })
        .await?;
    let mut rest = Vec::new();
    for error in reply
        .get_array("writeErrors")
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(error) = error.as_document() else {
            continue;
        };
        let index = error.get("index").and_then(as_index).unwrap_or(usize::MAX);
        let code = error.get("code").and_then(Bson::as_i32).unwrap_or_default();
        let Some(statement) = statements.get(index) else {
            continue;
        };
        if code == DUPLICATE_KEY {
            if let Some(then) = &statement.on_collision {
                rest.push(then.as_ref().clone());
                continue;
            }
            if statement.collision_means_done {
                continue;
            }
            // Two upserts raced on one _id: the retry finds the document.
            anyhow::bail!("duplicate key on {collection} upsert; retrying");
        }
        let message = error.get_str("errmsg").unwrap_or("write refused");
        rejects.push(Reject {
            index: statement.source,
            reason: format!("mongo {collection}: {code} {message}"),
        });
    }
    Ok(rest)
}

fn as_index(value: &Bson) -> Option<usize> {
    match value {
        Bson::Int32(i) => usize::try_from(*i).ok(),
        Bson::Int64(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// The writer's half of the read model's contract: every collection the API can
/// read ([`store::collections`]) is written by some statement of this sink, and no
/// statement writes a field its document type does not declare. A read of a
/// collection or field nothing writes (the media route once read one) fails here.
#[cfg(test)]
mod contract_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use events::delivery::MediaStored;
    use events::directory::{Change, DirectoryChange, Role, RoutingPolicy, Sealed};
    use events::inbox::ConversationState;
    use events::topics;
    use mongodb::bson::{Bson, Document};

    use super::inbox::tests as samples;
    use super::{directory, inbox, mapping};

    /// `(collection, filter, update)` of every kind of write the sink plans.
    fn every_statement() -> Vec<(&'static str, Document, Document)> {
        let mut out = Vec::new();
        let dir = format!("{}/../events/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(webhook) = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()) else {
                continue;
            };
            let events =
                events::normalize(&webhook, 1, &events::OrgDirectory::new("acme", [])).events;
            for u in mapping::plan(events.iter().enumerate()) {
                if let Some(rest) = u.on_collision {
                    out.push((rest.collection, rest.filter, rest.update));
                }
                out.push((u.collection, u.filter, u.update));
            }
        }
        let mut assignment = samples::assignment_event(ConversationState::Assigned, Some("ann"));
        assignment.command_id = Some("k1".into());
        assignment.issued_by = Some("ann".into());
        assignment.note = Some("call back".into());
        let read = samples::command(serde_json::json!({"status": "read", "message_id": "wamid.A"}));
        let stored = MediaStored {
            media_id: "m1".into(),
            org: "acme".into(),
            wamid: "wamid.A".into(),
            bucket: "b".into(),
            key: "acme/abc".into(),
            mime_type: "image/jpeg".into(),
            bytes: 3,
        };
        let records = [
            (
                topics::CONVERSATION_ASSIGNMENTS,
                serde_json::to_vec(&assignment),
            ),
            (
                topics::OUTBOUND_RESULTS,
                serde_json::to_vec(&samples::sent(Some("wamid.B"))),
            ),
            (
                topics::OUTBOUND_RESULTS,
                serde_json::to_vec(&samples::sent(None)),
            ),
            (topics::MESSAGES_OUTBOUND, serde_json::to_vec(&read)),
            (topics::MEDIA_STORED, serde_json::to_vec(&stored)),
        ];
        for (topic, value) in records {
            let record = runtime::Record {
                topic: topic.to_string(),
                offset: 7,
                value: value.unwrap(),
                ..Default::default()
            };
            for u in inbox::plan_record(&record, 0).unwrap() {
                out.push((u.collection, u.filter, u.update));
            }
        }
        let sealed = Sealed {
            key_id: "k".into(),
            data: "x".into(),
        };
        let changes = [
            Change::OrgCreated {
                name: "Acme".into(),
            },
            Change::AgentInvited {
                agent_id: "ann".into(),
                name: "Ann".into(),
                email: Some("ann@acme.test".into()),
                phone: Some("+1555".into()),
                role: Role::Admin,
                capacity: 3,
            },
            Change::AgentUpdated {
                agent_id: "ann".into(),
                name: Some("Ann B".into()),
                role: Some(Role::Agent),
                capacity: Some(2),
            },
            Change::AgentDeactivated {
                agent_id: "ann".into(),
            },
            Change::BusinessNumberUpserted {
                phone_number_id: "111".into(),
                display_phone_number: "+1".into(),
                waba_id: Some("9".into()),
                access_token: sealed.clone(),
                app_secret: sealed,
            },
            Change::RoutingPolicySet {
                phone_number_id: Some("111".into()),
                policy: RoutingPolicy::Manual,
            },
            Change::RoutingPolicySet {
                phone_number_id: None,
                policy: RoutingPolicy::RoundRobin,
            },
            Change::PushTokenRegistered {
                agent_id: "ann".into(),
                device_id: "d1".into(),
                token: "ExponentPushToken[x]".into(),
                platform: "ios".into(),
            },
            Change::PushTokenUnregistered {
                agent_id: "ann".into(),
                token: "ExponentPushToken[x]".into(),
            },
        ]
        .map(|change| DirectoryChange {
            id: "c".into(),
            org: "acme".into(),
            issued_by: "root".into(),
            at_ms: 5,
            change,
        });
        for write in directory::plan(changes.iter().enumerate()) {
            match write {
                directory::Write::Upsert(u) => out.push((u.collection, u.filter, u.update)),
                directory::Write::Delete { collection, filter } => {
                    out.push((collection, filter, Document::new()))
                }
            }
        }
        out
    }

    /// The top-level fields a filter or an update names (`$or` branches included;
    /// a dotted path names its first part).
    fn named_fields(document: &Document, out: &mut BTreeSet<String>) {
        for (key, value) in document {
            if let Some(operator) = key.strip_prefix('$') {
                match value {
                    // An update operator (`$set`, ...): its keys are fields.
                    Bson::Document(fields) if operator != "or" => {
                        for field in fields.keys() {
                            out.insert(field.split('.').next().unwrap_or_default().into());
                        }
                    }
                    Bson::Array(branches) => {
                        for branch in branches.iter().filter_map(Bson::as_document) {
                            named_fields(branch, out);
                        }
                    }
                    _ => {}
                }
            } else {
                out.insert(key.split('.').next().unwrap_or_default().into());
            }
        }
    }

    /// Every statement finds its document by `_id`, and no filter has a top-level
    /// operator: the local MongoDB scans the whole collection for a statement whose
    /// filter has one (see [`super::mapping::absent_or_below`]).
    #[test]
    fn every_statement_finds_its_document_by_id_without_a_top_level_operator() {
        for (collection, filter, update) in every_statement() {
            assert!(
                filter.contains_key("_id"),
                "{collection}: {filter} does not name _id"
            );
            assert!(
                filter.keys().all(|key| !key.starts_with('$')),
                "{collection}: {filter} has a top-level operator ({update})"
            );
        }
    }

    #[test]
    fn every_collection_of_the_read_model_is_written_with_its_own_fields() {
        let declared: BTreeMap<&str, &[&str]> = store::collections()
            .iter()
            .map(|d| (d.name, d.fields))
            .collect();
        let mut written = BTreeSet::new();
        for (collection, filter, update) in every_statement() {
            let fields = declared
                .get(collection)
                .unwrap_or_else(|| panic!("{collection} is not a collection of the store"));
            written.insert(collection);
            let mut named = BTreeSet::new();
            named_fields(&filter, &mut named);
            named_fields(&update, &mut named);
            for field in named {
                assert!(
                    fields.contains(&field.as_str()),
                    "{collection}.{field} is not a field of its document type: {update}"
                );
            }
        }
        let unwritten: Vec<_> = declared.keys().filter(|c| !written.contains(*c)).collect();
        assert!(
            unwritten.is_empty(),
            "read model collections nothing writes: {unwritten:?}"
        );
    }
}
