//! A conversation's timeline through the API, on the real stack: a signed webhook
//! goes through ingest, the router, the media sink (against the Graph API simulator
//! and moto's S3), the mongo and MQTT sinks, and comes back out of `/v1`.
//! - `GET /v1/media/{media_id}` serves what the media sink stored: a presigned URL
//!   whose bytes are the simulator's, for the caller's org only.
//! - A note (`{"action":"note"}`) lands on the conversation's timeline, marked as a
//!   note, reaches the conversation's MQTT topic once, and never goes to the customer.

mod api_support;
mod support;

use std::time::Duration;

use api_support::ApiStack;
use coexist::roles::{self, ProcessorName, SinkName};
use serde_json::{Value, json};
use support::{MqttRecorder, free_port, now_ms, unique, wait_for};

const APP_SECRET: &str = "timeline-test-app-secret";
const GRAPH_TOKEN: &str = "sim-timeline-token";
const CUSTOMER: &str = "16505551234";

/// The stack, with ingest, the router and `sinks` beside the API and the mongo sink,
/// for an org and number chosen here (ingest maps the number to the org).
struct Timeline {
    stack: ApiStack,
    org: api_support::Org,
    admin: String,
    webhook_url: String,
}

impl Timeline {
    async fn start(name: &str, sinks: &[SinkName], graph_url: Option<String>) -> Self {
        let id = unique();
        let (org, number) = (format!("{name}-{id}"), format!("6{id}"));
        let mut stack = ApiStack::start(name, |c| {
            // This test's records only: the shared broker's backlog is not its own.
            c.kafka.new_group_start = now_ms().to_string();
            c.ingest.listen = format!("127.0.0.1:{}", free_port());
            c.ingest.app_secrets = vec![runtime::Secret::new(APP_SECRET)];
            c.ingest.numbers = vec![ingest::config::NumberOwner {
                phone_number_id: number.clone(),
                org: org.clone(),
            }];
            c.ingest.presence.enabled = false;
            c.sinks.mqtt.client_id = format!("test-sink-{name}-{id}");
            if let Some(url) = graph_url {
                c.graph.base_url = url;
                c.graph.only_listed_numbers = true;
                c.graph.numbers = vec![sinks::graph::GraphNumber {
                    phone_number_id: number.clone(),
                    access_token: runtime::Secret::new(GRAPH_TOKEN),
                    messages_per_second: 0,
                }];
            }
        })
        .await;
        stack.spawn_role(|c, s| async move { roles::ingest(&c, s).await });
        stack.spawn_role(|c, s| async move { roles::process(&c, ProcessorName::Router, s).await });
        for &sink in sinks {
            stack.spawn_role(move |c, s| async move { roles::sink(&c, sink, s).await });
        }
        let webhook_url = format!("http://{}/webhooks/whatsapp", stack.config.ingest.listen);
        stack.wait_ingest().await;
        // The number, its token and its app secret come from the directory.
        stack.credentials = (GRAPH_TOKEN.into(), APP_SECRET.into());
        let org = stack.org_with(&org, &number).await;
        let admin = stack.login(&org, &org.admin_phone, "desk").await.access;
        Self {
            stack,
            org,
            admin,
            webhook_url,
        }
    }

    fn conversation_id(&self) -> String {
        format!("{}-{CUSTOMER}", self.org.phone_number_id)
    }

    /// A fixture webhook on this test's number, with unique wamids.
    fn fixture(&self, name: &str) -> String {
        let path = format!(
            "{}/events/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let suffix = format!(".{}", unique());
        text.replace("106540352242922", &self.org.phone_number_id)
            .replace("\"wamid.", &format!("\"wamid{suffix}."))
    }

    async fn post(&self, body: &str) {
        let signature = ingest::signature::sign(body.as_bytes(), APP_SECRET);
        let status = self
            .stack
            .http
            .post(&self.webhook_url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }

    async fn messages(&self) -> Vec<Value> {
        let path = format!("/v1/conversations/{}/messages", self.conversation_id());
        let (status, _, body) = self.stack.call("GET", &path, Some(&self.admin), None).await;
        if status != 200 {
            return Vec::new();
        }
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the conversation's messages include one for which `pick` holds.
    async fn wait_message(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(found) = self.messages().await.into_iter().find(&pick) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} never in the conversation's messages: {:?}",
                self.messages().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_url_serves_the_bytes_the_media_sink_stored_to_its_org_only() {
    // The Graph API simulator serves the media.
    let mut sim_config = coexist::Config::load(None).unwrap();
    sim_config.simulate.graph.access_tokens = vec![runtime::Secret::new(GRAPH_TOKEN)];
    sim_config.simulate.graph.callbacks = false;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let app = coexist::simulate::graph::router(&sim_config);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let t = Timeline::start("api-media", &[SinkName::Media], Some(sim_url)).await;
    let media_id = format!("{}7", unique());
    let body = t
        .fixture("msg_image")
        .replace("1003383421387256", &media_id);
    t.post(&body).await;

    // The message is there at once; its media id is what the client asks for.
    let image = t.wait_message("the image", |m| m["type"] == "image").await;
    assert_eq!(image["media"]["id"], media_id.as_str(), "{image}");
    let path = format!("/v1/media/{media_id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let url = loop {
        let (status, _, answer) = t.stack.call("GET", &path, Some(&t.admin), None).await;
        if status == 200 {
            assert_eq!(answer["mime_type"], "image/jpeg", "{answer}");
            assert!(answer["expires_in_secs"].as_u64().unwrap() > 0, "{answer}");
            break answer["url"].as_str().unwrap().to_string();
        }
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"]["code"], "not_found", "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} still 404 after 90 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        url.starts_with("http://127.0.0.1:9100/"),
        "moto's URL: {url}"
    );
    // Served as a download, never rendered inline. S3 and MinIO answer with the
    // `Content-Disposition` the signed URL asks for; moto ignores the override, so
    // the URL is what is checked here.
    assert!(
        url.contains("response-content-disposition=attachment"),
        "{url}"
    );
    // A plain HTTP client, no credentials: the presigned URL is the authorization.
    let download = reqwest::get(&url).await.unwrap();
    assert_eq!(download.status(), 200);
    let bytes = download.bytes().await.unwrap();
    let (expected, _) = coexist::simulate::graph::synthetic_media(&media_id);
    assert_eq!(bytes.to_vec(), expected, "the simulator's bytes, exactly");

    // Another org's admin gets 404 for the same id, as for an unknown one.
    let other = t.stack.org("api-media-other").await;
    let other_admin = t.stack.login(&other, &other.admin_phone, "other").await;
    let (status, _, answer) = t
        .stack
        .call("GET", &path, Some(&other_admin.access), None)
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    let (status, _, _) = t
        .stack
        .call("GET", "/v1/media/123456789", Some(&t.admin), None)
        .await;
    assert_eq!(status, 404);
    t.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_note_is_on_the_timeline_and_on_the_conversation_topic_once_and_never_sent() {
    let t = Timeline::start("api-note", &[SinkName::Mqtt], None).await;
    let conversation = t.conversation_id();
    let topic = format!(
        "{}/{}/conversations/{conversation}",
        t.stack.config.mqtt.topic_prefix, t.org.org
    );
    let mqtt = MqttRecorder::subscribe(&t.stack.config, &topic).await;

    // The customer writes; the conversation exists for the API and the router.
    let body = t.fixture("msg_text");
    t.post(&body).await;
    t.wait_message("the customer's message", |m| m["direction"] == "inbound")
        .await;

    let text = format!("VIP customer, call back before noon ({})", unique());
    let path = format!("/v1/conversations/{conversation}/commands");
    let (status, _, accepted) = t
        .stack
        .call(
            "POST",
            &path,
            Some(&t.admin),
            Some(json!({ "action": "note", "text": text })),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let command_id = accepted["command_id"].as_str().unwrap().to_string();

    // On the timeline, marked as a note, with its author.
    let note = t
        .wait_message("the note", |m| m["preview"] == text.as_str())
        .await;
    assert_eq!(note["type"], "note", "{note}");
    assert_eq!(note["direction"], "internal", "{note}");
    assert_eq!(note["sent_by"], "admin", "{note}");
    assert!(note["sent_at_ms"].as_i64().is_some(), "{note}");
    // A note is not something the customer wrote: nothing unread because of it.
    let (_, _, conv) = t
        .stack
        .call("GET", "/v1/conversations", Some(&t.admin), None)
        .await;
    assert_eq!(conv["items"][0]["unread_count"], 1, "{conv}");
    // The same count on the conversation itself (it once read a stored counter
    // nothing wrote, so it always said 0).
    let (_, _, one) = t
        .stack
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(one["unread_count"], 1, "{one}");
    // The note and the command's result come from the same assignment record but
    // are separate writes: the result may land a moment after the note.
    let result_path = format!("/v1/commands/{command_id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let result = loop {
        let (status, _, result) = t
            .stack
            .call("GET", &result_path, Some(&t.admin), None)
            .await;
        if status == 200 {
            break result;
        }
        assert_eq!(status, 404, "{result}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result for the note's command after 30 s: {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(result["accepted"], true, "{result}");

    // On the conversation's MQTT topic, once.
    wait_for("the note on MQTT", Duration::from_secs(60), || async {
        mqtt.count_containing(&text) > 0
    })
    .await;
    // A reply sent after the note is the marker: everything for this number on
    // messages.outbound before it is there, and the note is not among it.
    let (status, _, sent) = t
        .stack
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&t.admin),
            Some(json!({ "type": "text", "body": "on it" })),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let outbound = support::read_until(
        &t.stack.config.kafka.brokers,
        events::topics::MESSAGES_OUTBOUND,
        &t.org.phone_number_id,
        sent["command_id"].as_str().unwrap(),
    )
    .await;
    assert!(
        outbound.iter().all(|m| !m.contains(&text)),
        "the note went towards the customer: {outbound:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen: Vec<(String, String)> = mqtt
        .messages()
        .into_iter()
        .filter(|(_, p)| p.contains(&text))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, topic);
    let payload: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(payload["note"], text.as_str(), "{payload}");
    assert_eq!(payload["issued_by"], "admin", "{payload}");
    // Stored once, whatever the redeliveries.
    let notes = t
        .messages()
        .await
        .into_iter()
        .filter(|m| m["type"] == "note")
        .count();
    assert_eq!(notes, 1);
    t.stack.stop().await;
}
