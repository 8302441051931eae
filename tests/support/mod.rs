//! A running pipeline for integration tests: `coexist all` in-process against the
//! real local stack (scripts/stack), isolated per test by its own org, business
//! number, consumer groups, MongoDB database and ClickHouse database.

#![allow(dead_code)]

pub mod router;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coexist::Config;
use mongodb::bson::{Document, doc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const APP_SECRET: &str = "integration-test-app-secret";

pub struct Pipeline {
    pub config: Config,
    pub org: String,
    pub phone_number_id: String,
    pub webhook_url: String,
    pub http: reqwest::Client,
    pub mongo: mongodb::Database,
    pub clickhouse: clickhouse::Client,
    pub mqtt: MqttRecorder,
    /// Stops `coexist all` and deletes this pipeline's databases, even on a panic.
    guard: Guard,
}

/// What a test started, undone when it goes out of scope, whether the test passed or
/// panicked: the roles are stopped (their shutdown signal, then aborted) and the
/// test's own MongoDB and ClickHouse databases are deleted, so a failed test leaves
/// nothing running and nothing behind on the shared stack.
///
/// A test that wants to see its roles end cleanly takes them with [`Guard::take`]
/// and awaits them first; what the guard still holds is cut off.
pub struct Guard {
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// `(uri, database)` to delete.
    mongo: Option<(String, String)>,
    clickhouse: Option<sinks::clickhouse::ClickHouseConfig>,
}

impl Guard {
    /// Whether every task it holds is still running.
    pub fn is_running(&self) -> bool {
        !self.tasks.is_empty() && self.tasks.iter().all(|task| !task.is_finished())
    }

    pub fn new() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            mongo: None,
            clickhouse: None,
        }
    }

    /// Deletes the config's MongoDB database (and ClickHouse's, with `clickhouse`)
    /// at the end. Only for databases the test named for itself.
    pub fn databases(mut self, config: &Config, clickhouse: bool) -> Self {
        self.mongo = Some((
            config.sinks.mongo.uri.expose().to_string(),
            config.sinks.mongo.database.clone(),
        ));
        if clickhouse {
            self.clickhouse = Some(config.sinks.clickhouse.clone());
        }
        self
    }

    /// Runs a role until the guard's shutdown (or its drop).
    pub fn spawn(
        &mut self,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.push(tokio::spawn(role));
    }

    /// The roles started so far, to await after [`CancellationToken::cancel`].
    pub fn take(&mut self) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
        std::mem::take(&mut self.tasks)
    }
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let (mongo, clickhouse) = (self.mongo.take(), self.clickhouse.take());
        if mongo.is_none() && clickhouse.is_none() {
            return;
        }
        // Drop cannot await, and the test's runtime may be the one panicking: the
        // deletes run on a runtime of their own, on a thread of their own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            runtime.block_on(async move {
                if let Some((uri, database)) = mongo
                    && let Ok(client) = mongodb::Client::with_uri_str(&uri).await
                {
                    let _ = client.database(&database).drop().await;
                }
                if let Some(config) = clickhouse {
                    let statement = format!("DROP DATABASE IF EXISTS {}", config.database);
                    let _ = config.client().query(&statement).execute().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// When this test binary first asked for a unique name: every record its tests
/// produce comes later, so readers start there (a second early, for clock steps).
static FIRST_UNIQUE_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

pub fn unique() -> String {
    FIRST_UNIQUE_MS.get_or_init(now_ms);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pipeline {
    /// Starts every role against the stack named by the environment (defaults: the
    /// local stack's ports).
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, |_, _| {}).await
    }

    /// Like [`Self::start`], with `configure(config, org)` applied before the roles
    /// start (e.g. the router's agents for this org, the Expo simulator's URL).
    pub async fn start_with(name: &str, configure: impl FnOnce(&mut Config, &str)) -> Self {
        Self::start_recording(name, configure, Session::Clean).await
    }

    /// Like [`Self::start_with`], its recorder a device with a persistent session, which
    /// keeps its subscription through the MQTT broker's restart (see [`Session`]).
    pub async fn start_durable(name: &str, configure: impl FnOnce(&mut Config, &str)) -> Self {
        Self::start_recording(name, configure, Session::Persistent).await
    }

    async fn start_recording(
        name: &str,
        configure: impl FnOnce(&mut Config, &str),
        session: Session,
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .try_init();
        let id = unique();
        let mut config = Config::load(None).expect("config from environment");
        let org = format!("{name}-{id}");
        let phone_number_id = format!("9{id}");
        config.kafka.client_id = format!("test-{name}-{id}");
        // Its fresh groups read from this moment: the backlog earlier tests left on
        // the shared topics is not this pipeline's, and grew to minutes of reading.
        config.kafka.new_group_start = now_ms().to_string();
        config.ingest.listen = format!("127.0.0.1:{}", free_port());
        config.ingest.app_secrets = vec![runtime::Secret::new(APP_SECRET)];
        config.ingest.numbers = vec![ingest::config::NumberOwner {
            phone_number_id: phone_number_id.clone(),
            org: org.clone(),
        }];
        config.api.listen = format!("127.0.0.1:{}", free_port());
        config.sinks.mongo.database = format!("t_{name}_{id}").replace('-', "_");
        config.sinks.clickhouse.database = format!("t_{name}_{id}").replace('-', "_");
        config.sinks.mqtt.client_id = format!("test-sink-{name}-{id}");
        config.ingest.presence.client_id = format!("test-presence-{name}-{id}");
        // Every test pipeline reads every org's events from the shared topic; its own
        // prefix keeps its publishes apart from another test's (the ACL allows coexist/#).
        config.mqtt.topic_prefix = format!("coexist/t{id}");
        if config.mqtt.password.is_empty() {
            config.mqtt.password = runtime::Secret::new("coexist-dev");
        }
        config.sinks.batch.max_wait_ms = 5;
        configure(&mut config, &org);

        let filter = format!("{}/{org}/#", config.mqtt.topic_prefix);
        let mqtt = MqttRecorder::subscribe_with(&config, &filter, session).await;
        let mut guard = Guard::new().databases(&config, true);
        guard.spawn(coexist::roles::all(config.clone(), guard.shutdown.clone()));
        let webhook_url = format!("http://{}/webhooks/whatsapp", config.ingest.listen);
        let http = reqwest::Client::new();
        let healthz = format!("http://{}/healthz", config.ingest.listen);
        wait_for("ingest to answer", Duration::from_secs(60), || async {
            http.get(&healthz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        let mongo = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose())
            .await
            .unwrap()
            .database(&config.sinks.mongo.database);
        let clickhouse = config.sinks.clickhouse.client();
        Self {
            config,
            org,
            phone_number_id,
            webhook_url,
            http,
            mongo,
            clickhouse,
            mqtt,
            guard,
        }
    }

    /// A webhook body from a fixture, moved onto this test's business number, with
    /// every wamid suffixed so tests never collide.
    pub fn fixture(&self, name: &str, wamid_suffix: &str) -> String {
        let path = format!(
            "{}/events/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let text = text.replace("106540352242922", &self.phone_number_id);
        let mut value: Value = serde_json::from_str(&text).unwrap();
        suffix_wamids(&mut value, wamid_suffix);
        value.to_string()
    }

    /// POSTs `body` signed with `secret`; returns the status code.
    pub async fn post(&self, body: &str, secret: &str) -> u16 {
        let signature = ingest::signature::sign(body.as_bytes(), secret);
        self.http
            .post(&self.webhook_url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The MQTT topic of this test's conversation with the fixtures' contact.
    pub fn conversation_topic(&self) -> String {
        format!(
            "{}/{}/conversations/{}-16505551234",
            self.config.mqtt.topic_prefix, self.org, self.phone_number_id
        )
    }

    pub async fn mongo_count(&self, collection: &str, filter: Document) -> u64 {
        let mut filter = filter;
        filter.insert("org", &self.org);
        self.mongo
            .collection::<Document>(collection)
            .count_documents(filter)
            .await
            .unwrap_or(0)
    }

    pub async fn mongo_find(&self, collection: &str, id: &str) -> Option<Document> {
        let key = format!("{}:{id}", self.org);
        self.mongo
            .collection::<Document>(collection)
            .find_one(doc! { "_id": key })
            .await
            .ok()
            .flatten()
    }

    /// Rows in `message_events` for this org, physically (no FINAL), optionally
    /// restricted to one wamid.
    pub async fn clickhouse_rows(&self, wamid: Option<&str>) -> u64 {
        let mut query = String::from("SELECT count() FROM message_events WHERE org = ?");
        if wamid.is_some() {
            query.push_str(" AND wamid = ?");
        }
        let mut q = self.clickhouse.query(&query).bind(&self.org);
        if let Some(w) = wamid {
            q = q.bind(w);
        }
        q.fetch_one::<u64>().await.unwrap_or(0)
    }

    /// Posts a fresh text message and waits until MongoDB, ClickHouse and MQTT all
    /// have it. Events of one number share a partition and are handled in order, so
    /// everything posted before the marker has then been handled too.
    pub async fn barrier(&self, tag: &str) {
        let body = self.fixture("msg_text", &format!("marker-{tag}"));
        assert_eq!(self.post(&body, APP_SECRET).await, 200);
        let wamid = first_wamid(&body);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mongo = self.mongo_find("messages", &wamid).await.is_some();
            let clickhouse = self.clickhouse_rows(Some(&wamid)).await;
            let mqtt = self.mqtt.count_containing(&wamid);
            if mongo && clickhouse == 1 && mqtt == 1 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "marker {tag} not everywhere after 90 s: mongo={mongo} clickhouse_rows={clickhouse} mqtt={mqtt}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `coexist all` is still running (no role has ended it).
    pub fn is_running(&self) -> bool {
        self.guard.is_running()
    }

    /// Stops the roles and checks they ended cleanly; the databases go with the guard.
    pub async fn stop(mut self) {
        self.guard.shutdown.cancel();
        for task in self.guard.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task).await;
            let result = result
                .expect("pipeline did not stop within 30 s")
                .expect("pipeline panicked");
            result.expect("pipeline failed");
        }
    }
}

/// The id of the first message, echo or status in a body.
pub fn first_wamid(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap();
    let change = &value["entry"][0]["changes"][0]["value"];
    for list in ["messages", "message_echoes", "statuses"] {
        if let Some(id) = change[list][0]["id"].as_str() {
            return id.to_string();
        }
    }
    panic!("no wamid in {body}");
}

fn suffix_wamids(value: &mut Value, suffix: &str) {
    match value {
        Value::String(s) if s.starts_with("wamid.") => s.push_str(suffix),
        Value::Array(items) => items.iter_mut().for_each(|v| suffix_wamids(v, suffix)),
        Value::Object(map) => map.values_mut().for_each(|v| suffix_wamids(v, suffix)),
        _ => {}
    }
}

/// Polls `check` until it holds; panics after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything published on a topic filter, as the broker delivered it.
#[derive(Clone)]
pub struct MqttRecorder {
    received: Arc<Mutex<Vec<(String, String)>>>,
}

/// How a recorder connects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Forgotten by the broker when the connection ends.
    Clean,
    /// Kept by the broker (and its disk) while the recorder is away: subscription
    /// and QoS 1 messages survive the broker's restart, as on an agent's device.
    Persistent,
}

impl MqttRecorder {
    pub async fn subscribe(config: &Config, filter: &str) -> Self {
        Self::subscribe_with(config, filter, Session::Clean).await
    }

    pub async fn subscribe_with(config: &Config, filter: &str, session: Session) -> Self {
        let mqtt = &config.mqtt;
        let mut options = MqttOptions::new(format!("rec-{}", unique()), &mqtt.host, mqtt.port);
        let password = if mqtt.password.is_empty() {
            "coexist-dev"
        } else {
            mqtt.password.expose()
        };
        options
            .set_credentials(&mqtt.username, password)
            .set_max_packet_size(4 << 20, 4 << 20)
            .set_clean_session(session == Session::Clean);
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let sink = received.clone();
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue MQTT subscribe");
        let filter = filter.to_string();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match event_loop.poll().await {
                    // Reconnected without its session (a broker that lost it): the
                    // subscription is made again.
                    Ok(Event::Incoming(Packet::ConnAck(ack)))
                        if !ack.session_present && subscribed_tx.is_none() =>
                    {
                        let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        sink.lock().unwrap().push((p.topic.clone(), payload));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("MQTT subscription not acknowledged in 10 s (is the broker up?)")
            .ok();
        Self { received }
    }

    pub fn messages(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }

    pub fn count_containing(&self, needle: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.contains(needle))
            .count()
    }

    pub fn by_topic(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for (topic, _) in self.messages() {
            *counts.entry(topic).or_default() += 1;
        }
        counts
    }
}

/// Values of the records keyed `key` on `topic`, from the start until one contains
/// `until` (a fresh group each call, so nothing is committed for anyone).
pub async fn read_until(brokers: &str, topic: &str, key: &str, until: &str) -> Vec<String> {
    read_records(brokers, topic, key, until, 1)
        .await
        .into_iter()
        .map(|(value, _)| value)
        .collect()
}

/// Records keyed `key` on `topic` (value and headers), from the start until the
/// `nth` one containing `until`. A `key` ending in `/` matches every key it starts
/// (`agents.presence` is keyed `org/agent/device`: `"{org}/"` reads an org's).
pub async fn read_records(
    brokers: &str,
    topic: &str,
    key: &str,
    until: &str,
    nth: usize,
) -> Vec<(String, Vec<(String, String)>)> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    // Not from the topic's start: the backlog of earlier test runs on the shared
    // broker only grows, and each read would wade through all of it.
    let since = FIRST_UNIQUE_MS.get().map_or(0, |ms| ms - 1000);
    let kafka = runtime::kafka::KafkaConfig {
        brokers: brokers.to_string(),
        client_id: format!("reader-{}", unique()),
        new_group_start: since.to_string(),
        ..Default::default()
    };
    let consumer = kafka.consumer("reader", &[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut found = Vec::new();
    let mut matches = 0;
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{until} never reached {topic}"))
            .unwrap();
        let wanted = match message.key() {
            Some(k) if key.ends_with('/') => k.starts_with(key.as_bytes()),
            k => k == Some(key.as_bytes()),
        };
        if !wanted {
            continue;
        }
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        matches += usize::from(value.contains(until));
        found.push((value, headers));
        if matches == nth {
            return found;
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The Graph API simulator (`coexist simulate serve`'s Graph half), served
/// in-process on a free port, without status callbacks unless `configure` asks.
pub struct GraphSimulator {
    pub url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl GraphSimulator {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::load(None).unwrap();
        config.simulate.graph.callbacks = false;
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let app = coexist::simulate::graph::router(&config);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Self {
            url,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// Every call it accepted for `phone_number_id`.
    pub async fn sent(&self, phone_number_id: &str) -> Vec<coexist::simulate::graph::SentRecord> {
        let all: Vec<coexist::simulate::graph::SentRecord> = self
            .http
            .get(format!("{}/_sim/graph/sent", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.into_iter()
            .filter(|s| s.phone_number_id == phone_number_id)
            .collect()
    }

    /// The next `count` sends fail with `status` and Meta's `code`.
    pub async fn fail_next(&self, count: u32, status: u16, code: i64) {
        let response = self
            .http
            .post(format!("{}/_sim/graph/fail_next", self.url))
            .json(&serde_json::json!({"count": count, "status": status, "code": code}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
}

impl Drop for GraphSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
