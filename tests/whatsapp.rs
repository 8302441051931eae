//! The whatsapp sink against the real broker and the Graph API simulator (in-process
//! on a free port): sends land once with their wamid on `messages.outbound.results`,
//! statuses flow back through ingest and the status processor, the per-number rate
//! holds, throttling is retried, the 24-hour window is enforced, S3 media is uploaded,
//! and a sink killed with SIGKILL mid-burst never sends a command twice.

mod support;
use support::now_ms;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use coexist::Config;
use coexist::roles::SinkName;
use coexist::simulate::graph::SentRecord;
use events::delivery::{OutboundMessage, OutboundResult};
use events::event::MessageEvent;
use events::{ids, topics};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use support::{free_port, unique, wait_for};
use tokio_util::sync::CancellationToken;

/// Every test's sink reads the shared `messages.outbound` backlog in a fresh group;
/// one at a time keeps each burst's rate measurement about its own sends.
static ONE_SINK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "sim-token";
const CUSTOMER: &str = "16505551234";

/// The Graph API simulator, accepting this file's token.
type Simulator = support::GraphSimulator;

async fn simulator(configure: impl FnOnce(&mut Config)) -> Simulator {
    support::GraphSimulator::start(|c| {
        c.simulate.graph.access_tokens = vec![runtime::Secret::new(TOKEN)];
        configure(c);
    })
    .await
}

/// A business number of this test, its config, and a producer.
struct Scenario {
    config: Config,
    org: String,
    number: String,
    publisher: runtime::Publisher,
}

impl Scenario {
    async fn new(name: &str, graph_url: &str) -> Self {
        let id = unique();
        let mut config = Config::load(None).unwrap();
        let org = format!("{name}-{id}");
        let number = format!("8{id}");
        config.kafka.client_id = format!("test-wa-{name}-{id}");
        config.kafka.new_group_start = now_ms().to_string();
        config.graph.base_url = graph_url.to_string();
        config.graph.only_listed_numbers = true;
        config.graph.numbers = vec![sinks::graph::GraphNumber {
            phone_number_id: number.clone(),
            access_token: runtime::Secret::new(TOKEN),
            messages_per_second: 0,
        }];
        config.sinks.batch.max_wait_ms = 5;
        config.sinks.whatsapp.retry_initial_ms = 50;
        coexist::topics::apply(
            &config.kafka,
            &coexist::topics::contract().unwrap(),
            &config.topics,
        )
        .await
        .unwrap();
        let publisher = config.kafka.publisher("whatsapp-test").await.unwrap();
        Self {
            config,
            org,
            number,
            publisher,
        }
    }

    fn command(&self, id: &str, to: &str, payload: Value) -> OutboundMessage {
        OutboundMessage {
            id: id.to_string(),
            org: self.org.clone(),
            phone_number_id: self.number.clone(),
            conversation_id: ids::conversation_id(&self.number, to),
            to: to.to_string(),
            sent_by: "ann".into(),
            at_ms: now_ms(),
            payload,
        }
    }

    async fn send(&self, command: &OutboundMessage) {
        self.publisher
            .send_json(topics::MESSAGES_OUTBOUND, &self.number, command, vec![])
            .await
            .unwrap();
    }

    /// A customer's message on `whatsapp.events`, as ingest would write it.
    async fn customer_writes(&self, contact: &str, sent_at: i64) {
        let wamid = format!("wamid.in.{}", unique());
        let event = MessageEvent::builder(&self.org, &self.number, contact, &wamid)
            .sent_at(sent_at)
            .received_at_ms(now_ms())
            .preview("hi")
            .raw(json!({}))
            .event();
        self.publisher
            .send_json(topics::WHATSAPP_EVENTS, &self.number, &event, vec![])
            .await
            .unwrap();
    }

    /// Runs the sink in this process until the returned token is cancelled.
    fn run_sink(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let shutdown = CancellationToken::new();
        let (config, stop) = (self.config.clone(), shutdown.clone());
        let task =
            tokio::spawn(
                async move { coexist::roles::sink(&config, SinkName::Whatsapp, stop).await },
            );
        (shutdown, task)
    }

    /// Results of this number's commands, by command id, until `done` holds.
    async fn results_until(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<String, Vec<OutboundResult>>) -> bool,
    ) -> BTreeMap<String, Vec<OutboundResult>> {
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.config.kafka.brokers)
            .set("group.id", format!("results-reader-{}", unique()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .unwrap();
        consumer.subscribe(&[topics::OUTBOUND_RESULTS]).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut results: BTreeMap<String, Vec<OutboundResult>> = BTreeMap::new();
        while !done(&results) {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}: {results:#?}"))
                .unwrap();
            if message.key() != Some(self.number.as_bytes()) {
                continue;
            }
            let result: OutboundResult =
                serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            results.entry(result.id.clone()).or_default().push(result);
        }
        results
    }
}

fn text(body: &str) -> Value {
    json!({"type": "text", "text": {"body": body}})
}

fn template() -> Value {
    json!({"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}})
}

/// The login-code template as the API builds it.
fn coexist_api_template(code: &str) -> Value {
    api::routes::auth::auth_template("coexist_login", "en_US", code)
}

fn sends_by_command(sent: &[SentRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in sent {
        *counts
            .entry(s.biz_opaque_callback_data.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_sent_once_and_their_statuses_reach_messages_status_in_any_order() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let ingest = format!("127.0.0.1:{}", free_port());
    // Half the messages get a status twice, half get their statuses newest first.
    let shares = coexist::simulate::graph::plan::Shares {
        duplicated: 0.5,
        out_of_order: 0.5,
        ..Default::default()
    };
    let seed = 7;
    let sim = simulator(|c| {
        c.simulate.graph.callbacks = true;
        c.simulate.graph.status_delay_ms = 50;
        c.simulate.graph.webhook_url = format!("http://{ingest}/webhooks/whatsapp");
        c.simulate.graph.app_secret = runtime::Secret::new(support::APP_SECRET);
        c.simulate.graph.shares = shares.clone();
        c.simulate.graph.seed = seed;
    })
    .await;
    let p = support::Pipeline::start_with("wa-status", |c, _| {
        c.ingest.listen = ingest.clone();
        c.graph.base_url = sim.url.clone();
        // Only this pipeline's number: other tests' commands are not its business.
        c.graph.only_listed_numbers = true;
        c.graph.numbers = vec![sinks::graph::GraphNumber {
            phone_number_id: c.ingest.numbers[0].phone_number_id.clone(),
            access_token: runtime::Secret::new(TOKEN),
            messages_per_second: 0,
        }];
    })
    .await;
    // The customer writes now, through the simulator's signed inbound webhook.
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{}/_sim/graph/inbound", sim.url))
        .json(&json!({"phone_number_id": p.phone_number_id, "from": CUSTOMER, "text": "Where is my order?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inbound = answer["wamid"].as_str().unwrap().to_string();
    wait_for(
        "the customer's message in MongoDB",
        Duration::from_secs(60),
        || async { p.mongo_find("messages", &inbound).await.is_some() },
    )
    .await;

    let publisher = p.config.kafka.publisher("wa-status-test").await.unwrap();
    let run = unique();
    let command_ids: Vec<String> = (0..6).map(|i| format!("cmd-{run}-{i}")).collect();
    for (i, id) in command_ids.iter().enumerate() {
        let command = OutboundMessage {
            id: id.clone(),
            org: p.org.clone(),
            phone_number_id: p.phone_number_id.clone(),
            conversation_id: ids::conversation_id(&p.phone_number_id, CUSTOMER),
            to: CUSTOMER.into(),
            sent_by: "ann".into(),
            at_ms: now_ms(),
            payload: text(&format!("Update #{i}: your order ships today")),
        };
        publisher
            .send_json(
                topics::MESSAGES_OUTBOUND,
                &p.phone_number_id,
                &command,
                vec![],
            )
            .await
            .unwrap();
    }

    let last = command_ids.last().unwrap();
    let results = support::read_until(
        &p.config.kafka.brokers,
        topics::OUTBOUND_RESULTS,
        &p.phone_number_id,
        last,
    )
    .await;
    let results: Vec<OutboundResult> = results
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .filter(|r: &OutboundResult| command_ids.contains(&r.id))
        .collect();
    assert_eq!(
        results.len(),
        command_ids.len(),
        "one result per command: {results:#?}"
    );
    let sent = sim.sent(&p.phone_number_id).await;
    assert!(
        sends_by_command(&sent).values().all(|n| *n == 1),
        "{sent:#?}"
    );
    assert_eq!(sent.len(), command_ids.len());

    let mut reordered = 0;
    for result in &results {
        assert_eq!(result.error, None, "{result:?}");
        let wamid = result.wamid.clone().expect("a wamid");
        assert!(
            sent.iter()
                .any(|s| s.wamid.as_deref() == Some(wamid.as_str())
                    && s.biz_opaque_callback_data.as_deref() == Some(result.id.as_str()))
        );
        // The statuses came back signed through ingest; the status processor made
        // each transition once and only forward, whatever order they arrived in.
        let statuses = support::read_until(
            &p.config.kafka.brokers,
            topics::MESSAGES_STATUS,
            &p.phone_number_id,
            &format!("{wamid}:read"),
        )
        .await;
        let reached: Vec<String> = statuses
            .iter()
            .filter(|s| s.contains(&wamid))
            .map(|s| {
                serde_json::from_str::<Value>(s).unwrap()["to"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let unique_steps: BTreeSet<&String> = reached.iter().collect();
        assert_eq!(
            unique_steps.len(),
            reached.len(),
            "each transition once: {reached:?}"
        );
        let plan = coexist::simulate::graph::plan::statuses(seed, &wamid, &shares);
        if plan.first() == Some(&"sent") {
            assert!(
                reached.contains(&"delivered".to_string()),
                "{plan:?} → {reached:?}"
            );
        } else {
            reordered += 1;
            assert!(
                !reached.contains(&"delivered".to_string()),
                "read came first: {plan:?} → {reached:?}"
            );
        }
        wait_for(
            "the message read in MongoDB",
            Duration::from_secs(60),
            || async {
                p.mongo_find("messages", &wamid)
                    .await
                    .is_some_and(|m| m.get_str("status") == Ok("read"))
            },
        )
        .await;
    }
    println!(
        "statuses: {} messages, {reordered} with statuses newest first",
        results.len()
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_number_never_exceeds_its_rate() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim = simulator(|_| {}).await;
    let s = Scenario::new("rate", &sim.url).await;
    let rate = s.config.sinks.whatsapp.messages_per_second as usize; // 80, burst 1
    let burst = 4 * rate;
    let (stop, task) = s.run_sink();
    // Many customers: one conversation sends in order, so only a spread burst can
    // press against the number's limit.
    let commands: Vec<OutboundMessage> = (0..burst)
        .map(|i| {
            let to = format!("1650555{:04}", i % 40);
            s.command(&format!("rate-{}-{i}", s.number), &to, template())
        })
        .collect();
    for command in &commands {
        s.send(command).await;
    }
    s.results_until("every result of the burst", |r| r.len() == burst)
        .await;
    let sent = sim.sent(&s.number).await;
    assert_eq!(sent.len(), burst);
    assert!(sends_by_command(&sent).values().all(|n| *n == 1));
    let mut times: Vec<i64> = sent.iter().map(|s| s.received_at_ms).collect();
    times.sort_unstable();
    let most_in_a_second = times
        .iter()
        .enumerate()
        .map(|(i, t)| times[i..].iter().take_while(|u| **u < t + 1000).count())
        .max()
        .unwrap();
    let span = times[times.len() - 1] - times[0];
    println!(
        "rate: {burst} sends in {span} ms = {:.1}/s; most in any 1 s window: {most_in_a_second} (limit {rate}, burst 1)",
        (burst as f64 - 1.0) * 1000.0 / span as f64
    );
    // Sends are spaced 1/rate apart; HTTP jitter may let one extra land in a window.
    assert!(
        most_in_a_second <= rate + 1,
        "{most_in_a_second} in one second"
    );
    assert!(
        span as usize >= (burst - rate - 1) * 1000 / rate,
        "too fast: {span} ms"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_the_message_goes_out_once() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim = simulator(|_| {}).await;
    let s = Scenario::new("throttle", &sim.url).await;
    sim.fail_next(2, 429, 130429).await;
    sim.fail_next(1, 429, 131056).await;
    let (stop, task) = s.run_sink();
    let command = s.command(&format!("thr-{}", s.number), CUSTOMER, template());
    let started = std::time::Instant::now();
    s.send(&command).await;
    let results = s
        .results_until("the throttled command's result", |r| {
            r.contains_key(&command.id)
        })
        .await;
    let result = &results[&command.id];
    assert_eq!(result.len(), 1);
    assert!(
        result[0].error.is_none() && result[0].wamid.is_some(),
        "{result:?}"
    );
    // Three refusals: 50 + 100 + 200 ms of backoff at least.
    assert!(started.elapsed() >= Duration::from_millis(350));
    let sent = sim.sent(&s.number).await;
    assert_eq!(sends_by_command(&sent).get(&command.id), Some(&1));
    assert_eq!(sent.len(), 1);

    // Throttled beyond max_attempts: answered with Meta's error, not sent.
    sim.fail_next(s.config.sinks.whatsapp.max_attempts, 429, 130429)
        .await;
    let given_up = s.command(&format!("thr2-{}", s.number), CUSTOMER, template());
    s.send(&given_up).await;
    let results = s
        .results_until("the given-up command's result", |r| {
            r.contains_key(&given_up.id)
        })
        .await;
    let error = results[&given_up.id][0]
        .error
        .clone()
        .expect("Meta's error");
    assert_eq!(error.code, 130429);
    assert_eq!(sim.sent(&s.number).await.len(), 1);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_form_outside_the_window_is_refused_while_templates_go_out() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim = simulator(|_| {}).await;
    let s = Scenario::new("window", &sim.url).await;
    let (recent, stale, stranger) = ("16505550001", "16505550002", "16505550003");
    s.customer_writes(recent, now_ms() / 1000 - 3600).await;
    s.customer_writes(stale, now_ms() / 1000 - 25 * 3600).await;
    let (stop, task) = s.run_sink();
    let id = |name: &str| format!("{name}-{}", s.number);
    // A login code, sealed as the API seals it: a template, so it goes out with the
    // window closed, and it is opened only for the Graph API call.
    let code_template = coexist_api_template("482913");
    let sealer = runtime::seal::Sealer::from_config(&s.config.sealing).unwrap();
    let sealed_code =
        events::outbound::OutboundPayload::sealed(sealer.seal(&code_template.to_string()))
            .to_value();
    let foreign = runtime::seal::Sealer::new(&[("other".into(), vec![9; 32])]).unwrap();
    let foreign_code =
        events::outbound::OutboundPayload::sealed(foreign.seal(&code_template.to_string()))
            .to_value();
    let commands = [
        s.command(&id("sealed-code"), stranger, sealed_code),
        s.command(&id("foreign-seal"), stranger, foreign_code),
        s.command(&id("recent-text"), recent, text("Sure, done")),
        s.command(&id("stale-text"), stale, text("Are you there?")),
        s.command(&id("stale-template"), stale, template()),
        s.command(&id("stranger-text"), stranger, text("Hello")),
        s.command(
            &id("sync"),
            "",
            json!({"type": "smb_app_data", "sync_type": "history"}),
        ),
        s.command(
            &id("bad"),
            recent,
            json!({"type": "image", "image": {"s3_key": "another-org/abc"}}),
        ),
    ];
    for command in &commands {
        s.send(command).await;
    }
    let results = s
        .results_until("every window decision", |r| r.len() == commands.len())
        .await;
    let error = |name: &str| results[&id(name)][0].error.clone();
    assert!(error("recent-text").is_none(), "{:?}", error("recent-text"));
    assert!(error("stale-template").is_none());
    assert!(error("sync").is_none());
    for refused in ["stale-text", "stranger-text"] {
        let e = error(refused).expect("refused");
        assert_eq!(e.code, 131047);
        let details = e.error_data.unwrap()["details"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            details.contains("24-hour customer service window") && details.contains("template"),
            "{details}"
        );
    }
    let bad = error("bad").expect("refused");
    assert_eq!(bad.code, 100);
    assert_eq!(error("foreign-seal").expect("refused").code, 100);
    assert!(error("sealed-code").is_none(), "{:?}", error("sealed-code"));
    // The result says nothing of the code.
    let sealed_result = serde_json::to_string(&results[&id("sealed-code")][0]).unwrap();
    assert!(!sealed_result.contains("482913"), "{sealed_result}");
    let sent = sim.sent(&s.number).await;
    let sent_ids: BTreeSet<String> = sent
        .iter()
        .filter_map(|s| s.biz_opaque_callback_data.clone())
        .collect();
    assert_eq!(
        sent_ids,
        BTreeSet::from([id("recent-text"), id("stale-template"), id("sealed-code")])
    );
    let code_sent = sent
        .iter()
        .find(|r| r.biz_opaque_callback_data.as_deref() == Some(&id("sealed-code")))
        .unwrap();
    assert_eq!(code_sent.kind, "template");
    assert_eq!(
        code_sent.body["template"]["components"][0]["parameters"][0]["text"],
        "482913"
    );
    let sync: Vec<&SentRecord> = sent.iter().filter(|s| s.edge == "smb_app_data").collect();
    assert_eq!(sync.len(), 1);
    assert_eq!(sync[0].kind, "history");
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_in_s3_is_uploaded_and_sent_by_id() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim = simulator(|_| {}).await;
    let s = Scenario::new("upload", &sim.url).await;
    let s3 = s.config.s3.client();
    s.config.s3.ensure_bucket(&s3).await.unwrap();
    let bytes = format!("a PNG of {}", s.number).into_bytes();
    let key = format!("{}/{}", s.org, unique());
    s3.put_object()
        .bucket(&s.config.s3.bucket)
        .key(&key)
        .content_type("image/png")
        .body(bytes.clone().into())
        .send()
        .await
        .unwrap();
    let (stop, task) = s.run_sink();
    let command = s.command(
        &format!("media-{}", s.number),
        CUSTOMER,
        json!({"type": "image", "image": {"s3_key": key, "caption": "the receipt"}}),
    );
    s.customer_writes(CUSTOMER, now_ms() / 1000).await;
    s.send(&command).await;
    let results = s
        .results_until("the media command's result", |r| {
            r.contains_key(&command.id)
        })
        .await;
    assert!(results[&command.id][0].error.is_none(), "{results:?}");
    let sent = sim.sent(&s.number).await;
    assert_eq!(sent.len(), 1);
    let image = &sent[0].body["image"];
    assert_eq!(image["caption"], "the receipt");
    assert!(image.get("s3_key").is_none(), "{image}");
    let media_id = image["id"].as_str().expect("sent by media id");
    // The simulator now serves the uploaded bytes under that id.
    let http = reqwest::Client::new();
    let info: Value = http
        .get(format!("{}/v23.0/{media_id}", sim.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["mime_type"], "image/png");
    let downloaded = http
        .get(info["url"].as_str().unwrap())
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(downloaded.to_vec(), bytes);
    stop.cancel();
    task.await.unwrap().unwrap();
}

struct SinkProcess(std::process::Child);

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_mid_burst_never_sends_a_command_twice() {
    let _turn = ONE_SINK_AT_A_TIME.lock().await;
    let sim = simulator(|_| {}).await;
    let mut s = Scenario::new("sigkill", &sim.url).await;
    s.config.sinks.whatsapp.messages_per_second = 40;
    const BURST: usize = 200;
    let file = std::env::temp_dir().join(format!("coexist-wa-{}.toml", unique()));
    std::fs::write(&file, toml::to_string(&s.config).unwrap()).unwrap();
    let start = || {
        SinkProcess(
            std::process::Command::new(env!("CARGO_BIN_EXE_coexist"))
                .args(["-c", file.to_str().unwrap(), "sink", "whatsapp"])
                .env("COEXIST_LOG_LEVEL", "warn")
                // Several at once, and beside other worktrees: no fixed metrics port.
                .env("COEXIST_METRICS_LISTEN", "127.0.0.1:0")
                .spawn()
                .expect("start coexist sink whatsapp"),
        )
    };
    let commands: Vec<OutboundMessage> = (0..BURST)
        .map(|i| s.command(&format!("kill-{}-{i}", s.number), CUSTOMER, template()))
        .collect();
    for command in &commands {
        s.send(command).await;
    }
    // Killed three times, at a quarter, half and three quarters of the burst.
    let mut at_kills = Vec::new();
    for quarter in 1..=3 {
        let mut sink = start();
        wait_for(
            "the next quarter of the burst sent",
            Duration::from_secs(90),
            || async { sim.sent(&s.number).await.len() >= quarter * BURST / 4 },
        )
        .await;
        sink.0.kill().unwrap(); // SIGKILL: no flush, no commit
        sink.0.wait().unwrap();
        at_kills.push(sim.sent(&s.number).await.len());
    }
    let sink = start();
    let results = s
        .results_until("a result for every command", |r| r.len() == BURST)
        .await;
    drop(sink);
    let _ = std::fs::remove_file(&file);

    let sent = sends_by_command(&sim.sent(&s.number).await);
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let mut unknown = 0;
    for command in &commands {
        let answers = &results[&command.id];
        let outcome_unknown = answers.iter().any(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.code == sinks::whatsapp::codes::OUTCOME_UNKNOWN)
        });
        unknown += usize::from(outcome_unknown);
        match sent.get(&command.id) {
            // Sent once: its answer is the wamid, or "unknown" if the kill came
            // between Meta's answer and the result record.
            Some(_) => assert!(
                answers.iter().any(|r| r.wamid.is_some()) || outcome_unknown,
                "{answers:?}"
            ),
            // Never sent: only when the kill came between the intent and the call.
            None => assert!(
                outcome_unknown,
                "{} neither sent nor reported: {answers:?}",
                command.id
            ),
        }
    }
    println!(
        "sigkill: sent at each kill {at_kills:?}, {} of {BURST} sent once in all, {unknown} reported outcome unknown, 0 sent twice",
        sent.len()
    );
    // One conversation sends in order: at most one command was in flight per kill.
    assert!(
        unknown <= 3,
        "{unknown} commands in doubt: more than were in flight"
    );
}
