//! What a process tells its operators: Prometheus metrics and readiness, served on
//! one listener per process (`[metrics] listen`) at `/metrics`, `/healthz`, `/readyz`.
//!
//! There is one [`Observer`] per process ([`global`]), because that is what a
//! scrape sees: `coexist all` runs every role in one process and one registry, with
//! the role as a label. The central loops (`consume`, the dead letters, the Kafka
//! consumer context) record into it, so no sink has to instrument itself.
//!
//! Readiness is a set of named checks (`sink-mongo.mongodb`, `sink-mongo.consumer`,
//! `ingest.kafka`, ...) that roles flip; the process is ready when every check is.
//! The decision ([`Readiness::report`]) is pure; the HTTP edge only renders it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[metrics]`: where the process serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// `host:port`; port 0 picks a free one (logged); empty serves nothing. Role
    /// processes on one machine need one port each (`--metrics-listen`).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "metrics listener cannot bind {addr}: {source} (another role process on this \
         machine? give each its own --metrics-listen / COEXIST_METRICS_LISTEN, or \"\" for none)"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleTopic {
    role: String,
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    role: String,
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabel {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabel {
    role: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    role: String,
    cache: &'static str,
}

/// The stages of the real-time path a message passes, in order, as
/// `coexist_path_seconds{stage}` names them (see [`Metrics::path_stage`]).
pub mod path {
    /// Ingest received the webhook → it handed the event to its producer (the
    /// record's timestamp): parsing, signature check, normalization.
    pub const RECEIVED_PRODUCED: &str = "received_produced";
    /// Handed to the producer → handed to the MQTT sink: linger, the broker's
    /// append, the consumer's fetch wait, the sink's batch wait.
    pub const PRODUCED_CONSUMED: &str = "produced_consumed";
    /// Handed to the MQTT sink → the MQTT broker acknowledged its publish (PUBACK).
    pub const CONSUMED_PUBLISHED: &str = "consumed_published";
    /// Received by ingest → published by the MQTT sink: the whole path inside coexist.
    pub const RECEIVED_PUBLISHED: &str = "received_published";
    pub const ALL: [&str; 4] = [
        RECEIVED_PRODUCED,
        PRODUCED_CONSUMED,
        CONSUMED_PUBLISHED,
        RECEIVED_PUBLISHED,
    ];
}

fn path_histogram() -> Histogram {
    // 0.5 ms .. ~28 s in steps of 25%: a p50 in milliseconds, and an overloaded
    // run's seconds still inside the last bucket.
    Histogram::new(exponential_buckets(0.0005, 1.25, 50))
}

fn batch_histogram() -> Histogram {
    // 1 .. 8192 records.
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics of a process. Names are prefixed `coexist_`; see README "Metrics
/// and health".
pub struct Metrics {
    registry: Registry,
    records_in: Family<RoleTopic, Counter>,
    records_out: Family<RoleLabel, Counter>,
    batch_records: Family<RoleLabel, Histogram>,
    batch_seconds: Family<RoleLabel, Histogram>,
    dead_letters: Family<RoleLabel, Counter>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    webhooks: Family<WebhookLabel, Counter>,
    http_requests: Family<HttpLabel, Counter>,
    path_seconds: Family<StageLabel, Histogram>,
    cache_entries: Family<CacheLabel, Gauge>,
    /// The lag series each role reported last, so a partition that moved away
    /// stops being reported instead of freezing at its last value.
    lag_reported: Mutex<BTreeMap<String, HashSet<(String, i32)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coexist");
        let records_in = Family::default();
        registry.register(
            "records_in",
            "Records consumed from Kafka, by role and topic",
            records_in.clone(),
        );
        let records_out = Family::default();
        registry.register(
            "records_out",
            "Records a role has finished: written to its store, or produced (processors, ingest)",
            records_out.clone(),
        );
        let batch_records =
            Family::<RoleLabel, Histogram>::new_with_constructor(batch_histogram as fn() -> _);
        registry.register(
            "batch_records",
            "Records per batch handed to a stage",
            batch_records.clone(),
        );
        let batch_seconds =
            Family::<RoleLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "batch_write_seconds",
            "Time a stage took to write (or handle and produce) one batch that succeeded",
            batch_seconds.clone(),
        );
        let dead_letters = Family::default();
        registry.register(
            "deadletters",
            "Records sent to the deadletter topic, by the role that gave up on them",
            dead_letters.clone(),
        );
        let consumer_lag = Family::default();
        registry.register(
            "consumer_lag",
            "High watermark minus committed offset, per assigned partition (librdkafka statistics)",
            consumer_lag.clone(),
        );
        let webhooks = Family::default();
        registry.register(
            "webhooks",
            "Webhook POSTs answered by ingest, by outcome and reason",
            webhooks.clone(),
        );
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by role and status class",
            http_requests.clone(),
        );
        let path_seconds =
            Family::<StageLabel, Histogram>::new_with_constructor(path_histogram as fn() -> _);
        registry.register(
            "path_seconds",
            "Time an inbound message spent in each stage of the real-time path (webhook received → MQTT published), from timestamps carried in its Kafka record",
            path_seconds.clone(),
        );
        let cache_entries = Family::default();
        registry.register(
            "cache_entries",
            "Entries held in a bounded in-memory cache, by role and cache (each has a configured capacity)",
            cache_entries.clone(),
        );
        Self {
            registry,
            path_seconds,
            cache_entries,
            records_in,
            records_out,
            batch_records,
            batch_seconds,
            dead_letters,
            consumer_lag,
            webhooks,
            http_requests,
            lag_reported: Mutex::new(BTreeMap::new()),
        }
    }

    /// A batch consumed by `role`: its records by topic, and its size.
    pub fn consumed<'a>(&self, role: &str, topics: impl IntoIterator<Item = &'a str>) {
        let mut size = 0u64;
        let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for topic in topics {
            *per_topic.entry(topic).or_default() += 1;
            size += 1;
        }
        for (topic, n) in per_topic {
            self.records_in
                .get_or_create(&RoleTopic {
                    role: role.to_owned(),
                    topic: topic.to_owned(),
                })
                .inc_by(n);
        }
        self.batch_records
            .get_or_create(&role_label(role))
            .observe(size as f64);
    }

    /// A batch `role` finished: `out` records written or produced, in `elapsed`.
    pub fn batch_done(&self, role: &str, out: usize, elapsed: Duration) {
        let label = role_label(role);
        self.records_out.get_or_create(&label).inc_by(out as u64);
        self.batch_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Records `role` produced outside a batch loop (ingest's events).
    pub fn produced(&self, role: &str, out: usize) {
        self.records_out
            .get_or_create(&role_label(role))
            .inc_by(out as u64);
    }

    pub fn dead_lettered(&self, role: &str) {
        self.dead_letters.get_or_create(&role_label(role)).inc();
    }

    /// A webhook answered: `reason` is `ok` when accepted, else the error code.
    pub fn webhook(&self, accepted: bool, reason: &'static str) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        self.webhooks
            .get_or_create(&WebhookLabel { outcome, reason })
            .inc();
    }

    pub fn http_request(&self, role: &'static str, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&HttpLabel { role, class })
            .inc();
    }

    /// One message's time in a stage of the real-time path ([`path`]); negative
    /// (clocks of two machines) counts as 0.
    pub fn path_stage(&self, stage: &'static str, millis: i64) {
        self.path_seconds
            .get_or_create(&StageLabel { stage })
            .observe(millis.max(0) as f64 / 1000.0);
    }

    /// How many entries `role`'s bounded cache `cache` holds now.
    pub fn cache_size(&self, role: &str, cache: &'static str, entries: usize) {
        self.cache_entries
            .get_or_create(&CacheLabel {
                role: role.to_owned(),
                cache,
            })
            .set(entries as i64);
    }

    /// Replaces `role`'s lag series with `lags` (`(topic, partition, lag)`): series
    /// of partitions no longer reported are removed.
    pub fn set_consumer_lag(&self, role: &str, lags: &[(String, i32, i64)]) {
        let now: HashSet<(String, i32)> = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        for (topic, partition, lag) in lags {
            self.consumer_lag
                .get_or_create(&PartitionLabel {
                    role: role.to_owned(),
                    topic: topic.clone(),
                    partition: *partition,
                })
                .set(*lag);
        }
        let mut reported = self
            .lag_reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = reported.insert(role.to_owned(), now.clone());
        for (topic, partition) in before.unwrap_or_default().difference(&now) {
            self.consumer_lag.remove(&PartitionLabel {
                role: role.to_owned(),
                topic: topic.clone(),
                partition: *partition,
            });
        }
    }

    /// The text exposition (OpenMetrics), as Prometheus scrapes it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn role_label(role: &str) -> RoleLabel {
    RoleLabel {
        role: role.to_owned(),
    }
}

/// The lag of one partition from librdkafka's statistics: the high watermark minus
/// the first known of `[committed, app, next]` offsets. Committed first: lag is work
/// not yet durably done. Before the first commit, the position handed to the stage;
/// before any record, the fetch position (where a new group's `auto.offset.reset`
/// put it, so an idle partition of a `latest` group reads 0). `None` while the
/// watermark is unknown.
pub fn partition_lag(hi_offset: i64, positions: [i64; 3]) -> Option<i64> {
    if hi_offset < 0 {
        return None;
    }
    let done = positions.into_iter().find(|&offset| offset >= 0)?;
    Some((hi_offset - done).max(0))
}

/// Named readiness checks. A check is ready or names why not.
#[derive(Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<String, Option<String>>>,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    /// Checks not ready, with why.
    pub not_ready: BTreeMap<String, String>,
    /// Checks that are ready.
    pub ready_checks: Vec<String>,
}

impl Readiness {
    pub fn set_ready(&self, check: &str) {
        self.set(check, None);
    }

    pub fn set_not_ready(&self, check: &str, reason: impl Into<String>) {
        self.set(check, Some(reason.into()));
    }

    fn set(&self, check: &str, state: Option<String>) {
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        checks.insert(check.to_owned(), state);
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        report(&checks)
    }
}

/// Ready when there is at least one check and every check is ready: a process whose
/// roles have not registered anything yet has not started, so it is not ready.
pub fn report(checks: &BTreeMap<String, Option<String>>) -> ReadinessReport {
    let mut not_ready = BTreeMap::new();
    let mut ready_checks = Vec::new();
    for (name, state) in checks {
        match state {
            None => ready_checks.push(name.clone()),
            Some(reason) => {
                not_ready.insert(name.clone(), reason.clone());
            }
        }
    }
    if checks.is_empty() {
        not_ready.insert("process".into(), "no role has started".into());
    }
    ReadinessReport {
        ready: not_ready.is_empty(),
        not_ready,
        ready_checks,
    }
}

/// The process's metrics and readiness.
#[derive(Default)]
pub struct Observer {
    pub metrics: Metrics,
    pub readiness: Readiness,
}

/// The one observer of this process.
pub fn global() -> &'static Observer {
    static OBSERVER: OnceLock<Observer> = OnceLock::new();
    OBSERVER.get_or_init(Observer::default)
}

/// `/metrics`, `/healthz` and `/readyz` over the [`global`] observer.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        global().metrics.encode(),
    )
        .into_response()
}

/// 200 when every check is ready, else 503; the JSON body names each check either way.
pub async fn readyz() -> Response {
    let report = global().readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// [`readyz`] for listeners the public can reach (the API's, ingest's): the same
/// status and check names, but not why a check fails (backend error text names
/// hosts, users and versions).
pub async fn readyz_public() -> Response {
    let report = public_report(global().readiness.report());
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// A report with every reason replaced by `not ready`.
pub fn public_report(mut report: ReadinessReport) -> ReadinessReport {
    for why in report.not_ready.values_mut() {
        *why = "not ready".into();
    }
    report
}

/// Binds `listen` (nothing when empty) and serves [`router`] until `shutdown`.
/// Binding happens before this returns, so a taken port fails the start.
pub async fn serve(
    listen: &str,
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, ObserveError> {
    if listen.is_empty() {
        return Ok(None);
    }
    let bind_error = |source| ObserveError::Bind {
        addr: listen.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    tracing::info!(listen = %local, "metrics and health up (/metrics, /healthz, /readyz)");
    Ok(Some(tokio::spawn(async move {
        let served = axum::serve(listener, router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(%err, "metrics listener stopped");
        }
    })))
}

/// Runs `check` every `every` until `shutdown`, flipping readiness check `name`:
/// for dependencies a role needs but does not otherwise touch on a schedule
/// (ingest's Kafka, the API's MongoDB).
pub async fn probe<F, Fut>(name: &str, every: Duration, shutdown: CancellationToken, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let readiness = &global().readiness;
    loop {
        match check().await {
            Ok(()) => readiness.set_ready(name),
            Err(reason) => readiness.set_not_ready(name, reason),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_report_names_checks_but_not_why() {
        let report = ReadinessReport {
            ready: false,
            not_ready: [(
                "api.mongodb".to_string(),
                "connection refused: mongo-0.internal:27017 user coexist".to_string(),
            )]
            .into(),
            ready_checks: vec!["ingest.kafka".into()],
        };
        let public = public_report(report.clone());
        assert_eq!(public.not_ready["api.mongodb"], "not ready");
        assert_eq!(public.ready_checks, report.ready_checks);
        assert!(!public.ready);
    }

    #[test]
    fn lag_is_watermark_minus_committed_then_position() {
        const NONE: i64 = -1001; // librdkafka's "invalid offset"
        assert_eq!(partition_lag(10, [7, 9, 10]), Some(3));
        assert_eq!(partition_lag(10, [10, 10, 10]), Some(0));
        // Nothing committed yet: how far the stage's position is behind.
        assert_eq!(partition_lag(10, [NONE, 4, 10]), Some(6));
        // Nothing handed to the stage yet: the fetch position (0 on an empty topic).
        assert_eq!(partition_lag(0, [NONE, NONE, 0]), Some(0));
        assert_eq!(partition_lag(8, [NONE, NONE, 2]), Some(6));
        assert_eq!(partition_lag(NONE, [3, 3, 3]), None);
        assert_eq!(partition_lag(10, [NONE, NONE, NONE]), None);
        // A watermark older than the commit's answer never gives a negative lag.
        assert_eq!(partition_lag(5, [6, 6, 6]), Some(0));
    }

    #[test]
    fn ready_only_when_every_check_is() {
        let mut checks = BTreeMap::new();
        assert!(!report(&checks).ready, "nothing registered is not ready");
        checks.insert("sink-mongo.mongodb".to_string(), None);
        checks.insert("sink-mongo.consumer".to_string(), Some("starting".into()));
        let r = report(&checks);
        assert!(!r.ready);
        assert_eq!(r.not_ready.get("sink-mongo.consumer").unwrap(), "starting");
        assert_eq!(r.ready_checks, vec!["sink-mongo.mongodb".to_string()]);
        checks.insert("sink-mongo.consumer".to_string(), None);
        assert!(report(&checks).ready);
    }

    #[test]
    fn metrics_render_with_names_and_labels() {
        let m = Metrics::new();
        m.consumed("sink-mongo", ["whatsapp.events", "whatsapp.events"]);
        m.batch_done("sink-mongo", 2, Duration::from_millis(3));
        m.dead_lettered("sink-mongo");
        m.set_consumer_lag("sink-mongo", &[("whatsapp.events".into(), 0, 4)]);
        let text = m.encode();
        assert!(
            text.contains(
                "coexist_records_in_total{role=\"sink-mongo\",topic=\"whatsapp.events\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("coexist_records_out_total{role=\"sink-mongo\"} 2"));
        assert!(text.contains("coexist_deadletters_total{role=\"sink-mongo\"} 1"));
        assert!(text.contains(
            "coexist_consumer_lag{role=\"sink-mongo\",topic=\"whatsapp.events\",partition=\"0\"} 4"
        ));
        assert!(text.contains("coexist_batch_records_count{role=\"sink-mongo\"} 1"));
        // A partition that moved away is no longer reported.
        m.set_consumer_lag("sink-mongo", &[]);
        assert!(!m.encode().contains("coexist_consumer_lag{"));
    }
}
