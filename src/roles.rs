//! What each subcommand runs: a dispatcher. Every sink and processor wires itself
//! in its own folder (`sinks/src/<name>/run.rs`, `processors/src/<name>/stage.rs`):
//! its input topics, readiness checks and state rebuilds, from a [`RoleContext`]
//! and its own config section. Adding a sink is one folder and one line here.
//!
//! `all` runs every role in one process, sharing one shutdown signal; the separate
//! subcommands run one role each, for scaling out.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use runtime::{RoleContext, Shared, observe};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The long-running roles, as `coexist` subcommands (flattened into the CLI): one
/// process each when scaled out, all of them in `coexist all`. docker-compose has a
/// service per value of this type (tests/contract.rs derives the list from here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Role {
    /// The webhook receiver (and the MQTT presence bridge).
    Ingest,
    /// A processor (router, status, notifier).
    Process { name: ProcessorName },
    /// A sink.
    Sink { name: SinkName },
    /// The REST API.
    Api,
}

impl Role {
    /// `ingest`, `api`, `process-router`, `sink-mongo`: the role's name in logs,
    /// consumer groups and docker-compose.
    pub fn name(self) -> String {
        match self {
            Role::Ingest => ingest::webhook::ROLE.into(),
            Role::Api => "api".into(),
            Role::Process { name } => name.role(),
            Role::Sink { name } => name.role(),
        }
    }

    /// The config sections the role reads besides `[log]` and `[metrics]`, which
    /// every process reads: what a deployment must point at its own servers and
    /// secrets (`crate::deploy::required_keys`). Kept beside [`run`], which hands
    /// exactly these to the role.
    pub fn sections(self) -> &'static [&'static str] {
        match self {
            Role::Ingest => &["kafka", "mqtt", "sealing", "ingest"],
            Role::Api => &[
                "kafka",
                "mqtt",
                "s3",
                "sealing",
                "api",
                "sinks.mongo",
                "sinks.clickhouse",
            ],
            Role::Process { name } => match name {
                ProcessorName::Router => &["kafka", "processors.router"],
                ProcessorName::Status => &["kafka", "processors.status"],
                ProcessorName::Notifier => &["kafka", "processors.notifier"],
            },
            Role::Sink { name } => match name {
                SinkName::Mongo => &["kafka", "sinks.batch", "sinks.mongo"],
                SinkName::Clickhouse => &["kafka", "sinks.batch", "sinks.clickhouse"],
                SinkName::Mqtt => &["kafka", "sinks.batch", "mqtt", "sinks.mqtt"],
                SinkName::Whatsapp => &[
                    "kafka",
                    "sinks.batch",
                    "s3",
                    "sealing",
                    "graph",
                    "sinks.whatsapp",
                ],
                SinkName::Media => &["kafka", "sinks.batch", "s3", "sealing", "graph"],
                SinkName::Expo => &["kafka", "sinks.batch", "sinks.mongo", "sinks.expo"],
            },
        }
    }
}

/// Runs one role.
pub async fn run(role: Role, config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match role {
        Role::Ingest => ingest(config, shutdown).await,
        Role::Api => api(config, shutdown).await,
        Role::Process { name } => process(config, name, shutdown).await,
        Role::Sink { name } => sink(config, name, shutdown).await,
    }
}

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
    ingest_in(config, &Shared::default(), shutdown).await
}

async fn ingest_in(
    config: &Config,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::fail_closed::refuse_public_without_secrets(
        "ingest",
        &config.ingest.listen,
        &crate::fail_closed::missing_ingest_secrets(config),
    )?;
    let mut ctx = context(config, ingest::webhook::ROLE.into(), shutdown);
    ctx.shared = shared.clone();
    ingest::run(&ctx, &config.ingest).await
}

/// The context every component's `run` gets: the role's name and the shared
/// connections' settings.
pub fn context(config: &Config, role: String, shutdown: CancellationToken) -> RoleContext {
    RoleContext {
        role,
        kafka: config.kafka.clone(),
        batch: config.sinks.batch.clone(),
        mqtt: config.mqtt.clone(),
        s3: config.s3.clone(),
        sealing: config.sealing.clone(),
        shutdown,
        shared: Shared::default(),
    }
}

/// Runs one sink: each wires itself (topics, readiness checks, rebuilds) in its
/// own folder.
pub async fn sink(
    config: &Config,
    name: SinkName,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    sink_in(config, name, &Shared::default(), shutdown).await
}

async fn sink_in(
    config: &Config,
    name: SinkName,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ctx = context(config, name.role(), shutdown);
    ctx.shared = shared.clone();
    ctx.starting();
    let sinks = &config.sinks;
    match name {
        SinkName::Mongo => sinks::mongo::run(&ctx, &sinks.mongo).await,
        SinkName::Clickhouse => sinks::clickhouse::run(&ctx, &sinks.clickhouse).await,
        SinkName::Mqtt => sinks::mqtt::run(&ctx, &sinks.mqtt).await,
        SinkName::Whatsapp => sinks::whatsapp::run(&ctx, &config.graph, &sinks.whatsapp).await,
        SinkName::Media => sinks::media::run(&ctx, &config.graph).await,
        SinkName::Expo => sinks::expo::run(&ctx, &sinks.mongo, &sinks.expo).await,
    }
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

/// Runs one processor, wired in its own folder.
pub async fn process(
    config: &Config,
    name: ProcessorName,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    process_in(config, name, &Shared::default(), shutdown).await
}

async fn process_in(
    config: &Config,
    name: ProcessorName,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ctx = context(config, name.role(), shutdown);
    ctx.shared = shared.clone();
    ctx.starting();
    let processors = &config.processors;
    match name {
        ProcessorName::Status => processors::status::stage::run(&ctx, &processors.status).await,
        ProcessorName::Router => processors::router::stage::run(&ctx, &processors.router).await,
        ProcessorName::Notifier => {
            processors::notifier::stage::run(&ctx, &processors.notifier).await
        }
    }
}

/// Runs the API.
pub async fn api(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    api_in(config, &Shared::default(), shutdown).await
}

async fn api_in(
    config: &Config,
    shared: &Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::fail_closed::refuse_public_without_secrets(
        "the API",
        &config.api.listen,
        &crate::fail_closed::missing_api_secrets(config),
    )?;
    let publisher = match &shared.publisher {
        Some(shared) => shared.clone(),
        None => config.kafka.publisher("api").await?,
    };
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
        clickhouse: Some(config.sinks.clickhouse.client()),
        sealer: runtime::seal::Sealer::from_config(&config.sealing)?,
        graph: api::routes::templates::GraphApi {
            base_url: config.graph.base_url.clone(),
            api_version: config.graph.api_version.clone(),
            access_token: config.graph.access_token.clone(),
            request_timeout_ms: config.graph.request_timeout_ms,
        },
    };
    let result = api::serve(deps, shutdown).await;
    publisher.flush(Duration::from_secs(5));
    result
}

/// Every role in one process, sharing one producer and one directory follower
/// ([`Shared`]). If one fails, the others are shut down too.
pub async fn all(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.topics.apply_on_start {
        apply_topics(&config).await?;
    }
    let shared = Shared::for_process(&config.kafka, shutdown.clone()).await?;
    let mut roles = JoinSet::new();
    let spawn = |roles: &mut JoinSet<(String, anyhow::Result<()>)>, name: String, fut| {
        roles.spawn(async move { (name, fut.await) });
    };
    spawn(
        &mut roles,
        "ingest".into(),
        boxed({
            let (c, h, s) = (config.clone(), shared.clone(), shutdown.clone());
            async move { ingest_in(&c, &h, s).await }
        }),
    );
    spawn(
        &mut roles,
        "api".into(),
        boxed({
            let (c, h, s) = (config.clone(), shared.clone(), shutdown.clone());
            async move { api_in(&c, &h, s).await }
        }),
    );
    for name in ProcessorName::ALL {
        let (c, h, s) = (config.clone(), shared.clone(), shutdown.clone());
        spawn(
            &mut roles,
            name.role(),
            boxed(async move { process_in(&c, name, &h, s).await }),
        );
    }
    for name in SinkName::ALL {
        let (c, h, s) = (config.clone(), shared.clone(), shutdown.clone());
        spawn(
            &mut roles,
            name.role(),
            boxed(async move { sink_in(&c, name, &h, s).await }),
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
    let outcomes = crate::topics::apply(&config.kafka, &contract, &config.topics).await?;
    for (topic, outcome) in &outcomes {
        tracing::info!(%topic, ?outcome, "topic");
    }
    Ok(outcomes)
}

/// How often the API's MongoDB is probed for readiness, and how long a probe may
/// take.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
