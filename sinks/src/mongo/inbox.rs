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
use events::event::{Direction, Origin};
use events::inbox::{AssignmentEvent, ConversationState};
use events::{DeliveryStatus, topics};
use mongodb::bson::{Bson, DateTime, Document, doc};
use runtime::Record;
use store::inbox::{
    COMMAND_RESULTS, CONVERSATIONS, CommandResult, Conversation, INTERNAL, MESSAGES, Message,
    StoredMedia,
};
use store::{key, to_bson};

use super::mapping::{Upsert, absent_or_below};

/// The statements for one record of a topic other than `whatsapp.events`.
pub fn plan_record(record: &Record, source: usize) -> Result<Vec<Upsert>, String> {
    let statements = match record.topic.as_str() {
        topics::CONVERSATION_ASSIGNMENTS => assignment(
            &record.decode::<AssignmentEvent>("an assignment")?,
            record.offset,
        ),
        topics::OUTBOUND_RESULTS => {
            outbound_result(&record.decode::<OutboundResult>("an outbound result")?)
        }
        topics::MESSAGES_OUTBOUND => {
            outbound(&record.decode::<OutboundMessage>("an outbound message")?)
        }
        topics::MEDIA_STORED => vec![media(
            &record.decode::<MediaStored>("a media.stored record")?,
        )],
        _ => return Err(record.unread_topic("the mongo sink")),
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
                on_collision: None,
            },
        )
        .collect())
}

type Statement = (&'static str, Document, Document, bool);

/// The conversation's fields known from its id alone (`{phone_number_id}-{wa_id}`),
/// for when an assignment or a reply is written before the first message.
fn conversation_on_insert(org: &str, phone_number_id: &str, conversation_id: &str) -> Document {
    let contact = conversation_id
        .strip_prefix(phone_number_id)
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or_default();
    doc! {
        Conversation::ORG: org,
        Conversation::ID: conversation_id,
        Conversation::PHONE_NUMBER_ID: phone_number_id,
        Conversation::CONTACT_WA_ID: contact,
    }
}

fn assignment(a: &AssignmentEvent, offset: i64) -> Vec<Statement> {
    let mut out = Vec::new();
    if a.rejected.is_none() {
        let assignee = match a.state {
            ConversationState::Assigned => a.assignee.clone().map_or(Bson::Null, Bson::String),
            _ => Bson::Null,
        };
        let mut on_insert = conversation_on_insert(&a.org, &a.phone_number_id, &a.conversation_id);
        on_insert.insert(Conversation::CREATED_AT, DateTime::from_millis(a.at_ms));
        let update = doc! {
            "$set": {
                Conversation::STATE: to_bson(&a.state),
                Conversation::ASSIGNEE: assignee,
                Conversation::ASSIGNMENT_AT_MS: a.at_ms,
                Conversation::ASSIGNMENT_OFFSET: offset,
            },
            "$setOnInsert": on_insert,
        };
        // Applied over an older `(at_ms, offset)` only: two statements, as no clause
        // on one field says it and a top-level `$or` makes the local MongoDB scan the
        // collection (see `mapping::absent_or_below`). The first applies over none
        // or an older time (and creates the conversation), the second over the same
        // time and an earlier offset. Not matched means a newer assignment is there:
        // the insert collides, already superseded.
        let conversation = key(&a.org, &a.conversation_id);
        out.push((
            CONVERSATIONS.name,
            doc! {
                Conversation::KEY: &conversation,
                Conversation::ASSIGNMENT_AT_MS: absent_or_below(a.at_ms),
            },
            update.clone(),
            true,
        ));
        out.push((
            CONVERSATIONS.name,
            doc! {
                Conversation::KEY: &conversation,
                Conversation::ASSIGNMENT_AT_MS: a.at_ms,
                Conversation::ASSIGNMENT_OFFSET: { "$lt": offset },
            },
            update,
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
                CommandResult::KIND: "conversation",
                CommandResult::ACCEPTED: a.rejected.is_none(),
                CommandResult::REASON: opt(&a.rejected),
                CommandResult::ISSUED_BY: opt(&a.issued_by),
                CommandResult::CONVERSATION_ID: &a.conversation_id,
                CommandResult::STATE: to_bson(&a.state),
                CommandResult::ASSIGNEE: opt(&a.assignee),
                CommandResult::AT_MS: a.at_ms,
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
        MESSAGES.name,
        doc! { Message::KEY: key(&a.org, &id) },
        doc! {
            "$set": {
                Message::ORG: &a.org,
                Message::ID: &id,
                Message::PHONE_NUMBER_ID: &a.phone_number_id,
                Message::CONVERSATION_ID: &a.conversation_id,
                Message::DIRECTION: INTERNAL,
                Message::TYPE: "note",
                Message::PREVIEW: text,
                Message::SENT_BY: opt(&a.issued_by),
                Message::COMMAND_ID: command_id,
            },
            "$setOnInsert": {
                Message::SENT_AT: DateTime::from_millis(a.at_ms),
                Message::FIRST_SEEN_AT: DateTime::from_millis(a.at_ms),
            },
        },
        false,
    )
}

/// The first outcome of a command wins; a redelivered one changes nothing.
fn command_result(org: &str, command_id: &str, fields: Document) -> Statement {
    let mut on_insert = doc! { CommandResult::ORG: org, CommandResult::COMMAND_ID: command_id };
    on_insert.extend(fields);
    (
        COMMAND_RESULTS.name,
        doc! { CommandResult::KEY: key(org, command_id) },
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
            CommandResult::KIND: kind,
            CommandResult::ACCEPTED: matches!(outcome, OutboundOutcome::Accepted { .. }),
            CommandResult::REASON: reason,
            CommandResult::WAMID: opt(&r.wamid),
            CommandResult::CONVERSATION_ID: &r.conversation_id,
            CommandResult::AT_MS: r.at_ms,
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
        Message::ORG: &r.org,
        Message::ID: &id,
        Message::PHONE_NUMBER_ID: &r.phone_number_id,
        Message::CONVERSATION_ID: &r.conversation_id,
        Message::CONTACT_WA_ID: &r.to,
        Message::DIRECTION: to_bson(&Direction::Outbound),
        Message::ORIGIN: to_bson(&Origin::Api),
        Message::TYPE: &r.message_type,
        Message::PREVIEW: opt(&r.preview),
        Message::SENT_BY: &r.sent_by,
        Message::COMMAND_ID: &r.id,
    };
    let mut on_insert = doc! { Message::FIRST_SEEN_AT: at };
    if status == DeliveryStatus::Failed {
        set.insert(Message::STATUS, status.as_str());
        set.insert(Message::STATUS_RANK, status as i32);
        set.insert(
            Message::ERROR,
            r.error
                .as_ref()
                .and_then(|e| mongodb::bson::to_bson(e).ok())
                .unwrap_or(Bson::Null),
        );
    } else {
        // Meta's statuses may already be there (they race the result): never lower.
        on_insert.insert(Message::STATUS, status.as_str());
        on_insert.insert(Message::STATUS_RANK, status as i32);
    }
    out.push((
        MESSAGES.name,
        doc! { Message::KEY: key(&r.org, &id) },
        doc! { "$set": set, "$setOnInsert": on_insert, "$min": { Message::SENT_AT: at } },
        false,
    ));
    out.push((
        CONVERSATIONS.name,
        doc! { Conversation::KEY: key(&r.org, &r.conversation_id) },
        doc! {
            "$setOnInsert": conversation_on_insert(&r.org, &r.phone_number_id, &r.conversation_id),
            "$max": { Conversation::LAST_MESSAGE_AT: at },
        },
        false,
    ));
    // The conversation's last message (its preview), if not older than the one it
    // shows; after the statement above, which creates the conversation, so an older
    // reply collides on `_id` and is done.
    let (filter, update) = super::mapping::last_message_statement(
        &r.org,
        &r.conversation_id,
        &id,
        at,
        super::mapping::preview_of(r.preview.as_deref(), &r.message_type),
    );
    out.push((CONVERSATIONS.name, filter, update, true));
    out
}

fn outbound(m: &OutboundMessage) -> Vec<Statement> {
    if m.message_type() != "read" {
        return Vec::new(); // the result writes the message, with its wamid
    }
    vec![(
        CONVERSATIONS.name,
        doc! { Conversation::KEY: key(&m.org, &m.conversation_id) },
        doc! {
            "$setOnInsert": conversation_on_insert(&m.org, &m.phone_number_id, &m.conversation_id),
            "$max": { Conversation::READ_UP_TO: DateTime::from_millis(m.at_ms) },
        },
        false,
    )]
}

/// Where the media sink stored a message's media: what `GET /v1/media/{media_id}`
/// reads (`Message::STORED_MEDIA_ID`).
fn media(m: &MediaStored) -> Statement {
    let stored = StoredMedia {
        media_id: m.media_id.clone(),
        bucket: m.bucket.clone(),
        key: m.key.clone(),
        mime_type: m.mime_type.clone(),
        bytes: i64::try_from(m.bytes).unwrap_or(i64::MAX),
    };
    (
        MESSAGES.name,
        doc! { Message::KEY: key(&m.org, &m.wamid) },
        doc! {
            "$set": { Message::STORED_MEDIA: to_bson(&stored) },
            "$setOnInsert": { Message::ORG: &m.org, Message::ID: &m.wamid },
        },
        false,
    )
}

fn opt(value: &Option<String>) -> Bson {
    value.clone().map_or(Bson::Null, Bson::String)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn assignment_event(
        state: ConversationState,
        assignee: Option<&str>,
    ) -> AssignmentEvent {
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
        assert_eq!(
            plan.len(),
            2,
            "over an older time, then over an earlier offset"
        );
        for (collection, filter, update, collision_done) in &plan {
            assert_eq!(*collection, CONVERSATIONS.name);
            assert!(*collision_done);
            assert_eq!(filter.get_str("_id").unwrap(), "acme:111-222");
            let set = update.get_document("$set").unwrap();
            assert_eq!(set.get_str("assignee").unwrap(), "ana");
            assert_eq!(set.get_str("state").unwrap(), "assigned");
            let on_insert = update.get_document("$setOnInsert").unwrap();
            assert_eq!(on_insert.get_str("contact_wa_id").unwrap(), "222");
        }
        assert_eq!(
            plan[0].1.get_document("assignment_at_ms").unwrap(),
            &doc! { "$not": { "$gte": 5_000_i64 } }
        );
        assert_eq!(plan[1].1.get_i64("assignment_at_ms").unwrap(), 5_000);
        assert_eq!(
            plan[1].1.get_document("assignment_offset").unwrap(),
            &doc! { "$lt": 7_i64 }
        );
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
            .find(|s| s.0 == MESSAGES.name)
            .expect("the note");
        assert_eq!(filter.get_str("_id").unwrap(), "acme:note:k9");
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("type").unwrap(), "note");
        assert_eq!(set.get_str("direction").unwrap(), "internal");
        assert_eq!(set.get_str("preview").unwrap(), "call back");
        assert_eq!(set.get_str("sent_by").unwrap(), "ana");
        assert_eq!(set.get_str("conversation_id").unwrap(), "111-222");
        a.rejected = Some("unknown conversation".into());
        assert!(assignment(&a, 4).iter().all(|s| s.0 != MESSAGES.name));
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
        assert_eq!(*collection, COMMAND_RESULTS.name);
        assert_eq!(filter.get_str("_id").unwrap(), "acme:k1");
        let fields = update.get_document("$setOnInsert").unwrap();
        assert!(!fields.get_bool("accepted").unwrap());
        assert_eq!(fields.get_str("reason").unwrap(), "already assigned to bob");
    }

    /// A command of agent ana's in conversation `111-222`.
    pub(crate) fn command(payload: serde_json::Value) -> OutboundMessage {
        OutboundMessage {
            id: "cmd-1".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            conversation_id: "111-222".into(),
            to: "222".into(),
            sent_by: "ana".into(),
            at_ms: 9_000,
            payload,
        }
    }

    pub(crate) fn sent(wamid: Option<&str>) -> OutboundResult {
        command(serde_json::json!({"type": "text", "text": {"body": "on its way"}})).result(
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
        let message = plan.iter().find(|s| s.0 == MESSAGES.name).unwrap();
        assert_eq!(message.1.get_str("_id").unwrap(), "acme:wamid.X");
        let set = message.2.get_document("$set").unwrap();
        assert_eq!(set.get_str("preview").unwrap(), "on its way");
        assert!(set.get("status").is_none(), "status only on insert");
        let on_insert = message.2.get_document("$setOnInsert").unwrap();
        assert_eq!(on_insert.get_str("status").unwrap(), "accepted");
        let result = plan.iter().find(|s| s.0 == COMMAND_RESULTS.name).unwrap();
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
        let message = plan.iter().find(|s| s.0 == MESSAGES.name).unwrap();
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
        let message = plan.iter().find(|s| s.0 == MESSAGES.name).unwrap();
        assert_eq!(message.1.get_str("_id").unwrap(), "acme:outbound:cmd-1");
        let set = message.2.get_document("$set").unwrap();
        assert_eq!(set.get_str("status").unwrap(), "failed");
        let result = plan.iter().find(|s| s.0 == COMMAND_RESULTS.name).unwrap();
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
        let record = Record {
            topic: topics::CONVERSATION_ASSIGNMENTS.into(),
            value: b"{}".to_vec(),
            ..Record::default()
        };
        let err = plan_record(&record, 0).unwrap_err();
        assert!(err.starts_with("not an assignment"), "{err}");
    }
}
