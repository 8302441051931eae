//! What the process hands every component's `run`: the shared connections'
//! settings, the role's name (its consumer group, client id and readiness checks)
//! and the shutdown signal. Each sink and processor wires itself from this plus its
//! own config section (as a Vector component builds itself from its config): its
//! input topics, readiness checks and state rebuilds live in its own folder, and
//! `src/roles.rs` only dispatches.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consume::{self, DeadLetters, LoopConfig, Stage};
use crate::directory::{self, DirectoryHandle};
use crate::kafka::{KafkaConfig, Publisher, RebalanceLog};
use crate::mqtt::MqttConnection;
use crate::observe;
use crate::presence::{PresenceFeed, PresenceHub};
use crate::retry::RetryPolicy;
use crate::s3::S3Config;
use crate::seal::{Sealer, SealingConfig};

/// One role's view of the process's configuration.
#[derive(Debug, Clone)]
pub struct RoleContext {
    /// `sink-mongo`, `process-router`: the consumer group and client id suffix, the
    /// metrics' role label and the prefix of the role's readiness checks.
    pub role: String,
    pub kafka: KafkaConfig,
    /// The loop's batching and retry settings (`[sinks.batch]`).
    pub batch: LoopConfig,
    pub mqtt: MqttConnection,
    pub s3: S3Config,
    pub sealing: SealingConfig,
    pub shutdown: CancellationToken,
    /// What the roles of one process share (`coexist all`); a role process has
    /// nothing shared and makes its own.
    pub shared: Shared,
}

/// What the roles of one process share instead of each making its own: in
/// `coexist all`, one producer (each librdkafka client is threads, connections and
/// metadata requests of its own; eleven buy nothing over one), one follower of
/// the directory (one reader polling `directory.changes` instead of four) and one
/// of the presence table (instead of the router's and the notifier's).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub publisher: Option<Publisher>,
    pub directory: Option<DirectoryHandle>,
    pub presence: Option<PresenceHub>,
}

impl Shared {
    /// One producer, one directory follower and one presence follower for every
    /// role of this process (until `shutdown`); returns once the directory and the
    /// presence table have been read whole.
    pub async fn for_process(
        kafka: &KafkaConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let publisher = kafka.publisher("all").await?;
        let (directory, _follower) =
            directory::follow(kafka, Vec::new(), "all-directory", shutdown.clone()).await?;
        let presence = PresenceHub::start(kafka, "all-presence", shutdown)
            .await?
            .map(|(hub, _follower)| hub);
        Ok(Self {
            publisher: Some(publisher),
            directory: Some(directory),
            presence,
        })
    }
}

impl RoleContext {
    /// A consumer role is not ready until its group assigns it partitions (the
    /// consumer context flips the check then); until then it is "starting", which
    /// also covers rebuilding state before the consumer exists.
    pub fn starting(&self) {
        observe::global()
            .readiness
            .set_not_ready(&RebalanceLog::readiness_check(&self.role), "starting");
    }

    /// The role's producer: the process's one if it shares one.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        match &self.shared.publisher {
            Some(shared) => Ok(shared.clone()),
            None => Ok(self.kafka.publisher(&self.role).await?),
        }
    }

    /// The role's dead letters: stage header `sink.mongo` for role `sink-mongo`.
    pub fn dead_letters(&self, publisher: &Publisher) -> DeadLetters {
        DeadLetters::new(publisher.clone(), self.role.replace('-', "."))
    }

    /// The sealer that opens business-number credentials.
    pub fn sealer(&self) -> anyhow::Result<Sealer> {
        Ok(Sealer::from_config(&self.sealing)?)
    }

    /// The directory, read whole and then followed live until shutdown (by a reader
    /// named `{role}-directory`, or the process's one if it shares one).
    pub async fn follow_directory(&self) -> anyhow::Result<(DirectoryHandle, JoinHandle<()>)> {
        if let Some(shared) = &self.shared.directory {
            return Ok((shared.clone(), tokio::spawn(async {})));
        }
        directory::follow(
            &self.kafka,
            Vec::new(),
            &format!("{}-directory", self.role),
            self.shutdown.clone(),
        )
        .await
    }

    /// The presence table as it is now, then every change (the process's hub if it
    /// shares one, else a reader named `{role}-presence` of the role's own). `None`
    /// only at shutdown.
    pub async fn presence(&self) -> anyhow::Result<Option<(PresenceFeed, JoinHandle<()>)>> {
        if let Some(hub) = &self.shared.presence {
            return Ok(Some((hub.subscribe(), tokio::spawn(async {}))));
        }
        let purpose = format!("{}-presence", self.role);
        let started = PresenceHub::start(&self.kafka, &purpose, self.shutdown.clone()).await?;
        Ok(started.map(|(hub, task)| (hub.subscribe(), task)))
    }

    /// Retries `connect` until it succeeds or shutdown (a store that is down at
    /// start delays its role, it does not crash the process). Meanwhile readiness
    /// check `{role}.{what}` says why the role is not ready.
    pub async fn until_ready<T, F, Fut>(&self, what: &str, mut connect: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let readiness = &observe::global().readiness;
        let check = format!("{}.{what}", self.role);
        readiness.set_not_ready(&check, "connecting");
        let value = RetryPolicy::default()
            .until_ok(&check, &self.shutdown, || {
                let attempt = connect();
                let check = &check;
                async move {
                    attempt.await.inspect_err(|err| {
                        readiness.set_not_ready(check, format!("{err:#}"));
                    })
                }
            })
            .await?;
        readiness.set_ready(&check);
        Some(value)
    }

    /// Runs `stage` over `topics` in the role's consumer group until shutdown
    /// ([`consume::run`]), then flushes `publisher`.
    pub async fn consume<S: Stage>(
        &self,
        publisher: &Publisher,
        topics: &[&str],
        stage: S,
        batching: LoopConfig,
    ) -> anyhow::Result<()> {
        let consumer = self.kafka.consumer(&self.role, topics)?;
        let result = consume::run(
            &self.role,
            consumer,
            stage,
            self.dead_letters(publisher),
            batching,
            self.shutdown.clone(),
        )
        .await;
        publisher.flush(Duration::from_secs(5));
        result
    }
}
