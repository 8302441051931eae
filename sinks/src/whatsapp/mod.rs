//! The whatsapp sink: `messages.outbound` → the Graph API → `messages.outbound.results`.
//!
//! Per batch: customers' messages (`whatsapp.events`, read in the same group; both
//! topics are keyed by `phone_number_id` with the same partition count, so a number's
//! events and commands meet in one member) keep the 24-hour window book; whether each
//! command may go out is decided by [`decide`] (pure) from the [`ledger`] (never
//! twice), its age, its payload ([`payload`]) and the window ([`window`]); what may
//! go out is sent through the
//! number's token bucket, one conversation in order, conversations side by side.
//! Meta's throttling answers are retried with backoff; an outage (5xx, unreachable)
//! pauses the partition like a store that is down.

pub mod config;
pub mod decide;
pub mod ledger;
pub mod payload;
mod run;
pub mod window;

use events::clock::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use events::delivery::{OutboundIntent, OutboundMessage, OutboundResult};
use events::webhook::ApiError;
use events::{WhatsAppEvent, codec, ids, topics};
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use runtime::table::{From, Reader};
use runtime::{KafkaConfig, Publisher, Record, Reject, Stage};

pub use config::WhatsAppConfig;
use decide::Verdict;
use ledger::{Decision, Ledger};
use payload::Call;
pub use run::{TOPICS, run};
use window::WindowBook;

use crate::graph::{GraphClient, GraphError, Retry, api_error};

/// Error codes of the answers the sink makes itself. Refusals reuse Meta's codes for
/// the same conditions, so a client handles one code whoever refused.
pub mod codes {
    /// Meta's "invalid parameter": the payload can never be sent as it is.
    pub const INVALID_PARAMETER: i64 = 100;
    /// Meta's "re-engagement message": outside the customer service window.
    pub const OUTSIDE_WINDOW: i64 = 131047;
    /// Ours: the call was made but its answer was lost; the command was not resent.
    pub const OUTCOME_UNKNOWN: i64 = 0;
    /// Ours: too old to send.
    pub const EXPIRED: i64 = 1;
}

/// The sink as a pipeline stage.
pub struct WhatsAppSink {
    graph: GraphClient,
    config: WhatsAppConfig,
    publisher: Publisher,
    s3: Option<(aws_sdk_s3::Client, String)>,
    limiters: HashMap<String, Arc<DefaultDirectRateLimiter>>,
    ledger: Arc<Mutex<Ledger>>,
    window: WindowBook,
    batches: u64,
    /// Partitions of `messages.outbound` this instance has handled, and how to read
    /// the state of one it gains from another instance (None: never re-read).
    owned: std::collections::HashSet<i32>,
    kafka: Option<KafkaConfig>,
}

impl WhatsAppSink {
    /// `s3`: the client and bucket of outbound media (`s3_key` payloads).
    pub fn new(
        graph: GraphClient,
        config: WhatsAppConfig,
        publisher: Publisher,
        s3: Option<(aws_sdk_s3::Client, String)>,
        (ledger, window): (Ledger, WindowBook),
    ) -> Self {
        Self {
            graph,
            config,
            publisher,
            s3,
            limiters: HashMap::new(),
            ledger: Arc::new(Mutex::new(ledger)),
            window,
            batches: 0,
            owned: Default::default(),
            kafka: None,
        }
    }

    /// Re-reads the ledger and the window book when a partition shows up that this
    /// instance did not handle since its start rebuild: after a rebalance, the
    /// previous owner's intents (acknowledged before it let the partition go) and the
    /// partition's last 24 hours of customers' messages are then known before any
    /// command of it is decided.
    pub fn rebuild_on_new_partitions(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = Some(kafka);
        self
    }

    async fn catch_up(&mut self, batch: &[Record]) -> anyhow::Result<()> {
        let first_batch = self.owned.is_empty();
        let mut gained = false;
        for record in batch
            .iter()
            .filter(|r| r.topic == topics::MESSAGES_OUTBOUND)
        {
            gained |= self.owned.insert(record.partition);
        }
        // The first partitions seen are the start rebuild's.
        let Some(kafka) = self.kafka.clone().filter(|_| gained && !first_batch) else {
            return Ok(());
        };
        tracing::info!(partitions = ?self.owned, "a partition was gained: re-reading the ledger and the window");
        let config = self.config.clone();
        let (ledger, window) =
            tokio::task::spawn_blocking(move || rebuild(&kafka, &config)).await??;
        self.window.merge(window);
        if let Ok(mut own) = self.ledger.lock() {
            own.merge(ledger);
        }
        Ok(())
    }

    fn limiter(&mut self, phone_number_id: &str) -> Arc<DefaultDirectRateLimiter> {
        let own = self
            .graph
            .config()
            .number(phone_number_id)
            .map_or(0, |n| n.messages_per_second);
        let quota = self.config.quota(own);
        self.limiters
            .entry(phone_number_id.to_string())
            .or_insert_with(|| Arc::new(RateLimiter::direct(quota)))
            .clone()
    }
}

fn result_of(
    command: &OutboundMessage,
    wamid: Option<String>,
    error: Option<ApiError>,
) -> OutboundResult {
    command.result(wamid, error, now_ms())
}

fn refused(command: &OutboundMessage, code: i64, title: &str, details: &str) -> OutboundResult {
    result_of(command, None, Some(api_error(code, title, details)))
}

impl Stage for WhatsAppSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        self.catch_up(batch).await?;
        let mut rejects = Vec::new();
        let mut commands = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            match record.topic.as_str() {
                // Undecodable events are the other sinks' to dead-letter; here they
                // only feed the window book.
                topics::WHATSAPP_EVENTS => {
                    if let Ok(event) = codec::decode::<WhatsAppEvent>(&record.value) {
                        self.window.observe(&event);
                        if let Ok(mut ledger) = self.ledger.lock() {
                            observe_status(&mut ledger, &event);
                        }
                    }
                }
                topics::MESSAGES_OUTBOUND => {
                    match record.decode::<OutboundMessage>("an outbound message") {
                        Ok(command) => commands.push(command),
                        Err(reason) => rejects.push(Reject { index, reason }),
                    }
                }
                _ => rejects.push(Reject {
                    index,
                    reason: record.unread_topic("sink.whatsapp"),
                }),
            }
        }
        let now = now_ms();
        self.batches += 1;
        if self.batches.is_multiple_of(1000) {
            self.window.prune(now, self.config.window_hours);
        }
        // Bounded by time: customers whose window closed `window_hours` ago are pruned.
        runtime::observe::global().metrics.cache_size(
            "sink-whatsapp",
            "window_book",
            self.window.len(),
        );

        let mut answers = Vec::new();
        let mut sends: BTreeMap<String, Vec<(OutboundMessage, Call)>> = BTreeMap::new();
        for command in commands {
            let ours = self.graph.handles(&command.phone_number_id);
            let ledger = self
                .ledger
                .lock()
                .map_err(|_| anyhow::anyhow!("ledger poisoned"))?
                .decide(&command.id);
            // A sealed payload (a login code) is opened only here, for a command this
            // sink is about to decide on; the ledger and results never hold it.
            let command = if ours && matches!(ledger, Decision::Fresh) {
                match opened(&self.graph, &command) {
                    Ok(plain) => plain,
                    Err(reason) => {
                        let answer = refused(
                            &command,
                            codes::INVALID_PARAMETER,
                            "invalid payload",
                            &reason,
                        );
                        answers.push(answer);
                        continue;
                    }
                }
            } else {
                command
            };
            match decide::decide(&command, ours, ledger, &self.window, &self.config, now) {
                Verdict::NotOurs | Verdict::Done => {}
                Verdict::Answer(result) => answers.push(*result),
                Verdict::Send(call) => {
                    let conversation =
                        ids::conversation_id(&command.phone_number_id, &ids::digits(&command.to));
                    sends.entry(conversation).or_default().push((command, call));
                }
            }
        }
        for result in answers {
            publish_result(&self.publisher, &self.ledger, result).await?;
        }

        let limiters: Vec<_> = sends
            .values()
            .map(|list| self.limiter(&list[0].0.phone_number_id))
            .collect();
        let mut jobs = Vec::new();
        for ((_, list), limiter) in sends.into_iter().zip(limiters) {
            let sender = Sender {
                graph: &self.graph,
                config: &self.config,
                publisher: &self.publisher,
                s3: self.s3.as_ref(),
                ledger: &self.ledger,
                limiter,
            };
            jobs.push(async move {
                for (command, call) in list {
                    sender.send(&command, call).await?;
                }
                anyhow::Ok(())
            });
        }
        let outcomes: Vec<anyhow::Result<()>> = futures::stream::iter(jobs)
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        for outcome in outcomes {
            outcome?; // an outage: the batch is retried; the ledger skips what is done
        }
        Ok(rejects)
    }
}

/// The command as it is sent: a sealed payload (a login code) opened, so only the
/// Graph API call carries it in clear. The result and ledger keep the sealed one.
fn opened(graph: &GraphClient, command: &OutboundMessage) -> Result<OutboundMessage, String> {
    let Some(sealed) = command.sealed() else {
        return Ok(command.clone());
    };
    let body = graph
        .open(&sealed)
        .map_err(|e| format!("sealed payload: {e}"))?;
    let payload = serde_json::from_str(&body).map_err(|e| format!("sealed payload: {e}"))?;
    Ok(OutboundMessage {
        payload,
        ..command.clone()
    })
}

async fn publish_result(
    publisher: &Publisher,
    ledger: &Mutex<Ledger>,
    result: OutboundResult,
) -> anyhow::Result<()> {
    let id = result.id.clone();
    if let Ok(mut l) = ledger.lock() {
        l.answered(result.clone());
    }
    publisher
        .send_json(
            topics::OUTBOUND_RESULTS,
            &result.phone_number_id,
            &result,
            vec![],
        )
        .await
        .context("publishing an outbound result")?;
    if let Ok(mut l) = ledger.lock() {
        l.published(&id);
    }
    Ok(())
}

/// Everything one conversation's sends need, borrowed from the stage.
struct Sender<'a> {
    graph: &'a GraphClient,
    config: &'a WhatsAppConfig,
    publisher: &'a Publisher,
    s3: Option<&'a (aws_sdk_s3::Client, String)>,
    ledger: &'a Mutex<Ledger>,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl Sender<'_> {
    /// Carries out one command and publishes its result. `Err`: an outage or Kafka
    /// failure; nothing was sent that the ledger does not know of.
    async fn send(&self, command: &OutboundMessage, call: Call) -> anyhow::Result<()> {
        let pnid = &command.phone_number_id;
        let (edge, body) = match call {
            Call::Message { body } => ("messages", body),
            Call::SmbAppData { body } => ("smb_app_data", body),
            Call::MediaMessage { kind, s3_key, body } => match self.upload(command, &s3_key).await?
            {
                Ok(media_id) => ("messages", payload::with_media_id(body, &kind, &media_id)),
                Err(result) => return publish_result(self.publisher, self.ledger, *result).await,
            },
        };
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            self.limiter.until_ready().await;
            let intent = OutboundIntent {
                id: command.id.clone(),
                org: command.org.clone(),
                phone_number_id: pnid.clone(),
                at_ms: now_ms(),
            };
            self.publisher
                .send_json(topics::OUTBOUND_INTENTS, pnid, &intent, vec![])
                .await
                .context("publishing an outbound intent")?;
            if let Ok(mut l) = self.ledger.lock() {
                l.intended(&command.id);
            }
            let error = match self.graph.post_json(pnid, edge, &body).await {
                Ok(answer) => break result_of(command, payload::wamid(&answer), None),
                Err(error) => error,
            };
            let retry = error.retry();
            if matches!(retry, Retry::Later | Retry::Outage | Retry::Never)
                && let Ok(mut l) = self.ledger.lock()
            {
                l.not_sent(&command.id); // Meta answered: it did not take it
            }
            match retry {
                Retry::Later | Retry::Outage if attempt < self.config.max_attempts => {
                    tracing::info!(command = %command.id, %error, attempt, "graph api refused for now; retrying");
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                }
                Retry::Outage => return Err(anyhow::Error::new(error).context("graph api down")),
                Retry::Later | Retry::Never => {
                    break result_of(command, None, Some(error.to_api_error()));
                }
                Retry::Unknown => {
                    tracing::warn!(command = %command.id, %error, "graph api call without an answer; not resending");
                    break refused(
                        command,
                        codes::OUTCOME_UNKNOWN,
                        "outcome unknown, not resent",
                        &error.to_string(),
                    );
                }
            }
        };
        publish_result(self.publisher, self.ledger, result).await
    }

    /// Uploads an S3 object to the number's media; `Ok(Err(result))` when it can never
    /// be (no such object, refused by Meta).
    async fn upload(
        &self,
        command: &OutboundMessage,
        key: &str,
    ) -> anyhow::Result<Result<String, Box<OutboundResult>>> {
        let Some((client, bucket)) = self.s3 else {
            return Ok(Err(Box::new(refused(
                command,
                codes::INVALID_PARAMETER,
                "media not available",
                "this sink has no S3 bucket configured",
            ))));
        };
        let object = match client.get_object().bucket(bucket).key(key).send().await {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(Err(Box::new(refused(
                    command,
                    codes::INVALID_PARAMETER,
                    "media not found",
                    &format!("no object {key} in bucket {bucket}"),
                ))));
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!("reading s3://{bucket}/{key}")));
            }
        };
        let mime = object
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("reading s3://{bucket}/{key}"))?
            .into_bytes()
            .to_vec();
        let file_name = key.rsplit('/').next().unwrap_or(key).to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .graph
                .upload_media(&command.phone_number_id, bytes.clone(), &mime, &file_name)
                .await
            {
                Ok(id) => return Ok(Ok(id)),
                // An upload is not a message: repeating it is harmless.
                Err(error)
                    if error.retry() != Retry::Never && attempt < self.config.max_attempts =>
                {
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                }
                Err(error)
                    if error.retry() == Retry::Never
                        || matches!(error, GraphError::Api { status: 429, .. }) =>
                {
                    return Ok(Err(Box::new(result_of(
                        command,
                        None,
                        Some(error.to_api_error()),
                    ))));
                }
                Err(error) => return Err(anyhow::Error::new(error).context("uploading media")),
            }
        }
    }
}

/// A status webhook names its command in `biz_opaque_callback_data`.
fn observe_status(ledger: &mut Ledger, event: &WhatsAppEvent) {
    if let events::event::EventBody::Status(status) = &event.body
        && let Some(id) = status.raw["biz_opaque_callback_data"].as_str()
    {
        ledger.status_seen(id, &status.wamid);
    }
}

/// Reads the sink's state back from Kafka: the ledger from the intents and results
/// topics, the window book from the last `window_hours` of `whatsapp.events`.
/// Blocking: call it from `spawn_blocking`.
pub fn rebuild(
    kafka: &KafkaConfig,
    config: &WhatsAppConfig,
) -> anyhow::Result<(Ledger, WindowBook)> {
    let mut ledger = Ledger::default();
    read_topic(kafka, topics::OUTBOUND_INTENTS, None, |value| {
        if let Ok(intent) = codec::decode::<OutboundIntent>(value) {
            ledger.intended(&intent.id);
        }
    })?;
    read_topic(kafka, topics::OUTBOUND_RESULTS, None, |value| {
        if let Ok(result) = codec::decode::<OutboundResult>(value) {
            ledger.published(&result.id);
        }
    })?;
    let mut window = WindowBook::default();
    let since = now_ms() - (config.window_hours as i64).saturating_mul(3_600_000);
    read_topic(kafka, topics::WHATSAPP_EVENTS, Some(since), |value| {
        if let Ok(event) = codec::decode::<WhatsAppEvent>(value) {
            window.observe(&event);
            observe_status(&mut ledger, &event);
        }
    })?;
    Ok((ledger, window))
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Every value of `topic` (from `since_ms`, or the start) to the end of every
/// partition (the one group-less reader, `runtime::table::Reader`).
fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    since_ms: Option<i64>,
    mut each: impl FnMut(&[u8]),
) -> anyhow::Result<()> {
    let from = since_ms.map_or(From::Beginning, From::Time);
    let mut reader = Reader::open(kafka, topic, "sink-whatsapp-rebuild", from, None)?;
    while let Some(record) = reader.next(READ_TIMEOUT)? {
        each(&record.value);
    }
    Ok(())
}
