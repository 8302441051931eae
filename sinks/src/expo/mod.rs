//! The Expo sink: sends `notifications.push` to every registered device of the
//! agent (the directory's push tokens, followed live), in chunks of at most 100,
//! records each ticket in `push_tickets`, polls the receipts later, and removes
//! tokens Expo reports as `DeviceNotRegistered` (from a ticket or a receipt) by
//! publishing `PushTokenUnregistered` on `directory.changes`: the directory is the
//! one source of truth, so a replay never brings a dead token back and the mongo
//! sink stays the only writer of `push_tokens`. 429 and 5xx are retried with
//! backoff, honouring `Retry-After`.
//!
//! A ticket is recorded right after its chunk is accepted, before the next chunk is
//! sent; a batch retried after a failure skips every (notification, token) that
//! already has a ticket, so a device gets one push per notification.

pub mod config;
pub mod mapping;
mod run;

use events::clock::now_ms;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use anyhow::Context;
use events::delivery::PushNotification;
use events::directory::{Change, DirectoryChange};
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};
use reqwest::header;
use runtime::Publisher;
use runtime::directory::DirectoryHandle;
use runtime::{Record, Reject, Stage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

pub use config::ExpoConfig;
use mapping::{Device, Disposition, Outcome, Planned, ReceiptsResponse, SendResponse, Ticket};
pub use run::{TOPICS, run};

/// One document per (notification, token): the ticket, then its receipt.
pub const TICKETS: &str = "push_tickets";

const SEND_PATH: &str = "/--/api/v2/push/send";
const RECEIPTS_PATH: &str = "/--/api/v2/push/getReceipts";
/// Expo keeps receipts for a day; a ticket without one after that is given up.
const RECEIPT_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// Expo answers at most this many receipts per request.
const RECEIPTS_PER_REQUEST: i64 = 1000;

/// Makes sure the indexes the sink's lookups need exist.
pub async fn ensure_indexes(db: &Database) -> anyhow::Result<()> {
    db.collection::<Document>(TICKETS)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "receipt_pending": 1, "receipt_due_ms": 1 })
                .options(IndexOptions::builder().build())
                .build(),
        )
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ExpoError {
    /// Expo refused the request itself (4xx other than 429): retrying cannot help.
    #[error("expo refused the request: {status} {body}")]
    Refused { status: u16, body: String },
    #[error("expo still failing after {attempts} tries: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("expo's answer could not be read: {0}")]
    Decode(String),
}

/// Expo's HTTP API, retried on 429, 5xx and network errors.
#[derive(Clone)]
pub struct ExpoClient {
    http: reqwest::Client,
    config: ExpoConfig,
}

impl ExpoClient {
    pub fn new(config: ExpoConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .context("building the Expo HTTP client")?;
        Ok(Self { http, config })
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ExpoError> {
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let initial = Duration::from_millis(self.config.retry_initial_ms);
        let max = Duration::from_millis(self.config.retry_max_ms);
        let attempts = self.config.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            let mut request = self
                .http
                .post(&url)
                .header(header::ACCEPT, "application/json")
                .json(body);
            if !self.config.access_token.is_empty() {
                request = request.bearer_auth(self.config.access_token.expose());
            }
            let (delay, last) = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match mapping::disposition(
                        status,
                        retry_after.as_deref(),
                        attempt,
                        initial,
                        max,
                    ) {
                        Disposition::Done => {
                            return response
                                .json::<T>()
                                .await
                                .map_err(|e| ExpoError::Decode(e.to_string()));
                        }
                        Disposition::Refused => {
                            let body = response.text().await.unwrap_or_default();
                            return Err(ExpoError::Refused { status, body });
                        }
                        Disposition::Retry(delay) => (delay, format!("HTTP {status}")),
                    }
                }
                Err(err) => (
                    mapping::backoff(None, attempt, initial, max),
                    err.to_string(),
                ),
            };
            attempt += 1;
            if attempt >= attempts {
                return Err(ExpoError::Exhausted { attempts, last });
            }
            tracing::warn!(%path, %last, retry_in_ms = delay.as_millis() as u64, "expo request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends one chunk; one ticket per message, in order.
    pub async fn send(&self, messages: &[&mapping::ExpoMessage]) -> Result<Vec<Ticket>, ExpoError> {
        let response: SendResponse = self.post(SEND_PATH, &messages).await?;
        if response.data.len() != messages.len() {
            return Err(ExpoError::Decode(format!(
                "{} tickets for {} messages",
                response.data.len(),
                messages.len()
            )));
        }
        Ok(response.data)
    }

    /// Receipts of `ids` (at most 1000); those not ready yet are absent.
    pub async fn receipts(&self, ids: &[&str]) -> Result<ReceiptsResponse, ExpoError> {
        self.post(RECEIPTS_PATH, &serde_json::json!({ "ids": ids }))
            .await
    }
}

/// The sink as a pipeline stage; it also runs the receipt poller while it lives.
pub struct ExpoSink {
    db: Database,
    client: ExpoClient,
    config: ExpoConfig,
    directory: DirectoryHandle,
    unregister: Unregister,
    poller: JoinHandle<()>,
}

impl Drop for ExpoSink {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl ExpoSink {
    pub fn new(
        db: Database,
        config: ExpoConfig,
        directory: DirectoryHandle,
        publisher: Publisher,
    ) -> anyhow::Result<Self> {
        let client = ExpoClient::new(config.clone())?;
        let unregister = Unregister { publisher };
        let poller = tokio::spawn(poll_receipts_forever(
            db.clone(),
            client.clone(),
            config.clone(),
            unregister.clone(),
        ));
        Ok(Self {
            db,
            client,
            config,
            directory,
            unregister,
            poller,
        })
    }
}

impl Stage for ExpoSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let (mut notifications, mut rejects) = runtime::read_batch(batch, |_, record| {
            record.decode::<PushNotification>("a push notification")
        });
        let now = now_ms();
        let before = notifications.len();
        notifications.retain(|(_, n)| !mapping::is_stale(n.at_ms, now, self.config.max_age_ms));
        if notifications.len() < before {
            tracing::info!(
                dropped = before - notifications.len(),
                "stale push notifications not sent"
            );
        }
        if notifications.is_empty() {
            return Ok(rejects);
        }
        let devices = devices_of(&self.directory.get(), &notifications);
        let style = mapping::Style {
            sound: self.config.sound.clone(),
            priority: self.config.priority.clone(),
        };
        let candidates = mapping::plan(
            notifications.iter().map(|(i, n)| (*i, n)),
            &devices,
            &HashSet::new(),
            &style,
        );
        for device in &candidates.malformed {
            tracing::warn!(org = %device.org, agent = %device.agent_id, "push token not in Expo's format; skipped");
        }
        let keys: Vec<&str> = candidates.sends.iter().map(|p| p.key.as_str()).collect();
        let already = existing_tickets(&self.db, &keys).await?;
        let plan = mapping::plan(
            notifications.iter().map(|(i, n)| (*i, n)),
            &devices,
            &already,
            &style,
        );
        let mut refused = BTreeSet::new();
        for chunk in plan.sends.chunks(self.config.chunk_size.clamp(1, 100)) {
            let messages: Vec<&mapping::ExpoMessage> = chunk.iter().map(|p| &p.message).collect();
            match self.client.send(&messages).await {
                Ok(tickets) => {
                    let dead = record_tickets(&self.db, &self.config, chunk, &tickets).await?;
                    self.unregister.tokens(&dead).await?;
                }
                Err(ExpoError::Refused { status, body }) => {
                    tracing::warn!(status, %body, "expo refused a chunk");
                    for planned in chunk {
                        if refused.insert(planned.source) {
                            rejects.push(Reject {
                                index: planned.source,
                                reason: format!("expo refused the push: {status} {body}"),
                            });
                        }
                    }
                }
                // Chunks sent so far are recorded; the loop's retry resumes after them.
                Err(err) => return Err(err.into()),
            }
        }
        Ok(rejects)
    }
}

/// Every registered device of the notifications' agents, from the directory.
fn devices_of(
    directory: &events::directory::Directory,
    notifications: &[(usize, PushNotification)],
) -> Vec<Device> {
    let agents: BTreeSet<(&str, &str)> = notifications
        .iter()
        .map(|(_, n)| (n.org.as_str(), n.agent_id.as_str()))
        .collect();
    agents
        .into_iter()
        .flat_map(|(org, agent)| {
            directory.push_tokens(org, agent).map(move |t| Device {
                org: org.to_string(),
                agent_id: agent.to_string(),
                token: t.token.clone(),
            })
        })
        .collect()
}

/// A token Expo reports unregistered: `(org, agent, token)`.
type DeadToken = (String, String, String);

/// Removes dead tokens the one way the directory changes: a change on
/// `directory.changes`, with an id per token, so a repeat report is one change.
#[derive(Clone)]
struct Unregister {
    publisher: Publisher,
}

impl Unregister {
    async fn tokens(&self, dead: &[DeadToken]) -> anyhow::Result<()> {
        for (org, agent, token) in dead {
            let change = DirectoryChange {
                id: format!("expo-unregistered:{org}:{token}"),
                org: org.clone(),
                issued_by: "sink-expo".into(),
                at_ms: now_ms(),
                change: Change::PushTokenUnregistered {
                    agent_id: agent.clone(),
                    token: token.clone(),
                },
            };
            self.publisher
                .send_json(events::topics::DIRECTORY_CHANGES, org, &change, vec![])
                .await
                .context("publishing PushTokenUnregistered")?;
        }
        if !dead.is_empty() {
            tracing::info!(
                tokens = dead.len(),
                "push tokens Expo reports unregistered: removed from the directory"
            );
        }
        Ok(())
    }
}

async fn existing_tickets(db: &Database, keys: &[&str]) -> anyhow::Result<HashSet<String>> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let docs: Vec<Document> = db
        .collection::<Document>(TICKETS)
        .find(doc! { "_id": { "$in": keys } })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect())
}

/// Records a chunk's tickets; returns the tokens they report unregistered.
async fn record_tickets(
    db: &Database,
    config: &ExpoConfig,
    chunk: &[Planned],
    tickets: &[Ticket],
) -> anyhow::Result<Vec<DeadToken>> {
    let now = now_ms();
    let due = now + config.receipt_delay_ms as i64;
    let mut updates = Vec::with_capacity(chunk.len());
    let mut dead = Vec::new();
    for (planned, ticket) in chunk.iter().zip(tickets) {
        let mut fields = doc! {
            "org": &planned.org,
            "agent_id": &planned.agent_id,
            "notification_id": &planned.notification_id,
            "token": &planned.message.to,
            "sent_at_ms": now,
        };
        match ticket.outcome() {
            Outcome::Ok(receipt_id) => {
                fields.insert("status", "ok");
                fields.insert("receipt_id", receipt_id.map_or(Bson::Null, Bson::String));
                fields.insert("receipt_pending", true);
                fields.insert("receipt_due_ms", due);
            }
            Outcome::Unregistered => {
                fields.insert("status", "error");
                fields.insert("error", mapping::DEVICE_NOT_REGISTERED);
                fields.insert("receipt_pending", false);
                dead.push((
                    planned.org.clone(),
                    planned.agent_id.clone(),
                    planned.message.to.clone(),
                ));
            }
            Outcome::Failed(error) => {
                fields.insert("status", "error");
                fields.insert("error", error);
                fields.insert("receipt_pending", false);
            }
        }
        updates.push((doc! { "_id": &planned.key }, doc! { "$set": fields }));
    }
    bulk_upsert(db, TICKETS, updates).await?;
    Ok(dead)
}

/// One `update` command of many upserts: one round trip.
async fn bulk_upsert(
    db: &Database,
    collection: &str,
    statements: Vec<(Document, Document)>,
) -> anyhow::Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    let updates: Vec<Document> = statements
        .into_iter()
        .map(|(q, u)| doc! { "q": q, "u": u, "upsert": true })
        .collect();
    let reply = db
        .run_command(doc! { "update": collection, "updates": updates, "ordered": false })
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors")
        && !errors.is_empty()
    {
        anyhow::bail!("{collection}: {} writes refused: {errors:?}", errors.len());
    }
    Ok(())
}

async fn poll_receipts_forever(
    db: Database,
    client: ExpoClient,
    config: ExpoConfig,
    unregister: Unregister,
) {
    let every = Duration::from_millis(config.receipt_poll_ms.max(10));
    loop {
        tokio::time::sleep(every).await;
        loop {
            match poll_receipts(&db, &client, &config, &unregister).await {
                Ok(n) if n as i64 == RECEIPTS_PER_REQUEST => continue, // more are due
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "polling push receipts failed");
                    break;
                }
            }
        }
    }
}

/// Asks Expo for the receipts that are due; returns how many tickets it asked about.
async fn poll_receipts(
    db: &Database,
    client: &ExpoClient,
    config: &ExpoConfig,
    unregister: &Unregister,
) -> anyhow::Result<usize> {
    let now = now_ms();
    let due: Vec<Document> = db
        .collection::<Document>(TICKETS)
        .find(doc! { "receipt_pending": true, "receipt_due_ms": { "$lte": now } })
        .sort(doc! { "receipt_due_ms": 1 })
        .limit(RECEIPTS_PER_REQUEST)
        .await?
        .try_collect()
        .await?;
    let ids: Vec<&str> = due
        .iter()
        .filter_map(|d| d.get_str("receipt_id").ok())
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let receipts = if ids.is_empty() {
        ReceiptsResponse {
            data: Default::default(),
        }
    } else {
        client.receipts(&ids).await?
    };
    let mut updates = Vec::with_capacity(due.len());
    let mut dead = Vec::new();
    for ticket in &due {
        let Ok(key) = ticket.get_str("_id") else {
            continue;
        };
        let receipt = ticket
            .get_str("receipt_id")
            .ok()
            .and_then(|id| receipts.data.get(id));
        let set = match receipt.map(Ticket::outcome) {
            Some(Outcome::Ok(_)) => doc! { "receipt_pending": false, "receipt_status": "ok" },
            Some(Outcome::Unregistered) => {
                if let (Ok(org), Ok(agent), Ok(token)) = (
                    ticket.get_str("org"),
                    ticket.get_str("agent_id"),
                    ticket.get_str("token"),
                ) {
                    dead.push((org.to_string(), agent.to_string(), token.to_string()));
                }
                doc! { "receipt_pending": false, "receipt_status": "error",
                "error": mapping::DEVICE_NOT_REGISTERED }
            }
            Some(Outcome::Failed(error)) => {
                doc! { "receipt_pending": false, "receipt_status": "error", "error": error }
            }
            None if now - ticket.get_i64("sent_at_ms").unwrap_or(now) > RECEIPT_LIFETIME_MS => {
                doc! { "receipt_pending": false, "receipt_status": "expired" }
            }
            // Not ready yet: ask again later, after the others that are due.
            None => doc! { "receipt_due_ms": now + config.receipt_poll_ms as i64 },
        };
        updates.push((doc! { "_id": key }, doc! { "$set": set }));
    }
    bulk_upsert(db, TICKETS, updates).await?;
    unregister.tokens(&dead).await?;
    Ok(due.len())
}
