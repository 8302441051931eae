//! `coexist bench status|router|notifier`: one processor's work (consume, decode,
//! decide, produce its outputs and wait for their acks) over a topic of this run's
//! own, next to a raw consume of the same records by the same client library.
//! Run it pinned to one core (`taskset -c 0`) for the per-core figure.

use events::clock::now_ms;
use std::time::Instant;

use events::event::{Direction, EventBody, MessageEvent, Origin, StatusEvent};
use events::inbox::{
    AssignmentEvent, CommandAction, ConversationCommand, ConversationState, PresenceEvent,
    PresenceState,
};
use events::{WhatsAppEvent, codec, ids};
use futures::StreamExt;
use indicatif::ProgressBar;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde::Serialize;

use super::Rate;
use crate::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorArgs {
    /// Input records to put through.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Distinct messages (status) or conversations (router, notifier) they are about.
    #[arg(long, default_value_t = 5_000)]
    pub spread: usize,
}

/// Which processor to measure.
#[derive(Debug, Clone, Copy)]
pub enum Processor {
    Status,
    Router,
    Notifier,
}

/// The raw consume rate and the processor's rate over the same records.
pub async fn run(
    config: Config,
    processor: Processor,
    args: ProcessorArgs,
) -> anyhow::Result<(Rate, Rate)> {
    let org = format!("bench-{}", std::process::id());
    let spread = args.spread.max(1);
    match processor {
        Processor::Status => {
            let inputs = status_inputs(&org, args.events, spread);
            let mut tracker = processors::status::StatusTracker::new(spread * 2);
            measure(&config, "status", inputs, move |_key, value| {
                let event: WhatsAppEvent = codec::decode(value)?;
                Ok(tracker
                    .handle(processors::status::StatusInput::Event(&event))
                    .map(|t| (t.phone_number_id.clone(), t))
                    .into_iter()
                    .collect())
            })
            .await
        }
        Processor::Router => {
            let (router_config, presence) = agents(&org, 50, spread);
            let mut router = processors::router::Router::new(processors::router::RouterConfig {
                orgs: router_config,
                ..config.processors.router.router.clone()
            });
            let now = now_ms();
            for p in presence {
                router.handle(processors::router::Input::Presence(p), now);
            }
            let inputs = router_inputs(&org, args.events, spread);
            measure(&config, "router", inputs, move |key, value| {
                let input = if key.starts_with("cmd:") {
                    processors::router::Input::Command(codec::decode(value)?)
                } else {
                    processors::router::Input::Event(Box::new(codec::decode(value)?))
                };
                Ok(router
                    .handle(input, now_ms())
                    .into_iter()
                    .map(|a| (a.phone_number_id.clone(), a))
                    .collect())
            })
            .await
        }
        Processor::Notifier => {
            use processors::notifier::{Notifier, NotifierInput};
            let (_, presence) = agents(&org, 50, spread);
            let mut notifier = Notifier::new(config.processors.notifier.clone());
            // Half the agents have a device online: the other half get pushes.
            for p in presence.iter().step_by(2) {
                notifier.handle(NotifierInput::Presence(p), now_ms());
            }
            let inputs = notifier_inputs(&org, args.events, spread);
            measure(&config, "notifier", inputs, move |key, value| {
                let push = if key.starts_with("assign:") {
                    let a: AssignmentEvent = codec::decode(value)?;
                    notifier.handle(NotifierInput::Assignment(&a), now_ms())
                } else {
                    let e: WhatsAppEvent = codec::decode(value)?;
                    notifier.handle(NotifierInput::Event(&e), now_ms())
                };
                Ok(push.into_iter().map(|p| (p.agent_id.clone(), p)).collect())
            })
            .await
        }
    }
}

/// Produces `inputs` to a fresh one-partition topic, consumes them raw, then puts
/// them through `work` and produces its outputs (acked) to `{topic}.out`.
async fn measure<O, W>(
    config: &Config,
    label: &str,
    inputs: Vec<(String, Vec<u8>)>,
    mut work: W,
) -> anyhow::Result<(Rate, Rate)>
where
    O: Serialize + Send + Sync + 'static,
    W: FnMut(&str, &[u8]) -> anyhow::Result<Vec<(String, O)>>,
{
    let run = format!("bench-{label}-{}", std::process::id());
    let topic = format!("bench.{label}.{}", std::process::id());
    let mut contract = crate::topics::Contract {
        environments: crate::topics::contract()?.environments,
        topics: vec![],
    };
    for name in [topic.clone(), format!("{topic}.out")] {
        contract.topics.push(crate::topics::TopicSpec {
            name,
            description: "bench".into(),
            partitions: 1,
            key: "bench".into(),
            cleanup_policy: "delete".into(),
            retention_hours: 1,
            schema: "none".into(),
            writers: vec![],
            readers: vec![],
        });
    }
    crate::topics::apply(&config.kafka, &contract, &config.topics).await?;
    let publisher = config.kafka.publisher("bench").await?;
    let count = inputs.len();
    let bar = ProgressBar::new(count as u64).with_message(format!("producing {label} inputs"));
    let sends = inputs.into_iter().map(|(key, value)| {
        let (publisher, topic, bar) = (publisher.clone(), topic.clone(), bar.clone());
        async move {
            let result = publisher
                .send(runtime::kafka::Outgoing {
                    topic: &topic,
                    key: &key,
                    value,
                    headers: vec![],
                })
                .await;
            bar.inc(1);
            result
        }
    });
    futures::stream::iter(sends)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    bar.finish();

    let consumer = |group: &str| -> anyhow::Result<StreamConsumer> {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set(
                "session.timeout.ms",
                config.kafka.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                config.kafka.heartbeat_interval_ms.to_string(),
            )
            .create()?;
        c.subscribe(&[&topic])?;
        Ok(c)
    };
    // Raw: consume every record; the clock starts at the first one, after the join.
    let raw = consumer(&format!("{run}-raw"))?;
    drop(raw.recv().await?);
    let started = Instant::now();
    for _ in 1..count {
        drop(raw.recv().await?);
    }
    let raw_rate = Rate {
        count,
        seconds: started.elapsed().as_secs_f64(),
        p50_ms: 0.0,
        p99_ms: 0.0,
    };

    let processor = consumer(&format!("{run}-work"))?;
    let out_topic = format!("{topic}.out");
    let mut pending = Vec::new();
    let mut outputs = 0usize;
    let mut started = None;
    for _ in 0..count {
        let message = processor.recv().await?;
        started.get_or_insert_with(Instant::now);
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        for (out_key, out) in work(&key, message.payload().unwrap_or_default())? {
            outputs += 1;
            let (publisher, topic) = (publisher.clone(), out_topic.clone());
            pending.push(async move { publisher.send_json(&topic, &out_key, &out, vec![]).await });
        }
        if pending.len() >= 500 {
            futures::future::try_join_all(pending.drain(..)).await?;
        }
    }
    futures::future::try_join_all(pending).await?;
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    tracing::info!(label, outputs, "processor bench done");
    Ok((
        raw_rate,
        Rate {
            count,
            seconds,
            p50_ms: 0.0,
            p99_ms: 0.0,
        },
    ))
}

fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Statuses of `spread` messages, each going sent → delivered → read with repeats.
fn status_inputs(org: &str, events: usize, spread: usize) -> Vec<(String, Vec<u8>)> {
    let statuses = ["sent", "delivered", "read", "delivered", "read"];
    (0..events)
        .map(|i| {
            let event = WhatsAppEvent {
                id: format!("{i}"),
                org: org.to_owned(),
                phone_number_id: "1".into(),
                display_phone_number: String::new(),
                waba_id: String::new(),
                received_at_ms: 0,
                body: EventBody::Status(StatusEvent {
                    wamid: format!("wamid.{}", i % spread),
                    conversation_id: "1-2".into(),
                    status: statuses[(i / spread) % statuses.len()].into(),
                    recipient_id: "2".into(),
                    at: i as i64,
                    errors: vec![],
                    raw: serde_json::Value::Null,
                }),
            };
            ("1".to_owned(), json(&event))
        })
        .collect()
}

/// `count` agents with room for every conversation, and each one's presence online.
fn agents(
    org: &str,
    count: usize,
    spread: usize,
) -> (
    std::collections::BTreeMap<String, Vec<processors::router::AgentConfig>>,
    Vec<PresenceEvent>,
) {
    let agents: Vec<processors::router::AgentConfig> = (0..count)
        .map(|i| processors::router::AgentConfig {
            agent_id: format!("agent{i}"),
            capacity: spread / count + 2,
        })
        .collect();
    let presence = agents
        .iter()
        .map(|a| PresenceEvent {
            org: org.to_owned(),
            agent_id: a.agent_id.clone(),
            device_id: "phone".into(),
            state: PresenceState::Online,
            conversation_id: None,
            at_ms: now_ms(),
        })
        .collect();
    (
        std::collections::BTreeMap::from([(org.to_owned(), agents)]),
        presence,
    )
}

fn inbound(org: &str, number: &str, contact: &str, i: usize) -> WhatsAppEvent {
    let wamid = format!("wamid.bench.{i}");
    WhatsAppEvent {
        id: wamid.clone(),
        org: org.to_owned(),
        phone_number_id: number.to_owned(),
        display_phone_number: String::new(),
        waba_id: String::new(),
        received_at_ms: now_ms(),
        body: EventBody::Message(MessageEvent {
            wamid,
            conversation_id: ids::conversation_id(number, contact),
            contact_wa_id: contact.to_owned(),
            contact_name: None,
            direction: Direction::Inbound,
            origin: Origin::Customer,
            sent_at: now_ms() / 1000 + 1,
            message_type: "text".into(),
            preview: Some("hi".into()),
            reply_to: None,
            media: None,
            history_status: None,
            errors: vec![],
            raw: serde_json::Value::Null,
        }),
    }
}

/// Customers writing in over `spread` conversations of four numbers; every fifth
/// input an agent resolves a conversation (the next message reopens it).
fn router_inputs(org: &str, events: usize, spread: usize) -> Vec<(String, Vec<u8>)> {
    (0..events)
        .map(|i| {
            let c = i % spread;
            let number = format!("10{}", c % 4);
            let contact = format!("1555{c:07}");
            if i % 5 == 4 {
                let command = ConversationCommand {
                    id: format!("cmd-{i}"),
                    org: org.to_owned(),
                    phone_number_id: number.clone(),
                    conversation_id: ids::conversation_id(&number, &contact),
                    issued_by: format!("agent{}", c % 50),
                    at_ms: now_ms(),
                    action: CommandAction::Resolve,
                };
                (format!("cmd:{number}"), json(&command))
            } else {
                (number.clone(), json(&inbound(org, &number, &contact, i)))
            }
        })
        .collect()
}

/// Assignments of `spread` conversations to 50 agents, then customers writing in.
fn notifier_inputs(org: &str, events: usize, spread: usize) -> Vec<(String, Vec<u8>)> {
    (0..events)
        .map(|i| {
            let c = i % spread;
            let number = "100";
            let contact = format!("1555{c:07}");
            let conversation_id = ids::conversation_id(number, &contact);
            if i < spread {
                let assignment = AssignmentEvent {
                    id: format!("assign-{i}"),
                    org: org.to_owned(),
                    phone_number_id: number.into(),
                    conversation_id,
                    state: ConversationState::Assigned,
                    assignee: Some(format!("agent{}", c % 50)),
                    command_id: None,
                    issued_by: None,
                    rejected: None,
                    note: None,
                    at_ms: now_ms(),
                };
                (format!("assign:{number}"), json(&assignment))
            } else {
                (number.to_owned(), json(&inbound(org, number, &contact, i)))
            }
        })
        .collect()
}
