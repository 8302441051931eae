//! The agent console in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `scripts/stack install`)
//! against `coexist all` on the real stack, with the Graph simulator as Meta.
//!
//! One stack and one story, in the order an org lives it:
//! 1. ann and bob log in with codes sent over WhatsApp (read off the simulator);
//!    bob sets himself away;
//! 2. a customer writes: the conversation is in ann's "mine" within 2 s, never in
//!    bob's;
//! 3. ann replies: the simulator gets exactly one send, and its ticks only move
//!    forward, to read;
//! 4. bob tries to claim it and sees the router's refusal;
//! 5. a conversation whose window closed: free text disabled with the reason, a
//!    template goes out instead;
//! 6. ann's network is cut for 10 s while the customer writes twice: both messages
//!    show once after it comes back;
//! 7. an admin invites cy in the admin pages, and cy logs in.
//!
//! Along the way it writes screenshots to `target/screenshots/` and runs axe-core
//! (from npm, `tests/console/`) in the page: no serious or critical violation.

mod api_support;
mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api_support::{ApiStack, Org};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{GraphSimulator, free_port, now_ms, read_until, unique, wait_for};

const SEALING_KEY: &str = "Y29uc29sZS10ZXN0LXNlYWxpbmcta2V5LTMyYnl0ZXM=";

// ---------------------------------------------------------------- the browser

/// `chromedriver` on a free port, killed on drop.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver not found: run scripts/stack install (Debian's chromium-driver)");
        let port = free_port();
        let child = std::process::Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for(
            "chromedriver to answer",
            Duration::from_secs(30),
            || async { http.get(format!("{url}/status")).send().await.is_ok() },
        )
        .await;
        Self { child, url }
    }

    /// A new browser with its own profile (so its own localStorage: its own login).
    async fn browser(&self, width: u32, height: u32) -> Client {
        let profile = std::env::temp_dir().join(format!("coexist-console-{}", unique()));
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // This machine's network is closed: without the background-networking
                // flags Chromium keeps trying to reach Google's hosts.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        }))
        .unwrap();
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_css(c: &Client, css: &str, what: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: no {css} after 30 s: {e}"))
}

async fn present(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn visible(c: &Client, css: &str) -> bool {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether a command failed only for the moment: the page re-rendered the element
/// between finding and using it (the inbox redraws as the feed brings news), or does
/// not show it yet (after a load, `#app` stays hidden until the console has restored
/// its session). Find it again.
fn is_transient(error: &fantoccini::error::CmdError) -> bool {
    let error = error.to_string();
    error.contains("stale element") || error.contains("element not interactable")
}

async fn fill(c: &Client, css: &str, text: &str) {
    let start = Instant::now();
    loop {
        let e = wait_css(c, css, "a field to fill").await;
        match async {
            e.clear().await?;
            e.send_keys(text).await
        }
        .await
        {
            Ok(()) => return,
            Err(error) if is_transient(&error) && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("fill {css}: {error}"),
        }
    }
}

async fn click(c: &Client, css: &str) {
    let start = Instant::now();
    loop {
        match wait_css(c, css, "a control to click").await.click().await {
            Ok(_) => return,
            Err(error) if is_transient(&error) && start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("click {css}: {error}"),
        }
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until `check` holds in the page, polling every 100 ms.
async fn until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until_on(None, what, limit, check).await;
}

/// [`until`], showing what the console `c` knows if it times out.
async fn until_on<F, Fut>(c: Option<&Client>, what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > limit {
            let page = match c {
                Some(c) => page_state(c).await,
                None => String::new(),
            };
            panic!("{what}: not within {limit:?}; {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the MongoDB sink has written message `wamid` of the world's org.
async fn message_stored(w: &World, wamid: &str) -> bool {
    w.stack
        .mongo
        .collection::<mongodb::bson::Document>(store::inbox::MESSAGES.name)
        .find_one(mongodb::bson::doc! { "_id": store::key(&w.org.org, wamid) })
        .await
        .is_ok_and(|found| found.is_some())
}

/// What the console shows and knows, for a failure message.
async fn page_state(c: &Client) -> String {
    let state = c
        .execute(
            "return { errors: window.consoleErrors, notice: document.getElementById('notice').textContent,
                      live: document.getElementById('live').textContent, url: location.href,
                      feed: window.feedLog, list: document.getElementById('conversations').textContent,
                      me: window.consoleState.me, tab: window.consoleState.tab,
                      open: window.consoleState.conversation,
                      composer: document.getElementById('composer-text').disabled,
                      convs: [...window.consoleState.convs.values()] }",
            vec![],
        )
        .await;
    format!("{state:?}")
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// axe-core's serious and critical violations on the page as it is now.
async fn accessibility(c: &Client, page: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/console/node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: scripts/test runs `npm ci --prefix tests/console`",
            path.display()
        )
    });
    c.execute(&axe, vec![]).await.expect("axe loads");
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] }).then(r => done(
               r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                 .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))));",
            vec![],
        )
        .await
        .expect("axe runs");
    assert_eq!(found, json!([]), "accessibility of {page}");
}

// ---------------------------------------------------------------- a cuttable network

/// A TCP proxy between the browsers and the API that can be cut: every open
/// connection is dropped and new ones are refused until it is restored.
struct Network {
    url: String,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Network {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, watch) = tokio::sync::watch::channel(0u64);
        let is_cut = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if is_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_now = watch.clone();
                // Only a cut after this connection was made ends it.
                cut_now.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Self {
            url,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- the org

struct World {
    stack: ApiStack,
    sim: GraphSimulator,
    org: Org,
    secret: String,
    net: Network,
}

impl World {
    fn webhook_url(&self) -> String {
        format!(
            "http://{}/webhooks/whatsapp",
            self.stack.config.ingest.listen
        )
    }

    /// A customer's text, as Meta sends it, `age_ms` old.
    async fn customer_writes(&self, customer: &str, wamid: &str, text: &str, age_ms: i64) {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "waba-console", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "15550100", "phone_number_id": self.org.phone_number_id },
                "contacts": [{ "wa_id": customer, "profile": { "name": format!("Customer {}", &customer[customer.len() - 3..]) } }],
                "messages": [{
                    "from": customer, "id": wamid, "timestamp": ((now_ms() - age_ms) / 1000).to_string(),
                    "type": "text", "text": { "body": text }
                }]
            }}]}]
        })
        .to_string();
        let status = self
            .stack
            .http
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                ingest::signature::sign(body.as_bytes(), &self.secret),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }

    fn conversation_id(&self, customer: &str) -> String {
        format!("{}-{customer}", self.org.phone_number_id)
    }

    /// What the simulator accepted for the number, of `kind`, to `to`.
    async fn sent(&self, kind: &str, to: &str) -> Vec<Value> {
        self.sim
            .sent(&self.org.phone_number_id)
            .await
            .into_iter()
            .filter(|r| r.kind == kind && r.to.as_deref() == Some(to))
            .map(|r| r.body)
            .collect()
    }

    /// The newest login code WhatsApp delivered to `phone`, read where the demo's
    /// newcomer reads it (`GET /_sim/graph/last_code`), once a new one arrived.
    async fn code_for(&self, phone: &str, after: usize) -> String {
        let start = Instant::now();
        while self.sent("template", phone).await.len() <= after {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no login code on WhatsApp"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let url = format!("{}/_sim/graph/last_code?to={phone}", self.sim.url);
        let answer = self.stack.http.get(url).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap().trim().to_string()
    }

    /// Logs `phone` in through the console's login page.
    async fn login(&self, c: &Client, phone: &str) {
        c.goto(&format!("{}/app", self.net.url)).await.unwrap();
        let before = self.sent("template", phone).await.len();
        fill(c, "#login-contact", &format!("+{phone}")).await;
        click(c, "#login-submit").await;
        until("the code step", Duration::from_secs(15), || async {
            visible(c, "#login-code").await
        })
        .await;
        let code = self.code_for(phone, before).await;
        fill(c, "#login-code", &code).await;
        click(c, "#login-submit").await;
        until("logged in", Duration::from_secs(15), || async {
            !text_of(c, "#whoami").await.is_empty()
        })
        .await;
        until("the live feed", Duration::from_secs(15), || async {
            text_of(c, "#live").await == "live"
        })
        .await;
    }

    async fn admin(&self, token: &str, method: &str, path: &str, body: Value) {
        let (status, _, answer) = self.stack.call(method, path, Some(token), Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
    }
}

/// The rank of a tick: they may only move forward.
fn rank(status: &str) -> u8 {
    match status {
        "accepted" => 1,
        "sent" => 2,
        "delivered" => 3,
        "read" => 4,
        "failed" => 5,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_work_the_shared_inbox_in_real_browsers() {
    let id = unique();
    let number = format!("52{id}");
    let (token, secret) = (
        format!("console-token-{id}"),
        format!("console-secret-{id}"),
    );
    let ingest_port = free_port();
    let sim = GraphSimulator::start(|c| {
        c.simulate.graph.callbacks = true;
        c.simulate.graph.status_delay_ms = 700;
        c.simulate.graph.webhook_url = format!("http://127.0.0.1:{ingest_port}/webhooks/whatsapp");
        c.simulate.graph.app_secret = runtime::Secret::new(&secret);
    })
    .await;
    let graph_url = sim.url.clone();
    let mut stack = ApiStack::start_all("console", |c| {
        c.kafka.new_group_start = now_ms().to_string();
        c.ingest.listen = format!("127.0.0.1:{ingest_port}");
        c.ingest.app_secrets = Vec::new();
        c.ingest.numbers = Vec::new();
        c.ingest.default_org = String::new();
        c.processors.router.router.orgs = BTreeMap::new();
        c.processors.router.router.numbers = BTreeMap::new();
        c.graph.base_url = graph_url;
        c.graph.access_token = runtime::Secret::default();
        c.graph.numbers = Vec::new();
        c.graph.only_listed_numbers = false;
        c.sinks.mqtt.client_id = format!("test-sink-console-{}", unique());
        c.sealing.keys = vec![runtime::seal::SealKey {
            id: "test".into(),
            key: runtime::Secret::new(SEALING_KEY),
        }];
        c.metrics.listen = String::new();
    })
    .await;
    stack.wait_ingest().await;
    stack.credentials = (token.clone(), secret.clone());
    let org = stack.org_with(&format!("console-{id}"), &number).await;
    let admin = stack.login(&org, &org.admin_phone, "setup").await.access;
    let net = Network::start(stack.config.api.listen.clone()).await;
    let w = World {
        stack,
        sim,
        org,
        secret,
        net,
    };
    let phone = |n: u8| format!("1555{n}{}", &id[id.len() - 6..]);
    let (ann_phone, bob_phone, cy_phone) = (phone(1), phone(2), phone(3));
    for (agent, p) in [("ann", &ann_phone), ("bob", &bob_phone)] {
        w.admin(
            &admin,
            "POST",
            "/v1/agents",
            json!({ "agent_id": agent, "name": agent, "role": "agent", "capacity": 5, "phone": format!("+{p}") }),
        )
        .await;
    }
    w.admin(
        &admin,
        "PUT",
        "/v1/routing-policy",
        json!({ "policy": { "kind": "least_loaded" } }),
    )
    .await;

    let driver = Driver::start().await;
    let ann = driver.browser(1280, 900).await;
    let bob = driver.browser(1280, 900).await;

    // The login page is accessible before anyone logs in.
    ann.goto(&format!("{}/app", w.net.url)).await.unwrap();
    wait_css(&ann, "#login-contact", "the login page").await;
    accessibility(&ann, "the login page").await;
    screenshot(&ann, "login").await;

    // 1. Both log in; bob steps away (the router gives away-agents nothing new).
    w.login(&ann, &ann_phone).await;
    w.login(&bob, &bob_phone).await;
    let select = wait_css(&bob, "#presence", "the presence switch").await;
    select.select_by_value("away").await.unwrap();
    // The console's presence device is its session (PresenceEvent::table_key).
    let session = bob
        .execute("return window.consoleState.me.session_id", vec![])
        .await
        .unwrap();
    read_until(
        &w.stack.config.kafka.brokers,
        events::topics::AGENTS_PRESENCE,
        &format!("{}/bob/{}", w.org.org, session.as_str().unwrap()),
        "\"state\":\"away\"",
    )
    .await;

    // A first customer warms the pipeline up (group joins, first fetches): the 2 s
    // below are about a running system, not a cold start.
    let warm = format!("1650{}", &id[id.len() - 7..]);
    w.customer_writes(&warm, &format!("wamid.warm.{id}"), "hello?", 0)
        .await;
    let warm_row = format!(
        "#conversations li[data-conversation='{}']",
        w.conversation_id(&warm)
    );
    let start = Instant::now();
    while present(&ann, &warm_row).await != 1 {
        if start.elapsed() > Duration::from_secs(90) {
            let (_, _, all) = w
                .stack
                .call("GET", "/v1/conversations", Some(&admin), None)
                .await;
            panic!(
                "the warm-up conversation never in ann's mine: {all}; ann's page: {}",
                page_state(&ann).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. A customer writes: in ann's "mine" within 2 s, never in bob's.
    let customer = format!("1651{}", &id[id.len() - 7..]);
    let conversation = w.conversation_id(&customer);
    let row = format!("#conversations li[data-conversation='{conversation}']");
    let sent_at = Instant::now();
    w.customer_writes(
        &customer,
        &format!("wamid.first.{id}"),
        "Is my order on its way?",
        0,
    )
    .await;
    while present(&ann, &row).await != 1 {
        if sent_at.elapsed() > Duration::from_secs(30) {
            let (_, _, all) = w
                .stack
                .call("GET", "/v1/conversations", Some(&admin), None)
                .await;
            panic!(
                "the conversation never in ann's mine: {all}; ann's page: {}",
                page_state(&ann).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown_after = sent_at.elapsed();
    eprintln!("webhook -> ann's inbox: {} ms", shown_after.as_millis());
    assert!(
        shown_after <= Duration::from_secs(2),
        "the conversation took {shown_after:?} to reach ann's inbox"
    );
    screenshot(&ann, "inbox").await;
    for _ in 0..10 {
        assert_eq!(present(&bob, &row).await, 0, "in bob's mine too");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(&bob, "[data-tab=queue]").await;
    until_on(
        Some(&bob),
        "gone from bob's queue (ann owns it)",
        Duration::from_secs(5),
        || async { present(&bob, &row).await == 0 },
    )
    .await;

    // 3. ann replies: one send reaches Meta; the ticks go forward to read.
    click(&ann, &format!("{row} a")).await;
    wait_css(
        &ann,
        &format!("li[data-wamid='wamid.first.{id}']"),
        "the customer's message",
    )
    .await;
    accessibility(&ann, "a conversation").await;
    fill(&ann, "#composer-text", "It ships today.").await;
    click(&ann, "#composer-send").await;
    let mut seen: Vec<String> = Vec::new();
    let start = Instant::now();
    loop {
        let status = match ann.find(Locator::Css("li.msg.out[data-status]")).await {
            Ok(e) => e
                .attr("data-status")
                .await
                .ok()
                .flatten()
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        if !status.is_empty() && seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "read" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never read: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ranks: Vec<u8> = seen.iter().map(|s| rank(s)).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "ticks went backwards: {seen:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let texts = w.sent("text", &customer).await;
    assert_eq!(texts.len(), 1, "sends to the customer: {texts:?}");
    assert_eq!(texts[0]["text"]["body"], "It ships today.");
    screenshot(&ann, "conversation").await;

    // 4. bob tries to take it: the router says no, and why.
    bob.goto(&format!("{}/app#/c/{conversation}", w.net.url))
        .await
        .unwrap();
    click(&bob, "#act-claim").await;
    until("the router's refusal", Duration::from_secs(30), || async {
        text_of(&bob, "#notice").await.starts_with("Refused")
    })
    .await;
    let refusal = text_of(&bob, "#notice").await;
    assert!(
        refusal.contains("ann"),
        "the refusal names the owner: {refusal}"
    );

    // 5. A conversation whose window closed: no free text, a template instead.
    let late = format!("1652{}", &id[id.len() - 7..]);
    w.customer_writes(
        &late,
        &format!("wamid.late.{id}"),
        "hello from yesterday",
        25 * 3600 * 1000,
    )
    .await;
    let late_row = format!(
        "#conversations li[data-conversation='{}']",
        w.conversation_id(&late)
    );
    until_on(
        Some(&ann),
        "the late conversation in ann's inbox",
        Duration::from_secs(30),
        || async { present(&ann, &late_row).await == 1 },
    )
    .await;
    click(&ann, &format!("{late_row} a")).await;
    until_on(
        Some(&ann),
        "free text disabled",
        Duration::from_secs(10),
        || async {
            let disabled = ann
                .execute(
                    "return document.getElementById('composer-text').disabled",
                    vec![],
                )
                .await;
            matches!(disabled, Ok(Value::Bool(true)))
        },
    )
    .await;
    until_on(
        Some(&ann),
        "the reason shown",
        Duration::from_secs(10),
        || async {
            text_of(&ann, "#composer-reason")
                .await
                .contains("window closed")
        },
    )
    .await;
    click(&ann, "#open-templates").await;
    until("templates listed", Duration::from_secs(15), || async {
        present(&ann, "#template-select option").await > 1
    })
    .await;
    let pick = ann
        .execute(
            "const s = document.getElementById('template-select');
             const i = [...s.options].findIndex(o => o.value !== '');
             s.selectedIndex = i; s.dispatchEvent(new Event('change'));
             return s.options[i].textContent;",
            vec![],
        )
        .await
        .unwrap();
    for (i, input) in ann
        .find_all(Locator::Css(".template-param"))
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        input.send_keys(&format!("value {}", i + 1)).await.unwrap();
    }
    click(&ann, "#template-send").await;
    wait_for("the template at Meta", Duration::from_secs(30), || async {
        !w.sent("template", &late).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.sent("template", &late).await.len(),
        1,
        "one template ({pick})"
    );
    assert!(
        w.sent("text", &late).await.is_empty(),
        "no free text outside the window"
    );

    // 6. ann's network goes for 10 s while the customer writes twice.
    click(&ann, &format!("{row} a")).await;
    wait_css(
        &ann,
        &format!("li[data-wamid='wamid.first.{id}']"),
        "back in the first conversation",
    )
    .await;
    w.net.cut();
    let during = [format!("wamid.cut1.{id}"), format!("wamid.cut2.{id}")];
    w.customer_writes(&customer, &during[0], "are you there?", 0)
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.customer_writes(&customer, &during[1], "hello??", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.net.restore();
    for wamid in &during {
        let css = format!("li[data-wamid='{wamid}']");
        // The store first, then the page: a failure says which of the two missed it.
        until(
            "a message sent during the cut, in MongoDB",
            Duration::from_secs(30),
            || async { message_stored(&w, wamid).await },
        )
        .await;
        until_on(
            Some(&ann),
            "a message sent during the cut, shown",
            Duration::from_secs(30),
            || async { present(&ann, &css).await >= 1 },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for wamid in &during {
        let css = format!("li[data-wamid='{wamid}']");
        assert_eq!(present(&ann, &css).await, 1, "{wamid} shown once");
    }

    // 7. The admin invites cy, who then logs in.
    click(&bob, "#logout").await;
    wait_css(&bob, "#login-contact", "logged out").await;
    w.login(&bob, &w.org.admin_phone).await;
    bob.goto(&format!("{}/app#/admin/agents", w.net.url))
        .await
        .unwrap();
    wait_css(&bob, "#agents tr[data-agent=ann]", "the agents page").await;
    fill(&bob, "#invite-id", "cy").await;
    fill(&bob, "#invite-name", "Cy").await;
    fill(&bob, "#invite-contact", &format!("+{cy_phone}")).await;
    click(&bob, "#invite-submit").await;
    wait_css(&bob, "#agents tr[data-agent=cy]", "cy listed").await;
    accessibility(&bob, "the agents page").await;
    screenshot(&bob, "admin-agents").await;
    bob.goto(&format!("{}/app#/admin/numbers", w.net.url))
        .await
        .unwrap();
    wait_css(
        &bob,
        &format!("#numbers tr[data-number='{number}']"),
        "the numbers page",
    )
    .await;
    accessibility(&bob, "the numbers page").await;
    screenshot(&bob, "admin-numbers").await;
    // The dashboards come with the console's login: no token to paste.
    bob.goto(&format!("{}/dashboards", w.net.url))
        .await
        .unwrap();
    until("the dashboards loaded", Duration::from_secs(30), || async {
        text_of(&bob, "#status").await.starts_with("updated")
    })
    .await;
    let page = bob.source().await.unwrap();
    assert!(
        !page.contains("[object Object]"),
        "an error shown as an object"
    );
    assert!(!visible(&bob, "#login").await, "asked to log in again");
    screenshot(&bob, "dashboards").await;
    bob.goto(&format!("{}/app", w.net.url)).await.unwrap();
    click(&bob, "#logout").await;
    wait_css(&bob, "#login-contact", "logged out").await;
    w.login(&bob, &cy_phone).await;
    let who = text_of(&bob, "#whoami").await;
    assert!(who.starts_with("Cy"), "logged in as {who}");

    // A phone-sized screen: the inbox alone, then the conversation alone.
    ann.set_window_size(390, 844).await.unwrap();
    ann.goto(&format!("{}/app#/", w.net.url)).await.unwrap();
    wait_css(&ann, &row, "the inbox on a phone").await;
    accessibility(&ann, "the inbox on a phone").await;
    screenshot(&ann, "phone-inbox").await;

    ann.close().await.unwrap();
    bob.close().await.unwrap();
    w.stack.stop().await;
}
