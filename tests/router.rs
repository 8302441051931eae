//! The router on the real broker: a least-loaded burst ends balanced, an agent who
//! goes offline loses their conversations, a router killed with SIGKILL mid-burst
//! restarts to the assignments a run without the kill makes, and two routers in one
//! group hand partitions to each other (kill, restart) without a conflicting owner.
//! (The notifier, which follows the router's assignments, is tests/notifier.rs.)

mod support;
use support::router::{AGENTS, BURST, CAPACITY, Scenario, loads, owners};
use support::{Guard, now_ms};

use std::collections::BTreeMap;

use events::inbox::{ConversationState, PresenceEvent, PresenceState};
use events::{WhatsAppEvent, topics};
use processors::router::{Input, Policy, Router};
use support::unique;

/// A deployment has one router group; two test routers over the shared topic would
/// each route the other's conversations too (queued, for want of its agents). So the
/// router tests take turns.
static ONE_ROUTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_loaded_burst_ends_balanced_and_an_offline_agent_is_relieved() {
    let _turn = ONE_ROUTER_AT_A_TIME.lock().await;
    let s = Scenario::new("balance").await;
    for agent in 0..AGENTS {
        s.send_presence(&s.presence(agent, PresenceState::Online))
            .await;
    }
    let mut roles = Guard::new();
    let (config, stop) = (s.config.clone(), roles.shutdown.clone());
    roles.spawn(async move {
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
    roles.shutdown.cancel();
    for router in roles.take() {
        router.await.unwrap().unwrap();
    }
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
