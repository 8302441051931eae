//! ClickHouse analytics on the real server (18.16 here): known events go through the
//! ClickHouse sink's own write path into a fresh database, and every dashboard
//! panel must return exactly the figures worked out by hand below. Duplicates and a
//! second org in the same tables must change nothing.

mod support;

use std::time::Duration;

use api::analytics::{AnalyticsQuery, OrgScope, PanelData, run_panel};
use runtime::{Record, Stage};
use serde_json::{Value, json};
use sinks::clickhouse::{ClickHouseConfig, ClickHouseSink};

/// A UTC midnight (2023-11-14): day D of the story.
const D: i64 = 1_699_920_000;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

struct Seeded {
    client: clickhouse::Client,
    config: ClickHouseConfig,
    org: String,
    a: String,
    b: String,
}

impl Seeded {
    async fn new(name: &str) -> Self {
        let id = support::unique();
        let mut config = coexist::Config::load(None).unwrap().sinks.clickhouse;
        config.database = format!("t_{name}_{id}");
        sinks::clickhouse::migrate(&config).await.unwrap();
        // Migrations run at every start: the second run must be a no-op.
        sinks::clickhouse::migrate(&config).await.unwrap();
        Self {
            client: config.client(),
            config,
            org: format!("{name}-{id}"),
            a: format!("1{id}"),
            b: format!("2{id}"),
        }
    }

    async fn write(&self, records: &[Record]) {
        let mut sink = ClickHouseSink::new(&self.config);
        let rejects = sink.handle(records).await.unwrap();
        assert!(rejects.is_empty(), "rejected: {rejects:?}");
    }

    async fn panel(&self, id: &str) -> PanelData {
        self.panel_for(id, &self.org).await
    }

    async fn panel_for(&self, id: &str, org: &str) -> PanelData {
        let query = AnalyticsQuery {
            org: org.into(),
            phone_number_id: None,
            from_ms: D * 1000,
            to_ms: (D + 2 * DAY) * 1000,
        };
        run_panel(&self.client, id, &query).await.unwrap()
    }

    async fn count(&self, table: &str) -> u64 {
        self.client
            .query(&format!("SELECT count() FROM {table} WHERE org = ?"))
            .bind(&self.org)
            .fetch_one::<u64>()
            .await
            .unwrap()
    }

    async fn drop(self) {
        let _ = self
            .client
            .query(&format!("DROP DATABASE IF EXISTS {}", self.config.database))
            .execute()
            .await;
    }
}

fn record(topic: &str, value: Value) -> Record {
    Record {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        key: None,
        value: value.to_string().into_bytes(),
        headers: vec![],
        timestamp_ms: None,
    }
}

fn message(
    org: &str,
    number: &str,
    wamid: &str,
    conv: &str,
    origin: &str,
    kind: &str,
    at: i64,
) -> Record {
    let direction = if origin == "customer" {
        "inbound"
    } else {
        "outbound"
    };
    record(
        "whatsapp.events",
        json!({
            "id": wamid, "org": org, "phone_number_id": number, "received_at_ms": at * 1000,
            "kind": "message", "wamid": wamid, "conversation_id": conv, "contact_wa_id": "1555",
            "direction": direction, "origin": origin, "sent_at": at, "message_type": kind, "raw": {}
        }),
    )
}

fn send(
    org: &str,
    number: &str,
    id: &str,
    conv: &str,
    by: &str,
    template: Option<&str>,
    at_ms: i64,
) -> Record {
    let payload = match template {
        Some(name) => {
            json!({"type": "template", "template": {"name": name, "language": {"code": "en"}}})
        }
        None => json!({"type": "text", "text": {"body": "hi"}}),
    };
    record(
        "messages.outbound",
        json!({"id": id, "org": org, "phone_number_id": number, "conversation_id": conv,
               "to": "1555", "sent_by": by, "at_ms": at_ms, "payload": payload}),
    )
}

fn result(
    org: &str,
    number: &str,
    id: &str,
    conv: &str,
    wamid: Option<&str>,
    error: Option<(i64, &str)>,
    at_ms: i64,
) -> Record {
    let mut value = json!({"id": id, "org": org, "phone_number_id": number, "conversation_id": conv, "at_ms": at_ms});
    if let Some(w) = wamid {
        value["wamid"] = json!(w);
    }
    if let Some((code, title)) = error {
        value["error"] = json!({"code": code, "title": title});
    }
    record("messages.outbound.results", value)
}

fn status(
    org: &str,
    number: &str,
    wamid: &str,
    from: Option<&str>,
    to: &str,
    at: i64,
    error: Option<(i64, &str)>,
) -> Record {
    let mut value = json!({"id": format!("{wamid}:{to}"), "org": org, "phone_number_id": number,
        "conversation_id": "c", "wamid": wamid, "to": to, "at": at});
    if let Some(f) = from {
        value["from"] = json!(f);
    }
    if let Some((code, title)) = error {
        value["error"] = json!({"code": code, "title": title});
    }
    record("messages.status", value)
}

#[allow(clippy::too_many_arguments)]
fn assignment(
    org: &str,
    number: &str,
    id: &str,
    conv: &str,
    state: &str,
    assignee: Option<&str>,
    rejected: Option<&str>,
    at_ms: i64,
) -> Record {
    let mut value = json!({"id": id, "org": org, "phone_number_id": number, "conversation_id": conv,
        "state": state, "at_ms": at_ms});
    if let Some(a) = assignee {
        value["assignee"] = json!(a);
    }
    if let Some(r) = rejected {
        value["rejected"] = json!(r);
        value["command_id"] = json!(format!("cmd-{id}"));
    }
    record("conversations.assignments", value)
}

/// The story of two numbers over two days; the figures each panel must show are in
/// the tests below.
fn story(org: &str, a: &str, b: &str) -> Vec<Record> {
    let (ca, cb, cc) = (format!("{a}-ca"), format!("{a}-cb"), format!("{b}-cc"));
    let ms = |s: i64| s * 1000;
    vec![
        // Customers write in; one history import (not traffic); Business-app replies.
        message(org, a, "m1", &ca, "customer", "text", D + HOUR),
        message(org, a, "m2", &cb, "customer", "image", D + HOUR + 100),
        message(org, b, "m3", &cc, "customer", "text", D + 2 * HOUR + 100),
        message(org, a, "h1", &ca, "history", "text", D + HOUR),
        message(org, a, "e1", &cb, "business_app", "text", D + HOUR + 300),
        message(org, a, "e2", &cb, "business_app", "text", D + HOUR + 600),
        // Meta's raw status (message_events only; the funnel reads messages.status).
        record(
            "whatsapp.events",
            json!({"id": "w1:sent", "org": org, "phone_number_id": a,
            "received_at_ms": ms(D + HOUR + 52), "kind": "status", "wamid": "w1", "conversation_id": ca,
            "status": "sent", "recipient_id": "1555", "at": D + HOUR + 52, "raw": {}}),
        ),
        // Our sends and the Graph API's answers.
        send(
            org,
            a,
            "o1",
            &ca,
            "ann",
            Some("order_update"),
            ms(D + HOUR + 50),
        ),
        send(org, a, "o2", &ca, "ann", None, ms(D + HOUR + 400) + 500),
        send(
            org,
            b,
            "o3",
            &cc,
            "bob",
            Some("order_update"),
            ms(D + 2 * HOUR + 200),
        ),
        result(org, a, "o1", &ca, Some("w1"), None, ms(D + HOUR + 51)),
        result(org, a, "o2", &ca, Some("w2"), None, ms(D + HOUR + 401)),
        result(
            org,
            b,
            "o3",
            &cc,
            None,
            Some((131047, "Re-engagement message")),
            ms(D + 2 * HOUR + 201),
        ),
        // Status transitions, as the status processor emits them.
        status(org, a, "w1", None, "accepted", D + HOUR + 51, None),
        status(org, a, "w1", Some("accepted"), "sent", D + HOUR + 52, None),
        status(org, a, "w1", Some("sent"), "delivered", D + HOUR + 62, None),
        status(
            org,
            a,
            "w1",
            Some("delivered"),
            "read",
            D + HOUR + 122,
            None,
        ),
        status(org, a, "w2", None, "accepted", D + HOUR + 401, None),
        status(org, a, "w2", Some("accepted"), "sent", D + HOUR + 402, None),
        status(org, a, "w2", Some("sent"), "read", D + HOUR + 500, None),
        status(org, a, "w5", None, "sent", D + 2000, None),
        status(org, a, "w5", Some("sent"), "delivered", D + 2002, None),
        status(org, a, "w6", None, "sent", D + 3000, None),
        status(org, a, "w6", Some("sent"), "delivered", D + 3004, None),
        status(
            org,
            b,
            "outbound:o3",
            None,
            "failed",
            D + 2 * HOUR + 201,
            Some((131047, "Re-engagement message")),
        ),
        status(org, b, "w4", None, "sent", D + 2 * HOUR + 300, None),
        status(
            org,
            b,
            "w4",
            Some("sent"),
            "delivered",
            D + 2 * HOUR + 330,
            None,
        ),
        status(
            org,
            b,
            "w4",
            Some("delivered"),
            "failed",
            D + 2 * HOUR + 400,
            Some((131026, "Message undeliverable")),
        ),
        // Conversations: ca opens, goes to ann, is resolved, and reopens the next day;
        // cb goes to the Business app and is resolved; cc goes to bob, and a claim by
        // ann is rejected.
        assignment(org, a, "a1", &ca, "open", None, None, ms(D + HOUR) + 100),
        assignment(
            org,
            a,
            "a2",
            &ca,
            "assigned",
            Some("ann"),
            None,
            ms(D + HOUR) + 100,
        ),
        assignment(
            org,
            a,
            "a3",
            &ca,
            "resolved",
            None,
            None,
            ms(D + HOUR + 1800),
        ),
        assignment(
            org,
            a,
            "a4",
            &cb,
            "open",
            None,
            None,
            ms(D + HOUR + 100) + 50,
        ),
        assignment(
            org,
            a,
            "a5",
            &cb,
            "assigned",
            Some("business_app"),
            None,
            ms(D + HOUR + 300) + 200,
        ),
        assignment(
            org,
            a,
            "a6",
            &cb,
            "resolved",
            None,
            None,
            ms(D + HOUR + 1000),
        ),
        assignment(
            org,
            b,
            "a7",
            &cc,
            "open",
            None,
            None,
            ms(D + 2 * HOUR + 100) + 500,
        ),
        assignment(
            org,
            b,
            "a8",
            &cc,
            "assigned",
            Some("bob"),
            None,
            ms(D + 2 * HOUR + 100) + 500,
        ),
        assignment(
            org,
            b,
            "a9",
            &cc,
            "assigned",
            Some("bob"),
            Some("already assigned"),
            ms(D + 2 * HOUR + 150),
        ),
        assignment(
            org,
            a,
            "a10",
            &ca,
            "open",
            None,
            None,
            ms(D + DAY + 100) + 100,
        ),
        assignment(
            org,
            a,
            "a11",
            &ca,
            "assigned",
            Some("ann"),
            None,
            ms(D + DAY + 100) + 100,
        ),
    ]
}

/// Rows as `[column values...]` in the panel's column order, for compact asserts.
fn table(data: &PanelData) -> Vec<Vec<Value>> {
    data.rows
        .iter()
        .map(|row| data.columns.iter().map(|c| row[&c.name].clone()).collect())
        .collect()
}

async fn seeded(name: &str) -> Seeded {
    let s = Seeded::new(name).await;
    let records = story(&s.org, &s.a, &s.b);
    s.write(&records).await;
    // The same events again (a redelivery, a re-consumed batch), and another org's.
    s.write(&records).await;
    let other = format!("other-{}", s.org);
    s.write(&story(&other, &s.a, &s.b)[..10]).await;
    s
}

#[tokio::test]
async fn every_panel_returns_the_exact_figures() {
    let s = seeded("panels").await;
    let (a, b) = (s.a.as_str(), s.b.as_str());
    let h1 = D + HOUR;
    let h2 = D + 2 * HOUR;

    assert_eq!(
        table(&s.panel("messages_per_hour").await),
        vec![
            vec![
                json!(h1),
                json!("inbound"),
                json!("customer"),
                json!("image"),
                json!(1)
            ],
            vec![
                json!(h1),
                json!("inbound"),
                json!("customer"),
                json!("text"),
                json!(1)
            ],
            vec![
                json!(h1),
                json!("outbound"),
                json!("api"),
                json!("template"),
                json!(1)
            ],
            vec![
                json!(h1),
                json!("outbound"),
                json!("api"),
                json!("text"),
                json!(1)
            ],
            vec![
                json!(h1),
                json!("outbound"),
                json!("business_app"),
                json!("text"),
                json!(2)
            ],
            vec![
                json!(h2),
                json!("inbound"),
                json!("customer"),
                json!("text"),
                json!(1)
            ],
            vec![
                json!(h2),
                json!("outbound"),
                json!("api"),
                json!("template"),
                json!(1)
            ],
        ]
    );

    // accepted, sent, delivered, read, failed: w2's read-before-delivered still
    // counts as delivered; a send the API refused is failed but never accepted.
    assert_eq!(
        table(&s.panel("delivery_funnel").await),
        vec![
            vec![json!(a), json!(4), json!(4), json!(4), json!(2), json!(0)],
            vec![json!(b), json!(1), json!(1), json!(1), json!(0), json!(2)],
        ]
    );

    // attempted, accepted, sent, delivered, read, failed per template; messages with
    // no known send (w4, w5, w6) count under ''.
    assert_eq!(
        table(&s.panel("delivery_funnel_by_template").await),
        vec![
            vec![
                json!(a),
                json!(""),
                json!(1),
                json!(3),
                json!(3),
                json!(3),
                json!(1),
                json!(0)
            ],
            vec![
                json!(a),
                json!("order_update"),
                json!(1),
                json!(1),
                json!(1),
                json!(1),
                json!(1),
                json!(0)
            ],
            vec![
                json!(b),
                json!(""),
                json!(0),
                json!(1),
                json!(1),
                json!(1),
                json!(0),
                json!(1)
            ],
            vec![
                json!(b),
                json!("order_update"),
                json!(1),
                json!(0),
                json!(0),
                json!(0),
                json!(0),
                json!(1)
            ],
        ]
    );

    // a: sent→delivered 2, 4, 10 s (w5, w6, w1); delivered→read 60 s (w1).
    // b: w4 30 s; nothing read.
    let latency = table(&s.panel("delivery_latency").await);
    assert_eq!(
        latency[0][..4],
        [json!(a), json!(3), json!([4, 10, 10]), json!(1)]
    );
    assert_eq!(latency[0][4], json!([60, 60, 60]));
    assert_eq!(
        latency[1][..4],
        [json!(b), json!(1), json!([30, 30, 30]), json!(0)]
    );
    assert_eq!(latency.len(), 2);

    assert_eq!(
        table(&s.panel("failures_by_code").await),
        vec![
            vec![json!(131026), json!("Message undeliverable"), json!(1)],
            vec![json!(131047), json!("Re-engagement message"), json!(1)],
        ]
    );

    assert_eq!(
        table(&s.panel("conversations").await),
        vec![
            vec![json!(D), json!(3), json!(2)],
            vec![json!(D + DAY), json!(1), json!(0)],
        ]
    );

    // ann: 49.9 s to answer ca; her reassignment on day 2 is unanswered.
    // bob: 99.5 s. Business app: assigned by echo e1, next reply e2 299.8 s later.
    let first = table(&s.panel("agent_first_response").await);
    assert_eq!(first.len(), 3);
    assert_eq!(first[0][..3], [json!("ann"), json!(2), json!(1)]);
    assert_eq!(first[1][..3], [json!("bob"), json!(1), json!(1)]);
    assert_eq!(first[2][..3], [json!("business_app"), json!(1), json!(1)]);
    assert_eq!(first[0][3], json!([49.9, 49.9, 49.9]));
    assert_eq!(first[1][3], json!([99.5, 99.5, 99.5]));
    assert_eq!(first[2][3], json!([299.8, 299.8, 299.8]));

    // ca: open at +3600.1 s, resolved at +5400 s by ann; cb: +3700.05 to +4600 s.
    assert_eq!(
        table(&s.panel("agent_resolution").await),
        vec![
            vec![json!("ann"), json!(1), json!([1799.9, 1799.9, 1799.9])],
            vec![
                json!("business_app"),
                json!(1),
                json!([899.95, 899.95, 899.95])
            ],
        ]
    );

    assert_eq!(
        table(&s.panel("agent_load").await),
        vec![
            vec![json!(D), json!("ann"), json!(1)],
            vec![json!(D), json!("bob"), json!(1)],
            vec![json!(D), json!("business_app"), json!(1)],
            vec![json!(D + DAY), json!("ann"), json!(1)],
        ]
    );

    assert_eq!(
        table(&s.panel("reply_share").await),
        vec![vec![json!(D), json!(3), json!(2)]]
    );

    // Scoped by org: the other org's events are in the same tables, not in these
    // figures, and its own panels see only its own.
    let mine = s.panel("messages_per_hour").await;
    let other = s
        .panel_for("messages_per_hour", &format!("other-{}", s.org))
        .await;
    assert_eq!(table(&other), table(&mine));
    let other = s
        .panel_for("delivery_funnel", &format!("other-{}", s.org))
        .await;
    // It has sends but no statuses: nothing crossed any step.
    let zeros = |n: &str| vec![json!(n), json!(0), json!(0), json!(0), json!(0), json!(0)];
    assert_eq!(table(&other), vec![zeros(a), zeros(b)]);
    s.drop().await;
}

#[tokio::test]
async fn a_duplicate_event_leaves_one_row_and_the_same_figures() {
    let s = Seeded::new("dedup").await;
    let records = story(&s.org, &s.a, &s.b);
    s.write(&records).await;
    let before = (
        s.panel("delivery_funnel").await,
        s.panel("failures_by_code").await,
        s.panel("agent_load").await,
    );
    let rows = (
        s.count("status_transitions").await,
        s.count("assignments").await,
    );
    assert_eq!(rows, (15, 11));

    // One status and one assignment again, alone and inside a batch that repeats
    // them twice over.
    let failed = records[27].clone();
    let assigned = records[29].clone();
    s.write(std::slice::from_ref(&failed)).await;
    s.write(&[failed.clone(), assigned.clone(), failed, assigned])
        .await;

    assert_eq!(
        (
            s.count("status_transitions").await,
            s.count("assignments").await
        ),
        rows
    );
    let after = (
        s.panel("delivery_funnel").await,
        s.panel("failures_by_code").await,
        s.panel("agent_load").await,
    );
    assert_eq!(after, before);
    s.drop().await;
}

#[tokio::test]
async fn unreadable_records_are_rejected_and_the_rest_written() {
    let s = Seeded::new("reject").await;
    let good = status(&s.org, &s.a, "wz", None, "sent", D, None);
    let bad = record("messages.status", json!({"id": "no org"}));
    let mut sink = ClickHouseSink::new(&s.config);
    let rejects = sink.handle(&[bad, good]).await.unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].index, 0);
    assert!(
        rejects[0].reason.contains("messages.status"),
        "{}",
        rejects[0].reason
    );
    assert_eq!(s.count("status_transitions").await, 1);
    s.drop().await;
}

#[tokio::test]
async fn the_api_serves_panels_only_within_an_org_scope() {
    let s = seeded("http").await;
    let open = api::analytics::router(s.client.clone());
    let scoped =
        api::analytics::router(s.client.clone()).layer(axum::Extension(OrgScope(s.org.clone())));
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    for app in [open, scoped] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(30), http.get(url).send())
                .await
                .unwrap()
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let range = format!("from={}&to={}", D * 1000, (D + 2 * DAY) * 1000);
    let (status, _) = get(format!(
        "{}/v1/analytics/panels/reply_share?{range}",
        urls[0]
    ))
    .await;
    assert_eq!(status, 403, "no scope, no data");
    let (status, body) = get(format!("{}/v1/analytics/panels", urls[1])).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["panels"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    // A client-sent org is ignored: the scope decides.
    let (status, body) = get(format!(
        "{}/v1/analytics/panels/reply_share?{range}&org=someone-else",
        urls[1]
    ))
    .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["rows"],
        json!([{"day": D, "api": 3, "business_app": 2}])
    );
    let (status, _) = get(format!("{}/v1/analytics/panels/nope?{range}", urls[1])).await;
    assert_eq!(status, 404);
    let (status, _) = get(format!(
        "{}/v1/analytics/panels/reply_share?from=5&to=1",
        urls[1]
    ))
    .await;
    assert_eq!(status, 400);
    let (status, page) = get(format!("{}/dashboards", urls[1])).await;
    assert_eq!(status, 200);
    assert!(page.contains("/dashboards/chart.umd.min.js"));
    let (status, js) = get(format!("{}/dashboards/chart.umd.min.js", urls[1])).await;
    assert_eq!(status, 200);
    assert!(js.contains("Chart.js v4"));
    s.drop().await;
}

#[tokio::test]
async fn a_latency_pairs_steps_written_in_different_batches() {
    let s = Seeded::new("latency").await;
    let (org, a) = (s.org.clone(), s.a.clone());
    s.write(&[status(&org, &a, "wx", None, "sent", D + 100, None)])
        .await;
    s.write(&[status(
        &org,
        &a,
        "wx",
        Some("sent"),
        "delivered",
        D + 107,
        None,
    )])
    .await;
    s.write(&[status(
        &org,
        &a,
        "wx",
        Some("delivered"),
        "read",
        D + 1107,
        None,
    )])
    .await;
    // A step whose predecessor was never written has no latency (not a bogus one).
    s.write(&[status(
        &org,
        &a,
        "wy",
        Some("sent"),
        "delivered",
        D + 200,
        None,
    )])
    .await;
    let latency = table(&s.panel("delivery_latency").await);
    assert_eq!(
        latency,
        vec![vec![
            json!(a),
            json!(1),
            json!([7, 7, 7]),
            json!(1),
            json!([1000, 1000, 1000])
        ]]
    );
    s.drop().await;
}

#[tokio::test]
async fn a_status_finds_its_template_across_batches() {
    let s = Seeded::new("template").await;
    let (org, a) = (s.org.clone(), s.a.clone());
    let conv = format!("{a}-c");
    s.write(&[send(
        &org,
        &a,
        "t1",
        &conv,
        "ann",
        Some("welcome"),
        D * 1000,
    )])
    .await;
    s.write(&[result(
        &org,
        &a,
        "t1",
        &conv,
        Some("wt1"),
        None,
        D * 1000 + 300,
    )])
    .await;
    s.write(&[status(&org, &a, "wt1", None, "accepted", D, None)])
        .await;
    s.write(&[status(
        &org,
        &a,
        "wt1",
        Some("accepted"),
        "sent",
        D + 1,
        None,
    )])
    .await;
    s.write(&[send(
        &org,
        &a,
        "t2",
        &conv,
        "ann",
        Some("welcome"),
        D * 1000 + 5000,
    )])
    .await;
    s.write(&[result(
        &org,
        &a,
        "t2",
        &conv,
        None,
        Some((131047, "Re-engagement message")),
        D * 1000 + 5300,
    )])
    .await;
    s.write(&[status(
        &org,
        &a,
        "outbound:t2",
        None,
        "failed",
        D + 5,
        Some((131047, "Re-engagement message")),
    )])
    .await;
    assert_eq!(
        table(&s.panel("delivery_funnel_by_template").await),
        vec![vec![
            json!(a),
            json!("welcome"),
            json!(2),
            json!(1),
            json!(1),
            json!(0),
            json!(0),
            json!(1)
        ]]
    );
    s.drop().await;
}
