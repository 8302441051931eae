//! `coexist bench`: throughput measured against a baseline taken in the same run, on
//! the same broker, with the same payloads, so the ratio means something on any
//! machine.

pub mod analytics;
pub mod e2e;
pub mod host;
pub mod stats;

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::Config;

pub mod processors;
use crate::simulate::inbound_text;

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Webhooks to send (each one inbound text message).
    #[arg(long, default_value_t = 20_000)]
    pub webhooks: usize,
    /// Requests (and, for the baseline, produces) in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Business numbers the webhooks are spread over.
    #[arg(long, default_value_t = 8)]
    pub numbers: usize,
    /// A running receiver to measure; by default one is started in this process.
    #[arg(long)]
    pub url: Option<String>,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct Rate {
    pub count: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.seconds
    }
}

/// The three rates `coexist bench ingest` measures.
pub struct Report {
    /// rdkafka producing each webhook body once (the baseline).
    pub baseline: Rate,
    /// rdkafka producing the raw body and its normalized events: ingest's Kafka work.
    pub same_records: Rate,
    /// Signed webhooks over HTTP to the receiver.
    pub ingest: Rate,
}

/// Baseline (rdkafka produce of the bodies) and ingest (signed HTTP webhooks).
pub async fn ingest(mut config: Config, args: IngestArgs) -> anyhow::Result<Report> {
    let run = std::process::id();
    let secret = "bench-app-secret";
    let bodies: Vec<(String, String)> = (0..args.webhooks)
        .map(|i| {
            let number = format!("7{run}{:03}", i % args.numbers.max(1));
            let body = inbound_text(
                &number,
                &format!("1555{i:07}"),
                "Bench",
                &format!("wamid.bench.{run}.{i}"),
                "hello",
                1,
            );
            (number, body.to_string())
        })
        .collect();

    let contract = crate::topics::contract()?;
    crate::topics::apply(&config.kafka, &contract, &config.topics).await?;

    // Baseline: the same bodies straight to the raw topic, idempotent, acks=all.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.kafka.linger_ms.to_string())
        .create()?;
    let baseline = measure(
        "rdkafka produce (baseline)",
        &bodies,
        args.concurrency,
        |(number, body)| {
            let producer = producer.clone();
            async move {
                let record = FutureRecord::to(events::topics::WEBHOOKS_RAW)
                    .key(&number)
                    .payload(&body);
                producer.send(record, Duration::from_secs(5)).await.is_ok()
            }
        },
    )
    .await;

    // Second baseline: exactly the records ingest writes per webhook (the raw body and
    // its normalized events), so the gap between it and ingest is ingest's own cost.
    let orgs = events::OrgDirectory::new("bench", []);
    let records: Vec<(String, String, Vec<Vec<u8>>)> = bodies
        .iter()
        .map(|(number, body)| {
            let webhook: events::Webhook =
                serde_json::from_str(body).unwrap_or_else(|_| unreachable!());
            let events = events::normalize(&webhook, 0, &orgs).events;
            let encoded = events
                .iter()
                .filter_map(|e| serde_json::to_vec(e).ok())
                .collect();
            (number.clone(), body.clone(), encoded)
        })
        .collect();
    let same_records = measure(
        "rdkafka produce (same records)",
        &records,
        args.concurrency,
        |(number, body, events)| {
            let producer = producer.clone();
            async move {
                let raw = producer.send(
                    FutureRecord::to(events::topics::WEBHOOKS_RAW)
                        .key(&number)
                        .payload(&body),
                    Duration::from_secs(5),
                );
                let sends = events.iter().map(|e| {
                    producer.send(
                        FutureRecord::to(events::topics::WHATSAPP_EVENTS)
                            .key(&number)
                            .payload(e),
                        Duration::from_secs(5),
                    )
                });
                let (raw, events) = futures::join!(raw, futures::future::join_all(sends));
                raw.is_ok() && events.iter().all(Result::is_ok)
            }
        },
    )
    .await;

    // Ingest: the same bodies, signed, over HTTP.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let url = match args.url {
        Some(url) => url,
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            config.ingest.listen = format!("127.0.0.1:{port}");
            config.ingest.app_secrets = vec![runtime::Secret::new(secret)];
            config.ingest.presence.enabled = false;
            config.ingest.default_org = "bench".into();
            let (c, s) = (config.clone(), shutdown.clone());
            tokio::spawn(async move { crate::roles::ingest(&c, s).await });
            let healthz = format!("http://{}/healthz", config.ingest.listen);
            wait_until_up(&healthz).await?;
            format!("http://{}/webhooks/whatsapp", config.ingest.listen)
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let signed: Vec<(String, String)> = bodies
        .into_iter()
        .map(|(_, body)| (ingest::signature::sign(body.as_bytes(), secret), body))
        .collect();
    let ingest = measure(
        "coexist ingest (HTTP)",
        &signed,
        args.concurrency,
        |(signature, body)| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = crate::simulate::post_webhook(&http, &url, signature, body).await;
                response.is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await;
    shutdown.cancel();
    anyhow::ensure!(
        baseline.count == signed.len(),
        "baseline: only {} of {} produced",
        baseline.count,
        signed.len()
    );
    anyhow::ensure!(
        ingest.count == signed.len(),
        "ingest: only {} of {} accepted",
        ingest.count,
        signed.len()
    );
    Ok(Report {
        baseline,
        same_records,
        ingest,
    })
}

/// Runs `op` over every item with `concurrency` in flight; counts successes and
/// records each call's latency.
async fn measure<T, F, Fut>(label: &str, items: &[T], concurrency: usize, op: F) -> Rate
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = bool>,
{
    let bar = ProgressBar::new(items.len() as u64).with_message(label.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let results: Vec<(bool, Duration)> = futures::stream::iter(items.iter().cloned())
        .map(|item| {
            let call = op(item);
            let bar = bar.clone();
            async move {
                let t = Instant::now();
                let ok = call.await;
                bar.inc(1);
                (ok, t.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish();
    let mut latencies: Vec<f64> = results
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Rate {
        count: results.iter().filter(|(ok, _)| *ok).count(),
        seconds,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

async fn wait_until_up(url: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("ingest did not come up")).context(url.to_string())
}

/// The report `coexist bench ingest` prints.
pub fn report(r: &Report) -> String {
    let row = |name: &str, r: &Rate| {
        format!(
            "{name:<32} {:>7} in {:>6.2} s = {:>7.0}/s   p50 {:>6.2} ms   p99 {:>6.2} ms\n",
            r.count,
            r.seconds,
            r.per_second(),
            r.p50_ms,
            r.p99_ms
        )
    };
    let pct = |a: &Rate, b: &Rate| 100.0 * a.per_second() / b.per_second();
    let mut out = row("rdkafka produce, body (baseline)", &r.baseline);
    out.push_str(&row("rdkafka produce, same records", &r.same_records));
    out.push_str(&row("coexist ingest (HTTP)", &r.ingest));
    out.push_str(&format!(
        "ingest / baseline:      {:>4.0}% (goal >= 50%)\n",
        pct(&r.ingest, &r.baseline)
    ));
    out.push_str(&format!(
        "ingest / same records:  {:>4.0}% (what HTTP, HMAC and normalizing cost)\n",
        pct(&r.ingest, &r.same_records)
    ));
    out
}
