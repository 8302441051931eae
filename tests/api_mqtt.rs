//! MQTT access through the real Mosquitto: the credentials the API issues let a
//! device receive its own inbox, while the broker refuses (SUBACK failure) another
//! org's topics and a colleague's inbox, and refuses a wrong password at connect.

mod api_support;
mod support;

use std::time::Duration;

use api_support::ApiStack;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::Value;

fn client(creds: &Value, password: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(
        creds["client_id"].as_str().unwrap(),
        creds["host"].as_str().unwrap(),
        creds["port"].as_u64().unwrap() as u16,
    );
    options
        .set_credentials(creds["username"].as_str().unwrap(), password)
        .set_clean_session(true);
    AsyncClient::new(options, 10)
}

/// Polls until the next SUBACK; returns whether the broker granted it.
async fn suback(events: &mut EventLoop) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("no SUBACK in 10 s")
            .expect("connection failed")
        {
            Event::Incoming(Packet::SubAck(ack)) => {
                return matches!(ack.return_codes[..], [SubscribeReasonCode::Success(_)]);
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issued_credentials_reach_the_own_inbox_and_nothing_of_another_org() {
    let stack = ApiStack::start("api-mqtt", |_| {}).await;
    let a = stack.org("mqa").await;
    let b = stack.org("mqb").await;
    let tokens = stack.login(&a, &a.admin_phone, "mqtt-device").await;
    let (status, _, creds) = stack
        .call("POST", "/v1/mqtt/credentials", Some(&tokens.access), None)
        .await;
    assert_eq!(status, 200, "{creds}");
    let prefix = &stack.config.mqtt.topic_prefix;
    let inbox = format!("{prefix}/{}/agents/admin/inbox", a.org);
    assert_eq!(creds["inbox_topic"], inbox.as_str());

    let (device, mut events) = client(&creds, creds["password"].as_str().unwrap());
    device.subscribe(&inbox, QoS::AtLeastOnce).await.unwrap();
    assert!(suback(&mut events).await, "own inbox refused");
    let other_org = format!("{prefix}/{}/conversations/#", b.org);
    device
        .subscribe(&other_org, QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(!suback(&mut events).await, "another org's topics granted");
    let colleague = format!("{prefix}/{}/agents/bob/inbox", a.org);
    device
        .subscribe(&colleague, QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(!suback(&mut events).await, "a colleague's inbox granted");
    let everything = format!("{prefix}/#");
    device
        .subscribe(&everything, QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(!suback(&mut events).await, "the whole tree granted");

    // The service (as the mqtt sink would) publishes to A's inbox and to B's topics.
    let mut options = stack.config.mqtt.options(&format!("svc-{}", stack.id));
    options.set_clean_session(true);
    let (service, mut service_events) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while service_events.poll().await.is_ok() {} });
    let b_topic = format!("{prefix}/{}/conversations/x", b.org);
    service
        .publish(&b_topic, QoS::AtLeastOnce, false, "for org B")
        .await
        .unwrap();
    service
        .publish(&inbox, QoS::AtLeastOnce, false, "for A's admin")
        .await
        .unwrap();

    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(event) = tokio::time::timeout_at(deadline, events.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event.expect("connection failed") {
            received.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
    }
    assert_eq!(received, vec![(inbox.clone(), "for A's admin".to_string())]);

    // A wrong password is refused at connect.
    let (_, mut bad) = client(&creds, "wrong-password");
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), bad.poll())
            .await
            .expect("no answer")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break false,
            Ok(_) => continue,
            Err(_) => break true,
        }
    };
    assert!(refused, "a wrong password connected");

    // Logging out ends the device's MQTT login too.
    assert_eq!(
        stack
            .call("POST", "/v1/auth/logout", Some(&tokens.access), None)
            .await
            .0,
        204
    );
    let password = creds["password"].as_str().unwrap().to_string();
    support::wait_for(
        "the broker to refuse a logged-out device",
        Duration::from_secs(15),
        || async {
            let (_, mut events) = client(&creds, &password);
            loop {
                match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return false,
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => return true,
                    Err(_) => return false,
                }
            }
        },
    )
    .await;
    stack.stop().await;
}

/// What Mosquitto's dynamic security decides for a client holding `acls` (the JSON
/// `api::mqtt_access::agent_acls` renders), with Mosquitto's own matching: a
/// subscription must lie inside a `subscribePattern` (the plugin's `sub_acl_check`:
/// a requested `+` or `#` only under an ACL wildcard; `a/#` covers `a` too);
/// a publish must match a `publishClientSend` filter (`mosquitto_topic_matches_sub`);
/// everything else is denied (publish and subscribe default to deny).
fn dynsec_allows(acls: &[Value], action: &str, topic: &str) -> bool {
    let kind = match action {
        "subscribe" => "subscribePattern",
        "publish" => "publishClientSend",
        _ => return false,
    };
    if action == "publish" && (topic.contains('+') || topic.contains('#')) {
        return false;
    }
    acls.iter()
        .filter(|acl| acl["acltype"] == kind && acl["allow"] == true)
        .any(|acl| {
            let filter = acl["topic"].as_str().unwrap();
            if action == "subscribe" {
                sub_acl_check(filter, topic)
            } else {
                topic_matches_sub(filter, topic)
            }
        })
}

/// Mosquitto's dynsec `sub_acl_check(acl, sub)`, level by level.
fn sub_acl_check(acl: &str, sub: &str) -> bool {
    let (acl, sub): (Vec<&str>, Vec<&str>) = (acl.split('/').collect(), sub.split('/').collect());
    for (i, level) in acl.iter().enumerate() {
        if *level == "#" {
            // Covers the rest, the parent level included (`a/#` covers `a`): the
            // real broker grants it (mosquitto_enforces_the_access_matrix).
            return i == acl.len() - 1;
        }
        let Some(want) = sub.get(i) else {
            return false;
        };
        match *level {
            "+" => {
                if *want == "#" {
                    return false;
                }
            }
            literal => {
                if *want != literal {
                    return false;
                }
            }
        }
    }
    acl.len() == sub.len()
}

/// `mosquitto_topic_matches_sub(filter, topic)` for a topic name.
fn topic_matches_sub(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') != filter.starts_with('$') {
        return false;
    }
    let (filter, topic): (Vec<&str>, Vec<&str>) =
        (filter.split('/').collect(), topic.split('/').collect());
    for (i, level) in filter.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < topic.len() => {}
            literal if topic.get(i) == Some(&literal) => {}
            _ => return false,
        }
    }
    filter.len() == topic.len()
}

/// The topics a device of `agent` in `org` is tried on: its own, a colleague's,
/// wildcards, the tree above, and another org's.
fn matrix_topics(prefix: &str, org: &str, agent: &str, other_org: &str) -> Vec<String> {
    let o = format!("{prefix}/{org}");
    let x = format!("{prefix}/{other_org}");
    vec![
        format!("{o}/agents/{agent}/inbox"),
        format!("{o}/agents/bob/inbox"),
        format!("{o}/agents/+/inbox"),
        format!("{o}/agents/{agent}/inbox/x"),
        format!("{o}/conversations/#"),
        format!("{o}/conversations/c1"),
        format!("{o}/conversations/+"),
        format!("{o}/conversations"),
        format!("{o}/conversations/c1/activity/{agent}"),
        format!("{o}/conversations/c1/activity/bob"),
        format!("{o}/conversations/+/activity/{agent}"),
        format!("{o}/presence/{agent}"),
        format!("{o}/presence/bob"),
        format!("{o}/presence/#"),
        format!("{o}/presence/+"),
        format!("{o}/#"),
        format!("{prefix}/#"),
        "#".to_string(),
        format!("{prefix}/+/conversations/#"),
        format!("{x}/conversations/#"),
        format!("{x}/conversations/c1"),
        format!("{x}/presence/{agent}"),
        format!("{x}/agents/{agent}/inbox"),
        "$CONTROL/dynamic-security/v1".to_string(),
    ]
}

/// The real Mosquitto enforces the matrix as the dynsec model says: every
/// subscription's SUBACK, and which publishes of the device reach a subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_enforces_the_access_matrix() {
    let stack = ApiStack::start("api-mqtt-matrix", |_| {}).await;
    let a = stack.org("mxa").await;
    let b = stack.org("mxb").await;
    let tokens = stack.login(&a, &a.admin_phone, "matrix-device").await;
    let (status, _, creds) = stack
        .call("POST", "/v1/mqtt/credentials", Some(&tokens.access), None)
        .await;
    assert_eq!(status, 200, "{creds}");
    let prefix = stack.config.mqtt.topic_prefix.clone();
    let acls = api::mqtt_access::agent_acls(&prefix, &a.org, "admin");
    let topics = matrix_topics(&prefix, &a.org, "admin", &b.org);

    let (device, mut events) = client(&creds, creds["password"].as_str().unwrap());
    let mut mismatches = Vec::new();
    for topic in &topics {
        device.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let granted = suback(&mut events).await;
        if granted != dynsec_allows(&acls, "subscribe", topic) {
            mismatches.push(format!("subscribe {topic}: broker granted={granted}"));
        }
    }

    // A service subscriber sees which of the device's publishes the broker let through.
    let mut options = stack.config.mqtt.options(&format!("svc-mx-{}", stack.id));
    options.set_clean_session(true);
    let (service, mut service_events) = AsyncClient::new(options, 100);
    service
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(suback(&mut service_events).await);
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = service_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = seen_tx.send(p.topic.clone());
            }
        }
    });
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publishable: Vec<&String> = topics
        .iter()
        .filter(|t| !t.contains('+') && !t.contains('#') && t.starts_with(&prefix))
        .collect();
    for topic in &publishable {
        device
            .publish(topic.as_str(), QoS::AtLeastOnce, false, "from the device")
            .await
            .unwrap();
    }
    // A marker through the service's own publish: everything the device sent before
    // it has been routed once the marker arrives.
    let marker = format!("{prefix}/{}/conversations/marker", b.org);
    tokio::time::sleep(Duration::from_millis(500)).await;
    service
        .publish(&marker, QoS::AtLeastOnce, false, "marker")
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let topic = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .expect("the marker did not arrive")
            .unwrap();
        if topic == marker {
            break;
        }
        seen.insert(topic);
    }
    for topic in &publishable {
        let delivered = seen.contains(topic.as_str());
        if delivered != dynsec_allows(&acls, "publish", topic) {
            mismatches.push(format!("publish {topic}: delivered={delivered}"));
        }
    }
    // The matrix is not trivially one-sided.
    let allowed = topics
        .iter()
        .filter(|t| dynsec_allows(&acls, "subscribe", t))
        .count();
    assert!(allowed >= 5 && allowed < topics.len() - 5, "{allowed}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    stack.stop().await;
}

/// EMQX's hooks, called as EMQX calls them (its documented request bodies), answer
/// what Mosquitto's dynsec ACLs decide for the same devices, topics and actions;
/// devices log in with the password the API issued, only while their session lives.
#[tokio::test(flavor = "multi_thread")]
async fn emqx_hooks_answer_as_the_dynsec_acls_decide() {
    let hooks = format!("127.0.0.1:{}", support::free_port());
    let stack = ApiStack::start("api-emqx", |c| {
        c.api.mqtt_broker = api::MqttBroker::Emqx;
        c.api.hooks_listen = hooks.clone();
    })
    .await;
    let a = stack.org("exa").await;
    let b = stack.org("exb").await;
    let mut devices = Vec::new();
    for org in [&a, &b] {
        let tokens = stack.login(org, &org.admin_phone, "emqx-device").await;
        let (status, _, creds) = stack
            .call("POST", "/v1/mqtt/credentials", Some(&tokens.access), None)
            .await;
        assert_eq!(status, 200, "{creds}");
        devices.push((org.clone(), tokens, creds));
    }
    let http = reqwest::Client::new();
    let hook = |path: &str, body: Value| {
        let (http, url) = (http.clone(), format!("http://{hooks}{path}"));
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            response.json::<Value>().await.unwrap()
        }
    };
    // emqx.conf's body templates, filled in as EMQX fills them.
    let authn = |username: &str, password: &str, clientid: &str| serde_json::json!({ "username": username, "password": password, "clientid": clientid });

    // Authentication.
    for (_, tokens, creds) in &devices {
        let user = creds["username"].as_str().unwrap();
        let password = creds["password"].as_str().unwrap();
        let answer = hook("/emqx/authn", authn(user, password, user)).await;
        assert_eq!(
            answer,
            serde_json::json!({ "result": "allow", "is_superuser": false })
        );
        assert_eq!(
            hook("/emqx/authn", authn(user, "wrong", user)).await["result"],
            "deny"
        );
        assert_eq!(
            hook("/emqx/authn", authn(user, password, "other-client")).await["result"],
            "deny"
        );
        // The session holds a hash, never the password.
        let session = stack
            .mongo
            .collection::<mongodb::bson::Document>("auth_sessions")
            .find_one(mongodb::bson::doc! { "_id": &tokens.session_id })
            .await
            .unwrap()
            .unwrap();
        let stored = session.get_str(api::emqx::PASSWORD_HASH_FIELD).unwrap();
        assert_ne!(stored, password);
        assert!(!session.to_string().contains(password));
    }
    let service = &stack.config.mqtt;
    let answer = hook(
        "/emqx/authn",
        authn(
            &service.username,
            service.password.expose(),
            "coexist-sink-mqtt",
        ),
    )
    .await;
    assert_eq!(
        answer,
        serde_json::json!({ "result": "allow", "is_superuser": true })
    );
    assert_eq!(
        hook("/emqx/authn", authn(&service.username, "guess", "x")).await["result"],
        "deny"
    );

    // Authorization: the hook equals the dynsec decision over the whole matrix.
    let prefix = stack.config.mqtt.topic_prefix.clone();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (i, (org, _, creds)) in devices.iter().enumerate() {
        let other = &devices[1 - i].0;
        let user = creds["username"].as_str().unwrap();
        let acls = api::mqtt_access::agent_acls(&prefix, &org.org, "admin");
        for topic in matrix_topics(&prefix, &org.org, "admin", &other.org) {
            for action in ["subscribe", "publish"] {
                let body = serde_json::json!({
                    "username": user, "clientid": user, "topic": topic, "action": action,
                });
                let answer = hook("/emqx/authz", body).await;
                let expected = if dynsec_allows(&acls, action, &topic) {
                    "allow"
                } else {
                    "deny"
                };
                checked += 1;
                if answer["result"] != expected {
                    mismatches.push(format!(
                        "{user} {action} {topic}: hook {answer}, dynsec {expected}"
                    ));
                }
            }
        }
    }
    assert!(checked >= 90, "{checked}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // The hooks are not on the public listener.
    let public = http
        .post(stack.url("/emqx/authz"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);

    // Logging out ends the device's broker login.
    let (org_a, tokens_a, creds_a) = &devices[0];
    let _ = org_a;
    assert_eq!(
        stack
            .call("POST", "/v1/auth/logout", Some(&tokens_a.access), None)
            .await
            .0,
        204
    );
    let user = creds_a["username"].as_str().unwrap();
    let password = creds_a["password"].as_str().unwrap();
    assert_eq!(
        hook("/emqx/authn", authn(user, password, user)).await["result"],
        "deny"
    );
    stack.stop().await;
}
