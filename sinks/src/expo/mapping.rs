//! Push notifications → Expo messages, and Expo's answers → what to record (pure).
//!
//! One message per (notification, device token). A ticket is remembered under
//! [`ticket_key`], so a redelivered notification is not sent again to a token that
//! already has its ticket.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use events::delivery::PushNotification;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Expo's error code for a token whose app is gone: stop sending to it.
pub const DEVICE_NOT_REGISTERED: &str = "DeviceNotRegistered";

/// Expo's token format: `ExponentPushToken[...]` (or the newer `ExpoPushToken[...]`).
pub fn is_expo_push_token(token: &str) -> bool {
    ["ExponentPushToken[", "ExpoPushToken["]
        .iter()
        .any(|prefix| token.len() > prefix.len() + 1 && token.starts_with(prefix))
        && token.ends_with(']')
}

/// Too old to push: the agent has likely seen the conversation by other means.
pub fn is_stale(at_ms: i64, now_ms: i64, max_age_ms: i64) -> bool {
    now_ms.saturating_sub(at_ms) > max_age_ms
}

/// `_id` of a ticket in `push_tickets`: one per notification and token.
pub fn ticket_key(org: &str, notification_id: &str, token: &str) -> String {
    format!("{org}:{notification_id}:{token}")
}

/// `_id` of a token in `push_tokens` (the shape the API writes).
pub fn token_key(org: &str, token: &str) -> String {
    format!("{org}:{token}")
}

/// A registered device of an agent (a `push_tokens` document).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Device {
    pub org: String,
    pub agent_id: String,
    pub token: String,
}

/// An Expo push message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpoMessage {
    pub to: String,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub sound: String,
    pub priority: String,
}

/// One message to send, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Index of the notification's record in the batch.
    pub source: usize,
    pub key: String,
    pub org: String,
    pub agent_id: String,
    pub notification_id: String,
    pub message: ExpoMessage,
}

/// What a batch of notifications becomes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub sends: Vec<Planned>,
    /// Tokens not in Expo's format: never sent (the whole request would be refused).
    pub malformed: Vec<Device>,
}

/// Message fields that come from config.
#[derive(Debug, Clone)]
pub struct Style {
    pub sound: String,
    pub priority: String,
}

/// The messages for `notifications` to every device of their agent, skipping
/// notifications seen earlier in the batch and keys in `already_sent`.
pub fn plan<'a>(
    notifications: impl IntoIterator<Item = (usize, &'a PushNotification)>,
    devices: &[Device],
    already_sent: &HashSet<String>,
    style: &Style,
) -> Plan {
    let mut by_agent: BTreeMap<(&str, &str), Vec<&Device>> = BTreeMap::new();
    for device in devices {
        by_agent
            .entry((&device.org, &device.agent_id))
            .or_default()
            .push(device);
    }
    let mut plan = Plan::default();
    let mut keys = HashSet::new();
    let mut malformed = HashSet::new();
    for (source, n) in notifications {
        let Some(devices) = by_agent.get(&(n.org.as_str(), n.agent_id.as_str())) else {
            continue; // no device registered: nothing to push to
        };
        for device in devices {
            if !is_expo_push_token(&device.token) {
                if malformed.insert(&device.token) {
                    plan.malformed.push((*device).clone());
                }
                continue;
            }
            let key = ticket_key(&n.org, &n.id, &device.token);
            if already_sent.contains(&key) || !keys.insert(key.clone()) {
                continue;
            }
            plan.sends.push(Planned {
                source,
                key,
                org: n.org.clone(),
                agent_id: n.agent_id.clone(),
                notification_id: n.id.clone(),
                message: ExpoMessage {
                    to: device.token.clone(),
                    title: n.title.clone(),
                    body: n.body.clone(),
                    data: serde_json::json!({
                        "conversation_id": n.conversation_id,
                        "notification_id": n.id,
                    }),
                    sound: style.sound.clone(),
                    priority: style.priority.clone(),
                },
            });
        }
    }
    plan
}

/// A push ticket or receipt: `{"status":"ok","id":...}` or
/// `{"status":"error","message":...,"details":{"error":...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// What a ticket or receipt means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; for a ticket, the receipt id to poll.
    Ok(Option<String>),
    /// The token is dead: delete it.
    Unregistered,
    /// Another error (e.g. `MessageTooBig`): recorded, the token kept.
    Failed(String),
}

impl Ticket {
    pub fn outcome(&self) -> Outcome {
        if self.status == "ok" {
            return Outcome::Ok(self.id.clone());
        }
        let code = self
            .details
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str);
        match code {
            Some(DEVICE_NOT_REGISTERED) => Outcome::Unregistered,
            Some(code) => Outcome::Failed(code.to_string()),
            None => Outcome::Failed(
                self.message
                    .clone()
                    .unwrap_or_else(|| format!("status {}", self.status)),
            ),
        }
    }
}

/// `POST /--/api/v2/push/send`'s answer: one ticket per message, in order.
#[derive(Debug, Deserialize)]
pub struct SendResponse {
    #[serde(default)]
    pub data: Vec<Ticket>,
}

/// `POST /--/api/v2/push/getReceipts`'s answer: receipts by id (those not ready are
/// absent).
#[derive(Debug, Deserialize)]
pub struct ReceiptsResponse {
    #[serde(default)]
    pub data: BTreeMap<String, Ticket>,
}

/// What to do with an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Done,
    /// Try again after this long.
    Retry(Duration),
    /// Expo refused the request itself (4xx): retrying will not help.
    Refused,
}

/// Expo asks for backoff on 429 and 5xx; `Retry-After` (seconds) wins over our own
/// exponential delay, capped at `max`.
pub fn disposition(
    status: u16,
    retry_after: Option<&str>,
    attempt: u32,
    initial: Duration,
    max: Duration,
) -> Disposition {
    match status {
        200..=299 => Disposition::Done,
        429 | 500..=599 => Disposition::Retry(backoff(retry_after, attempt, initial, max)),
        _ => Disposition::Refused,
    }
}

/// The delay before try `attempt + 1` (attempt counts from 0): Expo's
/// `Retry-After`, else the one retry policy (doubling, capped, jittered).
pub fn backoff(
    retry_after: Option<&str>,
    attempt: u32,
    initial: Duration,
    max: Duration,
) -> Duration {
    if let Some(seconds) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(seconds).min(max);
    }
    runtime::RetryPolicy::new(initial, max).delay(attempt.min(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn note(id: &str, org: &str, agent: &str) -> PushNotification {
        PushNotification {
            id: id.into(),
            org: org.into(),
            agent_id: agent.into(),
            title: "Sheena".into(),
            body: "hi".into(),
            conversation_id: "c1".into(),
            at_ms: 0,
        }
    }

    fn device(org: &str, agent: &str, token: &str) -> Device {
        Device {
            org: org.into(),
            agent_id: agent.into(),
            token: token.into(),
        }
    }

    fn style() -> Style {
        Style {
            sound: "default".into(),
            priority: "high".into(),
        }
    }

    #[test]
    fn tokens_are_recognised_by_their_envelope() {
        assert!(is_expo_push_token("ExponentPushToken[abc]"));
        assert!(is_expo_push_token("ExpoPushToken[abc]"));
        assert!(!is_expo_push_token("ExponentPushToken[]"));
        assert!(!is_expo_push_token("ExponentPushToken[abc"));
        assert!(!is_expo_push_token("fcm:abc"));
    }

    #[test]
    fn old_notifications_are_stale() {
        assert!(!is_stale(1_000, 1_500, 600));
        assert!(!is_stale(1_000, 1_600, 600));
        assert!(is_stale(1_000, 1_601, 600));
        assert!(!is_stale(2_000, 1_000, 600)); // a clock a little ahead is not stale
    }

    #[test]
    fn every_device_of_the_agent_gets_one_message_with_the_conversation() {
        let n = note("n1", "o", "ann");
        let devices = [
            device("o", "ann", "ExponentPushToken[phone]"),
            device("o", "ann", "ExponentPushToken[tablet]"),
            device("o", "bob", "ExponentPushToken[bob]"),
            device("other", "ann", "ExponentPushToken[elsewhere]"),
        ];
        let plan = plan([(0, &n), (1, &n)], &devices, &HashSet::new(), &style());
        let to: Vec<&str> = plan.sends.iter().map(|p| p.message.to.as_str()).collect();
        assert_eq!(
            to,
            ["ExponentPushToken[phone]", "ExponentPushToken[tablet]"]
        );
        let message = serde_json::to_value(&plan.sends[0].message).unwrap();
        assert_eq!(message["data"]["conversation_id"], "c1");
        assert_eq!(message["data"]["notification_id"], "n1");
        assert_eq!(message["sound"], "default");
        assert_eq!(message["priority"], "high");
    }

    #[test]
    fn a_token_with_a_ticket_is_not_sent_again_and_malformed_tokens_never() {
        let n = note("n1", "o", "ann");
        let devices = [
            device("o", "ann", "ExponentPushToken[phone]"),
            device("o", "ann", "not-a-token"),
        ];
        let sent = HashSet::from([ticket_key("o", "n1", "ExponentPushToken[phone]")]);
        let plan = plan([(0, &n)], &devices, &sent, &style());
        assert!(plan.sends.is_empty());
        assert_eq!(plan.malformed, vec![device("o", "ann", "not-a-token")]);
    }

    #[test]
    fn tickets_and_receipts_are_read_as_expo_writes_them() {
        let ok: Ticket = serde_json::from_str(r#"{"status":"ok","id":"r1"}"#).unwrap();
        assert_eq!(ok.outcome(), Outcome::Ok(Some("r1".into())));
        let gone: Ticket = serde_json::from_str(
            r#"{"status":"error","message":"\"ExponentPushToken[x]\" is not a registered push notification recipient","details":{"error":"DeviceNotRegistered","expoPushToken":"ExponentPushToken[x]"}}"#,
        )
        .unwrap();
        assert_eq!(gone.outcome(), Outcome::Unregistered);
        let big: Ticket = serde_json::from_str(
            r#"{"status":"error","message":"too big","details":{"error":"MessageTooBig"}}"#,
        )
        .unwrap();
        assert_eq!(big.outcome(), Outcome::Failed("MessageTooBig".into()));
    }

    #[test]
    fn retry_after_wins_and_4xx_is_final() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(disposition(200, None, 0, i, m), Disposition::Done);
        assert_eq!(
            disposition(429, Some("2"), 0, i, m),
            Disposition::Retry(Duration::from_secs(2))
        );
        let Disposition::Retry(delay) = disposition(503, None, 3, i, m) else {
            panic!("a 503 is retried");
        };
        assert!(
            (Duration::from_millis(400)..=Duration::from_millis(800)).contains(&delay),
            "{delay:?}"
        );
        assert_eq!(disposition(400, None, 0, i, m), Disposition::Refused);
        assert_eq!(backoff(Some("3600"), 0, i, m), m);
    }

    proptest! {
        /// Each (notification, device of its agent) pair is planned exactly once,
        /// unless already sent; nothing goes to another agent's device.
        #[test]
        fn each_pair_is_planned_exactly_once(
            notes in proptest::collection::vec((0..6u8, 0..3u8), 0..30),
            devices in proptest::collection::vec((0..3u8, 0..8u8), 0..12),
            sent_mask in any::<u64>(),
        ) {
            let notes: Vec<PushNotification> = notes
                .iter()
                .map(|(n, a)| note(&format!("n{n}"), "o", &format!("a{a}")))
                .collect();
            let devices: Vec<Device> = devices
                .iter()
                .map(|(a, t)| device("o", &format!("a{a}"), &format!("ExponentPushToken[t{t}]")))
                .collect();
            let mut expected = HashSet::new();
            for n in &notes {
                for d in devices.iter().filter(|d| d.agent_id == n.agent_id) {
                    expected.insert(ticket_key("o", &n.id, &d.token));
                }
            }
            let sent: HashSet<String> = expected
                .iter()
                .filter(|k| sent_mask >> (k.len() % 64) & 1 == 1)
                .cloned()
                .collect();
            let plan = plan(notes.iter().enumerate(), &devices, &sent, &style());
            let keys: Vec<&String> = plan.sends.iter().map(|p| &p.key).collect();
            let unique: HashSet<&String> = keys.iter().copied().collect();
            prop_assert_eq!(keys.len(), unique.len());
            let want: HashSet<&String> = expected.difference(&sent).collect();
            prop_assert_eq!(unique, want);
            for p in &plan.sends {
                prop_assert!(devices.iter().any(|d| d.token == p.message.to && d.agent_id == p.agent_id));
            }
        }
    }
}
