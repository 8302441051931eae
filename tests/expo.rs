//! The expo sink against the real broker and MongoDB, and the Expo simulator
//! in-process on a free port: one push per device and notification, chunks of at
//! most 100, unregistered tokens removed (ticket and receipt) by a change on
//! `directory.changes`, 429/5xx retried, and end to end, an inbound message for an
//! agent with no online device ends as a push. Tokens are registered the way the API
//! does it: a `PushTokenRegistered` change on `directory.changes`.

mod support;
use support::now_ms;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use coexist::Config;
use coexist::roles::SinkName;
use coexist::simulate::expo::SentRequest;
use events::delivery::PushNotification;
use events::inbox::{PresenceEvent, PresenceState};
use events::topics;
use mongodb::bson::{Document, doc};
use processors::router::{AgentConfig, Policy};
use serde_json::{Value, json};
use support::{APP_SECRET, Pipeline, unique, wait_for};
use tokio_util::sync::CancellationToken;

/// One expo sink at a time: every sink follows the one directory and reads every
/// org's notifications (as in production), so two tests' sinks would both push a
/// notification, and one's `DeviceNotRegistered` would remove the token before the
/// other's ticket.
static ONE_SINK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Expo stand-in on a free port; returns its base URL.
async fn start_simulator(config: &Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = coexist::simulate::expo::router(config);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn fast_expo(config: &mut Config, base_url: &str) {
    let expo = &mut config.sinks.expo;
    expo.base_url = base_url.to_string();
    expo.receipt_delay_ms = 0;
    expo.receipt_poll_ms = 200;
    expo.retry_initial_ms = 100;
}

/// The expo sink alone, with its own group and database.
struct Scenario {
    org: String,
    sim: String,
    http: reqwest::Client,
    db: mongodb::Database,
    publisher: runtime::Publisher,
    shutdown: CancellationToken,
    sink: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Scenario {
    async fn start(name: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .try_init();
        let id = unique();
        let mut config = Config::load(None).unwrap();
        config.kafka.client_id = format!("test-expo-{name}-{id}");
        config.kafka.new_group_start = now_ms().to_string();
        config.sinks.mongo.database = format!("t_expo_{name}_{id}");
        config.sinks.batch.max_wait_ms = 5;
        let sim = start_simulator(&config).await;
        fast_expo(&mut config, &sim);
        coexist::topics::apply(
            &config.kafka,
            &coexist::topics::contract().unwrap(),
            &config.topics,
        )
        .await
        .unwrap();
        let db = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose())
            .await
            .unwrap()
            .database(&config.sinks.mongo.database);
        let publisher = config.kafka.publisher("expo-test").await.unwrap();
        let shutdown = CancellationToken::new();
        let (c, s) = (config.clone(), shutdown.clone());
        let sink = tokio::spawn(async move { coexist::roles::sink(&c, SinkName::Expo, s).await });
        Self {
            org: format!("{name}-{id}"),
            sim,
            http: reqwest::Client::new(),
            db,
            publisher,
            shutdown,
            sink: Some(sink),
        }
    }

    async fn register(&self, agent: &str, token: &str) {
        register(&self.publisher, &self.org, agent, token).await;
    }

    async fn notify(&self, id: &str, agent: &str) {
        self.notify_at(id, agent, now_ms()).await;
    }

    async fn notify_at(&self, id: &str, agent: &str, at_ms: i64) {
        let n = PushNotification {
            id: id.into(),
            org: self.org.clone(),
            agent_id: agent.into(),
            title: "Sheena Nelson".into(),
            body: "Is my order on its way?".into(),
            conversation_id: format!("conv-{agent}"),
            at_ms,
        };
        self.publisher
            .send_json(topics::NOTIFICATIONS_PUSH, agent, &n, vec![])
            .await
            .unwrap();
    }

    /// What this scenario's simulator received, of this scenario's tokens only:
    /// every test's sink follows the one directory and reads every org's
    /// notifications (as in production), so other tests' pushes land here too.
    async fn sent(&self) -> Vec<SentRequest> {
        let suffix = format!("-{}]", self.org);
        sent(&self.http, &self.sim)
            .await
            .into_iter()
            .filter_map(|mut r| {
                r.messages
                    .retain(|m| m["to"].as_str().is_some_and(|t| t.ends_with(&suffix)));
                (!r.messages.is_empty()).then_some(r)
            })
            .collect()
    }

    /// A device token of this scenario: unique to its org.
    fn tok(&self, device: &str) -> String {
        format!("ExponentPushToken[{device}-{}]", self.org)
    }

    /// The agent's live tokens, as the directory (the topic, folded) has them.
    async fn tokens(&self, agent: &str) -> Vec<String> {
        let (org, agent) = (self.org.clone(), agent.to_string());
        let kafka = Config::load(None).unwrap().kafka;
        tokio::task::spawn_blocking(move || {
            let (records, _) = runtime::table::read_records(
                &kafka,
                topics::DIRECTORY_CHANGES,
                None,
                "test-expo-tokens",
            )
            .unwrap();
            let mut directory = events::directory::Directory::new();
            for r in records {
                if let Ok(change) = events::codec::decode(&r.value) {
                    let stamp = events::directory::Stamp::new(0, r.partition, r.offset);
                    directory.apply(&change, stamp);
                }
            }
            let out: Vec<String> = directory
                .push_tokens(&org, &agent)
                .map(|t| t.token.clone())
                .collect();
            out
        })
        .await
        .unwrap()
    }

    async fn tokens_of(&self, agent: &str) -> u64 {
        self.tokens(agent).await.len() as u64
    }

    async fn ticket(&self, notification: &str, token: &str) -> Option<Document> {
        let key = format!("{}:{notification}:{token}", self.org);
        self.db
            .collection::<Document>("push_tickets")
            .find_one(doc! { "_id": key })
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(sink) = self.sink.take() {
            tokio::time::timeout(Duration::from_secs(30), sink)
                .await
                .expect("expo sink did not stop")
                .unwrap()
                .unwrap();
        }
        let _ = self.db.drop().await;
    }
}

/// Registers a device's token as the API does, then gives the sink's directory
/// follower a moment to see it (a push to a token registered milliseconds earlier
/// may go without it; that is not what these tests are about).
async fn register(publisher: &runtime::Publisher, org: &str, agent: &str, token: &str) {
    publish_registration(publisher, org, agent, token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn publish_registration(publisher: &runtime::Publisher, org: &str, agent: &str, token: &str) {
    let device = token
        .trim_end_matches(']')
        .rsplit('[')
        .next()
        .unwrap_or(token);
    let change = events::directory::DirectoryChange {
        id: format!("register:{org}:{token}"),
        org: org.into(),
        issued_by: "test".into(),
        at_ms: now_ms(),
        change: events::directory::Change::PushTokenRegistered {
            agent_id: agent.into(),
            device_id: device.into(),
            token: token.into(),
            platform: "ios".into(),
        },
    };
    publisher
        .send_json(topics::DIRECTORY_CHANGES, org, &change, vec![])
        .await
        .unwrap();
}

async fn sent(http: &reqwest::Client, sim: &str) -> Vec<SentRequest> {
    http.get(format!("{sim}/_sim/expo/sent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Messages the simulator accepted (HTTP 200), as (token, notification id).
fn delivered(requests: &[SentRequest]) -> Vec<(String, String)> {
    requests
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| &r.messages)
        .map(|m| {
            (
                m["to"].as_str().unwrap_or_default().to_string(),
                m["data"]["notification_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn counts(pairs: &[(String, String)]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for pair in pairs {
        *counts.entry(pair.clone()).or_default() += 1;
    }
    counts
}

async fn wait_delivered(s: &Scenario, what: &str, done: impl Fn(&[(String, String)]) -> bool) {
    wait_for(what, Duration::from_secs(60), || async {
        done(&delivered(&s.sent().await))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_of_one_agent_each_get_one_push_per_notification() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let s = Scenario::start("devices").await;
    let (phone, tablet) = (s.tok("ann-phone"), s.tok("ann-tablet"));
    s.register("ann", &phone).await;
    s.register("ann", &tablet).await;
    s.notify("n1", "ann").await;
    s.notify("n2", "ann").await;
    wait_delivered(&s, "n1 and n2 on both devices", |d| d.len() >= 4).await;
    // Redelivered after they were sent (a later batch: only their tickets say so).
    for n in ["n1", "n3", "n2"] {
        s.notify(n, "ann").await;
    }
    s.notify_at("stale", "ann", now_ms() - 3_600_000).await; // old news: dropped
    s.notify("marker", "ann").await; // same key, same partition: handled after the others
    wait_delivered(&s, "the marker on both devices", |d| {
        d.iter().filter(|(_, n)| n == "marker").count() == 2
    })
    .await;
    let requests = s.sent().await;
    let delivered = delivered(&requests);
    let per_pair = counts(&delivered);
    assert_eq!(per_pair.len(), 8, "{per_pair:?}");
    assert!(!delivered.iter().any(|(_, n)| n == "stale"), "{per_pair:?}");
    assert!(per_pair.values().all(|&n| n == 1), "{per_pair:?}");
    let message = requests
        .iter()
        .flat_map(|r| &r.messages)
        .find(|m| m["to"] == phone)
        .unwrap();
    assert_eq!(message["title"], "Sheena Nelson");
    assert_eq!(message["data"]["conversation_id"], "conv-ann");
    assert_eq!(message["sound"], "default");
    assert_eq!(message["priority"], "high");
    // Every ticket recorded, then its receipt.
    for n in ["n1", "n2", "n3", "marker"] {
        for token in [&phone, &tablet] {
            let ticket = s.ticket(n, token).await.expect("ticket recorded");
            assert_eq!(ticket.get_str("status").unwrap(), "ok");
        }
    }
    wait_for("receipts", Duration::from_secs(30), || async {
        s.db.collection::<Document>("push_tickets")
            .count_documents(doc! { "org": &s.org, "receipt_status": "ok" })
            .await
            .unwrap()
            == 8
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_for_250_agents_go_out_in_chunks_of_at_most_100() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let s = Scenario::start("chunks").await;
    let agents: Vec<String> = (0..250).map(|i| format!("agent{i:03}")).collect();
    let tokens: Vec<String> = agents.iter().map(|a| s.tok(a)).collect();
    let registrations = agents
        .iter()
        .zip(&tokens)
        .map(|(a, token)| publish_registration(&s.publisher, &s.org, a, token));
    futures::future::join_all(registrations).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let sends = agents.iter().map(|a| s.notify("n1", a));
    futures::future::join_all(sends).await;
    wait_delivered(&s, "250 pushes", |d| d.len() >= 250).await;
    let elapsed = started.elapsed();
    let requests = s.sent().await;
    let delivered = delivered(&requests);
    assert_eq!(delivered.len(), 250);
    assert_eq!(counts(&delivered).len(), 250, "a token got two pushes");
    let sizes: Vec<usize> = requests.iter().map(|r| r.chunk_size).collect();
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert!(requests.len() >= 3, "{sizes:?}");
    println!(
        "250 pushes in {} requests (chunk sizes {sizes:?}) in {elapsed:?}",
        requests.len()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expo_reports_unregistered_are_removed_by_ticket_and_by_receipt() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let s = Scenario::start("unregistered").await;
    let live = &s.tok("bob-live");
    let gone_now = &s.tok("bob-unregistered-now");
    let gone_later = &s.tok("bob-unregistered-later");
    for token in [live, gone_now, gone_later] {
        s.register("bob", token).await;
    }
    s.register("cy", &s.tok("cy-live")).await;
    s.notify("n1", "bob").await;
    wait_for(
        "both dead tokens removed",
        Duration::from_secs(60),
        || async { s.tokens_of("bob").await == 1 },
    )
    .await;
    assert_eq!(s.tokens("bob").await, vec![live.to_string()]);
    assert_eq!(
        s.tokens_of("cy").await,
        1,
        "another agent's token was touched"
    );
    // The ticket said so for one, the receipt for the other.
    let now = s.ticket("n1", gone_now).await.unwrap();
    assert_eq!(now.get_str("status").unwrap(), "error");
    assert_eq!(now.get_str("error").unwrap(), "DeviceNotRegistered");
    let later = s.ticket("n1", gone_later).await.unwrap();
    assert_eq!(later.get_str("status").unwrap(), "ok");
    assert_eq!(later.get_str("receipt_status").unwrap(), "error");
    assert_eq!(later.get_str("error").unwrap(), "DeviceNotRegistered");
    // The next push goes to the live device only.
    s.notify("n2", "bob").await;
    wait_delivered(&s, "n2", |d| d.iter().any(|(_, n)| n == "n2")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = delivered(&s.sent().await)
        .into_iter()
        .filter(|(_, n)| n == "n2")
        .map(|(t, _)| t)
        .collect();
    assert_eq!(to, vec![live.to_string()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_and_a_503_are_retried_and_each_message_arrives_once() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let s = Scenario::start("retry").await;
    s.register("dee", &s.tok("dee-phone")).await;
    s.register("dee", &s.tok("dee-watch")).await;
    for failure in [
        json!({ "status": 429, "count": 2, "retry_after_s": 1 }),
        json!({ "status": 503, "count": 1 }),
    ] {
        s.http
            .post(format!("{}/_sim/expo/fail", s.sim))
            .json(&failure)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    let started = Instant::now();
    s.notify("n1", "dee").await;
    s.notify("n2", "dee").await;
    wait_delivered(&s, "4 pushes", |d| d.len() >= 4).await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = s.sent().await;
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..3], [429, 429, 503], "{statuses:?}");
    let per_pair = counts(&delivered(&requests));
    assert_eq!(per_pair.len(), 4, "{per_pair:?}");
    assert!(per_pair.values().all(|&n| n == 1), "{per_pair:?}");
    // Two Retry-After: 1 answers were honoured.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inbound_message_for_an_agent_with_no_online_device_ends_as_a_push() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim_config = Config::default();
    let sim = start_simulator(&sim_config).await;
    let agent = format!("ann-{}", unique());
    let p = Pipeline::start_with("push", |config, org| {
        fast_expo(config, &sim);
        // From the start of the topics, so nothing races the group's join; other
        // orgs' backlog finds no tokens in this pipeline's database.
        config.processors.notifier.new_group_starts_at = "earliest".into();
        let router = &mut config.processors.router.router;
        router.default_policy = Policy::LeastLoaded;
        router.offline_grace_ms = 600_000; // offline, the agent keeps the conversation
        router.orgs = BTreeMap::from([(
            org.to_string(),
            vec![AgentConfig {
                agent_id: agent.clone(),
                capacity: 5,
            }],
        )]);
    })
    .await;
    let token = &format!("ExponentPushToken[{agent}-phone]");
    let publisher = p.config.kafka.publisher("expo-e2e").await.unwrap();
    register(&publisher, &p.org, &agent, token).await;
    let presence = |state| PresenceEvent {
        org: p.org.clone(),
        agent_id: agent.clone(),
        device_id: "phone".into(),
        state,
        conversation_id: None,
        at_ms: now_ms(),
    };
    publisher
        .send_json(
            topics::AGENTS_PRESENCE,
            &p.org,
            &presence(PresenceState::Online),
            vec![],
        )
        .await
        .unwrap();

    // Online: the conversation is assigned and reaches the agent's inbox; no push.
    let first = p.fixture("msg_text", "-push-1");
    assert_eq!(p.post(&first, APP_SECRET).await, 200);
    let inbox = format!(
        "{}/{}/agents/{agent}/inbox",
        p.config.mqtt.topic_prefix, p.org
    );
    let conversation_id = format!("{}-16505551234", p.phone_number_id);
    wait_for(
        "the assignment in the inbox",
        Duration::from_secs(90),
        || async {
            p.mqtt.messages().iter().any(|(t, payload)| {
                t == &inbox
                    && payload.contains("\"assigned\"")
                    && payload.contains(&conversation_id)
            })
        },
    )
    .await;

    // Offline: the customer writes again; the message reaches the inbox (for when a
    // device reconnects) and the phone gets a push.
    publisher
        .send_json(
            topics::AGENTS_PRESENCE,
            &p.org,
            &presence(PresenceState::Offline),
            vec![],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await; // the notifier sees presence live
    let second = p.fixture("msg_text", "-push-2");
    let wamid = support::first_wamid(&second);
    assert_eq!(p.post(&second, APP_SECRET).await, 200);
    let http = reqwest::Client::new();
    wait_for(
        "a push at the simulator",
        Duration::from_secs(90),
        || async {
            delivered(&sent(&http, &sim).await)
                .iter()
                .any(|(to, _)| to == token)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = sent(&http, &sim).await;
    // Other tests' pushes reach this sink too (one directory, every org's
    // notifications, as in production): this agent's are what count.
    let messages: Vec<&Value> = requests
        .iter()
        .flat_map(|r| &r.messages)
        .filter(|m| m["to"] == token.as_str())
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["to"], token.as_str());
    assert_eq!(
        messages[0]["data"]["conversation_id"],
        conversation_id.as_str()
    );
    // The message's push ("Sheena Nelson"), or, when the notifier (reading from the
    // start) saw the agent offline before the assignment, the assignment's push; the
    // collapse window makes it one either way.
    let title = messages[0]["title"].as_str().unwrap_or_default();
    assert!(
        ["Sheena Nelson", "New conversation"].contains(&title),
        "{title}"
    );
    let in_inbox: HashMap<String, usize> = p
        .mqtt
        .messages()
        .iter()
        .filter(|(_, payload)| payload.contains(&wamid))
        .fold(HashMap::new(), |mut m, (t, _)| {
            *m.entry(t.clone()).or_default() += 1;
            m
        });
    assert_eq!(in_inbox.get(&inbox), Some(&1), "{in_inbox:?}");
    assert_eq!(
        in_inbox.get(&p.conversation_topic()),
        Some(&1),
        "{in_inbox:?}"
    );
    p.stop().await;
}
