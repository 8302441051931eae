//! The mqtt sink's wiring: who owns each conversation (rebuilt from
//! `conversations.assignments`, so new messages reach the owner's inbox), then its
//! loop.
//!
//! The loop is the consume loop's ([`runtime::consume::run`]) with one difference:
//! it does not wait for a batch's PUBACKs before it publishes the next. Up to
//! `batches_in_flight` batches are out at once; each is committed when its own acks
//! are in and every batch before it was committed, so offsets still move only past
//! what the broker has. When one gives up, every batch in flight is redone, in
//! order, from the state before the oldest. Waiting for each batch's acks in turn
//! added that round trip (and the records queued behind it) to every message on
//! the real-time path.

use std::collections::VecDeque;

use events::inbox::AssignmentEvent;
use events::topics;
use runtime::RoleContext;
use runtime::consume::{self, Batches, DeadLetters};
use tokio_util::sync::CancellationToken;

use super::{InFlight, MqttConfig, MqttSink};

/// What the mqtt sink reads.
pub const TOPICS: &[&str] = &[
    topics::WHATSAPP_EVENTS,
    topics::CONVERSATION_ASSIGNMENTS,
    // Statuses reach devices from here, forward only.
    topics::MESSAGES_STATUS,
    topics::OUTBOUND_RESULTS,
];

/// Runs the sink until shutdown.
pub async fn run(ctx: &RoleContext, config: &MqttConfig) -> anyhow::Result<()> {
    let publisher = ctx.publisher().await?;
    let mut sink = MqttSink::new(&ctx.mqtt, config.clone());
    let Some((assignments, _)) = runtime::table::read_until_ok(
        &ctx.kafka,
        topics::CONVERSATION_ASSIGNMENTS,
        None,
        "sink-mqtt-owners",
        &ctx.shutdown,
    )
    .await
    else {
        return Ok(());
    };
    for (_, value) in &assignments {
        if let Ok(assignment) = events::codec::decode::<AssignmentEvent>(value) {
            sink.remember(&assignment);
        }
    }
    tracing::info!(
        owned = sink.owned_conversations(),
        "mqtt sink rebuilt conversation owners"
    );
    let consumer = ctx.kafka.consumer(&ctx.role, TOPICS)?;
    let batches = Batches::spawn(consumer, config.batching(&ctx.batch), ctx.shutdown.clone());
    let mut pipeline = Pipeline {
        name: &ctx.role,
        sink,
        batches,
        dead_letters: ctx.dead_letters(&publisher),
        depth: config.batches_in_flight.max(1),
        retry: ctx.batch.retry(),
        shutdown: &ctx.shutdown,
    };
    let result = pipeline.run().await;
    publisher.flush(std::time::Duration::from_secs(5));
    result
}

/// The sink's loop and what it drives.
struct Pipeline<'a> {
    name: &'a str,
    sink: MqttSink,
    batches: Batches,
    dead_letters: DeadLetters,
    /// Most batches with publishes out at once.
    depth: usize,
    retry: runtime::RetryPolicy,
    shutdown: &'a CancellationToken,
}

/// What the loop woke up for.
enum Wake {
    Delivery,
    Overdue,
    Batch(Vec<runtime::Record>),
    InputClosed,
    Shutdown,
}

impl Pipeline<'_> {
    /// Until shutdown; at shutdown the batches in flight are waited for while the
    /// broker is there (or left uncommitted if they give up), so a clean stop
    /// redelivers nothing.
    async fn run(&mut self) -> anyhow::Result<()> {
        tracing::info!(stage = self.name, depth = self.depth, "started");
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut redo: VecDeque<Vec<runtime::Record>> = VecDeque::new();
        let mut backoff = self.retry.backoff();
        let mut input_open = true;
        loop {
            // Commit, in order, what the broker has acknowledged.
            while let Some(done) = in_flight
                .front()
                .is_some_and(|f| self.sink.acknowledged(f))
                .then(|| in_flight.pop_front())
                .flatten()
            {
                self.sink.finish(&done);
                for reject in &done.rejects {
                    let Some(record) = done.batch.get(reject.index) else {
                        continue;
                    };
                    if !self
                        .dead_letters
                        .send_until_ok(record, &reject.reason, self.shutdown)
                        .await
                    {
                        return Ok(()); // shutdown: left uncommitted
                    }
                }
                consume::commit(self.batches.consumer(), &done.batch)?;
                let written = done.batch.len().saturating_sub(done.rejects.len());
                consume::report_written(self.name, written, done.started.elapsed());
                backoff.reset();
            }
            // Give up on every batch in flight when the oldest's acks are overdue or
            // the session was lost, and start them again after a backoff.
            let failure = if self.sink.session_lost() {
                Some("mqtt session lost before every publish was acknowledged".to_string())
            } else {
                in_flight
                    .front()
                    .filter(|f| {
                        self.sink
                            .deadline(f)
                            .is_some_and(|at| at <= tokio::time::Instant::now())
                    })
                    .map(|f| {
                        format!(
                            "mqtt broker did not acknowledge {} publishes in time",
                            self.sink.awaiting(f)
                        )
                    })
            };
            if let Some(failure) = failure {
                self.give_up(&mut in_flight, &mut redo, anyhow::anyhow!(failure));
                let delay = backoff.next_delay();
                if !backoff.sleep(delay, self.shutdown).await {
                    return Ok(()); // shutdown: left uncommitted
                }
                continue;
            }
            if in_flight.len() < self.depth
                && !self.shutdown.is_cancelled()
                && let Some(batch) = redo.pop_front()
            {
                self.start(batch, &mut in_flight, &mut redo).await;
                continue;
            }
            // At shutdown the batches in flight are waited for while the broker can
            // acknowledge them (at most until they are overdue); with the broker away
            // they are left uncommitted, for the next owner of their partitions.
            if (in_flight.is_empty() || !self.sink.connected())
                && (!input_open || self.shutdown.is_cancelled())
            {
                break;
            }
            match self.wake(&in_flight, redo.is_empty() && input_open).await? {
                Wake::Delivery | Wake::Overdue | Wake::Shutdown => {}
                Wake::Batch(batch) => self.start(batch, &mut in_flight, &mut redo).await,
                Wake::InputClosed => input_open = false,
            }
        }
        tracing::info!(stage = self.name, "stopped");
        Ok(())
    }

    /// Waits for an ack report, the oldest batch's deadline, or (with room and
    /// nothing to redo) the next batch.
    async fn wake(
        &mut self,
        in_flight: &VecDeque<InFlight>,
        want_batch: bool,
    ) -> anyhow::Result<Wake> {
        let room = want_batch && in_flight.len() < self.depth && !self.shutdown.is_cancelled();
        let may_stop = in_flight.is_empty() || !self.sink.connected();
        let deadline = in_flight.front().and_then(|f| self.sink.deadline(f));
        Ok(tokio::select! {
            delivery = self.sink.next_delivery() => match delivery {
                Some(()) => Wake::Delivery,
                None => anyhow::bail!("mqtt event loop stopped"),
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => Wake::Overdue,
            next = self.batches.recv(), if room => match next {
                Some(batch) => Wake::Batch(batch?), // a fatal consumer error ends the role
                None => Wake::InputClosed,
            },
            _ = self.shutdown.cancelled(), if may_stop => Wake::Shutdown,
        })
    }

    async fn start(
        &mut self,
        batch: Vec<runtime::Record>,
        in_flight: &mut VecDeque<InFlight>,
        redo: &mut VecDeque<Vec<runtime::Record>>,
    ) {
        let (started, result) = self.sink.start(batch).await;
        in_flight.push_back(started);
        if let Err(err) = result {
            self.give_up(in_flight, redo, err);
        }
    }

    /// Every batch in flight goes back in front of those waiting to be redone.
    fn give_up(
        &mut self,
        in_flight: &mut VecDeque<InFlight>,
        redo: &mut VecDeque<Vec<runtime::Record>>,
        err: anyhow::Error,
    ) {
        tracing::warn!(stage = self.name, error = %format!("{err:#}"), batches = in_flight.len(),
            "batches not written; redoing them without committing");
        consume::report_not_written(self.name, &err);
        for batch in self.sink.redo(in_flight.drain(..)).into_iter().rev() {
            redo.push_front(batch);
        }
    }
}
