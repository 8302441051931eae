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
    // MQTT: no history. (Statuses: below, once the status processor has spoken.)
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
    // MQTT: the echo once, then statuses as the status processor ordered them: a
    // device only ever sees a status move forward (here straight to read, which
    // came first), each step once, never Meta's late `delivered` and `sent`.
    support::wait_for(
        "the transition on MQTT",
        std::time::Duration::from_secs(30),
        || async { p.mqtt.count_containing(&wamid) >= 2 },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let seen: Vec<(String, String)> = p
        .mqtt
        .messages()
        .into_iter()
        .filter(|(_, m)| m.contains(&wamid))
        .collect();
    let statuses: Vec<String> = seen
        .iter()
        .filter_map(|(_, m)| serde_json::from_str::<serde_json::Value>(m).ok())
        .filter(|m| m["kind"] == "status")
        .map(|m| m["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["read"], "{seen:?}");
    assert_eq!(seen.len(), 2, "the echo and one status: {seen:?}");
    assert!(seen.iter().all(|(t, _)| t == &p.conversation_topic()));
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

/// What the inbox shows besides webhooks lands in MongoDB once: the owner of a
/// conversation (an older assignment redelivered after a newer one changes nothing),
/// an agent's sent and failed messages, a mark-as-read, media stored in S3, and every
/// command's first outcome for polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignments_sends_reads_and_media_land_in_mongodb_once() {
    use events::delivery::{MediaStored, OutboundMessage};
    use events::inbox::{AssignmentEvent, ConversationState};
    use events::topics;

    let p = Pipeline::start("inbox").await;
    let body = p.fixture("msg_text", "-inbox");
    let inbound = first_wamid(&body);
    assert_eq!(p.post(&body, APP_SECRET).await, 200);
    p.barrier("after-inbound").await;
    let conversation_id = format!("{}-16505551234", p.phone_number_id);
    let conversation = p
        .mongo_find("conversations", &conversation_id)
        .await
        .unwrap();
    assert!(conversation.get_datetime("last_inbound_at").is_ok());

    let publisher = p.config.kafka.publisher("inbox-test").await.unwrap();
    let later = support::now_ms() + 60_000;
    let assignment = |id: &str, state, assignee: Option<&str>, at_ms| AssignmentEvent {
        id: id.into(),
        org: p.org.clone(),
        phone_number_id: p.phone_number_id.clone(),
        conversation_id: conversation_id.clone(),
        state,
        assignee: assignee.map(str::to_owned),
        command_id: None,
        issued_by: None,
        rejected: None,
        note: None,
        at_ms,
    };
    let newer = AssignmentEvent {
        command_id: Some("claim-1".into()),
        issued_by: Some("ana".into()),
        ..assignment("a-new", ConversationState::Assigned, Some("ana"), later)
    };
    let older = assignment("a-old", ConversationState::Open, None, later - 1_000);
    let rejected = AssignmentEvent {
        command_id: Some("claim-2".into()),
        issued_by: Some("bob".into()),
        rejected: Some("already assigned to ana".into()),
        ..assignment("a-rej", ConversationState::Assigned, Some("ana"), later + 1)
    };
    let send = |id: &str, payload: serde_json::Value| OutboundMessage {
        id: id.into(),
        org: p.org.clone(),
        phone_number_id: p.phone_number_id.clone(),
        conversation_id: conversation_id.clone(),
        to: "16505551234".into(),
        sent_by: "ana".into(),
        at_ms: later,
        payload,
    };
    let reply = send(
        "send-1",
        serde_json::json!({"type": "text", "text": {"body": "On its way!"}}),
    );
    let late = send(
        "send-2",
        serde_json::json!({"type": "text", "text": {"body": "Hello?"}}),
    );
    let read = send(
        "read-1",
        serde_json::json!({"messaging_product": "whatsapp", "status": "read", "message_id": inbound}),
    );
    let sent_wamid = format!("wamid.reply.{}", p.org);
    let media = MediaStored {
        media_id: "media-1".into(),
        org: p.org.clone(),
        wamid: inbound.clone(),
        bucket: "coexist-media".into(),
        key: format!("{}/abc123", p.org),
        mime_type: "image/jpeg".into(),
        bytes: 1234,
    };
    let failure: events::webhook::ApiError = serde_json::from_value(
        serde_json::json!({"code": 131047, "title": "Re-engagement message"}),
    )
    .unwrap();
    // Everything twice, and the older assignment after the newer one.
    for _ in 0..2 {
        let key = p.phone_number_id.as_str();
        for a in [&newer, &older, &rejected] {
            publisher
                .send_json(topics::CONVERSATION_ASSIGNMENTS, key, a, vec![])
                .await
                .unwrap();
        }
        for (topic, value) in [
            (
                topics::OUTBOUND_RESULTS,
                serde_json::to_value(reply.result(Some(sent_wamid.clone()), None, later)).unwrap(),
            ),
            (
                topics::OUTBOUND_RESULTS,
                serde_json::to_value(late.result(None, Some(failure.clone()), later)).unwrap(),
            ),
            (
                topics::MESSAGES_OUTBOUND,
                serde_json::to_value(&read).unwrap(),
            ),
            (topics::MEDIA_STORED, serde_json::to_value(&media).unwrap()),
        ] {
            publisher
                .send_json(topic, key, &value, vec![])
                .await
                .unwrap();
        }
    }
    // The pipeline's whatsapp sink may answer the mark-as-read too (no token for
    // this number): count only the outcomes this test asserts.
    let answered = doc! { "command_id": { "$in": ["claim-1", "claim-2", "send-1", "send-2"] } };
    let done = || async {
        p.mongo_count("command_results", answered.clone()).await == 4
            && p.mongo_find("messages", &inbound)
                .await
                .is_some_and(|m| m.contains_key("stored_media"))
            && p.mongo_find("conversations", &conversation_id)
                .await
                .is_some_and(|c| c.contains_key("read_up_to") && c.get_str("assignee").is_ok())
            && p.mongo_count("messages", doc! { "id": "outbound:send-2" })
                .await
                == 1
    };
    support::wait_for("the inbox writes", std::time::Duration::from_secs(60), done).await;
    // Let the duplicates (same partitions, after the first copies) land too.
    p.barrier("after-duplicates").await;

    let conversation = p
        .mongo_find("conversations", &conversation_id)
        .await
        .unwrap();
    assert_eq!(conversation.get_str("state").unwrap(), "assigned");
    assert_eq!(conversation.get_str("assignee").unwrap(), "ana");
    let claim = p.mongo_find("command_results", "claim-1").await.unwrap();
    assert!(claim.get_bool("accepted").unwrap());
    let refused = p.mongo_find("command_results", "claim-2").await.unwrap();
    assert!(!refused.get_bool("accepted").unwrap());
    assert_eq!(
        refused.get_str("reason").unwrap(),
        "already assigned to ana"
    );
    let sent = p.mongo_find("messages", &sent_wamid).await.unwrap();
    assert_eq!(sent.get_str("preview").unwrap(), "On its way!");
    assert_eq!(sent.get_str("direction").unwrap(), "outbound");
    assert_eq!(sent.get_str("status").unwrap(), "accepted");
    assert_eq!(sent.get_str("conversation_id").unwrap(), conversation_id);
    let failed = p.mongo_find("messages", "outbound:send-2").await.unwrap();
    assert_eq!(failed.get_str("status").unwrap(), "failed");
    let stored = p.mongo_find("messages", &inbound).await.unwrap();
    assert_eq!(
        stored
            .get_document("stored_media")
            .unwrap()
            .get_str("key")
            .unwrap(),
        media.key
    );
    // Once each: inbound + sent + failed + the barrier markers (two).
    assert_eq!(p.mongo_count("messages", doc! {}).await, 5);
    assert_eq!(p.mongo_count("command_results", answered).await, 4);
    assert_eq!(
        p.mongo_count("conversations", doc! { "id": &conversation_id })
            .await,
        1
    );
    p.stop().await;
}
