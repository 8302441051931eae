//! Every document round-trips through BSON, and its field-name constants are
//! exactly its serde names: a renamed field without its constant (or the reverse)
//! fails here, not in production.

use std::collections::{BTreeMap, BTreeSet};

use bson::{Bson, DateTime, Document};
use events::directory::{Role, RoutingPolicy, Sealed};
use events::event::{MediaRef, Origin};
use events::inbox::ConversationState;
use events::webhook::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::directory::*;
use crate::inbox::*;

fn at(ms: i64) -> Option<DateTime> {
    Some(DateTime::from_millis(ms))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn media() -> MediaRef {
    MediaRef {
        id: s("m1"),
        mime_type: s("image/jpeg"),
        sha256: s("abc"),
        filename: s("a.jpg"),
    }
}

fn error() -> ApiError {
    serde_json::from_value(serde_json::json!({"code": 131047, "title": "t", "message": "m"}))
        .unwrap()
}

fn sealed() -> Sealed {
    Sealed {
        key_id: "k".into(),
        data: "x".into(),
    }
}

/// Serializes `value` (every optional field set), checks its keys are `fields`,
/// each of `paths` resolves, and that it reads back equal.
fn check<T>(value: &T, fields: &[&str], paths: &[&str]) -> Document
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let doc = bson::to_document(value).unwrap();
    let keys: BTreeSet<&str> = doc.keys().map(String::as_str).collect();
    let declared: BTreeSet<&str> = fields.iter().copied().collect();
    assert_eq!(keys, declared, "serde names vs constants");
    assert_eq!(fields.len(), declared.len(), "a constant repeated");
    for path in paths {
        let mut parts = path.split('.');
        let mut at = doc.get(parts.next().unwrap());
        for part in parts {
            at = at.and_then(Bson::as_document).and_then(|d| d.get(part));
        }
        assert!(at.is_some(), "{path} is not in {doc}");
    }
    let back: T = bson::from_document(doc.clone()).unwrap();
    assert_eq!(&back, value);
    doc
}

fn message() -> Message {
    Message {
        key: "acme:w".into(),
        org: "acme".into(),
        id: "w".into(),
        phone_number_id: s("111"),
        conversation_id: s("111-222"),
        contact_wa_id: s("222"),
        direction: s("inbound"),
        origin: Some(Origin::Customer),
        message_type: s("text"),
        preview: s("hi"),
        reply_to: s("w0"),
        media: Some(media()),
        history_status: s("READ"),
        sent_at: at(1_000),
        raw: Some(Bson::Document(bson::doc! { "a": 1 })),
        errors: Some(vec![error()]),
        first_seen_at: at(1_001),
        edits: vec![Edit {
            id: "e1".into(),
            at: at(2_000),
            message_type: s("text"),
            preview: s("hi!"),
            media: Some(media()),
            origin: Some(Origin::Customer),
        }],
        edited_at: at(2_000),
        deleted_at: at(3_000),
        revokes: vec![Revoke {
            id: "r1".into(),
            origin: Some(Origin::BusinessApp),
        }],
        reactions: BTreeMap::from([(
            "222".to_string(),
            Reaction {
                emoji: s("👍"),
                at: at(4_000),
                id: "x1".into(),
                origin: Some(Origin::Customer),
            },
        )]),
        status: s("read"),
        status_rank: Some(4),
        status_at: at(5_000),
        error: Some(error()),
        sent_by: s("ann"),
        command_id: s("c1"),
        stored_media: Some(StoredMedia {
            media_id: "m1".into(),
            bucket: "b".into(),
            key: "acme/abc".into(),
            mime_type: "image/jpeg".into(),
            bytes: 10,
        }),
    }
}

#[test]
fn a_message_and_its_parts_round_trip_with_their_constants() {
    let m = message();
    let doc = check(&m, Message::FIELDS, Message::PATHS);
    let edit = doc.get_array(Message::EDITS).unwrap()[0]
        .as_document()
        .unwrap();
    let keys: BTreeSet<_> = edit.keys().map(String::as_str).collect();
    assert_eq!(keys, Edit::FIELDS.iter().copied().collect());
    check(&m.edits[0], Edit::FIELDS, Edit::PATHS);
    check(&m.revokes[0], Revoke::FIELDS, Revoke::PATHS);
    check(&m.reactions["222"], Reaction::FIELDS, Reaction::PATHS);
    check(
        m.stored_media.as_ref().unwrap(),
        StoredMedia::FIELDS,
        StoredMedia::PATHS,
    );
    assert_eq!(
        Message::STORED_MEDIA_ID,
        format!("{}.{}", Message::STORED_MEDIA, StoredMedia::MEDIA_ID)
    );
}

#[test]
fn the_other_inbox_documents_round_trip_with_their_constants() {
    check(
        &MessageStatus {
            key: "acme:s".into(),
            org: "acme".into(),
            wamid: "w".into(),
            status: "read".into(),
            at: at(1),
            errors: Some(vec![error()]),
            raw: Some(Bson::Int32(1)),
        },
        MessageStatus::FIELDS,
        MessageStatus::PATHS,
    );
    let change = BusinessAppChange {
        action: "add".into(),
        changed_at: at(5),
    };
    check(&change, BusinessAppChange::FIELDS, BusinessAppChange::PATHS);
    check(
        &Contact {
            key: "acme:222".into(),
            org: "acme".into(),
            wa_id: "222".into(),
            created_at: at(1),
            last_message_at: at(2),
            profile_name: s("Ann"),
            sync_only: Some(true),
            in_business_app: Some(true),
            business_app: Some(change),
            full_name: s("Ann B"),
            first_name: s("Ann"),
        },
        Contact::FIELDS,
        Contact::PATHS,
    );
    let last = LastMessage {
        id: "w".into(),
        at: at(3),
        preview: s("hi"),
        version_at: at(3),
        deleted: Some(true),
    };
    check(&last, LastMessage::FIELDS, LastMessage::PATHS);
    check(
        &Conversation {
            key: "acme:111-222".into(),
            org: "acme".into(),
            id: "111-222".into(),
            phone_number_id: s("111"),
            contact_wa_id: s("222"),
            state: Some(ConversationState::Assigned),
            created_at: at(1),
            last_message_at: at(3),
            last_inbound_at: at(2),
            last_message: Some(last),
            assignee: s("ann"),
            assignment_at_ms: Some(4),
            assignment_offset: Some(7),
            read_up_to: at(3),
        },
        Conversation::FIELDS,
        Conversation::PATHS,
    );
    let error = SyncError {
        code: 2_593_109,
        title: s("t"),
        message: s("m"),
    };
    check(&error, SyncError::FIELDS, SyncError::PATHS);
    for status in [
        SyncStatus::InProgress,
        SyncStatus::Completed,
        SyncStatus::Declined,
        SyncStatus::Failed,
    ] {
        let doc = check(
            &HistorySync {
                key: "acme:111".into(),
                org: "acme".into(),
                phone_number_id: "111".into(),
                progress: Some(40),
                updated_at: at(1),
                phase: Some(1),
                chunks: vec!["0:1".into()],
                status: Some(status),
                error: Some(error.clone()),
                finished_at: at(2),
            },
            HistorySync::FIELDS,
            HistorySync::PATHS,
        );
        assert_eq!(doc.get_str(HistorySync::STATUS).unwrap(), status.as_str());
    }
    check(
        &CommandResult {
            key: "acme:c1".into(),
            org: "acme".into(),
            command_id: "c1".into(),
            kind: s("conversation"),
            accepted: true,
            reason: s("r"),
            issued_by: s("ann"),
            conversation_id: s("111-222"),
            state: Some(ConversationState::Open),
            assignee: s("ann"),
            wamid: s("w"),
            at_ms: Some(9),
        },
        CommandResult::FIELDS,
        CommandResult::PATHS,
    );
}

#[test]
fn the_directory_documents_round_trip_with_their_constants() {
    let routing = Routing {
        default: Some(RoutingPolicy::RoundRobin),
        numbers: BTreeMap::from([("111".into(), RoutingPolicy::Sticky { window_ms: 5 })]),
    };
    check(&routing, Routing::FIELDS, Routing::PATHS);
    check(
        &Org {
            key: "acme".into(),
            org: "acme".into(),
            name: s("Acme"),
            routing: Some(routing),
            created_at_ms: Some(1),
            updated_at_ms: Some(2),
        },
        Org::FIELDS,
        Org::PATHS,
    );
    for role in [Role::Admin, Role::Agent] {
        let doc = check(
            &Agent {
                key: "acme:ann".into(),
                org: "acme".into(),
                agent_id: "ann".into(),
                name: s("Ann"),
                email: s("ann@acme.test"),
                phone: s("+1555"),
                role: Some(role),
                capacity: Some(3),
                active: true,
                created_at_ms: Some(1),
                updated_at_ms: Some(2),
            },
            Agent::FIELDS,
            Agent::PATHS,
        );
        // The sink writes `Role::as_str`; the struct reads it back.
        assert_eq!(doc.get_str(Agent::ROLE).unwrap(), role.as_str());
    }
    check(
        &BusinessNumber {
            key: "acme:111".into(),
            org: "acme".into(),
            phone_number_id: "111".into(),
            display_phone_number: s("+1 555"),
            waba_id: s("9"),
            access_token: Some(sealed()),
            app_secret: Some(sealed()),
            created_at_ms: Some(1),
            updated_at_ms: Some(2),
        },
        BusinessNumber::FIELDS,
        BusinessNumber::PATHS,
    );
    check(
        &PushToken {
            key: "acme:ExponentPushToken[x]".into(),
            org: "acme".into(),
            agent_id: "ann".into(),
            device_id: "d1".into(),
            token: "ExponentPushToken[x]".into(),
            platform: "ios".into(),
            updated_at_ms: Some(1),
        },
        PushToken::FIELDS,
        PushToken::PATHS,
    );
}

#[test]
fn a_partial_document_reads_with_defaults() {
    // An edit that arrived before its message created the document.
    let doc = bson::doc! { "_id": "acme:w", "org": "acme", "id": "w", "edits": [ { "id": "e1", "at": DateTime::from_millis(5), "preview": "x" } ] };
    let m: Message = bson::from_document(doc).unwrap();
    assert_eq!(m.edits.len(), 1);
    assert_eq!(m.preview, None);
    // Nulls the sink writes read as absent.
    let doc = bson::doc! { "_id": "acme:w", "org": "acme", "id": "w", "preview": Bson::Null, "media": Bson::Null, "reactions": { "222": { "emoji": Bson::Null, "at": DateTime::from_millis(5) } } };
    let m: Message = bson::from_document(doc).unwrap();
    assert_eq!((m.preview, m.media), (None, None));
    assert_eq!(m.reactions["222"].emoji, None);
}

#[test]
fn the_current_content_is_the_newest_edit_unless_deleted() {
    let mut m = message();
    m.deleted_at = None;
    m.edits.push(Edit {
        id: "e0".into(),
        at: at(1_500),
        message_type: s("text"),
        preview: s("older"),
        ..Edit::default()
    });
    assert_eq!(current_content(&m), Some((s("hi!"), s("text"))));
    m.edits.clear();
    assert_eq!(current_content(&m), Some((s("hi"), s("text"))));
    m.deleted_at = at(9);
    assert_eq!(current_content(&m), None);
}

#[test]
fn a_reactor_is_one_field_under_reactions() {
    assert_eq!(reaction_field("222"), "reactions.222");
    assert_eq!(reaction_field("a.b$c"), "reactions.a_b_c");
}

#[test]
fn every_index_names_fields_of_its_documents() {
    let declared = crate::collections();
    for index in crate::index::all() {
        let Some(collection) = declared.iter().find(|d| d.name == index.collection) else {
            panic!("an index on {}, not in the read model", index.collection);
        };
        for key in index.keys.keys() {
            let top = key.split('.').next().unwrap_or_default();
            assert!(
                collection.fields.contains(&top),
                "{}: {key}",
                index.collection
            );
        }
    }
    // A dotted index path is one of its document's declared paths.
    assert!(
        Message::PATHS.contains(&Message::STORED_MEDIA_ID)
            && crate::index::all()
                .iter()
                .any(|i| i.keys.contains_key(Message::STORED_MEDIA_ID))
    );
}
