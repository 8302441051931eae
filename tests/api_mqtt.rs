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
