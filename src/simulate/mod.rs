//! `coexist simulate`: plays Meta's and Expo's side for demos, tests and load.
//! `inbound` sends signed inbound-message webhooks, in Meta's format, to the webhook
//! receiver; `serve` answers as the Graph API ([`graph`]) and as Expo's push service
//! ([`expo`]) on one port, so the real client code runs unchanged against it.

pub mod agents;
pub mod expo;
pub mod graph;
pub mod scenario;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `[simulate]`: how the stand-ins behave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulateConfig {
    pub graph: graph::GraphSimConfig,
}

/// What to send.
#[derive(Debug, Clone, clap::Args)]
pub struct InboundArgs {
    /// The webhook receiver (default: the configured ingest address).
    #[arg(long)]
    pub url: Option<String>,
    /// Webhooks per second.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How many to send; 0 sends until interrupted.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Customers writing in, spread over the configured business numbers.
    #[arg(long, default_value_t = 5)]
    pub contacts: u64,
}

/// The webhook body of one inbound text message, as Meta sends it.
pub fn inbound_text(
    phone_number_id: &str,
    contact: &str,
    name: &str,
    wamid: &str,
    text: &str,
    at: u64,
) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550783881", "phone_number_id": phone_number_id },
                    "contacts": [{ "profile": { "name": name }, "wa_id": contact }],
                    "messages": [{
                        "from": contact, "id": wamid, "timestamp": at.to_string(),
                        "type": "text", "text": { "body": text }
                    }]
                }
            }]
        }]
    })
}

const NAMES: &[&str] = &[
    "Sheena Nelson",
    "Pablo Morales",
    "Aiko Tanaka",
    "Femi Adeyemi",
    "Lena Novak",
    "Ravi Shah",
];
const TEXTS: &[&str] = &[
    "Hi! Is my order on its way?",
    "Can I change the delivery address?",
    "Do you have this in blue?",
    "Thanks, that solved it",
    "What are your opening hours on Sunday?",
];

/// Sends signed inbound webhooks until `count` or shutdown.
pub async fn inbound(
    config: &crate::Config,
    args: InboundArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let secret = config
        .ingest
        .app_secrets
        .first()
        .context("ingest.app_secrets is empty: the simulator signs with the first one")?;
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{}/webhooks/whatsapp", config.ingest.listen));
    let numbers: Vec<String> = if config.ingest.numbers.is_empty() {
        vec!["106540352242922".to_string()]
    } else {
        config
            .ingest
            .numbers
            .iter()
            .map(|n| n.phone_number_id.clone())
            .collect()
    };
    let http = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let run = now_secs();
    let mut ticker = tokio::time::interval(interval);
    let mut sent = 0u64;
    while args.count == 0 || sent < args.count {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let n = sent as usize;
        let contact_index = sent % args.contacts.max(1);
        let contact = format!("1650555{:04}", contact_index);
        let number = &numbers[n % numbers.len()];
        let wamid = format!("wamid.sim.{run}.{sent}");
        let text = format!("{} (#{sent})", TEXTS[n % TEXTS.len()]);
        let body = inbound_text(
            number,
            &contact,
            NAMES[contact_index as usize % NAMES.len()],
            &wamid,
            &text,
            now_secs(),
        )
        .to_string();
        let signature = ingest::signature::sign(body.as_bytes(), secret.expose());
        let response = post_webhook(&http, &url, signature, body).await;
        match response {
            Ok(r) if r.status().is_success() => {
                tracing::info!(%number, %contact, %wamid, "simulated inbound message")
            }
            Ok(r) => tracing::warn!(status = %r.status(), "webhook refused"),
            Err(err) => tracing::warn!(%err, "webhook receiver not reachable"),
        }
        sent += 1;
    }
    Ok(())
}

/// POSTs a webhook body with its signature, as Meta does.
pub async fn post_webhook(
    http: &reqwest::Client,
    url: &str,
    signature: String,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Where `simulate serve` listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; point `graph_base_url` and `expo_base_url` at it.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: String,
}

/// Serves the Graph API and Expo stand-ins until shutdown.
pub async fn serve(
    config: &crate::Config,
    args: ServeArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let app = graph::router(config).merge(expo::router(config));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "simulating the Graph API and Expo");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("simulator server")
}
