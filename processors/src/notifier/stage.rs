//! The notifier's Kafka edge: `conversations.assignments` and `whatsapp.events` in
//! (its group), `agents.presence` as a table, `notifications.push` out (keyed by
//! agent). At start it folds the assignments and presence so far into its state
//! with pushes suppressed: a restart must not push old news again.

use events::clock::now_ms;
use std::time::Duration;

use events::inbox::AssignmentEvent;
use events::{WhatsAppEvent, codec, topics};
use runtime::consume;
use runtime::observe;
use runtime::{Record, RoleContext};

use super::{Notifier, NotifierConfig, NotifierInput};
use runtime::table;

/// What the notifier reads in its group (presence is read as a table besides).
pub const TOPICS: &[&str] = &[topics::CONVERSATION_ASSIGNMENTS, topics::WHATSAPP_EVENTS];

/// Runs the notifier until shutdown.
pub async fn run(ctx: &RoleContext, config: &NotifierConfig) -> anyhow::Result<()> {
    let (kafka, shutdown) = (&ctx.kafka, ctx.shutdown.clone());
    let publisher = ctx.publisher().await?;
    let dead_letters = ctx.dead_letters(&publisher);
    let starts_at = config.new_group_starts_at.clone();
    let mut notifier = Notifier::new(config.clone());
    let read = |topic, purpose| table::read_until_ok(kafka, topic, None, purpose, &shutdown);
    let Some((assignments, _)) = read(topics::CONVERSATION_ASSIGNMENTS, "notifier-rebuild").await
    else {
        return Ok(());
    };
    let Some((presence, presence_task)) = ctx.presence().await? else {
        return Ok(());
    };
    let now = now_ms();
    for event in &presence.initial {
        notifier.handle(NotifierInput::Presence(event), now);
    }
    for (_, value) in &assignments {
        if let Ok(assignment) = codec::decode::<AssignmentEvent>(value) {
            notifier.remember(&assignment);
        }
    }
    tracing::info!(
        assignments = assignments.len(),
        presence = presence.initial.len(),
        "notifier rebuilt"
    );

    let mut presence = presence.live;
    // A new notifier starts at the present: pushes about history are noise.
    let mut batches = consume::Batches::spawn(
        kafka.consumer_from(&ctx.role, TOPICS, &starts_at)?,
        ctx.batch.clone(),
        shutdown.clone(),
    );
    'run: loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = presence.recv() => {
                // An offline that arrives after messages that came later releases
                // the pushes withheld for them (nothing to commit: the table is
                // followed, not consumed in the group).
                let released = notifier.handle(NotifierInput::Presence(&event), now_ms());
                let keyed = released.iter().map(|p| (p.agent_id.as_str(), p));
                if !publisher.send_all_until_ok(topics::NOTIFICATIONS_PUSH, keyed, &shutdown).await { break }
            }
            batch_result = batches.recv() => {
                let Some(records) = batch_result.transpose()? else { break };
                let started = tokio::time::Instant::now();
                let mut pushes = Vec::new();
                for record in &records {
                    match push_for(&mut notifier, record) {
                        Ok(push) => pushes.extend(push),
                        Err(reason) => {
                            if !dead_letters.send_until_ok(record, &reason, &shutdown).await { break 'run }
                        }
                    }
                }
                // Pushes are produced until acknowledged (a broker hiccup is waited
                // for); at shutdown the batch is left uncommitted and redone by the
                // next run, whose collapse window then drops what already went out.
                let keyed = pushes.iter().map(|p| (p.agent_id.as_str(), p));
                if !publisher.send_all_until_ok(topics::NOTIFICATIONS_PUSH, keyed, &shutdown).await { break }
                observe::global().metrics.batch_done(&ctx.role, pushes.len(), started.elapsed());
                consume::commit(batches.consumer(), &records)?;
            }
        }
    }
    presence_task.abort();
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

fn push_for(
    notifier: &mut Notifier,
    record: &Record,
) -> Result<Vec<events::delivery::PushNotification>, String> {
    let now = now_ms();
    match record.topic.as_str() {
        topics::CONVERSATION_ASSIGNMENTS => record
            .decode::<AssignmentEvent>("an assignment")
            .map(|a| notifier.handle(NotifierInput::Assignment(&a), now)),
        topics::WHATSAPP_EVENTS => record
            .decode::<WhatsAppEvent>("a whatsapp event")
            .map(|e| notifier.handle(NotifierInput::Event(&e), now)),
        _ => Err(record.unread_topic("the notifier")),
    }
}
