//! What the inbox shows besides webhooks, as update statements (pure):
//! - who owns each conversation, from `conversations.assignments`;
//! - what agents sent, from `messages.outbound.results` (the message appears with
//!   Meta's wamid, or as failed under `outbound:{command id}`, the id the status
//!   processor uses too);
//! - marks as read, from `messages.outbound` (a conversation's `read_up_to`; the API
//!   counts inbound messages after it as unread, so redelivery never miscounts);
//! - media copied to S3, from `media.stored`;
//! - every command's first outcome in `command_results`, for polling.
//!
//! Assignments of one conversation are ordered by `(at_ms, offset)`: they live in
//! one partition, so a redelivered older one never overwrites a newer one, and the
//! time keeps the order after a broker whose offsets restarted.

use events::delivery::{MediaStored, OutboundMessage, OutboundOutcome, OutboundResult};
use events::inbox::{AssignmentEvent, ConversationState};
use events::{DeliveryStatus, codec, topics};
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::mapping::{Upsert, collections};

/// The statements for one record of a topic other than `whatsapp.events`.
pub fn plan_record(
    topic: &str,
    source: usize,
    offset: i64,
    value: &[u8],
) -> Result<Vec<Upsert>, String> {
    let statements = match topic {
        topics::CONVERSATION_ASSIGNMENTS => {
            let a: AssignmentEvent =
                codec::decode(value).map_err(|e| format!("not an assignment: {e}"))?;
            assignment(&a, offset)
        }
        topics::OUTBOUND_RESULTS => {
            let r: OutboundResult =
                codec::decode(value).map_err(|e| format!("not an outbound result: {e}"))?;
            outbound_result(&r)
        }
        topics::MESSAGES_OUTBOUND => {
            let m: OutboundMessage =
                codec::decode(value).map_err(|e| format!("not an outbound message: {e}"))?;
            outbound(&m)
        }
        topics::MEDIA_STORED => {
            let m: MediaStored =
                codec::decode(value).map_err(|e| format!("not a media.stored record: {e}"))?;
            vec![media(&m)]
        }
        other => return Err(format!("the mongo sink does not read {other}")),
    };
    Ok(statements
        .into_iter()
        .map(
            |(collection, filter, update, collision_means_done)| Upsert {
                collection,
                filter,
                update,
                collision_means_done,
                upsert: true,
                source,
            },
        )
        .collect())
}

type Statement = (&'static str, Document, Document, bool);

fn key(org: &str, id: &str) -> String {
    format!("{org}:{id}")
}

/// The conversation's fields known from its id alone (`{phone_number_id}-{wa_id}`),
/// for when an assignment or a reply is written before the first message.
fn conversation_on_insert(org: &str, phone_number_id: &str, conversation_id: &str) -> Document {
    let contact = conversation_id
        .strip_prefix(phone_number_id)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_default();
    doc! {
        "org": org,
        "id": conversation_id,
        "phone_number_id": phone_number_id,
        "contact_wa_id": contact,
    }
}

fn assignment(a: &AssignmentEvent, offset: i64) -> Vec<Statement> {
    let mut out = Vec::new();
    if a.rejected.is_none() {
        let state = match a.state {
            ConversationState::Open => "open",
            ConversationState::Assigned => "assigned",
            ConversationState::Resolved => "resolved",
        };
        let assignee = match a.state {
            ConversationState::Assigned => a.assignee.clone().map_or(Bson::Null, Bson::String),
            _ => Bson::Null,
        };
        let filter = doc! {
            "_id": key(&a.org, &a.conversation_id),
            "$or": [
                { "assignment_at_ms": { "$exists": false } },
                { "assignment_at_ms": { "$lt": a.at_ms } },
                { "assignment_at_ms": a.at_ms, "assignment_offset": { "$lt": offset } },
            ],
        };
        let mut on_insert = conversation_on_insert(&a.org, &a.phone_number_id, &a.conversation_id);
        on_insert.insert("created_at", DateTime::from_millis(a.at_ms));
        out.push((
            collections::CONVERSATIONS,
            filter,
            doc! {
                "$set": {
                    "state": state,
                    "assignee": assignee,
                    "assignment_at_ms": a.at_ms,
                    "assignment_offset": offset,
                },
                "$setOnInsert": on_insert,
            },
            // Not matched because a newer assignment is there: already superseded.
            true,
        ));
    }
    if let (None, Some(text), Some(command_id)) = (&a.rejected, &a.note, &a.command_id) {
        out.push(note(a, command_id, text));
    }
    if let Some(command_id) = &a.command_id {
        out.push(command_result(
            &a.org,
            command_id,
            doc! {
                "kind": "conversation",
                "accepted": a.rejected.is_none(),
                "reason": a.rejected.clone().map_or(Bson::Null, Bson::String),
                "issued_by": a.issued_by.clone().map_or(Bson::Null, Bson::String),
                "conversation_id": &a.conversation_id,
                "state": format!("{:?}", a.state).to_lowercase(),
                "assignee": a.assignee.clone().map_or(Bson::Null, Bson::String),
                "at_ms": a.at_ms,
            },
        ));
    }
    out
}

/// An accepted note, on the conversation's timeline as a message of type `note` and
/// direction `internal` (its text in `preview`), under `note:{command id}`, so a
/// redelivered answer rewrites the same document. The conversation's activity time
/// does not move: a note is not news from the customer.
fn note(a: &AssignmentEvent, command_id: &str, text: &str) -> Statement {
    let id = format!("note:{command_id}");
    (
        collections::MESSAGES,
        doc! { "_id": key(&a.org, &id) },
        doc! {
            "$set": {
                "org": &a.org,
                "id": &id,
                "phone_number_id": &a.phone_number_id,
                "conversation_id": &a.conversation_id,
                "direction": "internal",
                "type": "note",
                "preview": text,
                "sent_by": a.issued_by.clone().map_or(Bson::Null, Bson::String),
                "command_id": command_id,
            },
            "$setOnInsert": {
                "sent_at": DateTime::from_millis(a.at_ms),
                "first_seen_at": DateTime::from_millis(a.at_ms),
            },
        },
        false,
    )
}

/// The first outcome of a command wins; a redelivered one changes nothing.
fn command_result(org: &str, command_id: &str, fields: Document) -> Statement {
    let mut on_insert = doc! { "org": org, "command_id": command_id };
    on_insert.extend(fields);
    (
        collections::COMMAND_RESULTS,
        doc! { "_id": key(org, command_id) },
        doc! { "$setOnInsert": on_insert },
        false,
    )
}

fn outbound_result(r: &OutboundResult) -> Vec<Statement> {
    let outcome = r.outcome();
    let reason = r
        .error
        .as_ref()
        .map(|e| {
            let text = e
                .title
                .clone()
                .or_else(|| e.message.clone())
                .unwrap_or_default();
            Bson::String(format!("{} {}", e.code, text).trim().to_owned())
        })
        .unwrap_or(Bson::Null);
    let kind = if r.message_type == "read" {
        "read"
    } else {
        "send"
    };
    let mut out = vec![command_result(
        &r.org,
        &r.id,
        doc! {
            "kind": kind,
            "accepted": matches!(outcome, OutboundOutcome::Accepted { .. }),
            "reason": reason,
            "wamid": r.wamid.clone().map_or(Bson::Null, Bson::String),
            "conversation_id": &r.conversation_id,
            "at_ms": r.at_ms,
        },
    )];
    // A read receipt is no message; an OTP code or a sync request belongs to no
    // conversation (`OutboundResult::in_conversation`): none shows in the inbox.
    if kind == "read" || !r.in_conversation() {
        return out;
    }
    let at = DateTime::from_millis(r.at_ms);
    let (id, status) = (outcome.message_id(), outcome.status());
    let mut set = doc! {
        "org": &r.org,
        "id": &id,
        "phone_number_id": &r.phone_number_id,
        "conversation_id": &r.conversation_id,
        "contact_wa_id": &r.to,
        "direction": "outbound",
        "origin": "api",
        "type": &r.message_type,
        "preview": r.preview.clone().map_or(Bson::Null, Bson::String),
        "sent_by": &r.sent_by,
        "command_id": &r.id,
    };
    let mut on_insert = doc! { "first_seen_at": at };
    if status == DeliveryStatus::Failed {
        set.insert("status", status.as_str());
        set.insert("status_rank", status as i32);
        set.insert(
            "error",
            r.error
                .as_ref()
                .and_then(|e| mongodb::bson::to_bson(e).ok())
                .unwrap_or(Bson::Null),
        );
    } else {
        // Meta's statuses may already be there (they race the result): never lower.
        on_insert.insert("status", status.as_str());
        on_insert.insert("status_rank", status as i32);
    }
    out.push((
        collections::MESSAGES,
        doc! { "_id": key(&r.org, &id) },
        doc! { "$set": set, "$setOnInsert": on_insert, "$min": { "sent_at": at } },
        false,
    ));
    out.push((
        collections::CONVERSATIONS,
        doc! { "_id": key(&r.org, &r.conversation_id) },
        doc! {
            "$setOnInsert": conversation_on_insert(&r.org, &r.phone_number_id, &r.conversation_id),
            "$max": { "last_message_at": at },
        },
        false,
    ));
    // The conversation's last message (its preview), if not older than the one it
    // shows; after the statement above, which creates the conversation, so an older
    // reply collides on `_id` and is done.
    out.push((
        collections::CONVERSATIONS,
        doc! {
            "_id": key(&r.org, &r.conversation_id),
            "$or": [ { "last_message.at": { "$exists": false } }, { "last_message.at": { "$lte": at } } ],
        },
        doc! { "$set": { "last_message": {
            "id": &id,
            "at": at,
            "preview": r.preview.clone().unwrap_or_else(|| format!("[{}]", r.message_type)),
            "version_at": at,
        } } },
        true,
    ));
    out
}

fn outbound(m: &OutboundMessage) -> Vec<Statement> {
    if m.message_type() != "read" {
        return Vec::new(); // the result writes the message, with its wamid
    }
    vec![(
        collections::CONVERSATIONS,
        doc! { "_id": key(&m.org, &m.conversation_id) },
        doc! {
            "$setOnInsert": conversation_on_insert(&m.org, &m.phone_number_id, &m.conversation_id),
            "$max": { "read_up_to": DateTime::from_millis(m.at_ms) },
        },
        false,
    )]
}

fn media(m: &MediaStored) -> Statement {
    (
        collections::MESSAGES,
        doc! { "_id": key(&m.org, &m.wamid) },
        doc! {
            "$set": { "stored_media": {
                "media_id": &m.media_id,
                "bucket": &m.bucket,
                "key": &m.key,
                "mime_type": &m.mime_type,
                "bytes": m.bytes as i64,
            } },
            "$setOnInsert": { "org": &m.org, "id": &m.wamid },
        },
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment_event(state: ConversationState, assignee: Option<&str>) -> AssignmentEvent {
        AssignmentEvent {
            id: "a1".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            state,
            assignee: assignee.map(str::to_owned),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms: 5_000,
        }
    }

    #[test]
    fn an_assignment_sets_owner_only_over_older_ones() {
        let a = assignment_event(ConversationState::Assigned, Some("ana"));
        let plan = assignment(&a, 7);
        assert_eq!(plan.len(), 1);
        let (collection, filter, update, collision_done) = &plan[0];
        assert_eq!(*collection, collections::CONVERSATIONS);
        assert!(*collision_done);
        assert_eq!(filter.get_str("_id").unwrap(), "acme:111-222");
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("assignee").unwrap(), "ana");
        assert_eq!(set.get_str("state").unwrap(), "assigned");
        let on_insert = update.get_document("$setOnInsert").unwrap();
        assert_eq!(on_insert.get_str("contact_wa_id").unwrap(), "222");
        let or = filter.get_array("$or").unwrap();
        let same_time = or[2].as_document().unwrap();
        assert_eq!(same_time.get_i64("assignment_at_ms").unwrap(), 5_000);
    }

    #[test]
    fn an_accepted_note_is_a_timeline_entry_and_a_rejected_one_is_not() {
        let mut a = assignment_event(ConversationState::Open, None);
        a.command_id = Some("k9".into());
        a.issued_by = Some("ana".into());
        a.note = Some("call back".into());
        let plan = assignment(&a, 3);
        let (_, filter, update, _) = plan
            .iter()
            .find(|s| s.0 == collections::MESSAGES)
            .expect("the note");
        assert_eq!(filter.get_str("_id").unwrap(), "acme:note:k9");
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("type").unwrap(), "note");
        assert_eq!(set.get_str("direction").unwrap(), "internal");
        assert_eq!(set.get_str("preview").unwrap(), "call back");
        assert_eq!(set.get_str("sent_by").unwrap(), "ana");
        assert_eq!(set.get_str("conversation_id").unwrap(), "111-222");
        a.rejected = Some("unknown conversation".into());
        assert!(
            assignment(&a, 4)
                .iter()
                .all(|s| s.0 != collections::MESSAGES)
        );
    }

    #[test]
    fn a_rejected_command_only_records_its_result() {
        let mut a = assignment_event(ConversationState::Assigned, Some("bob"));
        a.command_id = Some("k1".into());
        a.issued_by = Some("ana".into());
        a.rejected = Some("already assigned to bob".into());
        let plan = assignment(&a, 1);
        assert_eq!(plan.len(), 1);
        let (collection, filter, update, _) = &plan[0];
        assert_eq!(*collection, collections::COMMAND_RESULTS);
        assert_eq!(filter.get_str("_id").unwrap(), "acme:k1");
        let fields = update.get_document("$setOnInsert").unwrap();
        assert!(!fields.get_bool("accepted").unwrap());
        assert_eq!(fields.get_str("reason").unwrap(), "already assigned to bob");
    }

    fn sent(wamid: Option<&str>) -> OutboundResult {
        OutboundMessage {
            id: "cmd-1".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            to: "222".into(),
            sent_by: "ana".into(),
            at_ms: 9_000,
            payload: serde_json::json!({"type": "text", "text": {"body": "on its way"}}),
        }
        .result(
            wamid.map(str::to_owned),
            wamid.is_none().then(|| {
                serde_json::from_value(
                    serde_json::json!({"code": 131047, "title": "Re-engagement message"}),
                )
                .unwrap()
            }),
            9_500,
        )
    }

    #[test]
    fn a_sent_message_appears_under_its_wamid_without_lowering_a_status() {
        let plan = outbound_result(&sent(Some("wamid.X")));
        let message = plan.iter().find(|s| s.0 == collections::MESSAGES).unwrap();
        assert_eq!(message.1.get_str("_id").unwrap(), "acme:wamid.X");
        let set = message.2.get_document("$set").unwrap();
        assert_eq!(set.get_str("preview").unwrap(), "on its way");
        assert!(set.get("status").is_none(), "status only on insert");
        let on_insert = message.2.get_document("$setOnInsert").unwrap();
        assert_eq!(on_insert.get_str("status").unwrap(), "accepted");
        let result = plan
            .iter()
            .find(|s| s.0 == collections::COMMAND_RESULTS)
            .unwrap();
        assert!(
            result
                .2
                .get_document("$setOnInsert")
                .unwrap()
                .get_bool("accepted")
                .unwrap()
        );
    }

    /// Meta named it and reported an error: failed, as the status processor says
    /// (this sink once showed it accepted).
    #[test]
    fn a_send_named_with_an_error_is_failed_as_the_status_processor_says() {
        let mut r = sent(Some("wamid.Y"));
        r.error = sent(None).error;
        let plan = outbound_result(&r);
        let message = plan.iter().find(|s| s.0 == collections::MESSAGES).unwrap();
        assert_eq!(message.1.get_str("_id").unwrap(), "acme:wamid.Y");
        let set = message.2.get_document("$set").unwrap();
        assert_eq!(
            set.get_str("status").unwrap(),
            r.outcome().status().as_str()
        );
        assert_eq!(set.get_str("status").unwrap(), "failed");
    }

    #[test]
    fn a_failed_send_appears_as_failed_with_the_reason() {
        let plan = outbound_result(&sent(None));
        let message = plan.iter().find(|s| s.0 == collections::MESSAGES).unwrap();
        assert_eq!(message.1.get_str("_id").unwrap(), "acme:outbound:cmd-1");
        let set = message.2.get_document("$set").unwrap();
        assert_eq!(set.get_str("status").unwrap(), "failed");
        let result = plan
            .iter()
            .find(|s| s.0 == collections::COMMAND_RESULTS)
            .unwrap();
        let fields = result.2.get_document("$setOnInsert").unwrap();
        assert_eq!(
            fields.get_str("reason").unwrap(),
            "131047 Re-engagement message"
        );
    }

    #[test]
    fn mark_read_moves_read_up_to_and_other_sends_write_nothing_yet() {
        let mut m = OutboundMessage {
            id: "cmd-2".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            to: "222".into(),
            sent_by: "ana".into(),
            at_ms: 9_000,
            payload: serde_json::json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A"}),
        };
        let plan = outbound(&m);
        assert_eq!(plan.len(), 1);
        assert!(
            plan[0]
                .2
                .get_document("$max")
                .unwrap()
                .contains_key("read_up_to")
        );
        m.payload = serde_json::json!({"type": "text", "text": {"body": "x"}});
        assert!(outbound(&m).is_empty());
    }

    #[test]
    fn undecodable_records_are_rejected_with_a_reason() {
        let err = plan_record(topics::CONVERSATION_ASSIGNMENTS, 0, 0, b"{}").unwrap_err();
        assert!(err.starts_with("not an assignment"), "{err}");
    }
}
