//! `coexist chaos`: a steady stream of signed webhooks while every role in the
//! traffic's path is SIGKILLed and restarted in turn, and MongoDB and ClickHouse are
//! restarted; then what was sent is compared with what MongoDB, ClickHouse and an
//! MQTT subscriber hold. Each role runs as a process of its own (`coexist ingest`,
//! `coexist process router`, ...), with the run's own org, numbers, consumer groups
//! and databases, so a run never mixes with another's data.
//!
//! The decisions are pure: [`traffic`] (what item `i` sends and must leave behind),
//! [`faults`] (what is hit, when) and [`tally`] (lost and duplicated per store).

pub mod faults;
pub mod tally;
pub mod traffic;

use events::clock::now_ms;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Serialize;
use store::inbox::{
    COMMAND_RESULTS, CONVERSATIONS, CommandResult, Conversation, MESSAGE_STATUSES, MESSAGES,
    Message, MessageStatus,
};
use tokio::process::{Child, Command};

use crate::Config;
use faults::{Fault, ROLES, Role};
use tally::Tally;
use traffic::{Expected, Traffic};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long the stream runs; the faults are spread over it.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Items per second. Each is a customer's message; every 4th also carries a
    /// Business-app reply and its three statuses (8 webhooks per 4 items).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Business numbers the traffic is spread over.
    #[arg(long, default_value_t = 3)]
    pub numbers: usize,
    /// Customers per number.
    #[arg(long, default_value_t = 8)]
    pub contacts: usize,
    /// How long a killed role stays down before it is started again.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub down: Duration,
    /// How long, after the stream, every store gets to hold everything (the run goes
    /// on as soon as they do; MongoDB's Python stand-in can take minutes after its
    /// restart to catch up).
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The script that restarts MongoDB and ClickHouse (`<script> restart <server>`).
    #[arg(long, default_value = "scripts/stack")]
    pub stack_script: PathBuf,
    /// Kill roles only; leave the stores alone (a stack that is not ours).
    #[arg(long)]
    pub no_store_restarts: bool,
    /// The short form CI runs: 40 s at 15 items/s, stores restarted too.
    #[arg(long)]
    pub short: bool,
    /// Where the JSON report goes (default: target/chaos/chaos-<run>.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl ChaosArgs {
    fn effective(mut self) -> Self {
        if self.short {
            self.duration = Duration::from_secs(40);
            self.rate = 15.0;
        }
        self
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub items: u64,
    pub webhooks: u64,
    /// Webhook POSTs that were refused or unanswered and sent again, as Meta does.
    pub webhook_retries: u64,
    pub faults: Vec<FaultOutcome>,
    pub stores: Vec<Tally>,
    /// MQTT copies that reached the subscriber more than once, counted apart: QoS 1
    /// is at-least-once, and each carries its event id for devices to drop repeats.
    pub mqtt_redelivered_copies: usize,
    /// Seconds from the stream's end until every store held everything.
    pub settled_after_s: f64,
    pub roles_that_exited_by_themselves: Vec<String>,
}

impl Report {
    /// No store lost or duplicated anything and no role died on its own.
    pub fn clean(&self) -> bool {
        self.stores.iter().all(Tally::clean) && self.roles_that_exited_by_themselves.is_empty()
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut out = format!(
            "chaos run {}: {} items in {} webhooks ({} retried)\n\nfaults:\n",
            self.run, self.items, self.webhooks, self.webhook_retries
        );
        for f in &self.faults {
            out.push_str(&format!(
                "  {:>6.1} s  {:<26} back after {:.1} s\n",
                f.at_s, f.fault, f.recovered_after_s
            ));
        }
        out.push_str(&format!(
            "\n{:<40} {:>9} {:>9} {:>6} {:>11}\n",
            "store", "expected", "present", "lost", "duplicated"
        ));
        for t in &self.stores {
            out.push_str(&format!(
                "{:<40} {:>9} {:>9} {:>6} {:>11}\n",
                t.store, t.expected, t.present, t.lost, t.duplicated
            ));
            if !t.lost_sample.is_empty() {
                out.push_str(&format!("    lost e.g. {:?}\n", t.lost_sample));
            }
            if !t.duplicated_sample.is_empty() {
                out.push_str(&format!("    duplicated e.g. {:?}\n", t.duplicated_sample));
            }
        }
        out.push_str(&format!(
            "\nMQTT copies redelivered on the wire (same event id; devices drop them): {}\n",
            self.mqtt_redelivered_copies
        ));
        out.push_str(&format!(
            "every store complete {:.1} s after the stream ended\n",
            self.settled_after_s
        ));
        if !self.roles_that_exited_by_themselves.is_empty() {
            out.push_str(&format!(
                "roles that exited without being killed: {:?}\n",
                self.roles_that_exited_by_themselves
            ));
        }
        out.push_str(if self.clean() {
            "RESULT: 0 lost, 0 duplicated in every store\n"
        } else {
            "RESULT: FAILED\n"
        });
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    pub fault: String,
    /// When it started, from the stream's start (a fault waits for the previous
    /// one's recovery, so it may start after its slot).
    pub at_s: f64,
    /// From the fault until the role's /readyz answered 200 again (for a store: the
    /// restart, then its sink's /readyz).
    pub recovered_after_s: f64,
}

/// Runs the whole thing and returns its report; the JSON file is written too.
pub async fn run(config: &Config, args: ChaosArgs) -> anyhow::Result<Report> {
    let args = args.effective();
    let setup = Setup::new(config, &args).await?;
    crate::roles::apply_topics(&setup.config).await?;
    setup.agents_online().await?;
    let mqtt = MqttTally::subscribe(&setup).await?;
    let mut roles = Roles::start(&setup).await?;
    let outcome = drive(&setup, &args, &mut roles, &mqtt).await;
    // The tally needs the Graph API stand-in, one of the processes.
    let stores = match &outcome {
        Ok((sent, _, _)) => setup.tally(&sent.expected, &mqtt).await,
        Err(_) => Ok(Vec::new()),
    };
    let stopping = Instant::now();
    let exited = roles.stop_all().await;
    eprintln!("roles stopped in {:.1} s", stopping.elapsed().as_secs_f64());
    let (traffic_report, faults, settled_after) = outcome?;
    let stores = stores?;
    let report = Report {
        run: setup.run.clone(),
        items: traffic_report.items,
        webhooks: traffic_report.webhooks,
        webhook_retries: traffic_report.retries,
        faults,
        stores,
        mqtt_redelivered_copies: mqtt.redelivered(),
        settled_after_s: settled_after.as_secs_f64(),
        roles_that_exited_by_themselves: exited,
    };
    let path = args
        .json
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/chaos-{}.json", setup.run)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("report: {}", path.display());
    setup.clean_up().await;
    Ok(report)
}

/// The stream and the faults side by side, then waiting for the stores.
async fn drive(
    setup: &Setup,
    args: &ChaosArgs,
    roles: &mut Roles,
    mqtt: &MqttTally,
) -> anyhow::Result<(Sent, Vec<FaultOutcome>, Duration)> {
    // Warm-up: one message on every number everywhere means every role has joined,
    // caught up, and committed a position on every partition the traffic uses. A
    // round a late-joining group skipped (it starts at the end) is followed by another.
    let warming = Instant::now();
    let mut round = 0;
    loop {
        let warm_up = setup.warm_up_round(round).await?;
        let limit = Duration::from_secs(15);
        if setup.wait_complete(&warm_up, mqtt, limit).await.is_ok() {
            break;
        }
        anyhow::ensure!(
            warming.elapsed() < Duration::from_secs(240),
            "the pipeline never handled a warm-up round (logs: {})",
            setup.dir.display()
        );
        round += 1;
    }
    eprintln!(
        "every role up and caught up after {:.1} s",
        warming.elapsed().as_secs_f64()
    );

    let progress = indicatif::ProgressBar::new(args.duration.as_secs());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let stream = {
        let setup = setup.clone();
        let (rate, duration) = (args.rate, args.duration);
        let progress = progress.clone();
        tokio::spawn(async move { setup.stream(rate, duration, progress).await })
    };
    let mut plan = faults::every_fault();
    if args.no_store_restarts {
        plan.retain(|f| !matches!(f, Fault::RestartStore(_)));
    }
    let mut outcomes = Vec::new();
    for (at, fault) in faults::schedule(plan, args.duration) {
        tokio::time::sleep_until((started + at).into()).await;
        progress.set_message(fault.describe());
        let began = Instant::now();
        match &fault {
            Fault::Kill(role) => roles.kill_and_restart(setup, role, args.down).await?,
            Fault::RestartStore(store) => {
                restart_store(&args.stack_script, store).await?;
                let sink = if *store == "mongo" {
                    "sink-mongo"
                } else {
                    "sink-clickhouse"
                };
                roles.until_ready(setup, sink).await?;
            }
        }
        outcomes.push(FaultOutcome {
            fault: fault.describe(),
            at_s: began.duration_since(started).as_secs_f64(),
            recovered_after_s: began.elapsed().as_secs_f64(),
        });
    }
    let sent = stream.await.context("the stream task")??;
    progress.finish_with_message(format!("{} items sent; waiting for the stores", sent.items));
    let ended = Instant::now();
    // Complete, or the tally says what is missing.
    let _ = setup.wait_complete(&sent.expected, mqtt, args.settle).await;
    Ok((sent, outcomes, ended.elapsed()))
}

async fn restart_store(script: &Path, store: &str) -> anyhow::Result<()> {
    let status = Command::new(script)
        .args(["restart", store])
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {} restart {store}", script.display()))?;
    anyhow::ensure!(
        status.success(),
        "{} restart {store} failed",
        script.display()
    );
    Ok(())
}

/// What the stream sent.
#[derive(Debug, Default)]
struct Sent {
    items: u64,
    webhooks: u64,
    retries: u64,
    expected: Expected,
}

/// The run's identity and the configuration every role process gets.
#[derive(Clone)]
struct Setup {
    run: String,
    org: String,
    config: Config,
    traffic: Traffic,
    dir: PathBuf,
    config_path: PathBuf,
    secret: String,
    webhook_url: String,
    /// The Graph API stand-in (`coexist simulate serve`), never killed.
    graph_url: String,
    http: reqwest::Client,
    publisher: runtime::Publisher,
}

const AGENTS: usize = 4;

impl Setup {
    async fn new(base: &Config, args: &ChaosArgs) -> anyhow::Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let run = format!("{}{:06}", std::process::id() % 1000, nanos % 1_000_000);
        let org = format!("chaos-{run}");
        let mut config = base.clone();
        let secret = base
            .ingest
            .app_secrets
            .first()
            .map(|s| s.expose().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("chaos-secret-{run}"));
        config.ingest.app_secrets = vec![runtime::Secret::new(&secret)];
        config.ingest.listen = format!("127.0.0.1:{}", crate::child::free_port()?);
        let graph_url = format!("http://127.0.0.1:{}", crate::child::free_port()?);
        config.graph.base_url = graph_url.clone();
        config.graph.access_token = runtime::Secret::new(format!("chaos-token-{run}"));
        config.graph.only_listed_numbers = false;
        config.simulate.graph.webhook_url = String::new(); // ingest's, as configured above
        config.ingest.presence.enabled = false;
        let numbers: Vec<String> = (0..args.numbers.max(1))
            .map(|k| format!("7{run}{k}"))
            .collect();
        config.ingest.numbers = numbers
            .iter()
            .map(|n| ingest::config::NumberOwner {
                phone_number_id: n.clone(),
                org: org.clone(),
            })
            .collect();
        config.kafka.client_id = format!("chaos-{run}");
        // Fresh groups read from this run's start, not the topics' backlog (earlier
        // runs, other tests). Not `latest`: a role killed before its first commit on
        // a partition would restart at that partition's end and skip what came in
        // meanwhile (a run lost 50 command results that way).
        config.kafka.new_group_start = now_ms().to_string();
        config.topics.apply_on_start = false;
        let db = format!("chaos_{run}");
        config.sinks.mongo.database = db.clone();
        config.sinks.clickhouse.database = db;
        config.sinks.mqtt.client_id = format!("chaos-sink-{run}");
        config.mqtt.topic_prefix = format!("coexist/chaos{run}");
        config.processors.router.router.orgs.insert(
            org.clone(),
            (0..AGENTS)
                .map(|a| processors::router::AgentConfig {
                    agent_id: format!("agent{a}"),
                    capacity: 10_000,
                })
                .collect(),
        );
        let dir = PathBuf::from(format!("target/chaos/{run}"));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("coexist.toml");
        crate::child::write_config(&config_path, &config)?;
        let webhook_url = format!("http://{}/webhooks/whatsapp", config.ingest.listen);
        Ok(Self {
            traffic: Traffic {
                run: run.clone(),
                org: org.clone(),
                numbers,
                contacts: args.contacts,
                reply_every: 4,
                send_every: 4,
            },
            publisher: config.kafka.publisher("chaos").await?,
            graph_url,
            run,
            org,
            config,
            dir,
            config_path,
            secret,
            webhook_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// Every agent online (as the presence bridge would say), so conversations are
    /// assigned rather than queued.
    async fn agents_online(&self) -> anyhow::Result<()> {
        let publisher = &self.publisher;
        for a in 0..AGENTS {
            let presence = events::inbox::PresenceEvent {
                org: self.org.clone(),
                agent_id: format!("agent{a}"),
                device_id: "chaos".into(),
                state: events::inbox::PresenceState::Online,
                conversation_id: None,
                at_ms: now_ms(),
            };
            publisher
                .send_json(
                    events::topics::AGENTS_PRESENCE,
                    &self.org,
                    &presence,
                    vec![],
                )
                .await?;
        }
        Ok(())
    }

    /// One message on every number, with wamids of its own, and what it leaves.
    async fn warm_up_round(&self, round: u32) -> anyhow::Result<Expected> {
        let warm_up = Traffic {
            run: format!("{}.warmup{round}", self.run),
            reply_every: 0,
            send_every: 0,
            ..self.traffic.clone()
        };
        let mut sent = Sent::default();
        for i in 0..warm_up.numbers.len() as u64 {
            self.send_item(&warm_up, i, &mut sent).await?;
        }
        Ok(sent.expected)
    }

    /// Sends item `i`'s webhooks in order, each until ingest answers 200 (as Meta
    /// retries), and adds them to `sent`.
    async fn send_item(&self, traffic: &Traffic, i: u64, sent: &mut Sent) -> anyhow::Result<()> {
        let (hooks, expected) = traffic.item(i, now_ms() as u64 / 1000);
        for hook in hooks {
            let body = hook.body.to_string();
            let mut delay = Duration::from_millis(50);
            loop {
                let signature = ingest::signature::sign(body.as_bytes(), &self.secret);
                let answer = crate::simulate::post_webhook(
                    &self.http,
                    &self.webhook_url,
                    signature,
                    body.clone(),
                )
                .await;
                if answer.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                sent.retries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            sent.webhooks += 1;
        }
        sent.items += 1;
        sent.expected.extend(expected);
        Ok(())
    }

    /// Items at `rate` per second for `duration`, on an open-loop schedule: a slow
    /// answer (ingest down) delays the items behind it, which then catch up.
    async fn stream(
        &self,
        rate: f64,
        duration: Duration,
        progress: indicatif::ProgressBar,
    ) -> anyhow::Result<Sent> {
        let started = Instant::now();
        let mut sent = Sent::default();
        let mut i = 0u64;
        loop {
            let due = started + Duration::from_secs_f64(i as f64 / rate.max(0.1));
            if due.duration_since(started) >= duration {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            self.send_item(&self.traffic, i, &mut sent).await?;
            if let Some(command) = self.traffic.command(i, now_ms()) {
                let topic = events::topics::MESSAGES_OUTBOUND;
                self.publisher
                    .send_json(topic, &command.phone_number_id, &command, vec![])
                    .await?;
            }
            progress.set_position(started.elapsed().as_secs().min(duration.as_secs()));
            i += 1;
        }
        Ok(sent)
    }

    async fn mongo(&self) -> anyhow::Result<mongodb::Database> {
        let client = mongodb::Client::with_uri_str(self.config.sinks.mongo.uri.expose()).await?;
        Ok(client.database(&self.config.sinks.mongo.database))
    }

    /// Polls until every store holds everything expected exactly once, or `limit`.
    async fn wait_complete(
        &self,
        expected: &Expected,
        mqtt: &MqttTally,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut reported = started;
        loop {
            match self.tally(expected, mqtt).await {
                Ok(stores) if stores.iter().all(|t| t.lost == 0) => return Ok(()),
                Ok(stores) if reported.elapsed() > Duration::from_secs(10) => {
                    reported = Instant::now();
                    let missing: Vec<String> = stores
                        .iter()
                        .filter(|t| t.lost > 0)
                        .map(|t| format!("{}: {} missing", t.store, t.lost))
                        .collect();
                    eprintln!(
                        "after {:.0} s still waiting for {}",
                        started.elapsed().as_secs_f64(),
                        missing.join(", ")
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %format!("{err:#}"), "stores not answering yet")
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "not complete after {limit:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Each store's account of `expected`.
    async fn tally(&self, expected: &Expected, mqtt: &MqttTally) -> anyhow::Result<Vec<Tally>> {
        let db = self.mongo().await?;
        let org = &self.org;
        let mut stores = vec![
            tally::tally(
                "mongodb messages",
                &expected.messages,
                &mongo_counts(&db, MESSAGES.name, doc! { Message::ORG: org }, "$id").await?,
            ),
            tally::tally(
                "mongodb message_statuses",
                &expected.statuses,
                &mongo_counts(
                    &db,
                    MESSAGE_STATUSES.name,
                    doc! { MessageStatus::ORG: org },
                    doc! { "$concat": ["$wamid", ":", "$status"] },
                )
                .await?,
            ),
            tally::tally(
                "mongodb replies at status read",
                &expected.replies,
                &mongo_counts(
                    &db,
                    MESSAGES.name,
                    doc! { Message::ORG: org, Message::STATUS: "read" },
                    "$id",
                )
                .await?,
            ),
            tally::tally(
                "mongodb conversations",
                &expected.conversations,
                &mongo_counts(
                    &db,
                    CONVERSATIONS.name,
                    doc! { Conversation::ORG: org },
                    "$id",
                )
                .await?,
            ),
        ];
        let ch = self.config.sinks.clickhouse.client();
        let by_org = |sql: &str| ch.query(sql).bind(org.as_str());
        stores.push(tally::tally(
            "clickhouse message_events",
            &expected.event_ids(),
            &clickhouse_counts(by_org(
                "SELECT event_id AS key, count() AS copies FROM message_events \
                 WHERE org = ? GROUP BY event_id",
            ))
            .await?,
        ));
        stores.push(tally::tally(
            "clickhouse status_transitions",
            &expected.statuses,
            &clickhouse_counts(by_org(
                "SELECT concat(wamid, ':', to_status) AS key, count() AS copies \
                 FROM status_transitions WHERE org = ? GROUP BY key",
            ))
            .await?,
        ));
        stores.push(tally::tally(
            "clickhouse assignments (assigned once)",
            &expected.conversations,
            &clickhouse_counts(by_org(
                "SELECT conversation_id AS key, count() AS copies FROM assignments \
                 WHERE org = ? AND state = 'assigned' GROUP BY conversation_id",
            ))
            .await?,
        ));
        stores.push(tally::tally(
            "mongodb command_results (sent)",
            &expected.commands,
            &mongo_counts(
                &db,
                COMMAND_RESULTS.name,
                doc! { CommandResult::ORG: org, CommandResult::KIND: "send", CommandResult::ACCEPTED: true },
                "$command_id",
            )
            .await?,
        ));
        stores.push(tally::tally(
            "graph api calls (simulator)",
            &expected.commands,
            &self.graph_sends().await?,
        ));
        stores.push(tally::tally(
            "mqtt as devices see it (by event id)",
            &expected.event_ids(),
            &mqtt.by_event_id(),
        ));
        Ok(stores)
    }

    /// Calls the Graph API stand-in received, by command id (which the whatsapp sink
    /// puts in `biz_opaque_callback_data`).
    async fn graph_sends(&self) -> anyhow::Result<HashMap<String, u64>> {
        let sent: Vec<crate::simulate::graph::SentRecord> = self
            .http
            .get(format!("{}/_sim/graph/sent", self.graph_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut counts = HashMap::new();
        for record in sent {
            if let Some(command) = record.biz_opaque_callback_data {
                *counts.entry(command).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Drops the run's databases; the logs and config stay in the run's folder until
    /// the run was clean.
    async fn clean_up(&self) {
        if let Ok(db) = self.mongo().await {
            let _ = db.drop().await;
        }
        let ch = self.config.sinks.clickhouse.client();
        let _ = ch
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                self.config.sinks.clickhouse.database
            ))
            .execute()
            .await;
    }
}

/// Copies per `key` among the collection's documents matching `filter`.
async fn mongo_counts(
    db: &mongodb::Database,
    collection: &str,
    filter: Document,
    key: impl Into<mongodb::bson::Bson>,
) -> anyhow::Result<HashMap<String, u64>> {
    let pipeline = vec![
        doc! { "$match": filter },
        doc! { "$group": { "_id": key.into(), "copies": { "$sum": 1 } } },
    ];
    let mut cursor = db
        .collection::<Document>(collection)
        .aggregate(pipeline)
        .await?;
    let mut counts = HashMap::new();
    while let Some(row) = cursor.try_next().await? {
        if let Ok(key) = row.get_str("_id") {
            let copies = row
                .get_i32("copies")
                .map(i64::from)
                .or_else(|_| row.get_i64("copies"))
                .unwrap_or(0);
            counts.insert(key.to_string(), copies.max(0) as u64);
        }
    }
    Ok(counts)
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Counted {
    key: String,
    copies: u64,
}

/// Rows per key, physically (no FINAL): a row inserted twice counts twice.
async fn clickhouse_counts(
    query: clickhouse::query::Query,
) -> anyhow::Result<HashMap<String, u64>> {
    Ok(query
        .fetch_all::<Counted>()
        .await?
        .into_iter()
        .map(|c| (c.key, c.copies))
        .collect())
}

/// Event ids received on the run's conversation topics, by a persistent-session
/// subscriber that outlives every fault.
struct MqttTally {
    copies: Arc<Mutex<HashMap<String, u64>>>,
}

impl MqttTally {
    async fn subscribe(setup: &Setup) -> anyhow::Result<Self> {
        let config = &setup.config;
        let options = config.mqtt.options(&format!("chaos-watch-{}", setup.run));
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        let filter = format!("{}/{}/conversations/#", config.mqtt.topic_prefix, setup.org);
        client.subscribe(&filter, QoS::AtLeastOnce).await?;
        let copies = Arc::new(Mutex::new(HashMap::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let sink = copies.clone();
        tokio::spawn(async move {
            let _client = client; // keeps the request channel open
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let id = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_string));
                        if let (Some(id), Ok(mut copies)) = (id, sink.lock()) {
                            *copies.entry(id).or_insert(0) += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .context("MQTT subscription not acknowledged in 10 s")??;
        Ok(Self { copies })
    }

    /// What a device holds: every message carries its event id, and QoS 1 obliges
    /// a device to drop a repeat (the broker may redeliver one after any reconnect).
    /// A Kafka → MQTT hop cannot be exactly-once on the wire: MQTT has no upsert and
    /// no transaction, so a sink killed between the broker's PUBACK and its offset
    /// commit publishes the batch again on restart. Those copies are counted apart.
    fn by_event_id(&self) -> HashMap<String, u64> {
        self.copies
            .lock()
            .map(|c| c.keys().map(|id| (id.clone(), 1)).collect())
            .unwrap_or_default()
    }

    /// Copies beyond the first, on the wire.
    fn redelivered(&self) -> usize {
        self.copies
            .lock()
            .map(|c| c.values().map(|n| n.saturating_sub(1) as usize).sum())
            .unwrap_or_default()
    }
}

/// The role processes, by name, and where each serves /readyz.
struct Roles {
    children: HashMap<&'static str, Child>,
    metrics: HashMap<&'static str, String>,
}

impl Roles {
    async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let mut children = HashMap::new();
        let listen = setup.graph_url.trim_start_matches("http://").to_string();
        let simulator = Role {
            name: "graph-simulator",
            args: &["simulate", "serve"],
        };
        children.insert(
            simulator.name,
            spawn(setup, &simulator, "", &["--listen", &listen])?,
        );
        let sent = format!("{}/_sim/graph/sent", setup.graph_url);
        wait_http(&setup.http, &sent, Duration::from_secs(60)).await?;
        let mut metrics = HashMap::new();
        for role in ROLES {
            let listen = format!("127.0.0.1:{}", crate::child::free_port()?);
            children.insert(role.name, spawn(setup, role, &listen, &[])?);
            metrics.insert(role.name, listen);
        }
        let roles = Self { children, metrics };
        for role in ROLES {
            roles.until_ready(setup, role.name).await?;
        }
        Ok(roles)
    }

    /// Waits for the role's /readyz: its consumer has partitions, its store answers.
    async fn until_ready(&self, setup: &Setup, name: &str) -> anyhow::Result<()> {
        let Some(listen) = self.metrics.get(name) else {
            return Ok(());
        };
        let readyz = format!("http://{listen}/readyz");
        wait_http(&setup.http, &readyz, Duration::from_secs(120))
            .await
            .with_context(|| format!("{name} never became ready"))
    }

    async fn kill_and_restart(
        &mut self,
        setup: &Setup,
        role: &Role,
        down: Duration,
    ) -> anyhow::Result<()> {
        if let Some(mut child) = self.children.remove(role.name) {
            child.start_kill()?; // SIGKILL: no shutdown path runs
            child.wait().await?;
        }
        tokio::time::sleep(down).await;
        let listen = self.metrics.get(role.name).cloned().unwrap_or_default();
        self.children
            .insert(role.name, spawn(setup, role, &listen, &[])?);
        self.until_ready(setup, role.name).await
    }

    /// Stops every role (SIGTERM, then SIGKILL after 20 s) and names those that had
    /// already exited without being killed.
    async fn stop_all(self) -> Vec<String> {
        let mut exited = Vec::new();
        for (name, mut child) in self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push(format!("{name} ({status})"));
                continue;
            }
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        exited.sort();
        exited
    }
}

/// `coexist --config <run's config> --metrics-listen <addr> <role>`, logging to
/// `<run dir>/<role>.log`.
/// The parent's `COEXIST_*` variables are not passed on: the file already holds
/// their effect, and a variable would override the run's own settings.
fn spawn(setup: &Setup, role: &Role, metrics: &str, extra: &[&str]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join(format!("{}.log", role.name)))?;
    let mut command = Command::from(crate::child::command(&setup.config_path)?);
    command
        .arg("--metrics-listen")
        .arg(metrics)
        .args(role.args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("starting {}", role.name))
}

async fn wait_http(http: &reqwest::Client, url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} not answering after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
