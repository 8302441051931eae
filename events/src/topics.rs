//! Topic names, as in `topics.yaml` (a test checks the two agree).

/// Raw webhook bodies exactly as Meta signed them: audit and replay.
pub const WEBHOOKS_RAW: &str = "whatsapp.webhooks.raw";
/// Normalized events: [`crate::WhatsAppEvent`], keyed by business `phone_number_id`.
pub const WHATSAPP_EVENTS: &str = "whatsapp.events";
/// Agents' presence and activity from the MQTT bridge.
pub const AGENTS_PRESENCE: &str = "agents.presence";
/// Commands from the API about conversations (claim, transfer, resolve, ...).
pub const CONVERSATION_COMMANDS: &str = "conversations.commands";
/// Messages to send through the Graph API.
pub const MESSAGES_OUTBOUND: &str = "messages.outbound";
/// Who owns each conversation, decided by the router.
pub const CONVERSATION_ASSIGNMENTS: &str = "conversations.assignments";
/// Monotonic status transitions of every message.
pub const MESSAGES_STATUS: &str = "messages.status";
/// Push notifications for offline agents, in Expo's format.
pub const NOTIFICATIONS_PUSH: &str = "notifications.push";
/// Graph API answers to `messages.outbound`.
pub const OUTBOUND_RESULTS: &str = "messages.outbound.results";
/// The whatsapp sink's record of calls it was about to make (its idempotency ledger).
pub const OUTBOUND_INTENTS: &str = "messages.outbound.intents";
/// Media copied to S3.
pub const MEDIA_STORED: &str = "media.stored";
/// Directory changes from the API (agents, numbers, routing, push tokens), keyed by org.
pub const DIRECTORY_CHANGES: &str = "directory.changes";
/// What could not be parsed or written, with headers saying why.
pub const DEADLETTER: &str = "deadletter";

/// Every topic, in `topics.yaml` order.
pub const ALL: &[&str] = &[
    WEBHOOKS_RAW,
    WHATSAPP_EVENTS,
    AGENTS_PRESENCE,
    CONVERSATION_COMMANDS,
    CONVERSATION_ASSIGNMENTS,
    MESSAGES_OUTBOUND,
    OUTBOUND_RESULTS,
    OUTBOUND_INTENTS,
    MESSAGES_STATUS,
    NOTIFICATIONS_PUSH,
    MEDIA_STORED,
    DIRECTORY_CHANGES,
    DEADLETTER,
];
