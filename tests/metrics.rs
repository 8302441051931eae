//! `/metrics`, `/healthz` and `/readyz` of a role process (`coexist sink mongo`) on
//! the real stack: the counters equal what the log holds between two of the group's
//! commits, the fed records among it exactly once, a bad record is counted as a
//! dead letter, the lag gauge of every partition returns to 0 after catch-up, and a
//! sink whose store cannot be reached is alive but answers 503 naming the check.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use coexist::Config;
use events::event::MessageEvent;
use events::{WhatsAppEvent, topics};
use mongodb::bson::doc;
use runtime::kafka::Outgoing;
use support::{free_port, now_ms, unique, wait_for};

const ROLE: &str = "sink-mongo";

/// A role process, killed when the test ends however it ends.
struct RoleProcess(std::process::Child);

impl RoleProcess {
    /// `coexist -c FILE sink mongo`, configured through a file like any deployment.
    fn sink_mongo(config: &Config) -> Self {
        let file = std::env::temp_dir().join(format!("coexist-metrics-{}.toml", unique()));
        std::fs::write(&file, toml::to_string(config).unwrap()).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_coexist"))
            .args(["-c", file.to_str().unwrap(), "sink", "mongo"])
            .env("COEXIST_LOG_LEVEL", "warn")
            // The file's values, not this environment's, for the keys under test.
            .env_remove("COEXIST_METRICS_LISTEN")
            .env_remove("COEXIST_SINKS_MONGO_URI")
            .spawn()
            .expect("start coexist sink mongo");
        Self(child)
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config of its own: consumer group, database, and metrics port.
fn config(name: &str) -> (Config, String) {
    let id = unique();
    let mut config = Config::load(None).expect("config from environment");
    config.kafka.client_id = format!("test-{name}-{id}");
    // Lag is read from librdkafka's statistics: often, so the test is quick.
    config.kafka.statistics_interval_ms = 200;
    // The topic's history (other tests, earlier runs) is not this test's: a fresh
    // group starts at the end. Not at a time: tansu answers a time with the start
    // of the batch holding it, so a few earlier records would count too.
    config.kafka.new_group_start = "latest".into();
    config.sinks.mongo.database = format!("t_{name}_{id}").replace('-', "_");
    config.sinks.batch.max_wait_ms = 5;
    config.metrics.listen = format!("127.0.0.1:{}", free_port());
    (config, id)
}

struct Scrape {
    http: reqwest::Client,
    base: String,
}

impl Scrape {
    fn new(config: &Config) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}", config.metrics.listen),
        }
    }

    /// (status, body) of a GET, or None while nothing listens.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Every sample of the exposition: series (name and labels) → value.
    async fn samples(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// Records fetched by the role from every topic it reads.
fn records_in_all(samples: &BTreeMap<String, f64>) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with(&format!("coexist_records_in_total{{role=\"{ROLE}\""))
        })
        .map(|(_, n)| n)
        .sum()
}

fn records_in(samples: &BTreeMap<String, f64>) -> f64 {
    value(
        samples,
        &format!(
            "coexist_records_in_total{{role=\"{ROLE}\",topic=\"{}\"}}",
            topics::WHATSAPP_EVENTS
        ),
    )
}

/// The lag of each partition of `whatsapp.events` this role reports.
fn events_lag(samples: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let prefix = format!(
        "coexist_consumer_lag{{role=\"{ROLE}\",topic=\"{}\",partition=",
        topics::WHATSAPP_EVENTS
    );
    samples
        .iter()
        .filter(|(series, _)| series.starts_with(&prefix))
        .map(|(series, lag)| (series.clone(), *lag))
        .collect()
}

/// Every partition of `whatsapp.events` reported, every partition of any topic at
/// lag 0, and every record fetched (of any topic) written or dead-lettered: a batch
/// still being written would otherwise land between two samples.
fn caught_up(samples: &BTreeMap<String, f64>, partitions: usize) -> bool {
    let lag = events_lag(samples);
    let fetched: f64 = samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with(&format!("coexist_records_in_total{{role=\"{ROLE}\""))
        })
        .map(|(_, n)| n)
        .sum();
    let done = value(
        samples,
        &format!("coexist_records_out_total{{role=\"{ROLE}\"}}"),
    ) + value(
        samples,
        &format!("coexist_deadletters_total{{role=\"{ROLE}\"}}"),
    );
    // Every topic the sink reads at lag 0 too, not only `whatsapp.events`: a backlog
    // of earlier tests' assignments or results still being read would otherwise be
    // counted as this test's records out.
    let every_topic_caught_up = samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with(&format!("coexist_consumer_lag{{role=\"{ROLE}\","))
        })
        .all(|(_, &l)| l == 0.0);
    lag.len() == partitions
        && lag.values().all(|&l| l == 0.0)
        && every_topic_caught_up
        && fetched == done
}

/// The first sample in which the sink is [`caught_up`], within `limit`.
async fn caught_up_sample(
    scrape: &Scrape,
    partitions: usize,
    limit: Duration,
) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let samples = scrape.samples().await;
        if caught_up(&samples, partitions) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink never caught up in {limit:?}: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the sink's group stands on `whatsapp.events`, per partition: the offsets
/// it committed, read from the broker.
type Offsets = BTreeMap<i32, i64>;

/// A [`caught_up`] sample together with the group's committed offsets that match
/// it: taken between two identical scrapes, and only when the commits have reached
/// every high watermark, so no record is counted in one and not the other.
async fn caught_up_at(
    scrape: &Scrape,
    config: &Config,
    partitions: usize,
    limit: Duration,
) -> (BTreeMap<String, f64>, Offsets) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let first = caught_up_sample(scrape, partitions, limit).await;
        let (committed, high) = committed_and_high(config, partitions).await;
        let second = scrape.samples().await;
        let counted = |s: &BTreeMap<String, f64>| (records_in_all(s), records_in(s));
        // A partition the group never read from has no commit: the group starts
        // there at the high watermark (`latest`), and [`caught_up`] says it is there.
        let position: Offsets = committed
            .iter()
            .map(|(&p, &offset)| (p, if offset < 0 { high[&p] } else { offset }))
            .collect();
        if counted(&first) == counted(&second) && position == high {
            return (first, position);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample matched the committed offsets in {limit:?}: {position:?} against {high:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sink group's committed offsets and the high watermarks, per partition of
/// `whatsapp.events` (a partition with nothing committed reads -1).
async fn committed_and_high(config: &Config, partitions: usize) -> (Offsets, Offsets) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let group = config.kafka.group_id(ROLE);
    let kafka = config.kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions as i32 {
            list.add_partition(topics::WHATSAPP_EVENTS, p);
        }
        let timeout = Duration::from_secs(10);
        let committed = consumer.committed_offsets(list, timeout).unwrap();
        let committed = committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
            .collect();
        let high = (0..partitions as i32)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topics::WHATSAPP_EVENTS, p, timeout)
                    .unwrap();
                (p, high)
            })
            .collect();
        (committed, high)
    })
    .await
    .unwrap()
}

/// The keys of the records of `whatsapp.events` from `from` up to `to`, per
/// partition: what the sink's group read between two of its commits.
async fn keys_between(config: &Config, from: &Offsets, to: &Offsets) -> Vec<String> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let kafka = config.kafka.clone();
    let (from, to) = (from.clone(), to.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .client()
            .set("group.id", format!("metrics-reader-{}", unique()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for (&p, &start) in &from {
            if to[&p] > start {
                list.add_partition_offset(
                    topics::WHATSAPP_EVENTS,
                    p,
                    rdkafka::Offset::Offset(start),
                )
                .unwrap();
            }
        }
        let mut keys = Vec::new();
        let mut left: BTreeMap<i32, i64> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), to[&e.partition()]))
            .collect();
        if left.is_empty() {
            return keys;
        }
        consumer.assign(&list).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !left.is_empty() {
            assert!(std::time::Instant::now() < deadline, "unread: {left:?}");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.unwrap();
            let Some(&end) = left.get(&message.partition()) else {
                continue;
            };
            if message.offset() < end {
                keys.push(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
            }
            if message.offset() + 1 >= end {
                left.remove(&message.partition());
            }
        }
        keys
    })
    .await
    .unwrap()
}

fn message(org: &str, number: &str, i: usize) -> WhatsAppEvent {
    let contact = format!("1555{i:07}");
    let wamid = format!("wamid.metrics.{number}.{i}");
    MessageEvent::builder(org, number, &contact, &wamid)
        .sent_at(now_ms() / 1000)
        .received_at_ms(now_ms())
        .preview("hi")
        .event()
}

/// An event the broker's schema accepts (it is an integer, and the schema does not
/// bound it) but the sink cannot read (it does not fit an i64): a dead letter.
/// Plain garbage would not do, the local broker refuses records off-schema.
fn undecodable(event: &WhatsAppEvent) -> Vec<u8> {
    let mut value = serde_json::to_value(event).unwrap();
    value["received_at_ms"] = serde_json::json!(0);
    value
        .to_string()
        .replace(
            "\"received_at_ms\":0",
            "\"received_at_ms\":100000000000000000000",
        )
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_reports_exact_counts_dead_letters_and_lag_back_to_zero() {
    const FED: usize = 25;
    let (config, id) = config("metrics");
    let contract = coexist::topics::contract().unwrap();
    coexist::topics::apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    let partitions = contract
        .topics
        .iter()
        .find(|t| t.name == topics::WHATSAPP_EVENTS)
        .map(|t| t.partitions as usize)
        .unwrap();
    let scrape = Scrape::new(&config);
    let _sink = RoleProcess::sink_mongo(&config);

    wait_for("/healthz 200", Duration::from_secs(30), || async {
        scrape.get("/healthz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    wait_for(
        "/readyz 200 (store connected, partitions assigned)",
        Duration::from_secs(60),
        || async { scrape.get("/readyz").await.is_some_and(|(s, _)| s == 200) },
    )
    .await;
    // A new group starts at the end of the topic (`latest`), but earlier tests may
    // have left records on the other topics the sink reads: let it finish them, then
    // count from the very sample that said so, with the commits it stands at.
    let (before, committed_before) =
        caught_up_at(&scrape, &config, partitions, Duration::from_secs(90)).await;
    let out_series = format!("coexist_records_out_total{{role=\"{ROLE}\"}}");
    let dead_series = format!("coexist_deadletters_total{{role=\"{ROLE}\"}}");

    let org = format!("metrics-{id}");
    let number = format!("8{id}");
    let publisher = config.kafka.publisher("metrics-test").await.unwrap();
    for i in 0..FED {
        publisher
            .send_json(
                topics::WHATSAPP_EVENTS,
                &number,
                &message(&org, &number, i),
                vec![],
            )
            .await
            .unwrap();
    }
    publisher
        .send(Outgoing {
            topic: topics::WHATSAPP_EVENTS,
            key: &number,
            value: undecodable(&message(&org, &number, FED)),
            headers: vec![],
        })
        .await
        .unwrap();

    // Counted when fetched, so wait for the work itself (written, dead-lettered)...
    wait_for(
        "every fed record written or dead-lettered",
        Duration::from_secs(60),
        || async {
            let now = scrape.samples().await;
            value(&now, &out_series) - value(&before, &out_series) >= FED as f64
                && value(&now, &dead_series) > value(&before, &dead_series)
        },
    )
    .await;
    // ...then for the committed offsets to reach the watermarks in the statistics.
    let (after, committed_after) =
        caught_up_at(&scrape, &config, partitions, Duration::from_secs(60)).await;
    // The topic is shared: another writer's record in the window is read too. So
    // the count is held to the log between the group's two commits, and the fed
    // records must be in that window exactly once.
    let window = keys_between(&config, &committed_before, &committed_after).await;
    let fed_in_window = window.iter().filter(|key| **key == number).count();
    assert_eq!(
        fed_in_window,
        FED + 1,
        "the fed records, the bad one too, committed past exactly once: {window:?}"
    );
    assert_eq!(
        records_in(&after) - records_in(&before),
        window.len() as f64,
        "records in: every record between the two commits, exactly once: {window:?}"
    );
    // Out counts every topic the sink writes from, and a fresh group may still be
    // reading earlier tests' records of the other topics (their lag is not reported
    // until librdkafka has fetched them): so every record fetched in the window is
    // written or dead-lettered, exactly once, and the fed ones are among the written.
    let out = value(&after, &out_series) - value(&before, &out_series);
    let dead = value(&after, &dead_series) - value(&before, &dead_series);
    assert_eq!(
        out + dead,
        records_in_all(&after) - records_in_all(&before),
        "records out and dead letters: every record fetched, exactly once"
    );
    assert!(
        out >= FED as f64,
        "records out: at least the written ones ({out})"
    );
    assert_eq!(
        value(&after, &dead_series) - value(&before, &dead_series),
        1.0,
        "dead letters"
    );
    let batches = format!("coexist_batch_records_count{{role=\"{ROLE}\"}}");
    let writes = format!("coexist_batch_write_seconds_count{{role=\"{ROLE}\"}}");
    assert!(value(&after, &batches) > value(&before, &batches));
    assert!(value(&after, &writes) > value(&before, &writes));
    let db = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose())
        .await
        .unwrap()
        .database(&config.sinks.mongo.database);
    let written = db
        .collection::<mongodb::bson::Document>("messages")
        .count_documents(doc! { "org": &org })
        .await
        .unwrap();
    assert_eq!(written, FED as u64, "the counters agree with the store");
    let (status, body) = scrape.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let _ = db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_store_is_unreachable_is_alive_but_not_ready() {
    let (mut config, _) = config("unready");
    // Nothing listens there.
    config.sinks.mongo.uri = runtime::Secret::new(format!(
        "mongodb://127.0.0.1:{}/?serverSelectionTimeoutMS=300",
        free_port()
    ));
    let scrape = Scrape::new(&config);
    let _sink = RoleProcess::sink_mongo(&config);
    wait_for("/healthz 200", Duration::from_secs(30), || async {
        scrape.get("/healthz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    // Past the first failed connection, so the reason is the store's error.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = scrape.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false, "{body}");
    let not_ready = report["not_ready"].as_object().unwrap();
    assert!(not_ready.contains_key("sink-mongo.mongodb"), "{body}");
    assert!(not_ready.contains_key("sink-mongo.consumer"), "{body}");
    let (status, text) = scrape.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    // Nothing consumed, so no series yet; the exposition is still well formed.
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}
