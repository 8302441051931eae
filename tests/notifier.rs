//! The notifier on the real broker, behind a real router: an agent with no online
//! device is pushed once per conversation (repeats within the collapse window are
//! collapsed), and not while a device is online, even when the news that the device
//! went offline reaches the notifier after the messages that came later.

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

/// Records `role` has consumed from `topic` in this test process, from its metrics.
fn consumed(role: &str, topic: &str) -> u64 {
    let (role, topic) = (format!("role=\"{role}\""), format!("topic=\"{topic}\""));
    runtime::observe::global()
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("coexist_records_in") && l.contains(&role) && l.contains(&topic))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_no_online_device_is_pushed_once_per_conversation() {
    let mut s = Scenario::new("notify").await;
    s.config.processors.router.router.offline_grace_ms = 600_000; // keeps its conversations
    // From the test's start, not from whenever the group has formed: nothing the
    // test sends before the join completes is skipped.
    s.config.processors.notifier.new_group_starts_at = s.config.kafka.new_group_start.clone();
    let agent = format!("agent0-{}", s.number);
    for agents in s.config.processors.router.router.orgs.values_mut() {
        agents.truncate(1); // one agent, named for this test
        agents[0].agent_id = agent.clone();
    }
    let mut online = s.presence(0, PresenceState::Online);
    online.agent_id = agent.clone();
    s.send_presence(&online).await;

    // Online: assigned (by the router alone for now).
    let mut roles = Guard::new();
    let spawn = |roles: &mut Guard, name| {
        let (config, stop) = (s.config.clone(), roles.shutdown.clone());
        roles.spawn(async move { coexist::roles::process(&config, name, stop).await });
    };
    spawn(&mut roles, coexist::roles::ProcessorName::Router);
    s.send_messages(0..1).await;
    s.assignments_until("the conversation to be assigned", |o| o.len() == 1)
        .await;
    // The notifier starts knowing the owner and the phone online (it folds the
    // assignments and presence so far), then reads from the test's start: message
    // 0 is withheld, since the device has it over MQTT. (Started later, it never
    // races its two topics: it reads assignments and messages in no order between
    // them, and a message read before its assignment has no one to push.)
    spawn(&mut roles, coexist::roles::ProcessorName::Notifier);
    support::wait_for("the notifier to start", Duration::from_secs(60), || async {
        let report = runtime::observe::global().readiness.report();
        report
            .ready_checks
            .iter()
            .any(|c| c == "process-notifier.consumer")
    })
    .await;
    // The phone goes offline (within the grace), then the customer writes twice;
    // one push. The offline reaches the notifier last: it follows presence on a
    // topic of its own, and may hear of it after later messages in any case.
    let mut offline = online.clone();
    offline.state = PresenceState::Offline;
    offline.at_ms = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await; // the messages come after it
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
    // Made certain here: the notifier has read both messages before the offline.
    support::wait_for(
        "the notifier to read the messages",
        Duration::from_secs(60),
        || async { consumed("process-notifier", topics::WHATSAPP_EVENTS) >= 3 },
    )
    .await;
    s.send_presence(&offline).await;
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
