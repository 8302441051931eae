//! The live feed (`GET /v1/feed`, Server-Sent Events) on the real stack: a customer's
//! webhook goes through ingest, the router and the MQTT sink, and reaches the feeds
//! of the org's agents, never another org's; an agent never gets a colleague's
//! inbox; a stream ends when its token expires or its session is revoked.

mod api_support;
mod support;

use std::time::Duration;

use api_support::sse::Feed;
use api_support::{ApiStack, Org};
use coexist::roles::{self, ProcessorName, SinkName};
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};
use support::{free_port, now_ms, unique, wait_for};

const APP_SECRET: &str = "feed-test-app-secret";
const CUSTOMER: &str = "16505551234";

/// The API with ingest, the router and the MQTT sink, an org `a` whose number
/// ingest knows, and a second org `b`.
struct Stack {
    stack: ApiStack,
    a: Org,
    b: Org,
    webhook_url: String,
}

impl Stack {
    async fn start(name: &str) -> Self {
        let id = unique();
        let (org, number) = (format!("{name}-{id}"), format!("6{id}"));
        let mut stack = ApiStack::start(name, |c| {
            c.kafka.new_group_start = now_ms().to_string();
            c.ingest.listen = format!("127.0.0.1:{}", free_port());
            c.ingest.app_secrets = vec![runtime::Secret::new(APP_SECRET)];
            c.ingest.numbers = vec![ingest::config::NumberOwner {
                phone_number_id: number.clone(),
                org: org.clone(),
            }];
            // The presence bridge, as in production (its own session on the broker).
            c.ingest.presence.enabled = true;
            c.ingest.presence.client_id = format!("test-presence-{name}-{id}");
            c.sinks.mqtt.client_id = format!("test-sink-{name}-{id}");
            c.api.feed_ping_secs = 1;
            c.api.otp.resend_cooldown_secs = 0;
        })
        .await;
        stack.spawn_role(|c, s| async move { roles::ingest(&c, s).await });
        stack.spawn_role(|c, s| async move { roles::process(&c, ProcessorName::Router, s).await });
        stack.spawn_role(|c, s| async move { roles::sink(&c, SinkName::Mqtt, s).await });
        let webhook_url = format!("http://{}/webhooks/whatsapp", stack.config.ingest.listen);
        stack.wait_ingest().await;
        stack.credentials = ("feed-token".into(), APP_SECRET.into());
        let a = stack.org_with(&org, &number).await;
        let b = stack.org("feedb").await;
        Self {
            stack,
            a,
            b,
            webhook_url,
        }
    }

    async fn webhook(&self) -> String {
        let path = format!(
            "{}/events/tests/fixtures/msg_text.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read_to_string(path)
            .unwrap()
            .replace("106540352242922", &self.a.phone_number_id)
            .replace("\"wamid.", &format!("\"wamid.{}.", unique()));
        let signature = ingest::signature::sign(body.as_bytes(), APP_SECRET);
        let status = self
            .stack
            .http
            .post(&self.webhook_url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        format!("{}-{CUSTOMER}", self.a.phone_number_id)
    }

    async fn feed(&self, token: &str) -> Feed {
        let feed = Feed::open(&self.stack.http, &self.stack.url("/v1/feed"), token).await;
        assert_eq!(feed.status, 200);
        assert!(
            feed.content_type.starts_with("text/event-stream"),
            "{}",
            feed.content_type
        );
        feed.ready().await;
        feed
    }

    /// Invites `agent_id` into `org` as an agent and logs them in.
    async fn agent(&self, org: &Org, admin: &str, agent_id: &str) -> api_support::Tokens {
        let phone = format!("1777{}", &unique()[..7]);
        let invite = json!({ "agent_id": agent_id, "name": agent_id, "phone": phone, "role": "agent", "capacity": 2 });
        let (status, _, body) = self
            .stack
            .call("POST", "/v1/agents", Some(admin), Some(invite))
            .await;
        assert_eq!(status, 202, "{body}");
        self.stack
            .wait_doc("agents", &format!("{}:{agent_id}", org.org))
            .await;
        self.stack
            .login(org, &phone, &format!("{agent_id}-web"))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_carries_what_the_callers_device_may_subscribe_to_and_nothing_else() {
    let t = Stack::start("feed").await;
    let prefix = t.stack.config.mqtt.topic_prefix.clone();
    let (a, b) = (t.a.org.clone(), t.b.org.clone());
    let a_admin = t.stack.login(&t.a, &t.a.admin_phone, "a-desk").await;
    let bob = t.agent(&t.a, &a_admin.access, "bob").await;
    let b_admin = t.stack.login(&t.b, &t.b.admin_phone, "b-desk").await;

    // Without a token: the one error shape, no stream.
    let (status, _, body) = t.stack.call("GET", "/v1/feed", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    let feed_admin = t.feed(&a_admin.access).await;
    let feed_bob = t.feed(&bob.access).await;
    let feed_b = t.feed(&b_admin.access).await;

    // A customer writes to org A: the conversation's topic reaches both of A's
    // agents, as the MQTT sink published it.
    let conversation = t.webhook().await;
    let topic = format!("{prefix}/{a}/conversations/{conversation}");
    for (who, feed) in [("admin", &feed_admin), ("bob", &feed_bob)] {
        wait_for(
            &format!("the customer's message in {who}'s feed"),
            Duration::from_secs(60),
            || async { feed.mqtt().iter().any(|(t, _)| *t == topic) },
        )
        .await;
    }

    // The service publishes (as the MQTT sink does) to each inbox, to org B, and
    // then a marker on each org's presence that every agent of the org may see.
    let mut options = t
        .stack
        .config
        .mqtt
        .options(&format!("svc-feed-{}", unique()));
    options.set_clean_session(true);
    let (service, mut events) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publish = |topic: String, payload: Value| {
        let service = service.clone();
        async move {
            service
                .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
                .unwrap();
        }
    };
    let bob_inbox = format!("{prefix}/{a}/agents/bob/inbox");
    let admin_inbox = format!("{prefix}/{a}/agents/admin/inbox");
    let b_inbox = format!("{prefix}/{b}/agents/admin/inbox");
    let b_conversation = format!("{prefix}/{b}/conversations/x");
    publish(bob_inbox.clone(), json!({"for": "bob"})).await;
    publish(admin_inbox.clone(), json!({"for": "a-admin"})).await;
    publish(b_inbox.clone(), json!({"for": "b-admin"})).await;
    publish(b_conversation.clone(), json!({"for": "org b"})).await;
    let a_marker = format!("{prefix}/{a}/presence/marker");
    let b_marker = format!("{prefix}/{b}/presence/marker");
    publish(a_marker.clone(), json!({"state": "online"})).await;
    publish(b_marker.clone(), json!({"state": "online"})).await;
    for (who, feed, marker) in [
        ("admin", &feed_admin, &a_marker),
        ("bob", &feed_bob, &a_marker),
        ("b", &feed_b, &b_marker),
    ] {
        wait_for(
            &format!("the marker in {who}'s feed"),
            Duration::from_secs(30),
            || async { feed.mqtt().iter().any(|(t, _)| t == marker) },
        )
        .await;
    }
    // Once each, with the published JSON as the payload.
    // (The router's assignment of the customer's conversation may also be in an
    // inbox: only the publishes above are compared exactly.)
    let own = |feed: &Feed| -> Vec<(String, Value)> {
        feed.mqtt()
            .into_iter()
            .filter(|(t, p)| p.get("for").is_some() || t.ends_with("/presence/marker"))
            .collect()
    };
    assert_eq!(
        own(&feed_admin),
        vec![
            (admin_inbox.clone(), json!({"for": "a-admin"})),
            (a_marker.clone(), json!({"state": "online"})),
        ]
    );
    assert_eq!(
        own(&feed_bob),
        vec![
            (bob_inbox.clone(), json!({"for": "bob"})),
            (a_marker.clone(), json!({"state": "online"})),
        ]
    );
    assert_eq!(
        own(&feed_b),
        vec![
            (b_inbox.clone(), json!({"for": "b-admin"})),
            (b_conversation.clone(), json!({"for": "org b"})),
            (b_marker.clone(), json!({"state": "online"})),
        ]
    );
    let theirs = feed_b.mqtt();
    assert!(
        theirs
            .iter()
            .all(|(t, _)| t.starts_with(&format!("{prefix}/{b}/"))),
        "org B saw another org: {theirs:?}"
    );
    for (who, feed) in [("admin", &feed_admin), ("bob", &feed_bob)] {
        let mine = feed.mqtt();
        assert!(
            mine.iter()
                .all(|(t, _)| t.starts_with(&format!("{prefix}/{a}/"))),
            "{who} saw another org: {mine:?}"
        );
        let inbox = format!("{prefix}/{a}/agents/{who}/inbox");
        assert!(
            mine.iter()
                .all(|(t, _)| !t.ends_with("/inbox") || *t == inbox),
            "{who} saw a colleague's inbox: {mine:?}"
        );
    }
    // Pings keep the connection alive (every second in this test).
    wait_for("a ping", Duration::from_secs(10), || async {
        feed_bob
            .frames()
            .iter()
            .any(|f| f.event.is_empty() && f.data == "ping")
    })
    .await;

    // A revoked session stops listening (at the next ping), the others go on.
    let (status, _, _) = t
        .stack
        .call("POST", "/v1/auth/logout", Some(&bob.access), None)
        .await;
    assert_eq!(status, 204);
    wait_for("bob's feed to end", Duration::from_secs(15), || async {
        feed_bob.ended()
    })
    .await;
    assert!(!feed_admin.ended() && !feed_b.ended());

    // A token that expires ends its stream then, even with a live session.
    let now = api::now_ms() / 1000;
    let claims = api::auth::jwt::Claims {
        sub: "admin".into(),
        org: a.clone(),
        role: "admin".into(),
        sid: a_admin.session_id.clone(),
        iss: "coexist".into(),
        aud: "coexist".into(),
        iat: now,
        exp: now + 3,
    };
    let short = api::auth::jwt::JwtKeys::new(
        &[("test".into(), api_support::JWT_SECRET.as_bytes().to_vec())],
        "coexist",
    )
    .sign(&claims)
    .unwrap();
    let feed_short = t.feed(&short).await;
    wait_for(
        "the short token's feed to end",
        Duration::from_secs(15),
        || async { feed_short.ended() },
    )
    .await;
    assert!(!feed_admin.ended());
    t.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_and_activity_over_rest_take_the_devices_path() {
    let t = Stack::start("presence").await;
    let prefix = t.stack.config.mqtt.topic_prefix.clone();
    let a = t.a.org.clone();
    let admin = t.stack.login(&t.a, &t.a.admin_phone, "a-desk").await;
    let bob = t.agent(&t.a, &admin.access, "bob").await;
    let b_admin = t.stack.login(&t.b, &t.b.admin_phone, "b-desk").await;
    let feed_bob = t.feed(&bob.access).await;

    // Presence over REST: on the agent's own presence topic, in the devices' format,
    // and from there through the presence bridge onto agents.presence, as any
    // device's presence.
    let (status, _, body) = t
        .stack
        .call(
            "PUT",
            "/v1/me/presence",
            Some(&admin.access),
            Some(json!({"status": "away"})),
        )
        .await;
    assert_eq!((status, &body), (202, &json!({"published": true})));
    // Keyed per device (`PresenceEvent::table_key`): the topic is compacted.
    let records = support::read_until(
        &t.stack.config.kafka.brokers,
        events::topics::AGENTS_PRESENCE,
        &format!("{a}/admin/{}", admin.session_id),
        &admin.session_id,
    )
    .await;
    let event: events::inbox::PresenceEvent =
        serde_json::from_str(records.last().unwrap()).unwrap();
    assert_eq!(
        (
            event.org.as_str(),
            event.agent_id.as_str(),
            event.device_id.as_str()
        ),
        (a.as_str(), "admin", admin.session_id.as_str())
    );
    assert_eq!(event.state, events::inbox::PresenceState::Away);
    assert_eq!(event.conversation_id, None);
    let presence_topic = format!("{prefix}/{a}/presence/admin");
    wait_for(
        "the presence in bob's feed",
        Duration::from_secs(30),
        || async {
            feed_bob.mqtt().iter().any(|(t, p)| {
                *t == presence_topic
                    && *p == json!({"state": "away", "device_id": admin.session_id})
            })
        },
    )
    .await;
    for bad in [
        json!({"status": "offline"}),
        json!({"status": "typing"}),
        json!({}),
    ] {
        let (status, _, body) = t
            .stack
            .call(
                "PUT",
                "/v1/me/presence",
                Some(&admin.access),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Activity: the customer's conversation exists, the admin types and views.
    let conversation = t.webhook().await;
    let path = format!("/v1/conversations/{conversation}");
    wait_for("the conversation", Duration::from_secs(60), || async {
        t.stack
            .call("GET", &path, Some(&admin.access), None)
            .await
            .0
            == 200
    })
    .await;
    let activity = format!("{path}/activity");
    let act = |token: &str, kind: &str| {
        let (token, kind) = (token.to_string(), kind.to_string());
        let activity = activity.clone();
        let stack = &t.stack;
        async move {
            stack
                .call("POST", &activity, Some(&token), Some(json!({"kind": kind})))
                .await
        }
    };
    let (status, _, body) = act(&admin.access, "typing").await;
    assert_eq!((status, &body), (202, &json!({"published": true})));
    // Throttled: answered, not published.
    let (status, _, body) = act(&admin.access, "typing").await;
    assert_eq!((status, &body), (202, &json!({"published": false})));
    let (status, _, body) = act(&admin.access, "viewing").await;
    assert_eq!((status, &body), (202, &json!({"published": true})));
    let (status, _, _) = act(&admin.access, "offline").await;
    assert_eq!(status, 400);
    // Another org's agent cannot speak in this conversation; nor on one that is not.
    let (status, _, _) = act(&b_admin.access, "typing").await;
    assert_eq!(status, 404);
    let (status, _, _) = t
        .stack
        .call(
            "POST",
            "/v1/conversations/no-such-conversation/activity",
            Some(&admin.access),
            Some(json!({"kind": "typing"})),
        )
        .await;
    assert_eq!(status, 404);

    // The colleague's feed shows each once.
    let activity_topic = format!("{prefix}/{a}/conversations/{conversation}/activity/admin");
    let seen = || {
        feed_bob
            .mqtt()
            .into_iter()
            .filter(|(t, _)| *t == activity_topic)
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    };
    wait_for(
        "the activity in bob's feed",
        Duration::from_secs(30),
        || async { seen().len() >= 2 },
    )
    .await;
    // A marker after them: nothing else is on its way.
    let (status, _, _) = act(&bob.access, "viewing").await;
    assert_eq!(status, 202);
    let bob_topic = format!("{prefix}/{a}/conversations/{conversation}/activity/bob");
    wait_for("bob's own activity", Duration::from_secs(30), || async {
        feed_bob.mqtt().iter().any(|(t, _)| *t == bob_topic)
    })
    .await;
    assert_eq!(
        seen(),
        vec![
            json!({"state": "typing", "device_id": admin.session_id}),
            json!({"state": "viewing", "device_id": admin.session_id}),
        ]
    );
    // And through the bridge, the same as a device's activity.
    let records = support::read_until(
        &t.stack.config.kafka.brokers,
        events::topics::AGENTS_PRESENCE,
        // One device's records are in order on its key; another's may come first.
        &format!("{a}/admin/{}", admin.session_id),
        "viewing",
    )
    .await;
    let typing: Vec<events::inbox::PresenceEvent> = records
        .iter()
        .map(|r| serde_json::from_str::<events::inbox::PresenceEvent>(r).unwrap())
        .filter(|e| e.state == events::inbox::PresenceState::Typing)
        .collect();
    assert_eq!(typing.len(), 1, "{records:?}");
    assert_eq!(
        typing[0].conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    assert_eq!(typing[0].agent_id, "admin");

    // The feed is the browser's presence (a browser has no MQTT last will): bob's
    // device is offline once the last of his streams ends, and not while another
    // one is open.
    let brokers = &t.stack.config.kafka.brokers;
    let device = format!("{a}/bob/{}", bob.session_id);
    let second = t.feed(&bob.access).await;
    drop(feed_bob);
    // A ping a second finds the closed stream; then a marker from bob himself.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _, _) = t
        .stack
        .call(
            "PUT",
            "/v1/me/presence",
            Some(&bob.access),
            Some(json!({"status": "online"})),
        )
        .await;
    assert_eq!(status, 202);
    let before = support::read_until(
        brokers,
        events::topics::AGENTS_PRESENCE,
        &device,
        "\"state\":\"online\"",
    )
    .await;
    assert!(
        before.iter().all(|r| !r.contains("\"offline\"")),
        "offline while a stream was open: {before:?}"
    );
    drop(second);
    let after = support::read_until(
        brokers,
        events::topics::AGENTS_PRESENCE,
        &device,
        "\"state\":\"offline\"",
    )
    .await;
    let offline: Vec<&String> = after.iter().filter(|r| r.contains("\"offline\"")).collect();
    assert_eq!(offline.len(), 1, "{after:?}");
    let event: events::inbox::PresenceEvent = serde_json::from_str(offline[0]).unwrap();
    assert_eq!(
        (event.agent_id.as_str(), event.device_id.as_str()),
        ("bob", bob.session_id.as_str())
    );
    t.stack.stop().await;
}
