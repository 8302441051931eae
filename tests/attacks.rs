//! Attacks on the real servers (API, MongoDB, tansu, Mosquitto, ingest): each test
//! tries one way in that a review found, and asserts it is shut. SECURITY.md lists
//! each control and the test here that proves it.

mod api_support;
mod support;

use std::time::Duration;

use api_support::{ApiStack, Org};
use serde_json::{Value, json};

/// The answer codes of `n` concurrent verify calls for `challenge` with `code`.
async fn concurrent_guesses(
    stack: &ApiStack,
    challenge: &str,
    code: &str,
    n: usize,
) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url) = (stack.http.clone(), stack.url("/v1/auth/otp/verify"));
        let body = json!({ "challenge_id": challenge, "code": code, "device_id": format!("d{i}") });
        calls.spawn(async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            format!("{status} {}", body["error"]["code"].as_str().unwrap_or(""))
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap());
    }
    answers.sort();
    answers
}

fn wrong_for(code: &str) -> &'static str {
    if code == "000000" { "000001" } else { "000000" }
}

async fn verify(stack: &ApiStack, challenge: &str, code: &str) -> (u16, Value) {
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/otp/verify",
            None,
            Some(json!({ "challenge_id": challenge, "code": code, "device_id": "attacker" })),
        )
        .await;
    (status, body)
}

/// OTP brute force: 50 wrong guesses at once used to pass the attempt check together
/// and count as one; the right code then logged in.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_wrong_guesses_then_the_right_code_does_not_log_in() {
    let stack = ApiStack::start("atk-otp", |_| {}).await;
    let org = stack.org("atkotp").await;
    let challenge = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &challenge).await;

    let answers = concurrent_guesses(&stack, &challenge, wrong_for(&code), 50).await;
    let compared = answers.iter().filter(|a| *a == "401 invalid_code").count();
    assert!(
        compared < 5,
        "at most 4 wrong codes may be compared before the lockout, got {compared}: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("401") || a.starts_with("429")),
        "{answers:?}"
    );

    let (status, body) = verify(&stack, &challenge, &code).await;
    assert_eq!(
        status, 429,
        "the right code after 50 guesses must not log in: {body}"
    );
    stack.stop().await;
}

/// OTP brute force across resends: 4 guesses, a new code, 4 more, ... never reached
/// the lockout, since a new code reset the count.
#[tokio::test(flavor = "multi_thread")]
async fn the_lockout_holds_across_resends() {
    let stack = ApiStack::start("atk-resend", |c| c.api.otp.resend_cooldown_secs = 1).await;
    let org = stack.org("atkresend").await;
    let first = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &first).await;
    for _ in 0..4 {
        let (status, body) = verify(&stack, &first, wrong_for(&code)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_code"))
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &second).await;
    let (status, body) = verify(&stack, &second, wrong_for(&code)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("otp_locked")),
        "the fifth wrong code, on a fresh code, locks: {body}"
    );
    let (status, body) = verify(&stack, &second, &code).await;
    assert_eq!(
        status, 429,
        "locked: even the right code is refused: {body}"
    );
    // And asking again does not buy more guesses while locked.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let third = stack.request_code(&org.admin_phone).await;
    let (status, _) = verify(&stack, &third, "123456").await;
    assert_ne!(status, 200);
    stack.stop().await;
}

/// The parts of an answer an observer can compare: status, header names (not
/// values that differ per call) and the body's shape.
async fn otp_request_shape(
    stack: &ApiStack,
    phone: &str,
) -> (u16, Vec<String>, Vec<String>, usize, Value) {
    let (status, headers, body) = stack
        .call(
            "POST",
            "/v1/auth/otp/request",
            None,
            Some(json!({ "phone": phone })),
        )
        .await;
    let mut names: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k != "date")
        .collect();
    names.sort();
    let mut keys: Vec<String> = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    let challenge_len = body["challenge_id"].as_str().map_or(0, str::len);
    (
        status,
        names,
        keys,
        challenge_len,
        body["expires_in_secs"].clone(),
    )
}

/// User enumeration: a known user's second request got `429 otp_cooldown`, an
/// unknown one always 202.
#[tokio::test(flavor = "multi_thread")]
async fn known_and_unknown_users_get_indistinguishable_answers() {
    let stack = ApiStack::start("atk-enum", |_| {}).await;
    let org = stack.org("atkenum").await;
    let unknown = "19998887766";
    let known = [
        otp_request_shape(&stack, &org.admin_phone).await,
        otp_request_shape(&stack, &org.admin_phone).await,
        otp_request_shape(&stack, &org.admin_phone).await,
    ];
    let strangers = [
        otp_request_shape(&stack, unknown).await,
        otp_request_shape(&stack, unknown).await,
        otp_request_shape(&stack, unknown).await,
    ];
    for answer in known.iter().chain(&strangers) {
        assert_eq!(
            answer, &strangers[0],
            "known {known:?} vs unknown {strangers:?}"
        );
    }
    assert_eq!(strangers[0].0, 202);
    stack.stop().await;
}

/// The cooldown still holds, silently: of three requests in a row, one code goes out
/// and the first challenge stays the live one.
#[tokio::test(flavor = "multi_thread")]
async fn the_cooldown_is_applied_silently() {
    let stack = ApiStack::start("atk-cool", |_| {}).await;
    let org = stack.org("atkcool").await;
    let first = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &first).await;
    let decoy = stack.request_code(&org.admin_phone).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stack
        .wait_doc("auth_otps", &format!("{}:admin", org.org))
        .await;
    assert_eq!(stored.get_str("challenge_id").unwrap(), first);
    let (status, _) = verify(&stack, &decoy, &code).await;
    assert_eq!(status, 401, "the decoy challenge is no challenge");
    let (status, body) = verify(&stack, &first, &code).await;
    assert_eq!(status, 200, "{body}");
    stack.stop().await;
}

async fn admin_token(stack: &ApiStack, org: &Org) -> String {
    stack
        .login(org, &org.admin_phone, "admin-phone")
        .await
        .access
}

/// Ids that are MQTT wildcards: an agent or org called `+` would turn its broker ACL
/// (`{prefix}/{org}/agents/{agent}/inbox`) into a wildcard.
#[tokio::test(flavor = "multi_thread")]
async fn ids_that_are_mqtt_wildcards_or_levels_are_refused() {
    let stack = ApiStack::start("atk-ids", |_| {}).await;
    let org = stack.org("atkids").await;
    let admin = admin_token(&stack, &org).await;
    let invite = |agent_id: &str| {
        json!({ "agent_id": agent_id, "name": "Mallory", "phone": "15550009999",
                "role": "agent", "capacity": 5 })
    };
    for bad in ["+", "#", "a/b", "$SYS", "a+b", ""] {
        let (status, _, body) = stack
            .call("POST", "/v1/agents", Some(&admin), Some(invite(bad)))
            .await;
        assert_eq!(status, 400, "agent id {bad:?} accepted: {body}");
    }
    // The same invite with a plain id goes through: the refusals are about the id.
    let (status, _, body) = stack
        .call("POST", "/v1/agents", Some(&admin), Some(invite("mallory")))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/otp/request",
            None,
            Some(json!({ "phone": org.admin_phone, "org": "+" })),
        )
        .await;
    assert_eq!(status, 400, "org + accepted: {body}");
    // The bootstrap CLI takes the same rule (checked before anything is published).
    let sealer = api::seal::Sealer::from_config(&Default::default()).unwrap();
    for (bad_org, bad_agent) in [
        ("+", "admin"),
        ("#", "admin"),
        ("acme", "+"),
        ("a/b", "admin"),
    ] {
        let args = coexist::admin::BootstrapArgs {
            org: bad_org.into(),
            name: None,
            agent_id: bad_agent.into(),
            email: Some("x@y.test".into()),
            phone: None,
            phone_number_id: None,
            display_phone_number: String::new(),
        };
        assert!(
            coexist::admin::changes(&args, &sealer, ("", ""), 0).is_err(),
            "bootstrap took org {bad_org:?} agent {bad_agent:?}"
        );
    }
    stack.stop().await;
}

/// Fail closed: the example config's published keys and dev_mode on a public address.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_and_ingest_refuse_a_public_address_with_the_example_secrets() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("coexist.example.toml");
    let mut config = coexist::Config::load(Some(&example)).unwrap();
    let port = support::free_port();
    config.api.listen = format!("0.0.0.0:{port}");
    config.ingest.listen = format!("0.0.0.0:{}", support::free_port());
    config.ingest.presence.enabled = false;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = tokio::time::timeout(
        Duration::from_secs(15),
        coexist::roles::api(&config, shutdown.clone()),
    )
    .await;
    let err = match started {
        Ok(Err(err)) => err.to_string(),
        Ok(Ok(())) => panic!("the API returned without an error"),
        Err(_) => panic!("the API served 0.0.0.0 with the example config's secrets"),
    };
    for key in [
        "api.jwt_keys",
        "api.otp_pepper",
        "sealing.keys",
        "api.dev_mode",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on the refused port"
    );
    let started = tokio::time::timeout(
        Duration::from_secs(15),
        coexist::roles::ingest(&config, shutdown.clone()),
    )
    .await;
    let err = match started {
        Ok(Err(err)) => err.to_string(),
        Ok(Ok(())) => panic!("ingest returned without an error"),
        Err(_) => panic!("ingest served 0.0.0.0 with the example config's secrets"),
    };
    for key in ["ingest.verify_token", "ingest.app_secrets", "sealing.keys"] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    shutdown.cancel();
}

/// Whether Mosquitto accepts a connection with these device credentials.
async fn broker_accepts(creds: &Value) -> bool {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(
        creds["client_id"].as_str().unwrap(),
        creds["host"].as_str().unwrap(),
        creds["port"].as_u64().unwrap() as u16,
    );
    options
        .set_credentials(
            creds["username"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
        )
        .set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    let accepted = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break true,
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => break false,
        }
    };
    let _ = client.disconnect().await;
    accepted
}

async fn mqtt_credentials(stack: &ApiStack, access: &str) -> Value {
    let (status, _, creds) = stack
        .call("POST", "/v1/mqtt/credentials", Some(access), None)
        .await;
    assert_eq!(status, 200, "{creds}");
    assert!(broker_accepts(&creds).await, "fresh credentials refused");
    creds
}

async fn refused_within_seconds(creds: &Value, what: &str) {
    support::wait_for(what, Duration::from_secs(15), || async {
        !broker_accepts(creds).await
    })
    .await;
}

/// A second login on the same device revoked the old session in MongoDB but left
/// its Mosquitto client working.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_sessions_mqtt_login_is_refused_by_the_broker() {
    let stack = ApiStack::start("atk-relogin", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let org = stack.org("atkrelogin").await;
    let first = stack.login(&org, &org.admin_phone, "tablet").await;
    let creds = mqtt_credentials(&stack, &first.access).await;
    let _second = stack.login(&org, &org.admin_phone, "tablet").await;
    refused_within_seconds(&creds, "the broker to refuse the replaced session's login").await;
    stack.stop().await;
}

/// Deactivation revoked only live sessions: a session that had ended earlier while
/// the broker was unreachable (so its client survived) kept its MQTT login.
#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_agents_mqtt_logins_are_all_refused_by_the_broker() {
    let stack = ApiStack::start("atk-deact", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let org = stack.org("atkdeact").await;
    let admin = admin_token(&stack, &org).await;
    let bob_phone = format!("1666{}", &org.admin_phone[4..]);
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/agents",
            Some(&admin),
            Some(
                json!({ "agent_id": "bob", "name": "Bob", "phone": bob_phone,
                         "role": "agent", "capacity": 5 }),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    stack.wait_doc("agents", &format!("{}:bob", org.org)).await;
    let earlier = stack.login(&org, &bob_phone, "old-phone").await;
    let old_creds = mqtt_credentials(&stack, &earlier.access).await;
    let current = stack.login(&org, &bob_phone, "new-phone").await;
    let creds = mqtt_credentials(&stack, &current.access).await;
    // The old phone's session ended without its broker client being deleted (as when
    // the broker was down at logout).
    stack
        .mongo
        .collection::<mongodb::bson::Document>("auth_sessions")
        .update_one(
            mongodb::bson::doc! { "_id": &earlier.session_id },
            mongodb::bson::doc! { "$set": { "revoked_at_ms": support::now_ms(),
            "revoked_reason": "logout" } },
        )
        .await
        .unwrap();

    let (status, _, body) = stack
        .call("DELETE", "/v1/agents/bob", Some(&admin), None)
        .await;
    assert_eq!(status, 202, "{body}");
    refused_within_seconds(
        &creds,
        "the broker to refuse the deactivated agent's live login",
    )
    .await;
    refused_within_seconds(
        &old_creds,
        "the broker to refuse the deactivated agent's old login",
    )
    .await;
    stack.stop().await;
}

/// Broker logins never expired: a session that ended (expired, or revoked while the
/// broker was down) kept its MQTT client for good. The reconcile deletes it.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_sessions_mqtt_login_is_refused_by_the_broker() {
    let stack = ApiStack::start("atk-expire", |c| c.api.mqtt_reconcile_secs = 1).await;
    let org = stack.org("atkexpire").await;
    let tokens = stack.login(&org, &org.admin_phone, "kiosk").await;
    let creds = mqtt_credentials(&stack, &tokens.access).await;
    stack
        .mongo
        .collection::<mongodb::bson::Document>("auth_sessions")
        .update_one(
            mongodb::bson::doc! { "_id": &tokens.session_id },
            mongodb::bson::doc! { "$set": { "expires_at_ms": support::now_ms() - 1 } },
        )
        .await
        .unwrap();
    refused_within_seconds(&creds, "the broker to refuse an expired session's login").await;
    stack.stop().await;
}

/// A demoted admin's access token stayed an admin token until it expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_admins_tokens_stop_working_at_once() {
    let stack = ApiStack::start("atk-demote", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let org = stack.org("atkdemote").await;
    let admin = admin_token(&stack, &org).await;
    let carol_phone = format!("1777{}", &org.admin_phone[4..]);
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/agents",
            Some(&admin),
            Some(
                json!({ "agent_id": "carol", "name": "Carol", "phone": carol_phone,
                         "role": "admin", "capacity": 5 }),
            ),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    stack
        .wait_doc("agents", &format!("{}:carol", org.org))
        .await;
    let carol = stack.login(&org, &carol_phone, "carol-laptop").await;
    assert_eq!(
        stack
            .call("GET", "/v1/agents", Some(&carol.access), None)
            .await
            .0,
        200
    );
    let (status, _, body) = stack
        .call(
            "PATCH",
            "/v1/agents/carol",
            Some(&admin),
            Some(json!({ "role": "agent" })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, _) = stack
        .call("POST", "/v1/agents", Some(&carol.access), Some(json!({
            "agent_id": "mallory", "name": "M", "phone": "15550001111", "role": "admin", "capacity": 1 })))
        .await;
    assert_eq!(status, 401, "the demoted admin's token still works");
    stack.stop().await;
}

/// Runs the presence bridge on `config`'s prefix until the token is cancelled.
fn start_bridge(config: &coexist::Config, id: &str) -> tokio_util::sync::CancellationToken {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (config, token) = (config.clone(), shutdown.clone());
    let client_id = format!("atk-presence-{id}");
    tokio::spawn(async move {
        let publisher = config.kafka.publisher("ingest").await.unwrap();
        let presence = ingest::presence::PresenceConfig {
            enabled: true,
            client_id,
        };
        ingest::presence::run(config.mqtt.clone(), presence, publisher, token).await
    });
    shutdown
}

/// A service-client publisher (may publish anywhere under `coexist/`).
async fn service_client(config: &coexist::Config, name: &str) -> rumqttc::AsyncClient {
    let mut options = config
        .mqtt
        .options(&format!("atk-{name}-{}", support::unique()));
    options.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

/// Presence bridge stall: a presence payload bigger than Kafka's record limit was
/// never produced and never acked, so the bridge reconnected to the same retained
/// message forever and no org's presence got through.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_mib_presence_message_does_not_stop_presence_for_another_org() {
    use rumqttc::QoS;
    let id = support::unique();
    let mut config = coexist::Config::load(None).unwrap();
    if config.mqtt.password.is_empty() {
        config.mqtt.password = runtime::Secret::new("coexist-dev");
    }
    config.mqtt.topic_prefix = format!("coexist/atk{id}");
    config.kafka.client_id = format!("test-atk-presence-{id}");
    let _ = coexist::roles::apply_topics(&config).await;
    let prefix = config.mqtt.topic_prefix.clone();
    let (mallory_org, bob_org) = (format!("evil{id}"), format!("good{id}"));
    let huge_topic = format!("{prefix}/{mallory_org}/presence/mallory");
    let big_topic = format!("{prefix}/{mallory_org}/presence/mallory2");
    let bridge = start_bridge(&config, &id);

    // The broker may refuse the 2 MiB one itself (scripts/stack sets
    // message_size_limit); a separate client, so a disconnect costs nothing else.
    let attacker = service_client(&config, "huge").await;
    let huge = format!(
        r#"{{"state":"online","device_id":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    attacker
        .publish(&huge_topic, QoS::AtLeastOnce, true, huge)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 4 KiB: under any broker limit, over the bridge's 1 KiB cap.
    let big = format!(r#"{{"state":"online","device_id":"{}"}}"#, "y".repeat(4000));
    let big_len = big.len();
    let sender = service_client(&config, "big").await;
    sender
        .publish(&big_topic, QoS::AtLeastOnce, true, big)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bob = service_client(&config, "bob").await;
    bob.publish(
        format!("{prefix}/{bob_org}/presence/bob"),
        QoS::AtLeastOnce,
        false,
        r#"{"state":"online","device_id":"bobs-phone"}"#,
    )
    .await
    .unwrap();

    let brokers = config.kafka.brokers.clone();
    let bob_arrived = tokio::time::timeout(
        Duration::from_secs(40),
        support::read_until(
            &brokers,
            events::topics::AGENTS_PRESENCE,
            &format!("{bob_org}/"),
            "bobs-phone",
        ),
    )
    .await;
    let dead = if bob_arrived.is_ok() {
        tokio::time::timeout(
            Duration::from_secs(40),
            support::read_records(&brokers, events::topics::DEADLETTER, &big_topic, "yyyy", 1),
        )
        .await
        .ok()
    } else {
        None
    };
    // Clear the retained messages before judging, so the broker keeps no test state.
    for topic in [&huge_topic, &big_topic] {
        let _ = sender.publish(topic, QoS::AtLeastOnce, true, "").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    bridge.cancel();

    let bob_events = bob_arrived.expect("bob's presence never reached Kafka behind the 2 MiB one");
    assert!(bob_events.last().unwrap().contains(r#""state":"online""#));
    let dead = dead.expect("the 4 KiB presence message was not dead-lettered");
    let (value, headers) = dead.last().unwrap();
    assert!(
        value.len() <= 1024,
        "dead letter not cut: {} bytes",
        value.len()
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(header("coexist.error").contains("limit"), "{headers:?}");
    assert_eq!(header("coexist.original_bytes"), big_len.to_string());
}

/// Forged presence: on `.../conversations/{id}/activity` the agent and the state came
/// from the payload and any agent could publish there, so Mallory could mark Bob
/// offline (his conversations requeued) or online (never pushed).
#[tokio::test(flavor = "multi_thread")]
async fn forged_activity_changes_no_ones_presence() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let stack = ApiStack::start("atk-forge", |_| {}).await;
    let org = stack.org("atkforge").await;
    let bridge = start_bridge(&stack.config, &stack.id);
    let mallory = stack.login(&org, &org.admin_phone, "mallory-phone").await;
    let creds = mqtt_credentials(&stack, &mallory.access).await;
    let mut options = MqttOptions::new(
        creds["client_id"].as_str().unwrap(),
        creds["host"].as_str().unwrap(),
        creds["port"].as_u64().unwrap() as u16,
    );
    options
        .set_credentials(
            creds["username"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
        )
        .set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let prefix = &stack.config.mqtt.topic_prefix;
    let o = &org.org;
    let forgeries = [
        // The old topic: Bob named in the payload.
        (
            format!("{prefix}/{o}/conversations/1-2/activity"),
            r#"{"agent_id":"bob","device_id":"x","state":"offline"}"#,
        ),
        // Bob's own activity topic: not Mallory's to publish on.
        (
            format!("{prefix}/{o}/conversations/1-2/activity/bob"),
            r#"{"device_id":"x","state":"typing"}"#,
        ),
        // Her own topic, naming Bob and a presence state.
        (
            format!("{prefix}/{o}/conversations/1-2/activity/admin"),
            r#"{"agent_id":"bob","device_id":"x","state":"online"}"#,
        ),
        // Bob's presence topic.
        (format!("{prefix}/{o}/presence/bob"), "offline"),
    ];
    for (topic, payload) in &forgeries {
        client
            .publish(topic, QoS::AtLeastOnce, false, *payload)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .publish(
            format!("{prefix}/{o}/presence/admin"),
            QoS::AtLeastOnce,
            false,
            r#"{"state":"online","device_id":"marker"}"#,
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(
        Duration::from_secs(40),
        support::read_until(
            &stack.config.kafka.brokers,
            events::topics::AGENTS_PRESENCE,
            &format!("{o}/"),
            "marker",
        ),
    )
    .await;
    bridge.cancel();
    let seen = seen.expect("Mallory's own presence never arrived");
    for value in &seen {
        let event: Value = serde_json::from_str(value).unwrap();
        assert_ne!(event["agent_id"], "bob", "forged: {value}");
        if event["conversation_id"].is_string() {
            assert!(
                matches!(event["state"].as_str(), Some("viewing" | "typing")),
                "activity changed presence: {value}"
            );
        }
    }
    stack.stop().await;
}

/// Answers of `n` calls to `/healthz`, each claiming to come from `xff(i)`.
async fn statuses_with_forwarded_for(
    stack: &ApiStack,
    n: usize,
    xff: impl Fn(usize) -> String,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let resp = stack
            .http
            .get(stack.url("/healthz"))
            .header("x-forwarded-for", xff(i))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    statuses
}

/// Edge: a caller may not buy a fresh per-address budget by writing a new
/// `X-Forwarded-For` on each request.
#[tokio::test(flavor = "multi_thread")]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let stack = ApiStack::start("atk-xff", |c| c.api.rate_limit.per_ip_per_minute = 20).await;
    let statuses = statuses_with_forwarded_for(&stack, 25, |i| format!("203.0.113.{i}")).await;
    assert!(
        statuses.contains(&429),
        "spoofed addresses got fresh budgets: {statuses:?}"
    );
    stack.stop().await;
}

/// Edge: behind a trusted proxy, every client shared the proxy's one bucket (so one
/// noisy client locked everyone out); now each gets its own, and the limit still
/// holds per client.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let stack = ApiStack::start("atk-proxy", |c| {
        c.api.rate_limit.per_ip_per_minute = 20;
        c.api.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let distinct = statuses_with_forwarded_for(&stack, 25, |i| format!("198.51.100.{i}")).await;
    assert!(
        !distinct.contains(&429),
        "distinct clients shared a bucket: {distinct:?}"
    );
    // IPv6 clients are one bucket per /64: new interface ids buy nothing.
    let same_64 =
        statuses_with_forwarded_for(&stack, 25, |i| format!("2001:db8:7:7::{:x}", i + 1)).await;
    assert!(
        same_64.contains(&429),
        "one /64 got many budgets: {same_64:?}"
    );
    stack.stop().await;
}

/// Edge: ingest read a body for as long as the sender cared to take, with no limit
/// on requests at once: a few slow senders held tasks and 4 MiB buffers forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_webhook_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = coexist::Config::load(None).unwrap();
    config.ingest.listen = format!("127.0.0.1:{}", support::free_port());
    config.ingest.app_secrets = vec![runtime::Secret::new(support::APP_SECRET)];
    config.ingest.request_timeout_ms = 1000;
    config.kafka.client_id = format!("test-atk-slow-{}", support::unique());
    let publisher = config.kafka.publisher("ingest").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(ingest::serve(
        config.ingest.clone(),
        publisher,
        ingest::webhook::NumberSource::Seed,
        shutdown.clone(),
    ));
    let address = config.ingest.listen.clone();
    support::wait_for("ingest to listen", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&address).await.is_ok()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              x-hub-signature-256: sha256=00\r\ncontent-length: 100000\r\n\r\n{\"object\":",
        )
        .await
        .unwrap();
    // ...and then nothing more, for as long as the server is willing to wait.
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await;
    shutdown.cancel();
    let n = read
        .expect("ingest waited 10 s for a body that never came")
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
}

/// A guessed "old" refresh token (any lower generation, even negative, any secret)
/// counted as reuse and revoked the session: anyone who knew a session id could log
/// its owner out.
#[tokio::test(flavor = "multi_thread")]
async fn a_guessed_refresh_token_cannot_revoke_a_session() {
    let stack = ApiStack::start("atk-refresh", |_| {}).await;
    let org = stack.org("atkrefresh").await;
    let tokens = stack.login(&org, &org.admin_phone, "phone").await;
    for generation in ["-1", "0"] {
        let forged = format!("{}.{generation}.guessed-secret", tokens.session_id);
        let (status, _, body) = stack
            .call(
                "POST",
                "/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": forged })),
            )
            .await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": tokens.refresh })),
        )
        .await;
    assert_eq!(
        status, 200,
        "the owner's session was revoked by a guess: {body}"
    );
    stack.stop().await;
}
