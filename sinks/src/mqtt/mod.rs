//! The MQTT sink: publishes messages, status changes and outbound results to their
//! conversation's topic, and assignments, command outcomes and new messages to the
//! agents' inboxes (see [`mapping`]), QoS 1; a batch counts as written only when the
//! broker has acknowledged every publish it made (PUBACK), matched by packet id so a
//! late ack of an abandoned batch does not count ([`acks`]). Several batches are out
//! at once, committed in order (the loop is in `run.rs`).
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

use std::collections::HashSet;
use std::time::Duration;

use events::delivery::{OutboundResult, StatusTransition};
use events::inbox::AssignmentEvent;
use events::{WhatsAppEvent, topics};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use runtime::mqtt::MqttConnection;
use runtime::{Record, Reject};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use acks::{Acks, Delivery, Ticket};
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
    /// Keys published by the batches in flight, not yet in `recent`: a copy in a
    /// later batch is not published again while the first awaits its PUBACK.
    in_flight: HashSet<String>,
    followups: Followups,
    owners: Owners,
    config: MqttConfig,
    prefix: String,
    /// When the client last connected: a batch out before then gets its whole
    /// `ack_timeout_ms` again from here.
    connected_at: tokio::time::Instant,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

/// A batch whose publishes are out, awaiting their PUBACKs; committed once they
/// are all in and every batch before it was committed.
struct InFlight {
    batch: Vec<Record>,
    ticket: Ticket,
    /// The keys it published, remembered in `recent` once acknowledged.
    published: Vec<String>,
    /// How it changed the owners table, reverted if it is redone.
    undo: Vec<Undo>,
    rejects: Vec<Reject>,
    /// The inbound messages it published, for the real-time path's stage timings.
    timed: Vec<usize>,
    consumed_ms: i64,
    started: tokio::time::Instant,
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
            in_flight: HashSet::new(),
            followups: Followups::new(config.dedup_capacity),
            owners: Owners::default(),
            config,
            prefix: connection.topic_prefix.clone(),
            connected_at: tokio::time::Instant::now(),
        }
    }

    /// The event loop's next report, folded into the acks; `None` when it stopped.
    async fn next_delivery(&mut self) -> Option<()> {
        let delivery = self.deliveries.recv().await?;
        self.observe(delivery, tokio::time::Instant::now());
        Some(())
    }

    fn observe(&mut self, delivery: Delivery, now: tokio::time::Instant) {
        let was_connected = self.acks.connected();
        self.acks.observe(delivery);
        if self.acks.connected() && !was_connected {
            self.connected_at = now;
        }
    }

    /// When the batch's PUBACKs are overdue: `ack_timeout_ms` after it started, or
    /// after the client last connected if that is later; `None` while the client is
    /// not connected. A broker that is down is waited for, not retried against: the
    /// client sends what is out again when it is back (same session), and redoing
    /// the batches meanwhile would only queue copies of them in the client.
    fn deadline(&self, in_flight: &InFlight) -> Option<tokio::time::Instant> {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        self.acks
            .connected()
            .then(|| (in_flight.started + timeout).max(self.connected_at + timeout))
    }

    /// Whether every publish of the batch was acknowledged.
    fn acknowledged(&self, in_flight: &InFlight) -> bool {
        self.acks.complete(in_flight.ticket)
    }

    /// How many publishes of the batch still await their PUBACK.
    fn awaiting(&self, in_flight: &InFlight) -> usize {
        self.acks.awaiting(in_flight.ticket)
    }

    /// Whether the client is connected to the broker.
    fn connected(&self) -> bool {
        self.acks.connected()
    }

    /// Whether the session was lost with publishes out: every batch in flight must
    /// be redone.
    fn session_lost(&self) -> bool {
        self.acks.lost()
    }

    fn seen(&self, key: &str) -> bool {
        self.recent.contains(key) || self.in_flight.contains(key)
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
                    if tx.send(Delivery::Disconnected).is_err() {
                        return;
                    }
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

/// Records how long an inbound message spent in each stage of the real-time path,
/// from ingest's receipt (header), the record's timestamp (handed to the producer),
/// when its batch reached the sink and when its publishes were acknowledged.
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
    fn route(&mut self, record: &Record, undo: &mut Vec<Undo>) -> Result<Routed, String> {
        match record.topic.as_str() {
            topics::CONVERSATION_ASSIGNMENTS => {
                let a = record.decode::<AssignmentEvent>("an assignment")?;
                let key = format!("assignment:{}:{}", a.org, a.id);
                if self.seen(&key) {
                    // A late copy must not move the owner back either.
                    return Ok((key, Vec::new(), None, Follow::No));
                }
                undo.extend(self.owners.apply(&a));
                let topics = mapping::assignment_topics(&self.prefix, &a);
                Ok((key, topics, None, Follow::No))
            }
            topics::OUTBOUND_RESULTS => {
                let r = record.decode::<OutboundResult>("an outbound result")?;
                let topics = mapping::outbound_result_topics(&self.prefix, &r);
                Ok((
                    format!("result:{}:{}", r.org, r.id),
                    topics,
                    None,
                    Follow::No,
                ))
            }
            topics::MESSAGES_STATUS => {
                let t = record.decode::<StatusTransition>("a status transition")?;
                let topics = mapping::status_topics(&self.prefix, &t);
                let payload = mapping::status_payload(&t);
                let key = format!("status:{}:{}", t.org, t.id);
                Ok((key, topics, Some(payload), Follow::No))
            }
            _ => {
                let event = record.decode::<WhatsAppEvent>("a whatsapp event")?;
                let topics = mapping::event_topics(&self.prefix, &event, &self.owners);
                let follow = match followups::original_of(&event) {
                    Some(original) if !self.seen(&original) => Follow::Change(original),
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

impl MqttSink {
    /// Hands every publish of `batch` to the client, QoS 1, and returns it in flight.
    /// With the error, the client took only part of it: the batch (and every one in
    /// flight) must be redone ([`Self::redo`]).
    async fn start(&mut self, batch: Vec<Record>) -> (InFlight, anyhow::Result<()>) {
        let started = tokio::time::Instant::now();
        let mut f = InFlight {
            ticket: self.acks.begin(),
            published: Vec::new(),
            undo: Vec::new(),
            rejects: Vec::new(),
            timed: Vec::new(),
            consumed_ms: events::clock::now_ms(),
            started,
            batch,
        };
        let result = self.publish(&mut f).await;
        (f, result)
    }

    async fn publish(&mut self, f: &mut InFlight) -> anyhow::Result<()> {
        for (index, record) in f.batch.iter().enumerate() {
            let (key, topics, payload, follow) = match self.route(record, &mut f.undo) {
                Ok(routed) => routed,
                Err(reason) => {
                    f.rejects.push(Reject { index, reason });
                    continue;
                }
            };
            if topics.is_empty() || self.seen(&key) {
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
                self.client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                self.acks.publishing(f.ticket);
            }
            if record.topic == topics::WHATSAPP_EVENTS {
                f.timed.push(index);
            }
            self.in_flight.insert(key.clone());
            f.published.push(key);
        }
        Ok(())
    }

    /// The batch's publishes were all acknowledged ([`Self::acknowledged`]): what it
    /// published is remembered, and its changes that waited for an original let go.
    fn finish(&mut self, f: &InFlight) {
        for id in &f.published {
            self.in_flight.remove(id);
            self.followups.release(id);
            self.recent.insert(id.clone());
        }
        let metrics = &runtime::observe::global().metrics;
        metrics.cache_size(ROLE, "recent_ids", self.recent.len());
        metrics.cache_size(ROLE, "conversation_owners", self.owned_conversations());
        // Bounded by `batches_in_flight` × the batches' `max_records`.
        metrics.cache_size(ROLE, "in_flight_keys", self.in_flight.len());
        let published_ms = events::clock::now_ms();
        for record in f.timed.iter().filter_map(|&i| f.batch.get(i)) {
            path_timings(record, f.consumed_ms, published_ms);
        }
    }

    /// Every batch in flight gave up (acks overdue, a lost session, a client that
    /// refused a publish): the owners table goes back to before the oldest, newest
    /// undone first, and their batches come back in order, to be started again. A
    /// lost session is connected anew, with nothing outstanding.
    fn redo(&mut self, in_flight: impl DoubleEndedIterator<Item = InFlight>) -> Vec<Vec<Record>> {
        self.acks.abandon();
        let mut batches = Vec::new();
        for f in in_flight.rev() {
            self.owners.undo(f.undo);
            batches.push(f.batch);
        }
        batches.reverse();
        self.in_flight.clear();
        if self.acks.lost() {
            tracing::warn!("mqtt session lost with publishes out; connecting anew");
            self.event_loop.abort();
            (self.client, self.deliveries, self.event_loop) = connect(self.options.clone());
            self.acks.reset();
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::acks::Delivery::{Acked, Connected, Disconnected, Sent};
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

    fn record(topic: &str, value: Vec<u8>) -> Record {
        Record {
            topic: topic.into(),
            value,
            ..Record::default()
        }
    }

    /// A customer's message `wamid` in conversation `contact`, as the sink reads it.
    fn message(wamid: &str, contact: &str) -> Record {
        let event = events::semantics::samples::message(
            "o",
            "p",
            contact,
            wamid,
            events::event::Origin::Customer,
            1,
        );
        record(
            topics::WHATSAPP_EVENTS,
            events::codec::encode(&event).unwrap(),
        )
    }

    fn assignment(id: &str, contact: &str, agent: &str) -> Record {
        let a = AssignmentEvent {
            id: id.into(),
            org: "o".into(),
            phone_number_id: "p".into(),
            conversation_id: events::ids::conversation_id("p", contact),
            state: events::inbox::ConversationState::Assigned,
            assignee: Some(agent.into()),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: 1,
        };
        record(
            topics::CONVERSATION_ASSIGNMENTS,
            events::codec::encode(&a).unwrap(),
        )
    }

    /// A sink whose acks are reported by the test instead of a broker; publishes
    /// only queue in the client.
    fn sink() -> (MqttSink, mpsc::UnboundedSender<Delivery>) {
        let mut sink = MqttSink::new(&MqttConnection::default(), MqttConfig::default());
        let (tx, deliveries) = mpsc::unbounded_channel();
        sink.deliveries = deliveries;
        (sink, tx)
    }

    async fn fold(sink: &mut MqttSink, reports: &[Delivery]) {
        let (tx, deliveries) = mpsc::unbounded_channel();
        for d in reports {
            tx.send(*d).unwrap();
        }
        drop(tx);
        let own = std::mem::replace(&mut sink.deliveries, deliveries);
        while sink.next_delivery().await.is_some() {}
        sink.deliveries = own;
    }

    /// Pipelined batches: a message in flight (published, PUBACK not yet in) is not
    /// published again by the next batch, and each batch completes on its own acks.
    #[tokio::test]
    async fn a_copy_in_the_next_batch_is_not_published_while_the_first_is_in_flight() {
        let (mut sink, _tx) = sink();
        let (first, result) = sink.start(vec![message("m1", "c1")]).await;
        result.unwrap();
        let one = sink.awaiting(&first);
        assert!(one > 0);
        let (second, result) = sink
            .start(vec![message("m1", "c1"), message("m2", "c1")])
            .await;
        result.unwrap();
        assert_eq!(
            sink.awaiting(&second),
            one,
            "the copy of m1 was published again"
        );
        // The broker answers the second batch first: it is complete, the first not.
        let sent: Vec<Delivery> = (1..=2 * one as u16).map(Sent).collect();
        fold(&mut sink, &sent).await;
        let acked: Vec<Delivery> = (one as u16 + 1..=2 * one as u16).map(Acked).collect();
        fold(&mut sink, &acked).await;
        assert!(sink.acknowledged(&second) && !sink.acknowledged(&first));
        fold(&mut sink, &(1..=one as u16).map(Acked).collect::<Vec<_>>()).await;
        assert!(sink.acknowledged(&first));
        sink.finish(&first);
        sink.finish(&second);
        let (third, result) = sink.start(vec![message("m2", "c1")]).await;
        result.unwrap();
        assert_eq!(
            sink.awaiting(&third),
            0,
            "a published message went out again"
        );
    }

    /// A broker that is down is waited for: no batch is overdue while the client is
    /// not connected, and each gets its whole ack timeout again from the reconnect.
    /// (Redoing them meanwhile queued copies in the client: three of every message
    /// through a 2 s outage in tests/outage.rs.)
    #[tokio::test]
    async fn batches_are_not_overdue_while_the_broker_is_away() {
        let (mut sink, _tx) = sink();
        let timeout = Duration::from_millis(sink.config.ack_timeout_ms);
        let t0 = tokio::time::Instant::now();
        sink.observe(
            Connected {
                session_present: false,
            },
            t0,
        );
        let (f, result) = sink.start(vec![message("m1", "c1")]).await;
        result.unwrap();
        assert_eq!(sink.deadline(&f), Some(f.started + timeout));
        sink.observe(Disconnected, t0);
        assert_eq!(sink.deadline(&f), None, "overdue while the broker is away");
        let back = f.started + Duration::from_secs(60);
        sink.observe(
            Connected {
                session_present: true,
            },
            back,
        );
        assert_eq!(sink.deadline(&f), Some(back + timeout));
    }

    /// When batches in flight give up, they come back in order, the owners table is
    /// as before the oldest, and late acks of the abandoned publishes do not
    /// complete the retries (whose offsets would then be committed on them).
    #[tokio::test]
    async fn redone_batches_start_from_the_state_before_the_oldest() {
        let (mut sink, _tx) = sink();
        sink.remember(&events::codec::decode(&assignment("a0", "c1", "ana").value).unwrap());
        let conversation = events::ids::conversation_id("p", "c1");
        let (first, result) = sink.start(vec![assignment("a1", "c1", "bob")]).await;
        result.unwrap();
        let (second, result) = sink
            .start(vec![assignment("a2", "c1", "cyd"), message("m1", "c1")])
            .await;
        result.unwrap();
        assert_eq!(sink.owners.get("o", &conversation), Some("cyd"));
        let (a, b) = (sink.awaiting(&first) as u16, sink.awaiting(&second) as u16);
        fold(&mut sink, &(1..=a).map(Sent).collect::<Vec<_>>()).await;
        let batches = sink.redo([first, second].into_iter());
        assert_eq!(sink.owners.get("o", &conversation), Some("ana"));
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 2],
            "not back in order"
        );
        // The retries publish everything again: nothing of theirs counts as seen.
        let mut retries = Vec::new();
        for batch in batches {
            let (retry, result) = sink.start(batch).await;
            result.unwrap();
            retries.push(retry);
        }
        assert_eq!(sink.owners.get("o", &conversation), Some("cyd"));
        assert_eq!(sink.awaiting(&retries[0]) as u16, a);
        assert_eq!(sink.awaiting(&retries[1]) as u16, b);
        // The abandoned publishes go out and are acked late: no retry completes.
        let stale: Vec<Delivery> = (a + 1..=a + b)
            .map(Sent)
            .chain((1..=a + b).map(Acked))
            .collect();
        fold(&mut sink, &stale).await;
        assert!(!sink.acknowledged(&retries[0]) && !sink.acknowledged(&retries[1]));
        let own: Vec<Delivery> = (1..=a + b)
            .map(Sent)
            .chain((1..=a + b).map(Acked))
            .collect();
        fold(&mut sink, &own).await;
        assert!(sink.acknowledged(&retries[0]) && sink.acknowledged(&retries[1]));
    }
}
