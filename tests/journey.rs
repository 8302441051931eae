//! One conversation's journey over the real stack (`coexist all`): the customer
//! writes, the conversation is routed (claimed) and answered, statuses arrive out of
//! order and twice, the Business app sends an echo, edits it and deletes it, the
//! customer reacts and takes the reaction off, and a history import for the same
//! customer arrives. After each step: MongoDB through the API, ClickHouse, and what a
//! device subscribed to the org saw on MQTT. Nothing is duplicated, statuses on MQTT
//! only move forward, and nothing but the customer writing opens the window, routes,
//! reopens or pushes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use events::delivery::OutboundResult;
use mongodb::bson::doc;
use processors::router::{AgentConfig, Policy};
use serde_json::{Value, json};
use support::{APP_SECRET, Pipeline, first_wamid, now_ms, wait_for};

const CONTACT: &str = "16505551234";
const JWT_SECRET: &str = "journey-jwt-secret";
const DAY_MS: i64 = 24 * 3_600_000;

struct Journey {
    p: Pipeline,
    token: String,
    conversation_id: String,
}

impl Journey {
    async fn start() -> Self {
        let p = Pipeline::start_with("journey", |config, org| {
            config.api.jwt_keys = vec![api::config::JwtKey {
                kid: "test".into(),
                secret: runtime::Secret::new(JWT_SECRET),
            }];
            let router = &mut config.processors.router.router;
            router.default_policy = Policy::Manual;
            router.orgs = BTreeMap::from([(
                org.to_owned(),
                vec![AgentConfig {
                    agent_id: "ana".into(),
                    capacity: 5,
                }],
            )]);
        })
        .await;
        // A live session for ana, and a token for it, as a login would leave them.
        let sid = format!("s-{}", p.org);
        p.mongo
            .collection::<mongodb::bson::Document>(api::auth::sessions::SESSIONS)
            .insert_one(
                doc! { "_id": &sid, "org": &p.org, "agent_id": "ana", "revoked_at_ms": null },
            )
            .await
            .unwrap();
        let keys = api::auth::jwt::JwtKeys::new(
            &[("test".into(), JWT_SECRET.as_bytes().to_vec())],
            "coexist",
        );
        let now = now_ms() / 1000;
        let token = keys
            .sign(&api::auth::jwt::Claims {
                sub: "ana".into(),
                org: p.org.clone(),
                role: "agent".into(),
                sid,
                iss: "coexist".into(),
                aud: "coexist".into(),
                iat: now,
                exp: now + 3600,
            })
            .unwrap();
        let conversation_id = format!("{}-{CONTACT}", p.phone_number_id);
        Self {
            p,
            token,
            conversation_id,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.p.config.api.listen);
        let response = self
            .p
            .http
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> u16 {
        let url = format!("http://{}{path}", self.p.config.api.listen);
        let response = self
            .p
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    async fn conversation(&self) -> Value {
        self.get(&format!("/v1/conversations/{}", self.conversation_id))
            .await
    }

    /// The conversation's messages through the API, by wamid.
    async fn messages(&self) -> BTreeMap<String, Value> {
        let page = self
            .get(&format!(
                "/v1/conversations/{}/messages?limit=100",
                self.conversation_id
            ))
            .await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["wamid"].as_str().unwrap().to_owned(), m.clone()))
            .collect()
    }

    /// Waits until `check` holds on the API's view of message `wamid`.
    async fn until_message(&self, wamid: &str, what: &str, check: impl Fn(&Value) -> bool) {
        wait_for(what, Duration::from_secs(60), || async {
            self.messages().await.get(wamid).is_some_and(&check)
        })
        .await;
    }

    /// Posts a fixture (wamids suffixed with `suffix`), with `edit` applied to the
    /// body first; returns the body sent.
    async fn webhook(&self, fixture: &str, suffix: &str, edit: impl FnOnce(&mut Value)) -> Value {
        let mut body: Value = serde_json::from_str(&self.p.fixture(fixture, suffix)).unwrap();
        edit(&mut body);
        assert_eq!(self.p.post(&body.to_string(), APP_SECRET).await, 200);
        body
    }

    /// A customer message from another contact, then waits until it is in MongoDB,
    /// ClickHouse and on MQTT: everything of this number posted before is handled.
    async fn barrier(&self, tag: &str) {
        let body = self
            .p
            .fixture("msg_text", &format!("-barrier-{tag}"))
            .replace(CONTACT, "19995550000");
        assert_eq!(self.p.post(&body, APP_SECRET).await, 200);
        let wamid = first_wamid(&body);
        wait_for(
            &format!("barrier {tag}"),
            Duration::from_secs(90),
            || async {
                self.p.mongo_find("messages", &wamid).await.is_some()
                    && self.p.clickhouse_rows(Some(&wamid)).await == 1
                    && self.p.mqtt.count_containing(&wamid) == 1
            },
        )
        .await;
    }

    /// `(kind, status or emoji)` of what the device saw about `wamid`, in order.
    fn seen(&self, wamid: &str) -> Vec<(String, String)> {
        self.p
            .mqtt
            .messages()
            .iter()
            .filter(|(_, m)| m.contains(wamid))
            .filter_map(|(_, m)| serde_json::from_str::<Value>(m).ok())
            .map(|m| {
                let kind = m["kind"].as_str().unwrap_or("?").to_owned();
                let detail = m["status"]
                    .as_str()
                    .or(m["emoji"].as_str())
                    .or(m["preview"].as_str())
                    .unwrap_or("")
                    .to_owned();
                (kind, detail)
            })
            .collect()
    }

    /// ClickHouse `message_events` kinds for `wamid` (physical rows).
    async fn clickhouse_kinds(&self, wamid: &str) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .p
            .clickhouse
            .query("SELECT kind FROM message_events WHERE org = ? AND wamid = ?")
            .bind(&self.p.org)
            .bind(wamid)
            .fetch_all::<String>()
            .await
            .unwrap();
        kinds.sort();
        kinds
    }
}

/// The first item of `list` in a webhook body's first change.
fn item<'a>(body: &'a mut Value, list: &str) -> &'a mut Value {
    &mut body["entry"][0]["changes"][0]["value"][list][0]
}

/// Steps a device may see, in order.
const FORWARD: [&str; 4] = ["accepted", "sent", "delivered", "read"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_conversations_journey_is_what_happened_on_the_phone() {
    let j = Journey::start().await;
    let p = &j.p;

    // 1. The customer writes: an open conversation, the window open for 24 h.
    let body = j.webhook("msg_text", "-j", |_| {}).await;
    let inbound = first_wamid(&body.to_string());
    let wrote_at_ms = 1_750_090_702_000; // the fixture's timestamp
    j.barrier("wrote").await;
    let c = j.conversation().await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["handled_by"], "nobody");
    assert_eq!(c["window_expires_at_ms"], wrote_at_ms + DAY_MS);
    assert!(c["last_message_preview"].as_str().is_some());
    assert_eq!(j.clickhouse_kinds(&inbound).await, ["message"]);
    let kinds: Vec<String> = j.seen(&inbound).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["message"]);

    // 2. Routed: ana claims it; the router assigns it and her inbox hears it.
    let path = format!("/v1/conversations/{}/commands", j.conversation_id);
    assert_eq!(j.post(&path, json!({ "action": "claim" })).await, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut next_retry = tokio::time::Instant::now() + Duration::from_secs(3);
    while j.conversation().await["assignee"] != "ana" {
        // The router reads events and commands from two topics; on a group's first
        // fetch a command can come before the message that created its conversation,
        // and is answered "unknown conversation". An app retries such a claim.
        if tokio::time::Instant::now() > next_retry {
            assert_eq!(j.post(&path, json!({ "action": "claim" })).await, 202);
            next_retry = tokio::time::Instant::now() + Duration::from_secs(3);
        }
        if tokio::time::Instant::now() > deadline {
            use futures::TryStreamExt;
            let results: Vec<mongodb::bson::Document> = p
                .mongo
                .collection::<mongodb::bson::Document>("command_results")
                .find(doc! { "org": &p.org })
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            panic!("the claim: {} {results:?}", j.conversation().await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = j.conversation().await;
    assert_eq!(
        (c["state"].as_str(), c["handled_by"].as_str()),
        (Some("assigned"), Some("agent"))
    );
    let inbox = format!("{}/{}/agents/ana/inbox", p.config.mqtt.topic_prefix, p.org);
    wait_for("ana's inbox", Duration::from_secs(30), || async {
        p.mqtt.by_topic().get(&inbox).copied().unwrap_or(0) >= 1
    })
    .await;

    // 3. Answered: the Graph API accepted ana's reply as `answer`.
    let answer = format!("wamid.answer.{}", p.org);
    let publisher = p.config.kafka.publisher("journey").await.unwrap();
    let result = OutboundResult {
        id: format!("send-{}", p.org),
        org: p.org.clone(),
        phone_number_id: p.phone_number_id.clone(),
        conversation_id: j.conversation_id.clone(),
        wamid: Some(answer.clone()),
        error: None,
        at_ms: 1_750_090_720_000, // after the customer wrote, in the story's time
        to: CONTACT.into(),
        sent_by: "ana".into(),
        message_type: "text".into(),
        preview: Some("On its way!".into()),
    };
    publisher
        .send_json(
            events::topics::OUTBOUND_RESULTS,
            &p.phone_number_id,
            &result,
            vec![],
        )
        .await
        .unwrap();
    j.until_message(&answer, "the answer", |m| m["status"] == "accepted")
        .await;
    assert_eq!(
        j.conversation().await["last_message_preview"],
        "On its way!"
    );

    // 4. Statuses of the answer, out of order and twice.
    for status in ["read", "delivered", "sent", "read", "delivered"] {
        j.webhook(&format!("status_{status}"), "-j", |b| {
            let s = item(b, "statuses");
            s["id"] = answer.as_str().into();
            s["recipient_id"] = CONTACT.into();
        })
        .await;
    }
    j.until_message(&answer, "read", |m| m["status"] == "read")
        .await;
    wait_for("the statuses on MQTT", Duration::from_secs(30), || async {
        j.seen(&answer).iter().any(|(_, s)| s == "read")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses: Vec<String> = j
        .seen(&answer)
        .into_iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, s)| s)
        .collect();
    // Forward only, each step once (never Meta's late `delivered` and `sent`): the
    // status processor's transitions, the same ones ClickHouse holds.
    let ranks: Vec<usize> = statuses
        .iter()
        .map(|s| FORWARD.iter().position(|f| f == s).unwrap())
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{statuses:?}");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("read"),
        "{statuses:?}"
    );
    assert!(
        !statuses.iter().any(|s| s == "delivered" || s == "sent"),
        "{statuses:?}"
    );
    let clickhouse_steps = || async {
        p.clickhouse
            .query("SELECT to_status FROM status_transitions WHERE org = ? AND wamid = ?")
            .bind(&p.org)
            .bind(&answer)
            .fetch_all::<String>()
            .await
            .unwrap()
            .into_iter()
            .collect::<BTreeSet<String>>()
    };
    let expected: BTreeSet<String> = statuses.iter().cloned().collect();
    wait_for(
        "the steps in ClickHouse",
        Duration::from_secs(30),
        || async { clickhouse_steps().await.len() >= expected.len() },
    )
    .await;
    assert_eq!(
        clickhouse_steps().await,
        expected,
        "ClickHouse: the same steps"
    );

    // 5. The Business app sends an echo, edits it, deletes it.
    // (Times moved after the customer's message, in the order of the story.)
    let echo_body = j
        .webhook("smb_message_echoes", "-j", |b| {
            item(b, "message_echoes")["timestamp"] = "1750090750".into();
        })
        .await;
    let echo = first_wamid(&echo_body.to_string());
    j.until_message(&echo, "the echo", |m| m["origin"] == "business_app")
        .await;
    assert_eq!(
        j.conversation().await["assignee"],
        "ana",
        "an echo takes nothing from an agent"
    );
    j.webhook("smb_message_echoes_edit", "-j", |b| {
        item(b, "message_echoes")["timestamp"] = "1750090760".into();
    })
    .await;
    j.until_message(&echo, "the edit", |m| m["edited_at_ms"].is_i64())
        .await;
    let m = &j.messages().await[&echo];
    assert!(
        m["preview"].as_str().unwrap().contains("updated link"),
        "{m}"
    );
    assert_eq!(
        m["versions"].as_array().unwrap().len(),
        1,
        "the original kept: {m}"
    );
    let conversation = j.conversation().await;
    assert!(
        conversation["last_message_preview"]
            .as_str()
            .unwrap()
            .contains("updated link"),
        "{conversation}"
    );
    j.webhook("smb_message_echoes_revoke", "-j", |b| {
        item(b, "message_echoes")["timestamp"] = "1750090770".into();
    })
    .await;
    j.until_message(&echo, "the revoke", |m| m["deleted_at_ms"].is_i64())
        .await;
    let m = &j.messages().await[&echo];
    assert!(
        m["preview"].is_null() && m["versions"].as_array().unwrap().is_empty(),
        "{m}"
    );
    assert!(j.conversation().await["last_message_preview"].is_null());
    j.barrier("echoes").await;
    assert_eq!(
        j.clickhouse_kinds(&echo).await,
        ["edit", "message", "revoke"]
    );
    let kinds: Vec<String> = j.seen(&echo).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["message", "edit", "revoke"],
        "updates of the echo's id"
    );
    assert_eq!(
        p.mongo_count("messages", doc! { "type": { "$in": ["edit", "revoke"] } })
            .await,
        0
    );

    // 6. The customer reacts to the answer, then takes the reaction off.
    let react = |b: &mut Value, id: &str, ts: &str, emoji: Option<&str>| {
        let m = item(b, "messages");
        m["id"] = id.into();
        m["timestamp"] = ts.into();
        m["reaction"] = match emoji {
            Some(e) => json!({ "message_id": answer, "emoji": e }),
            None => json!({ "message_id": answer }),
        };
    };
    j.webhook("msg_reaction", "-j", |b| {
        react(b, "wamid.react-j", "1750090800", Some("👍"))
    })
    .await;
    j.until_message(&answer, "the reaction", |m| {
        m["reactions"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert_eq!(j.messages().await[&answer]["reactions"][0]["emoji"], "👍");
    j.webhook("msg_reaction", "-j", |b| {
        react(b, "wamid.unreact-j", "1750090860", None)
    })
    .await;
    j.until_message(&answer, "the reaction removed", |m| {
        m["reactions"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    j.barrier("reactions").await;
    let c = j.conversation().await;
    assert_eq!(c["assignee"], "ana");
    assert_eq!(
        c["window_expires_at_ms"],
        wrote_at_ms + DAY_MS,
        "a reaction is not the customer writing"
    );
    let reactions: Vec<(String, String)> = j
        .seen(&answer)
        .into_iter()
        .filter(|(k, _)| k == "reaction")
        .collect();
    assert_eq!(
        reactions,
        [
            ("reaction".to_owned(), "👍".to_owned()),
            ("reaction".to_owned(), String::new())
        ]
    );
    assert_eq!(
        j.clickhouse_kinds(&answer)
            .await
            .iter()
            .filter(|k| *k == "reaction")
            .count(),
        2
    );

    // 7. A history import for the same customer: stored, never news, window untouched.
    j.webhook("history", "-j", |_| {}).await;
    j.barrier("history").await;
    let messages = j.messages().await;
    let imported = messages
        .values()
        .filter(|m| m["origin"] == "history")
        .count();
    assert_eq!(imported, 3, "the thread with this customer");
    let c = j.conversation().await;
    assert_eq!(
        (c["state"].as_str(), c["assignee"].as_str()),
        (Some("assigned"), Some("ana"))
    );
    assert_eq!(
        c["window_expires_at_ms"],
        wrote_at_ms + DAY_MS,
        "history is the past"
    );
    assert_eq!(p.mqtt.count_containing("\"origin\":\"history\""), 0);

    // Nothing twice on MQTT, and no push-worthy news besides the customer's message:
    // ana's inbox holds the assignment and nothing about echoes, edits or reactions.
    let all = p.mqtt.messages();
    let distinct: BTreeSet<&(String, String)> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a publish seen twice");
    let inbox_items: Vec<&(String, String)> = all.iter().filter(|(t, _)| t == &inbox).collect();
    assert!(
        inbox_items
            .iter()
            .all(|(_, m)| !m.contains(&echo) && !m.contains("reaction")),
        "{inbox_items:?}"
    );
    let Journey { p, .. } = j;
    p.stop().await;
}
