//! The MQTT sink: publishes messages, status changes and outbound results to their
//! conversation's topic, and assignments, command outcomes and new messages to the
//! agents' inboxes (see [`mapping`]), QoS 1; a batch counts as written only when the
//! broker has acknowledged every publish it made (PUBACK), matched by packet id so a
//! late ack of an abandoned batch does not count ([`acks`]).
//!
//! It reads `whatsapp.events`, `conversations.assignments`, `messages.status` and
//! `messages.outbound.results` in one group. The first two are keyed by
//! `phone_number_id` with equal partition counts, so one member owns a number's
//! events and its assignments, and keeps who owns each conversation as a table.

pub mod acks;
pub mod config;
pub mod followups;
pub mod mapping;
pub mod recent;
mod run;

use std::time::Duration;

use events::delivery::{OutboundResult, StatusTransition};
use events::inbox::AssignmentEvent;
use events::{WhatsAppEvent, topics};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use runtime::mqtt::MqttConnection;
use runtime::{Record, Reject, Stage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use acks::{Acks, Delivery};
pub use config::MqttConfig;
use followups::Followups;
use mapping::{Owners, Undo};
use recent::RecentIds;
pub use run::{TOPICS, run};

/// The role name (metrics label).
const ROLE: &str = "sink-mqtt";

pub struct MqttSink {
    client: AsyncClient,
    /// What the event loop reports: packet ids sent and acknowledged.
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    acks: Acks,
    event_loop: JoinHandle<()>,
    /// To connect anew when packet ids can no longer be matched.
    options: rumqttc::MqttOptions,
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
        let mut options = connection.options(&config.client_id);
        options.set_inflight(config.max_inflight.max(1));
        let (client, deliveries, event_loop) = connect(options.clone());
        Self {
            client,
            deliveries,
            acks: Acks::default(),
            event_loop,
            options,
            recent: RecentIds::new(config.dedup_capacity),
            followups: Followups::new(config.dedup_capacity),
            owners: Owners::default(),
            config,
            prefix: connection.topic_prefix.clone(),
        }
    }

    /// Folds what the event loop reported so far; when packet ids can no longer be
    /// matched (a lost session), connects anew with nothing outstanding.
    fn catch_up(&mut self) {
        while let Ok(delivery) = self.deliveries.try_recv() {
            self.acks.observe(delivery);
        }
        if self.acks.lost() {
            tracing::warn!("mqtt session lost with publishes out; connecting anew");
            self.event_loop.abort();
            (self.client, self.deliveries, self.event_loop) = connect(self.options.clone());
            self.acks = Acks::default();
        }
    }
}

/// A client and its event loop, which reports the packet ids of publishes and acks.
fn connect(
    options: rumqttc::MqttOptions,
) -> (
    AsyncClient,
    mpsc::UnboundedReceiver<Delivery>,
    JoinHandle<()>,
) {
    let (client, mut event_loop) = AsyncClient::new(options, 1024);
    let (tx, deliveries) = mpsc::unbounded_channel();
    let event_loop = tokio::spawn(async move {
        let mut backoff = runtime::RetryPolicy::default().backoff();
        loop {
            let delivery = match event_loop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Delivery::Sent(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => Delivery::Acked(ack.pkid),
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff.reset();
                    tracing::info!(?ack.code, "mqtt connected");
                    Delivery::Connected {
                        session_present: ack.session_present,
                    }
                }
                Ok(_) => continue,
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%err, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost; reconnecting");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if tx.send(delivery).is_err() {
                return;
            }
        }
    });
    (client, deliveries, event_loop)
}

/// Waits until every publish of the batch is acknowledged, folding the event loop's
/// reports; a late ack of an abandoned batch does not count ([`Acks`]). On time out
/// the batch's publishes become stale, and the batch is redone.
/// Records how long an inbound message spent in each stage of the real-time path,
/// from ingest's receipt (header), the record's timestamp (handed to the producer),
/// when this batch reached the sink and when its publishes were acknowledged.
fn path_timings(record: &Record, consumed_ms: i64, published_ms: i64) {
    use runtime::observe::path;
    let received_ms = record
        .headers
        .iter()
        .find(|(k, _)| k == "coexist.received_at_ms")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
    let metrics = &runtime::observe::global().metrics;
    if let Some(produced_ms) = record.timestamp_ms {
        if let Some(received_ms) = received_ms {
            metrics.path_stage(path::RECEIVED_PRODUCED, produced_ms - received_ms);
        }
        metrics.path_stage(path::PRODUCED_CONSUMED, consumed_ms - produced_ms);
    }
    metrics.path_stage(path::CONSUMED_PUBLISHED, published_ms - consumed_ms);
    if let Some(received_ms) = received_ms {
        metrics.path_stage(path::RECEIVED_PUBLISHED, published_ms - received_ms);
    }
}

async fn await_acks(
    acks: &mut Acks,
    deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    while !acks.complete() {
        if acks.lost() {
            acks.abandon();
            anyhow::bail!("mqtt session lost before every publish was acknowledged");
        }
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(delivery)) => acks.observe(delivery),
            Ok(None) => anyhow::bail!("mqtt event loop stopped"),
            Err(_) => {
                let missing = acks.awaiting();
                acks.abandon();
                anyhow::bail!("mqtt broker did not acknowledge {missing} publishes in time")
            }
        }
    }
    Ok(())
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
        let consumed_ms = events::clock::now_ms();
        self.catch_up(); // reports about abandoned batches, a lost session
        let mut published = Vec::new();
        // The inbound messages published, for the real-time path's stage timings.
        let mut timed = Vec::new();
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
            for (topic, payload) in out
                .into_iter()
                .flat_map(|(topics, payload)| topics.into_iter().map(move |t| (t, payload.clone())))
            {
                let sent = self
                    .client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await;
                if let Err(err) = sent {
                    self.acks.abandon();
                    return Err(err.into());
                }
                self.acks.publishing();
            }
            if record.topic == topics::WHATSAPP_EVENTS {
                timed.push(index);
            }
            published.push(key);
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.ack_timeout_ms);
        await_acks(&mut self.acks, &mut self.deliveries, deadline).await?;
        for id in published {
            self.followups.release(&id);
            self.recent.insert(id);
        }
        let metrics = &runtime::observe::global().metrics;
        metrics.cache_size(ROLE, "recent_ids", self.recent.len());
        metrics.cache_size(ROLE, "conversation_owners", self.owned_conversations());
        let published_ms = events::clock::now_ms();
        for record in timed.into_iter().filter_map(|i| batch.get(i)) {
            path_timings(record, consumed_ms, published_ms);
        }
        Ok(rejects)
    }
}

#[cfg(test)]
mod tests {
    use super::acks::Delivery::{Acked, Sent};
    use super::*;

    /// `[sinks.mqtt] max_inflight` reaches the client: with rumqttc's own 100, a
    /// batch's later publishes waited for earlier PUBACKs before they could leave.
    #[tokio::test]
    async fn the_client_keeps_as_many_publishes_in_flight_as_configured() {
        let config = MqttConfig {
            max_inflight: 700,
            ..MqttConfig::default()
        };
        let sink = MqttSink::new(&MqttConnection::default(), config);
        assert_eq!(sink.options.inflight(), 700);
    }

    /// The sink's commit path with the case: a batch gave up with its two
    /// publishes out; their PUBACKs arrive late, while the retry waits for its own two.
    /// The retry must not be written (and its offsets committed) on them.
    #[tokio::test]
    async fn a_late_puback_does_not_commit_the_next_batch() {
        let (tx, mut deliveries) = mpsc::unbounded_channel();
        let mut acks = Acks::default();
        acks.publishing();
        acks.publishing();
        tx.send(Sent(1)).unwrap();
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            await_acks(&mut acks, &mut deliveries, soon())
                .await
                .is_err()
        );
        // The retry publishes twice; the late acks of the first attempt come first.
        acks.publishing();
        acks.publishing();
        for d in [Sent(2), Acked(1), Acked(2), Sent(3), Sent(4)] {
            tx.send(d).unwrap();
        }
        let early = await_acks(&mut acks, &mut deliveries, soon()).await;
        assert!(early.is_err(), "committed on late acks");
        // Its own acks complete the next attempt.
        acks.publishing();
        acks.publishing();
        for d in [Sent(1), Sent(2), Acked(2), Acked(1)] {
            tx.send(d).unwrap();
        }
        await_acks(&mut acks, &mut deliveries, soon())
            .await
            .unwrap();
    }
}
