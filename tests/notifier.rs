//! The notifier on the real broker, behind a real router: an agent with no online
//! device is pushed once per conversation (repeats within the collapse window are
//! collapsed), and not while a device is online.

mod support;

use std::time::Duration;

use events::inbox::PresenceState;
use events::topics;
use support::router::Scenario;
use support::{Guard, now_ms};

/// Pushes keyed by `agent` on `notifications.push`, read from the start for `for_ms`.
async fn pushes_for(
    s: &Scenario,
    agent: &str,
    until: &str,
) -> Vec<events::delivery::PushNotification> {
    let values = support::read_until(
        &s.config.kafka.brokers,
        topics::NOTIFICATIONS_PUSH,
        agent,
        until,
    )
    .await;
    values
        .iter()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_no_online_device_is_pushed_once_per_conversation() {
    let mut s = Scenario::new("notify").await;
    s.config.processors.router.router.offline_grace_ms = 600_000; // keeps its conversations
    let agent = format!("agent0-{}", s.number);
    for agents in s.config.processors.router.router.orgs.values_mut() {
        agents.truncate(1); // one agent, named for this test
        agents[0].agent_id = agent.clone();
    }
    let mut online = s.presence(0, PresenceState::Online);
    online.agent_id = agent.clone();
    s.send_presence(&online).await;

    let mut roles = Guard::new();
    for name in [
        coexist::roles::ProcessorName::Router,
        coexist::roles::ProcessorName::Notifier,
    ] {
        let (config, stop) = (s.config.clone(), roles.shutdown.clone());
        roles.spawn(async move { coexist::roles::process(&config, name, stop).await });
    }
    // The notifier's group starts at the present: let it join first (about half
    // the session timeout, STACK.md).
    tokio::time::sleep(Duration::from_millis(u64::from(
        s.config.kafka.session_timeout_ms,
    )))
    .await;
    // Online: assigned, no push (the device has it over MQTT).
    s.send_messages(0..1).await;
    s.assignments_until("the conversation to be assigned", |o| o.len() == 1)
        .await;
    // Offline (within the grace): the customer writes twice; one push.
    let mut offline = online.clone();
    offline.state = PresenceState::Offline;
    offline.at_ms = now_ms();
    s.send_presence(&offline).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the notifier sees presence live
    let mut again = s.message(0);
    again.id = format!("{}-again", again.id);
    let mut third = s.message(0);
    third.id = format!("{}-third", third.id);
    for event in [&again, &third] {
        s.publisher
            .send_json(topics::WHATSAPP_EVENTS, &s.number, event, vec![])
            .await
            .unwrap();
    }
    let pushes = pushes_for(&s, &agent, &again.id).await;
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].id, format!("{}:{agent}", again.id));
    assert_eq!(
        (pushes[0].title.as_str(), pushes[0].body.as_str()),
        ("+15550000000", "hi")
    );
    // Everything on the topic to its end: the third message was collapsed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kafka = s.config.kafka.clone();
    let (values, _) = tokio::task::spawn_blocking(move || {
        runtime::table::read_whole(&kafka, topics::NOTIFICATIONS_PUSH, "test-pushes")
    })
    .await
    .unwrap()
    .unwrap();
    let for_agent: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.contains(&agent))
        .collect();
    assert_eq!(
        for_agent.len(),
        1,
        "the third message was not collapsed: {for_agent:?}"
    );
    roles.shutdown.cancel();
    for role in roles.take() {
        role.await.unwrap().unwrap();
    }
}
