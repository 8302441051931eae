//! The router on the real broker: a least-loaded burst ends balanced, an agent who
//! goes offline loses their conversations, a router killed with SIGKILL mid-burst
//! restarts to the assignments a run without the kill makes, and two routers in one
//! group hand partitions to each other (kill, restart) without a conflicting owner.

mod support;
use support::now_ms;

use std::collections::BTreeMap;
use std::time::Duration;

use coexist::Config;
use events::event::MessageEvent;
use events::inbox::{AssignmentEvent, ConversationState, PresenceEvent, PresenceState};
use events::{WhatsAppEvent, topics};
use processors::router::{AgentConfig, Input, Policy, Router};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use support::unique;

/// A deployment has one router group; two test routers over the shared topic would
/// each route the other's conversations too (queued, for want of its agents). So the
/// router tests take turns.
static ONE_ROUTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AGENTS: usize = 5;
const CAPACITY: usize = 10;
const BURST: usize = 40;

struct Scenario {
    config: Config,
    org: String,
    number: String,
    publisher: runtime::Publisher,
}

impl Scenario {
    async fn new(name: &str) -> Self {
        let id = unique();
        let mut config = Config::load(None).unwrap();
        let org = format!("{name}-{id}");
        config.kafka.client_id = format!("test-router-{id}");
        config.kafka.new_group_start = now_ms().to_string();
        let router = &mut config.processors.router;
        router.router.default_policy = Policy::LeastLoaded;
        router.router.offline_grace_ms = 300;
        router.tick_ms = 100;
        let agents = (0..AGENTS)
            .map(|i| AgentConfig {
                agent_id: format!("agent{i}"),
                capacity: CAPACITY,
            })
            .collect();
        router.router.orgs = BTreeMap::from([(org.clone(), agents)]);
        coexist::topics::apply(&config.kafka, &coexist::topics::contract().unwrap(), 1)
            .await
            .unwrap();
        let publisher = config.kafka.publisher("router-test").await.unwrap();
        Self {
            config,
            number: format!("6{id}"),
            org,
            publisher,
        }
    }

    fn presence(&self, agent: usize, state: PresenceState) -> PresenceEvent {
        PresenceEvent {
            org: self.org.clone(),
            agent_id: format!("agent{agent}"),
            device_id: "phone".into(),
            state,
            conversation_id: None,
            at_ms: now_ms(),
        }
    }

    async fn send_presence(&self, event: &PresenceEvent) {
        self.publisher
            .send_json(topics::AGENTS_PRESENCE, &self.org, event, vec![])
            .await
            .unwrap();
    }

    fn message(&self, i: usize) -> WhatsAppEvent {
        self.message_on(&self.number, i)
    }

    fn message_on(&self, number: &str, i: usize) -> WhatsAppEvent {
        let contact = format!("1555{i:07}");
        let wamid = format!("wamid.router.{number}.{i}");
        MessageEvent::builder(&self.org, number, &contact, &wamid)
            .sent_at(now_ms() / 1000)
            .received_at_ms(now_ms())
            .preview("hi")
            .event()
    }

    async fn send_messages(&self, range: std::ops::Range<usize>) {
        for i in range {
            let event = self.message(i);
            self.publisher
                .send_json(topics::WHATSAPP_EVENTS, &self.number, &event, vec![])
                .await
                .unwrap();
        }
    }

    /// Reads this org's assignments from the start until `done` holds for the
    /// current owners; returns every output read, in order.
    async fn assignments_until(
        &self,
        what: &str,
        done: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Vec<AssignmentEvent> {
        // No consumer group: every partition assigned explicitly from its start, so
        // nothing depends on a group's join or offset reset.
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.config.kafka.brokers)
            .set("group.id", format!("reader-{}", unique()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(
                Some(topics::CONVERSATION_ASSIGNMENTS),
                Duration::from_secs(10),
            )
            .unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment
                .add_partition_offset(
                    topics::CONVERSATION_ASSIGNMENTS,
                    partition.id(),
                    rdkafka::Offset::Beginning,
                )
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut outputs = Vec::new();
        loop {
            let owners = owners(&outputs);
            if done(&owners) {
                return outputs;
            }
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; owners now {owners:?}"))
                .unwrap();
            let output: AssignmentEvent =
                events::codec::decode(message.payload().unwrap_or_default()).unwrap();
            if output.org == self.org {
                outputs.push(output);
            }
        }
    }
}

/// Conversation → current owner, folded from the outputs in order.
fn owners(outputs: &[AssignmentEvent]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for a in outputs.iter().filter(|a| a.rejected.is_none()) {
        match (&a.state, &a.assignee) {
            (ConversationState::Assigned, Some(agent)) => {
                owners.insert(a.conversation_id.clone(), agent.clone())
            }
            _ => owners.remove(&a.conversation_id),
        };
    }
    owners
}

fn loads(owners: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut loads = BTreeMap::new();
    for agent in owners.values() {
        *loads.entry(agent.clone()).or_default() += 1;
    }
    loads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_loaded_burst_ends_balanced_and_an_offline_agent_is_relieved() {
    let _turn = ONE_ROUTER_AT_A_TIME.lock().await;
    let s = Scenario::new("balance").await;
    for agent in 0..AGENTS {
        s.send_presence(&s.presence(agent, PresenceState::Online))
            .await;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (config, stop) = (s.config.clone(), shutdown.clone());
    let router = tokio::spawn(async move {
        coexist::roles::process(&config, coexist::roles::ProcessorName::Router, stop).await
    });
    s.send_messages(0..BURST).await;
    let outputs = s
        .assignments_until("the burst to be assigned", |o| o.len() == BURST)
        .await;
    let per_agent = loads(&owners(&outputs));
    assert_eq!(per_agent.len(), AGENTS, "{per_agent:?}");
    assert!(
        per_agent.values().all(|&n| n == BURST / AGENTS),
        "not balanced: {per_agent:?}"
    );

    // agent0 goes offline: after the grace, its conversations go to the others.
    s.send_presence(&s.presence(0, PresenceState::Offline))
        .await;
    let outputs = s
        .assignments_until("agent0's conversations to move", |o| {
            o.len() == BURST && !o.values().any(|agent| agent == "agent0")
        })
        .await;
    let per_agent = loads(&owners(&outputs));
    assert!(
        per_agent.values().all(|&n| n <= CAPACITY),
        "over capacity: {per_agent:?}"
    );
    shutdown.cancel();
    router.await.unwrap().unwrap();
}

/// A router process that is killed when the test ends, however it ends: a router
/// left running would route every later test's conversations too.
struct RouterProcess(std::process::Child);

impl RouterProcess {
    /// `coexist -c FILE process router`, configured through a file like any deployment.
    fn start(file: &std::path::Path) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_coexist"))
            .args(["-c", file.to_str().unwrap(), "process", "router"])
            .env("COEXIST_LOG_LEVEL", "warn")
            // Several at once, and beside other worktrees: no fixed metrics port.
            .env("COEXIST_METRICS_LISTEN", "127.0.0.1:0")
            .spawn()
            .expect("start coexist process router");
        Self(child)
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_burst_restarts_to_the_same_assignments() {
    let _turn = ONE_ROUTER_AT_A_TIME.lock().await;
    let s = Scenario::new("sigkill").await;
    let presence: Vec<PresenceEvent> = (0..AGENTS)
        .map(|a| s.presence(a, PresenceState::Online))
        .collect();
    for event in &presence {
        s.send_presence(event).await;
    }
    // The router as its own process, configured through a file like any deployment.
    let file = std::env::temp_dir().join(format!("coexist-router-{}.toml", unique()));
    std::fs::write(&file, toml::to_string(&s.config).unwrap()).unwrap();
    let start = || RouterProcess::start(&file);
    let mut router = start();
    s.send_messages(0..BURST / 2).await;
    s.assignments_until("the first assignments", |o| o.len() >= 5)
        .await;
    router.0.kill().unwrap(); // SIGKILL: no flush, no commit
    router.0.wait().unwrap();
    s.send_messages(BURST / 2..BURST).await;
    let router = start();
    let outputs = s
        .assignments_until("the whole burst after the restart", |o| o.len() == BURST)
        .await;
    drop(router);
    let _ = std::fs::remove_file(&file);

    // The same inputs through the pure machine: the run without a kill.
    let mut oracle = Router::new(s.config.processors.router.router.clone());
    let mut expected = Vec::new();
    for event in presence {
        expected.extend(oracle.handle(Input::Presence(event), now_ms()));
    }
    for i in 0..BURST {
        expected.extend(oracle.handle(Input::Event(Box::new(s.message(i))), now_ms()));
    }
    assert_eq!(owners(&outputs), owners(&expected));
    // Downstream never saw one conversation given to two agents: every output for a
    // conversation names the same owner.
    let mut first_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for a in outputs
        .iter()
        .filter(|a| a.state == ConversationState::Assigned)
    {
        let owner = a.assignee.as_deref().unwrap_or_default();
        let seen = first_owner.entry(&a.conversation_id).or_insert(owner);
        assert_eq!(
            *seen, owner,
            "conversation {} was given to two agents",
            a.conversation_id
        );
    }
}

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
    let _turn = ONE_ROUTER_AT_A_TIME.lock().await;
    let mut s = Scenario::new("notify").await;
    s.config.processors.router.router.offline_grace_ms = 600_000; // keeps its conversations
    s.config
        .processors
        .router
        .router
        .orgs
        .values_mut()
        .for_each(|agents| agents.truncate(1));
    let agent = format!("agent0-{}", s.number);
    s.config
        .processors
        .router
        .router
        .orgs
        .values_mut()
        .for_each(|agents| agents[0].agent_id = agent.clone());
    let mut online = s.presence(0, PresenceState::Online);
    online.agent_id = agent.clone();
    s.send_presence(&online).await;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut roles = Vec::new();
    for name in [
        coexist::roles::ProcessorName::Router,
        coexist::roles::ProcessorName::Notifier,
    ] {
        let (config, stop) = (s.config.clone(), shutdown.clone());
        roles.push(tokio::spawn(async move {
            coexist::roles::process(&config, name, stop).await
        }));
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
    shutdown.cancel();
    for role in roles {
        role.await.unwrap().unwrap();
    }
}

/// Two routers in one consumer group split the partitions. One is SIGKILLed mid-burst
/// (the other takes its partitions after the session timeout and rebuilds them from
/// `conversations.assignments`), then restarted (the partitions are split again and
/// each side rebuilds what it gained). Round robin is per business number, so the
/// end state must equal one pure router's over the same inputs, and no conversation
/// may ever have been given to two agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_hand_partitions_over_without_a_conflicting_owner() {
    let _turn = ONE_ROUTER_AT_A_TIME.lock().await;
    let mut s = Scenario::new("pair").await;
    let router = &mut s.config.processors.router.router;
    router.default_policy = Policy::RoundRobin;
    for agents in router.orgs.values_mut() {
        for agent in agents {
            agent.capacity = 1000;
        }
    }
    // Several numbers, so both routers own some of them.
    let numbers: Vec<String> = (0..8).map(|k| format!("{}{k}", s.number)).collect();
    let per_phase = numbers.len() * 2;
    let phase = |p: usize| -> Vec<WhatsAppEvent> {
        (p * per_phase..(p + 1) * per_phase)
            .map(|i| s.message_on(&numbers[i % numbers.len()], i))
            .collect()
    };
    let presence: Vec<PresenceEvent> = (0..AGENTS)
        .map(|a| s.presence(a, PresenceState::Online))
        .collect();
    for event in &presence {
        s.send_presence(event).await;
    }
    let file = std::env::temp_dir().join(format!("coexist-router-{}.toml", unique()));
    std::fs::write(&file, toml::to_string(&s.config).unwrap()).unwrap();
    let start = || RouterProcess::start(&file);
    let send = |events: Vec<WhatsAppEvent>| {
        let publisher = s.publisher.clone();
        async move {
            for event in events {
                publisher
                    .send_json(
                        topics::WHATSAPP_EVENTS,
                        &event.phone_number_id,
                        &event,
                        vec![],
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let mut first = start();
    let second = start();
    send(phase(0)).await;
    s.assignments_until("phase 0 with two routers", |o| o.len() == per_phase)
        .await;
    first.0.kill().unwrap(); // SIGKILL: its partitions wait for the session timeout
    first.0.wait().unwrap();
    send(phase(1)).await;
    s.assignments_until("phase 1 after one router died", |o| {
        o.len() == 2 * per_phase
    })
    .await;
    let first = start();
    send(phase(2)).await;
    let outputs = s
        .assignments_until("phase 2 after it came back", |o| o.len() == 3 * per_phase)
        .await;
    drop((first, second));
    let _ = std::fs::remove_file(&file);

    let mut oracle = Router::new(s.config.processors.router.router.clone());
    let mut expected = Vec::new();
    for event in presence {
        expected.extend(oracle.handle(Input::Presence(event), now_ms()));
    }
    for event in (0..3).flat_map(phase) {
        expected.extend(oracle.handle(Input::Event(Box::new(event)), now_ms()));
    }
    assert_eq!(owners(&outputs), owners(&expected));
    let mut first_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for a in outputs
        .iter()
        .filter(|a| a.state == ConversationState::Assigned)
    {
        let owner = a.assignee.as_deref().unwrap_or_default();
        let seen = first_owner.entry(&a.conversation_id).or_insert(owner);
        assert_eq!(
            *seen, owner,
            "conversation {} was given to two agents",
            a.conversation_id
        );
    }
    // Each conversation was assigned once: re-read inputs emitted nothing new.
    let assigned = outputs
        .iter()
        .filter(|a| a.state == ConversationState::Assigned)
        .count();
    assert_eq!(assigned, 3 * per_phase, "an input was routed twice");
}
