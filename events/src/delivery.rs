//! Events about sending: outbound messages, the Graph API's answers, status
//! transitions, push notifications and stored media.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::DeliveryStatus;
use crate::webhook::ApiError;

/// A message to send (`messages.outbound`, keyed by `phone_number_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutboundMessage {
    /// Idempotency key: the API's command id. A retried command never sends twice.
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub to: String,
    pub sent_by: String,
    pub at_ms: i64,
    /// What to send: an `OutboundPayload`, the Graph API body without its envelope
    /// (the whatsapp sink adds it). Decoded by the sink, so that a payload it cannot
    /// send is answered to the issuer with the reason rather than dead-lettered.
    #[schemars(with = "crate::outbound::OutboundPayload")]
    pub payload: Value,
}

/// The Graph API's answer to one outbound message (`messages.outbound.results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutboundResult {
    /// The outbound message id.
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    /// The wamid Meta assigned, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub at_ms: i64,
    /// What was sent, so the message can be shown without the command: the
    /// recipient, who sent it, the Graph API `type` and a short text preview.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sent_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// What became of one outbound message, read from its result: the one rule every
/// reader of `messages.outbound.results` follows (the status processor, the mongo and
/// clickhouse sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundOutcome<'a> {
    /// Meta accepted it and named it `wamid`.
    Accepted { wamid: &'a str },
    /// Meta named it `wamid` but answered with an error.
    Failed { wamid: &'a str },
    /// Refused before Meta named it (invalid, expired, outside the window, outcome
    /// unknown, or Meta's error): it goes by [`unsent_id`] of its outbound id.
    Refused { outbound_id: &'a str },
}

impl OutboundOutcome<'_> {
    /// The status the message has on this outcome.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Accepted { .. } => DeliveryStatus::Accepted,
            Self::Failed { .. } | Self::Refused { .. } => DeliveryStatus::Failed,
        }
    }

    /// The id the message and its statuses go by: Meta's wamid, or [`unsent_id`].
    pub fn message_id(&self) -> String {
        match self {
            Self::Accepted { wamid } | Self::Failed { wamid } => (*wamid).to_string(),
            Self::Refused { outbound_id } => unsent_id(outbound_id),
        }
    }
}

const UNSENT_PREFIX: &str = "outbound:";

/// The message id of an outbound message Meta never named: `outbound:{id}`, which
/// cannot collide with a wamid.
pub fn unsent_id(outbound_id: &str) -> String {
    format!("{UNSENT_PREFIX}{outbound_id}")
}

/// The outbound id inside an [`unsent_id`]; `None` for a wamid.
pub fn unsent_outbound_id(message_id: &str) -> Option<&str> {
    message_id.strip_prefix(UNSENT_PREFIX)
}

/// `sent_by` of the login codes the API sends: not a message of any conversation.
pub const SENT_BY_AUTH: &str = "auth";

impl OutboundResult {
    /// What became of the message ([`OutboundOutcome`]).
    pub fn outcome(&self) -> OutboundOutcome<'_> {
        match (&self.wamid, &self.error) {
            (Some(wamid), None) => OutboundOutcome::Accepted { wamid },
            (Some(wamid), Some(_)) => OutboundOutcome::Failed { wamid },
            (None, _) => OutboundOutcome::Refused {
                outbound_id: &self.id,
            },
        }
    }

    /// Is this a message of a conversation, to show in the inbox? Not a login code
    /// (sent to an agent, not a customer) nor a request with no recipient (a
    /// coexistence sync request).
    pub fn in_conversation(&self) -> bool {
        !self.conversation_id.is_empty() && self.sent_by != SENT_BY_AUTH
    }
}

impl OutboundMessage {
    /// The sealed body, if the payload is sealed
    /// ([`OutboundPayload::Sealed`](crate::outbound::OutboundPayload::Sealed)).
    pub fn sealed(&self) -> Option<crate::directory::Sealed> {
        match crate::outbound::OutboundPayload::from_value(&self.payload) {
            Ok(crate::outbound::OutboundPayload::Sealed(s)) => Some(s.sealed),
            _ => None,
        }
    }

    /// The Graph API `type` of the payload (`text`, `template`, `image`, ...), or
    /// `read` for a mark-as-read.
    pub fn message_type(&self) -> String {
        if self.payload.get("status").and_then(Value::as_str) == Some("read") {
            return "read".into();
        }
        self.payload
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("text")
            .to_owned()
    }

    /// A short text for lists: the text body, a caption, or the template's name.
    pub fn preview(&self) -> Option<String> {
        let kind = self.message_type();
        let part = self.payload.get(&kind)?;
        let text = part
            .get("body")
            .or_else(|| part.get("caption"))
            .or_else(|| part.get("name"))
            .or_else(|| part.get("emoji"))
            .and_then(Value::as_str)?;
        Some(text.chars().take(200).collect())
    }

    /// The result of sending this, with the message's own fields filled in.
    pub fn result(
        &self,
        wamid: Option<String>,
        error: Option<ApiError>,
        at_ms: i64,
    ) -> OutboundResult {
        OutboundResult {
            id: self.id.clone(),
            org: self.org.clone(),
            phone_number_id: self.phone_number_id.clone(),
            conversation_id: self.conversation_id.clone(),
            wamid,
            error,
            at_ms,
            to: self.to.clone(),
            sent_by: self.sent_by.clone(),
            message_type: self.message_type(),
            preview: self.preview(),
        }
    }
}

/// The whatsapp sink is about to call the Graph API for an outbound message
/// (`messages.outbound.intents`). Written and acknowledged before the call, so a sink
/// restarted after a crash knows which commands may already have gone out and reports
/// them "outcome unknown" instead of sending them twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutboundIntent {
    /// The outbound message id (the idempotency key).
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub at_ms: i64,
}

/// A message's status moved forward (`messages.status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusTransition {
    /// `wamid:status`.
    pub id: String,
    pub org: String,
    pub phone_number_id: String,
    pub conversation_id: String,
    pub wamid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DeliveryStatus>,
    pub to: DeliveryStatus,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// An Expo push message for an agent with no online device (`notifications.push`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PushNotification {
    pub id: String,
    pub org: String,
    pub agent_id: String,
    pub title: String,
    pub body: String,
    pub conversation_id: String,
    pub at_ms: i64,
}

/// Media copied from the Graph API to S3 (`media.stored`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MediaStored {
    /// Meta's media id.
    pub media_id: String,
    pub org: String,
    pub wamid: String,
    pub bucket: String,
    /// `{org}/{sha256}`.
    pub key: String,
    pub mime_type: String,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_has_one_status_and_one_message_id() {
        let error: ApiError = serde_json::from_value(serde_json::json!({"code": 1})).unwrap();
        let result = |wamid: Option<&str>, error: Option<ApiError>| OutboundResult {
            id: "cmd".into(),
            org: "o".into(),
            phone_number_id: "1".into(),
            conversation_id: "1-2".into(),
            wamid: wamid.map(str::to_owned),
            error,
            at_ms: 0,
            to: String::new(),
            sent_by: String::new(),
            message_type: String::new(),
            preview: None,
        };
        let cases = [
            (result(Some("w"), None), DeliveryStatus::Accepted, "w"),
            (
                result(Some("w"), Some(error.clone())),
                DeliveryStatus::Failed,
                "w",
            ),
            (
                result(None, Some(error)),
                DeliveryStatus::Failed,
                "outbound:cmd",
            ),
            (result(None, None), DeliveryStatus::Failed, "outbound:cmd"),
        ];
        for (r, status, id) in cases {
            let outcome = r.outcome();
            assert_eq!(
                (outcome.status(), outcome.message_id().as_str()),
                (status, id)
            );
        }
        assert_eq!(unsent_outbound_id("outbound:cmd"), Some("cmd"));
        assert_eq!(unsent_outbound_id("wamid.X"), None);
    }
}
