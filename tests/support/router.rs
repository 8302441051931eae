//! A scenario for the tests of the router and of what follows its assignments (the
//! notifier): one org of [`AGENTS`] agents on a number of its own, the topics
//! applied, messages and presence produced, assignments read back.

use std::collections::BTreeMap;
use std::time::Duration;

use coexist::Config;
use events::event::MessageEvent;
use events::inbox::{AssignmentEvent, ConversationState, PresenceEvent, PresenceState};
use events::{WhatsAppEvent, topics};
use processors::router::{AgentConfig, Policy};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

use super::{now_ms, unique};

pub const AGENTS: usize = 5;
pub const CAPACITY: usize = 10;
pub const BURST: usize = 40;

pub struct Scenario {
    pub config: Config,
    pub org: String,
    pub number: String,
    pub publisher: runtime::Publisher,
}

impl Scenario {
    pub async fn new(name: &str) -> Self {
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
        coexist::topics::apply(
            &config.kafka,
            &coexist::topics::contract().unwrap(),
            &config.topics,
        )
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

    pub fn presence(&self, agent: usize, state: PresenceState) -> PresenceEvent {
        PresenceEvent {
            org: self.org.clone(),
            agent_id: format!("agent{agent}"),
            device_id: "phone".into(),
            state,
            conversation_id: None,
            at_ms: now_ms(),
        }
    }

    pub async fn send_presence(&self, event: &PresenceEvent) {
        self.publisher
            .send_json(topics::AGENTS_PRESENCE, &self.org, event, vec![])
            .await
            .unwrap();
    }

    pub fn message(&self, i: usize) -> WhatsAppEvent {
        self.message_on(&self.number, i)
    }

    pub fn message_on(&self, number: &str, i: usize) -> WhatsAppEvent {
        let contact = format!("1555{i:07}");
        let wamid = format!("wamid.router.{number}.{i}");
        MessageEvent::builder(&self.org, number, &contact, &wamid)
            .sent_at(now_ms() / 1000)
            .received_at_ms(now_ms())
            .preview("hi")
            .event()
    }

    pub async fn send_messages(&self, range: std::ops::Range<usize>) {
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
    pub async fn assignments_until(
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
pub fn owners(outputs: &[AssignmentEvent]) -> BTreeMap<String, String> {
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

pub fn loads(owners: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut loads = BTreeMap::new();
    for agent in owners.values() {
        *loads.entry(agent.clone()).or_default() += 1;
    }
    loads
}
