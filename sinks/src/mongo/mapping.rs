//! Events → MongoDB update statements: pure, so the idempotence rules are unit tests.
//!
//! Every write is an upsert by a deterministic `_id` (`{org}:{id}`), so replaying a
//! topic rewrites the same documents:
//! - message content is `$set` (it never changes), first-seen time `$setOnInsert`;
//! - a status moves forward only: the filter matches a message whose `status_rank` is
//!   lower, and when it is not lower the upsert's insert collides on `_id` (duplicate
//!   key, 11000), which means "already there or further" and is not an error;
//! - times use `$max`, so late events never move them back.

use events::event::*;
use events::{DeliveryStatus, WhatsAppEvent};
use mongodb::bson::{Bson, DateTime, Document, doc};

/// Collections the sink writes.
pub mod collections {
    pub const MESSAGES: &str = "messages";
    pub const MESSAGE_STATUSES: &str = "message_statuses";
    pub const CONTACTS: &str = "contacts";
    pub const CONVERSATIONS: &str = "conversations";
    pub const HISTORY_SYNCS: &str = "history_syncs";
    pub const COMMAND_RESULTS: &str = "command_results";
}

/// One update statement of an `update` command, with the batch record it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub collection: &'static str,
    pub filter: Document,
    pub update: Document,
    /// A duplicate-key error on this statement means "already applied".
    pub collision_means_done: bool,
    pub source: usize,
}

/// The statements for a batch of `(record index, event)`.
pub fn plan<'a>(events: impl IntoIterator<Item = (usize, &'a WhatsAppEvent)>) -> Vec<Upsert> {
    let mut out = Vec::new();
    for (source, event) in events {
        let mut push = |collection, filter, update, collision_means_done| {
            out.push(Upsert {
                collection,
                filter,
                update,
                collision_means_done,
                source,
            })
        };
        match &event.body {
            EventBody::Message(m) => {
                push(
                    collections::MESSAGES,
                    by_id(event, &m.wamid),
                    message_update(event, m),
                    false,
                );
                push(
                    collections::CONTACTS,
                    by_id(event, &m.contact_wa_id),
                    contact_from_message(event, m),
                    false,
                );
                push(
                    collections::CONVERSATIONS,
                    by_id(event, &m.conversation_id),
                    conversation_update(event, m),
                    false,
                );
            }
            EventBody::Status(s) => {
                if let Some(status) = DeliveryStatus::from_meta(&s.status) {
                    let rank = status as i32;
                    let filter = doc! {
                        "_id": key(event, &s.wamid),
                        "$or": [ { "status_rank": { "$exists": false } }, { "status_rank": { "$lt": rank } } ],
                    };
                    push(
                        collections::MESSAGES,
                        filter,
                        status_update(event, s, status),
                        true,
                    );
                }
                push(
                    collections::MESSAGE_STATUSES,
                    by_id(event, &event.id),
                    status_history(event, s),
                    false,
                );
            }
            EventBody::ContactSync(c) => push(
                collections::CONTACTS,
                by_id(event, &c.wa_id),
                contact_sync_update(event, c),
                false,
            ),
            EventBody::HistoryProgress(h) => push(
                collections::HISTORY_SYNCS,
                by_id(event, &event.phone_number_id),
                history_update(event, h),
                false,
            ),
            EventBody::Unhandled(_) => {}
        }
    }
    out
}

/// `{org}:{id}`: ids are unique per org, never across orgs.
pub fn key(event: &WhatsAppEvent, id: &str) -> String {
    format!("{}:{id}", event.org)
}

fn by_id(event: &WhatsAppEvent, id: &str) -> Document {
    doc! { "_id": key(event, id) }
}

fn seconds(at: i64) -> DateTime {
    DateTime::from_millis(at.saturating_mul(1000))
}

fn opt(value: &Option<String>) -> Bson {
    value.clone().map_or(Bson::Null, Bson::String)
}

fn to_bson<T: serde::Serialize>(value: &T) -> Bson {
    mongodb::bson::to_bson(value).unwrap_or(Bson::Null)
}

fn message_update(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut set = doc! {
        "org": &event.org,
        "id": &m.wamid,
        "phone_number_id": &event.phone_number_id,
        "direction": to_bson(&m.direction),
        "origin": to_bson(&m.origin),
        "type": &m.message_type,
        "preview": opt(&m.preview),
        "reply_to": opt(&m.reply_to),
        "media": to_bson(&m.media),
        "history_status": opt(&m.history_status),
        "sent_at": seconds(m.sent_at),
        "raw": to_bson(&m.raw),
    };
    // A history media follow-up names no customer: keep the placeholder's.
    if !m.contact_wa_id.is_empty() {
        set.insert("conversation_id", &m.conversation_id);
        set.insert("contact_wa_id", &m.contact_wa_id);
    }
    doc! {
        "$set": set,
        "$setOnInsert": { "first_seen_at": DateTime::from_millis(event.received_at_ms) },
    }
}

fn contact_from_message(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut update = doc! {
        "$setOnInsert": { "org": &event.org, "wa_id": &m.contact_wa_id, "created_at": seconds(m.sent_at) },
        "$max": { "last_message_at": seconds(m.sent_at) },
    };
    if let Some(name) = &m.contact_name {
        update.insert("$set", doc! { "profile_name": name });
    }
    update
}

fn conversation_update(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut max = doc! { "last_message_at": seconds(m.sent_at) };
    // Unread = inbound messages after the conversation's `read_up_to` (the API counts).
    if m.direction == Direction::Inbound && m.origin != Origin::History {
        max.insert("last_inbound_at", seconds(m.sent_at));
    }
    // A conversation first seen through history is past business, not a new request.
    let state = if m.origin == Origin::History {
        "resolved"
    } else {
        "open"
    };
    doc! {
        "$setOnInsert": {
            "org": &event.org,
            "id": &m.conversation_id,
            "phone_number_id": &event.phone_number_id,
            "contact_wa_id": &m.contact_wa_id,
            "state": state,
            "created_at": seconds(m.sent_at),
        },
        "$max": max,
    }
}

fn status_update(event: &WhatsAppEvent, s: &StatusEvent, status: DeliveryStatus) -> Document {
    let mut set = doc! {
        "status": status.as_str(),
        "status_rank": status as i32,
        "status_at": seconds(s.at),
    };
    if let Some(error) = s.errors.first() {
        set.insert("error", to_bson(error));
    }
    doc! {
        "$set": set,
        // A status can arrive before its message (sent from elsewhere, or reordered).
        "$setOnInsert": {
            "org": &event.org,
            "id": &s.wamid,
            "phone_number_id": &event.phone_number_id,
            "conversation_id": &s.conversation_id,
            "contact_wa_id": &s.recipient_id,
        },
    }
}

fn status_history(event: &WhatsAppEvent, s: &StatusEvent) -> Document {
    doc! {
        "$setOnInsert": {
            "org": &event.org,
            "wamid": &s.wamid,
            "status": &s.status,
            "at": seconds(s.at),
            "errors": to_bson(&s.errors),
            "raw": to_bson(&s.raw),
        }
    }
}

fn contact_sync_update(event: &WhatsAppEvent, c: &ContactSyncEvent) -> Document {
    let mut set = doc! { "in_business_app": c.action == ContactAction::Upsert };
    if c.action == ContactAction::Upsert {
        set.insert("full_name", opt(&c.full_name));
        set.insert("first_name", opt(&c.first_name));
    }
    doc! {
        "$set": set,
        "$setOnInsert": { "org": &event.org, "wa_id": &c.wa_id },
    }
}

fn history_update(event: &WhatsAppEvent, h: &HistoryProgressEvent) -> Document {
    doc! {
        "$setOnInsert": { "org": &event.org, "phone_number_id": &event.phone_number_id },
        "$max": { "progress": h.progress, "updated_at": DateTime::from_millis(event.received_at_ms) },
        "$addToSet": { "chunks": format!("{}:{}", h.phase, h.chunk_order) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::webhook::Webhook;

    fn events_of(json: &str) -> Vec<WhatsAppEvent> {
        let webhook: Webhook = serde_json::from_str(json).unwrap();
        events::normalize(
            &webhook,
            1_700_000_000_000,
            &events::OrgDirectory::new("acme", []),
        )
        .events
    }

    const TEXT: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"111"},
        "contacts":[{"profile":{"name":"Ann"},"wa_id":"222"}],
        "messages":[{"from":"222","id":"wamid.A","timestamp":"1700000000","type":"text","text":{"body":"hi"}}]}}]}]}"#;

    #[test]
    fn a_message_upserts_message_contact_and_conversation_by_org_scoped_ids() {
        let events = events_of(TEXT);
        let plan = plan(events.iter().enumerate());
        let ids: Vec<_> = plan
            .iter()
            .map(|u| (u.collection, u.filter.get_str("_id").unwrap().to_string()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (collections::MESSAGES, "acme:wamid.A".to_string()),
                (collections::CONTACTS, "acme:222".to_string()),
                (collections::CONVERSATIONS, "acme:111-222".to_string()),
            ]
        );
        assert!(plan.iter().all(|u| !u.collision_means_done));
    }

    #[test]
    fn a_status_only_matches_a_lower_rank() {
        let json = TEXT.replace(
            r#""messages":[{"from":"222","id":"wamid.A","timestamp":"1700000000","type":"text","text":{"body":"hi"}}]"#,
            r#""statuses":[{"id":"wamid.A","status":"read","timestamp":"1700000001","recipient_id":"222"}]"#,
        );
        let events = events_of(&json);
        let plan = plan(events.iter().enumerate());
        let status = plan
            .iter()
            .find(|u| u.collection == collections::MESSAGES)
            .unwrap();
        assert!(status.collision_means_done);
        let or = status.filter.get_array("$or").unwrap();
        assert_eq!(
            or[1]
                .as_document()
                .unwrap()
                .get_document("status_rank")
                .unwrap()
                .get_i32("$lt")
                .unwrap(),
            DeliveryStatus::Read as i32
        );
    }
}
