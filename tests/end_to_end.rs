//! The walking skeleton, end to end on the real stack: a signed webhook goes through
//! ingest and Kafka and lands exactly once in MongoDB, ClickHouse and on MQTT.

mod support;

use mongodb::bson::doc;
use support::{APP_SECRET, Pipeline, first_wamid};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_signed_text_webhook_lands_once_in_every_store() {
    let p = Pipeline::start("e2e").await;
    let body = p.fixture("msg_text", "-one");
    let wamid = first_wamid(&body);

    assert_eq!(p.post(&body, APP_SECRET).await, 200);
    p.barrier("after-first").await;
    assert_eq!(p.mongo_count("messages", doc! { "id": &wamid }).await, 1);
    assert_eq!(p.clickhouse_rows(Some(&wamid)).await, 1);
    assert_eq!(p.mqtt.count_containing(&wamid), 1);
    let topic = p.conversation_topic();
    assert!(
        p.mqtt
            .messages()
            .iter()
            .any(|(t, payload)| t == &topic && payload.contains(&wamid))
    );

    // The stored message is what Meta sent, normalized.
    let message = p.mongo_find("messages", &wamid).await.unwrap();
    assert_eq!(message.get_str("direction").unwrap(), "inbound");
    assert_eq!(message.get_str("contact_wa_id").unwrap(), "16505551234");
    let contact = p.mongo_find("contacts", "16505551234").await.unwrap();
    assert_eq!(contact.get_str("profile_name").unwrap(), "Sheena Nelson");
    let conversation_id = format!("{}-16505551234", p.phone_number_id);
    assert_eq!(
        p.mongo_find("conversations", &conversation_id)
            .await
            .unwrap()
            .get_str("state")
            .unwrap(),
        "open"
    );

    // Meta redelivers: nothing changes.
    assert_eq!(p.post(&body, APP_SECRET).await, 200);
    p.barrier("after-redelivery").await;
    assert_eq!(p.mongo_count("messages", doc! { "id": &wamid }).await, 1);
    assert_eq!(p.clickhouse_rows(Some(&wamid)).await, 1);
    assert_eq!(p.mqtt.count_containing(&wamid), 1);

    // A forged signature is refused and writes nothing.
    let forged = p.fixture("msg_text", "-forged");
    let forged_wamid = first_wamid(&forged);
    assert_eq!(p.post(&forged, "not-the-app-secret").await, 401);
    p.barrier("after-forgery").await;
    assert_eq!(
        p.mongo_count("messages", doc! { "id": &forged_wamid })
            .await,
        0
    );
    assert_eq!(p.clickhouse_rows(Some(&forged_wamid)).await, 0);
    assert_eq!(p.mqtt.count_containing(&forged_wamid), 0);

    // In all: the message and three markers, once each.
    assert_eq!(p.mongo_count("messages", doc! {}).await, 4);
    assert_eq!(p.clickhouse_rows(None).await, 4);
    assert_eq!(p.mqtt.messages().len(), 4);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statuses_only_move_forward_and_history_is_stored_but_not_pushed() {
    let p = Pipeline::start("status").await;
    let echo = p.fixture("smb_message_echoes", "-s");
    let wamid = first_wamid(&echo);
    assert_eq!(p.post(&echo, APP_SECRET).await, 200);
    // Statuses of the echoed message, out of order and duplicated.
    for status in ["read", "delivered", "sent", "read", "delivered"] {
        let body = p.fixture(&format!("status_{status}"), "-s");
        let body = body.replace(&first_wamid(&body), &wamid);
        assert_eq!(p.post(&body, APP_SECRET).await, 200);
    }
    let history = p.fixture("history", "-s");
    assert_eq!(p.post(&history, APP_SECRET).await, 200);
    p.barrier("statuses").await;

    let message = p.mongo_find("messages", &wamid).await.unwrap();
    assert_eq!(message.get_str("status").unwrap(), "read");
    assert_eq!(message.get_str("origin").unwrap(), "business_app");
    assert_eq!(
        p.mongo_count("message_statuses", doc! { "wamid": &wamid })
            .await,
        3
    );
    // ClickHouse: the echo and one row per distinct status.
    assert_eq!(p.clickhouse_rows(Some(&wamid)).await, 4);
    // MQTT: the echo and each distinct status once; no history.
    assert_eq!(p.mqtt.count_containing(&wamid), 4);
    assert_eq!(
        p.mongo_count("messages", doc! { "origin": "history" })
            .await,
        4
    );
    assert_eq!(p.mqtt.count_containing("\"origin\":\"history\""), 0);
    // The status processor: one transition for the echo, straight to read (it came
    // first); the later delivered/sent/read reports move nothing.
    let failed = p.fixture("status_failed", "-s-barrier");
    let barrier = first_wamid(&failed);
    assert_eq!(p.post(&failed, APP_SECRET).await, 200);
    let transitions = support::read_until(
        &p.config.kafka.brokers,
        events::topics::MESSAGES_STATUS,
        &p.phone_number_id,
        &barrier,
    )
    .await;
    let for_echo: Vec<serde_json::Value> = transitions
        .iter()
        .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap())
        .filter(|t| t["wamid"] == wamid.as_str())
        .collect();
    // Every test pipeline in this process runs its own status processor over the
    // shared topic, so copies may repeat: one step forward means one distinct id.
    let ids: std::collections::BTreeSet<&str> =
        for_echo.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{for_echo:?}");
    assert!(
        for_echo
            .iter()
            .all(|t| t["to"] == "read" && t["from"].is_null()),
        "{for_echo:?}"
    );
    assert_eq!(for_echo[0]["org"], p.org.as_str());
    let sync = p
        .mongo_find("history_syncs", &p.phone_number_id)
        .await
        .unwrap();
    assert_eq!(
        sync.get_i64("progress")
            .or_else(|_| sync.get_i32("progress").map(i64::from))
            .unwrap(),
        55
    );
    p.stop().await;
}
