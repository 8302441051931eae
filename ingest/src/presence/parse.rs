//! Agents' MQTT messages → `agents.presence` events (pure).
//!
//! Two topics, under the configured prefix (DESIGN.md):
//! - `{prefix}/{org}/presence/{agent_id}`: retained, with a last-will of `offline`.
//!   The payload is `online` / `away` / `offline`, or JSON
//!   `{"state": "...", "device_id": "..."}`.
//! - `{prefix}/{org}/conversations/{conversation_id}/activity/{agent_id}`: JSON
//!   `{"device_id": "...", "state": "viewing" | "typing"}`; never stored by sinks,
//!   but routers and notifiers see it.
//!
//! Who speaks comes from the topic, never from the payload: the broker lets a device
//! publish only on its own agent's presence and activity topics (the per-agent ACL
//! of `api::mqtt_access`), so an `agent_id` in a payload is ignored. Only the
//! presence topic changes online/away/offline; activity is viewing or typing only.
//!
//! Everything is bounded at parse: a payload over [`MAX_PAYLOAD_BYTES`], a topic
//! level or device id that is not a plain id ([`events::ids::is_valid_id`]) is an
//! error, which the bridge dead-letters (truncated) and acknowledges.

use events::ids::is_valid_id;
use events::inbox::{PresenceEvent, PresenceState};
use serde::Deserialize;

/// The largest presence or activity payload read (a state and a device id fit in a
/// tenth of it).
pub const MAX_PAYLOAD_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("topic {0} is not a presence or activity topic")]
    Topic(String),
    #[error("payload is not a presence state or a JSON object with one: {0}")]
    Payload(String),
    #[error("{0} is not allowed on this topic")]
    State(String),
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
}

/// The MQTT topic filters the bridge subscribes to.
pub fn filters(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}/+/presence/+"),
        format!("{prefix}/+/conversations/+/activity/+"),
    ]
}

#[derive(Deserialize)]
struct Payload {
    state: PresenceState,
    #[serde(default)]
    device_id: Option<String>,
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
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(PresenceError::TooLarge(payload.len()));
    }
    parse_event(prefix, topic, payload, at_ms).map(Some)
}

fn parse_event(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    at_ms: i64,
) -> Result<PresenceEvent, PresenceError> {
    let bad_topic = || PresenceError::Topic(topic.chars().take(200).collect());
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad_topic)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let text = std::str::from_utf8(payload)
        .map_err(|_| PresenceError::Payload("not UTF-8".into()))?
        .trim();
    let body = parse_payload(text)?;
    let device_id = match body.device_id {
        Some(d) if !d.is_empty() && !is_valid_id(&d) => {
            return Err(PresenceError::Payload("device_id is not a plain id".into()));
        }
        d => d.unwrap_or_default(),
    };
    let (org, agent_id, conversation_id) = match parts.as_slice() {
        [org, "presence", agent_id] => {
            if matches!(body.state, PresenceState::Viewing | PresenceState::Typing) {
                return Err(PresenceError::State(state_name(body.state)));
            }
            (*org, *agent_id, None)
        }
        [org, "conversations", conversation_id, "activity", agent_id] => {
            if !matches!(body.state, PresenceState::Viewing | PresenceState::Typing) {
                return Err(PresenceError::State(state_name(body.state)));
            }
            (*org, *agent_id, Some(conversation_id.to_string()))
        }
        _ => return Err(bad_topic()),
    };
    let ids_ok = is_valid_id(org)
        && is_valid_id(agent_id)
        && conversation_id.as_deref().is_none_or(is_valid_id);
    if !ids_ok {
        return Err(bad_topic());
    }
    Ok(PresenceEvent {
        org: org.to_string(),
        agent_id: agent_id.to_string(),
        device_id,
        state: body.state,
        conversation_id,
        at_ms,
    })
}

fn state_name(state: PresenceState) -> String {
    format!("{state:?}").to_lowercase()
}

fn parse_payload(text: &str) -> Result<Payload, PresenceError> {
    if text.starts_with('{') {
        return serde_json::from_str(text)
            .map_err(|e| PresenceError::Payload(e.to_string().chars().take(200).collect()));
    }
    let state = serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase()))
        .map_err(|_| PresenceError::Payload(text.chars().take(40).collect()))?;
    Ok(Payload {
        state,
        device_id: None,
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
    fn activity_names_the_conversation_and_the_agent_comes_from_the_topic() {
        let payload = br#"{"agent_id":"bob","device_id":"web","state":"typing"}"#;
        let e = parse(
            "coexist",
            "coexist/acme/conversations/1-2/activity/ann",
            payload,
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.agent_id.as_str(), e.state, e.conversation_id.as_deref()),
            ("ann", PresenceState::Typing, Some("1-2"))
        );
    }

    #[test]
    fn activity_cannot_change_presence() {
        for state in ["online", "offline", "away"] {
            let payload = format!(r#"{{"state":"{state}"}}"#);
            assert!(matches!(
                parse(
                    "coexist",
                    "coexist/acme/conversations/1-2/activity/ann",
                    payload.as_bytes(),
                    0
                ),
                Err(PresenceError::State(_))
            ));
        }
        // The old topic, with the agent in the payload, is not read at all.
        assert!(matches!(
            parse(
                "coexist",
                "coexist/acme/conversations/1-2/activity",
                br#"{"agent_id":"bob","state":"typing"}"#,
                0
            ),
            Err(PresenceError::Topic(_))
        ));
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
            parse("coexist", "coexist/acme/presence/$ann", b"online", 0),
            Err(PresenceError::Topic(_))
        ));
        let long_device = format!(r#"{{"state":"online","device_id":"{}"}}"#, "d".repeat(200));
        assert!(matches!(
            parse(
                "coexist",
                "coexist/acme/presence/ann",
                long_device.as_bytes(),
                0
            ),
            Err(PresenceError::Payload(_))
        ));
    }

    #[test]
    fn payloads_over_the_cap_are_refused_before_parsing() {
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            parse("coexist", "coexist/acme/presence/ann", &big, 0),
            Err(PresenceError::TooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }

    proptest! {
        #[test]
        fn never_panics(topic in "[a-z/+#]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse("coexist", &topic, &payload, 0);
        }

        /// Whatever is read, every id in the event is a plain id of bounded length.
        #[test]
        fn events_hold_only_plain_ids(
            org in "[a-z+#$]{0,5}", agent in "[a-z+#$]{0,5}", device in "[a-z+#$/]{0,5}",
            conversation in "[0-9+#-]{0,5}", activity in any::<bool>(),
        ) {
            let (topic, payload) = if activity {
                (format!("p/{org}/conversations/{conversation}/activity/{agent}"),
                 format!(r#"{{"state":"typing","device_id":"{device}"}}"#))
            } else {
                (format!("p/{org}/presence/{agent}"),
                 format!(r#"{{"state":"online","device_id":"{device}"}}"#))
            };
            if let Ok(Some(e)) = parse("p", &topic, payload.as_bytes(), 0) {
                prop_assert!(is_valid_id(&e.org) && is_valid_id(&e.agent_id));
                prop_assert!(e.device_id.is_empty() || is_valid_id(&e.device_id));
                prop_assert!(e.conversation_id.as_deref().is_none_or(is_valid_id));
            }
        }
    }
}
