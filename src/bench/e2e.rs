//! `coexist bench e2e`: signed inbound webhooks at a steady rate into a running
//! pipeline, timed until each one arrives on its conversation's MQTT topic, next to
//! rdkafka producing and consuming the same payloads at the same rate through the
//! same broker (the floor any Kafka pipeline on this machine stands on).
//!
//! - **Open loop.** Message `i` is due at `start + i / rate` and is sent then, in a
//!   task of its own, whatever happened to the ones before; latency runs from that
//!   due time. A stalled pipeline shows up as latency, not as fewer sends
//!   (no coordinated omission).
//! - **Fresh state per run.** The pipeline it starts (`coexist all` as a child
//!   process, or one child per role) gets consumer groups, MQTT prefix, client ids and
//!   databases of this run only, and new groups start at the end of each partition,
//!   so a backlog left by earlier runs is not in front of this one.
//! - **Ready before the clock starts.** Probe webhooks go out on every business
//!   number until each has come back over MQTT: every partition the run uses is then
//!   assigned and flowing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;

use super::host::{self, StageSummary};
use super::stats::{Summary, index_after};
use crate::Config;
use crate::simulate::{inbound_text, post_webhook};

/// The app secret of the pipeline the bench starts.
const SECRET: &str = "bench-e2e-app-secret";

/// How the pipeline under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `coexist all` process.
    All,
    /// One process per role (`coexist ingest`, `coexist sink mqtt`, ...).
    Roles,
}

#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Webhooks per second, on an open-loop schedule.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to send for.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Business numbers the webhooks are spread over, round robin.
    #[arg(long, default_value_t = 4)]
    pub numbers: usize,
    /// `all`: one `coexist all` child process; `roles`: one child process per role.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    pub mode: Mode,
    /// With `--mode roles`, the roles to start (default: every role `all` runs), e.g.
    /// `ingest,sink-mqtt` for the latency path alone.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Measure a pipeline that is already running: its webhook URL. The bench signs
    /// with the configured first app secret and subscribes under the configured MQTT
    /// prefix; the pipeline's groups should already be at the end of their topics.
    #[arg(long)]
    pub attach: Option<String>,
    /// Where to write the JSON result (default: `$CARGO_TARGET_DIR` or `target`,
    /// then `bench/e2e-<unix seconds>.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// How long to wait, after the last send, for messages still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
    /// Skip the rdkafka baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// With `--mode roles`, how many processes of each consumer role (every role but
    /// ingest and the API) run in its group: 2 measures scaling out.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// How long the pipeline's and the broker's CPU is measured at rest, before the
    /// run (from `/proc`); 0 skips it.
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
}

/// Roles that hold no consumer group, run once whatever `--instances` says.
const SINGLE_ROLES: [&str; 2] = ["ingest", "api"];

/// CPU at rest, in % of one core, over `seconds` before the run.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub seconds: f64,
    /// The process listening on the broker's port, if it is on this machine.
    pub broker_pid: Option<u32>,
    pub broker_cpu_pct: Option<f64>,
    /// Every process of the pipeline together.
    pub coexist_cpu_pct: Option<f64>,
}

/// CPU while the pipeline phase ran (sending, then draining), in % of one core:
/// where two cores went when latency grew.
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    pub seconds: f64,
    pub broker_cpu_pct: Option<f64>,
    /// Every process of the pipeline together.
    pub coexist_cpu_pct: Option<f64>,
    /// The bench itself (its HTTP client, MQTT subscriber and timers).
    pub bench_cpu_pct: Option<f64>,
    /// Everything on the machine (the stores, Mosquitto, the rest) together.
    pub machine_cpu_pct: Option<f64>,
    /// The stores that listen on this machine (`mongodb`, `clickhouse`, `mqtt`, by
    /// the ports the config names): on two cores their work under load is the
    /// pipeline's competition for CPU.
    pub stores_cpu_pct: BTreeMap<String, f64>,
}

/// coexist's latency over the baseline's, both warmed.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Over the whole schedule.
    pub p50: f64,
    pub p99: f64,
    /// Over the last quarter of each (steady state): the headline.
    pub steady_p50: f64,
    pub steady_p99: f64,
}

impl Ratios {
    fn of(e2e: &Phase, baseline: &Phase) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Self {
            p50: ratio(e2e.latency.p50_ms, baseline.latency.p50_ms),
            p99: ratio(e2e.latency.p99_ms, baseline.latency.p99_ms),
            steady_p50: ratio(e2e.last_quarter.p50_ms, baseline.last_quarter.p50_ms),
            steady_p99: ratio(e2e.last_quarter.p99_ms, baseline.last_quarter.p99_ms),
        }
    }
}

/// Every role `coexist all` runs, by the name `--roles` takes.
pub const ALL_ROLES: [&str; 11] = [
    "ingest",
    "api",
    "process-router",
    "process-status",
    "process-notifier",
    "sink-mongo",
    "sink-clickhouse",
    "sink-mqtt",
    "sink-whatsapp",
    "sink-media",
    "sink-expo",
];

/// What one phase (the pipeline, or the baseline) measured.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub sent: usize,
    /// Webhooks answered 2xx; for the baseline, produces acknowledged.
    pub accepted: usize,
    /// Distinct messages that arrived.
    pub received: usize,
    /// Copies beyond the first (QoS 1 allows them; they count once).
    pub duplicates: usize,
    /// Accepted but never arrived within the drain period.
    pub lost: usize,
    /// Arrivals per second, from the first due time to the last arrival.
    pub throughput_per_s: f64,
    /// Due time → arrival.
    pub latency: Summary,
    /// Of the first and the last quarter of the schedule: a lag that grows shows as a
    /// last quarter far above the first.
    pub first_quarter: Summary,
    pub last_quarter: Summary,
    /// From the last due time to the last arrival: what was still queued when the
    /// sending stopped.
    pub drain_ms: f64,
    /// Due time → webhook answered (ingest's produces acknowledged) or, for the
    /// baseline, the produce acknowledged.
    pub ack: Summary,
    /// How far behind its schedule the sender itself fell (the bench's own limit).
    pub max_send_lag_ms: f64,
    /// The p99 of each second of the schedule, in order: a p99 made by one stall
    /// shows as one second far above the others, a busy machine as all of them.
    pub p99_by_second_ms: Vec<f64>,
}

impl Phase {
    /// Keeps up: everything arrived, and what was queued when sending stopped
    /// drained within half a second (a lag that grew would still be draining).
    pub fn keeps_up(&self) -> bool {
        self.lost == 0 && self.received == self.sent && self.drain_ms < 500.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub rate: f64,
    pub seconds: f64,
    pub numbers: usize,
    pub mode: Mode,
    pub roles: Vec<String>,
    pub attach: Option<String>,
    pub instances: usize,
    pub linger_ms: u32,
    pub fetch_wait_max_ms: u32,
    pub background_fetch_wait_max_ms: u32,
    pub batch_max_wait_ms: u64,
}

/// The result file's content.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub commit: Option<String>,
    pub started_at_unix: u64,
    pub params: Params,
    /// 1-, 5- and 15-minute load averages before the run (what else the machine was
    /// doing) and right after the pipeline phase (with the bench's own load).
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub cores: usize,
    pub e2e: Phase,
    /// Warmed like the pipeline (its topic and group have carried records before
    /// the clock starts).
    pub baseline: Option<Phase>,
    pub ratios: Option<Ratios>,
    pub keeps_up: bool,
    /// CPU at rest before the run (none with `--attach` or `--idle-seconds 0`).
    pub idle: Option<Idle>,
    /// CPU during the pipeline phase (none with `--attach`).
    pub busy: Option<Busy>,
    /// Resident memory of the pipeline's processes together, at rest before the run
    /// and right after it (none with `--attach`).
    pub rss_kib_at_rest: Option<u64>,
    pub rss_kib_after: Option<u64>,
    /// Where an inbound message's time goes inside coexist, stage by stage, from
    /// the timestamps its Kafka record carries (the MQTT sink's
    /// `coexist_path_seconds`, scraped before and after the run).
    pub stages: Vec<StageSummary>,
}

/// Runs the bench and writes the JSON result; returns it and the file's path.
pub async fn run(config: Config, args: E2eArgs) -> anyhow::Result<(Report, PathBuf)> {
    anyhow::ensure!(
        args.rate > 0.0 && args.seconds > 0.0,
        "rate and seconds must be > 0"
    );
    let load_before = load_average();
    let started_at_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run = format!("{}{}", std::process::id(), started_at_unix % 100_000);
    let numbers = args.numbers.max(1);
    let count = (args.rate * args.seconds).round().max(1.0) as usize;
    let out = match &args.json {
        Some(path) => path.clone(),
        None => bench_dir().join(format!("e2e-{started_at_unix}.json")),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    // The pipeline under test, and how to reach it.
    let roles = if args.roles.is_empty() {
        ALL_ROLES.iter().map(|r| r.to_string()).collect()
    } else {
        args.roles.clone()
    };
    let (config, url, secret, mut target) = match &args.attach {
        Some(url) => {
            let secret = config
                .ingest
                .app_secrets
                .first()
                .context("ingest.app_secrets is empty: --attach signs with the first one")?
                .expose()
                .to_string();
            (config, url.clone(), secret, None)
        }
        None => {
            let config = pipeline_config(&config, &run)?;
            crate::topics::apply(&config.kafka, &crate::topics::contract()?, &config.topics)
                .await?;
            let log = out.with_extension("log");
            let mut target = Target::start(&config, args.mode, &roles, args.instances, &log)?;
            println!("started {} (log: {})", target.describe(), log.display());
            let url = format!("http://{}/webhooks/whatsapp", config.ingest.listen);
            wait_until_up(
                &format!("http://{}/healthz", config.ingest.listen),
                &mut target,
            )
            .await?;
            (config, url, SECRET.to_string(), Some(target))
        }
    };

    let marker = format!("wamid.e2e.{run}.");
    let probe_marker = format!("{marker}p");
    let numbers_ids: Vec<String> = (0..numbers).map(|n| format!("7{run}{n:02}")).collect();
    let webhook = |i: usize, number: &str, wamid: &str| {
        inbound_text(
            number,
            &format!("1555{:07}", i % 1000),
            "Bench",
            wamid,
            "hello from the e2e bench",
            now_secs(),
        )
        .to_string()
    };
    let bodies: Vec<(String, String)> = (0..count)
        .map(|i| {
            let number = &numbers_ids[i % numbers];
            (number.clone(), webhook(i, number, &format!("{marker}{i}")))
        })
        .collect();

    // The MQTT side: every conversation topic under the prefix.
    let arrivals = Arc::new(Arrivals::new(count));
    let probes = Arc::new(Mutex::new(BTreeSet::new()));
    let filter = format!("{}/+/conversations/+", config.mqtt.topic_prefix);
    let subscriber = subscribe(&config, &filter, &run, {
        let (arrivals, probes, marker, probe_marker) = (
            arrivals.clone(),
            probes.clone(),
            marker.clone(),
            probe_marker.clone(),
        );
        move |payload: &[u8], now: Instant| {
            if let Some(i) = index_after(payload, &marker) {
                arrivals.record(i, now);
            } else if let Some(n) = index_after(payload, &probe_marker) {
                probes.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
            }
        }
    })
    .await?;

    let webhooks = Webhooks {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        url,
        secret,
    };
    let probe = |n: usize, number: &str, round: usize| {
        webhook(n, number, &format!("{probe_marker}{n}.{round}"))
    };
    warm_up(&webhooks, &numbers_ids, &probes, probe, &mut target).await?;

    // At rest: the pipeline up, its groups joined, nothing sent.
    let idle = match &target {
        Some(target) if args.idle_seconds > 0.0 => {
            Some(target.idle(&config, args.idle_seconds).await)
        }
        _ => None,
    };
    let rss_kib_at_rest = target.as_ref().and_then(Target::rss_kib);

    let baseline = if args.no_baseline {
        None
    } else {
        Some(baseline(&config, &run, &bodies, &marker, &numbers_ids, &args).await?)
    };
    let metrics_before = match &target {
        Some(target) => target.scrape().await,
        None => String::new(),
    };

    // The pipeline: signed webhooks over HTTP, timed to MQTT.
    let bodies = Arc::new(bodies);
    let schedule = Schedule::new(args.rate);
    let bar = progress("webhook → mqtt", count, &arrivals);
    let meter = target.as_ref().map(|t| t.cpu_meter(&config));
    let sent = open_loop(count, &schedule, |i| {
        let (webhooks, bodies) = (webhooks.clone(), bodies.clone());
        async move { webhooks.post(bodies[i].1.clone()).await }
    })
    .await;
    drain(&arrivals, sent.accepted, args.drain_seconds).await;
    bar.finish();
    let busy = meter.map(PipelineMeter::stop);
    let load_after = load_average();
    subscriber.abort();
    let e2e = phase(&schedule, count, &sent, &arrivals);
    let (stages, rss_kib_after) = match &target {
        Some(target) => (
            stage_counts_settled(target, &metrics_before, e2e.received).await,
            target.rss_kib(),
        ),
        None => (Vec::new(), None),
    };

    if let Some(mut target) = target.take() {
        target.stop();
        drop_databases(&config).await;
    }

    let keeps_up = e2e.keeps_up();
    let report = Report {
        bench: "e2e",
        commit: commit(),
        started_at_unix,
        params: Params {
            rate: args.rate,
            seconds: args.seconds,
            numbers,
            mode: args.mode,
            roles: if args.mode == Mode::Roles && args.attach.is_none() {
                roles
            } else {
                vec![]
            },
            attach: args.attach.clone(),
            instances: args.instances,
            linger_ms: config.kafka.linger_ms,
            fetch_wait_max_ms: config.kafka.fetch_wait_max_ms,
            background_fetch_wait_max_ms: config.kafka.background_fetch_wait_max_ms,
            batch_max_wait_ms: config.sinks.batch.max_wait_ms,
        },
        load_before,
        load_after,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ratios: baseline.as_ref().map(|b| Ratios::of(&e2e, b)),
        e2e,
        baseline,
        keeps_up,
        idle,
        busy,
        rss_kib_at_rest,
        rss_kib_after,
        stages,
    };
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok((report, out))
}

/// The process listening on the broker's first address, if it is on this machine.
fn broker_pid(config: &Config) -> Option<u32> {
    config
        .kafka
        .brokers
        .split(',')
        .next()
        .and_then(|b| b.rsplit(':').next()?.parse().ok())
        .and_then(host::listener_pid)
}

/// The local processes listening on the stores' ports the config names, by store.
fn store_pids(config: &Config) -> Vec<(&'static str, u32)> {
    let ports = [
        ("mongodb", mongodb_port(config.sinks.mongo.uri.expose())),
        ("clickhouse", clickhouse_port(&config.sinks.clickhouse.url)),
        ("mqtt", Some(config.mqtt.port)),
    ];
    ports
        .into_iter()
        .filter_map(|(store, port)| Some((store, host::listener_pid(port?)?)))
        .collect()
}

/// The port of the first host of a MongoDB connection string, as the driver reads it.
fn mongodb_port(uri: &str) -> Option<u16> {
    use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
    match ConnectionString::parse(uri).ok()?.host_info {
        HostInfo::HostIdentifiers(hosts) => match hosts.first()? {
            ServerAddress::Tcp { port, .. } => Some(port.unwrap_or(27017)),
            _ => None,
        },
        _ => None,
    }
}

/// The port of ClickHouse's HTTP URL (8123 when it names none).
fn clickhouse_port(url: &str) -> Option<u16> {
    Some(reqwest::Url::parse(url).ok()?.port().unwrap_or(8123))
}

/// [`host::CpuMeter`] over the pipeline's children, then the bench, then the broker,
/// then the stores.
struct PipelineMeter {
    broker: bool,
    stores: Vec<&'static str>,
    meter: host::CpuMeter,
}

impl PipelineMeter {
    fn stop(self) -> Busy {
        let (mut cpu, machine_cpu_pct, seconds) = self.meter.stop();
        let stores = cpu.split_off(cpu.len().saturating_sub(self.stores.len()));
        let stores_cpu_pct = self
            .stores
            .iter()
            .zip(stores)
            .filter_map(|(store, pct)| Some((store.to_string(), pct?)))
            .collect();
        let broker_cpu_pct = if self.broker {
            cpu.pop().flatten()
        } else {
            None
        };
        let bench_cpu_pct = cpu.pop().flatten();
        Busy {
            seconds,
            broker_cpu_pct,
            coexist_cpu_pct: cpu.into_iter().sum(),
            bench_cpu_pct,
            machine_cpu_pct,
            stores_cpu_pct,
        }
    }
}

/// The configuration of the pipeline the bench starts: this run's groups, client ids,
/// MQTT prefix, ports and databases, new groups starting at the end of each topic.
fn pipeline_config(config: &Config, run: &str) -> anyhow::Result<Config> {
    let mut c = config.clone();
    c.kafka.client_id = format!("bench-e2e-{run}");
    // From now on: not the backlog, and (unlike `latest`) nothing skipped by a role
    // that restarts before its first commit.
    c.kafka.new_group_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string();
    c.metrics.listen = "127.0.0.1:0".into(); // a free port each: several role processes
    c.ingest.listen = format!("127.0.0.1:{}", crate::child::free_port()?);
    c.ingest.app_secrets = vec![runtime::Secret::new(SECRET)];
    c.ingest.default_org = "bench".into();
    c.ingest.presence.client_id = format!("bench-e2e-presence-{run}");
    c.api.listen = format!("127.0.0.1:{}", crate::child::free_port()?);
    c.sinks.mqtt.client_id = format!("bench-e2e-sink-{run}");
    // Under `coexist/`, which the sink's broker role may publish to.
    c.mqtt.topic_prefix = format!("coexist/e2e{run}");
    if c.mqtt.password.is_empty() {
        c.mqtt.password = runtime::Secret::new("coexist-dev"); // the local stack's
    }
    c.sinks.mongo.database = format!("bench_e2e_{run}");
    c.sinks.clickhouse.database = format!("bench_e2e_{run}");
    c.topics.apply_on_start = false; // the bench applies them before starting anything
    Ok(c)
}

/// When message `i` is due.
struct Schedule {
    start: Instant,
    rate: f64,
}

impl Schedule {
    fn new(rate: f64) -> Self {
        Self {
            start: Instant::now() + Duration::from_millis(50),
            rate,
        }
    }

    fn at(&self, i: usize) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// When each message first arrived, by index.
struct Arrivals {
    at: Mutex<Vec<Option<Instant>>>,
    count: AtomicUsize,
    duplicates: AtomicUsize,
}

impl Arrivals {
    fn new(count: usize) -> Self {
        Self {
            at: Mutex::new(vec![None; count]),
            count: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
        }
    }

    fn record(&self, i: usize, now: Instant) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        match at.get_mut(i) {
            Some(slot @ None) => {
                *slot = Some(now);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            Some(Some(_)) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    fn received(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// What the sender did.
struct Sent {
    accepted: usize,
    ack_ms: Vec<f64>,
    max_lag_ms: f64,
}

/// Calls `op(i)` when message `i` is due, each call in a task of its own so a slow
/// answer never delays the next send; waits for every answer.
async fn open_loop<F, Fut>(count: usize, schedule: &Schedule, mut op: F) -> Sent
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut calls = tokio::task::JoinSet::new();
    let mut max_lag = Duration::ZERO;
    for i in 0..count {
        let due = schedule.at(i);
        tokio::time::sleep_until(due.into()).await;
        max_lag = max_lag.max(due.elapsed());
        let call = op(i);
        calls.spawn(async move {
            let ok = call.await;
            (ok, due.elapsed())
        });
    }
    let mut sent = Sent {
        accepted: 0,
        ack_ms: Vec::with_capacity(count),
        max_lag_ms: max_lag.as_secs_f64() * 1000.0,
    };
    while let Some(joined) = calls.join_next().await {
        if let Ok((ok, took)) = joined {
            sent.accepted += usize::from(ok);
            sent.ack_ms.push(took.as_secs_f64() * 1000.0);
        }
    }
    sent
}

/// Waits until `expected` have arrived or `seconds` have passed.
async fn drain(arrivals: &Arrivals, expected: usize, seconds: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    while arrivals.received() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The figures of one phase, from its schedule and arrivals.
fn phase(schedule: &Schedule, count: usize, sent: &Sent, arrivals: &Arrivals) -> Phase {
    let at = arrivals.at.lock().unwrap_or_else(|p| p.into_inner());
    let latency_of = |range: std::ops::Range<usize>| -> Vec<f64> {
        range
            .filter_map(|i| {
                at[i].map(|t| t.saturating_duration_since(schedule.at(i)).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    let quarter = count.div_ceil(4);
    let per_second = (schedule.rate.round() as usize).max(1);
    let last = at.iter().flatten().max().copied();
    let received = arrivals.received();
    Phase {
        sent: count,
        accepted: sent.accepted,
        received,
        duplicates: arrivals.duplicates.load(Ordering::Relaxed),
        lost: sent.accepted.saturating_sub(received),
        throughput_per_s: last.map_or(0.0, |l| {
            received as f64 / l.saturating_duration_since(schedule.start).as_secs_f64()
        }),
        latency: Summary::of(&latency_of(0..count)),
        first_quarter: Summary::of(&latency_of(0..quarter.min(count))),
        last_quarter: Summary::of(&latency_of(count.saturating_sub(quarter)..count)),
        drain_ms: last.map_or(0.0, |l| {
            l.saturating_duration_since(schedule.at(count - 1))
                .as_secs_f64()
                * 1000.0
        }),
        ack: Summary::of(&sent.ack_ms),
        max_send_lag_ms: sent.max_lag_ms,
        p99_by_second_ms: (0..count)
            .step_by(per_second)
            .map(|first| Summary::of(&latency_of(first..(first + per_second).min(count))).p99_ms)
            .collect(),
    }
}

fn progress(label: &str, count: usize, arrivals: &Arc<Arrivals>) -> ProgressBar {
    let bar = ProgressBar::new(count as u64).with_message(label.to_string());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {pos}/{len} received {per_sec} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (bar2, arrivals) = (bar.clone(), arrivals.clone());
    tokio::spawn(async move {
        while !bar2.is_finished() {
            bar2.set_position(arrivals.received() as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    bar
}

/// Subscribes to `filter` and hands every publish, with its arrival time, to
/// `on_publish`; returns once the broker has acknowledged the subscription.
async fn subscribe(
    config: &Config,
    filter: &str,
    run: &str,
    on_publish: impl Fn(&[u8], Instant) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mqtt = &config.mqtt;
    let mut options = MqttOptions::new(format!("bench-e2e-sub-{run}"), &mqtt.host, mqtt.port);
    let password = if mqtt.password.is_empty() {
        "coexist-dev"
    } else {
        mqtt.password.expose()
    };
    options
        .set_credentials(&mqtt.username, password)
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = client; // keeps the request channel open
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.payload, Instant::now()),
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(ack.return_codes);
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "bench subscriber: mqtt connection lost");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let codes = tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .context("the MQTT broker did not acknowledge the subscription in 10 s")??;
    anyhow::ensure!(
        codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
        "the MQTT broker refused the subscription to {filter}: {codes:?}"
    );
    Ok(task)
}

/// Sends a probe on every number that has not come back yet, every half second,
/// until each has: then every partition the run uses is assigned and flowing.
async fn warm_up(
    webhooks: &Webhooks,
    numbers: &[String],
    probes: &Mutex<BTreeSet<usize>>,
    probe: impl Fn(usize, &str, usize) -> String,
    target: &mut Option<Target>,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner().with_message("waiting for the pipeline");
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0.. {
        let seen = probes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if seen.len() >= numbers.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no probe came back over MQTT on {} of {} numbers in 120 s",
            numbers.len() - seen.len(),
            numbers.len()
        );
        if let Some(target) = target.as_mut() {
            target.check()?;
        }
        for (n, number) in numbers
            .iter()
            .enumerate()
            .filter(|(n, _)| !seen.contains(n))
        {
            webhooks.post(probe(n, number, round)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_with_message("pipeline ready");
    // Let start-up work (table rebuilds, the other groups joining) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Where and how to send signed webhooks.
#[derive(Clone)]
struct Webhooks {
    http: reqwest::Client,
    url: String,
    secret: String,
}

impl Webhooks {
    /// Signs and POSTs `body`; true when it was answered 2xx.
    async fn post(&self, body: String) -> bool {
        let signature = ingest::signature::sign(body.as_bytes(), &self.secret);
        post_webhook(&self.http, &self.url, signature, body)
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// The stages of the run, once every message received is counted in each: the MQTT
/// sink records a batch's timings when the broker has acknowledged all of it, a
/// moment after the subscriber got the messages. Waits at most 5 s for that.
async fn stage_counts_settled(
    target: &Target,
    before: &str,
    received: usize,
) -> Vec<host::StageSummary> {
    let all = &runtime::observe::path::ALL;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stages = host::stage_summaries(before, &target.scrape().await, all);
        let complete =
            stages.len() >= all.len() && stages.iter().all(|s| s.count >= received as u64);
        if complete || Instant::now() >= deadline {
            return stages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// rdkafka producing the same bodies at the same rate (same producer settings as
/// ingest: idempotent, `acks=all`, the configured linger) to a topic of this run with
/// as many partitions as `whatsapp.events`, keyed by number, and one consumer reading
/// every partition: the broker's and the client library's own latency.
async fn baseline(
    config: &Config,
    run: &str,
    bodies: &[(String, String)],
    marker: &str,
    numbers: &[String],
    args: &E2eArgs,
) -> anyhow::Result<Phase> {
    let contract = crate::topics::contract()?;
    let partitions = contract
        .topics
        .iter()
        .find(|t| t.name == events::topics::WHATSAPP_EVENTS)
        .map_or(6, |t| t.partitions);
    let topic = format!("bench.e2e.{run}");
    let spec = crate::topics::TopicSpec {
        name: topic.clone(),
        description: "bench e2e baseline".into(),
        partitions,
        key: "phone_number_id".into(),
        cleanup_policy: "delete".into(),
        retention_hours: 1,
        schema: "none".into(),
        writers: vec![],
        readers: vec![],
    };
    crate::topics::apply(
        &config.kafka,
        &crate::topics::Contract {
            environments: crate::topics::contract()?.environments,
            topics: vec![spec],
        },
        &config.topics,
    )
    .await?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", format!("bench-e2e-baseline-{run}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .set(
            "fetch.wait.max.ms",
            config.kafka.fetch_wait_max_ms.to_string(),
        )
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let count = bodies.len();
    let arrivals = Arc::new(Arrivals::new(count));
    let probe_marker = format!("{marker}p");
    let probes = Arc::new(Mutex::new(BTreeSet::new()));
    let reader = tokio::spawn({
        let (arrivals, marker) = (arrivals.clone(), marker.to_string());
        let (probes, probe_marker) = (probes.clone(), probe_marker.clone());
        async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let payload = m.payload().unwrap_or_default();
                        if let Some(i) = index_after(payload, &marker) {
                            arrivals.record(i, Instant::now());
                        } else if let Some(n) = index_after(payload, &probe_marker) {
                            probes.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
                        }
                    }
                    Err(err) => tracing::warn!(%err, "baseline consumer"),
                }
            }
        }
    });
    let publisher = config.kafka.publisher("bench-e2e-baseline").await?;

    // Warm, like the pipeline: probes on every number's key until each has come
    // back, so the topic, its partitions and the consumer are all flowing before
    // the clock starts (a cold baseline's first seconds made its p99 a warm-up
    // artifact, flattering every ratio to it).
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0.. {
        let seen = probes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if seen.len() >= numbers.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the baseline's probes did not come back in 60 s"
        );
        for (n, number) in numbers
            .iter()
            .enumerate()
            .filter(|(n, _)| !seen.contains(n))
        {
            let _ = publisher
                .send(runtime::kafka::Outgoing {
                    topic: &topic,
                    key: number,
                    value: format!("{probe_marker}{n}.{round}").into_bytes(),
                    headers: vec![],
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies = Arc::new(bodies.to_vec());
    let schedule = Schedule::new(args.rate);
    let bar = progress("rdkafka produce → consume", count, &arrivals);
    let sent = open_loop(count, &schedule, |i| {
        let (publisher, topic, bodies) = (publisher.clone(), topic.clone(), bodies.clone());
        async move {
            let (number, body) = &bodies[i];
            publisher
                .send(runtime::kafka::Outgoing {
                    topic: &topic,
                    key: number,
                    value: body.as_bytes().to_vec(),
                    headers: vec![],
                })
                .await
                .is_ok()
        }
    })
    .await;
    drain(&arrivals, sent.accepted, args.drain_seconds).await;
    bar.finish();
    reader.abort();
    Ok(phase(&schedule, count, &sent, &arrivals))
}

/// The child processes of the pipeline under test.
struct Target {
    children: Vec<(String, std::process::Child)>,
    config_file: PathBuf,
    /// The `/metrics` of the children that run the MQTT sink.
    metrics: Vec<String>,
}

impl Target {
    /// Starts `coexist all`, or one process per role, from a config file holding
    /// `config` whole; `COEXIST_*` variables are not passed on, so the file is all
    /// they read. Their output goes to `log`.
    fn start(
        config: &Config,
        mode: Mode,
        roles: &[String],
        instances: usize,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let config_file = log.with_extension("toml");
        crate::child::write_config(&config_file, config)?;
        let log =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let commands: Vec<(String, Vec<String>)> = match mode {
            Mode::All => vec![("all".into(), vec!["all".into()])],
            Mode::Roles => {
                for needed in ["ingest", "sink-mqtt"] {
                    anyhow::ensure!(
                        roles.iter().any(|r| r == needed),
                        "--roles must include {needed}: the bench measures webhook → MQTT"
                    );
                }
                let mut commands = Vec::new();
                for role in roles {
                    let n = if SINGLE_ROLES.contains(&role.as_str()) {
                        1
                    } else {
                        instances.max(1)
                    };
                    for i in 0..n {
                        let name = if n == 1 {
                            role.clone()
                        } else {
                            format!("{role}#{i}")
                        };
                        commands.push((name, role_args(role)?));
                    }
                }
                commands
            }
        };
        let mut target = Self {
            children: Vec::new(),
            config_file,
            metrics: Vec::new(),
        };
        for (name, args) in commands {
            let metrics = format!("127.0.0.1:{}", crate::child::free_port()?);
            let mut command = crate::child::command(&target.config_file)?;
            if name.starts_with("sink-mqtt#") {
                // Each instance its own MQTT session: one client id would take the
                // other's session over.
                let id = format!("{}-{}", config.sinks.mqtt.client_id, name.replace('#', "-"));
                command.env("COEXIST_SINKS_MQTT_CLIENT_ID", id);
            }
            if name == "all" || name.starts_with("sink-mqtt") {
                target.metrics.push(format!("http://{metrics}/metrics"));
            }
            let child = command
                .arg("--metrics-listen")
                .arg(&metrics)
                .args(&args)
                .env("NO_COLOR", "1")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .spawn()
                .with_context(|| format!("starting coexist {}", args.join(" ")))?;
            target.children.push((name, child));
        }
        Ok(target)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Resident memory of every child together.
    fn rss_kib(&self) -> Option<u64> {
        self.pids().into_iter().map(host::rss_kib).sum()
    }

    /// The CPU of the children and of the broker (if it listens on this machine)
    /// over `seconds`, nothing being sent.
    async fn idle(&self, config: &Config, seconds: f64) -> Idle {
        let broker_pid = broker_pid(config);
        let mut pids = self.pids();
        pids.extend(broker_pid);
        let bar = ProgressBar::new_spinner()
            .with_message(format!("measuring CPU at rest for {seconds:.0} s"));
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut cpu = host::cpu_percent(&pids, Duration::from_secs_f64(seconds)).await;
        bar.finish_and_clear();
        let broker_cpu_pct = broker_pid.and_then(|_| cpu.pop().flatten());
        Idle {
            seconds,
            broker_pid,
            broker_cpu_pct,
            coexist_cpu_pct: cpu.into_iter().sum(),
        }
    }

    /// Starts measuring the CPU of the children, the broker, the bench and the
    /// machine.
    fn cpu_meter(&self, config: &Config) -> PipelineMeter {
        let broker = broker_pid(config);
        let stores = store_pids(config);
        let mut pids = self.pids();
        pids.push(std::process::id());
        pids.extend(broker);
        pids.extend(stores.iter().map(|(_, pid)| *pid));
        PipelineMeter {
            broker: broker.is_some(),
            stores: stores.iter().map(|(store, _)| *store).collect(),
            meter: host::CpuMeter::start(&pids),
        }
    }

    /// Every MQTT sink's `/metrics`, concatenated (histograms are summed by the
    /// reader). Empty where a scrape fails: the stage table is then empty.
    async fn scrape(&self) -> String {
        let mut text = String::new();
        for url in &self.metrics {
            if let Ok(r) = reqwest::get(url).await
                && let Ok(body) = r.text().await
            {
                text.push_str(&body);
                text.push('\n');
            }
        }
        text
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.children.iter().map(|(n, _)| n.as_str()).collect();
        format!("coexist {}", names.join(", "))
    }

    /// Fails when a child has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("coexist {name} exited ({status}); see the log");
            }
        }
        Ok(())
    }

    /// SIGTERM to each child (they shut down cleanly, committing what they wrote),
    /// SIGKILL to any still running after 15 s.
    fn stop(&mut self) {
        for (_, child) in &self.children {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (name, mut child) in self.children.drain(..) {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(%name, "did not stop in 15 s; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.config_file);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sink-mqtt` → `sink mqtt`: the subcommand of a role.
fn role_args(role: &str) -> anyhow::Result<Vec<String>> {
    match role.split_once('-') {
        None if role == "ingest" || role == "api" => Ok(vec![role.into()]),
        Some((kind @ ("sink" | "process"), name)) => Ok(vec![kind.into(), name.into()]),
        _ => anyhow::bail!("unknown role {role}; one of {}", ALL_ROLES.join(", ")),
    }
}

async fn wait_until_up(url: &str, target: &mut Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        target.check()?;
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("ingest did not answer {url} in 60 s")
}

/// Drops the run's MongoDB and ClickHouse databases (best effort).
async fn drop_databases(config: &Config) {
    if let Ok(client) = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose()).await {
        let _ = client.database(&config.sinks.mongo.database).drop().await;
    }
    let _ = config
        .sinks
        .clickhouse
        .client()
        .query(&format!(
            "DROP DATABASE IF EXISTS {}",
            config.sinks.clickhouse.database
        ))
        .execute()
        .await;
}

/// The report printed at the end, baseline first.
pub fn render(report: &Report, path: &Path) -> String {
    let row = |name: &str, p: &Phase| {
        format!(
            "{name:<28} {:>7} {:>8} {:>5} {:>9.0} {:>7.2} {:>7.2} {:>7.2} {:>8.2}\n",
            p.sent,
            p.received,
            p.lost,
            p.throughput_per_s,
            p.latency.p50_ms,
            p.latency.p95_ms,
            p.latency.p99_ms,
            p.latency.max_ms
        )
    };
    let mut out = format!(
        "{:<28} {:>7} {:>8} {:>5} {:>9} {:>7} {:>7} {:>7} {:>8}\n",
        "", "sent", "received", "lost", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    if let Some(b) = &report.baseline {
        out.push_str(&row("rdkafka produce → consume", b));
    }
    let e = &report.e2e;
    out.push_str(&row("webhook → mqtt (coexist)", e));
    if let Some(b) = &report.baseline {
        out.push_str(&row("baseline, last quarter", &last_quarter(b)));
        out.push_str(&row("coexist, last quarter", &last_quarter(e)));
    }
    if let Some(r) = &report.ratios {
        out.push_str(&format!(
            "coexist / warmed baseline, steady state (last quarter): p50 {:.1}x, p99 {:.1}x (whole run: p50 {:.1}x, p99 {:.1}x)\n",
            r.steady_p50, r.steady_p99, r.p50, r.p99
        ));
    }
    out.push_str(&format!(
        "webhook answered (ingest's produces acked): p50 {:.2} ms, p99 {:.2} ms; sender fell behind its schedule by at most {:.1} ms\n",
        e.ack.p50_ms, e.ack.p99_ms, e.max_send_lag_ms
    ));
    out.push_str(&format!(
        "p99 first quarter {:.2} ms, last quarter {:.2} ms; drained {:.0} ms after the last send; {} duplicate(s)\n",
        e.first_quarter.p99_ms, e.last_quarter.p99_ms, e.drain_ms, e.duplicates
    ));
    out.push_str(&format!(
        "p99 by second of the schedule: {}\n",
        e.p99_by_second_ms
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if !report.stages.is_empty() {
        out.push_str(
            "inside coexist, per stage (from record header timestamps; ms, interpolated):\n",
        );
        for st in &report.stages {
            out.push_str(&format!(
                "  {:<22} {:>7} messages   p50 {:>7.2}   p99 {:>7.2}\n",
                st.stage, st.count, st.p50_ms, st.p99_ms
            ));
        }
    }
    if let Some(idle) = &report.idle {
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}%"));
        out.push_str(&format!(
            "at rest ({:.0} s before the run): broker {} of a core (pid {}), coexist {}\n",
            idle.seconds,
            pct(idle.broker_cpu_pct),
            idle.broker_pid.map_or("?".to_string(), |p| p.to_string()),
            pct(idle.coexist_cpu_pct),
        ));
    }
    if let Some(busy) = &report.busy {
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}%"));
        out.push_str(&format!(
            "under load ({:.0} s of sending and draining, % of a core): broker {}, coexist {}, this bench {}, the whole machine {} of {}%\n",
            busy.seconds,
            pct(busy.broker_cpu_pct),
            pct(busy.coexist_cpu_pct),
            pct(busy.bench_cpu_pct),
            pct(busy.machine_cpu_pct),
            report.cores * 100,
        ));
        if !busy.stores_cpu_pct.is_empty() {
            let stores: Vec<String> = busy
                .stores_cpu_pct
                .iter()
                .map(|(store, pct)| format!("{store} {pct:.0}%"))
                .collect();
            out.push_str(&format!(
                "  of which the local stores: {}\n",
                stores.join(", ")
            ));
        }
    }
    if let (Some(rest), Some(after)) = (report.rss_kib_at_rest, report.rss_kib_after) {
        out.push_str(&format!(
            "coexist RSS: {:.1} MiB at rest, {:.1} MiB after the run\n",
            rest as f64 / 1024.0,
            after as f64 / 1024.0
        ));
    }
    out.push_str(&format!(
        "keeps up: {}   load {:.2} before, {:.2} after ({} cores)   result: {}\n",
        if report.keeps_up { "yes" } else { "NO" },
        report.load_before[0],
        report.load_after[0],
        report.cores,
        path.display()
    ));
    out
}

/// A phase's last quarter as a row of the table.
fn last_quarter(p: &Phase) -> Phase {
    Phase {
        latency: p.last_quarter.clone(),
        ..p.clone()
    }
}

/// `$CARGO_TARGET_DIR/bench`, or `target/bench`.
fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("bench")
}

/// `git describe`-like: the commit, `-dirty` when the tree has changes.
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|_| fields.next().unwrap_or(0.0))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_their_subcommands() {
        assert_eq!(role_args("ingest").unwrap(), ["ingest"]);
        assert_eq!(role_args("sink-mqtt").unwrap(), ["sink", "mqtt"]);
        assert_eq!(role_args("process-router").unwrap(), ["process", "router"]);
        assert!(role_args("mqtt").is_err());
        for role in ALL_ROLES {
            assert!(role_args(role).is_ok(), "{role}");
        }
    }

    #[test]
    fn a_stores_port_is_read_from_its_url() {
        assert_eq!(mongodb_port("mongodb://127.0.0.1:27017"), Some(27017));
        assert_eq!(
            mongodb_port("mongodb://user:p%40ss@db1:27018,db2:27019/coexist?tls=true"),
            Some(27018)
        );
        assert_eq!(
            mongodb_port("mongodb://db.example.com/coexist"),
            Some(27017)
        );
        assert_eq!(clickhouse_port("http://127.0.0.1:8123"), Some(8123));
        assert_eq!(clickhouse_port("http://[::1]:8124/"), Some(8124));
        assert_eq!(clickhouse_port("http://[::1]"), Some(8123));
        assert_eq!(clickhouse_port("http://clickhouse:notaport"), None);
    }
}
