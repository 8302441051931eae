//! Events → MongoDB update statements: pure, so the idempotence rules are unit tests.
//!
//! Every write is an upsert by a deterministic `_id` (`{org}:{id}`), so replaying a
//! topic rewrites the same documents:
//! - message content is `$set` (it never changes), first-seen time `$setOnInsert`;
//! - a status moves forward only: the filter matches a message whose `status_rank` is
//!   lower, and when it is not lower the upsert's insert collides on `_id` (duplicate
//!   key, 11000), which means "already there or further" and is not an error;
//! - times use `$max`, so late events never move them back.
//!
//! The documents, their field names and collections are `store`'s (the API reads the
//! same types); this module only decides which statements an event becomes.

use events::event::*;
use events::{DeliveryStatus, WhatsAppEvent, semantics};
use mongodb::bson::{Bson, DateTime, Document, doc};
use store::inbox::{
    BusinessAppChange, CONTACTS, CONVERSATIONS, Contact, Conversation, Edit, HISTORY_SYNCS,
    HistorySync, LastMessage, MESSAGE_STATUSES, MESSAGES, Message, MessageStatus, Reaction, Revoke,
    SYNC_ONLY, SyncError, SyncStatus,
};
use store::to_bson;

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
    /// What a duplicate-key error on this statement leaves to do: the sink runs it
    /// after the batch's statements of this collection (see
    /// [`conversation_with_preview`]).
    pub on_collision: Option<Box<Upsert>>,
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
                on_collision: None,
            })
        };
        let mut push = |collection, filter, update, collision_means_done| {
            statement(collection, filter, update, collision_means_done, true)
        };
        // Collected after `statement` and `push`, which borrow `out` mutably.
        let mut merged = None;
        match &event.body {
            EventBody::Message(m) => {
                push(
                    MESSAGES.name,
                    by_id(event, &m.wamid),
                    message_update(event, m),
                    false,
                );
                // A history media follow-up names no customer: it completes a message
                // already stored, and is no contact or conversation of its own.
                if semantics::adds_to_timeline(event) {
                    push(
                        CONTACTS.name,
                        by_id(event, &m.contact_wa_id),
                        contact_from_message(event, m),
                        false,
                    );
                    merged = Some(conversation_with_preview(
                        by_id(event, &m.conversation_id),
                        conversation_update(event, m),
                        last_message(event, m),
                        source,
                    ));
                }
            }
            EventBody::Edit(c) => {
                push(
                    MESSAGES.name,
                    by_id(event, &c.wamid),
                    edit_update(event, c),
                    false,
                );
                let (filter, update) = last_message_edited(event, c);
                statement(CONVERSATIONS.name, filter, update, false, false);
            }
            EventBody::Revoke(c) => {
                push(
                    MESSAGES.name,
                    by_id(event, &c.wamid),
                    revoke_update(event, c),
                    false,
                );
                let (filter, update) = last_message_revoked(event, c);
                statement(CONVERSATIONS.name, filter, update, false, false);
            }
            EventBody::Reaction(r) => {
                let (filter, update) = reaction_update(event, r);
                push(MESSAGES.name, filter, update, true);
            }
            EventBody::Status(s) => {
                if let Some(status) = DeliveryStatus::from_meta(&s.status) {
                    let rank = status as i32;
                    let filter = doc! {
                        Message::KEY: key(event, &s.wamid),
                        Message::STATUS_RANK: absent_or_below(rank),
                    };
                    push(MESSAGES.name, filter, status_update(event, s, status), true);
                }
                push(
                    MESSAGE_STATUSES.name,
                    by_id(event, &event.id),
                    status_history(event, s),
                    false,
                );
            }
            EventBody::ContactSync(c) => {
                // Applied only over an older change (Meta's own timestamp orders them,
                // not arrival); a remove never creates a contact.
                let field = Contact::BUSINESS_APP_CHANGED_AT;
                let filter = doc! {
                    Contact::KEY: key(event, &c.wa_id),
                    field: absent_or_below(seconds(c.changed_at)),
                };
                // A remove for a number never seen leaves a record only the sync
                // reads (`SYNC_ONLY`), so an older add arriving later cannot undo it,
                // and no contact appears.
                push(CONTACTS.name, filter, contact_sync_update(event, c), true)
            }
            EventBody::HistoryProgress(h) => push(
                HISTORY_SYNCS.name,
                by_id(event, &event.phone_number_id),
                history_update(event, h),
                false,
            ),
            EventBody::Unhandled(_) => {}
        }
        out.extend(merged);
    }
    out
}

/// A message's conversation upsert (`$setOnInsert`, `$max`) and its preview (the
/// last message, moved only forward) as one statement, not two: four statements
/// per inbound message become three, and the local MongoDB spent most of a core on
/// them at 1,000 messages/s (README, Benchmarks).
///
/// The statement matches the conversation only where the preview is not newer than
/// this message, and applies everything; a new conversation is inserted with all
/// of it. Where the preview is newer, its upsert collides on `_id`, and what is
/// left, the conversation upsert alone (only `$setOnInsert` and `$max`, so it
/// commutes with every other statement of the batch), runs after the batch's
/// other conversation statements.
fn conversation_with_preview(
    by_id: Document,
    conversation: Document,
    (preview_filter, preview): (Document, Document),
    source: usize,
) -> Upsert {
    let alone = Upsert {
        collection: CONVERSATIONS.name,
        filter: by_id,
        update: conversation.clone(),
        collision_means_done: false,
        upsert: true,
        source,
        on_collision: None,
    };
    let mut update = conversation;
    for (operator, fields) in preview {
        debug_assert!(!update.contains_key(&operator), "{operator} twice");
        update.insert(operator, fields);
    }
    Upsert {
        collection: CONVERSATIONS.name,
        filter: preview_filter,
        update,
        collision_means_done: false,
        upsert: true,
        source,
        on_collision: Some(Box::new(alone)),
    }
}

/// The clause "`field` is absent or below `value`" of the statements that apply only
/// over something older. It is one field-level `$not`, not the `$or` of `$exists`
/// and `$lt`: for a field that is absent or holds `value`'s type (ours always do) the
/// two match the same documents, but a filter with a top-level operator is not
/// served by the `_id` lookup everywhere: the local MongoDB (secantusdb) scans the
/// whole collection for it, once per statement. MongoDB uses the `_id` index for
/// both.
pub(super) fn absent_or_below(value: impl Into<Bson>) -> Document {
    doc! { "$not": { "$gte": value.into() } }
}

/// "`field` is absent or at most `value`", like [`absent_or_below`].
pub(super) fn absent_or_at_most(value: impl Into<Bson>) -> Document {
    doc! { "$not": { "$gt": value.into() } }
}

/// `{org}:{id}`: ids are unique per org, never across orgs.
pub fn key(event: &WhatsAppEvent, id: &str) -> String {
    store::key(&event.org, id)
}

fn by_id(event: &WhatsAppEvent, id: &str) -> Document {
    doc! { store::KEY_FIELD: key(event, id) }
}

fn seconds(at: i64) -> DateTime {
    DateTime::from_millis(at.saturating_mul(1000))
}

fn opt(value: &Option<String>) -> Bson {
    value.clone().map_or(Bson::Null, Bson::String)
}

/// The fields every way of creating a message document starts with.
fn message_on_insert(event: &WhatsAppEvent, wamid: &str) -> Document {
    doc! {
        Message::ORG: &event.org,
        Message::ID: wamid,
        Message::PHONE_NUMBER_ID: &event.phone_number_id,
    }
}

fn first_seen(event: &WhatsAppEvent) -> Document {
    doc! { Message::FIRST_SEEN_AT: DateTime::from_millis(event.received_at_ms) }
}

fn message_update(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut set = message_on_insert(event, &m.wamid);
    set.extend(doc! {
        Message::DIRECTION: to_bson(&m.direction),
        Message::ORIGIN: to_bson(&m.origin),
        Message::TYPE: &m.message_type,
        Message::PREVIEW: opt(&m.preview),
        Message::REPLY_TO: opt(&m.reply_to),
        Message::MEDIA: to_bson(&m.media),
        Message::HISTORY_STATUS: opt(&m.history_status),
        Message::SENT_AT: seconds(m.sent_at),
        Message::RAW: to_bson(&m.raw),
    });
    if !m.errors.is_empty() {
        set.insert(Message::ERRORS, to_bson(&m.errors));
    }
    // A history media follow-up names no customer: keep the placeholder's.
    if !m.contact_wa_id.is_empty() {
        set.insert(Message::CONVERSATION_ID, &m.conversation_id);
        set.insert(Message::CONTACT_WA_ID, &m.contact_wa_id);
    }
    doc! {
        "$set": set,
        // `$min`, not `$setOnInsert`: an edit, revoke or reaction may have created
        // the document before the message itself arrived.
        "$min": first_seen(event),
    }
}

/// An edit of message `c.wamid`: a version kept beside the original content. Which
/// version is current is decided when reading ([`store::inbox::current_content`]),
/// from the set of versions, so edits and the original may arrive in any order. An
/// edit arriving first creates the document, holding the edit until the original
/// lands.
fn edit_update(event: &WhatsAppEvent, c: &MessageChangeEvent) -> Document {
    let version = Edit {
        id: c.change_wamid.clone(),
        at: Some(seconds(c.sent_at)),
        message_type: c.message_type.clone(),
        preview: c.preview.clone(),
        media: c.media.clone(),
        origin: Some(c.origin),
    };
    doc! {
        "$setOnInsert": message_on_insert(event, &c.wamid),
        "$addToSet": { Message::EDITS: to_bson(&version) },
        "$max": { Message::EDITED_AT: seconds(c.sent_at) },
        "$min": first_seen(event),
    }
}

/// A revoke of message `c.wamid`: marked deleted; reads clear its content (the raw
/// webhook keeps it for audit).
fn revoke_update(event: &WhatsAppEvent, c: &MessageChangeEvent) -> Document {
    let revoke = Revoke {
        id: c.change_wamid.clone(),
        origin: Some(c.origin),
    };
    doc! {
        "$setOnInsert": message_on_insert(event, &c.wamid),
        "$max": { Message::DELETED_AT: seconds(c.sent_at) },
        "$addToSet": { Message::REVOKES: to_bson(&revoke) },
        "$min": first_seen(event),
    }
}

/// A reaction on message `r.wamid`, one per reactor: applied only over an older one
/// of the same reactor (a late, older reaction collides and is dropped as done). A
/// removal keeps its time with no emoji, so an older reaction cannot come back.
fn reaction_update(event: &WhatsAppEvent, r: &ReactionEvent) -> (Document, Document) {
    let field = store::inbox::reaction_field(&r.reactor);
    let at = format!("{field}.{}", Reaction::AT);
    let filter = doc! {
        Message::KEY: key(event, &r.wamid),
        at: absent_or_below(seconds(r.sent_at)),
    };
    let reaction = Reaction {
        emoji: r.emoji.clone(),
        at: Some(seconds(r.sent_at)),
        id: r.change_wamid.clone(),
        origin: Some(r.origin),
    };
    let update = doc! {
        "$set": { field: to_bson(&reaction) },
        "$setOnInsert": message_on_insert(event, &r.wamid),
        "$min": first_seen(event),
    };
    (filter, update)
}

/// The conversation's last message (for its preview), moved only forward: the
/// statement matches only if this message is at least as new as the one it shows.
/// Shared with the outbound results ([`super::inbox`]).
pub(super) fn last_message_statement(
    org: &str,
    conversation_id: &str,
    wamid: &str,
    at: DateTime,
    preview: String,
) -> (Document, Document) {
    let filter = doc! {
        Conversation::KEY: store::key(org, conversation_id),
        Conversation::PREVIEW_AT: absent_or_at_most(at),
    };
    let last = LastMessage {
        id: wamid.to_string(),
        at: Some(at),
        preview: Some(preview),
        version_at: Some(at),
        deleted: None,
    };
    let update = doc! { "$set": { Conversation::LAST_MESSAGE: to_bson(&last) } };
    (filter, update)
}

fn last_message(event: &WhatsAppEvent, m: &MessageEvent) -> (Document, Document) {
    last_message_statement(
        &event.org,
        &m.conversation_id,
        &m.wamid,
        seconds(m.sent_at),
        preview_of(m.preview.as_deref(), &m.message_type),
    )
}

/// An edit of the message the conversation shows last changes its preview (the
/// newest edit wins; never after a revoke).
fn last_message_edited(event: &WhatsAppEvent, c: &MessageChangeEvent) -> (Document, Document) {
    let at = seconds(c.sent_at);
    let filter = doc! {
        Conversation::KEY: key(event, &c.conversation_id),
        Conversation::PREVIEW_ID: &c.wamid,
        Conversation::PREVIEW_VERSION_AT: { "$lt": at },
        Conversation::PREVIEW_DELETED: { "$ne": true },
    };
    let preview = preview_of(
        c.preview.as_deref(),
        c.message_type.as_deref().unwrap_or(""),
    );
    let update = doc! { "$set": {
        Conversation::PREVIEW_TEXT: preview,
        Conversation::PREVIEW_VERSION_AT: at,
    } };
    (filter, update)
}

/// A revoke of the message the conversation shows last clears its preview.
fn last_message_revoked(event: &WhatsAppEvent, c: &MessageChangeEvent) -> (Document, Document) {
    let filter = doc! {
        Conversation::KEY: key(event, &c.conversation_id),
        Conversation::PREVIEW_ID: &c.wamid,
    };
    let update = doc! { "$set": {
        Conversation::PREVIEW_TEXT: Bson::Null,
        Conversation::PREVIEW_DELETED: true,
    } };
    (filter, update)
}

/// The preview shown for a message: its text, or its type in brackets.
pub(super) fn preview_of(preview: Option<&str>, message_type: &str) -> String {
    match preview {
        Some(p) => p.chars().take(200).collect(),
        None => format!("[{message_type}]"),
    }
}

fn contact_from_message(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut update = doc! {
        "$setOnInsert": { Contact::ORG: &event.org, Contact::WA_ID: &m.contact_wa_id },
        "$min": { Contact::CREATED_AT: seconds(m.sent_at) },
        "$max": { Contact::LAST_MESSAGE_AT: seconds(m.sent_at) },
        "$unset": { SYNC_ONLY: "" },
    };
    if let Some(name) = &m.contact_name {
        update.insert("$set", doc! { Contact::PROFILE_NAME: name });
    }
    update
}

fn conversation_update(event: &WhatsAppEvent, m: &MessageEvent) -> Document {
    let mut max = doc! { Conversation::LAST_MESSAGE_AT: seconds(m.sent_at) };
    // The customer's last live message: the 24-hour window's start (one rule for
    // the window, here and in the whatsapp sink).
    if semantics::is_customer_writing(event) {
        max.insert(Conversation::LAST_INBOUND_AT, seconds(m.sent_at));
    }
    // A conversation first seen through history is past business, not a new request.
    let state = if m.origin == Origin::History {
        events::inbox::ConversationState::Resolved
    } else {
        events::inbox::ConversationState::Open
    };
    doc! {
        "$setOnInsert": {
            Conversation::ORG: &event.org,
            Conversation::ID: &m.conversation_id,
            Conversation::PHONE_NUMBER_ID: &event.phone_number_id,
            Conversation::CONTACT_WA_ID: &m.contact_wa_id,
            Conversation::STATE: to_bson(&state),
            Conversation::CREATED_AT: seconds(m.sent_at),
        },
        "$max": max,
    }
}

fn status_update(event: &WhatsAppEvent, s: &StatusEvent, status: DeliveryStatus) -> Document {
    let mut set = doc! {
        Message::STATUS: status.as_str(),
        Message::STATUS_RANK: status as i32,
        Message::STATUS_AT: seconds(s.at),
    };
    if let Some(error) = s.errors.first() {
        set.insert(Message::ERROR, to_bson(error));
    }
    let mut on_insert = message_on_insert(event, &s.wamid);
    on_insert.extend(doc! {
        Message::CONVERSATION_ID: &s.conversation_id,
        Message::CONTACT_WA_ID: &s.recipient_id,
    });
    doc! {
        "$set": set,
        // A status can arrive before its message (sent from elsewhere, or reordered).
        "$setOnInsert": on_insert,
    }
}

fn status_history(event: &WhatsAppEvent, s: &StatusEvent) -> Document {
    doc! {
        "$setOnInsert": {
            MessageStatus::ORG: &event.org,
            MessageStatus::WAMID: &s.wamid,
            MessageStatus::STATUS: &s.status,
            MessageStatus::AT: seconds(s.at),
            MessageStatus::ERRORS: to_bson(&s.errors),
            MessageStatus::RAW: to_bson(&s.raw),
        }
    }
}

fn contact_sync_update(event: &WhatsAppEvent, c: &ContactSyncEvent) -> Document {
    let added = c.action == ContactAction::Upsert;
    let change = BusinessAppChange {
        action: if added { "add" } else { "remove" }.to_string(),
        changed_at: Some(seconds(c.changed_at)),
    };
    let mut set = doc! {
        Contact::IN_BUSINESS_APP: added,
        // When and how the Business app last changed this contact.
        Contact::BUSINESS_APP: to_bson(&change),
    };
    if added {
        set.insert(Contact::FULL_NAME, opt(&c.full_name));
        set.insert(Contact::FIRST_NAME, opt(&c.first_name));
    }
    let mut update = doc! { "$set": set };
    let mut on_insert = doc! { Contact::ORG: &event.org, Contact::WA_ID: &c.wa_id };
    if added {
        on_insert.insert(Contact::CREATED_AT, seconds(c.changed_at));
        update.insert("$unset", doc! { SYNC_ONLY: "" });
    } else {
        on_insert.insert(SYNC_ONLY, true);
    }
    update.insert("$setOnInsert", on_insert);
    update
}

/// Meta's code for "the business declined sharing its chat history".
pub const HISTORY_DECLINED: i64 = 2_593_109;

fn history_update(event: &WhatsAppEvent, h: &HistoryProgressEvent) -> Document {
    let at = DateTime::from_millis(event.received_at_ms);
    let mut on_insert = doc! {
        HistorySync::ORG: &event.org,
        HistorySync::PHONE_NUMBER_ID: &event.phone_number_id,
    };
    let mut update = doc! {
        "$max": {
            HistorySync::PROGRESS: h.progress,
            HistorySync::UPDATED_AT: at,
            HistorySync::PHASE: h.phase,
        },
        "$addToSet": { HistorySync::CHUNKS: format!("{}:{}", h.phase, h.chunk_order) },
    };
    if let Some(error) = h.errors.first() {
        // Declined (2593109) or failed: Meta's code and words, for the admin.
        let status = if error.code == HISTORY_DECLINED {
            SyncStatus::Declined
        } else {
            SyncStatus::Failed
        };
        let error = SyncError {
            code: error.code,
            title: error.title.clone(),
            message: error.message.clone(),
        };
        update.insert(
            "$set",
            doc! {
                HistorySync::STATUS: status.as_str(),
                HistorySync::ERROR: to_bson(&error),
                HistorySync::FINISHED_AT: at,
            },
        );
    } else if h.progress >= 100 {
        update.insert(
            "$set",
            doc! { HistorySync::STATUS: SyncStatus::Completed.as_str() },
        );
        update.insert("$min", doc! { HistorySync::FINISHED_AT: at });
    } else {
        on_insert.insert(HistorySync::STATUS, SyncStatus::InProgress.as_str());
    }
    update.insert("$setOnInsert", on_insert);
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
                (MESSAGES.name, "acme:wamid.A".to_string()),
                (CONTACTS.name, "acme:222".to_string()),
                // With its last message, if not older than the one it shows.
                (CONVERSATIONS.name, "acme:111-222".to_string()),
            ]
        );
        assert!(plan.iter().all(|u| !u.collision_means_done && u.upsert));
        let conversation = &plan[2];
        let update = &conversation.update;
        assert!(update.contains_key("$setOnInsert") && update.contains_key("$max"));
        assert!(
            update
                .get_document("$set")
                .unwrap()
                .contains_key("last_message")
        );
        assert!(conversation.filter.contains_key("last_message.at"));
        // Where the preview is newer, the rest is the conversation upsert alone.
        let alone = conversation.on_collision.as_deref().expect("a rest");
        assert_eq!(alone.filter, doc! { "_id": "acme:111-222" });
        assert!(!alone.update.contains_key("$set"));
        assert_eq!(alone.update.get("$max"), update.get("$max"));
        assert!(alone.upsert && alone.on_collision.is_none());
        assert!(plan.iter().filter(|u| u.on_collision.is_some()).count() == 1);
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
        assert_eq!(collections, [MESSAGES.name]);
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
                assert_eq!(u.collection, CONTACTS.name);
                let removing = name.ends_with("remove");
                let on_insert = u.update.get_document("$setOnInsert").unwrap();
                assert_eq!(on_insert.get_bool(SYNC_ONLY).is_ok(), removing, "{name}");
                let older = u.filter.get_document("business_app.changed_at").unwrap();
                assert_eq!(
                    older
                        .get_document("$not")
                        .unwrap()
                        .keys()
                        .collect::<Vec<_>>(),
                    ["$gte"],
                    "{name}"
                );
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
                .filter(|u| u.collection == MESSAGES.name)
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
            assert!(plan.iter().all(|u| u.collection != CONTACTS.name), "{name}");
            assert!(
                plan.iter()
                    .filter(|u| u.collection == CONVERSATIONS.name)
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
        let status = plan.iter().find(|u| u.collection == MESSAGES.name).unwrap();
        assert!(status.collision_means_done);
        assert_eq!(
            status.filter.get_document("status_rank").unwrap(),
            &doc! { "$not": { "$gte": DeliveryStatus::Read as i32 } }
        );
    }
}
