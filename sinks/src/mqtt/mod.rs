//! The MQTT sink: publishes messages, status changes and outbound results to their
//! conversation's topic, and assignments, command outcomes and new messages to the
//! agents' inboxes (see [`mapping`]), QoS 1; a batch counts as written only when the
//! broker has acknowledged every publish (PUBACK).
//!
//! It reads `whatsapp.events`, `conversations.assignments`, `messages.status` and
//! `messages.outbound.results` in one group. The first two are keyed by
//! `phone_number_id` with equal partition counts, so one member owns a number's
//! events and its assignments, and keeps who owns each conversation as a table.

pub mod config;
pub mod followups;
pub mod mapping;
pub mod recent;
mod run;

use std::time::Duration;

use events::delivery::{OutboundResult, StatusTransition};
use events::inbox::AssignmentEvent;
use events::{WhatsAppEvent, topics};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use runtime::mqtt::MqttConnection;
use runtime::{Record, Reject, Stage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::MqttConfig;
use followups::Followups;
use mapping::{Owners, Undo};
use recent::RecentIds;
pub use run::{TOPICS, run};

pub struct MqttSink {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    event_loop: JoinHandle<()>,
    recent: RecentIds,
    followups: Followups,
    owners: Owners,
    config: MqttConfig,
    prefix: String,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

impl MqttSink {
    pub fn new(connection: &MqttConnection, config: MqttConfig) -> Self {
        let (client, mut event_loop) =
            AsyncClient::new(connection.options(&config.client_id), 1024);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            let mut backoff = runtime::RetryPolicy::default().backoff();
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        backoff.reset();
                        tracing::info!(?ack.code, "mqtt connected")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%err, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost; reconnecting");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        Self {
            client,
            acks,
            event_loop,
            recent: RecentIds::new(config.dedup_capacity),
            followups: Followups::new(config.dedup_capacity),
            owners: Owners::default(),
            config,
            prefix: connection.topic_prefix.clone(),
        }
    }
}

impl MqttSink {
    /// Folds the assignments so far into the owners table, publishing nothing: how
    /// the table is rebuilt from `conversations.assignments` at start.
    pub fn remember(&mut self, assignment: &AssignmentEvent) {
        self.owners.apply(assignment);
    }

    /// How many conversations have an owner, as far as the sink knows.
    pub fn owned_conversations(&self) -> usize {
        self.owners.len()
    }

    /// The dedup key and the topics of one record (none when already published);
    /// `Err` is why it cannot be read.
    fn route(
        &mut self,
        record: &Record,
        published: &[String],
        undo: &mut Vec<Undo>,
    ) -> Result<Routed, String> {
        let prefix = &self.prefix;
        match record.topic.as_str() {
            topics::CONVERSATION_ASSIGNMENTS => {
                let a = record.decode::<AssignmentEvent>("an assignment")?;
                let key = format!("assignment:{}:{}", a.org, a.id);
                if self.recent.contains(&key) || published.contains(&key) {
                    // A late copy must not move the owner back either.
                    return Ok((key, Vec::new(), None, Follow::No));
                }
                undo.extend(self.owners.apply(&a));
                let topics = mapping::assignment_topics(prefix, &a);
                Ok((key, topics, None, Follow::No))
            }
            topics::OUTBOUND_RESULTS => {
                let r = record.decode::<OutboundResult>("an outbound result")?;
                let topics = mapping::outbound_result_topics(prefix, &r);
                Ok((
                    format!("result:{}:{}", r.org, r.id),
                    topics,
                    None,
                    Follow::No,
                ))
            }
            topics::MESSAGES_STATUS => {
                let t = record.decode::<StatusTransition>("a status transition")?;
                let topics = mapping::status_topics(prefix, &t);
                let payload = mapping::status_payload(&t);
                let key = format!("status:{}:{}", t.org, t.id);
                Ok((key, topics, Some(payload), Follow::No))
            }
            _ => {
                let event = record.decode::<WhatsAppEvent>("a whatsapp event")?;
                let topics = mapping::event_topics(prefix, &event, &self.owners);
                let follow = match followups::original_of(&event) {
                    Some(original)
                        if !self.recent.contains(&original) && !published.contains(&original) =>
                    {
                        Follow::Change(original)
                    }
                    Some(_) => Follow::No,
                    None => Follow::Original,
                };
                Ok((event.scoped_id(), topics, None, follow))
            }
        }
    }
}

/// A record's dedup key, its topics, its payload when not the record's own JSON, and
/// what it means for [`Followups`].
type Routed = (String, Vec<String>, Option<Vec<u8>>, Follow);

/// A record's part in changes that overtake their original.
enum Follow {
    No,
    /// A change whose original (`org:wamid`) this sink has not published (yet).
    Change(String),
    /// Possibly an original that changes are waiting for.
    Original,
}

impl Stage for MqttSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let mut undo = Vec::new();
        let result = self.publish(batch, &mut undo).await;
        if result.is_err() {
            // The batch will be redone: the owners table must be as it was before it.
            self.owners.undo(undo);
        }
        result
    }
}

impl MqttSink {
    async fn publish(
        &mut self,
        batch: &[Record],
        undo: &mut Vec<Undo>,
    ) -> anyhow::Result<Vec<Reject>> {
        let mut rejects = Vec::new();
        while self.acks.try_recv().is_ok() {} // acks of an abandoned attempt
        let mut published = Vec::new();
        let mut publishes = 0;
        for (index, record) in batch.iter().enumerate() {
            let (key, topics, payload, follow) = match self.route(record, &published, undo) {
                Ok(routed) => routed,
                Err(reason) => {
                    rejects.push(Reject { index, reason });
                    continue;
                }
            };
            if topics.is_empty() || self.recent.contains(&key) || published.contains(&key) {
                continue;
            }
            let payload =
                payload.unwrap_or_else(|| events::codec::json_part(&record.value).to_vec());
            let mut out = vec![(topics, payload)];
            match follow {
                Follow::Change(original) => self.followups.wait(original, out[0].clone()),
                Follow::Original => out.extend(self.followups.after(&key)),
                Follow::No => {}
            }
            for (topics, payload) in out {
                for topic in topics {
                    self.client
                        .publish(topic, QoS::AtLeastOnce, false, payload.clone())
                        .await?;
                    publishes += 1;
                }
            }
            published.push(key);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.ack_timeout_ms);
        for _ in 0..publishes {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(())) => {}
                Ok(None) => anyhow::bail!("mqtt event loop stopped"),
                Err(_) => {
                    anyhow::bail!("mqtt broker did not acknowledge {publishes} publishes in time")
                }
            }
        }
        for id in published {
            self.followups.release(&id);
            self.recent.insert(id);
        }
        Ok(rejects)
    }
}
