//! The consumers' contexts: the group consumer's [`RebalanceLog`] (assignments,
//! readiness, lag, where partitions new to the group start) and [`EndIsNews`] for
//! readers that read to the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};

use super::GroupStart;
use crate::observe;

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
    /// To read the newest records' timestamps when positioning at that time: the
    /// brokers and the connection's security settings.
    reader: ClientConfig,
}

impl RebalanceLog {
    pub(crate) fn new(role: &str, reader: ClientConfig, start: GroupStart) -> Self {
        Self {
            role: role.to_string(),
            owned: Mutex::new((0, Vec::new())),
            reader,
            start,
        }
    }

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
        let reader: BaseConsumer = self
            .reader
            .clone()
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

#[cfg(test)]
mod tests {
    use super::*;

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
