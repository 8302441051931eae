//! Writes through the API land where they should, exactly once: directory changes in
//! MongoDB via the mongo sink (agents, sealed business-number credentials, routing,
//! push tokens as the expo sink reads them), messages and syncs on
//! `messages.outbound` in the Graph API's shape, commands on `conversations.commands`.

mod api_support;
mod support;

use api_support::ApiStack;
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};
use support::read_until;

#[tokio::test(flavor = "multi_thread")]
async fn directory_messages_and_commands_reach_their_stores_and_topics() {
    let stack = ApiStack::start("api-writes", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let org = stack.org("wr").await;
    let admin = stack.login(&org, &org.admin_phone, "desk").await;
    let token = Some(admin.access.as_str());

    // Agents: invite, change, deactivate (which also ends their sessions).
    let agent_phone = format!("1666{}", &stack.id[stack.id.len() - 7..]);
    let invite = json!({ "agent_id": "bob", "name": "Bob", "phone": agent_phone, "role": "agent", "capacity": 2 });
    assert_eq!(
        stack
            .call("POST", "/v1/agents", token, Some(invite.clone()))
            .await
            .0,
        202
    );
    stack.wait_doc("agents", &format!("{}:bob", org.org)).await;
    assert_eq!(
        stack
            .call("POST", "/v1/agents", token, Some(invite))
            .await
            .0,
        409
    );
    let bob = stack.login(&org, &agent_phone, "bob-phone").await;
    // A body that is not an object is refused (serde would read a struct from an
    // array field by field and accept `[null, null]` as an update of nothing).
    let (status, _, body) = stack
        .call("PATCH", "/v1/agents/bob", token, Some(json!([null, null])))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    // A whole number written with a point (JSON Schema's `integer` admits 7.0).
    let (status, _, _) = stack
        .call(
            "PATCH",
            "/v1/agents/bob",
            token,
            Some(json!({ "capacity": 7.0 })),
        )
        .await;
    assert_eq!(status, 202);
    support::wait_for("capacity 7", std::time::Duration::from_secs(30), || async {
        let (_, _, a) = stack.call("GET", "/v1/agents/bob", token, None).await;
        a["capacity"] == 7
    })
    .await;

    // Push tokens: exactly the documents the expo sink reads, and gone on unregister.
    let expo = "ExponentPushToken[abc123]";
    let (status, _, _) = stack
        .call(
            "POST",
            "/v1/push-tokens",
            Some(&bob.access),
            Some(json!({
            "device_id": "bob-phone", "token": expo, "platform": "ios" })),
        )
        .await;
    assert_eq!(status, 202);
    let mut stored = stack
        .wait_doc("push_tokens", &format!("{}:{expo}", org.org))
        .await;
    stored.remove("updated_at_ms").expect("updated_at_ms");
    assert_eq!(
        stored,
        doc! { "_id": format!("{}:{expo}", org.org), "org": &org.org, "agent_id": "bob",
        "device_id": "bob-phone", "token": expo, "platform": "ios" }
    );
    // Someone else's token cannot be removed; one's own can.
    let path = format!("/v1/push-tokens/{expo}");
    assert_eq!(stack.call("DELETE", &path, token, None).await.0, 404);
    assert_eq!(
        stack.call("DELETE", &path, Some(&bob.access), None).await.0,
        202
    );
    support::wait_for(
        "token removed",
        std::time::Duration::from_secs(30),
        || async {
            stack
                .mongo
                .collection::<Document>("push_tokens")
                .count_documents(doc! { "org": &org.org })
                .await
                .unwrap()
                == 0
        },
    )
    .await;

    assert_eq!(
        stack.call("DELETE", "/v1/agents/bob", token, None).await.0,
        202
    );
    assert_eq!(
        stack.call("GET", "/v1/me", Some(&bob.access), None).await.0,
        401
    );
    support::wait_for(
        "bob inactive",
        std::time::Duration::from_secs(30),
        || async {
            let (_, _, a) = stack.call("GET", "/v1/agents/bob", token, None).await;
            a["active"] == false
        },
    )
    .await;

    // A business number: credentials sealed before Kafka, never in clear anywhere.
    let number = format!("7{}", stack.id);
    let (status, _, _) = stack
        .call("PUT", &format!("/v1/business-numbers/{number}"), token, Some(json!({
            "display_phone_number": "+1 555 0199", "access_token": "EAAG-secret-token", "app_secret": "app-secret-xyz" })))
        .await;
    assert_eq!(status, 202);
    let stored = stack
        .wait_doc("business_numbers", &format!("{}:{number}", org.org))
        .await;
    assert!(!stored.to_string().contains("EAAG-secret-token"));
    assert!(!stored.to_string().contains("app-secret-xyz"));
    let on_kafka = read_until(
        &stack.config.kafka.brokers,
        events::topics::DIRECTORY_CHANGES,
        &org.org,
        &number,
    )
    .await;
    assert!(on_kafka.iter().all(|v| !v.contains("EAAG-secret-token")));
    let (_, _, numbers) = stack.call("GET", "/v1/business-numbers", token, None).await;
    assert!(!numbers.to_string().contains("secret"), "{numbers}");

    // Routing policy for that number.
    let (status, _, _) = stack
        .call(
            "PUT",
            "/v1/routing-policy",
            token,
            Some(json!({
            "phone_number_id": number, "policy": { "kind": "sticky", "window_ms": 60000 } })),
        )
        .await;
    assert_eq!(status, 202);
    support::wait_for("policy", std::time::Duration::from_secs(30), || async {
        let o = stack
            .mongo
            .collection::<Document>("orgs")
            .find_one(doc! { "_id": &org.org })
            .await
            .unwrap();
        o.and_then(|o| o.get_document("routing").ok().cloned())
            .and_then(|r| r.get_document("numbers").ok().cloned())
            .is_some_and(|n| n.contains_key(&number))
    })
    .await;

    // The coexistence sync: a smb_app_data request for the whatsapp sink.
    let (status, _, accepted) = stack
        .call(
            "POST",
            &format!("/v1/business-numbers/{number}/sync"),
            token,
            Some(json!({ "kind": "history" })),
        )
        .await;
    assert_eq!(status, 202);
    let id = accepted["command_id"].as_str().unwrap();
    let out = read_until(
        &stack.config.kafka.brokers,
        events::topics::MESSAGES_OUTBOUND,
        &number,
        id,
    )
    .await;
    let sync: Value = serde_json::from_str(out.last().unwrap()).unwrap();
    // The payload only: the whatsapp sink adds the Graph envelope.
    assert_eq!(
        sync["payload"],
        json!({ "type": "smb_app_data", "sync_type": "history" })
    );

    // A conversation (as the mongo sink would have it): send, mark read, claim.
    let conversation = format!("{}-15550009999", org.phone_number_id);
    stack
        .mongo
        .collection::<Document>("conversations")
        .insert_one(doc! {
        "_id": format!("{}:{conversation}", org.org), "org": &org.org, "id": &conversation,
        "phone_number_id": &org.phone_number_id, "contact_wa_id": "15550009999", "state": "open",
        "last_message_at": DateTime::now() })
        .await
        .unwrap();
    stack
        .mongo
        .collection::<Document>("messages")
        .insert_one(doc! {
        "_id": format!("{}:wamid.IN1", org.org), "org": &org.org, "id": "wamid.IN1",
        "conversation_id": &conversation, "direction": "inbound", "sent_at": DateTime::now() })
        .await
        .unwrap();
    let base = format!("/v1/conversations/{conversation}");
    let (status, _, sent) = stack
        .call(
            "POST",
            &format!("{base}/messages"),
            token,
            Some(json!({ "type": "text", "body": "Hello!", "reply_to": "wamid.IN1" })),
        )
        .await;
    assert_eq!(status, 202);
    let id = sent["command_id"].as_str().unwrap();
    let out = read_until(
        &stack.config.kafka.brokers,
        events::topics::MESSAGES_OUTBOUND,
        &org.phone_number_id,
        id,
    )
    .await;
    let matching: Vec<&String> = out.iter().filter(|v| v.contains(id)).collect();
    assert_eq!(matching.len(), 1);
    let message: Value = serde_json::from_str(matching[0]).unwrap();
    assert_eq!(message["to"], "15550009999");
    assert_eq!(message["payload"]["text"]["body"], "Hello!");
    assert_eq!(message["payload"]["context"]["message_id"], "wamid.IN1");

    let (status, _, read) = stack
        .call(
            "POST",
            &format!("{base}/read"),
            token,
            Some(json!({ "message_id": "wamid.IN1" })),
        )
        .await;
    assert_eq!(status, 202);
    let id = read["command_id"].as_str().unwrap();
    let out = read_until(
        &stack.config.kafka.brokers,
        events::topics::MESSAGES_OUTBOUND,
        &org.phone_number_id,
        id,
    )
    .await;
    let message: Value = serde_json::from_str(out.last().unwrap()).unwrap();
    assert_eq!(
        message["payload"],
        json!({ "status": "read", "message_id": "wamid.IN1" })
    );

    let (status, _, claim) = stack
        .call(
            "POST",
            &format!("{base}/commands"),
            token,
            Some(json!({ "action": "claim" })),
        )
        .await;
    assert_eq!(status, 202);
    let id = claim["command_id"].as_str().unwrap();
    let out = read_until(
        &stack.config.kafka.brokers,
        events::topics::CONVERSATION_COMMANDS,
        &org.phone_number_id,
        id,
    )
    .await;
    let command: Value = serde_json::from_str(out.last().unwrap()).unwrap();
    assert_eq!(
        (command["action"].as_str(), command["issued_by"].as_str()),
        (Some("claim"), Some("admin"))
    );
    assert_eq!(command["conversation_id"], conversation.as_str());
    // Its result, once the sink has written it, is there to poll.
    let path = format!("/v1/commands/{id}");
    assert_eq!(stack.call("GET", &path, token, None).await.0, 404);
    stack
        .mongo
        .collection::<Document>("command_results")
        .insert_one(doc! {
        "_id": format!("{}:{id}", org.org), "org": &org.org, "command_id": id, "kind": "claim",
        "accepted": false, "reason": "over capacity", "at_ms": 5_i64 })
        .await
        .unwrap();
    let (status, _, result) = stack.call("GET", &path, token, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (result["accepted"].as_bool(), result["reason"].as_str()),
        (Some(false), Some("over capacity"))
    );

    // Paging messages newest first is stable while new ones arrive.
    let messages = stack.mongo.collection::<Document>("messages");
    for i in 0..5 {
        messages
            .insert_one(doc! {
            "_id": format!("{}:wamid.P{i}", org.org), "org": &org.org, "id": format!("wamid.P{i}"),
            "conversation_id": &conversation, "direction": "inbound",
            // Two share a time: the _id breaks the tie.
            "sent_at": DateTime::from_millis(1_000_000 + (i / 2) * 1000) })
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0..10 {
        let query = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, _, page) = stack
            .call(
                "GET",
                &format!("{base}/messages?limit=2{query}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["wamid"].as_str().unwrap().to_string()),
        );
        messages.insert_one(doc! {
            "_id": format!("{}:wamid.NEW{round}", org.org), "org": &org.org, "id": format!("wamid.NEW{round}"),
            "conversation_id": &conversation, "direction": "inbound", "sent_at": DateTime::now() }).await.unwrap();
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    // The first page had the newest message then (wamid.IN1); nothing repeats or goes missing.
    assert_eq!(
        seen,
        [
            "wamid.IN1",
            "wamid.P4",
            "wamid.P3",
            "wamid.P2",
            "wamid.P1",
            "wamid.P0"
        ]
    );
    stack.stop().await;
}
