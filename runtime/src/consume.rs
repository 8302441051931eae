//! The loop around every sink and processor: take a batch, hand it to the stage, and
//! commit the batch's offsets only after the stage says it is written.
//!
//! - A record the stage can never handle (unparseable, refused by the store) goes to
//!   `deadletter` with headers naming why and where it came from; the partition
//!   moves on.
//! - A transient failure (store down) is retried with backoff and jitter ([`crate::retry`]), without committing, for
//!   as long as it takes; at shutdown the batch is left uncommitted, so the next owner
//!   of the partition redoes it (writes are idempotent, by event id).
//!
//! Every role's records in, batch sizes, write times, records out and dead letters
//! are counted here, once, rather than in each sink (see [`crate::observe`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Headers;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::{GroupConsumer, KafkaError, Outgoing, Publisher};
use crate::observe;
use crate::retry::RetryPolicy;

/// A consumed record, owned, so a batch outlives the consumer's buffers.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub(crate) fn from_message(message: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value as a `T`, or why the record must be rejected (`not {what}: …`):
    /// one codec and one wording for every stage that decodes by topic.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, String> {
        events::codec::decode::<T>(&self.value).map_err(|err| format!("not {what}: {err}"))
    }

    /// Why a record of a topic `stage` does not read is rejected.
    pub fn unread_topic(&self, stage: &str) -> String {
        format!("{stage} does not read {}", self.topic)
    }

    pub fn key_str(&self) -> &str {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or_default()
    }
}

/// A record the stage will never handle, and why.
#[derive(Debug, Clone)]
pub struct Reject {
    /// Index into the batch.
    pub index: usize,
    pub reason: String,
}

/// Reads each record of a batch with `read` (typically a `match` on its topic, then
/// [`Record::decode`]); what `read` refuses becomes a [`Reject`] with its reason.
pub fn read_batch<T>(
    batch: &[Record],
    mut read: impl FnMut(usize, &Record) -> Result<T, String>,
) -> (Vec<(usize, T)>, Vec<Reject>) {
    let mut read_ok = Vec::with_capacity(batch.len());
    let mut rejects = Vec::new();
    for (index, record) in batch.iter().enumerate() {
        match read(index, record) {
            Ok(value) => read_ok.push((index, value)),
            Err(reason) => rejects.push(Reject { index, reason }),
        }
    }
    (read_ok, rejects)
}

/// One stage of the pipeline, seen by the loop.
pub trait Stage {
    /// Handles a batch. `Ok(rejects)`: everything else is written. `Err`: nothing may be
    /// assumed written; the loop retries the whole batch (writes are idempotent).
    fn handle(
        &mut self,
        batch: &[Record],
    ) -> impl Future<Output = anyhow::Result<Vec<Reject>>> + Send;
}

/// `[batch]`-style knobs of the loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoopConfig {
    /// Most records handed to the stage at once.
    pub max_records: usize,
    /// How long to wait for a batch to fill once its first record is in.
    pub max_wait_ms: u64,
    /// First retry delay after a transient failure; doubles up to `retry_max_ms`,
    /// jittered (see [`crate::retry`]).
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl LoopConfig {
    /// The retry policy of this loop, and of anything else the role retries.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_millis(self.retry_initial_ms, self.retry_max_ms)
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_records: 500,
            max_wait_ms: 20,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
        }
    }
}

/// Headers a dead letter carries.
pub mod dlq_headers {
    pub const ERROR: &str = "coexist.error";
    pub const STAGE: &str = "coexist.stage";
    pub const SOURCE_TOPIC: &str = "coexist.source.topic";
    pub const SOURCE_PARTITION: &str = "coexist.source.partition";
    pub const SOURCE_OFFSET: &str = "coexist.source.offset";
}

/// Writes what could not be handled to `deadletter`, the original bytes untouched.
/// Every dead letter of every path is built and counted here (metric
/// `coexist_deadletters_total` under the role).
#[derive(Clone)]
pub struct DeadLetters {
    publisher: Publisher,
    stage: String,
    /// The metrics' role label: by default the stage header with dashes
    /// (`sink.mongo` is role `sink-mongo`).
    role: String,
}

/// One dead letter: the bytes, why, and where they came from.
pub struct DeadLetter<'a> {
    pub key: &'a str,
    pub value: Vec<u8>,
    pub reason: String,
    /// A topic, or another source (`mqtt:{topic}`).
    pub source: String,
    /// The source's partition and offset, when it is a topic.
    pub position: Option<(i32, i64)>,
    /// Further headers (`coexist.reason`: a machine-readable code, ...).
    pub extra: Vec<(&'a str, String)>,
}

impl DeadLetters {
    pub fn new(publisher: Publisher, stage: impl Into<String>) -> Self {
        let stage = stage.into();
        let role = stage.replace('.', "-");
        Self::with_role(publisher, stage, role)
    }

    /// Dead letters of `stage` counted under metrics role `role` (ingest's paths
    /// all count under `ingest`).
    pub fn with_role(
        publisher: Publisher,
        stage: impl Into<String>,
        role: impl Into<String>,
    ) -> Self {
        Self {
            publisher,
            stage: stage.into(),
            role: role.into(),
        }
    }

    /// Dead-letters a consumed record.
    pub async fn send(&self, record: &Record, reason: &str) -> Result<(), KafkaError> {
        self.send_letter(DeadLetter {
            key: record.key_str(),
            value: record.value.clone(),
            reason: reason.to_string(),
            source: record.topic.clone(),
            position: Some((record.partition, record.offset)),
            extra: Vec::new(),
        })
        .await
    }

    /// Dead-letters anything: the one place a dead letter's headers are written.
    pub async fn send_letter(&self, letter: DeadLetter<'_>) -> Result<(), KafkaError> {
        tracing::warn!(stage = %self.stage, source = %letter.source, position = ?letter.position,
            reason = %letter.reason, "dead-lettered");
        let mut headers = vec![
            (dlq_headers::ERROR, letter.reason),
            (dlq_headers::STAGE, self.stage.clone()),
            (dlq_headers::SOURCE_TOPIC, letter.source),
        ];
        if let Some((partition, offset)) = letter.position {
            headers.push((dlq_headers::SOURCE_PARTITION, partition.to_string()));
            headers.push((dlq_headers::SOURCE_OFFSET, offset.to_string()));
        }
        headers.extend(letter.extra);
        self.publisher
            .send(Outgoing {
                topic: events::topics::DEADLETTER,
                key: letter.key,
                value: letter.value,
                headers,
            })
            .await?;
        observe::global().metrics.dead_lettered(&self.role);
        Ok(())
    }
}

impl DeadLetters {
    /// [`Self::send`], retried with the one policy until the broker has it; false
    /// only when `shutdown` came first (the record is then left uncommitted).
    pub async fn send_until_ok(
        &self,
        record: &Record,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        RetryPolicy::default()
            .until_ok("dead-lettering", shutdown, || self.send(record, reason))
            .await
            .is_some()
    }
}

/// Runs `stage` over `consumer` until `shutdown`, committing after each written batch.
pub async fn run<S: Stage>(
    name: &str,
    consumer: GroupConsumer,
    mut stage: S,
    dead_letters: DeadLetters,
    config: LoopConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(stage = name, "started");
    while let Some(batch) = next_batch(&consumer, &config, &shutdown).await? {
        tracing::debug!(stage = name, records = batch.len(), "batch received");
        if !write_with_retry(name, &mut stage, &dead_letters, &batch, &config, &shutdown).await {
            break; // shutdown while the store was down: leave the batch uncommitted
        }
        commit(&consumer, &batch)?;
        tracing::debug!(
            stage = name,
            records = batch.len(),
            "batch written and committed"
        );
    }
    tracing::info!(stage = name, "stopped");
    Ok(())
}

/// Batches fetched by a task of their own, for loops that also `select!` on other
/// inputs (presence, ticks, PUBACKs). [`next_batch`] is not cancel-safe: records it
/// took from the consumer before a competing branch won would be lost, uncommitted
/// but never redelivered. [`Batches::recv`] is cancel-safe.
///
/// The task keeps reading while the loop is busy, into one growing batch (up to
/// `max_records`), and [`Batches::recv`] takes all of it: a loop that was busy gets
/// everything that came meanwhile in one batch, as [`next_batch`] would give it,
/// rather than a queue of small batches each formed in `max_wait_ms`, whose records
/// wait behind one another.
pub struct Batches {
    consumer: Arc<GroupConsumer>,
    pending: Arc<Pending>,
    config: LoopConfig,
    task: JoinHandle<()>,
}

/// The batch being filled, between the reading task and [`Batches::recv`].
#[derive(Default)]
struct Pending {
    state: std::sync::Mutex<Filling>,
    /// A record (or the end) arrived.
    arrived: tokio::sync::Notify,
    /// The batch was taken: there is room again.
    taken: tokio::sync::Notify,
}

#[derive(Default)]
struct Filling {
    records: Vec<Record>,
    /// When the first of `records` arrived: the batch is handed out `max_wait_ms` later
    /// at the latest.
    first_at: Option<tokio::time::Instant>,
    /// The reading ended: shutdown (`None`) or a fatal consumer error.
    ended: Option<Option<anyhow::Error>>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Filling> {
        // Only this module's short, non-panicking sections hold it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Batches {
    pub fn spawn(consumer: GroupConsumer, config: LoopConfig, shutdown: CancellationToken) -> Self {
        let consumer = Arc::new(consumer);
        let pending = Arc::new(Pending::default());
        let task = tokio::spawn(read_into(
            consumer.clone(),
            pending.clone(),
            config.max_records.max(1),
            shutdown,
        ));
        Self {
            consumer,
            pending,
            config,
            task,
        }
    }

    /// The next batch: what has arrived, once it is `max_records` or its first
    /// record has waited `max_wait_ms`; `None` after shutdown.
    pub async fn recv(&mut self) -> Option<anyhow::Result<Vec<Record>>> {
        let max_wait = Duration::from_millis(self.config.max_wait_ms);
        loop {
            let wake_at = {
                let mut filling = self.pending.lock();
                if let Some(ended) = filling.ended.take() {
                    filling.ended = Some(None); // once ended, stays ended
                    return ended.map(Err);
                }
                match filling.first_at {
                    Some(first_at)
                        if filling.records.len() >= self.config.max_records
                            || tokio::time::Instant::now() >= first_at + max_wait =>
                    {
                        let batch = std::mem::take(&mut filling.records);
                        filling.first_at = None;
                        drop(filling);
                        self.pending.taken.notify_one();
                        let role = self.consumer.context().role();
                        observe::global()
                            .metrics
                            .consumed(role, batch.iter().map(|r| r.topic.as_str()));
                        return Some(Ok(batch));
                    }
                    Some(first_at) => Some(first_at + max_wait),
                    None => None,
                }
            };
            // A notification sent since the lock was released is kept as a permit.
            match wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.pending.arrived.notified()).await;
                }
                None => self.pending.arrived.notified().await,
            }
        }
    }

    /// The consumer, to commit and to see the group's assignment.
    pub fn consumer(&self) -> &GroupConsumer {
        &self.consumer
    }
}

/// The reading task of [`Batches`]: appends each record to the batch being filled,
/// waiting while it holds `max_records`.
async fn read_into(
    consumer: Arc<GroupConsumer>,
    pending: Arc<Pending>,
    max_records: usize,
    shutdown: CancellationToken,
) {
    let role = consumer.context().role();
    let end = |why: Option<anyhow::Error>| {
        pending.lock().ended = Some(why);
        pending.arrived.notify_one();
    };
    loop {
        let full = pending.lock().records.len() >= max_records;
        if full {
            tokio::select! {
                _ = shutdown.cancelled() => return end(None),
                _ = pending.taken.notified() => continue,
            }
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => return end(None),
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                let record = Record::from_message(&message);
                let mut filling = pending.lock();
                filling
                    .first_at
                    .get_or_insert_with(tokio::time::Instant::now);
                filling.records.push(record);
                // The receiver waits for a first record, then for `max_wait_ms` or a
                // full batch: only those wake it.
                let wake = filling.records.len() == 1 || filling.records.len() >= max_records;
                drop(filling);
                if wake {
                    pending.arrived.notify_one();
                }
            }
            Err(err) => {
                if let Err(fatal) = transient(role, err) {
                    return end(Some(fatal));
                }
            }
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for the first record (or shutdown), then fills the batch for `max_wait_ms`.
/// A broker that stops answering is reported by the consumer as an error, and
/// librdkafka reconnects by itself: such errors are logged and the wait goes on.
/// Only a fatal consumer error ends the loop. Not cancel-safe: see [`Batches`].
pub async fn next_batch(
    consumer: &GroupConsumer,
    config: &LoopConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<Record>>> {
    let role = consumer.context().role();
    let first = loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => break message,
            Err(err) => transient(role, err)?,
        }
    };
    let mut batch = vec![Record::from_message(&first)];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.max_wait_ms);
    while batch.len() < config.max_records {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(Record::from_message(&message)),
            Ok(Err(err)) => transient(role, err)?,
            Err(_elapsed) => break,
        }
    }
    observe::global()
        .metrics
        .consumed(role, batch.iter().map(|r| r.topic.as_str()));
    Ok(Some(batch))
}

/// `Ok` (after logging) for a consumer error librdkafka recovers from by itself (a
/// broker down or frozen, a lost connection); `Err` for a fatal one.
fn transient(role: &str, err: rdkafka::error::KafkaError) -> anyhow::Result<()> {
    match err {
        fatal @ rdkafka::error::KafkaError::MessageConsumptionFatal(_) => {
            Err(anyhow::Error::new(fatal).context(format!("{role}: fatal consumer error")))
        }
        other => {
            tracing::warn!(%role, error = %other, "consumer error; librdkafka retries");
            Ok(())
        }
    }
}

/// Returns false only when shutdown came before the batch could be written.
async fn write_with_retry<S: Stage>(
    name: &str,
    stage: &mut S,
    dead_letters: &DeadLetters,
    batch: &[Record],
    config: &LoopConfig,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = config.retry().backoff();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match stage.handle(batch).await {
            Ok(rejects) => send_rejects(dead_letters, batch, &rejects)
                .await
                .map(|()| rejects.len()),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(rejected) => {
                report_written(
                    name,
                    batch.len().saturating_sub(rejected),
                    started.elapsed(),
                );
                return true;
            }
            Err(err) => {
                report_not_written(name, &err);
                let delay = backoff.next_delay();
                tracing::warn!(stage = name, error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64,
                    "batch not written; retrying without committing");
                if !backoff.sleep(delay, shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// A batch of stage `name` is written: `written` records out (the rest were
/// dead-lettered), and the role is ready again if a failed write had made it not.
/// Every loop that writes batches reports here, once.
pub fn report_written(name: &str, written: usize, elapsed: Duration) {
    let observer = observe::global();
    observer.metrics.batch_done(name, written, elapsed);
    observer.readiness.set_ready(&writes_check(name));
}

/// A batch of stage `name` could not be written: the role is not ready until one is
/// (a store refusing writes shows in readiness, with why).
pub fn report_not_written(name: &str, err: &anyhow::Error) {
    observe::global()
        .readiness
        .set_not_ready(&writes_check(name), format!("batch not written: {err:#}"));
}

fn writes_check(name: &str) -> String {
    format!("{name}.writes")
}

async fn send_rejects(
    dead_letters: &DeadLetters,
    batch: &[Record],
    rejects: &[Reject],
) -> anyhow::Result<()> {
    for reject in rejects {
        if let Some(record) = batch.get(reject.index) {
            dead_letters.send(record, &reject.reason).await?;
        }
    }
    Ok(())
}

/// Commits the next offset of every partition in the batch.
pub fn commit(consumer: &GroupConsumer, batch: &[Record]) -> anyhow::Result<()> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for record in batch {
        let entry = next
            .entry((record.topic.as_str(), record.partition))
            .or_insert(0);
        *entry = (*entry).max(record.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    }
    // Async: the batch is written, so committing later than now only means a crash
    // in between redelivers it (which the idempotent writes absorb); a synchronous
    // commit would block a runtime thread for a broker round trip after every batch,
    // which with a dozen loops in `coexist all` on two cores was most of the latency.
    // Async commits are sent in order, so a later one never lands before an earlier.
    if let Err(err) = consumer.commit(&list, CommitMode::Async) {
        // A rebalance took the partition away: its new owner redoes the batch.
        tracing::warn!(%err, "commit failed; the batch will be redelivered");
    }
    Ok(())
}
