//! The media sink against the real broker, moto's S3 and the Graph API simulator:
//! an inbound image's bytes land in S3 under `{org}/{sha256}`, equal to what the
//! simulator serves, with its MIME type and one `media.stored` record; a media id
//! Meta does not know is dead-lettered with the reason.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coexist::Config;
use coexist::roles::SinkName;
use events::delivery::MediaStored;
use events::event::{MediaRef, MessageEvent};
use events::{WhatsAppEvent, topics};
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{free_port, unique};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "sim-media-token";

fn image_event(org: &str, number: &str, wamid: &str, media_id: &str) -> WhatsAppEvent {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    MessageEvent::builder(org, number, "16505551234", wamid)
        .sent_at(1_750_000_000)
        .received_at_ms(now_ms)
        .message_type("image")
        .media(MediaRef {
            id: Some(media_id.to_string()),
            mime_type: Some("image/jpeg".into()),
            sha256: None,
            filename: None,
        })
        .raw(json!({}))
        .event()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_image_is_copied_to_s3_byte_for_byte() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    // The simulator.
    let mut sim_config = Config::load(None).unwrap();
    sim_config.simulate.graph.access_tokens = vec![runtime::Secret::new(TOKEN)];
    sim_config.simulate.graph.callbacks = false;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let app = coexist::simulate::graph::router(&sim_config);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The sink, for this test's number only.
    let id = unique();
    let (org, number) = (format!("media-{id}"), format!("7{id}"));
    let mut config = Config::load(None).unwrap();
    config.kafka.client_id = format!("test-media-{id}");
    config.kafka.new_group_start = support::now_ms().to_string();
    config.graph.base_url = sim_url;
    config.graph.only_listed_numbers = true;
    config.graph.numbers = vec![sinks::graph::GraphNumber {
        phone_number_id: number.clone(),
        access_token: runtime::Secret::new(TOKEN),
        messages_per_second: 0,
    }];
    config.sinks.batch.max_wait_ms = 5;
    coexist::topics::apply(
        &config.kafka,
        &coexist::topics::contract().unwrap(),
        &config.topics,
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (config, stop) = (config.clone(), shutdown.clone());
        async move { coexist::roles::sink(&config, SinkName::Media, stop).await }
    });

    let publisher = config.kafka.publisher("media-test").await.unwrap();
    let media_id = format!("{id}001");
    let wamid = format!("wamid.img.{id}");
    let event = image_event(&org, &number, &wamid, &media_id);
    // Twice: a redelivered webhook must rewrite the same object.
    for _ in 0..2 {
        publisher
            .send_json(topics::WHATSAPP_EVENTS, &number, &event, vec![])
            .await
            .unwrap();
    }
    let missing_wamid = format!("wamid.gone.{id}");
    let missing = image_event(&org, &number, &missing_wamid, &format!("missing-{id}"));
    publisher
        .send_json(topics::WHATSAPP_EVENTS, &number, &missing, vec![])
        .await
        .unwrap();

    let stored = support::read_records(
        &config.kafka.brokers,
        topics::MEDIA_STORED,
        &number,
        &wamid,
        2,
    )
    .await;
    let records: Vec<MediaStored> = stored
        .iter()
        .map(|(v, _)| serde_json::from_str(v).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "one record per delivery: {records:?}");
    assert_eq!(
        records[0], records[1],
        "a redelivery republishes the same record"
    );
    let (expected, mime) = coexist::simulate::graph::synthetic_media(&media_id);
    let record = &records[0];
    assert_eq!(
        record.key,
        format!("{org}/{}", hex::encode(Sha256::digest(&expected)))
    );
    assert_eq!(record.mime_type, mime);
    assert_eq!(record.bytes, expected.len() as u64);
    assert_eq!(record.media_id, media_id);

    let s3 = config.s3.client();
    let object = s3
        .get_object()
        .bucket(&config.s3.bucket)
        .key(&record.key)
        .send()
        .await
        .unwrap();
    assert_eq!(object.content_type(), Some("image/jpeg"));
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(
        bytes.to_vec(),
        expected,
        "S3 holds exactly the simulator's bytes"
    );

    // The unknown media id: dead-lettered with Meta's reason, nothing stored.
    let dead = support::read_records(
        &config.kafka.brokers,
        topics::DEADLETTER,
        &number,
        &missing_wamid,
        1,
    )
    .await;
    let (_, headers) = dead.last().unwrap();
    let reason = headers
        .iter()
        .find(|(k, _)| k == runtime::consume::dlq_headers::ERROR)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(reason.contains("does not exist"), "{reason}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
