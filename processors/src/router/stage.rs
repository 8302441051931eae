//! The router's Kafka edge. Unlike the sinks it is driven by four sources, so it has
//! its own loop: batches of `whatsapp.events` and `conversations.commands` (its
//! consumer group: the partitions it owns), the whole of `agents.presence` and of
//! `directory.changes` (each read as a table, no group, apart from the message
//! traffic so an admin's change never waits behind a backlog), and a ticker for
//! offline grace periods.
//!
//! - **State is per partition.** `conversations.assignments` is keyed like the inputs
//!   (by business number, same partition count), so the outputs for input partition
//!   `p` are exactly partition `p` of `conversations.assignments`. When the group
//!   gives this instance a partition (at start, or when another instance dies or
//!   joins) it folds that partition of its outputs back in before handling any of
//!   its inputs; when a partition is taken away, its conversations are forgotten, so
//!   ticks here never act on another instance's conversations. Inputs re-read after
//!   a crash are recognised from the rebuilt state and emit nothing new.
//! - Outputs are produced, and acknowledged, before the batch's offsets are committed.
//!   If producing fails, the same outputs are retried (the state already holds them);
//!   at shutdown they are abandoned uncommitted and the next run redoes the batch.
//! - Capacity is counted over the conversations this instance owns. With one
//!   instance (or an org whose numbers share a partition) that is every conversation
//!   of the org; several instances each enforce it over their own numbers.

use events::clock::now_ms;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use events::inbox::{AssignmentEvent, ConversationCommand};
use events::{WhatsAppEvent, codec, topics};
use rdkafka::consumer::Consumer;
use runtime::consume;
use runtime::kafka::GroupConsumer;
use runtime::observe;
use runtime::{KafkaConfig, Publisher, Record, RoleContext};
use tokio_util::sync::CancellationToken;

use super::{Input, Router, RouterConfig};
use runtime::table;

/// `[processors.router]` plus the loop's own setting.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RouterStageConfig {
    #[serde(flatten)]
    pub router: RouterConfig,
    /// How often offline grace periods are checked (ms); 0 means 1000.
    pub tick_ms: u64,
}

/// What the router reads in its group (presence and the directory are read as
/// tables besides).
pub const TOPICS: &[&str] = &[topics::WHATSAPP_EVENTS, topics::CONVERSATION_COMMANDS];

/// Runs the router until shutdown.
pub async fn run(ctx: &RoleContext, config: &RouterStageConfig) -> anyhow::Result<()> {
    config.router.validate()?;
    let (kafka, shutdown) = (&ctx.kafka, ctx.shutdown.clone());
    let publisher = ctx.publisher().await?;
    let dead_letters = ctx.dead_letters(&publisher);
    let mut router = Router::new(config.router.clone());

    // Who the agents are, before routing anything: the directory up to now, then live.
    let (directory, mut directory_live, directory_task) =
        runtime::directory::changes(kafka, Vec::new(), "router-directory", shutdown.clone())
            .await?;
    for (change, stamp) in directory {
        // Nothing is owned yet, so this only records agents and policies.
        router.handle(Input::Directory(Box::new(change), stamp), now_ms());
    }
    // Who is online, before routing anything: the presence table now, then live.
    let Some((presence, presence_task)) = ctx.presence().await? else {
        return Ok(());
    };
    tracing::info!(devices = presence.initial.len(), "presence table read");
    for event in presence.initial {
        // No conversation is owned yet, so this only records who is online.
        router.handle(Input::Presence(event), now_ms());
    }
    let mut presence = presence.live;
    let mut batches = consume::Batches::spawn(
        kafka.consumer(&ctx.role, TOPICS)?,
        ctx.batch.clone(),
        shutdown.clone(),
    );
    let mut owned = Ownership::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(if config.tick_ms == 0 {
        1000
    } else {
        config.tick_ms
    }));
    // After a stall (a rebuild), one tick, not a burst of them.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = presence.recv() => {
                let outputs = router.handle(Input::Presence(event), now_ms());
                if !publish(&publisher, &outputs, &shutdown).await { break }
            }
            Some((change, stamp)) = directory_live.recv() => {
                let outputs = router.handle(Input::Directory(Box::new(change), stamp), now_ms());
                if !publish(&publisher, &outputs, &shutdown).await { break }
            }
            _ = ticker.tick() => {
                let Some(mut outputs) = owned.sync(batches.consumer(), kafka, &mut router, &shutdown).await else { break };
                outputs.extend(router.handle(Input::Tick, now_ms()));
                if !publish(&publisher, &outputs, &shutdown).await { break }
                // Answered command ids are bounded by `command_ttl_ms`, resolved
                // conversations by `resolved_retention_ms`; devices by the agents
                // there are.
                let metrics = &observe::global().metrics;
                metrics.cache_size(&ctx.role, "answered_commands", router.remembered_commands());
                metrics.cache_size(&ctx.role, "presence_devices", router.tracked_devices());
                metrics.cache_size(&ctx.role, "conversations", router.remembered_conversations());
            }
            batch_result = batches.recv() => {
                let Some(records) = batch_result.transpose()? else { break };
                let started = tokio::time::Instant::now();
                // The group may have moved partitions while the batch was fetched:
                // rebuild what was gained first, and leave records of partitions no
                // longer ours to their new owner (uncommitted here).
                let Some(mut outputs) = owned.sync(batches.consumer(), kafka, &mut router, &shutdown).await else { break };
                let records: Vec<Record> = records
                    .into_iter()
                    .filter(|r| owned.partitions.contains(&r.partition))
                    .collect();
                for record in &records {
                    match decode(record) {
                        Ok(input) => {
                            owned.note(&input, record.partition);
                            outputs.extend(router.handle(input, now_ms()));
                        }
                        Err(reason) => {
                            if !dead_letters.send_until_ok(record, &reason, &shutdown).await { break 'run }
                        }
                    }
                }
                if !publish(&publisher, &outputs, &shutdown).await { break }
                observe::global().metrics.batch_done(&ctx.role, outputs.len(), started.elapsed());
                if !records.is_empty() {
                    consume::commit(batches.consumer(), &records)?;
                }
            }
        }
    }
    presence_task.abort();
    directory_task.abort();
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

/// Which input partitions this instance owns, and which partition each business
/// number's conversations live in (learned from inputs and rebuilt outputs).
#[derive(Default)]
struct Ownership {
    generation: u64,
    partitions: BTreeSet<i32>,
    number_partition: HashMap<String, i32>,
}

impl Ownership {
    /// Follows the group's assignment: forgets partitions taken away, rebuilds the
    /// ones given from `conversations.assignments`, and returns what routing the
    /// rebuilt queue produced (work a crashed owner left queued). `None` only when
    /// shutdown came while the rebuild waited for the broker.
    async fn sync(
        &mut self,
        consumer: &GroupConsumer,
        kafka: &KafkaConfig,
        router: &mut Router,
        shutdown: &CancellationToken,
    ) -> Option<Vec<AssignmentEvent>> {
        let (generation, assigned) = consumer.context().owned();
        if generation == self.generation {
            return Some(Vec::new());
        }
        self.generation = generation;
        let now: BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        let lost: BTreeSet<i32> = self.partitions.difference(&now).copied().collect();
        let gained: BTreeSet<i32> = now.difference(&self.partitions).copied().collect();
        self.partitions = now;
        if !lost.is_empty() {
            let numbers = &self.number_partition;
            let dropped = router
                .forget_numbers(|number| numbers.get(number).is_some_and(|p| lost.contains(p)));
            self.number_partition.retain(|_, p| !lost.contains(p));
            tracing::info!(
                ?lost,
                conversations = dropped,
                "router partitions taken away"
            );
        }
        if gained.is_empty() {
            return Some(Vec::new());
        }
        let (values, _) = table::read_until_ok(
            kafka,
            topics::CONVERSATION_ASSIGNMENTS,
            Some(gained.clone()),
            "router-rebuild",
            shutdown,
        )
        .await?;
        let count = values.len();
        for (partition, value) in values {
            if let Ok(assignment) = codec::decode::<AssignmentEvent>(&value) {
                self.number_partition
                    .insert(assignment.phone_number_id.clone(), partition);
                router.handle(Input::Replayed(assignment), now_ms());
            }
        }
        tracing::info!(
            ?gained,
            outputs = count,
            "router partitions rebuilt from conversations.assignments"
        );
        Some(router.handle(Input::Tick, now_ms()))
    }

    /// Remembers the partition of an input's business number.
    fn note(&mut self, input: &Input, partition: i32) {
        let number = match input {
            Input::Event(event) => &event.phone_number_id,
            Input::Command(command) => &command.phone_number_id,
            _ => return,
        };
        if !self.number_partition.contains_key(number) {
            self.number_partition.insert(number.clone(), partition);
        }
    }
}

fn decode(record: &Record) -> Result<Input, String> {
    match record.topic.as_str() {
        topics::WHATSAPP_EVENTS => record
            .decode::<WhatsAppEvent>("a whatsapp event")
            .map(|e| Input::Event(Box::new(e))),
        topics::CONVERSATION_COMMANDS => record
            .decode::<ConversationCommand>("a conversation command")
            .map(Input::Command),
        _ => Err(record.unread_topic("the router")),
    }
}

/// Produces `outputs` (keyed by business number) until acknowledged; false only when
/// shutdown came first.
async fn publish(
    publisher: &Publisher,
    outputs: &[AssignmentEvent],
    shutdown: &CancellationToken,
) -> bool {
    if outputs.is_empty() {
        return true;
    }
    publisher
        .send_all_until_ok(
            topics::CONVERSATION_ASSIGNMENTS,
            outputs.iter().map(|a| (a.phone_number_id.as_str(), a)),
            shutdown,
        )
        .await
}
