//! `GET /v1/templates` on the real stack, against the Graph API simulator: a number's
//! approved templates in Meta's format with their parameters, for admins and agents
//! of the number's org only, read from Graph once per cache period.

mod api_support;
mod support;

use api_support::ApiStack;
use serde_json::{Value, json};
use support::GraphSimulator;

const GRAPH_TOKEN: &str = "sim-templates-token";

async fn template_reads(sim: &GraphSimulator) -> u64 {
    let stats: Value = reqwest::get(format!("{}/_sim/graph/template_reads", sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["template_reads"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_numbers_approved_templates_with_their_parameters_cached_and_org_scoped() {
    let sim = GraphSimulator::start(|c| {
        c.simulate.graph.access_tokens = vec![runtime::Secret::new(GRAPH_TOKEN)];
    })
    .await;
    let url = sim.url.clone();
    let mut stack = ApiStack::start("api-templates", move |c| {
        c.graph.base_url = url;
        c.api.otp.resend_cooldown_secs = 0;
    })
    .await;
    // The numbers' Graph token comes from the directory (sealed), as in production.
    stack.credentials = (GRAPH_TOKEN.into(), support::APP_SECRET.into());
    let a = stack.org("tpa").await;
    let b = stack.org("tpb").await;
    let admin = stack.login(&a, &a.admin_phone, "desk").await;
    let b_admin = stack.login(&b, &b.admin_phone, "desk").await;
    let phone = format!("1888{}", &stack.id[stack.id.len() - 7..]);
    let invite =
        json!({ "agent_id": "bob", "name": "Bob", "phone": phone, "role": "agent", "capacity": 2 });
    let (status, _, _) = stack
        .call("POST", "/v1/agents", Some(&admin.access), Some(invite))
        .await;
    assert_eq!(status, 202);
    stack.wait_doc("agents", &format!("{}:bob", a.org)).await;
    let bob = stack.login(&a, &phone, "bob-web").await;

    let path = format!("/v1/templates?phone_number_id={}", a.phone_number_id);
    let (status, _, body) = stack.call("GET", &path, Some(&admin.access), None).await;
    assert_eq!(status, 200, "{body}");
    let templates = body["templates"].as_array().unwrap();
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // Approved only (the simulator also has a pending and a rejected one).
    assert_eq!(
        names,
        ["hello_world", "order_update", "follow_up", "coexist_login"]
    );
    let meta = coexist::simulate::graph::templates();
    let order = &templates[1];
    assert_eq!(order["language"], "en_US");
    assert_eq!(order["category"], "UTILITY");
    // Components exactly as Meta lists them; parameters counted per component.
    assert_eq!(order["components"], meta[1]["components"]);
    assert_eq!(
        order["parameters"],
        json!([{"component": "body", "count": 2}])
    );
    assert_eq!(
        templates[2]["parameters"],
        json!([{"component": "header", "count": 1}])
    );
    assert_eq!(templates[0]["parameters"], json!([]));

    // An agent of the org reads the same list, from the cache: Graph was asked once.
    let (status, _, again) = stack.call("GET", &path, Some(&bob.access), None).await;
    assert_eq!(status, 200);
    assert_eq!(again, body);
    assert_eq!(template_reads(&sim).await, 1);

    // Another org's number is not there for this caller; a number that is not one
    // is refused; without a number, too.
    let (status, _, answer) = stack.call("GET", &path, Some(&b_admin.access), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _, _) = stack
        .call(
            "GET",
            "/v1/templates?phone_number_id=12345",
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = stack
        .call(
            "GET",
            "/v1/templates?phone_number_id=abc",
            Some(&admin.access),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = stack
        .call("GET", "/v1/templates", Some(&admin.access), None)
        .await;
    assert_eq!(status, 400);
    // Nothing of that reached Graph.
    assert_eq!(template_reads(&sim).await, 1);
    stack.stop().await;
}
