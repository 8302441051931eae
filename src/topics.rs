//! `topics.yaml`, the contract with data teams, and `coexist topics apply`, which
//! makes a cluster match it: creates what is missing and reports drift. The contract
//! is compiled into the binary, so a deployed `coexist` applies the topics it speaks.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use runtime::KafkaConfig;
use serde::{Deserialize, Serialize};

/// The contract, as checked in.
pub const CONTRACT: &str = include_str!("../topics.yaml");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// How topics are placed on each kind of cluster (`coexist topics apply --env`).
    pub environments: std::collections::BTreeMap<String, Placement>,
    pub topics: Vec<TopicSpec>,
}

/// Replication of every topic on one kind of cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub replication_factor: i32,
    /// Replicas that must have a write before `acks=all` is answered: with 3 and 2,
    /// one broker can be down without losing an acknowledged record or refusing writes.
    pub min_insync_replicas: i32,
}

impl Contract {
    /// The placement of `[topics] env`, with `replication_factor` overridden when the
    /// config sets one (> 0).
    pub fn placement(&self, topics: &crate::config::TopicsConfig) -> anyhow::Result<Placement> {
        let mut placement = *self.environments.get(&topics.env).with_context(|| {
            format!(
                "topics.yaml has no environment {:?} (it has {:?})",
                topics.env,
                self.environments.keys().collect::<Vec<_>>()
            )
        })?;
        if topics.replication_factor > 0 {
            placement.replication_factor = topics.replication_factor;
        }
        Ok(placement)
    }
}

/// One topic of the contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub description: String,
    pub partitions: i32,
    /// What the record key is (e.g. `phone_number_id`).
    pub key: String,
    /// `delete` or `compact`.
    pub cleanup_policy: String,
    /// Retention in hours; -1 keeps records forever.
    pub retention_hours: i64,
    /// The value's JSON Schema under `schemas/`, or `none`.
    pub schema: String,
    pub writers: Vec<String>,
    pub readers: Vec<String>,
}

impl TopicSpec {
    fn configs(&self, placement: &Placement) -> Vec<(&'static str, String)> {
        let retention_ms = if self.retention_hours < 0 {
            -1
        } else {
            self.retention_hours * 3_600_000
        };
        vec![
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("retention.ms", retention_ms.to_string()),
            (
                "min.insync.replicas",
                placement.min_insync_replicas.to_string(),
            ),
        ]
    }
}

pub fn contract() -> anyhow::Result<Contract> {
    serde_yaml_ng::from_str(CONTRACT).context("topics.yaml does not parse")
}

/// What `apply` did or found for one topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created,
    Matches,
    Drift(Vec<String>),
}

/// Creates missing topics of `contract` and reports drift of existing ones, placed
/// as `topics` (`[topics] env`) says. Idempotent.
pub async fn apply(
    kafka: &KafkaConfig,
    contract: &Contract,
    topics: &crate::config::TopicsConfig,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let placement = contract.placement(topics)?;
    let replication_factor = placement.replication_factor;
    let admin = kafka.admin()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {}", kafka.brokers))?;
    let existing: HashMap<String, i32> = metadata
        .topics()
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));

    let missing: Vec<&TopicSpec> = contract
        .topics
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    let configs: Vec<Vec<(&str, String)>> = missing.iter().map(|t| t.configs(&placement)).collect();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .zip(&configs)
        .map(|(spec, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    if !new_topics.is_empty() {
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => outcomes.push((name, Outcome::Created)),
                // Created by someone else since we looked: fine.
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    outcomes.push((name, Outcome::Matches))
                }
                Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
            }
        }
    }
    for spec in contract
        .topics
        .iter()
        .filter(|t| existing.contains_key(&t.name))
    {
        let mut drift = Vec::new();
        let partitions = existing[&spec.name];
        if partitions != spec.partitions {
            drift.push(format!(
                "partitions {partitions}, contract {}",
                spec.partitions
            ));
        }
        drift.extend(config_drift(&admin, spec, &placement, &options).await);
        let outcome = if drift.is_empty() {
            Outcome::Matches
        } else {
            Outcome::Drift(drift)
        };
        outcomes.push((spec.name.clone(), outcome));
    }
    Ok(outcomes)
}

/// Differences between a topic's configs on the broker and the contract.
async fn config_drift(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    spec: &TopicSpec,
    placement: &Placement,
    options: &AdminOptions,
) -> Vec<String> {
    let described = match admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], options)
        .await
    {
        Ok(mut results) => match results.pop() {
            Some(Ok(resource)) => resource,
            Some(Err(err)) => return vec![format!("configs not checked: {err}")],
            None => return vec!["configs not checked: empty answer".into()],
        },
        Err(err) => return vec![format!("configs not checked: {err}")],
    };
    spec.configs(placement)
        .into_iter()
        .filter_map(|(key, want)| {
            let have = described.get(key).and_then(|e| e.value.clone());
            match have {
                Some(have) if have == want => None,
                // A broker that does not report a key is not drift we can see.
                None => None,
                Some(have) => Some(format!("{key} {have}, contract {want}")),
            }
        })
        .collect()
}
