//! Agents' MQTT messages → `agents.presence` events (pure).
//!
//! Two topics, under the configured prefix (DESIGN.md):
//! - `{prefix}/{org}/presence/{agent_id}`: retained, with a last-will of `offline`.
//!   The payload is `online` / `away` / `offline`, or JSON
//!   `{"state": "...", "device_id": "..."}`.
//! - `{prefix}/{org}/conversations/{conversation_id}/activity`: JSON
//!   `{"agent_id": "...", "device_id": "...", "state": "viewing" | "typing"}`; never stored
//!   by sinks, but routers and notifiers see it.

use events::inbox::{PresenceEvent, PresenceState};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("topic {0} is not a presence or activity topic")]
    Topic(String),
    #[error("payload is not a presence state or a JSON object with one: {0}")]
    Payload(String),
    #[error("{0} is not allowed on this topic")]
    State(String),
}

/// The MQTT topic filters the bridge subscribes to.
pub fn filters(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}/+/presence/+"),
        format!("{prefix}/+/conversations/+/activity"),
    ]
}

#[derive(Deserialize)]
struct Payload {
    state: PresenceState,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

/// Parses one MQTT message. `at_ms` is when the bridge received it. An empty payload
/// is a cleared retained message, not an event: `Ok(None)`.
pub fn parse(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    at_ms: i64,
) -> Result<Option<PresenceEvent>, PresenceError> {
    if payload.is_empty() {
        return Ok(None);
    }
    parse_event(prefix, topic, payload, at_ms).map(Some)
}

fn parse_event(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    at_ms: i64,
) -> Result<PresenceEvent, PresenceError> {
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| PresenceError::Topic(topic.into()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let text = std::str::from_utf8(payload)
        .map_err(|_| PresenceError::Payload("not UTF-8".into()))?
        .trim();
    let body = parse_payload(text)?;
    match parts.as_slice() {
        [org, "presence", agent_id] if !org.is_empty() && !agent_id.is_empty() => {
            if matches!(body.state, PresenceState::Viewing | PresenceState::Typing) {
                return Err(PresenceError::State(
                    format!("{:?}", body.state).to_lowercase(),
                ));
            }
            Ok(PresenceEvent {
                org: org.to_string(),
                agent_id: agent_id.to_string(),
                device_id: body.device_id.unwrap_or_default(),
                state: body.state,
                conversation_id: None,
                at_ms,
            })
        }
        [org, "conversations", conversation_id, "activity"] if !org.is_empty() => {
            let agent_id = body
                .agent_id
                .filter(|a| !a.is_empty())
                .ok_or_else(|| PresenceError::Payload("activity needs an agent_id".into()))?;
            Ok(PresenceEvent {
                org: org.to_string(),
                agent_id,
                device_id: body.device_id.unwrap_or_default(),
                state: body.state,
                conversation_id: Some(conversation_id.to_string()),
                at_ms,
            })
        }
        _ => Err(PresenceError::Topic(topic.into())),
    }
}

fn parse_payload(text: &str) -> Result<Payload, PresenceError> {
    if text.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| PresenceError::Payload(e.to_string()));
    }
    let state = serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase()))
        .map_err(|_| PresenceError::Payload(text.chars().take(40).collect()))?;
    Ok(Payload {
        state,
        device_id: None,
        agent_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cleared_retained_message_is_no_event() {
        assert_eq!(
            parse("coexist", "coexist/acme/presence/ann", b"", 5),
            Ok(None)
        );
    }

    #[test]
    fn plain_and_json_presence() {
        let e = parse("coexist", "coexist/acme/presence/ann", b"offline", 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.org.as_str(), e.agent_id.as_str(), e.state, e.at_ms),
            ("acme", "ann", PresenceState::Offline, 5)
        );
        let e = parse(
            "coexist",
            "coexist/acme/presence/ann",
            br#"{"state":"online","device_id":"phone"}"#,
            5,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.state, e.device_id.as_str()),
            (PresenceState::Online, "phone")
        );
    }

    #[test]
    fn activity_names_the_conversation() {
        let payload = br#"{"agent_id":"ann","device_id":"web","state":"typing"}"#;
        let e = parse(
            "coexist",
            "coexist/acme/conversations/1-2/activity",
            payload,
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.state, e.conversation_id.as_deref()),
            (PresenceState::Typing, Some("1-2"))
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(
            parse("coexist", "other/acme/presence/ann", b"online", 0),
            Err(PresenceError::Topic(_))
        ));
        assert!(matches!(
            parse("coexist", "coexist/acme/presence/ann", b"sleepy", 0),
            Err(PresenceError::Payload(_))
        ));
        assert!(matches!(
            parse("coexist", "coexist/acme/presence/ann", b"typing", 0),
            Err(PresenceError::State(_))
        ));
        assert!(matches!(
            parse(
                "coexist",
                "coexist/acme/conversations/1-2/activity",
                br#"{"state":"typing"}"#,
                0
            ),
            Err(PresenceError::Payload(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics(topic in "[a-z/+#]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse("coexist", &topic, &payload, 0);
        }
    }
}
