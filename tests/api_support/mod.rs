//! The API on the real stack for integration tests: `coexist api` and the mongo sink
//! (which writes the directory), in-process, on a unique MongoDB database, with orgs
//! bootstrapped through `directory.changes` as in production. Codes are read where a
//! customer's phone would get them: the authentication template on `messages.outbound`.

#![allow(dead_code)]

use std::time::Duration;

use coexist::Config;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub mod sse;

use crate::support::{Guard, free_port, read_until, unique, wait_for};

/// Known signing key, so tests can mint expired and foreign tokens.
pub const JWT_SECRET: &str = "api-test-jwt-secret";

pub struct ApiStack {
    pub config: Config,
    pub base: String,
    pub http: reqwest::Client,
    pub mongo: mongodb::Database,
    pub id: String,
    /// The `(access token, app secret)` bootstrapped orgs' numbers get: ingest
    /// checks webhooks for the number against that secret, and the sinks call the
    /// Graph API with that token (the directory wins over any static config).
    pub credentials: (String, String),
    /// Stops the roles and deletes the test's database, even on a panic.
    guard: Guard,
}

/// An org with its admin's phone and its business number.
#[derive(Clone, Debug)]
pub struct Org {
    pub org: String,
    pub admin_phone: String,
    pub phone_number_id: String,
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

impl ApiStack {
    pub async fn start(name: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_roles(name, tweak, false).await
    }

    /// `coexist all` (every role in one process) instead of the API and the mongo
    /// sink alone.
    pub async fn start_all(name: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_roles(name, tweak, true).await
    }

    async fn start_roles(name: &str, tweak: impl FnOnce(&mut Config), all: bool) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .try_init();
        let id = unique();
        let mut config = Config::load(None).expect("config from environment");
        config.kafka.client_id = format!("test-{name}-{id}");
        // This stack's records only: a fresh group at the earliest record would first
        // wade through every earlier test's backlog on the shared broker.
        config.kafka.new_group_start = crate::support::now_ms().to_string();
        config.api.listen = format!("127.0.0.1:{}", free_port());
        config.api.dev_mode = true;
        config.api.jwt_keys = vec![api::config::JwtKey {
            kid: "test".into(),
            secret: runtime::Secret::new(JWT_SECRET),
        }];
        config.sinks.mongo.database = format!("t_{name}_{id}").replace('-', "_");
        // The sink's fresh groups read from this moment: everything this stack needs
        // (its orgs' directory changes) comes later, and replaying the shared broker's
        // backlog from the earliest record took minutes once several stacks ran.
        config.kafka.new_group_start = crate::support::now_ms().to_string();
        config.sinks.batch.max_wait_ms = 5;
        if config.mqtt.password.is_empty() {
            config.mqtt.password = runtime::Secret::new("coexist-dev");
        }
        config.mqtt.topic_prefix = format!("coexist/t{id}");
        tweak(&mut config);
        // Another test may be creating the same topics right now: drift or a race is
        // fine here, the topics exist afterwards either way.
        let _ = coexist::roles::apply_topics(&config).await;
        // Only MongoDB's database is the test's own: ClickHouse's is shared.
        let mut guard = Guard::new().databases(&config, false);
        if all {
            guard.spawn(coexist::roles::all(config.clone(), guard.shutdown.clone()));
        } else {
            let (c, s) = (config.clone(), guard.shutdown.clone());
            guard.spawn(async move {
                coexist::roles::sink(&c, coexist::roles::SinkName::Mongo, s).await
            });
            let (c, s) = (config.clone(), guard.shutdown.clone());
            guard.spawn(async move { coexist::roles::api(&c, s).await });
        }
        let base = format!("http://{}", config.api.listen);
        let http = reqwest::Client::new();
        wait_for("api to answer", Duration::from_secs(60), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        let mongo = mongodb::Client::with_uri_str(config.sinks.mongo.uri.expose())
            .await
            .unwrap()
            .database(&config.sinks.mongo.database);
        Self {
            config,
            base,
            http,
            mongo,
            id,
            credentials: (
                "bootstrap-access-token".into(),
                crate::support::APP_SECRET.into(),
            ),
            guard,
        }
    }

    /// Runs another role beside the API and the mongo sink (ingest, a processor, a
    /// sink), stopped with the stack.
    pub fn spawn_role<F, Fut>(&mut self, role: F)
    where
        F: FnOnce(Config, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let fut = role(self.config.clone(), self.guard.shutdown.clone());
        self.guard.spawn(fut);
    }

    /// Bootstraps `name` (unique per run) with an admin and a business number, and
    /// waits until the mongo sink has written them.
    pub async fn org(&self, name: &str) -> Org {
        let n = unique();
        self.org_with(&format!("{name}-{n}"), &format!("8{n}"))
            .await
    }

    /// Bootstraps the org `org` with its admin and the business number
    /// `phone_number_id` (names the test chose, e.g. to configure roles with them).
    pub async fn org_with(&self, org: &str, phone_number_id: &str) -> Org {
        let n = unique();
        let org = org.to_string();
        let admin_phone = format!("1555{}", &n[n.len().saturating_sub(7)..]);
        let phone_number_id = phone_number_id.to_string();
        let args = coexist::admin::BootstrapArgs {
            org: org.clone(),
            name: None,
            agent_id: "admin".into(),
            email: Some(format!("admin@{org}.test")),
            phone: Some(admin_phone.clone()),
            phone_number_id: Some(phone_number_id.clone()),
            display_phone_number: "+1 555 0100".into(),
        };
        let (token, secret) = &self.credentials;
        coexist::admin::bootstrap_with(&self.config, &args, (token, secret))
            .await
            .unwrap();
        self.wait_doc("agents", &format!("{org}:admin")).await;
        self.wait_doc("business_numbers", &format!("{org}:{phone_number_id}"))
            .await;
        Org {
            org,
            admin_phone,
            phone_number_id,
        }
    }

    /// Waits until ingest (a role spawned beside the API) answers on its listener.
    pub async fn wait_ingest(&self) {
        let health = format!("http://{}/healthz", self.config.ingest.listen);
        wait_for("ingest to answer", Duration::from_secs(60), || async {
            self.http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Waits until the sink has written `_id` to `collection`.
    pub async fn wait_doc(&self, collection: &str, id: &str) -> Document {
        let coll = self.mongo.collection::<Document>(collection);
        let mut found = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while found.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{collection}/{id} never written"
            );
            found = coll.find_one(doc! { "_id": id }).await.unwrap();
            if found.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        found.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a JSON request; returns status, headers and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, headers, json)
    }

    /// Asks for a code for `phone`; returns the challenge id.
    pub async fn request_code(&self, phone: &str) -> String {
        let (status, _, body) = self
            .call(
                "POST",
                "/v1/auth/otp/request",
                None,
                Some(json!({ "phone": phone })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["challenge_id"].as_str().unwrap().to_string()
    }

    /// The code of `challenge_id`, as WhatsApp would deliver it: from the
    /// authentication template the API put on `messages.outbound`.
    pub async fn code_sent(&self, org: &Org, phone: &str, challenge_id: &str) -> String {
        let values = read_until(
            &self.config.kafka.brokers,
            events::topics::MESSAGES_OUTBOUND,
            &org.phone_number_id,
            challenge_id,
        )
        .await;
        let message: events::delivery::OutboundMessage =
            serde_json::from_str(values.last().unwrap()).unwrap();
        assert_eq!(message.to, phone);
        // On the topic the code is sealed: only the sealing keys open it (this test
        // runs the API in-process, so its keys are this process's).
        let sealed = message
            .sealed()
            .expect("the login code is sealed on the topic");
        let sealer = runtime::seal::Sealer::from_config(&self.config.sealing).unwrap();
        let payload: Value = serde_json::from_str(&sealer.open(&sealed).unwrap()).unwrap();
        assert_eq!(payload["type"], "template");
        let code = payload["template"]["components"][0]["parameters"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !values.last().unwrap().contains(&code),
            "the code is in clear on messages.outbound"
        );
        code
    }

    /// Logs in `phone` of `org` on `device`.
    pub async fn login(&self, org: &Org, phone: &str, device: &str) -> Tokens {
        let challenge = self.request_code(phone).await;
        let code = self.code_sent(org, phone, &challenge).await;
        let (status, _, body) = self
            .call(
                "POST",
                "/v1/auth/otp/verify",
                None,
                Some(json!({ "challenge_id": challenge, "code": code, "device_id": device })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        Tokens {
            access: body["access_token"].as_str().unwrap().into(),
            refresh: body["refresh_token"].as_str().unwrap().into(),
            session_id: body["session_id"].as_str().unwrap().into(),
        }
    }

    /// Stops the roles, letting them end; the database goes with the guard.
    pub async fn stop(mut self) {
        self.guard.shutdown.cancel();
        for task in self.guard.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}
