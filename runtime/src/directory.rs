//! Following the directory (`directory.changes`) as a table: every role that needs
//! orgs, agents, numbers, policies or push tokens reads the topic whole at start and
//! then follows it, folding each change with the one pure [`Directory::apply`].
//!
//! The reader is its own group-less consumer, apart from the role's message
//! traffic, so a backlog of events never delays an admin's change (DESIGN.md: the
//! control plane never waits behind the data plane). Static config only seeds it:
//! the seed is stamped before every change on Kafka, so the directory wins.

use std::sync::Arc;

use events::directory::{Directory, DirectoryChange, Stamp};
use events::topics;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::KafkaConfig;
use crate::table::{self, TableRecord};

/// A change with where it sits in the topic.
pub type StampedChange = (DirectoryChange, Stamp);

fn stamped(record: TableRecord<DirectoryChange>) -> StampedChange {
    let stamp = Stamp::new(record.value.at_ms, record.partition, record.offset);
    (record.value, stamp)
}

/// The seed, stamped before anything on Kafka.
pub fn stamp_seed(seed: Vec<DirectoryChange>) -> Vec<StampedChange> {
    seed.into_iter()
        .enumerate()
        .map(|(i, change)| (change, Stamp::seed(i)))
        .collect()
}

/// The directory's changes: everything on the topic now (after the seed), then a
/// live feed of what comes next. For a role that reacts to each change (the router
/// requeues a deactivated agent's conversations); others use [`follow`].
pub async fn changes(
    kafka: &KafkaConfig,
    seed: Vec<DirectoryChange>,
    purpose: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Vec<StampedChange>,
    mpsc::Receiver<StampedChange>,
    JoinHandle<()>,
)> {
    let (records, ends) = {
        let (kafka, purpose) = (kafka.clone(), purpose.to_string());
        tokio::task::spawn_blocking(move || {
            table::read_records(&kafka, topics::DIRECTORY_CHANGES, None, &purpose)
        })
        .await??
    };
    anyhow::ensure!(
        !ends.is_empty(),
        "topic {} has no partitions: run `coexist topics apply` first",
        topics::DIRECTORY_CHANGES
    );
    let mut initial = stamp_seed(seed);
    let mut skipped = 0;
    for record in records {
        match events::codec::decode::<DirectoryChange>(&record.value) {
            Ok(value) => initial.push(stamped(TableRecord {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                value,
            })),
            Err(_) => skipped += 1,
        }
    }
    tracing::info!(changes = initial.len(), skipped, purpose, "directory read");
    let (mut live, task) = table::follow::<DirectoryChange>(
        kafka,
        topics::DIRECTORY_CHANGES,
        &ends,
        purpose,
        shutdown,
    )?;
    let (tx, rx) = mpsc::channel(1024);
    let forward = tokio::spawn(async move {
        while let Some(record) = live.recv().await {
            if tx.send(stamped(record)).await.is_err() {
                break;
            }
        }
        task.abort();
    });
    Ok((initial, rx, forward))
}

/// The directory as it is now, kept current in the background: read whole at start
/// (seed first), then every change as it comes. Readers borrow the latest snapshot.
#[derive(Debug, Clone)]
pub struct DirectoryHandle {
    current: watch::Receiver<Arc<Directory>>,
}

impl DirectoryHandle {
    /// A fixed directory (tests, and tools that do not follow Kafka).
    pub fn fixed(directory: Directory) -> Self {
        let (tx, current) = watch::channel(Arc::new(directory));
        // Keep the sender alive so `changed()` never reports a closed channel.
        std::mem::forget(tx);
        Self { current }
    }

    /// The latest snapshot.
    pub fn get(&self) -> Arc<Directory> {
        self.current.borrow().clone()
    }

    /// Waits for the next change (for caches derived from the directory).
    pub async fn changed(&mut self) -> bool {
        self.current.changed().await.is_ok()
    }
}

/// Starts following the directory; returns once the topic has been read whole.
pub async fn follow(
    kafka: &KafkaConfig,
    seed: Vec<DirectoryChange>,
    purpose: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<(DirectoryHandle, JoinHandle<()>)> {
    let (initial, mut live, feed) = changes(kafka, seed, purpose, shutdown).await?;
    let mut directory = Directory::new();
    for (change, stamp) in &initial {
        directory.apply(change, *stamp);
    }
    let (tx, current) = watch::channel(Arc::new(directory.clone()));
    let task = tokio::spawn(async move {
        while let Some((change, stamp)) = live.recv().await {
            directory.apply(&change, stamp);
            // Fold whatever else is already waiting before publishing a snapshot.
            while let Ok((change, stamp)) = live.try_recv() {
                directory.apply(&change, stamp);
            }
            tracing::info!(change = change.id, org = change.org, "directory changed");
            if tx.send(Arc::new(directory.clone())).is_err() {
                break;
            }
        }
        feed.abort();
    });
    Ok((DirectoryHandle { current }, task))
}
