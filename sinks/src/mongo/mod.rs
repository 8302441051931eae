//! The MongoDB sink: the system of record for contacts, conversations and messages.
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
use mapping::{Upsert, collections};
pub use run::{TOPICS, run};

const DUPLICATE_KEY: i32 = 11000;

/// Connects and makes sure the indexes the API's queries need exist.
pub async fn connect(config: &MongoConfig) -> anyhow::Result<Database> {
    let client = Client::with_uri_str(config.uri.expose()).await?;
    let db = client.database(&config.database);
    ensure_indexes(&db).await?;
    directory::ensure_indexes(&db).await?;
    Ok(db)
}

async fn ensure_indexes(db: &Database) -> anyhow::Result<()> {
    let unique = || IndexOptions::builder().unique(true).build();
    let index = |keys: Document, options: Option<IndexOptions>| {
        IndexModel::builder().keys(keys).options(options).build()
    };
    let specs: [(&str, Vec<IndexModel>); 4] = [
        (
            collections::MESSAGES,
            vec![
                index(doc! { "org": 1, "id": 1 }, Some(unique())),
                index(doc! { "org": 1, "conversation_id": 1, "sent_at": -1 }, None),
                // `GET /v1/media/{media_id}`: the message whose media the sink stored.
                index(doc! { "org": 1, "stored_media.media_id": 1 }, None),
            ],
        ),
        (
            collections::CONTACTS,
            vec![
                index(doc! { "org": 1, "wa_id": 1 }, Some(unique())),
                index(doc! { "org": 1, "profile_name": 1 }, None),
            ],
        ),
        (
            collections::CONVERSATIONS,
            vec![
                index(doc! { "org": 1, "id": 1 }, Some(unique())),
                index(doc! { "org": 1, "state": 1, "last_message_at": -1 }, None),
                index(
                    doc! { "org": 1, "assignee": 1, "state": 1, "last_message_at": -1 },
                    None,
                ),
            ],
        ),
        (
            collections::MESSAGE_STATUSES,
            vec![index(doc! { "org": 1, "wamid": 1, "at": 1 }, None)],
        ),
    ];
    for (collection, models) in specs {
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
    for (collection, statements) in by_collection {
        let updates: Vec<Document> = statements
            .iter()
            .map(|u| doc! { "q": u.filter.clone(), "u": u.update.clone(), "upsert": u.upsert })
            .collect();
        // Unordered: one refused statement must not hold back the others.
        let reply = db
            .run_command(doc! { "update": collection, "updates": updates, "ordered": false })
            .await?;
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
    }
    Ok(rejects)
}

fn as_index(value: &Bson) -> Option<usize> {
    match value {
        Bson::Int32(i) => usize::try_from(*i).ok(),
        Bson::Int64(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}
