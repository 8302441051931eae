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

#[tokio::test]
async fn apply_creates_then_matches_then_reports_drift() {
    let config = Config::load(None).unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("test.contract.{nanos}");
    let contract = Contract {
        topics: vec![spec(&name, 2)],
    };

    let first = apply(&config.kafka, &contract, 1).await.unwrap();
    assert_eq!(first, vec![(name.clone(), Outcome::Created)]);
    let second = apply(&config.kafka, &contract, 1).await.unwrap();
    assert_eq!(second, vec![(name.clone(), Outcome::Matches)]);

    let drifted = Contract {
        topics: vec![spec(&name, 3)],
    };
    let third = apply(&config.kafka, &drifted, 1).await.unwrap();
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
    apply(&config.kafka, &contract, 1).await.unwrap();
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
}
