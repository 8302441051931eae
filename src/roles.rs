//! What each subcommand runs. `all` runs every role in one process, sharing one
//! shutdown signal; the separate subcommands run one role each, for scaling out.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use events::topics;
use runtime::RetryPolicy;
use runtime::consume::{self, DeadLetters};
use runtime::kafka::RebalanceLog;
use runtime::observe;
use sinks::clickhouse::ClickHouseSink;
use sinks::expo::ExpoSink;
use sinks::mongo::MongoSink;
use sinks::mqtt::MqttSink;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The sinks, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkName {
    Mongo,
    Clickhouse,
    Mqtt,
    Whatsapp,
    Media,
    Expo,
}

impl SinkName {
    pub const ALL: [SinkName; 6] = [
        SinkName::Mongo,
        SinkName::Clickhouse,
        SinkName::Mqtt,
        SinkName::Whatsapp,
        SinkName::Media,
        SinkName::Expo,
    ];

    /// `sink-mongo`: the role name, consumer group suffix and client id suffix.
    pub fn role(self) -> String {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        format!("sink-{name}")
    }
}

/// Runs the webhook receiver and, if enabled, the MQTT presence bridge.
pub async fn ingest(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::fail_closed::refuse_public_without_secrets(
        "ingest",
        &config.ingest.listen,
        &crate::fail_closed::missing_ingest_secrets(config),
    )?;
    let role = ingest::webhook::ROLE;
    let publisher = config.kafka.publisher(role).await?;
    let check = format!("{role}.kafka");
    observe::global()
        .readiness
        .set_not_ready(&check, "not probed yet");
    tokio::spawn({
        let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
        async move {
            observe::probe(&check, PROBE_EVERY, shutdown, || async {
                publisher
                    .reachable(PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
        }
    });
    // Numbers, orgs and app secrets: the directory, followed live.
    let (directory, _follower) = runtime::directory::follow(
        &config.kafka,
        Vec::new(),
        "ingest-directory",
        shutdown.clone(),
    )
    .await?;
    let numbers = ingest::webhook::NumberSource::Directory {
        directory,
        sealer: runtime::seal::Sealer::from_config(&config.sealing)?,
    };
    let webhooks = ingest::serve(
        config.ingest.clone(),
        publisher.clone(),
        numbers,
        shutdown.clone(),
    );
    if !config.ingest.presence.enabled {
        return webhooks.await;
    }
    let presence = ingest::presence::run(
        config.mqtt.clone(),
        config.ingest.presence.clone(),
        publisher,
        shutdown.clone(),
    );
    // Either half stopping (failure or shutdown) stops the other.
    let stop_all = |result: anyhow::Result<()>| {
        shutdown.cancel();
        result
    };
    let (webhooks, presence) = tokio::join!(async { stop_all(webhooks.await) }, async {
        stop_all(presence.await)
    });
    webhooks.and(presence)
}

/// Runs one sink: each reads the topics its module names (see topics.yaml).
pub async fn sink(
    config: &Config,
    name: SinkName,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let role = name.role();
    starting(&role);
    let publisher = config.kafka.publisher(&role).await?;
    let dead_letters = DeadLetters::new(publisher.clone(), role.replace('-', "."));
    let batch = config.sinks.batch.clone();
    let result = match name {
        SinkName::Mongo => {
            let mongo = &config.sinks.mongo;
            let Some(db) =
                until_ready(&role, "mongodb", &shutdown, || sinks::mongo::connect(mongo)).await
            else {
                return Ok(());
            };
            let consumer = config.kafka.consumer(
                &role,
                &[
                    topics::WHATSAPP_EVENTS,
                    topics::CONVERSATION_ASSIGNMENTS,
                    topics::MESSAGES_OUTBOUND,
                    topics::OUTBOUND_RESULTS,
                    topics::MEDIA_STORED,
                    topics::DIRECTORY_CHANGES,
                ],
            )?;
            consume::run(
                &role,
                consumer,
                MongoSink::new(db),
                dead_letters,
                mongo.batching(&batch),
                shutdown,
            )
            .await
        }
        SinkName::Clickhouse => {
            let ch = &config.sinks.clickhouse;
            if until_ready(&role, "clickhouse", &shutdown, || {
                sinks::clickhouse::migrate(ch)
            })
            .await
            .is_none()
            {
                return Ok(());
            }
            let consumer = config.kafka.consumer(&role, sinks::clickhouse::TOPICS)?;
            consume::run(
                &role,
                consumer,
                ClickHouseSink::new(ch),
                dead_letters,
                ch.batching(&batch),
                shutdown,
            )
            .await
        }
        SinkName::Mqtt => {
            let mut sink = MqttSink::new(&config.mqtt, config.sinks.mqtt.clone());
            // Who owns each conversation, so new messages reach the owner's inbox.
            let kafka = config.kafka.clone();
            let (assignments, _) = tokio::task::spawn_blocking(move || {
                runtime::table::read_whole(
                    &kafka,
                    topics::CONVERSATION_ASSIGNMENTS,
                    "sink-mqtt-owners",
                )
            })
            .await??;
            for value in &assignments {
                if let Ok(assignment) = events::codec::decode(value) {
                    sink.remember(&assignment);
                }
            }
            tracing::info!(
                owned = sink.owned_conversations(),
                "mqtt sink rebuilt conversation owners"
            );
            let consumer = config.kafka.consumer(
                &role,
                &[
                    topics::WHATSAPP_EVENTS,
                    topics::CONVERSATION_ASSIGNMENTS,
                    // Statuses reach devices from here, forward only.
                    topics::MESSAGES_STATUS,
                    topics::OUTBOUND_RESULTS,
                ],
            )?;
            let batching = config.sinks.mqtt.batching(&batch);
            consume::run(&role, consumer, sink, dead_letters, batching, shutdown).await
        }
        SinkName::Expo => {
            let mongo = &config.sinks.mongo;
            let connect = || async {
                let db = sinks::mongo::connect(mongo).await?;
                sinks::expo::ensure_indexes(&db).await?;
                Ok(db)
            };
            let Some(db) = until_ready(&role, "mongodb", &shutdown, connect).await else {
                return Ok(());
            };
            // Push tokens: the directory, followed live.
            let (directory, _follower) = runtime::directory::follow(
                &config.kafka,
                Vec::new(),
                "sink-expo-directory",
                shutdown.clone(),
            )
            .await?;
            let sink = ExpoSink::new(db, config.sinks.expo.clone(), directory, publisher.clone())?;
            let consumer = config
                .kafka
                .consumer(&role, &[topics::NOTIFICATIONS_PUSH])?;
            consume::run(&role, consumer, sink, dead_letters, batch, shutdown).await
        }
        SinkName::Whatsapp => {
            let graph = graph_client(config, &role, &shutdown).await?;
            let (kafka, wa) = (config.kafka.clone(), config.sinks.whatsapp.clone());
            let state = tokio::task::spawn_blocking(move || sinks::whatsapp::rebuild(&kafka, &wa))
                .await??;
            let s3 = (config.s3.client(), config.s3.bucket.clone());
            let sink = sinks::whatsapp::WhatsAppSink::new(
                graph,
                config.sinks.whatsapp.clone(),
                publisher.clone(),
                Some(s3),
                state,
            )
            .rebuild_on_new_partitions(config.kafka.clone());
            let consumer = config
                .kafka
                .consumer(&role, &[topics::MESSAGES_OUTBOUND, topics::WHATSAPP_EVENTS])?;
            consume::run(&role, consumer, sink, dead_letters, batch, shutdown).await
        }
        SinkName::Media => {
            let graph = graph_client(config, &role, &shutdown).await?;
            let s3 = config.s3.client();
            let s3_config = &config.s3;
            if until_ready(&role, "s3", &shutdown, || s3_config.ensure_bucket(&s3))
                .await
                .is_none()
            {
                return Ok(());
            }
            let consumer = config.kafka.consumer(&role, &[topics::WHATSAPP_EVENTS])?;
            let sink = sinks::media::MediaSink::new(
                graph,
                s3,
                config.s3.bucket.clone(),
                publisher.clone(),
            );
            consume::run(&role, consumer, sink, dead_letters, batch, shutdown).await
        }
    };
    publisher.flush(Duration::from_secs(5));
    result
}

/// The processors, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcessorName {
    Router,
    Status,
    Notifier,
}

impl ProcessorName {
    pub const ALL: [ProcessorName; 3] = [
        ProcessorName::Router,
        ProcessorName::Notifier,
        ProcessorName::Status,
    ];

    /// `process-router`: the role name in logs.
    pub fn role(self) -> String {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        format!("process-{name}")
    }
}

/// Runs one processor.
pub async fn process(
    config: &Config,
    name: ProcessorName,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    starting(&name.role());
    match name {
        ProcessorName::Status => {
            let role = "process-status";
            let publisher = config.kafka.publisher(role).await?;
            let kafka = config.kafka.clone();
            let capacity = config.processors.status.capacity;
            let tracker = tokio::task::spawn_blocking(move || {
                processors::status::stage::rebuild(&kafka, capacity)
            })
            .await??;
            let consumer = config
                .kafka
                .consumer(role, &[topics::WHATSAPP_EVENTS, topics::OUTBOUND_RESULTS])?;
            let stage = processors::status::stage::StatusStage::new(tracker, publisher.clone());
            let dead_letters = DeadLetters::new(publisher.clone(), "process.status");
            let result = consume::run(
                role,
                consumer,
                stage,
                dead_letters,
                config.sinks.batch.clone(),
                shutdown,
            )
            .await;
            publisher.flush(Duration::from_secs(5));
            result
        }
        ProcessorName::Router => {
            let router = config.processors.router.clone();
            let batch = config.sinks.batch.clone();
            processors::router::stage::run(&config.kafka, router, batch, shutdown).await
        }
        ProcessorName::Notifier => {
            let notifier = config.processors.notifier.clone();
            let batch = config.sinks.batch.clone();
            processors::notifier::stage::run(&config.kafka, notifier, batch, shutdown).await
        }
    }
}

/// Runs the API.
pub async fn api(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::fail_closed::refuse_public_without_secrets(
        "the API",
        &config.api.listen,
        &crate::fail_closed::missing_api_secrets(config),
    )?;
    let publisher = config.kafka.publisher("api").await?;
    let client = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose()).await?;
    let check = "api.mongodb";
    observe::global()
        .readiness
        .set_not_ready(check, "not probed yet");
    tokio::spawn({
        let (db, shutdown) = (client.database("admin"), shutdown.clone());
        async move {
            observe::probe(check, PROBE_EVERY, shutdown, || async {
                let ping = db.run_command(mongodb::bson::doc! { "ping": 1 });
                match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err(format!("no answer to ping within {PROBE_TIMEOUT:?}")),
                }
            })
            .await
        }
    });
    let deps = api::Deps {
        config: config.api.clone(),
        db: client.database(&config.sinks.mongo.database),
        publisher: publisher.clone(),
        mqtt: config.mqtt.clone(),
        s3: config.s3.clone(),
        clickhouse: Some(sinks::clickhouse::client(&config.sinks.clickhouse)),
        sealer: runtime::seal::Sealer::from_config(&config.sealing)?,
    };
    let result = api::serve(deps, shutdown).await;
    publisher.flush(Duration::from_secs(5));
    result
}

/// Every role in one process. If one fails, the others are shut down too.
pub async fn all(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.topics.apply_on_start {
        apply_topics(&config).await?;
    }
    let mut roles = JoinSet::new();
    let spawn = |roles: &mut JoinSet<(String, anyhow::Result<()>)>, name: String, fut| {
        roles.spawn(async move { (name, fut.await) });
    };
    spawn(
        &mut roles,
        "ingest".into(),
        boxed({
            let (c, s) = (config.clone(), shutdown.clone());
            async move { ingest(&c, s).await }
        }),
    );
    spawn(
        &mut roles,
        "api".into(),
        boxed({
            let (c, s) = (config.clone(), shutdown.clone());
            async move { api(&c, s).await }
        }),
    );
    for name in ProcessorName::ALL {
        let (c, s) = (config.clone(), shutdown.clone());
        spawn(
            &mut roles,
            name.role(),
            boxed(async move { process(&c, name, s).await }),
        );
    }
    for name in SinkName::ALL {
        let (c, s) = (config.clone(), shutdown.clone());
        spawn(
            &mut roles,
            name.role(),
            boxed(async move { sink(&c, name, s).await }),
        );
    }
    let mut first_error = None;
    while let Some(joined) = roles.join_next().await {
        let (name, result) = joined.context("a role panicked")?;
        match result {
            Ok(()) => tracing::info!(role = %name, "role stopped"),
            Err(err) => {
                tracing::error!(role = %name, error = %format!("{err:#}"), "role failed; stopping the others");
                shutdown.cancel();
                first_error.get_or_insert(err.context(format!("role {name} failed")));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

type BoxedRole = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

fn boxed(fut: impl Future<Output = anyhow::Result<()>> + Send + 'static) -> BoxedRole {
    Box::pin(fut)
}

/// Applies `topics.yaml` and logs what it did.
pub async fn apply_topics(
    config: &Config,
) -> anyhow::Result<Vec<(String, crate::topics::Outcome)>> {
    let contract = crate::topics::contract()?;
    let outcomes =
        crate::topics::apply(&config.kafka, &contract, config.topics.replication_factor).await?;
    for (topic, outcome) in &outcomes {
        tracing::info!(%topic, ?outcome, "topic");
    }
    Ok(outcomes)
}

/// How often ingest's Kafka and the API's MongoDB are probed for readiness, and how
/// long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A consumer role is not ready until its group assigns it partitions (the
/// consumer context flips the check then); until then it is "starting", which also
/// covers rebuilding state before the consumer exists.
fn starting(role: &str) {
    observe::global()
        .readiness
        .set_not_ready(&RebalanceLog::readiness_check(role), "starting");
}

/// Retries `connect` until it succeeds or shutdown (a store that is down at start
/// delays its sink, it does not crash the process). Meanwhile readiness check
/// `{role}.{what}` says why the role is not ready.
async fn until_ready<T, F, Fut>(
    role: &str,
    what: &str,
    shutdown: &CancellationToken,
    mut connect: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let readiness = &observe::global().readiness;
    let check = format!("{role}.{what}");
    readiness.set_not_ready(&check, "connecting");
    let value = RetryPolicy::default()
        .until_ok(&check, shutdown, || {
            let attempt = connect();
            let check = &check;
            async move {
                attempt.await.inspect_err(|err| {
                    readiness.set_not_ready(check, format!("{err:#}"));
                })
            }
        })
        .await?;
    readiness.set_ready(&check);
    Some(value)
}

/// The Graph API client of a role, calling with each number's own token from the
/// directory (followed live in the background until `shutdown`).
async fn graph_client(
    config: &Config,
    role: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<sinks::graph::GraphClient> {
    let (directory, _follower) = runtime::directory::follow(
        &config.kafka,
        Vec::new(),
        &format!("{role}-directory"),
        shutdown.clone(),
    )
    .await?;
    let sealer = runtime::seal::Sealer::from_config(&config.sealing)?;
    Ok(sinks::graph::GraphClient::new(config.graph.clone())?.with_directory(directory, sealer))
}
