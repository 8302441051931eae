//! `coexist simulate agents`: agents' apps for demos. Each agent comes online the way
//! a real app does (a retained MQTT presence with an `offline` last will, read by
//! ingest's presence bridge), watches its own inbox topic, and answers each customer
//! message that reaches it with a send command on `messages.outbound`, the command
//! the API's send endpoint produces. The whatsapp sink sends it to the Graph API (the
//! simulator), whose status webhooks come back through ingest, so a demo shows the
//! whole loop: customer → assignment → agent reply → sent → delivered → read.

use events::clock::now_ms;
use std::time::Duration;

use anyhow::Context;
use events::delivery::OutboundMessage;
use events::event::Direction;
use events::{EventBody, WhatsAppEvent};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    /// The org (default: the org of the first configured business number).
    #[arg(long)]
    pub org: Option<String>,
    /// Agent ids, comma-separated (default: the router's agents of the org).
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// How long an agent takes to answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub reply_after: Duration,
}

const REPLIES: &[&str] = &[
    "Thanks for writing! Let me check that for you.",
    "Sure, I can help with that.",
    "It ships tomorrow morning.",
    "Done! Anything else?",
];

/// What an agent does with one message on its inbox topic: the reply command for a
/// customer's message, nothing for anything else. Pure.
pub fn reply_to(agent: &str, payload: &[u8], at_ms: i64) -> Option<OutboundMessage> {
    let event: WhatsAppEvent = serde_json::from_slice(payload).ok()?;
    let EventBody::Message(message) = &event.body else {
        return None;
    };
    if message.direction != Direction::Inbound {
        return None;
    }
    let pick = event.id.bytes().map(usize::from).sum::<usize>() % REPLIES.len();
    Some(OutboundMessage {
        id: format!("sim-reply-{}", event.id),
        org: event.org.clone(),
        phone_number_id: event.phone_number_id.clone(),
        conversation_id: message.conversation_id.clone(),
        to: message.contact_wa_id.clone(),
        sent_by: agent.to_string(),
        at_ms,
        payload: json!({ "type": "text", "text": { "body": REPLIES[pick] } }),
    })
}

/// Runs the agents until shutdown; each goes offline (its retained presence) on the
/// way out.
pub async fn run(
    config: &Config,
    args: AgentsArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let org = match args.org {
        Some(org) => org,
        None => config
            .ingest
            .numbers
            .first()
            .map(|n| n.org.clone())
            .unwrap_or_else(|| config.ingest.default_org.clone()),
    };
    let agents = if args.agents.is_empty() {
        config
            .processors
            .router
            .router
            .orgs
            .get(&org)
            .map(|list| list.iter().map(|a| a.agent_id.clone()).collect())
            .unwrap_or_default()
    } else {
        args.agents
    };
    anyhow::ensure!(
        !agents.is_empty(),
        "no agents: pass --agents or list the org's agents under [processors.router.orgs]"
    );
    let publisher = config.kafka.publisher("simulate-agents").await?;
    let mut tasks = tokio::task::JoinSet::new();
    for agent in agents {
        let (config, org, publisher, shutdown) = (
            config.clone(),
            org.clone(),
            publisher.clone(),
            shutdown.clone(),
        );
        let reply_after = args.reply_after;
        tasks.spawn(async move {
            agent_app(&config, &org, &agent, reply_after, publisher, shutdown).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an agent task panicked")??;
    }
    Ok(())
}

async fn agent_app(
    config: &Config,
    org: &str,
    agent: &str,
    reply_after: Duration,
    publisher: runtime::Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let prefix = &config.mqtt.topic_prefix;
    let presence = format!("{prefix}/{org}/presence/{agent}");
    let inbox = format!("{prefix}/{org}/agents/{agent}/inbox");
    let mut options = config.mqtt.options(&format!("sim-agent-{org}-{agent}"));
    options.set_last_will(LastWill::new(&presence, "offline", QoS::AtLeastOnce, true));
    let (client, mut event_loop) = AsyncClient::new(options, 100);
    client
        .publish(&presence, QoS::AtLeastOnce, true, "online")
        .await?;
    client.subscribe(&inbox, QoS::AtLeastOnce).await?;
    tracing::info!(%agent, %inbox, "simulated agent online");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(reply) = reply_to(agent, &p.payload, now_ms()) else {
                    continue;
                };
                let publisher = publisher.clone();
                let agent = agent.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(reply_after).await;
                    let key = reply.phone_number_id.clone();
                    match publisher
                        .send_json(events::topics::MESSAGES_OUTBOUND, &key, &reply, vec![])
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(%agent, conversation = %reply.conversation_id, "simulated agent replied")
                        }
                        Err(err) => tracing::warn!(%agent, %err, "reply not queued"),
                    }
                });
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%agent, %err, "MQTT connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Going offline on purpose: the retained presence says so (the will covers a crash).
    let _ = client
        .publish(&presence, QoS::AtLeastOnce, true, "offline")
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = event_loop.poll().await {
            if matches!(event, Event::Incoming(Packet::PubAck(_))) {
                break;
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fixture: &str) -> Vec<u8> {
        let body = std::fs::read_to_string(format!(
            "{}/events/tests/fixtures/{fixture}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("fixture");
        let webhook: events::Webhook = serde_json::from_str(&body).expect("webhook");
        let orgs = events::OrgDirectory::new("demo", []);
        let normalized = events::normalize(&webhook, 0, &orgs);
        serde_json::to_vec(&normalized.events[0]).expect("json")
    }

    #[test]
    fn a_customer_message_gets_one_reply_from_the_agent() {
        let reply = reply_to("ann", &event("msg_text"), 5).expect("a reply");
        assert_eq!(reply.sent_by, "ann");
        assert_eq!(reply.to, "16505551234");
        assert_eq!(reply.org, "demo");
        assert!(reply.id.starts_with("sim-reply-wamid."));
        assert_eq!(reply.payload["type"], "text");
        // The same message always gives the same command id: a redelivered inbox
        // message cannot make the agent send twice.
        assert_eq!(
            reply_to("ann", &event("msg_text"), 9).map(|r| r.id),
            Some(reply.id)
        );
    }

    #[test]
    fn statuses_echoes_and_other_payloads_get_none() {
        assert!(reply_to("ann", &event("status_read"), 0).is_none());
        assert!(reply_to("ann", &event("smb_message_echoes"), 0).is_none());
        assert!(reply_to("ann", b"{\"kind\":\"assignment\"}", 0).is_none());
        assert!(reply_to("ann", b"not json", 0).is_none());
    }
}
