//! `Idempotency-Key` on the command POSTs, on the real stack: a retry (also many at
//! once) answers the first command id and puts exactly one record on Kafka; the
//! same key with another request is 422.

mod api_support;
mod support;

use api_support::ApiStack;
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};
use support::unique;

const CUSTOMER: &str = "16505557777";

async fn post(
    stack: &ApiStack,
    path: &str,
    token: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = stack
        .http
        .post(stack.url(path))
        .bearer_auth(token)
        .json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_command_is_one_command() {
    let stack = ApiStack::start("api-idem", |_| {}).await;
    let a = stack.org("idem").await;
    let admin = stack.login(&a, &a.admin_phone, "desk").await;
    let conversation = format!("{}-{CUSTOMER}", a.phone_number_id);
    stack
        .mongo
        .collection::<Document>("conversations")
        .insert_one(
            doc! { "_id": format!("{}:{conversation}", a.org), "org": &a.org,
            "id": &conversation, "phone_number_id": &a.phone_number_id,
            "contact_wa_id": CUSTOMER, "state": "open", "last_message_at": DateTime::now() },
        )
        .await
        .unwrap();
    let messages = format!("/v1/conversations/{conversation}/messages");
    let commands = format!("/v1/conversations/{conversation}/commands");
    let text = json!({"type": "text", "body": "on my way"});

    // A retry: the same command id.
    let key = format!("retry-{}", unique());
    let (status, first) = post(&stack, &messages, &admin.access, Some(&key), text.clone()).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = post(&stack, &messages, &admin.access, Some(&key), text.clone()).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["command_id"], first["command_id"]);
    // Another request under that key: refused, nothing sent.
    let (status, body) = post(
        &stack,
        &messages,
        &admin.access,
        Some(&key),
        json!({"type": "text", "body": "something else"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // A bad key is a clear 400.
    let (status, _) = post(
        &stack,
        &messages,
        &admin.access,
        Some("has space"),
        text.clone(),
    )
    .await;
    assert_eq!(status, 400);

    // Many at once with one key: one command.
    let key2 = format!("burst-{}", unique());
    let burst = json!({"type": "text", "body": "burst"});
    let answers = futures::future::join_all(
        (0..8).map(|_| post(&stack, &messages, &admin.access, Some(&key2), burst.clone())),
    )
    .await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["command_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let burst_id = ids.into_iter().next().unwrap();

    // A history sync (an admin's command) too.
    let sync = format!("/v1/business-numbers/{}/sync", a.phone_number_id);
    let key4 = format!("sync-{}", unique());
    let (status, synced) = post(
        &stack,
        &sync,
        &admin.access,
        Some(&key4),
        json!({"kind": "history"}),
    )
    .await;
    assert_eq!(status, 202, "{synced}");
    let (_, synced2) = post(
        &stack,
        &sync,
        &admin.access,
        Some(&key4),
        json!({"kind": "history"}),
    )
    .await;
    assert_eq!(synced2["command_id"], synced["command_id"]);

    // Without a key, each POST is its own command (the marker that ends the read).
    let (_, marker) = post(
        &stack,
        &messages,
        &admin.access,
        None,
        json!({"type": "text", "body": "marker"}),
    )
    .await;
    let (_, marker2) = post(
        &stack,
        &messages,
        &admin.access,
        None,
        json!({"type": "text", "body": "marker"}),
    )
    .await;
    assert_ne!(marker["command_id"], marker2["command_id"]);
    let records = support::read_until(
        &stack.config.kafka.brokers,
        events::topics::MESSAGES_OUTBOUND,
        &a.phone_number_id,
        marker2["command_id"].as_str().unwrap(),
    )
    .await;
    let count = |id: &str| records.iter().filter(|r| r.contains(id)).count();
    assert_eq!(
        count(first["command_id"].as_str().unwrap()),
        1,
        "{records:?}"
    );
    assert_eq!(count(&burst_id), 1, "{records:?}");
    assert_eq!(
        count(synced["command_id"].as_str().unwrap()),
        1,
        "{records:?}"
    );
    assert!(records.iter().all(|r| !r.contains("something else")));

    // Conversation commands too.
    let key3 = format!("claim-{}", unique());
    let (status, claim) = post(
        &stack,
        &commands,
        &admin.access,
        Some(&key3),
        json!({"action": "claim"}),
    )
    .await;
    assert_eq!(status, 202, "{claim}");
    let (_, claim2) = post(
        &stack,
        &commands,
        &admin.access,
        Some(&key3),
        json!({"action": "claim"}),
    )
    .await;
    assert_eq!(claim2["command_id"], claim["command_id"]);
    let (status, _) = post(
        &stack,
        &commands,
        &admin.access,
        Some(&key3),
        json!({"action": "resolve"}),
    )
    .await;
    assert_eq!(status, 422);
    let (_, end) = post(
        &stack,
        &commands,
        &admin.access,
        None,
        json!({"action": "reopen"}),
    )
    .await;
    let records = support::read_until(
        &stack.config.kafka.brokers,
        events::topics::CONVERSATION_COMMANDS,
        &a.phone_number_id,
        end["command_id"].as_str().unwrap(),
    )
    .await;
    let claims = records
        .iter()
        .filter(|r| r.contains(claim["command_id"].as_str().unwrap()))
        .count();
    assert_eq!(claims, 1, "{records:?}");
    assert!(
        records.iter().all(|r| !r.contains("\"resolve\"")),
        "{records:?}"
    );
    stack.stop().await;
}
