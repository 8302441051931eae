//! `POST /v1/media` on the real stack: a file stored in moto's S3 under the org, sent
//! by its `s3_key` through the whatsapp sink to the Graph API simulator exactly once;
//! 413 and 415 with a clear body; another org's key refused.

mod api_support;
mod support;

use std::time::Duration;

use api_support::ApiStack;
use coexist::roles::{self, SinkName};
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};
use support::{GraphSimulator, unique, wait_for};

const GRAPH_TOKEN: &str = "sim-media-upload-token";
const CUSTOMER: &str = "16505551234";
const APP_SECRET: &str = "upload-test-app-secret";

/// A conversation of `org` on `number` with the customer, as the sinks write it.
async fn conversation(stack: &ApiStack, org: &str, number: &str) -> String {
    let id = format!("{number}-{CUSTOMER}");
    stack
        .mongo
        .collection::<Document>("conversations")
        .insert_one(doc! { "_id": format!("{org}:{id}"), "org": org, "id": &id,
        "phone_number_id": number, "contact_wa_id": CUSTOMER, "state": "open",
        "last_message_at": DateTime::now() })
        .await
        .unwrap();
    id
}

async fn upload(
    stack: &ApiStack,
    token: &str,
    query: &str,
    mime: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let response = stack
        .http
        .post(stack.url(&format!("/v1/media{query}")))
        .bearer_auth(token)
        .header("content-type", mime)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_is_sent_once_by_its_key_within_limits_and_only_by_its_org() {
    let sim = GraphSimulator::start(|c| {
        c.simulate.graph.access_tokens = vec![runtime::Secret::new(GRAPH_TOKEN)];
    })
    .await;
    let number = format!("7{}", unique());
    let org = format!("upa-{}", unique());
    let (url, listed, owner) = (sim.url.clone(), number.clone(), org.clone());
    let mut stack = ApiStack::start("api-upload", move |c| {
        c.ingest.listen = format!("127.0.0.1:{}", support::free_port());
        c.ingest.app_secrets = vec![runtime::Secret::new(APP_SECRET)];
        c.ingest.numbers = vec![ingest::config::NumberOwner {
            phone_number_id: listed.clone(),
            org: owner,
        }];
        c.ingest.presence.enabled = false;
        c.graph.base_url = url;
        c.graph.only_listed_numbers = true;
        c.graph.numbers = vec![sinks::graph::GraphNumber {
            phone_number_id: listed,
            access_token: runtime::Secret::new(GRAPH_TOKEN),
            messages_per_second: 0,
        }];
        c.api.upload_max_bytes = 64 * 1024;
    })
    .await;
    stack.spawn_role(|c, s| async move { roles::sink(&c, SinkName::Whatsapp, s).await });
    stack.spawn_role(|c, s| async move { roles::ingest(&c, s).await });
    stack.spawn_role(|c, s| async move {
        roles::process(&c, coexist::roles::ProcessorName::Router, s).await
    });
    stack.wait_ingest().await;
    let s3 = stack.config.s3.client();
    stack.config.s3.ensure_bucket(&s3).await.unwrap();
    stack.credentials = (GRAPH_TOKEN.into(), APP_SECRET.into());
    let a = stack.org_with(&org, &number).await;
    stack.credentials = (GRAPH_TOKEN.into(), support::APP_SECRET.into());
    let b = stack.org("upb").await;
    let admin = stack.login(&a, &a.admin_phone, "desk").await;
    let b_admin = stack.login(&b, &b.admin_phone, "desk").await;
    // The customer writes first: the 24-hour window is open for free-form media.
    let conversation = customer_writes(&stack, &number).await;
    let path = format!("/v1/conversations/{conversation}");
    wait_for(
        "the customer's conversation",
        Duration::from_secs(60),
        || async { stack.call("GET", &path, Some(&admin.access), None).await.0 == 200 },
    )
    .await;
    let b_conversation = conversation_of_b(&stack, &b).await;

    // Upload: stored under the org with its type, bytes exactly.
    let png: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let (status, uploaded) = upload(
        &stack,
        &admin.access,
        "?filename=photo.png",
        "image/png",
        png.clone(),
    )
    .await;
    assert_eq!(status, 201, "{uploaded}");
    let key = uploaded["s3_key"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("{}/uploads/", a.org)), "{key}");
    assert!(key.ends_with("/photo.png"), "{key}");
    assert_eq!(uploaded["mime_type"], "image/png");
    assert_eq!(uploaded["size"], png.len());
    let object = s3
        .get_object()
        .bucket(&stack.config.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(object.content_type(), Some("image/png"));
    assert_eq!(
        object.body.collect().await.unwrap().into_bytes().to_vec(),
        png
    );

    // Too large: 413 with the limit; a type WhatsApp does not send: 415 with the list.
    let (status, body) = upload(
        &stack,
        &admin.access,
        "",
        "image/png",
        vec![1; 64 * 1024 + 1],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "media_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
    let (status, body) = upload(
        &stack,
        &admin.access,
        "",
        "text/html",
        b"<p>hi</p>".to_vec(),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/png"),
        "{body}"
    );
    let (status, _) = upload(
        &stack,
        &admin.access,
        "?filename=../x",
        "image/png",
        vec![1],
    )
    .await;
    assert_eq!(status, 400);

    // Another org cannot send A's upload (nor learn it exists).
    let (status, _, body) = stack
        .call(
            "POST",
            &format!("/v1/conversations/{b_conversation}/messages"),
            Some(&b_admin.access),
            Some(json!({"type": "media", "kind": "image", "s3_key": key})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Nor a key that is no upload.
    let (status, _, _) = stack
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&admin.access),
            Some(json!({"type": "media", "kind": "image", "s3_key": format!("{}/uploads/none", a.org)})),
        )
        .await;
    assert_eq!(status, 404);

    // Sent by its key: the simulator receives exactly one image message, by the id
    // of the upload the sink made from S3.
    let (status, _, sent) = stack
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&admin.access),
            Some(json!({"type": "media", "kind": "image", "s3_key": key, "caption": "look"})),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    // (The login codes went out on this number too, as templates to the admins.)
    let to_customer = |r: &coexist::simulate::graph::SentRecord| {
        r.edge == "messages" && r.to.as_deref() == Some(CUSTOMER)
    };
    wait_for(
        "the image at the Graph API",
        Duration::from_secs(60),
        || async { sim.sent(&number).await.iter().any(to_customer) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages: Vec<_> = sim
        .sent(&number)
        .await
        .into_iter()
        .filter(to_customer)
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].kind, "image");
    assert_eq!(messages[0].body["image"]["caption"], "look");
    assert!(
        messages[0].body["image"]["id"].is_string(),
        "{:?}",
        messages[0].body
    );
    assert!(messages[0].body["image"].get("s3_key").is_none());
    assert!(
        !sim.sent(&b.phone_number_id).await.iter().any(to_customer),
        "org B sent something"
    );
    stack.stop().await;
}

async fn conversation_of_b(stack: &ApiStack, b: &api_support::Org) -> String {
    conversation(stack, &b.org, &b.phone_number_id).await
}

async fn customer_writes(stack: &ApiStack, number: &str) -> String {
    let path = format!(
        "{}/events/tests/fixtures/msg_text.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let body = std::fs::read_to_string(path)
        .unwrap()
        .replace("106540352242922", number)
        // Just now: the window is open.
        .replace(
            "\"1750090702\"",
            &format!("\"{}\"", support::now_ms() / 1000),
        )
        .replace("\"wamid.", &format!("\"wamid.{}.", unique()));
    let signature = ingest::signature::sign(body.as_bytes(), APP_SECRET);
    let status = stack
        .http
        .post(format!(
            "http://{}/webhooks/whatsapp",
            stack.config.ingest.listen
        ))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    format!("{number}-{CUSTOMER}")
}
