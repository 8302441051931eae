//! `[kafka]`: how to reach the brokers (and the Schema Registry), and how every
//! Kafka client of the process is configured from it.

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};

use super::{GroupConsumer, KafkaError, Publisher, RebalanceLog};

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
    /// How long a producer gathers records before it sends them (librdkafka's
    /// `linger.ms`). One producer serves every role of a process; at 5 ms and
    /// 1,000 webhooks/s its broker thread alone took a quarter of a core in
    /// `coexist all` (many small produce requests), and the broker answered them
    /// late. At 30 the same bench ran at half the CPU, e2e p50 43–55 ms and p99
    /// 92–217 instead of 86–101 and 404–499; a lone message pays ~15 ms more at
    /// p50 (README, Benchmarks).
    pub linger_ms: u32,
    /// Longest a consumer on the real-time path (the roles in `realtime_roles`)
    /// waits at the broker for data (librdkafka's `fetch.wait.max.ms`). Kafka
    /// answers a fetch as soon as there is data, so this only paces idle polling
    /// there. tansu 0.6 answers once it finds data too, but looks for it only at 0,
    /// 1/2, 3/4, 7/8... of the wait: a record waits for the next look (a quarter of
    /// the wait on average, half at most), and at rest each consumer costs the
    /// broker about ten looks per wait, each reading every partition it owns
    /// (`coexist bench e2e` reports both).
    pub fetch_wait_max_ms: u32,
    /// The same for every other consumer: the store sinks, analytics, status, the
    /// notifier, the Graph API senders and the table followers (directory,
    /// presence). None of them is on the path a message takes to an agent's
    /// device, so they may wait longer for a fetch: fewer looks at rest, and on
    /// tansu a record reaches MongoDB/ClickHouse at most half this wait later.
    pub background_fetch_wait_max_ms: u32,
    /// The roles on the real-time path, whose consumers use `fetch_wait_max_ms`:
    /// the router (a new conversation is assigned before the inbox shows it) and
    /// the MQTT sink (what devices see). Add `sink-whatsapp` for faster outbound
    /// sends on tansu, at the cost of one more consumer looking often at rest.
    pub realtime_roles: Vec<String>,
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
            linger_ms: 30,
            fetch_wait_max_ms: 500,
            background_fetch_wait_max_ms: 500,
            realtime_roles: vec!["process-router".into(), "sink-mqtt".into()],
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

    /// How long `role`'s group consumer waits at the broker for data: the short
    /// wait on the real-time path, the long one elsewhere (see `realtime_roles`).
    /// A role run as several instances (`sink-mqtt` twice) is still one role.
    pub fn fetch_wait_ms(&self, role: &str) -> u32 {
        if self.realtime_roles.iter().any(|r| r == role) {
            self.fetch_wait_max_ms
        } else {
            self.background_fetch_wait_max_ms
        }
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
            .set("fetch.wait.max.ms", self.fetch_wait_ms(role).to_string())
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
            .create_with_context(RebalanceLog::new(role, self.client(), start))?;
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
        Publisher::new(config, &self.schema_registry_url)
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

    /// This build of librdkafka speaks TLS and SCRAM (the `ssl` feature): a client
    /// for `sasl_ssl` with SCRAM is created (it connects lazily, so no broker is
    /// needed to see that librdkafka accepts the settings).
    #[test]
    fn tls_and_scram_clients_can_be_created() {
        for (protocol, mechanism) in [
            ("ssl", ""),
            ("sasl_ssl", "SCRAM-SHA-512"),
            ("sasl_ssl", "PLAIN"),
        ] {
            let config = KafkaConfig {
                security_protocol: protocol.into(),
                sasl_mechanism: mechanism.into(),
                sasl_username: "coexist".into(),
                sasl_password: crate::Secret::new("pw"),
                ..KafkaConfig::default()
            };
            let created: Result<rdkafka::producer::BaseProducer, _> = config.base("test").create();
            assert!(
                created.is_ok(),
                "{protocol} {mechanism}: {:?}",
                created.err()
            );
        }
    }

    #[test]
    fn only_the_real_time_path_polls_fast() {
        let config = KafkaConfig {
            fetch_wait_max_ms: 20,
            background_fetch_wait_max_ms: 500,
            ..KafkaConfig::default()
        };
        assert_eq!(config.fetch_wait_ms("sink-mqtt"), 20);
        assert_eq!(config.fetch_wait_ms("process-router"), 20);
        for role in [
            "sink-mongo",
            "sink-clickhouse",
            "process-status",
            "process-notifier",
            "sink-expo",
            "sink-whatsapp",
            "sink-media",
        ] {
            assert_eq!(config.fetch_wait_ms(role), 500, "{role}");
        }
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
}
