//! The authorization matrix, derived from the served OpenAPI document so a new
//! endpoint cannot escape it: every protected operation answers 401 without a token,
//! every admin operation (bearer scope `admin`) answers 403 to an agent, and org A's
//! admin gets 404 on every one of org B's ids (409 on claiming B's business number,
//! see [`CLAIMS`]), and sees none of B's records in lists.
//! Also: the served spec is the one built from the handlers, and every documented
//! operation is routed (none falls through to "no such route" or 405).

mod api_support;
mod support;

use std::collections::BTreeSet;

use api_support::ApiStack;
use mongodb::bson::{DateTime, Document, doc};
use serde_json::{Value, json};

/// The operations anyone may call.
const PUBLIC: &[&str] = &[
    "GET /healthz",
    "POST /v1/auth/otp/request",
    "POST /v1/auth/otp/verify",
    "POST /v1/auth/refresh",
];

/// Operations that claim a global id (Meta's `phone_number_id`): another org's is
/// taken, and saying so (409) is the point; they change nothing of the other org.
const CLAIMS: &[&str] = &["PUT /v1/business-numbers/{phone_number_id}"];

fn operations(spec: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

fn is_admin(op: &Value) -> bool {
    op["security"].as_array().is_some_and(|reqs| {
        reqs.iter().any(|r| {
            r["bearer"]
                .as_array()
                .is_some_and(|s| s.contains(&json!("admin")))
        })
    })
}

async fn seed(stack: &ApiStack, org: &str, number: &str, wa_id: &str, tag: &str) {
    let db = &stack.mongo;
    let at = DateTime::now();
    let conversation = format!("{number}-{wa_id}");
    let inserts: Vec<(&str, Document)> = vec![
        (
            "contacts",
            doc! { "_id": format!("{org}:{wa_id}"), "org": org, "wa_id": wa_id, "profile_name": format!("Customer {tag}"), "last_message_at": at },
        ),
        (
            "conversations",
            doc! { "_id": format!("{org}:{conversation}"), "org": org, "id": &conversation, "phone_number_id": number, "contact_wa_id": wa_id, "state": "open", "last_message_at": at },
        ),
        (
            "messages",
            doc! { "_id": format!("{org}:wamid.{tag}"), "org": org, "id": format!("wamid.{tag}"), "conversation_id": &conversation, "contact_wa_id": wa_id, "direction": "inbound", "type": "image", "preview": "hello", "sent_at": at,
            "media": { "id": format!("media{tag}") },
            "stored_media": { "media_id": format!("media{tag}"), "bucket": "coexist-media", "key": format!("{org}/abc"), "mime_type": "image/jpeg", "bytes": 3_i64 } },
        ),
        (
            "message_statuses",
            doc! { "_id": format!("{org}:wamid.{tag}:read"), "org": org, "wamid": format!("wamid.{tag}"), "status": "read", "at": at },
        ),
        (
            "command_results",
            doc! { "_id": format!("{org}:cmd{tag}"), "org": org, "command_id": format!("cmd{tag}"), "kind": "claim", "accepted": true, "at_ms": 1 },
        ),
        (
            "push_tokens",
            doc! { "_id": format!("{org}:ExponentPushToken[{tag}]"), "org": org, "agent_id": "admin", "device_id": "d", "token": format!("ExponentPushToken[{tag}]"), "platform": "ios", "updated_at_ms": 1 },
        ),
        (
            "agents",
            doc! { "_id": format!("{org}:only-{tag}"), "org": org, "agent_id": format!("only-{tag}"), "name": "x", "role": "agent", "capacity": 1, "active": true },
        ),
    ];
    for (collection, document) in inserts {
        db.collection::<Document>(collection)
            .insert_one(document)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_enforces_auth_roles_and_tenancy() {
    let stack = ApiStack::start("api-matrix", |c| {
        c.api.otp.resend_cooldown_secs = 0;
        c.api.rate_limit.per_ip_per_minute = 100_000;
    })
    .await;
    let a = stack.org("orga").await;
    let b = stack.org("orgb").await;
    let admin_a = stack.login(&a, &a.admin_phone, "a-admin").await;
    let admin_b = stack.login(&b, &b.admin_phone, "b-admin").await;

    // An agent of org A, invited through the API and logged in like anyone.
    let agent_phone = format!("1777{}", &stack.id[stack.id.len() - 7..]);
    let (status, _, _) = stack
        .call("POST", "/v1/agents", Some(&admin_a.access), Some(json!({
            "agent_id": "agent-a", "name": "Agent A", "phone": agent_phone, "role": "agent", "capacity": 3
        })))
        .await;
    assert_eq!(status, 202);
    stack
        .wait_doc("agents", &format!("{}:agent-a", a.org))
        .await;
    let agent_a = stack.login(&a, &agent_phone, "a-agent").await;

    seed(&stack, &a.org, &a.phone_number_id, "5550002", "A").await;
    seed(&stack, &b.org, &b.phone_number_id, "5550001", "B").await;
    // B's ids, by path parameter name.
    let b_ids = |param: &str| -> String {
        match param {
            "conversation_id" => format!("{}-5550001", b.phone_number_id),
            "wa_id" => "5550001".into(),
            "wamid" => "wamid.B".into(),
            "media_id" => "mediaB".into(),
            "command_id" => "cmdB".into(),
            "agent_id" => "only-B".into(),
            "phone_number_id" => b.phone_number_id.clone(),
            "session_id" => admin_b.session_id.clone(),
            "token" => "ExponentPushToken[B]".into(),
            other => panic!("path parameter {other} has no org-B id in this test: add one"),
        }
    };
    let sample_body = |method: &str, path: &str| -> Option<Value> {
        Some(match (method, path) {
            ("POST", "/v1/conversations/{conversation_id}/messages") => {
                json!({ "type": "text", "body": "hi" })
            }
            ("POST", "/v1/conversations/{conversation_id}/read") => {
                json!({ "message_id": "wamid.B" })
            }
            ("POST", "/v1/conversations/{conversation_id}/commands") => {
                json!({ "action": "claim" })
            }
            ("POST", "/v1/conversations/{conversation_id}/activity") => {
                json!({ "kind": "typing" })
            }
            ("PATCH", "/v1/agents/{agent_id}") => json!({ "name": "renamed" }),
            ("PUT", "/v1/business-numbers/{phone_number_id}") => json!({
                "display_phone_number": "+1", "access_token": "t", "app_secret": "s" }),
            ("POST", "/v1/business-numbers/{phone_number_id}/sync") => {
                json!({ "kind": "contacts" })
            }
            _ => return None,
        })
    };

    let (status, _, spec) = stack.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    // The served spec is exactly the one the router was built from.
    assert_eq!(spec, serde_json::to_value(api::openapi()).unwrap());

    let ops = operations(&spec);
    assert!(ops.len() >= 30, "only {} operations", ops.len());
    let public: BTreeSet<String> = ops
        .iter()
        .filter(|(_, _, op)| op.get("security").is_none())
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(public, PUBLIC.iter().map(|s| s.to_string()).collect());

    let mut checked = (0, 0, 0);
    for (method, path, op) in &ops {
        let name = format!("{method} {path}");
        let params: Vec<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut concrete = path.clone();
        for p in &params {
            concrete = concrete.replace(&format!("{{{p}}}"), &b_ids(p));
        }
        if PUBLIC.contains(&name.as_str()) {
            let (status, _, body) = stack.call(method, &concrete, None, Some(json!({}))).await;
            assert_ne!(
                body["error"]["message"], "no such route",
                "{name} is not routed"
            );
            assert!(status < 500, "{name}: {status}");
            continue;
        }
        // No token: 401 (proves it is routed, too).
        let (status, _, body) = stack.call(method, &concrete, None, None).await;
        assert_eq!(status, 401, "{name} without a token: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}");
        checked.0 += 1;
        // An agent on an admin operation: 403.
        if is_admin(op) {
            let (status, _, body) = stack
                .call(
                    method,
                    &concrete,
                    Some(&agent_a.access),
                    sample_body(method, path),
                )
                .await;
            assert_eq!(status, 403, "{name} as an agent: {body}");
            checked.1 += 1;
        }
        // Org A's admin on org B's ids: 404, nothing revealed.
        if !params.is_empty() {
            let body = sample_body(method, path);
            if op.get("requestBody").is_some() {
                assert!(
                    body.is_some(),
                    "{name} takes a body: add a sample to this test"
                );
            }
            let (status, _, answer) = stack
                .call(method, &concrete, Some(&admin_a.access), body)
                .await;
            if CLAIMS.contains(&name.as_str()) {
                assert_eq!(status, 409, "{name} on org B's ids: {answer}");
                assert_eq!(answer["error"]["code"], "conflict", "{name}");
                checked.2 += 1;
                continue;
            }
            assert_eq!(status, 404, "{name} on org B's ids: {answer}");
            assert_eq!(answer["error"]["code"], "not_found", "{name}");
            checked.2 += 1;
        }
    }
    eprintln!(
        "matrix: {} × 401, {} × 403, {} × cross-org 404",
        checked.0, checked.1, checked.2
    );

    // Lists are scoped by the token's org: A sees its records and none of B's.
    for path in [
        "/v1/contacts",
        "/v1/conversations",
        "/v1/agents",
        "/v1/business-numbers",
        "/v1/auth/sessions",
    ] {
        let (status, _, body) = stack.call("GET", path, Some(&admin_a.access), None).await;
        assert_eq!(status, 200, "{path}");
        let text = body.to_string();
        for leak in [
            b.org.as_str(),
            "5550001",
            b.phone_number_id.as_str(),
            "only-B",
            admin_b.session_id.as_str(),
        ] {
            assert!(!text.contains(leak), "{path} shows org B's {leak}: {text}");
        }
    }
    let (_, _, contacts) = stack
        .call(
            "GET",
            "/v1/contacts?q=Customer",
            Some(&admin_a.access),
            None,
        )
        .await;
    assert_eq!(contacts["items"].as_array().unwrap().len(), 1, "{contacts}");
    assert_eq!(contacts["items"][0]["wa_id"], "5550002");
    // B's own admin does reach B's records (the 404s above were about tenancy).
    let path = format!("/v1/conversations/{}-5550001", b.phone_number_id);
    assert_eq!(
        stack
            .call("GET", &path, Some(&admin_b.access), None)
            .await
            .0,
        200
    );
    stack.stop().await;
}

/// A business number belongs to exactly one org: another org registering it gets 409
/// and changes nothing; its own org re-registering it (credential rotation) is fine.
#[tokio::test(flavor = "multi_thread")]
async fn a_business_number_belongs_to_one_org() {
    let stack = ApiStack::start("api-numbers", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let a = stack.org("numa").await;
    let b = stack.org("numb").await;
    let admin_a = stack.login(&a, &a.admin_phone, "a-admin").await;
    let admin_b = stack.login(&b, &b.admin_phone, "b-admin").await;
    let credentials = |token: &str| json!({ "display_phone_number": "+1 555 0100", "access_token": token, "app_secret": "s" });

    // A claims B's number (bootstrapped with B): refused, with the reason.
    let b_number = format!("/v1/business-numbers/{}", b.phone_number_id);
    let (status, _, answer) = stack
        .call(
            "PUT",
            &b_number,
            Some(&admin_a.access),
            Some(credentials("a-token")),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another org"),
        "{answer}"
    );

    // A rotates its own number's credentials: accepted, and it takes effect.
    let a_number = format!("/v1/business-numbers/{}", a.phone_number_id);
    let a_key = format!("{}:{}", a.org, a.phone_number_id);
    let before = stack.wait_doc("business_numbers", &a_key).await;
    let (status, _, answer) = stack
        .call(
            "PUT",
            &a_number,
            Some(&admin_a.access),
            Some(credentials("rotated")),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    support::wait_for(
        "the rotation",
        std::time::Duration::from_secs(30),
        || async {
            let now = stack.wait_doc("business_numbers", &a_key).await;
            now.get("access_token") != before.get("access_token")
        },
    )
    .await;
    // The rotation went through the same org's partition after the refused claim, so
    // had the claim been published it would be written by now: it is not.
    let stolen = stack
        .mongo
        .collection::<Document>("business_numbers")
        .count_documents(doc! { "phone_number_id": &b.phone_number_id })
        .await
        .unwrap();
    assert_eq!(stolen, 1, "only B holds its number");

    // A new number, first registered by B: A cannot take it over either.
    let fresh = format!("5{}", stack.id);
    let path = format!("/v1/business-numbers/{fresh}");
    let (status, _, _) = stack
        .call(
            "PUT",
            &path,
            Some(&admin_b.access),
            Some(credentials("b-token")),
        )
        .await;
    assert_eq!(status, 202);
    stack
        .wait_doc("business_numbers", &format!("{}:{fresh}", b.org))
        .await;
    let (status, _, answer) = stack
        .call(
            "PUT",
            &path,
            Some(&admin_a.access),
            Some(credentials("a-token")),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    let (status, _, _) = stack
        .call(
            "PUT",
            &path,
            Some(&admin_b.access),
            Some(credentials("b-rotated")),
        )
        .await;
    assert_eq!(status, 202, "re-registering by the owner stays allowed");
    stack.stop().await;
}
