//! The router's Kafka edge. Unlike the sinks it is driven by three sources, so it has
//! its own loop: batches of `whatsapp.events` and `conversations.commands` (its
//! consumer group: the partitions it owns), the whole of `agents.presence` (read as a
//! table, no group), and a ticker for offline grace periods.
//!
//! - At start the router folds its own outputs (`conversations.assignments`) back in,
//!   so a restarted router has the state it had; inputs it re-reads after a crash are
//!   recognised and emit nothing new.
//! - Outputs are produced, and acknowledged, before the batch's offsets are committed.
//!   If producing fails, the same outputs are retried (the state already holds them);
//!   at shutdown they are abandoned uncommitted and the next run redoes the batch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use events::inbox::{AssignmentEvent, ConversationCommand, PresenceEvent};
use events::{WhatsAppEvent, codec, topics};
use runtime::consume::{self, DeadLetters, LoopConfig};
use runtime::{KafkaConfig, Publisher, Record};
use tokio_util::sync::CancellationToken;

use super::{Input, Router, RouterConfig};
use crate::table;

const ROLE: &str = "process-router";

/// `[processors.router]` plus the loop's own setting.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RouterStageConfig {
    #[serde(flatten)]
    pub router: RouterConfig,
    /// How often offline grace periods are checked (ms); 0 means 1000.
    pub tick_ms: u64,
}

/// Runs the router until `shutdown`.
pub async fn run(
    kafka: &KafkaConfig,
    config: RouterStageConfig,
    batch: LoopConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.router.validate()?;
    let publisher = kafka.publisher(ROLE).await?;
    let dead_letters = DeadLetters::new(publisher.clone(), "process.router");
    let mut router = Router::new(config.router.clone());
    let replayed = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            table::read_whole(&kafka, topics::CONVERSATION_ASSIGNMENTS, "router-rebuild")
        })
        .await??
        .0
    };
    let count = replayed.len();
    for value in replayed {
        if let Ok(assignment) = codec::decode::<AssignmentEvent>(&value) {
            router.handle(Input::Replayed(assignment), now_ms());
        }
    }
    tracing::info!(
        outputs = count,
        "router rebuilt from conversations.assignments"
    );

    // Who is online, before routing anything: the presence table up to now, then live.
    let (presence_table, ends) = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            table::read_whole(&kafka, topics::AGENTS_PRESENCE, "router-presence")
        })
        .await??
    };
    let mut startup_outputs = Vec::new();
    tracing::info!(records = presence_table.len(), ?ends, "presence table read");
    for value in presence_table {
        if let Ok(event) = codec::decode::<PresenceEvent>(&value) {
            startup_outputs.extend(router.handle(Input::Presence(event), now_ms()));
        }
    }
    // Work a crash left queued is routed now that presence is known.
    startup_outputs.extend(router.handle(Input::Tick, now_ms()));
    if !publish(&publisher, &startup_outputs, &shutdown).await {
        return Ok(());
    }
    let (mut presence, presence_task) =
        table::presence_feed(kafka, &ends, "router-presence", shutdown.clone())?;
    let consumer = kafka.consumer(
        ROLE,
        &[topics::WHATSAPP_EVENTS, topics::CONVERSATION_COMMANDS],
    )?;
    let mut ticker = tokio::time::interval(Duration::from_millis(if config.tick_ms == 0 {
        1000
    } else {
        config.tick_ms
    }));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = presence.recv() => {
                let outputs = router.handle(Input::Presence(event), now_ms());
                if !publish(&publisher, &outputs, &shutdown).await { break }
            }
            _ = ticker.tick() => {
                let outputs = router.handle(Input::Tick, now_ms());
                if !publish(&publisher, &outputs, &shutdown).await { break }
            }
            batch_result = consume::next_batch(&consumer, &batch, &shutdown) => {
                let Some(records) = batch_result? else { break };
                let mut outputs = Vec::new();
                for record in &records {
                    match decode(record) {
                        Ok(input) => outputs.extend(router.handle(input, now_ms())),
                        Err(reason) => dead_letters.send(record, &reason).await?,
                    }
                }
                if !publish(&publisher, &outputs, &shutdown).await { break }
                consume::commit(&consumer, &records)?;
            }
        }
    }
    presence_task.abort();
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

fn decode(record: &Record) -> Result<Input, String> {
    match record.topic.as_str() {
        topics::WHATSAPP_EVENTS => codec::decode::<WhatsAppEvent>(&record.value)
            .map(|e| Input::Event(Box::new(e)))
            .map_err(|e| format!("not a whatsapp event: {e}")),
        topics::CONVERSATION_COMMANDS => codec::decode::<ConversationCommand>(&record.value)
            .map(Input::Command)
            .map_err(|e| format!("not a conversation command: {e}")),
        other => Err(format!("the router does not read {other}")),
    }
}

/// Produces `outputs` (keyed by business number) until acknowledged; false only when
/// shutdown came first.
async fn publish(
    publisher: &Publisher,
    outputs: &[AssignmentEvent],
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        let sends = outputs.iter().map(|a| {
            publisher.send_json(
                topics::CONVERSATION_ASSIGNMENTS,
                &a.phone_number_id,
                a,
                vec![],
            )
        });
        match futures::future::try_join_all(sends).await {
            Ok(_) => return true,
            Err(err) => tracing::warn!(%err, "assignments not produced; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
