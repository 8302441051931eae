//! The admin API runs the pipeline: `coexist all` starts with no numbers, orgs or
//! agents in its config, and everything it routes, verifies and sends with comes
//! from what an admin set over HTTP (the live directory on `directory.changes`).
//!
//! - `an_admin_runs_the_pipeline_over_http_alone`: a number with its own token and
//!   app secret, three agents (capacities 2, 2, 5), least-loaded; nine customers
//!   routed within capacity, each owner's inbox told over MQTT, a reply sent with
//!   that number's token; an agent deactivated loses their conversations at once and
//!   gets no more; round robin applies to the next conversations. No restart.
//! - `a_secret_speaks_only_for_its_own_numbers`: org A's app secret on a body for
//!   org B's number is a 401 and writes nothing.
//! - `an_unknown_number_is_dead_lettered_and_replayed_once_added`.

mod api_support;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use api_support::{ApiStack, Org};
use coexist::simulate::graph::NumberToken;
use serde_json::{Value, json};
use support::{GraphSimulator, MqttRecorder, free_port, now_ms, unique, wait_for};
use tokio_util::sync::CancellationToken;

/// One `coexist all` at a time: each reads every org's traffic (as in production),
/// and its whatsapp sink handles every number, so two at once would also send each
/// other's commands.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sealing key of this test's process (any 32 bytes, base64).
const SEALING_KEY: &str = "ZGlyZWN0b3J5LXRlc3Qtc2VhbGluZy1rZXktMzJieXQ=";

/// The Graph API simulator, accepting for each number only that number's token.
async fn graph_sim(numbers: &[(&str, &str)]) -> GraphSimulator {
    GraphSimulator::start(|c| {
        c.simulate.graph.access_tokens = vec![runtime::Secret::new("no-such-token")];
        c.simulate.graph.number_tokens = numbers
            .iter()
            .map(|(number, token)| NumberToken {
                phone_number_id: number.to_string(),
                token: runtime::Secret::new(*token),
            })
            .collect();
    })
    .await
}

/// `coexist all` with nothing about orgs, numbers or agents in its config.
async fn start_all(name: &str, graph_url: &str) -> ApiStack {
    let graph_url = graph_url.to_string();
    ApiStack::start_all(name, |c| {
        c.kafka.new_group_start = now_ms().to_string();
        c.ingest.listen = format!("127.0.0.1:{}", free_port());
        c.ingest.app_secrets = Vec::new();
        c.ingest.numbers = Vec::new();
        c.ingest.default_org = String::new();
        c.ingest.presence.enabled = false;
        c.processors.router.router.orgs = BTreeMap::new();
        c.processors.router.router.numbers = BTreeMap::new();
        c.graph.base_url = graph_url;
        c.graph.access_token = runtime::Secret::default();
        c.graph.numbers = Vec::new();
        c.graph.only_listed_numbers = false;
        c.sinks.mqtt.client_id = format!("test-sink-directory-{}", unique());
        c.sealing.keys = vec![runtime::seal::SealKey {
            id: "test".into(),
            key: runtime::Secret::new(SEALING_KEY),
        }];
        c.metrics.listen = String::new();
    })
    .await
}

fn webhook_url(stack: &ApiStack) -> String {
    format!("http://{}/webhooks/whatsapp", stack.config.ingest.listen)
}

/// A customer's text message to `number`, as Meta sends it.
fn customer_message(number: &str, customer: &str, wamid: &str) -> String {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "waba-directory-test", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550100", "phone_number_id": number },
            "contacts": [{ "wa_id": customer, "profile": { "name": format!("Customer {customer}") } }],
            "messages": [{
                "from": customer, "id": wamid, "timestamp": (now_ms() / 1000).to_string(),
                "type": "text", "text": { "body": "Is my order on its way?" }
            }]
        }}]}]
    })
    .to_string()
}

async fn post_signed(stack: &ApiStack, body: &str, secret: &str) -> u16 {
    stack
        .http
        .post(webhook_url(stack))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            ingest::signature::sign(body.as_bytes(), secret),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every conversation of the org's `number` with its state and owner, as the API
/// serves them.
async fn conversations(
    stack: &ApiStack,
    token: &str,
    number: &str,
) -> BTreeMap<String, (String, Option<String>)> {
    let (status, _, body) = stack
        .call("GET", "/v1/conversations?limit=200", Some(token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["phone_number_id"] == number)
        .map(|c| {
            (
                c["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (
                    c["state"].as_str().unwrap_or_default().to_string(),
                    c["assignee"].as_str().map(str::to_string),
                ),
            )
        })
        .collect()
}

fn loads(convs: &BTreeMap<String, (String, Option<String>)>) -> BTreeMap<String, usize> {
    let mut loads = BTreeMap::new();
    for (state, owner) in convs.values() {
        if let (true, Some(owner)) = (state == "assigned", owner) {
            *loads.entry(owner.clone()).or_default() += 1;
        }
    }
    loads
}

async fn admin_call(
    stack: &ApiStack,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> String {
    let (status, _, answer) = stack.call(method, path, Some(token), Some(body)).await;
    assert_eq!(status, 202, "{method} {path}: {answer}");
    answer["command_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The admin resolves `conversations`, in order.
async fn resolve(stack: &ApiStack, token: &str, conversations: impl IntoIterator<Item = &String>) {
    for conv in conversations {
        let path = format!("/v1/conversations/{conv}/commands");
        admin_call(stack, token, "POST", &path, json!({ "action": "resolve" })).await;
    }
}

/// An agent's app comes online (what the MQTT presence bridge would produce).
async fn online(stack: &ApiStack, publisher: &runtime::Publisher, org: &Org, agent: &str) {
    let event = events::inbox::PresenceEvent {
        org: org.org.clone(),
        agent_id: agent.into(),
        device_id: "phone".into(),
        state: events::inbox::PresenceState::Online,
        conversation_id: None,
        at_ms: now_ms(),
    };
    let _ = stack;
    publisher
        .send_json(events::topics::AGENTS_PRESENCE, &org.org, &event, vec![])
        .await
        .unwrap();
}

async fn wait_loads(
    stack: &ApiStack,
    token: &str,
    number: &str,
    what: &str,
    want: &[(&str, usize)],
) -> BTreeMap<String, (String, Option<String>)> {
    let want: BTreeMap<String, usize> = want
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(a, n)| (a.to_string(), *n))
        .collect();
    let mut last;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let convs = conversations(stack, token, number).await;
        if loads(&convs) == want {
            return convs;
        }
        last = loads(&convs);
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: loads {last:?}, want {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_runs_the_pipeline_over_http_alone() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let id = unique();
    let (login_number, number) = (format!("50{id}"), format!("51{id}"));
    let (login_token, token, secret) =
        ("login-token", format!("token-{id}"), format!("secret-{id}"));
    let sim = graph_sim(&[(&login_number, login_token), (&number, &token)]).await;
    let mut stack = start_all("directory", &sim.url).await;
    stack.wait_ingest().await;
    // 1. The first admin, from `coexist admin bootstrap` (with the number codes go out on).
    stack.credentials = (login_token.into(), format!("login-secret-{id}"));
    let org = stack.org_with(&format!("dir-{id}"), &login_number).await;
    let admin = stack.login(&org, &org.admin_phone, "desk").await.access;
    // ... adds a number with its own token and app secret, invites three agents and
    // picks least-loaded, all over HTTP.
    admin_call(
        &stack,
        &admin,
        "PUT",
        &format!("/v1/business-numbers/{number}"),
        json!({ "display_phone_number": "+1 555 0101", "access_token": token, "app_secret": secret }),
    )
    .await;
    for (agent, capacity) in [("ann", 2), ("bob", 2), ("cy", 5)] {
        admin_call(
            &stack,
            &admin,
            "POST",
            "/v1/agents",
            json!({ "agent_id": agent, "name": agent, "role": "agent", "capacity": capacity,
                    "email": format!("{agent}@dir-{id}.test") }),
        )
        .await;
    }
    admin_call(
        &stack,
        &admin,
        "PUT",
        "/v1/routing-policy",
        json!({ "policy": { "kind": "least_loaded" } }),
    )
    .await;
    stack
        .wait_doc("business_numbers", &format!("{}:{number}", org.org))
        .await;
    stack.wait_doc("agents", &format!("{}:cy", org.org)).await;
    let publisher = stack
        .config
        .kafka
        .publisher("directory-test")
        .await
        .unwrap();
    for agent in ["ann", "bob", "cy"] {
        online(&stack, &publisher, &org, agent).await;
    }
    let prefix = stack.config.mqtt.topic_prefix.clone();
    let inboxes = MqttRecorder::subscribe(
        &stack.config,
        &format!("{prefix}/{}/agents/+/inbox", org.org),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the router sees them online

    // 2. Nine customers write in, signed with that number's own secret.
    // Phone numbers of customers: digits, as short as real ones (the simulator, like
    // Meta, refuses a `to` that is not a phone number).
    let short = &id[id.len() - 5..];
    let customers: Vec<String> = (0..9).map(|i| format!("1650{short}{i:02}")).collect();
    for (i, customer) in customers.iter().enumerate() {
        let body = customer_message(&number, customer, &format!("wamid.dir{id}.{i}"));
        assert_eq!(post_signed(&stack, &body, &secret).await, 200);
    }
    let convs = wait_loads(
        &stack,
        &admin,
        &number,
        "nine conversations within capacity",
        &[("ann", 2), ("bob", 2), ("cy", 5)],
    )
    .await;
    assert_eq!(convs.len(), 9, "{convs:?}");
    // Each owner's inbox was told of each of their conversations.
    wait_for(
        "every owner's inbox told",
        Duration::from_secs(30),
        || async {
            convs.iter().all(|(conv, (_, owner))| {
                let topic = format!(
                    "{prefix}/{}/agents/{}/inbox",
                    org.org,
                    owner.as_deref().unwrap_or("-")
                );
                inboxes
                    .messages()
                    .iter()
                    .any(|(t, p)| *t == topic && p.contains(conv.as_str()))
            })
        },
    )
    .await;
    // A reply through the API reaches Meta with that number's token (the simulator
    // accepts no other token for it).
    let (reply_conv, _) = convs.iter().next().unwrap();
    let reply = admin_call(
        &stack,
        &admin,
        "POST",
        &format!("/v1/conversations/{reply_conv}/messages"),
        json!({ "type": "text", "body": "It left the warehouse this morning." }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sim.sent(&number).await.iter().any(|r| r.kind == "text") {
        if tokio::time::Instant::now() > deadline {
            let (_, _, result) = stack
                .call("GET", &format!("/v1/commands/{reply}"), Some(&admin), None)
                .await;
            panic!("the reply never reached the Graph API; its command: {result}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        sim.sent(&number)
            .await
            .iter()
            .filter(|r| r.kind == "text")
            .count(),
        1
    );

    // 3. cy resolves two, then ann is deactivated: her two go to cy at once (bob is
    // full), and she gets nothing after that.
    let of = |convs: &BTreeMap<String, (String, Option<String>)>, agent: &str| -> Vec<String> {
        convs
            .iter()
            .filter(|(_, (s, o))| s == "assigned" && o.as_deref() == Some(agent))
            .map(|(c, _)| c.clone())
            .collect()
    };
    resolve(&stack, &admin, of(&convs, "cy").iter().take(2)).await;
    wait_loads(
        &stack,
        &admin,
        &number,
        "two resolved",
        &[("ann", 2), ("bob", 2), ("cy", 3)],
    )
    .await;
    let (status, _, answer) = stack
        .call("DELETE", "/v1/agents/ann", Some(&admin), None)
        .await;
    assert_eq!(status, 202, "{answer}");
    let convs = wait_loads(
        &stack,
        &admin,
        &number,
        "ann's conversations moved within capacity",
        &[("bob", 2), ("cy", 5)],
    )
    .await;
    let tenth = format!("1650{short}10");
    let body = customer_message(&number, &tenth, &format!("wamid.dir{id}.10"));
    assert_eq!(post_signed(&stack, &body, &secret).await, 200);
    wait_for(
        "the tenth conversation queued",
        Duration::from_secs(60),
        || async {
            conversations(&stack, &admin, &number)
                .await
                .values()
                .filter(|(s, _)| s == "open")
                .count()
                == 1
        },
    )
    .await;
    assert!(of(&conversations(&stack, &admin, &number).await, "ann").is_empty());
    let _ = convs;

    // 4. Round robin from now on: room is made, and the next conversations follow it
    // (least-loaded would give bob the first two).
    admin_call(
        &stack,
        &admin,
        "PUT",
        "/v1/routing-policy",
        json!({ "phone_number_id": number, "policy": { "kind": "round_robin" } }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the router reads it live
    let convs = conversations(&stack, &admin, &number).await;
    let mut to_resolve = of(&convs, "bob");
    to_resolve.extend(of(&convs, "cy").into_iter().take(2));
    resolve(&stack, &admin, &to_resolve).await;
    // The queued tenth went to bob at his first free seat; then bob 1/2, cy 3/5.
    wait_loads(
        &stack,
        &admin,
        &number,
        "room made",
        &[("bob", 1), ("cy", 3)],
    )
    .await;
    let mut owners = Vec::new();
    for i in 11..14 {
        let customer = format!("1650{short}{i}");
        let body = customer_message(&number, &customer, &format!("wamid.dir{id}.{i}"));
        assert_eq!(post_signed(&stack, &body, &secret).await, 200);
        let conv = events::ids::conversation_id(&number, &customer);
        // Who got it, as their inbox was told (the real-time path, ahead of MongoDB).
        let inbox_of = |topic: &str| {
            topic
                .strip_suffix("/inbox")
                .and_then(|t| t.rsplit('/').next())
                .map(str::to_string)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let owner = loop {
            let told = inboxes
                .messages()
                .into_iter()
                .find(|(_, payload)| payload.contains(conv.as_str()))
                .and_then(|(topic, _)| inbox_of(&topic));
            if let Some(owner) = told {
                break owner;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{conv} never routed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        owners.push(owner);
    }
    assert_eq!(owners, ["cy", "bob", "cy"], "round robin after bob");
    // 5. Nothing was restarted: the one `coexist all` task is still running.
    stack.stop().await;
    drop(sim);
}

/// A message of `org`'s number is in MongoDB (the mongo sink wrote it).
async fn message_stored(stack: &ApiStack, org: &str, wamid: &str) -> bool {
    stack
        .mongo
        .collection::<mongodb::bson::Document>("messages")
        .find_one(mongodb::bson::doc! { "_id": format!("{org}:{wamid}") })
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_speaks_only_for_its_own_numbers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let id = unique();
    let sim = graph_sim(&[]).await;
    let mut stack = start_all("secrets", &sim.url).await;
    stack.wait_ingest().await;
    let (secret_a, secret_b) = (format!("secret-a-{id}"), format!("secret-b-{id}"));
    stack.credentials = ("token-a".into(), secret_a.clone());
    let a = stack.org_with(&format!("a-{id}"), &format!("61{id}")).await;
    stack.credentials = ("token-b".into(), secret_b.clone());
    let b = stack.org_with(&format!("b-{id}"), &format!("62{id}")).await;
    let short = &id[id.len() - 5..];
    // Ingest learns B's number from its own directory follower, which can be behind
    // the sink `org_with` waited for; until then a body naming the number is an
    // unknown number's (answered 200, kept and dead-lettered for a replay that checks
    // its signature again), not a forgery. B's own secret opens a body only once
    // ingest knows the number: wait for that first.
    let probe = customer_message(
        &b.phone_number_id,
        &format!("1650{short}00"),
        &format!("wamid.probe{id}"),
    );
    wait_for(
        "ingest to know B's number",
        Duration::from_secs(60),
        || async { post_signed(&stack, &probe, &secret_b).await == 200 },
    )
    .await;
    // Org A's secret on a body naming org B's number: refused, nothing written.
    let forged = customer_message(
        &b.phone_number_id,
        &format!("1650{short}01"),
        &format!("wamid.forged{id}"),
    );
    assert_eq!(post_signed(&stack, &forged, &secret_a).await, 401);
    // Each secret still speaks for its own number.
    let own_a = customer_message(
        &a.phone_number_id,
        &format!("1650{short}02"),
        &format!("wamid.a{id}"),
    );
    assert_eq!(post_signed(&stack, &own_a, &secret_a).await, 200);
    let own_b = customer_message(
        &b.phone_number_id,
        &format!("1650{short}03"),
        &format!("wamid.b{id}"),
    );
    assert_eq!(post_signed(&stack, &own_b, &secret_b).await, 200);
    // B's message is on the same partition as the forged one would be, after it.
    wait_for(
        "B's own message stored",
        Duration::from_secs(60),
        || async { message_stored(&stack, &b.org, &format!("wamid.b{id}")).await },
    )
    .await;
    assert!(
        message_stored(&stack, &a.org, &format!("wamid.a{id}")).await || {
            tokio::time::sleep(Duration::from_secs(2)).await;
            message_stored(&stack, &a.org, &format!("wamid.a{id}")).await
        }
    );
    assert!(!message_stored(&stack, &b.org, &format!("wamid.forged{id}")).await);
    let raw = support::read_until(
        &stack.config.kafka.brokers,
        events::topics::WEBHOOKS_RAW,
        &b.phone_number_id,
        &format!("wamid.b{id}"),
    )
    .await;
    assert!(
        raw.iter()
            .all(|v| !v.contains(&format!("wamid.forged{id}"))),
        "the forged body reached the raw topic"
    );
    stack.stop().await;
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_number_is_dead_lettered_and_replayed_once_added() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let id = unique();
    let sim = graph_sim(&[]).await;
    let mut stack = start_all("unknown", &sim.url).await;
    stack.wait_ingest().await;
    let secret = format!("secret-{id}");
    stack.credentials = ("token".into(), secret.clone());
    let org = stack.org_with(&format!("u-{id}"), &format!("63{id}")).await;
    let admin = stack.login(&org, &org.admin_phone, "desk").await.access;
    let started = now_ms();
    // A number nobody registered yet (a new number of the same Meta app): answered
    // 200 so Meta stops retrying, kept raw, dead-lettered as unknown_number.
    let unknown = format!("64{id}");
    let short = &id[id.len() - 5..];
    let wamid = format!("wamid.unknown{id}");
    let body = customer_message(&unknown, &format!("1650{short}04"), &wamid);
    assert_eq!(post_signed(&stack, &body, &secret).await, 200);
    let dead = support::read_records(
        &stack.config.kafka.brokers,
        events::topics::DEADLETTER,
        &unknown,
        &wamid,
        1,
    )
    .await;
    let (_, headers) = dead.last().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("coexist.reason"), "unknown_number");
    assert!(header(runtime::consume::dlq_headers::ERROR).starts_with("unknown_number"));
    // A body for the unknown number signed by no secret we know is a 401.
    assert_eq!(post_signed(&stack, &body, "nobody's secret").await, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!message_stored(&stack, &org.org, &wamid).await);

    // The admin adds the number; a replay brings the message in, for this org.
    admin_call(
        &stack,
        &admin,
        "PUT",
        &format!("/v1/business-numbers/{unknown}"),
        json!({ "display_phone_number": "+1 555 0164", "access_token": "t", "app_secret": secret }),
    )
    .await;
    stack
        .wait_doc("business_numbers", &format!("{}:{unknown}", org.org))
        .await;
    let kafka = stack.config.kafka.clone();
    let (directory, follower) = runtime::directory::follow(
        &kafka,
        Vec::new(),
        "test-replay-directory",
        CancellationToken::new(),
    )
    .await
    .unwrap();
    follower.abort();
    let sealer = runtime::seal::Sealer::from_config(&stack.config.sealing).unwrap();
    let owners = ingest::owners::Owners::build(&directory.get(), &sealer, &stack.config.ingest);
    let range = ingest::replay::Range {
        from_ms: Some(started - 1000),
        ..Default::default()
    };
    let plan = ingest::replay::plan(&kafka, &range).unwrap();
    let publisher = kafka.publisher("test-replay").await.unwrap();
    ingest::replay::run(&kafka, &publisher, &owners, &plan, |_, _| {})
        .await
        .unwrap();
    wait_for(
        "the replayed message stored for the org",
        Duration::from_secs(60),
        || async { message_stored(&stack, &org.org, &wamid).await },
    )
    .await;
    stack.stop().await;
    drop(sim);
}
