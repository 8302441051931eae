//! `coexist watch`: what agents' apps receive over MQTT, one readable line per
//! message, for demos and for looking at a live system without a JSON reader.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// MQTT topic filter (default: every conversation of every org).
    #[arg(long)]
    pub topic: Option<String>,
    /// Print the raw JSON instead.
    #[arg(long)]
    pub raw: bool,
}

/// One line for a message on a conversation or inbox topic; `None` for a payload
/// that is not one of ours. Pure.
pub fn describe(topic: &str, payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let text = |key: &str| v[key].as_str().unwrap_or("");
    let conversation = match text("conversation_id") {
        "" => topic.rsplit('/').next().unwrap_or(topic),
        id => id,
    };
    let what = match (text("kind"), text("direction")) {
        ("message", "inbound") => format!(
            "← {}: {}",
            v["contact_name"].as_str().unwrap_or(text("contact_wa_id")),
            text("preview")
        ),
        ("message", _) => format!("→ business app ({}): {}", text("origin"), text("preview")),
        ("status", _) => format!("  {} is {}", short(text("wamid")), text("status")),
        ("edit", _) => format!("  {} edited: {}", short(text("wamid")), text("preview")),
        ("revoke", _) => format!("  {} deleted", short(text("wamid"))),
        ("reaction", _) => match v["emoji"].as_str() {
            Some(emoji) => format!(
                "  {} reacted {emoji} to {}",
                text("reactor"),
                short(text("wamid"))
            ),
            None => format!(
                "  {} took a reaction off {}",
                text("reactor"),
                short(text("wamid"))
            ),
        },
        ("", _) if !text("sent_by").is_empty() && !text("wamid").is_empty() => format!(
            "→ {} sent {}: {}",
            text("sent_by"),
            short(text("wamid")),
            text("preview")
        ),
        ("", _) if !text("sent_by").is_empty() => format!(
            "✗ {}'s send failed: {}",
            text("sent_by"),
            v["error"]["message"].as_str().unwrap_or("(no reason)")
        ),
        ("", _) if !text("state").is_empty() => format!(
            "⇄ {} → {}",
            text("state"),
            v["assignee"].as_str().unwrap_or("queue")
        ),
        (kind, _) => format!("{kind} {}", text("id")),
    };
    Some(format!("{conversation:<32} {what}"))
}

/// The tail of a wamid, enough to follow one message's statuses.
fn short(wamid: &str) -> &str {
    let start = wamid.len().saturating_sub(8);
    wamid.get(start..).unwrap_or(wamid)
}

/// Prints until shutdown.
pub async fn run(
    config: &Config,
    args: WatchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let filter = args
        .topic
        .unwrap_or_else(|| format!("{}/+/conversations/#", config.mqtt.topic_prefix));
    let mut options = config
        .mqtt
        .options(&format!("coexist-watch-{}", std::process::id()));
    options.set_clean_session(true);
    let (client, mut event_loop) = AsyncClient::new(options, 100);
    client.subscribe(&filter, QoS::AtMostOnce).await?;
    eprintln!("watching {filter}");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if args.raw {
                    println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                } else if let Some(line) = describe(&p.topic, &p.payload) {
                    println!("{line}");
                }
            }
            Ok(_) => {}
            Err(err) => {
                eprintln!("MQTT: {err}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_replies_statuses_and_assignments_read_as_one_line_each() {
        let inbound = br#"{"kind":"message","direction":"inbound","conversation_id":"1-2","contact_name":"Ann","preview":"Hi"}"#;
        assert_eq!(
            describe("t", inbound).as_deref(),
            Some(format!("{:<32} ← Ann: Hi", "1-2").as_str())
        );
        let status = br#"{"kind":"status","conversation_id":"1-2","wamid":"wamid.ABCDEFGHIJ","status":"read"}"#;
        assert!(describe("t", status).is_some_and(|l| l.ends_with("CDEFGHIJ is read")));
        let reply = br#"{"id":"c1","conversation_id":"1-2","wamid":"wamid.X","sent_by":"bob","preview":"Done"}"#;
        assert!(describe("t", reply).is_some_and(|l| l.ends_with("→ bob sent wamid.X: Done")));
        let failed = br#"{"id":"c1","conversation_id":"1-2","sent_by":"bob","error":{"message":"outside the window"}}"#;
        assert!(
            describe("t", failed)
                .is_some_and(|l| l.ends_with("✗ bob's send failed: outside the window"))
        );
        let assignment = br#"{"conversation_id":"1-2","state":"assigned","assignee":"ann"}"#;
        assert!(describe("t", assignment).is_some_and(|l| l.ends_with("⇄ assigned → ann")));
        assert_eq!(describe("t", b"online"), None);
    }
}
