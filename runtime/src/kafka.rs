//! The Kafka edges every role shares: an idempotent producer that encodes values (in
//! the Confluent wire format when a Schema Registry is configured), consumers that
//! never auto-commit, and the admin client for `coexist topics apply`.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schema_registry_converter::async_impl::easy_json::EasyJsonEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::observe;

/// `[kafka]`: how to reach the brokers and the Schema Registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Prefix of client ids and consumer group ids (`{prefix}-{role}`).
    pub client_id: String,
    /// Group session timeout. Joining a group takes about half of it (STACK.md), so it
    /// is short locally; raise it on a real cluster.
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// How long a produce may take before it counts as failed.
    pub message_timeout_ms: u32,
    /// Producer batching delay.
    pub linger_ms: u32,
    /// Longest a consumer's fetch waits at the broker for data (librdkafka's
    /// `fetch.wait.max.ms`, default 500). Kafka answers a fetch as soon as there is
    /// data, so this only bounds idle polling there; tansu answers when it runs out,
    /// so it bounds every record's latency (`coexist bench e2e`).
    pub fetch_wait_max_ms: u32,
    /// Confluent Schema Registry URL; empty means plain JSON values.
    pub schema_registry_url: String,
    /// librdkafka debug contexts (e.g. `fetch,cgrp`), logged under target `librdkafka`.
    pub librdkafka_debug: String,
    /// Where a consumer group with no committed offsets starts: `earliest` (a new
    /// deployment reads everything there), `latest` (only what arrives from now on:
    /// `coexist bench e2e` runs each time in fresh groups, and a backlog of earlier
    /// runs must not stand in front of its measurements), or a Unix time in
    /// milliseconds (a new sink that should hold the last week, or a test pipeline
    /// that must see everything from its own start and nothing before: unlike
    /// `latest`, nothing produced while the group forms is skipped). Partitions that
    /// have a committed offset resume there whatever this says. Stages about the
    /// present (the notifier) start at `latest`.
    pub new_group_start: String,
    /// How often consumers report statistics, from which `coexist_consumer_lag` is
    /// read (librdkafka already knows watermarks and commits: no extra requests).
    /// 0 turns the lag metric off.
    pub statistics_interval_ms: u32,
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or
    /// `sasl_ssl`. `ssl`, `sasl_ssl` and SCRAM need rdkafka built with its `ssl`
    /// feature (not in this build); SASL PLAIN over `sasl_plaintext` works as is.
    pub security_protocol: String,
    /// `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`); empty: none.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: crate::Secret,
    /// `ssl.ca.location`: the CA bundle that signs the brokers' certificates.
    pub ssl_ca_location: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "coexist".into(),
            session_timeout_ms: 6000,
            heartbeat_interval_ms: 1000,
            message_timeout_ms: 10_000,
            linger_ms: 5,
            fetch_wait_max_ms: 500,
            schema_registry_url: String::new(),
            librdkafka_debug: String::new(),
            new_group_start: "earliest".into(),
            statistics_interval_ms: 5000,
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: crate::Secret::default(),
            ssl_ca_location: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("cannot encode value for {topic}: {reason}")]
    Encode { topic: String, reason: String },
    #[error("kafka metadata probe did not finish: {0}")]
    Probe(String),
    #[error(
        "kafka.new_group_start is {0:?}: expected earliest, latest or a Unix time in milliseconds"
    )]
    GroupStart(String),
}

/// Where a consumer group with no committed offset starts (`kafka.new_group_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    Earliest,
    Latest,
    /// The first record produced at or after this Unix time (ms).
    At(i64),
}

impl std::str::FromStr for GroupStart {
    type Err = KafkaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "earliest" | "beginning" | "smallest" => Ok(Self::Earliest),
            "latest" | "end" | "largest" => Ok(Self::Latest),
            other => other
                .parse::<i64>()
                .ok()
                .filter(|ms| *ms >= 0)
                .map(Self::At)
                .ok_or_else(|| KafkaError::GroupStart(s.to_string())),
        }
    }
}

/// What is known of a partition without a committed offset when its group starts
/// at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshPartition {
    /// The low and high watermarks, read before anything else.
    pub low: i64,
    pub high: i64,
    /// The timestamp of the record at `high - 1` (none if the partition is empty).
    pub newest_ms: Option<i64>,
    /// The broker's answer to "first offset at or after the time", when asked.
    pub found: Option<i64>,
}

/// Where such a partition starts reading. If its newest record is older than the
/// time, nothing is at or after it: start at the high watermark read before the
/// look-up, so a record produced since is still read (the broker's own answer for
/// "none" is -1 on Kafka but 0 on tansu, which would replay everything). Otherwise
/// the broker's answer, or the low watermark if it has none (loses nothing).
pub fn start_offset(at_ms: i64, p: FreshPartition) -> i64 {
    match p.newest_ms {
        Some(newest) if newest >= at_ms => p
            .found
            .filter(|o| (p.low..p.high).contains(o))
            .unwrap_or(p.low),
        _ => p.high.max(p.low),
    }
}

impl KafkaConfig {
    /// A client config with the brokers and the connection's security settings:
    /// every Kafka client starts from this.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", &self.security_protocol);
        if !self.sasl_mechanism.is_empty() {
            config
                .set("sasl.mechanism", &self.sasl_mechanism)
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", self.sasl_password.expose());
        }
        if !self.ssl_ca_location.is_empty() {
            config.set("ssl.ca.location", &self.ssl_ca_location);
        }
        config
    }

    fn base(&self, role: &str) -> ClientConfig {
        let mut config = self.client();
        config.set("client.id", format!("{}-{role}", self.client_id));
        if !self.librdkafka_debug.is_empty() {
            config
                .set("debug", &self.librdkafka_debug)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        config
    }

    /// The consumer group of a role: `{client_id}-{role}`.
    pub fn group_id(&self, role: &str) -> String {
        format!("{}-{role}", self.client_id)
    }

    /// A consumer in `role`'s group that commits only when told to; a new group
    /// starts where `new_group_start` says (by default the earliest record).
    pub fn consumer(&self, role: &str, topics: &[&str]) -> Result<GroupConsumer, KafkaError> {
        self.consumer_from(role, topics, &self.new_group_start)
    }

    /// Like [`Self::consumer`], with where a new group starts (as in
    /// `new_group_start`): `latest` for a stage about the present (the notifier must
    /// not push history).
    pub fn consumer_from(
        &self,
        role: &str,
        topics: &[&str],
        start: &str,
    ) -> Result<GroupConsumer, KafkaError> {
        let start: GroupStart = start.parse()?;
        // For a start time, librdkafka's own reset only applies if positioning at the
        // time fails; then the earliest record loses nothing.
        let reset = match start {
            GroupStart::Latest => "latest",
            GroupStart::Earliest | GroupStart::At(_) => "earliest",
        };
        let consumer: GroupConsumer = self
            .base(role)
            .set("group.id", self.group_id(role))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            // We never use transactions (effectively-once comes from deterministic ids
            // and idempotent writes), so read_committed buys nothing; and tansu's last
            // stable offset can lag its high watermark, which stalls such consumers.
            .set("isolation.level", "read_uncommitted")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            // librdkafka's default assignor list starts with range, which gives
            // partition p of every subscribed topic to the same member: stages that
            // read co-partitioned topics (the router: events and commands, both keyed
            // by business number) rely on it. (Setting it explicitly made tansu list
            // the group without members.)
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                self.heartbeat_interval_ms.to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            )
            .create_with_context(RebalanceLog {
                role: role.to_string(),
                owned: Mutex::new((0, Vec::new())),
                brokers: self.brokers.clone(),
                start,
            })?;
        consumer.subscribe(topics)?;
        Ok(consumer)
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
        Ok(self.base("admin").create()?)
    }

    /// The idempotent producer (`acks=all`) every role writes with.
    pub async fn publisher(&self, role: &str) -> Result<Publisher, KafkaError> {
        let mut config = self.base(role);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string());
        let producer = Arc::new(RwLock::new(config.create()?));
        let registry = (!self.schema_registry_url.is_empty()).then(|| Registry {
            encoder: EasyJsonEncoder::new(SrSettings::new(self.schema_registry_url.clone())),
            schemas: Arc::new(events::schema::topic_value_schemas().into_iter().collect()),
        });
        Ok(Publisher {
            producer,
            config,
            registry,
        })
    }
}

/// The context of readers that wait for end-of-partition (rebuilds, replay):
/// reaching the end is what they wait for, not an error to log.
pub struct EndIsNews;

impl ClientContext for EndIsNews {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError as E, RDKafkaErrorCode as Code};
        if !matches!(error, E::PartitionEOF(_) | E::Global(Code::PartitionEOF)) {
            tracing::warn!(%error, %reason, "kafka client error while reading to the end");
        }
    }
}

impl ConsumerContext for EndIsNews {}

/// The consumer every stage uses.
pub type GroupConsumer = StreamConsumer<RebalanceLog>;

/// Logs which partitions a role gains and loses, so "why is nothing consumed" has an
/// answer in the log, and keeps the current assignment for stages whose state is per
/// partition (see [`RebalanceLog::owned`]). It also feeds the process's observer: the
/// role's `{role}.consumer` readiness check (ready once the group has assigned it
/// its partitions, possibly none), and the consumer lag from librdkafka's statistics.
pub struct RebalanceLog {
    role: String,
    /// (generation, assigned `(topic, partition)`s); the generation counts rebalances.
    owned: Mutex<(u64, Vec<(String, i32)>)>,
    /// Where assigned partitions without a committed offset start.
    start: GroupStart,
    /// To read the newest records' timestamps when positioning at that time.
    brokers: String,
}

impl RebalanceLog {
    /// The role this consumer reads for (the metrics' `role` label).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The readiness check this consumer flips.
    pub fn readiness_check(role: &str) -> String {
        format!("{role}.consumer")
    }

    /// The partitions assigned now, and a number that changes whenever they may have.
    pub fn owned(&self) -> (u64, Vec<(String, i32)>) {
        self.owned
            .lock()
            .map(|o| o.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn set_owned(&self, partitions: Vec<(String, i32)>) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.0 += 1;
        owned.1 = partitions;
    }
}

impl ClientContext for RebalanceLog {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = Vec::new();
        for (topic, stats) in &statistics.topics {
            for p in stats.partitions.values() {
                // -1 is librdkafka's internal "unassigned" partition; `desired`
                // marks the ones assigned to this consumer.
                if p.partition < 0 || !p.desired {
                    continue;
                }
                if let Some(lag) = observe::partition_lag(
                    p.hi_offset,
                    [p.committed_offset, p.app_offset, p.next_offset],
                ) {
                    lags.push((topic.clone(), p.partition, lag));
                }
            }
        }
        observe::global()
            .metrics
            .set_consumer_lag(&self.role, &lags);
    }
}

/// How long each broker lookup made while positioning new partitions may take.
const POSITION_TIMEOUT: Duration = Duration::from_secs(10);

impl RebalanceLog {
    /// Sets the start offset of each partition in `assignment` that has no committed
    /// offset: for `latest`, its high watermark now; for a time, the first record at
    /// or after it (see [`start_offset`]). `earliest` is left to librdkafka.
    ///
    /// `latest` is positioned here rather than by librdkafka's lazy reset so the
    /// start is fixed at assignment and logged. Either way, `latest` skips what a
    /// partition received while a member that never committed there was down: use
    /// `earliest` or a time for anything that must not lose records.
    fn position_fresh(
        &self,
        consumer: &BaseConsumer<Self>,
        assignment: &mut rdkafka::TopicPartitionList,
    ) -> Result<usize, rdkafka::error::KafkaError> {
        use rdkafka::Offset;
        let at_ms = match self.start {
            GroupStart::Earliest => return Ok(0),
            GroupStart::Latest => None,
            GroupStart::At(ms) => Some(ms),
        };
        let committed = consumer.committed_offsets(assignment.clone(), POSITION_TIMEOUT)?;
        let mut fresh: HashMap<(String, i32), FreshPartition> = HashMap::new();
        for e in committed.elements() {
            if matches!(e.offset(), Offset::Offset(_)) {
                continue;
            }
            let (low, high) =
                consumer.fetch_watermarks(e.topic(), e.partition(), POSITION_TIMEOUT)?;
            let partition = FreshPartition {
                low,
                high,
                newest_ms: None,
                found: None,
            };
            fresh.insert((e.topic().to_owned(), e.partition()), partition);
        }
        let Some(at_ms) = at_ms else {
            for ((topic, partition), p) in &fresh {
                assignment.set_partition_offset(topic, *partition, Offset::Offset(p.high))?;
            }
            return Ok(fresh.len());
        };
        if fresh.is_empty() {
            return Ok(0);
        }
        for (key, newest) in self.newest_timestamps(&fresh)? {
            if let Some(p) = fresh.get_mut(&key) {
                p.newest_ms = Some(newest);
            }
        }
        let mut lookup = rdkafka::TopicPartitionList::new();
        for ((topic, partition), p) in &fresh {
            if p.newest_ms.is_some_and(|newest| newest >= at_ms) {
                lookup.add_partition_offset(topic, *partition, Offset::Offset(at_ms))?;
            }
        }
        if lookup.count() > 0 {
            for e in consumer
                .offsets_for_times(lookup, POSITION_TIMEOUT)?
                .elements()
            {
                if let (Some(p), Offset::Offset(o)) = (
                    fresh.get_mut(&(e.topic().to_owned(), e.partition())),
                    e.offset(),
                ) {
                    p.found = Some(o);
                }
            }
        }
        for ((topic, partition), p) in &fresh {
            let start = start_offset(at_ms, *p);
            assignment.set_partition_offset(topic, *partition, Offset::Offset(start))?;
        }
        Ok(fresh.len())
    }

    /// The timestamp of the newest record of each non-empty partition, read with a
    /// throwaway consumer outside the group.
    fn newest_timestamps(
        &self,
        partitions: &HashMap<(String, i32), FreshPartition>,
    ) -> Result<HashMap<(String, i32), i64>, rdkafka::error::KafkaError> {
        use rdkafka::Message;
        let mut newest_offsets = rdkafka::TopicPartitionList::new();
        for ((topic, partition), p) in partitions {
            if p.high > p.low {
                let last = rdkafka::Offset::Offset(p.high - 1);
                newest_offsets.add_partition_offset(topic, *partition, last)?;
            }
        }
        let mut found = HashMap::new();
        if newest_offsets.count() == 0 {
            return Ok(found);
        }
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}-position", self.role))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?;
        reader.assign(&newest_offsets)?;
        let deadline = std::time::Instant::now() + POSITION_TIMEOUT;
        while found.len() < newest_offsets.count() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(rdkafka::error::KafkaError::OffsetFetch(
                    rdkafka::error::RDKafkaErrorCode::RequestTimedOut,
                ));
            }
            match reader.poll(left) {
                Some(Ok(m)) => {
                    let at = m.timestamp().to_millis().unwrap_or(i64::MAX);
                    found.insert((m.topic().to_owned(), m.partition()), at);
                }
                Some(Err(err)) => return Err(err),
                None => {}
            }
        }
        Ok(found)
    }
}

impl ConsumerContext for RebalanceLog {
    /// The default rebalance (eager protocol: assign or unassign everything), with
    /// partitions new to the group positioned first (see [`Self::position_fresh`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        assignment: &mut rdkafka::TopicPartitionList,
    ) {
        use rdkafka::error::{KafkaError as E, RDKafkaErrorCode};
        use rdkafka::types::RDKafkaRespErr as Code;
        match err {
            Code::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.position_fresh(consumer, assignment) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(role = %self.role, partitions = n, start = ?self.start, "partitions new to the group positioned")
                    }
                    Err(err) => {
                        tracing::warn!(role = %self.role, %err, start = ?self.start, "cannot position partitions new to the group: librdkafka's reset applies")
                    }
                }
                if let Err(err) = consumer.assign(assignment) {
                    tracing::error!(role = %self.role, %err, "assign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(assignment));
            }
            Code::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(err) = consumer.unassign() {
                    tracing::error!(role = %self.role, %err, "unassign failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(assignment));
            }
            other => {
                if let Err(err) = consumer.unassign() {
                    tracing::error!(role = %self.role, %err, "unassign failed");
                }
                let code: RDKafkaErrorCode = other.into();
                self.post_rebalance(consumer, &Rebalance::Error(E::Rebalance(code)));
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let readiness = &observe::global().readiness;
        let check = Self::readiness_check(&self.role);
        match rebalance {
            Rebalance::Assign(list) => {
                readiness.set_ready(&check);
                self.set_owned(
                    list.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition()))
                        .collect(),
                );
                let parts: Vec<String> = list
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(role = %self.role, partitions = %parts.join(","), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                readiness.set_not_ready(&check, "rebalancing");
                self.set_owned(Vec::new());
                tracing::info!(role = %self.role, count = list.count(), "partitions revoked")
            }
            Rebalance::Error(err) => {
                readiness.set_not_ready(&check, format!("rebalance error: {err}"));
                tracing::warn!(role = %self.role, %err, "rebalance error")
            }
        }
    }
}

#[derive(Clone)]
struct Registry {
    encoder: EasyJsonEncoder,
    schemas: Arc<HashMap<&'static str, serde_json::Value>>,
}

/// Produces values and waits for the broker's acknowledgement.
///
/// An idempotent producer whose sends timed out (a broker that froze) bumps its
/// epoch, and a broker may answer that with a fatal error (tansu: `ProducerFenced`):
/// from then on that producer refuses everything. The publisher then replaces it
/// with a new one, so the next attempt of the caller's retry goes through; a role
/// never stays unable to produce after a broker hiccup.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<FutureProducer>>,
    /// How to create the producer again.
    config: ClientConfig,
    registry: Option<Registry>,
}

/// A record to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub value: Vec<u8>,
    pub headers: Vec<(&'a str, String)>,
}

impl Publisher {
    /// Serializes `value` as JSON and produces it.
    pub async fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        headers: Vec<(&str, String)>,
    ) -> Result<(), KafkaError> {
        let encode_error = |e: serde_json::Error| KafkaError::Encode {
            topic: topic.into(),
            reason: e.to_string(),
        };
        let bytes = if self.registry.is_some() {
            let json = serde_json::to_value(value).map_err(encode_error)?;
            self.encode(topic, &json).await?
        } else {
            serde_json::to_vec(value).map_err(encode_error)? // the common path: one pass
        };
        self.send(Outgoing {
            topic,
            key,
            value: bytes,
            headers,
        })
        .await
    }

    /// Produces every `(key, value)` to `topic` as JSON, retrying them all with the
    /// one policy until every one is acknowledged (a broker that is down or frozen
    /// is waited for, never a reason to end the role). False only when `shutdown`
    /// came first; a retry may produce some of them twice, which the readers' ids
    /// absorb.
    pub async fn send_all_until_ok<'a, T: Serialize + 'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (&'a str, &'a T)>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let records: Vec<(&str, &T)> = records.into_iter().collect();
        crate::RetryPolicy::default()
            .until_ok(&format!("producing to {topic}"), shutdown, || {
                let sends = records
                    .iter()
                    .map(|(key, value)| self.send_json(topic, key, *value, vec![]));
                futures::future::try_join_all(sends)
            })
            .await
            .is_some()
    }

    /// JSON bytes as they go on the wire: framed with the registry's schema id when a
    /// registry is configured and the topic has a schema.
    pub async fn encode(
        &self,
        topic: &str,
        json: &serde_json::Value,
    ) -> Result<Vec<u8>, KafkaError> {
        if let Some(registry) = &self.registry
            && let Some(schema) = registry.schemas.get(topic)
        {
            let supplied = SuppliedSchema::new(None, SchemaType::Json, schema.to_string());
            let strategy =
                SubjectNameStrategy::TopicNameStrategyWithSchema(topic.into(), false, supplied);
            return registry
                .encoder
                .encode(json, strategy)
                .await
                .map_err(|e| KafkaError::Encode {
                    topic: topic.into(),
                    reason: e.to_string(),
                });
        }
        serde_json::to_vec(json).map_err(|e| KafkaError::Encode {
            topic: topic.into(),
            reason: e.to_string(),
        })
    }

    /// Produces raw bytes and waits until the broker has them (`acks=all`).
    pub async fn send(&self, record: Outgoing<'_>) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let future = FutureRecord::to(record.topic)
            .key(record.key)
            .payload(&record.value)
            .headers(headers);
        let producer = self.producer();
        let sent = producer.send(future, Duration::from_secs(5)).await;
        sent.map(|_| ()).map_err(|(err, _)| {
            self.replace_if_fatal(&producer, &err);
            KafkaError::Client(err)
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces `failed` with a new producer if it is in a fatal state or was fenced
    /// (and no other send has replaced it already).
    fn replace_if_fatal(&self, failed: &FutureProducer, err: &rdkafka::error::KafkaError) {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let fenced = matches!(
            err.rdkafka_error_code(),
            Some(Code::ProducerFenced | Code::InvalidProducerEpoch | Code::Fatal)
        );
        let Some((code, reason)) = failed
            .client()
            .fatal_error()
            .or_else(|| fenced.then(|| (Code::ProducerFenced, err.to_string())))
        else {
            return;
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "producer in a fatal state; replaced by a new one");
                *current = fresh;
            }
            Err(err) => {
                tracing::error!(?code, %reason, %err, "producer in a fatal state and cannot be replaced yet")
            }
        }
    }

    /// Whether the brokers answer a metadata request within `timeout` (ingest's
    /// readiness: it can store nothing without them).
    pub async fn reachable(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(KafkaError::Client)
        })
        .await
        .unwrap_or_else(|join| Err(KafkaError::Probe(join.to_string())))
    }

    /// Waits for everything in flight (used at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer().flush(timeout) {
            tracing::warn!(%err, "producer flush at shutdown did not complete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_settings_reach_librdkafka() {
        let plain = KafkaConfig::default().client();
        assert_eq!(plain.get("security.protocol"), Some("plaintext"));
        assert_eq!(plain.get("sasl.mechanism"), None);
        let config = KafkaConfig {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: "coexist".into(),
            sasl_password: crate::Secret::new("pw"),
            ssl_ca_location: "/etc/ssl/kafka-ca.pem".into(),
            ..KafkaConfig::default()
        };
        let client = config.base("ingest");
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("coexist"));
        assert_eq!(client.get("sasl.password"), Some("pw"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/ssl/kafka-ca.pem"));
        assert_eq!(client.get("client.id"), Some("coexist-ingest"));
    }

    #[test]
    fn a_group_starts_at_either_end_or_at_a_time() {
        assert_eq!(
            "earliest".parse::<GroupStart>().unwrap(),
            GroupStart::Earliest
        );
        assert_eq!("latest".parse::<GroupStart>().unwrap(), GroupStart::Latest);
        assert_eq!(
            "1764316800000".parse::<GroupStart>().unwrap(),
            GroupStart::At(1_764_316_800_000)
        );
        for bad in ["", "yesterday", "-5", "1.5"] {
            let err = bad.parse::<GroupStart>().unwrap_err().to_string();
            assert!(err.contains("new_group_start"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_partition_with_nothing_since_the_time_starts_at_its_end_as_it_was() {
        let p = |newest_ms, found| FreshPartition {
            low: 10,
            high: 100,
            newest_ms,
            found,
        };
        // tansu answers 0 (Kafka -1) when no record is that new: not believed.
        assert_eq!(start_offset(1_000, p(Some(999), Some(0))), 100);
        assert_eq!(start_offset(1_000, p(Some(999), None)), 100);
        assert_eq!(start_offset(1_000, p(Some(1_000), Some(42))), 42);
        // An answer outside the partition is replaced by its start: nothing is lost.
        assert_eq!(start_offset(1_000, p(Some(5_000), Some(0))), 10);
        assert_eq!(start_offset(1_000, p(Some(5_000), None)), 10);
        let empty = FreshPartition {
            low: 7,
            high: 7,
            newest_ms: None,
            found: None,
        };
        assert_eq!(start_offset(1_000, empty), 7);
    }
}
