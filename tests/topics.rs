//! The topic contract on the real broker: `topics apply` creates, then finds nothing
//! to do, then reports drift; and the broker refuses values that break the schemas.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coexist::Config;
use coexist::topics::{Contract, Outcome, TopicSpec, apply};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        description: "test".into(),
        partitions,
        key: "phone_number_id".into(),
        cleanup_policy: "delete".into(),
        retention_hours: 24,
        schema: "none".into(),
        writers: vec!["test".into()],
        readers: vec![],
    }
}

/// A topic name no run has used, and a contract of just that topic.
fn fresh_topic(prefix: &str, partitions: i32) -> (String, Contract) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("{prefix}.{nanos}");
    let contract = Contract {
        environments: coexist::topics::contract().unwrap().environments,
        topics: vec![spec(&name, partitions)],
    };
    (name, contract)
}

#[tokio::test]
async fn apply_creates_then_matches_then_reports_drift() {
    let config = Config::load(None).unwrap();
    let (name, contract) = fresh_topic("test.contract", 2);

    let first = apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    assert_eq!(first, vec![(name.clone(), Outcome::Created)]);
    let second = apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    assert_eq!(second, vec![(name.clone(), Outcome::Matches)]);

    let drifted = Contract {
        environments: contract.environments.clone(),
        topics: vec![spec(&name, 3)],
    };
    let third = apply(&config.kafka, &drifted, &config.topics)
        .await
        .unwrap();
    match &third[..] {
        [(topic, Outcome::Drift(diffs))] => {
            assert_eq!(topic, &name);
            assert!(
                diffs.iter().any(|d| d.contains("partitions 2, contract 3")),
                "{diffs:?}"
            );
        }
        other => panic!("expected drift, got {other:?}"),
    }
}

#[tokio::test]
async fn the_broker_refuses_values_that_break_the_schema() {
    let config = Config::load(None).unwrap();
    let contract = coexist::topics::contract().unwrap();
    apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let send = |value: &'static str| {
        let producer = producer.clone();
        async move {
            let record = FutureRecord::to(events::topics::WHATSAPP_EVENTS)
                .key("schema-test")
                .payload(value);
            producer
                .send(record, Duration::from_secs(5))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        }
    };
    let refused = send(r#"{"id":"x","org":"o"}"#).await;
    assert!(
        refused.is_err(),
        "a value missing required fields was accepted"
    );
    assert!(
        send("not json").await.is_err(),
        "a non-JSON value was accepted"
    );
    let valid = r#"{"id":"schema-test","org":"o","phone_number_id":"1","received_at_ms":0,"kind":"unhandled","field":"test","raw":{}}"#;
    send(valid).await.expect("a valid event is accepted");
    // The broker now serves the topic's schema from its cache (`scripts/stack` sets
    // `--schema-registry-cache-expiry`): it must still refuse.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        send(r#"{"id":"x","org":"o"}"#).await.is_err(),
        "a value missing required fields was accepted once the schema was cached"
    );
}

/// `kafka.new_group_start` as a time: a new group reads what was produced from then
/// on (including a record produced while the group forms, on a partition that had
/// nothing newer), never what came before; a group that has committed resumes there.
#[tokio::test]
async fn a_new_group_starts_at_its_time_and_a_known_group_at_its_commit() {
    let mut config = Config::load(None).unwrap();
    let (topic, contract) = fresh_topic("test.start", 3);
    apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    let writer = Writer::new(&config, &topic);
    let send = |partition: i32, value: String| {
        let writer = writer.clone();
        async move { writer.send(partition, &value).await }
    };
    for i in 0..6 {
        send(i % 3, format!("before-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        send(0, format!("after-{i}")).await;
    }
    config.kafka.client_id = format!("test-start-{topic}");
    config.kafka.new_group_start = start.to_string();

    let consumer = config.kafka.consumer("reader", &[&topic]).unwrap();
    // Partition 1 has nothing since the start time; this lands while the group
    // forms. Partition 2 has nothing since then when the group starts (tansu then
    // answers "offset 0" to the time look-up).
    send(1, "while-joining".into()).await;
    let mut first = read_values(&consumer, 4).await;
    let mut values: Vec<&str> = first.iter().map(|(v, _, _)| v.as_str()).collect();
    values.sort();
    assert_eq!(values, ["after-0", "after-1", "after-2", "while-joining"]);
    send(2, "later".into()).await;
    first.extend(read_values(&consumer, 1).await);
    assert_eq!(first[4].0, "later");

    // Commit all but the last record of partition 0; the group resumes at it.
    let mut commit = rdkafka::TopicPartitionList::new();
    for (value, partition, offset) in &first {
        let next = if value == "after-2" {
            *offset
        } else {
            offset + 1
        };
        commit
            .add_partition_offset(&topic, *partition, rdkafka::Offset::Offset(next))
            .unwrap();
    }
    use rdkafka::consumer::Consumer;
    consumer
        .commit(&commit, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(consumer);
    send(1, "after-restart".into()).await;
    let consumer = config.kafka.consumer("reader", &[&topic]).unwrap();
    let again = read_values(&consumer, 2).await;
    let mut values: Vec<&str> = again.iter().map(|(v, _, _)| v.as_str()).collect();
    values.sort();
    assert_eq!(values, ["after-2", "after-restart"]);
}

/// The first `n` records `consumer` reads: (value, partition, offset).
async fn read_values(
    consumer: &runtime::kafka::GroupConsumer,
    n: usize,
) -> Vec<(String, i32, i64)> {
    use rdkafka::Message;
    let mut values = Vec::new();
    while values.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {values:?} arrived"))
            .unwrap();
        let value = String::from_utf8_lossy(message.payload().unwrap()).to_string();
        values.push((value, message.partition(), message.offset()));
    }
    values
}

/// `latest`: a new group reads what is produced once it has its partitions, on an
/// empty partition too, and none of the history.
#[tokio::test]
async fn a_new_group_at_latest_reads_what_comes_after_it_joined_on_every_partition() {
    use rdkafka::consumer::Consumer;
    let mut config = Config::load(None).unwrap();
    let (topic, contract) = fresh_topic("test.latest", 2);
    apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    let writer = Writer::new(&config, &topic);
    let send = |partition: i32, value: &'static str| {
        let writer = writer.clone();
        async move { writer.send(partition, value).await }
    };
    send(0, "history").await; // partition 1 stays empty until the group is in
    config.kafka.client_id = format!("test-latest-{topic}");
    config.kafka.new_group_start = "latest".into();
    let consumer = config.kafka.consumer("reader", &[&topic]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Polling drives the join; nothing is there to read yet.
    while consumer.assignment().map_or(0, |a| a.count()) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never assigned");
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
    send(1, "new-on-empty").await;
    send(0, "new").await;
    let read = read_values(&consumer, 2).await;
    let mut values: Vec<&str> = read.iter().map(|(v, _, _)| v.as_str()).collect();
    values.sort();
    assert_eq!(values, ["new", "new-on-empty"]);
}

/// Produces to chosen partitions of one topic.
#[derive(Clone)]
struct Writer {
    producer: FutureProducer,
    topic: String,
}

impl Writer {
    fn new(config: &Config, topic: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("message.timeout.ms", "5000")
            .create()
            .unwrap();
        Self {
            producer,
            topic: topic.to_string(),
        }
    }

    async fn send(&self, partition: i32, value: &str) {
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key("k")
            .payload(value);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// `consume::Batches` (the loops that `select!`: router, notifier, MQTT sink): while
/// the loop is busy, what arrives gathers into one batch (at most `max_records`),
/// instead of a queue of small batches each formed in `max_wait_ms` whose records
/// wait behind one another; and `recv` is cancel-safe, losing nothing when another
/// branch wins.
#[tokio::test]
async fn batches_gather_what_came_while_the_loop_was_busy_and_lose_nothing_to_cancels() {
    use runtime::consume::{Batches, LoopConfig};
    let mut config = Config::load(None).unwrap();
    let (topic, contract) = fresh_topic("test.batches", 1);
    apply(&config.kafka, &contract, &config.topics)
        .await
        .unwrap();
    config.kafka.client_id = format!("test-batches-{topic}");
    config.kafka.new_group_start = "earliest".into();
    let writer = Writer::new(&config, &topic);
    writer.send(0, "first").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let loop_config = LoopConfig {
        max_records: 16,
        max_wait_ms: 5,
        ..LoopConfig::default()
    };
    let consumer = config.kafka.consumer("reader", &[&topic]).unwrap();
    let mut batches = Batches::spawn(consumer, loop_config, shutdown.clone());
    let first = tokio::time::timeout(Duration::from_secs(30), batches.recv())
        .await
        .expect("the first record in 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 1);

    // 40 records, 10 ms apart, while the loop does something else.
    for i in 0..40 {
        writer.send(0, &format!("r{i}")).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gathered = batches.recv().await.unwrap().unwrap();
    assert_eq!(
        gathered.len(),
        16,
        "not one full batch of what came meanwhile"
    );
    // The rest, with `recv` cancelled again and again by a competing branch.
    let mut values: Vec<String> = gathered
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while values.len() < 40 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            batch = batches.recv() => {
                let batch = batch.unwrap().unwrap();
                assert!(batch.len() <= 16, "a batch of {}", batch.len());
                values.extend(batch.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()));
            }
            _ = tokio::time::sleep(Duration::from_micros(500)) => {}
        }
    }
    let expected: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    assert_eq!(values, expected, "lost, repeated or out of order");
    shutdown.cancel();
    assert!(batches.recv().await.is_none(), "a batch after shutdown");
}
