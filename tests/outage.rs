//! A store that goes down pauses its sink; nothing is committed past unwritten work,
//! and once the store is back the counts equal what was sent, with no duplicates.
//! The MQTT broker going down pauses the MQTT sink the same way: its batches in
//! flight (several at once) are redone, and every message reaches the device.
//!
//! This stops and restarts the shared stack's ClickHouse, MongoDB and Mosquitto, so
//! it lives in a test binary of its own (cargo runs test binaries one after another)
//! and has a single test.

mod support;

use std::process::Command;
use std::time::Duration;

use mongodb::bson::doc;
use support::{APP_SECRET, Pipeline, first_wamid};

/// `scripts/stack <verb> <server>`, with this process's environment (stack dir and
/// ports), as the CI script started it.
fn stack(verb: &str, server: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let status = Command::new("bash")
        .args([script, verb, server])
        .status()
        .expect("run scripts/stack");
    assert!(status.success(), "scripts/stack {verb} {server} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinks_pause_through_store_outages_and_end_with_exact_counts() {
    // A device with a persistent session, so it misses nothing while Mosquitto is down.
    // The MQTT sink's ack timeout (1 s) is shorter than the broker's outage (2 s):
    // a broker that is away is waited for, not retried against, so its batches in
    // flight are sent again by the client once, not redone into copies.
    let p = Pipeline::start_durable("outage", |config, _| {
        config.sinks.mqtt.ack_timeout_ms = 1000;
    })
    .await;
    const SENT: usize = 160;
    let bodies: Vec<String> = (0..SENT)
        .map(|i| p.fixture("msg_text", &format!("-outage-{i}")))
        .collect();
    let wamids: Vec<String> = bodies.iter().map(|b| first_wamid(b)).collect();
    // Every role reading (its group formed) before anything goes down.
    p.barrier("before-outages").await;
    // A steady stream (20 webhooks/s) while each store goes down and comes back.
    let stream = {
        let (http, url) = (p.http.clone(), p.webhook_url.clone());
        tokio::spawn(async move {
            for body in bodies {
                let signature = ingest::signature::sign(body.as_bytes(), APP_SECRET);
                let status = coexist::simulate::post_webhook(&http, &url, signature, body)
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                assert_eq!(status, 200, "ingest refused a webhook");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack("stop", "mqtt");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack("start", "mqtt");
    stack("stop", "clickhouse");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack("start", "clickhouse");
    stack("stop", "mongo");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack("start", "mongo");
    stream.await.expect("the stream of webhooks");

    p.barrier("after-outages").await;
    for wamid in &wamids {
        assert_eq!(
            p.clickhouse_rows(Some(wamid)).await,
            1,
            "clickhouse rows of {wamid}"
        );
        assert_eq!(
            p.mongo_count("messages", doc! { "id": wamid }).await,
            1,
            "mongo documents of {wamid}"
        );
    }
    // Every message plus the two markers; physically, not collapsed by FINAL.
    assert_eq!(p.clickhouse_rows(None).await, SENT as u64 + 2);
    assert_eq!(p.mongo_count("messages", doc! {}).await, SENT as u64 + 2);
    // QoS 1 through a broker's restart: at least once, so a copy is allowed (a
    // publish the broker took but whose PUBACK it never sent is made again);
    // missing one is not, nor copies of most: redoing the batches at each ack
    // timeout while the broker was away made about two of every message.
    let missing: Vec<&String> = wamids
        .iter()
        .filter(|w| p.mqtt.count_containing(w) == 0)
        .collect();
    assert!(missing.is_empty(), "never reached the device: {missing:?}");
    let copies = p.mqtt.messages().len() - (SENT + 2);
    assert!(copies <= SENT / 4, "{copies} copies of {SENT} messages");
    p.stop().await;
}
