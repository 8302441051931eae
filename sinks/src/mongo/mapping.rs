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
use events::{DeliveryStatus, WhatsAppEvent, semantics};
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
    /// Insert when nothing matches. `false` for changes that only apply to a document
    /// already there (a remove for an unknown contact creates nothing).
    pub upsert: bool,
    pub source: usize,
}

/// The statements for a batch of `(record index, event)`.
pub fn plan<'a>(events: impl IntoIterator<Item = (usize, &'a WhatsAppEvent)>) -> Vec<Upsert> {
    let mut out = Vec::new();
    for (source, event) in events {
        let mut statement = |collection, filter, update, collision_means_done, upsert| {
            out.push(Upsert {
                collection,
                filter,
                update,
                collision_means_done,
                upsert,
                source,
            })
        };
        let mut push = |collection, filter, update, collision_means_done| {
            statement(collection, filter, update, collision_means_done, true)
        };
        match &event.body {
            EventBody::Message(m) => {
                push(
                    collections::MESSAGES,
                    by_id(event, &m.wamid),
                    message_update(event, m),
                    false,
                );
                // A history media follow-up names no customer: it completes a message
                // already stored, and is no contact or conversation of its own.
                if semantics::adds_to_timeline(event) {
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
                    // After the statement above, which creates the conversation.
                    let (filter, update) = last_message(event, m);
                    statement(collections::CONVERSATIONS, filter, update, false, false);
                }
            }
            EventBody::Edit(c) => {
                push(
                    collections::MESSAGES,
                    by_id(event, &c.wamid),
                    edit_update(event, c),
                    false,
                );
                let (filter, update) = last_message_edited(event, c);
                statement(collections::CONVERSATIONS, filter, update, false, false);
            }
            EventBody::Revoke(c) => {
                push(
                    collections::MESSAGES,
                    by_id(event, &c.wamid),
                    revoke_update(event, c),
                    false,
                );
                let (filter, update) = last_message_revoked(event, c);
                statement(collections::CONVERSATIONS, filter, update, false, false);
            }
            EventBody::Reaction(r) => {
                let (filter, update) = reaction_update(event, r);
                push(collections::MESSAGES, filter, update, true);
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
            EventBody::ContactSync(c) => {
                // Applied only over an older change (Meta's own timestamp orders them,
                // not arrival); a remove never creates a contact.
                let field = "business_app.changed_at";
                let filter = doc! {
                    "_id": key(event, &c.wa_id),
                    "$or": [ { field: { "$exists": false } }, { field: { "$lt": seconds(c.changed_at) } } ],
                };
                // A remove for a number never seen leaves a record only the sync
                // reads (`SYNC_ONLY`), so an older add arriving later cannot undo it,
                // and no contact appears.
                push(
                    collections::CONTACTS,
                    filter,
                    contact_sync_update(event, c),
                    true,
                )
            }
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
    if !m.errors.is_empty() {
        set.insert("errors", to_bson(&m.errors));
    }
    // A history media follow-up names no customer: keep the placeholder's.
    if !m.contact_wa_id.is_empty() {
        set.insert("conversation_id", &m.conversation_id);
        set.insert("contact_wa_id", &m.contact_wa_id);
    }
    doc! {
        "$set": set,
        // `$min`, not `$setOnInsert`: an edit, revoke or reaction may have created
        // the document before the message itself arrived.
        "$min": { "first_seen_at": DateTime::from_millis(event.received_at_ms) },
    }
}

/// An edit of message `c.wamid`: a version kept beside the original content. Which
/// version is current is decided when reading ([`current_content`]), from the set of
/// versions, so edits and the original may arrive in any order. An edit arriving
/// first creates the document, holding the edit until the original lands.
fn edit_update(event: &WhatsAppEvent, c: &MessageChangeEvent) -> Document {
    let version = doc! {
        "id": &c.change_wamid,
        "at": seconds(c.sent_at),
        "type": opt(&c.message_type),
        "preview": opt(&c.preview),
        "media": to_bson(&c.media),
        "origin": to_bson(&c.origin),
    };
    doc! {
        "$setOnInsert": { "org": &event.org, "id": &c.wamid, "phone_number_id": &event.phone_number_id },
        "$addToSet": { "edits": version },
        "$max": { "edited_at": seconds(c.sent_at) },
        "$min": { "first_seen_at": DateTime::from_millis(event.received_at_ms) },
    }
}

/// A revoke of message `c.wamid`: marked deleted; reads clear its content (the raw
/// webhook keeps it for audit).
fn revoke_update(event: &WhatsAppEvent, c: &MessageChangeEvent) -> Document {
    doc! {
        "$setOnInsert": { "org": &event.org, "id": &c.wamid, "phone_number_id": &event.phone_number_id },
        "$max": { "deleted_at": seconds(c.sent_at) },
        "$addToSet": { "revokes": { "id": &c.change_wamid, "origin": to_bson(&c.origin) } },
        "$min": { "first_seen_at": DateTime::from_millis(event.received_at_ms) },
    }
}

/// A reaction on message `r.wamid`, one per reactor: applied only over an older one
/// of the same reactor (a late, older reaction collides and is dropped as done). A
/// removal keeps its time with no emoji, so an older reaction cannot come back.
fn reaction_update(event: &WhatsAppEvent, r: &ReactionEvent) -> (Document, Document) {
    let field = format!("reactions.{}", reaction_key(&r.reactor));
    let at = format!("{field}.at");
    let filter = doc! {
        "_id": key(event, &r.wamid),
        "$or": [ { &at: { "$exists": false } }, { &at: { "$lt": seconds(r.sent_at) } } ],
    };
    let update = doc! {
        "$set": { field: {
            "emoji": opt(&r.emoji),
            "at": seconds(r.sent_at),
            "id": &r.change_wamid,
            "origin": to_bson(&r.origin),
        } },
        "$setOnInsert": { "org": &event.org, "id": &r.wamid, "phone_number_id": &event.phone_number_id },
        "$min": { "first_seen_at": DateTime::from_millis(event.received_at_ms) },
    };
    (filter, update)
}

/// A reactor as a field name: wa_ids are digits; anything else loses what MongoDB
/// would read as a path (`.`) or an operator (`$`).
fn reaction_key(reactor: &str) -> String {
    reactor.replace(['.', '$'], "_")
}

/// The conversation's last message (for its preview), moved only forward: the
/// statement matches only if this message is at least as new as the one it shows.
fn last_message(event: &WhatsAppEvent, m: &MessageEvent) -> (Document, Document) {
    let at = seconds(m.sent_at);
    let filter = doc! {
        "_id": key(event, &m.conversation_id),
        "$or": [ { "last_message.at": { "$exists": false } }, { "last_message.at": { "$lte": at } } ],
    };
    let update = doc! { "$set": { "last_message": {
        "id": &m.wamid,
        "at": at,
        "preview": preview_of(m.preview.as_deref(), &m.message_type),
        "version_at": at,
    } } };
    (filter, update)
}

/// An edit of the message the conversation shows last changes its preview (the
/// newest edit wins; never after a revoke).
fn last_message_edited(event: &WhatsAppEvent, c: &MessageChangeEvent) -> (Document, Document) {
    let at = seconds(c.sent_at);
    let filter = doc! {
        "_id": key(event, &c.conversation_id),
        "last_message.id": &c.wamid,
        "last_message.version_at": { "$lt": at },
        "last_message.deleted": { "$ne": true },
    };
    let preview = preview_of(
        c.preview.as_deref(),
        c.message_type.as_deref().unwrap_or(""),
    );
    let update =
        doc! { "$set": { "last_message.preview": preview, "last_message.version_at": at } };
    (filter, update)
}

/// A revoke of the message the conversation shows last clears its preview.
fn last_message_revoked(event: &WhatsAppEvent, c: &MessageChangeEvent) -> (Document, Document) {
    let filter = doc! { "_id": key(event, &c.conversation_id), "last_message.id": &c.wamid };
    let update =
        doc! { "$set": { "last_message.preview": Bson::Null, "last_message.deleted": true } };
    (filter, update)
}

/// The preview shown for a message: its text, or its type in brackets.
fn preview_of(preview: Option<&str>, message_type: &str) -> String {
    match preview {
        Some(p) => p.chars().take(200).collect(),
        None => format!("[{message_type}]"),
    }
}

/// What a message shows now, from its stored versions: the newest edit (by its time,
/// then id), else the original; `None` when it was deleted. Pure over the set of
/// versions, so the order they arrived in does not matter.
pub fn current_content(message: &Document) -> Option<(Option<String>, Option<String>)> {
    if message.get("deleted_at").is_some_and(|d| *d != Bson::Null) {
        return None;
    }
    let newest = message
        .get_array("edits")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
        .max_by_key(|v| {
            (
                v.get_datetime("at")
                    .map(|d| d.timestamp_millis())
                    .unwrap_or(0),
                v.get_str("id").unwrap_or_default().to_owned(),
            )
        });
    let text = |d: &Document, k: &str| d.get_str(k).ok().map(str::to_owned);
    Some(match newest {
        Some(edit) => (text(edit, "preview"), text(edit, "type")),
        None => (text(message, "preview"), text(message, "type")),
    })
}

fn contact_from_message(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut update = doc! {
        "$setOnInsert": { "org": &event.org, "wa_id": &m.contact_wa_id },
        "$min": { "created_at": seconds(m.sent_at) },
        "$max": { "last_message_at": seconds(m.sent_at) },
        "$unset": { SYNC_ONLY: "" },
    };
    if let Some(name) = &m.contact_name {
        update.insert("$set", doc! { "profile_name": name });
    }
    update
}

fn conversation_update(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut max = doc! { "last_message_at": seconds(m.sent_at) };
    // The customer's last live message: the 24-hour window's start (one rule for
    // the window, here and in the whatsapp sink).
    if semantics::is_customer_writing(event) {
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
    let added = c.action == ContactAction::Upsert;
    let mut set = doc! {
        "in_business_app": added,
        // When and how the Business app last changed this contact.
        "business_app": { "action": if added { "add" } else { "remove" }, "changed_at": seconds(c.changed_at) },
    };
    if added {
        set.insert("full_name", opt(&c.full_name));
        set.insert("first_name", opt(&c.first_name));
    }
    let mut update = doc! { "$set": set };
    if added {
        update.insert(
            "$setOnInsert",
            doc! { "org": &event.org, "wa_id": &c.wa_id, "created_at": seconds(c.changed_at) },
        );
        update.insert("$unset", doc! { SYNC_ONLY: "" });
    } else {
        update.insert(
            "$setOnInsert",
            doc! { "org": &event.org, "wa_id": &c.wa_id, SYNC_ONLY: true },
        );
    }
    update
}

/// Marks a contacts document that only records a Business-app remove of a number
/// that never wrote: not a contact (the API does not show it) until the customer
/// writes or the Business app adds them again.
pub const SYNC_ONLY: &str = "sync_only";

/// Meta's code for "the business declined sharing its chat history".
pub const HISTORY_DECLINED: i64 = 2_593_109;

fn history_update(event: &WhatsAppEvent, h: &HistoryProgressEvent) -> Document {
    let at = DateTime::from_millis(event.received_at_ms);
    let mut update = doc! {
        "$setOnInsert": { "org": &event.org, "phone_number_id": &event.phone_number_id },
        "$max": { "progress": h.progress, "updated_at": at, "phase": h.phase },
        "$addToSet": { "chunks": format!("{}:{}", h.phase, h.chunk_order) },
    };
    if let Some(error) = h.errors.first() {
        // Declined (2593109) or failed: Meta's code and words, for the admin.
        let status = if error.code == HISTORY_DECLINED {
            "declined"
        } else {
            "failed"
        };
        update.insert(
            "$set",
            doc! {
                "status": status,
                "error": { "code": error.code, "title": opt(&error.title), "message": opt(&error.message) },
                "finished_at": at,
            },
        );
    } else if h.progress >= 100 {
        update.insert("$set", doc! { "status": "completed" });
        update.insert("$min", doc! { "finished_at": at });
    } else {
        update.insert("$setOnInsert", doc! {
            "org": &event.org, "phone_number_id": &event.phone_number_id, "status": "in_progress",
        });
    }
    update
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
                // Its last message, if not older than the one it shows.
                (collections::CONVERSATIONS, "acme:111-222".to_string()),
            ]
        );
        assert!(plan.iter().all(|u| !u.collision_means_done));
        assert_eq!(plan.iter().filter(|u| !u.upsert).count(), 1);
    }

    fn fixture(name: &str) -> Vec<WhatsAppEvent> {
        let path = format!(
            "{}/../events/tests/fixtures/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        events_of(&std::fs::read_to_string(path).unwrap())
    }

    #[test]
    fn nothing_but_the_customer_writing_moves_the_window() {
        let samples = events::semantics::samples::not_customer_writing("o", "p", "c", 1);
        for event in &samples {
            for u in plan([(0, event)]) {
                assert!(
                    !format!("{:?}", u.update).contains("last_inbound_at"),
                    "{:?}: {:?}",
                    event.body,
                    u.update
                );
            }
        }
        let wrote = events::semantics::samples::message(
            "o",
            "p",
            "c",
            "m",
            events::event::Origin::Customer,
            1,
        );
        assert!(
            plan([(0, &wrote)])
                .iter()
                .any(|u| format!("{:?}", u.update).contains("last_inbound_at"))
        );
    }

    #[test]
    fn a_history_media_follow_up_writes_no_contact_or_conversation() {
        let events = fixture("history_media");
        let plan = plan(events.iter().enumerate());
        let collections: Vec<_> = plan.iter().map(|u| u.collection).collect();
        assert_eq!(collections, [collections::MESSAGES]);
        assert!(
            !plan[0]
                .update
                .get_document("$set")
                .unwrap()
                .contains_key("conversation_id")
        );
    }

    #[test]
    fn a_contact_remove_creates_no_contact_and_changes_apply_in_meta_order() {
        for name in ["smb_app_state_sync_remove", "smb_app_state_sync"] {
            let events = fixture(name);
            for u in plan(events.iter().enumerate()) {
                assert_eq!(u.collection, collections::CONTACTS);
                let removing = name.ends_with("remove");
                let on_insert = u.update.get_document("$setOnInsert").unwrap();
                assert_eq!(on_insert.get_bool(SYNC_ONLY).is_ok(), removing, "{name}");
                let or = u.filter.get_array("$or").unwrap();
                let older = or[1]
                    .as_document()
                    .unwrap()
                    .get_document("business_app.changed_at")
                    .unwrap();
                assert!(older.contains_key("$lt"), "{name}");
            }
        }
    }

    #[test]
    fn declined_history_is_recorded_with_metas_code_and_message() {
        let events = fixture("history_declined");
        let plan = plan(events.iter().enumerate());
        assert_eq!(plan.len(), 1);
        let set = plan[0].update.get_document("$set").unwrap();
        assert_eq!(set.get_str("status").unwrap(), "declined");
        assert_eq!(
            set.get_document("error").unwrap().get_i64("code").unwrap(),
            HISTORY_DECLINED
        );
        assert!(set.contains_key("finished_at"));
    }

    #[test]
    fn edits_revokes_and_reactions_change_the_original_and_are_no_messages() {
        for (name, original) in [
            (
                "smb_message_echoes_edit",
                "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQyQTlEM0Y3RTFCNUM4QTBENEU2RgA=",
            ),
            (
                "smb_message_echoes_revoke",
                "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQyQTlEM0Y3RTFCNUM4QTBENEU2RgA=",
            ),
            (
                "msg_revoke",
                "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTdCNTg5RjY4MEQxRDFGQjQ5MwA=",
            ),
            (
                "msg_reaction",
                "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA",
            ),
            (
                "msg_reaction_removed",
                "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA",
            ),
        ] {
            let events = fixture(name);
            let plan = plan(events.iter().enumerate());
            let messages: Vec<_> = plan
                .iter()
                .filter(|u| u.collection == collections::MESSAGES)
                .collect();
            assert_eq!(messages.len(), 1, "{name}");
            assert_eq!(
                messages[0].filter.get_str("_id").unwrap(),
                format!("acme:{original}"),
                "{name}"
            );
            // Nothing that would make it a message of its own, or a customer writing.
            let update = &messages[0].update;
            assert!(
                !update.contains_key("$set")
                    || !update.get_document("$set").unwrap().contains_key("type"),
                "{name}"
            );
            assert!(
                plan.iter().all(|u| u.collection != collections::CONTACTS),
                "{name}"
            );
            assert!(
                plan.iter()
                    .filter(|u| u.collection == collections::CONVERSATIONS)
                    .all(|u| !u.upsert),
                "{name}: may only touch an existing conversation's preview"
            );
        }
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
