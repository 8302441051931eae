//! A test per routing rule, then properties over random interleavings of messages,
//! presence, commands and ticks.

use std::collections::{BTreeMap, BTreeSet};

use events::event::{MessageEvent, Origin};
use events::ids::conversation_id;
use events::inbox::{
    AssignmentEvent, CommandAction, ConversationCommand, ConversationState, PresenceEvent,
    PresenceState,
};
use proptest::prelude::*;

use super::*;

const ORG: &str = "acme";
const PN: &str = "111";

fn config(policy: Policy) -> RouterConfig {
    RouterConfig {
        default_policy: policy,
        numbers: BTreeMap::new(),
        orgs: BTreeMap::from([(
            ORG.to_owned(),
            vec![agent("ana", 2), agent("bob", 2), agent("cy", 1)],
        )]),
        offline_grace_ms: 60_000,
        clock_tolerance_ms: 0,
        command_ttl_ms: 3_600_000,
        resolved_retention_ms: 3_600_000,
    }
}

fn agent(id: &str, capacity: usize) -> AgentConfig {
    AgentConfig {
        agent_id: id.to_owned(),
        capacity,
    }
}

fn conv(contact: &str) -> String {
    conversation_id(PN, contact)
}

fn message_on(pn: &str, id: &str, contact: &str, origin: Origin, now_ms: i64) -> Input {
    let event = MessageEvent::builder(ORG, pn, contact, id)
        .origin(origin)
        .sent_at(now_ms.div_euclid(1000))
        .received_at_ms(now_ms)
        .event();
    Input::Event(Box::new(event))
}

fn message(id: &str, contact: &str, origin: Origin, now_ms: i64) -> Input {
    message_on(PN, id, contact, origin, now_ms)
}

fn presence(agent: &str, device: &str, state: PresenceState, at_ms: i64) -> Input {
    Input::Presence(PresenceEvent {
        org: ORG.to_owned(),
        agent_id: agent.to_owned(),
        device_id: device.to_owned(),
        state,
        conversation_id: None,
        at_ms,
    })
}

fn online(agent: &str, at_ms: i64) -> Input {
    presence(agent, "phone", PresenceState::Online, at_ms)
}

fn command_on(pn: &str, id: &str, contact: &str, by: &str, action: CommandAction) -> Input {
    Input::Command(ConversationCommand {
        id: id.to_owned(),
        org: ORG.to_owned(),
        phone_number_id: pn.to_owned(),
        conversation_id: conversation_id(pn, contact),
        issued_by: by.to_owned(),
        at_ms: 0,
        action,
    })
}

fn command(id: &str, contact: &str, by: &str, action: CommandAction) -> Input {
    command_on(PN, id, contact, by, action)
}

fn to(agent: &str) -> CommandAction {
    CommandAction::Transfer {
        to_agent: Some(agent.to_owned()),
    }
}

/// The (state, assignee) pairs of outputs, for compact assertions.
fn moves(out: &[AssignmentEvent]) -> Vec<(ConversationState, Option<&str>)> {
    out.iter()
        .map(|e| (e.state, e.assignee.as_deref()))
        .collect()
}

/// The single command result among outputs.
fn result(out: &[AssignmentEvent]) -> &AssignmentEvent {
    let results: Vec<_> = out.iter().filter(|e| e.command_id.is_some()).collect();
    assert_eq!(results.len(), 1, "one result in {out:?}");
    results[0]
}

fn rejection(out: &[AssignmentEvent]) -> String {
    result(out).rejected.clone().unwrap_or_default()
}

use ConversationState::{Assigned, Open, Resolved};

// ---- messages ---------------------------------------------------------------

#[test]
fn customer_message_opens_then_routes_least_loaded() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(online("bob", 0), 0);
    let out = r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("ana"))]);
    let out = r.handle(message("m2", "c2", Origin::Customer, 2000), 2000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("bob"))]);
    // ana and bob hold one each: the tie goes to the lower id.
    let out = r.handle(message("m3", "c3", Origin::Customer, 3000), 3000);
    assert_eq!(moves(&out)[1], (Assigned, Some("ana")));
    assert_eq!(out[0].id, format!("event:{ORG}:m3:{}:4", conv("c3")));
}

#[test]
fn further_messages_in_a_live_conversation_change_nothing() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    assert!(
        r.handle(message("m2", "c1", Origin::Customer, 2000), 2000)
            .is_empty()
    );
    r.handle(online("ana", 3000), 3000);
    assert_eq!(r.owner(&conv("c1")), Some("ana"));
    assert!(
        r.handle(message("m3", "c1", Origin::Customer, 4000), 4000)
            .is_empty()
    );
}

#[test]
fn nobody_online_leaves_the_conversation_queued() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    let out = r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    assert_eq!(moves(&out), [(Open, None)]);
    assert_eq!(r.owner(&conv("c1")), None);
}

#[test]
fn history_and_api_messages_never_create_work() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    assert!(
        r.handle(message("h1", "c1", Origin::History, 1000), 1000)
            .is_empty()
    );
    assert!(
        r.handle(message("x1", "c1", Origin::Api, 1000), 1000)
            .is_empty()
    );
    assert!(r.snapshot().conversations.is_empty());
}

#[test]
fn history_never_reopens_a_resolved_conversation() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Resolve), 2000);
    assert!(
        r.handle(message("h1", "c1", Origin::History, 9000), 9000)
            .is_empty()
    );
}

#[test]
fn business_app_echo_takes_new_and_queued_conversations_without_load() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    let out = r.handle(message("e1", "c1", Origin::BusinessApp, 1000), 1000);
    assert_eq!(moves(&out), [(Assigned, Some(BUSINESS_APP))]);
    r.handle(message("m1", "c2", Origin::Customer, 2000), 2000);
    let out = r.handle(message("e2", "c2", Origin::BusinessApp, 3000), 3000);
    assert_eq!(moves(&out), [(Assigned, Some(BUSINESS_APP))]);
    assert!(r.snapshot().loads.is_empty());
    // A customer writing again leaves it with the Business app.
    r.handle(online("ana", 4000), 4000);
    assert!(
        r.handle(message("m2", "c2", Origin::Customer, 5000), 5000)
            .is_empty()
    );
    assert_eq!(r.owner(&conv("c2")), Some(BUSINESS_APP));
}

#[test]
fn business_app_echo_does_not_take_from_an_agent() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    assert!(
        r.handle(message("e1", "c1", Origin::BusinessApp, 2000), 2000)
            .is_empty()
    );
    assert_eq!(r.owner(&conv("c1")), Some("ana"));
}

#[test]
fn customer_message_reopens_a_resolved_conversation_and_routes_it() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Resolve), 2000);
    let out = r.handle(message("m2", "c1", Origin::Customer, 3000), 3000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("ana"))]);
}

#[test]
fn a_message_older_than_the_resolution_does_not_reopen() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message("m2", "c1", Origin::Customer, 2000), 2000);
    r.handle(command("k1", "c1", "ana", CommandAction::Resolve), 3000);
    // Meta redelivers m2 (or the router re-reads it after a crash).
    assert!(
        r.handle(message("m2", "c1", Origin::Customer, 2000), 9000)
            .is_empty()
    );
    assert_eq!(
        r.snapshot().conversations[0].state,
        ConversationState::Resolved
    );
}

#[test]
fn resolved_conversations_are_forgotten_after_their_retention_and_live_ones_never() {
    let mut r = Router::new(RouterConfig {
        resolved_retention_ms: 10_000,
        ..config(Policy::LeastLoaded)
    });
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Resolve), 2000);
    r.handle(message("m2", "c2", Origin::Customer, 3000), 3000); // ana holds it
    r.handle(command("k2", "c3", "ana", CommandAction::Resolve), 3000); // unknown: nothing
    assert_eq!(r.remembered_conversations(), 2);
    // Within the retention: kept, so a redelivery of m1 still reopens nothing.
    r.handle(Input::Tick, 12_000);
    assert_eq!(r.remembered_conversations(), 2);
    assert!(
        r.handle(message("m1", "c1", Origin::Customer, 1000), 12_000)
            .is_empty()
    );
    // Past it: the resolved one is gone; the assigned ones stay however old.
    r.handle(Input::Tick, 12_001);
    assert_eq!(r.remembered_conversations(), 1);
    r.handle(Input::Tick, 10_000_000);
    assert_eq!(r.owner(&conv("c2")), Some("ana"));
    assert_eq!(r.remembered_conversations(), 1);
    // The customer writes again: a new conversation, routed like any other.
    let out = r.handle(
        message("m4", "c1", Origin::Customer, 10_001_000),
        10_001_000,
    );
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("ana"))]);
}

#[test]
fn a_longer_sticky_window_keeps_a_resolved_conversation_for_its_agent() {
    let mut r = Router::new(RouterConfig {
        resolved_retention_ms: 10_000,
        ..config(Policy::Sticky { window_ms: 50_000 })
    });
    r.handle(online("bob", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "bob", CommandAction::Resolve), 2000);
    r.handle(online("ana", 3000), 3000);
    r.handle(Input::Tick, 30_000);
    assert_eq!(r.remembered_conversations(), 1);
    // Least-loaded would pick ana (the tie goes to the lower id); sticky, bob.
    r.handle(message("m2", "c1", Origin::Customer, 40_000), 40_000);
    assert_eq!(r.owner(&conv("c1")), Some("bob"));
    r.handle(command("k2", "c1", "bob", CommandAction::Resolve), 41_000);
    r.handle(Input::Tick, 91_000);
    assert_eq!(r.remembered_conversations(), 1);
    r.handle(Input::Tick, 91_001);
    assert_eq!(r.remembered_conversations(), 0);
}

// ---- policies ---------------------------------------------------------------

#[test]
fn round_robin_cycles_through_online_agents_by_id() {
    let mut r = Router::new(config(Policy::RoundRobin));
    for a in ["ana", "bob", "cy"] {
        r.handle(online(a, 0), 0);
    }
    let owners: Vec<String> = ["c1", "c2", "c3", "c4"]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let t = 1000 * (i as i64 + 1);
            r.handle(message(&format!("m{i}"), c, Origin::Customer, t), t);
            r.owner(&conv(c)).unwrap_or_default().to_owned()
        })
        .collect();
    // cy has capacity 1, so the fourth goes round to ana.
    assert_eq!(owners, ["ana", "bob", "cy", "ana"]);
}

#[test]
fn sticky_returns_to_the_last_agent_within_the_window() {
    let mut r = Router::new(config(Policy::Sticky { window_ms: 10_000 }));
    r.handle(online("bob", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "bob", CommandAction::Resolve), 2000);
    r.handle(online("ana", 3000), 3000);
    // Least-loaded would pick ana; sticky goes back to bob.
    r.handle(message("m2", "c1", Origin::Customer, 5000), 5000);
    assert_eq!(r.owner(&conv("c1")), Some("bob"));
}

#[test]
fn sticky_falls_back_to_least_loaded_after_the_window_or_when_offline() {
    let mut r = Router::new(config(Policy::Sticky { window_ms: 10_000 }));
    r.handle(online("bob", 0), 0);
    r.handle(online("ana", 0), 0);
    r.handle(command("k0", "c9", "bob", CommandAction::Resolve), 0);
    r.handle(message("m0", "c0", Origin::Customer, 500), 500); // ana
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000); // bob
    assert_eq!(r.owner(&conv("c1")), Some("bob"));
    r.handle(command("k1", "c1", "bob", CommandAction::Resolve), 2000);
    r.handle(command("k2", "c0", "ana", CommandAction::Resolve), 2500);
    // Past the window: least loaded (both empty), ties to ana.
    r.handle(message("m2", "c1", Origin::Customer, 20_000), 20_000);
    assert_eq!(r.owner(&conv("c1")), Some("ana"));
    // ana last handled it, but is offline now: bob takes it.
    r.handle(command("k3", "c1", "ana", CommandAction::Resolve), 21_000);
    r.handle(
        presence("ana", "phone", PresenceState::Offline, 22_000),
        22_000,
    );
    r.handle(message("m3", "c1", Origin::Customer, 23_000), 23_000);
    assert_eq!(r.owner(&conv("c1")), Some("bob"));
}

#[test]
fn manual_policy_waits_for_a_claim() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(online("ana", 0), 0);
    let out = r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    assert_eq!(moves(&out), [(Open, None)]);
    assert!(r.handle(Input::Tick, 2000).is_empty());
    let out = r.handle(command("k1", "c1", "ana", CommandAction::Claim), 3000);
    assert_eq!(moves(&out), [(Assigned, Some("ana"))]);
    assert_eq!(result(&out).rejected, None);
}

#[test]
fn each_number_uses_its_own_policy() {
    let mut config = config(Policy::LeastLoaded);
    config.numbers.insert("222".into(), Policy::Manual);
    let mut r = Router::new(config);
    r.handle(online("ana", 0), 0);
    r.handle(message_on("222", "m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message_on(PN, "m2", "c1", Origin::Customer, 2000), 2000);
    assert_eq!(r.owner(&conversation_id("222", "c1")), None);
    assert_eq!(r.owner(&conv("c1")), Some("ana"));
}

// ---- capacity and the queue -------------------------------------------------

#[test]
fn full_agents_leave_work_queued_and_freed_capacity_takes_the_oldest() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("cy", 0), 0); // capacity 1
    for (i, c) in ["c1", "c2", "c3"].iter().enumerate() {
        let t = 1000 * (i as i64 + 1);
        r.handle(message(&format!("m{i}"), c, Origin::Customer, t), t);
    }
    assert_eq!(r.owner(&conv("c1")), Some("cy"));
    assert_eq!(r.owner(&conv("c2")), None);
    let out = r.handle(command("k1", "c1", "cy", CommandAction::Resolve), 5000);
    assert_eq!(
        moves(&out),
        [(Resolved, None), (Assigned, Some("cy"))],
        "the result, then the oldest queued"
    );
    assert_eq!(out[1].conversation_id, conv("c2"));
    assert_eq!(out[1].command_id, None);
}

#[test]
fn an_agent_coming_online_takes_queued_work_oldest_first() {
    let mut r = Router::new(config(Policy::RoundRobin));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message("m2", "c2", Origin::Customer, 2000), 2000);
    r.handle(message("m3", "c3", Origin::Customer, 3000), 3000);
    let out = r.handle(online("cy", 4000), 4000); // room for one
    assert_eq!(moves(&out), [(Assigned, Some("cy"))]);
    assert_eq!(out[0].conversation_id, conv("c1"));
    let out = r.handle(online("ana", 5000), 5000);
    let taken: Vec<_> = out.iter().map(|e| e.conversation_id.clone()).collect();
    assert_eq!(taken, [conv("c2"), conv("c3")]);
}

// ---- commands ---------------------------------------------------------------

#[test]
fn first_claim_wins_and_the_second_names_the_owner() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let out = r.handle(command("k1", "c1", "ana", CommandAction::Claim), 2000);
    assert_eq!(moves(&out), [(Assigned, Some("ana"))]);
    assert_eq!(out[0].command_id.as_deref(), Some("k1"));
    let out = r.handle(command("k2", "c1", "bob", CommandAction::Claim), 2000);
    assert_eq!(rejection(&out), "already assigned to ana");
    assert_eq!(moves(&out), [(Assigned, Some("ana"))], "reports the owner");
    // Claiming one's own conversation again is accepted and changes nothing.
    let out = r.handle(command("k3", "c1", "ana", CommandAction::Claim), 3000);
    assert_eq!(result(&out).rejected, None);
    assert_eq!(r.snapshot().changes, 2);
}

#[test]
fn claim_respects_capacity_and_needs_a_known_agent() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message("m2", "c2", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "cy", CommandAction::Claim), 2000);
    let out = r.handle(command("k2", "c2", "cy", CommandAction::Claim), 2000);
    assert_eq!(rejection(&out), "agent cy is at capacity (1/1)");
    let out = r.handle(command("k3", "c2", "zed", CommandAction::Claim), 2000);
    assert_eq!(rejection(&out), "unknown agent zed in org acme");
    // Claims ignore the policy and presence: nobody is online here.
    assert_eq!(r.owner(&conv("c1")), Some("cy"));
}

#[test]
fn claims_on_business_app_or_resolved_conversations_are_rejected() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("e1", "c1", Origin::BusinessApp, 1000), 1000);
    let out = r.handle(command("k1", "c1", "ana", CommandAction::Claim), 2000);
    assert_eq!(rejection(&out), "already assigned to business_app");
    r.handle(message("m2", "c2", Origin::Customer, 1000), 1000);
    r.handle(command("k2", "c2", "ana", CommandAction::Resolve), 2000);
    let out = r.handle(command("k3", "c2", "ana", CommandAction::Claim), 3000);
    assert_eq!(rejection(&out), "conversation is resolved: reopen it first");
}

#[test]
fn transfer_to_an_agent_needs_room_and_presence() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let out = r.handle(command("k1", "c1", "ana", to("bob")), 2000);
    assert_eq!(rejection(&out), "agent bob is offline");
    r.handle(online("cy", 2500), 2500);
    r.handle(command("k2", "c9", "cy", CommandAction::Claim), 2600); // unknown: no-op
    let out = r.handle(command("k3", "c1", "ana", to("cy")), 3000);
    assert_eq!(moves(&out), [(Assigned, Some("cy"))]);
    r.handle(message("m2", "c2", Origin::Customer, 4000), 4000); // to ana
    let out = r.handle(command("k4", "c2", "ana", to("cy")), 5000);
    assert_eq!(rejection(&out), "agent cy is at capacity (1/1)");
    let out = r.handle(command("k5", "c2", "ana", to("zed")), 5000);
    assert_eq!(rejection(&out), "unknown agent zed in org acme");
}

#[test]
fn transfer_to_oneself_follows_the_claim_rule() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(online("bob", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Claim), 2000);
    // Bob cannot take Ana's conversation by "transferring" it to himself.
    let out = r.handle(command("k2", "c1", "bob", to("bob")), 3000);
    assert_eq!(rejection(&out), "already assigned to ana");
    assert_eq!(moves(&out), [(Assigned, Some("ana"))]);
    // From the queue it is a claim like any other.
    r.handle(message("m2", "c2", Origin::Customer, 4000), 4000);
    let out = r.handle(command("k3", "c2", "bob", to("bob")), 5000);
    assert_eq!(moves(&out), [(Assigned, Some("bob"))]);
}

#[test]
fn transfer_to_the_queue_is_not_routed_back_to_the_releaser() {
    let mut r = Router::new(config(Policy::Sticky { window_ms: 60_000 }));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let release = CommandAction::Transfer { to_agent: None };
    let out = r.handle(command("k1", "c1", "ana", release.clone()), 2000);
    assert_eq!(moves(&out), [(Open, None)]);
    assert!(r.handle(Input::Tick, 3000).is_empty());
    let out = r.handle(online("bob", 4000), 4000);
    assert_eq!(moves(&out), [(Assigned, Some("bob"))]);
    // The releaser may still claim it explicitly once it is queued again.
    r.handle(command("k2", "c1", "bob", release), 5000);
    let out = r.handle(command("k3", "c1", "ana", CommandAction::Claim), 6000);
    assert_eq!(moves(&out), [(Assigned, Some("ana"))]);
}

#[test]
fn resolve_and_reopen() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let out = r.handle(command("k1", "c1", "ana", CommandAction::Resolve), 2000);
    assert_eq!(moves(&out), [(Resolved, None)]);
    assert_eq!(r.load(ORG, "ana"), 0);
    let out = r.handle(command("k2", "c1", "ana", CommandAction::Reopen), 3000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("ana"))]);
    assert_eq!(out[0].command_id.as_deref(), Some("k2"));
    // Reopening an open conversation is accepted without change.
    let out = r.handle(command("k3", "c1", "ana", CommandAction::Reopen), 4000);
    assert_eq!(result(&out).rejected, None);
    assert_eq!(out.len(), 1);
}

#[test]
fn force_assign_ignores_capacity_and_presence_but_not_identity() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message("m2", "c2", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "cy", CommandAction::Claim), 2000);
    let force = |to: &str| CommandAction::ForceAssign {
        to_agent: to.to_owned(),
    };
    let out = r.handle(command("k2", "c2", "admin", force("cy")), 3000);
    assert_eq!(moves(&out), [(Assigned, Some("cy"))]);
    assert_eq!(r.load(ORG, "cy"), 2, "over its capacity of 1");
    let out = r.handle(command("k3", "c2", "admin", force("zed")), 3000);
    assert_eq!(rejection(&out), "unknown agent zed in org acme");
}

#[test]
fn notes_are_accepted_without_change_and_carry_their_text() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let note = CommandAction::Note { text: "vip".into() };
    let out = r.handle(command("k1", "c1", "ana", note.clone()), 2000);
    assert_eq!(moves(&out), [(Open, None)]);
    assert_eq!(result(&out).rejected, None);
    assert_eq!(result(&out).note.as_deref(), Some("vip"));
    assert_eq!(r.snapshot().changes, 1);
    // A note on a conversation the router does not know is refused, without its text.
    let out = r.handle(command("k2", "c9", "ana", note), 2000);
    assert!(result(&out).rejected.is_some());
    assert_eq!(result(&out).note, None);
    // Other commands never carry one.
    let out = r.handle(command("k3", "c1", "ana", CommandAction::Resolve), 3000);
    assert_eq!(result(&out).note, None);
}

#[test]
fn commands_on_unknown_or_foreign_conversations_are_rejected() {
    let mut r = Router::new(config(Policy::Manual));
    for (i, action) in [
        CommandAction::Claim,
        CommandAction::Resolve,
        CommandAction::ForceAssign {
            to_agent: "ana".into(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let out = r.handle(command(&format!("k{i}"), "c1", "ana", action), 1000);
        assert_eq!(
            rejection(&out),
            format!("unknown conversation {}", conv("c1"))
        );
    }
    assert!(r.snapshot().conversations.is_empty());
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let Input::Command(mut cmd) = command("k9", "c1", "ana", CommandAction::Claim) else {
        unreachable!()
    };
    cmd.phone_number_id = "999".into();
    let out = r.handle(Input::Command(cmd), 2000);
    assert!(rejection(&out).contains("belongs to number 111"));
}

#[test]
fn a_command_is_answered_once() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let claim = command("k1", "c1", "ana", CommandAction::Claim);
    assert_eq!(r.handle(claim.clone(), 2000).len(), 1);
    assert!(r.handle(claim, 3000).is_empty());
    let bad = command("k2", "c7", "ana", CommandAction::Claim);
    assert_eq!(r.handle(bad.clone(), 2000).len(), 1);
    assert!(r.handle(bad, 3000).is_empty());
}

#[test]
fn answered_ids_are_forgotten_after_the_ttl_and_stale_commands_ignored() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    for k in 0..50 {
        let out = r.handle(
            command(
                &format!("k{k}"),
                "c1",
                "ana",
                CommandAction::Note { text: "x".into() },
            ),
            2000 + k,
        );
        assert_eq!(out.len(), 1);
    }
    assert_eq!(r.remembered_commands(), 50);
    r.handle(Input::Tick, 2000 + 3_600_000 + 10);
    assert_eq!(
        r.remembered_commands(),
        40,
        "the first ten are past the ttl"
    );
    r.handle(Input::Tick, 2000 + 3_600_000 + 100);
    assert_eq!(r.remembered_commands(), 0);
    // Redelivered now, a forgotten command is older than the ttl: still no second result.
    let late = command("k3", "c1", "ana", CommandAction::Claim);
    assert!(r.handle(late, 2000 + 3_600_000 + 200).is_empty());
}

#[test]
fn forgetting_a_number_frees_its_agents_and_keeps_the_others() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message_on("111", "m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(message_on("111", "m2", "c2", Origin::Customer, 1000), 1000);
    r.handle(message_on("222", "m3", "c3", Origin::Customer, 1000), 1000);
    assert_eq!(r.owner(&conversation_id("111", "c1")), Some("ana"));
    // ana is at capacity (2): c3 waits.
    assert_eq!(r.owner(&conversation_id("222", "c3")), None);
    assert_eq!(r.forget_numbers(|n| n == "111"), 2);
    assert_eq!(r.owner(&conversation_id("111", "c1")), None);
    // Her load here is now zero, so a tick routes the waiting conversation to her.
    let out = r.handle(Input::Tick, 2000);
    assert_eq!(moves(&out), [(Assigned, Some("ana"))]);
    assert_eq!(out[0].conversation_id, conversation_id("222", "c3"));
}

// ---- presence ---------------------------------------------------------------

#[test]
fn offline_agents_lose_their_conversations_after_the_grace() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(
        presence("ana", "phone", PresenceState::Offline, 10_000),
        10_000,
    );
    assert!(r.handle(Input::Tick, 70_000).is_empty(), "within the grace");
    r.handle(online("bob", 65_000), 65_000);
    assert_eq!(r.owner(&conv("c1")), Some("ana"));
    let out = r.handle(Input::Tick, 70_001 + 1000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("bob"))]);
    assert_eq!(out[0].id, format!("tick:71001:{}:2", conv("c1")));
}

#[test]
fn manual_numbers_just_queue_what_offline_agents_held() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(online("bob", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Claim), 1000);
    r.handle(presence("ana", "web", PresenceState::Offline, 2000), 2000);
    let out = r.handle(Input::Tick, 100_000);
    assert_eq!(moves(&out), [(Open, None)]);
}

#[test]
fn any_non_offline_device_keeps_an_agent_online() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    for (i, state) in [
        PresenceState::Away,
        PresenceState::Viewing,
        PresenceState::Typing,
    ]
    .into_iter()
    .enumerate()
    {
        r.handle(presence("ana", "web", state, i as i64), 0);
        assert!(r.is_online(ORG, "ana"), "{state:?}");
    }
    r.handle(presence("ana", "phone", PresenceState::Online, 5), 5);
    r.handle(presence("ana", "phone", PresenceState::Offline, 6), 6);
    assert!(r.is_online(ORG, "ana"), "web is still away");
    r.handle(presence("ana", "web", PresenceState::Offline, 7), 7);
    assert!(!r.is_online(ORG, "ana"));
    // A late, older event for a device does not overwrite a newer one.
    r.handle(presence("ana", "web", PresenceState::Online, 3), 8);
    assert!(!r.is_online(ORG, "ana"));
}

#[test]
fn an_agent_who_steps_away_keeps_their_work_but_gets_no_new() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    r.handle(online("ana", 0), 0);
    r.handle(online("bob", 0), 0);
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    let owner_of_c1 = r.owner(&conv("c1")).map(str::to_string);
    assert!(owner_of_c1.is_some());
    r.handle(presence("bob", "phone", PresenceState::Away, 1500), 1500);
    let out = r.handle(message("m2", "c2", Origin::Customer, 2000), 2000);
    assert_eq!(moves(&out), [(Open, None), (Assigned, Some("ana"))]);
    // Looking at a conversation while away is not coming back.
    r.handle(presence("bob", "phone", PresenceState::Viewing, 1600), 1600);
    let out = r.handle(message("m3", "c3", Origin::Customer, 2100), 2100);
    assert_eq!(
        moves(&out),
        [(Open, None)],
        "ana is full; bob is still away"
    );
    // Away is not offline: nothing of bob's is taken back, even after the grace.
    r.handle(Input::Tick, 1_000_000);
    assert_eq!(r.owner(&conv("c1")).map(str::to_string), owner_of_c1);
    r.handle(presence("bob", "phone", PresenceState::Online, 3000), 3000);
    r.handle(Input::Tick, 1_000_001);
    assert_eq!(
        r.owner(&conv("c3")),
        Some("bob"),
        "back online, bob takes the queue"
    );
}

#[test]
fn agents_never_seen_are_not_treated_as_offline() {
    let mut r = Router::new(config(Policy::Manual));
    r.handle(message("m1", "c1", Origin::Customer, 1000), 1000);
    r.handle(command("k1", "c1", "ana", CommandAction::Claim), 1000);
    assert!(r.handle(Input::Tick, 1_000_000).is_empty());
}

// ---- replay and ids ---------------------------------------------------------

fn script() -> Vec<(Input, i64)> {
    vec![
        (online("ana", 0), 0),
        (message("m1", "c1", Origin::Customer, 1000), 1000),
        (message("m2", "c2", Origin::Customer, 2000), 2000),
        (message("e1", "c3", Origin::BusinessApp, 3000), 3000),
        (command("k1", "c1", "ana", CommandAction::Resolve), 4000),
        (command("k2", "c2", "bob", CommandAction::Claim), 5000),
        (command("k3", "c1", "ana", CommandAction::Reopen), 6000),
        (presence("ana", "phone", PresenceState::Offline, 7000), 7000),
        (Input::Tick, 200_000),
    ]
}

#[test]
fn replay_rebuilds_the_state_silently() {
    let mut live = Router::new(config(Policy::LeastLoaded));
    let outputs: Vec<_> = script()
        .into_iter()
        .flat_map(|(input, now)| live.handle(input, now))
        .collect();
    let mut restarted = Router::new(config(Policy::LeastLoaded));
    for ev in outputs {
        assert!(restarted.handle(Input::Replayed(ev), 0).is_empty());
    }
    assert_eq!(restarted.snapshot(), live.snapshot());
    restarted.check_indexes();
    // Re-read inputs are recognised.
    for (input, _) in script().into_iter().skip(1) {
        if !matches!(input, Input::Presence(_) | Input::Tick) {
            assert!(restarted.handle(input, 300_000).is_empty());
        }
    }
}

#[test]
fn outputs_are_deterministic() {
    let run = || {
        let mut r = Router::new(config(Policy::RoundRobin));
        script()
            .into_iter()
            .flat_map(|(input, now)| r.handle(input, now))
            .collect::<Vec<_>>()
    };
    let outputs = run();
    assert_eq!(outputs, run());
    let ids: BTreeSet<_> = outputs.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), outputs.len(), "ids are unique");
}

#[test]
fn config_validation_and_defaults() {
    assert_eq!(RouterConfig::default().validate(), Ok(()));
    let mut c = config(Policy::LeastLoaded);
    c.orgs
        .get_mut(ORG)
        .into_iter()
        .for_each(|a| a.push(agent("ana", 1)));
    assert!(matches!(
        c.validate(),
        Err(ConfigError::DuplicateAgent { .. })
    ));
    let mut c = config(Policy::Sticky { window_ms: -1 });
    assert!(matches!(c.validate(), Err(ConfigError::Negative { .. })));
    c.default_policy = Policy::LeastLoaded;
    c.orgs.insert("o".into(), vec![agent(BUSINESS_APP, 1)]);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::ReservedAgentId { .. })
    ));
    let parsed: RouterConfig = serde_json::from_value(serde_json::json!({
        "default_policy": {"kind": "sticky", "window_ms": 5000},
        "numbers": {"111": {"kind": "manual"}},
        "orgs": {"acme": [{"agent_id": "ana", "capacity": 3}]}
    }))
    .unwrap_or_default();
    assert_eq!(parsed.policy_for("111"), Policy::Manual);
    assert_eq!(parsed.policy_for("222"), Policy::Sticky { window_ms: 5000 });
    assert_eq!(parsed.agent("acme", "ana").map(|a| a.capacity), Some(3));
    assert_eq!(parsed.offline_grace_ms, 120_000);
}

// ---- properties -------------------------------------------------------------

const AGENTS: [&str; 4] = ["ana", "bob", "cy", "ghost"]; // ghost is not configured
const NUMBERS: [&str; 2] = ["111", "222"];
const CONTACTS: [&str; 4] = ["c0", "c1", "c2", "c3"];

#[derive(Debug, Clone)]
enum Op {
    Message(usize, usize, Origin),
    Presence(usize, usize, PresenceState),
    Command(usize, usize, usize, Action),
    Tick,
    /// Feed an earlier input again (a redelivery or a re-read).
    Again(usize),
}

#[derive(Debug, Clone)]
enum Action {
    Claim,
    Transfer(Option<usize>),
    Resolve,
    Reopen,
    Force(usize),
    Note,
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::RoundRobin),
        Just(Policy::LeastLoaded),
        (0i64..60_000).prop_map(|window_ms| Policy::Sticky { window_ms }),
        Just(Policy::Manual),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let origin = prop_oneof![
        4 => Just(Origin::Customer),
        1 => Just(Origin::BusinessApp),
        1 => Just(Origin::History),
        1 => Just(Origin::Api),
    ];
    let state = prop_oneof![
        Just(PresenceState::Online),
        Just(PresenceState::Away),
        Just(PresenceState::Offline),
        Just(PresenceState::Offline),
        Just(PresenceState::Viewing),
        Just(PresenceState::Typing),
    ];
    let action = prop_oneof![
        3 => Just(Action::Claim),
        2 => proptest::option::of(0..AGENTS.len()).prop_map(Action::Transfer),
        2 => Just(Action::Resolve),
        1 => Just(Action::Reopen),
        1 => (0..AGENTS.len()).prop_map(Action::Force),
        1 => Just(Action::Note),
    ];
    prop_oneof![
        4 => (0..NUMBERS.len(), 0..CONTACTS.len(), origin).prop_map(|(n, c, o)| Op::Message(n, c, o)),
        3 => (0..AGENTS.len(), 0..2usize, state).prop_map(|(a, d, s)| Op::Presence(a, d, s)),
        4 => (0..NUMBERS.len(), 0..CONTACTS.len(), 0..AGENTS.len(), action)
            .prop_map(|(n, c, a, x)| Op::Command(n, c, a, x)),
        1 => Just(Op::Tick),
        1 => any::<usize>().prop_map(Op::Again),
    ]
}

fn prop_config(p1: Policy, p2: Policy) -> RouterConfig {
    RouterConfig {
        default_policy: p1,
        numbers: BTreeMap::from([(NUMBERS[1].to_owned(), p2)]),
        orgs: BTreeMap::from([(
            ORG.to_owned(),
            vec![agent("ana", 1), agent("bob", 2), agent("cy", 1)],
        )]),
        offline_grace_ms: 20_000,
        clock_tolerance_ms: 0,
        command_ttl_ms: 3_600_000,
        resolved_retention_ms: 3_600_000,
    }
}

/// Turns ops into timed inputs: every input at least a second after the previous,
/// as Meta's timestamps have whole seconds.
fn inputs(ops: &[(Op, i64)]) -> Vec<(Input, i64)> {
    let mut now = 0;
    let mut built: Vec<(Input, i64)> = Vec::new();
    for (i, (op, step)) in ops.iter().enumerate() {
        now += step;
        let input = match op {
            Op::Message(n, c, o) => {
                message_on(NUMBERS[*n], &format!("m{i}"), CONTACTS[*c], *o, now)
            }
            Op::Presence(a, d, s) => presence(AGENTS[*a], &format!("d{d}"), *s, now),
            Op::Command(n, c, a, x) => {
                let action = match x {
                    Action::Claim => CommandAction::Claim,
                    Action::Transfer(to) => CommandAction::Transfer {
                        to_agent: to.map(|t| AGENTS[t].to_owned()),
                    },
                    Action::Resolve => CommandAction::Resolve,
                    Action::Reopen => CommandAction::Reopen,
                    Action::Force(t) => CommandAction::ForceAssign {
                        to_agent: AGENTS[*t].to_owned(),
                    },
                    Action::Note => CommandAction::Note { text: "n".into() },
                };
                command_on(
                    NUMBERS[*n],
                    &format!("k{i}"),
                    CONTACTS[*c],
                    AGENTS[*a],
                    action,
                )
            }
            Op::Tick => Input::Tick,
            Op::Again(j) if !built.is_empty() => built[j % built.len()].0.clone(),
            Op::Again(_) => Input::Tick,
        };
        built.push((input, now));
    }
    built
}

const CASES: u32 = 256;

fn is_replayable(input: &Input) -> bool {
    matches!(input, Input::Event(_) | Input::Command(_))
}

proptest! {
    // No regression file: it would live outside this module's folder.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(CASES)
    })]

    #[test]
    fn routing_invariants_hold_for_any_interleaving(
        p1 in policy(),
        p2 in policy(),
        ops in proptest::collection::vec((op(), 1000i64..30_000), 1..60),
        k in 1usize..20,
    ) {
        let config = prop_config(p1, p2);
        let inputs = inputs(&ops);
        let mut router = Router::new(config.clone());
        let mut outputs = Vec::new();
        // The output stream folded: conversation → (state, owner), and which owners
        // came from a ForceAssign.
        let mut owners: BTreeMap<String, (ConversationState, Option<String>)> = BTreeMap::new();
        let mut forced = BTreeSet::new();
        let mut force_commands = BTreeSet::new();
        let mut results: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen_inputs: Vec<&Input> = Vec::new();

        for (input, now) in &inputs {
            if let Input::Command(c) = input
                && matches!(c.action, CommandAction::ForceAssign { .. })
            {
                force_commands.insert(c.id.clone());
            }
            let again = seen_inputs.contains(&input);
            let out = router.handle(input.clone(), *now);
            if again && is_replayable(input) {
                prop_assert!(out.is_empty(), "re-fed {input:?} gave {out:?}");
            }
            seen_inputs.push(input);
            for ev in &out {
                if let Some(id) = &ev.command_id {
                    *results.entry(id.clone()).or_default() += 1;
                }
                if ev.rejected.is_some() {
                    continue;
                }
                let owner = match ev.state {
                    ConversationState::Assigned => ev.assignee.clone(),
                    _ => None,
                };
                let now_is = (ev.state, owner.clone());
                if owners.insert(ev.conversation_id.clone(), now_is.clone()) == Some(now_is) {
                    continue; // an accepted command that changed nothing
                }
                let by_force = ev.command_id.as_ref().is_some_and(|id| force_commands.contains(id));
                match owner.filter(|o| o != BUSINESS_APP) {
                    Some(_) if by_force => {
                        forced.insert(ev.conversation_id.clone());
                    }
                    Some(agent) => {
                        forced.remove(&ev.conversation_id);
                        // (2) capacity: only ForceAssign may take an agent past it.
                        let load = owners.values().filter(|(_, o)| o.as_deref() == Some(&agent)).count();
                        let capacity = config.agent(ORG, &agent).map_or(0, |a| a.capacity);
                        prop_assert!(load <= capacity, "{agent} holds {load} > {capacity} after {ev:?}");
                    }
                    None => { forced.remove(&ev.conversation_id); }
                }
            }
            router.check_indexes();
            // (1) one owner per conversation: the folded outputs agree with the
            // machine, whose indexes hold each conversation under one agent at most.
            let snapshot = router.snapshot();
            let view: BTreeMap<_, _> = snapshot.conversations.iter()
                .map(|c| (c.conversation_id.clone(), (c.state, c.assignee.clone())))
                .collect();
            prop_assert_eq!(&view, &owners);
            let held: usize = snapshot.loads.iter().map(|l| l.assigned).sum();
            let assigned = owners.values()
                .filter(|(_, o)| o.as_deref().is_some_and(|o| o != BUSINESS_APP))
                .count();
            prop_assert_eq!(held, assigned);
            // Non-forced holdings stay within capacity.
            for load in &snapshot.loads {
                let unforced = owners.iter()
                    .filter(|(id, (_, o))| o.as_deref() == Some(&load.agent_id) && !forced.contains(*id))
                    .count();
                let capacity = config.agent(ORG, &load.agent_id).map_or(0, |a| a.capacity);
                prop_assert!(unforced <= capacity);
            }
            outputs.extend(out);
        }

        // (3) every command answered exactly once, redeliveries included.
        for (input, _) in &inputs {
            if let Input::Command(c) = input {
                prop_assert_eq!(results.get(&c.id).copied(), Some(1), "command {}", c.id);
            }
        }
        let commands: BTreeSet<_> = inputs.iter()
            .filter_map(|(input, _)| match input {
                Input::Command(c) => Some(c.id.clone()),
                _ => None,
            })
            .collect();
        prop_assert_eq!(results.keys().cloned().collect::<BTreeSet<_>>(), commands);
        let ids: BTreeSet<_> = outputs.iter().map(|e| e.id.clone()).collect();
        prop_assert_eq!(ids.len(), outputs.len(), "output ids are unique");

        // (4) replay equivalence, then re-reading the last k inputs.
        let mut restarted = Router::new(config);
        for ev in &outputs {
            prop_assert!(restarted.handle(Input::Replayed(ev.clone()), 0).is_empty());
        }
        prop_assert_eq!(restarted.snapshot(), router.snapshot());
        restarted.check_indexes();
        let end = inputs.last().map_or(0, |(_, now)| *now);
        let tail = inputs.len().saturating_sub(k);
        for (i, (input, _)) in inputs[tail..].iter().enumerate() {
            let out = restarted.handle(input.clone(), end + 1000 * (i as i64 + 1));
            if is_replayable(input) {
                prop_assert!(out.is_empty(), "re-read {input:?} gave {out:?}");
            }
        }
    }
}

// ---- the directory: what an admin sets through the API is what routes ----

fn directory(n: i64, change: events::directory::Change) -> Input {
    Input::Directory(
        Box::new(events::directory::DirectoryChange {
            id: format!("d{n}"),
            org: ORG.to_owned(),
            issued_by: "admin".into(),
            at_ms: n,
            change,
        }),
        events::directory::Stamp::new(n, 0, n),
    )
}

fn invited(n: i64, agent: &str, capacity: u32) -> Input {
    directory(
        n,
        events::directory::Change::AgentInvited {
            agent_id: agent.into(),
            name: agent.into(),
            email: None,
            phone: None,
            role: events::directory::Role::Agent,
            capacity,
        },
    )
}

fn empty_config(policy: Policy) -> RouterConfig {
    RouterConfig {
        orgs: BTreeMap::new(),
        ..config(policy)
    }
}

#[test]
fn an_agent_invited_through_the_directory_is_routed_to_and_a_seed_agent_is_overridden() {
    let mut router = Router::new(config(Policy::LeastLoaded));
    // The seed said ana holds 2; the directory says 1.
    router.handle(invited(1, "ana", 1), 0);
    router.handle(invited(2, "dee", 3), 0);
    router.handle(online("dee", 0), 0);
    router.handle(online("ana", 0), 0);
    let out = router.handle(message("m1", "c1", Origin::Customer, 10), 10);
    assert_eq!(out.last().and_then(|e| e.assignee.as_deref()), Some("ana"));
    let out = router.handle(message("m2", "c2", Origin::Customer, 11), 11);
    assert_eq!(
        out.last().and_then(|e| e.assignee.as_deref()),
        Some("dee"),
        "ana is at her directory capacity of 1"
    );
}

#[test]
fn a_deactivated_agent_loses_their_conversations_at_once_and_gets_no_more() {
    let mut router = Router::new(empty_config(Policy::LeastLoaded));
    router.handle(invited(1, "ann", 5), 0);
    router.handle(online("ann", 0), 0);
    for i in 0..3 {
        router.handle(
            message(&format!("m{i}"), &format!("c{i}"), Origin::Customer, 1),
            1,
        );
    }
    assert_eq!(router.load(ORG, "ann"), 3);
    router.handle(invited(2, "bob", 2), 2);
    router.handle(online("bob", 2), 2);
    // No grace: removed is not offline.
    let out = router.handle(
        directory(
            3,
            events::directory::Change::AgentDeactivated {
                agent_id: "ann".into(),
            },
        ),
        3,
    );
    assert_eq!(router.load(ORG, "ann"), 0);
    assert_eq!(
        router.load(ORG, "bob"),
        2,
        "bob takes what fits his capacity"
    );
    assert!(out.iter().all(|e| e.assignee.as_deref() != Some("ann")));
    let queued = router
        .snapshot()
        .conversations
        .iter()
        .filter(|c| c.state == ConversationState::Open)
        .count();
    assert_eq!(queued, 1, "the rest waits in the queue");
    let out = router.handle(message("m9", "c9", Origin::Customer, 4), 4);
    assert!(out.iter().all(|e| e.assignee.as_deref() != Some("ann")));
    let claim = router.handle(command("k1", "c9", "ann", CommandAction::Claim), 5);
    assert_eq!(
        claim[0].rejected.as_deref(),
        Some("agent ann is deactivated")
    );
}

#[test]
fn a_capacity_lowered_below_the_load_takes_nothing_away_and_gives_nothing_new() {
    let mut router = Router::new(empty_config(Policy::LeastLoaded));
    router.handle(invited(1, "ann", 3), 0);
    router.handle(online("ann", 0), 0);
    for i in 0..3 {
        router.handle(
            message(&format!("m{i}"), &format!("c{i}"), Origin::Customer, 1),
            1,
        );
    }
    let lowered = events::directory::Change::AgentUpdated {
        agent_id: "ann".into(),
        name: None,
        role: None,
        capacity: Some(1),
    };
    let out = router.handle(directory(2, lowered), 2);
    assert!(out.is_empty(), "nothing is taken away: {out:?}");
    assert_eq!(router.load(ORG, "ann"), 3);
    router.handle(command("r1", "c0", "ann", CommandAction::Resolve), 3);
    router.handle(command("r2", "c1", "ann", CommandAction::Resolve), 3);
    let out = router.handle(message("m8", "c8", Origin::Customer, 4), 4);
    assert_eq!(
        moves(&out),
        vec![(ConversationState::Open, None)],
        "load 1 of 1"
    );
    router.handle(command("r3", "c2", "ann", CommandAction::Resolve), 5);
    assert_eq!(router.owner(&conv("c8")), Some("ann"), "room again: routed");
}

#[test]
fn a_policy_change_applies_to_the_next_decision() {
    let mut router = Router::new(empty_config(Policy::LeastLoaded));
    router.handle(invited(1, "ann", 10), 0);
    router.handle(invited(2, "bob", 10), 0);
    router.handle(online("ann", 0), 0);
    router.handle(online("bob", 0), 0);
    router.handle(
        directory(
            3,
            events::directory::Change::RoutingPolicySet {
                phone_number_id: None,
                policy: Policy::Manual,
            },
        ),
        0,
    );
    let out = router.handle(message("m1", "c1", Origin::Customer, 1), 1);
    assert_eq!(moves(&out), vec![(ConversationState::Open, None)], "manual");
    let out = router.handle(
        directory(
            4,
            events::directory::Change::RoutingPolicySet {
                phone_number_id: Some(PN.into()),
                policy: Policy::RoundRobin,
            },
        ),
        2,
    );
    assert_eq!(
        out.last().and_then(|e| e.assignee.as_deref()),
        Some("ann"),
        "the queued one is routed by the new policy"
    );
    let owners: Vec<String> = (2..6)
        .filter_map(|i| {
            let out = router.handle(
                message(&format!("m{i}"), &format!("c{i}"), Origin::Customer, 3),
                3,
            );
            out.last().and_then(|e| e.assignee.clone())
        })
        .collect();
    assert_eq!(owners, ["bob", "ann", "bob", "ann"], "round robin");
}

// ---- what does not count as the customer writing ------------------------------

proptest! {
    /// Whatever state a conversation is in, no history, edit, revoke, reaction, echo
    /// or API send opens it, reopens it or routes it to an agent; an echo may only
    /// hand a new or queued one to the Business app.
    #[test]
    fn only_the_customer_writing_opens_reopens_or_routes(
        setup in proptest::collection::vec((0..3usize, 0..3u8), 0..12),
        pick in 0..20usize,
    ) {
        let mut r = Router::new(config(Policy::LeastLoaded));
        r.handle(online("ana", 0), 0);
        let mut now = 1_000;
        for (contact, step) in setup {
            let c = format!("c{contact}");
            let input = match step {
                0 => message(&format!("m{now}"), &c, Origin::Customer, now),
                1 => command(&format!("k{now}"), &c, "ana", CommandAction::Resolve),
                _ => command(&format!("k{now}"), &c, "ana", CommandAction::Claim),
            };
            r.handle(input, now);
            now += 1_000;
        }
        for contact in ["c0", "c1", "c2", "c9"] {
            let samples = events::semantics::samples::not_customer_writing(ORG, PN, contact, now / 1000 + 60);
            let event = samples[pick % samples.len()].clone();
            let echo = events::semantics::is_business_app_writing(&event);
            let out = r.handle(Input::Event(Box::new(event)), now);
            for ev in &out {
                prop_assert!(ev.state != Open, "{contact}: opened or reopened by {out:?}");
                prop_assert!(echo && ev.assignee.as_deref() == Some(BUSINESS_APP), "{contact}: routed by {out:?}");
            }
        }
    }
}

#[test]
fn presence_of_agents_the_directory_does_not_know_is_bounded() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    for i in 0..1000 {
        r.handle(
            presence(&format!("ghost{i}"), "d", PresenceState::Online, i),
            i,
        );
    }
    assert_eq!(r.tracked_devices(), machine::MAX_UNKNOWN_PRESENCE_AGENTS);
    assert!(!r.is_online(ORG, "ghost999"));
    // The org's own agents are always tracked.
    r.handle(presence("ana", "d", PresenceState::Online, 2000), 2000);
    assert!(r.is_online(ORG, "ana"));
    assert_eq!(
        r.tracked_devices(),
        machine::MAX_UNKNOWN_PRESENCE_AGENTS + 1
    );
}

#[test]
fn devices_per_agent_are_bounded_and_the_newest_state_counts() {
    let mut r = Router::new(config(Policy::LeastLoaded));
    // One agent's app inventing device ids cannot grow the router without end.
    for i in 0..1000 {
        r.handle(
            presence("ana", &format!("d{i}"), PresenceState::Offline, i),
            i,
        );
    }
    r.handle(presence("ana", "real", PresenceState::Online, 2000), 2000);
    assert!(r.is_online("acme", "ana"));
    for i in 0..1000 {
        r.handle(
            presence("ana", &format!("e{i}"), PresenceState::Offline, 3000 + i),
            3000 + i,
        );
    }
    // The online device was forgotten with the oldest, so ana reads offline: the cap
    // bounds memory, and a device that speaks again is tracked again.
    assert!(!r.is_online("acme", "ana"));
    r.handle(presence("ana", "real", PresenceState::Online, 5000), 5000);
    assert!(r.is_online("acme", "ana"));
    assert!(r.tracked_devices() <= events::inbox::MAX_DEVICES_PER_AGENT);
}
