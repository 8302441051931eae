//! Edits, revokes and reactions against the real MongoDB: whatever order the
//! original message and its changes arrive in (an edit before its original is held
//! in the document until the original lands), the stored message ends the same.

mod support;

use std::collections::BTreeMap;

use coexist::Config;
use events::WhatsAppEvent;
use mongodb::bson::{Bson, Document, doc};
use runtime::{Record, Stage};
use serde_json::Value;
use sinks::mongo::MongoSink;
use support::unique;

const ORIGINAL: &str = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQyQTlEM0Y3RTFCNUM4QTBENEU2RgA=";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/events/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn events_of(org: &str, body: &Value) -> Vec<WhatsAppEvent> {
    let webhook: events::Webhook = serde_json::from_value(body.clone()).unwrap();
    events::normalize(
        &webhook,
        1_739_000_000_000,
        &events::OrgDirectory::new(org, []),
    )
    .events
}

/// The echo's item of a fixture, changed by `f` (a second edit, a later reaction).
fn changed(name: &str, f: impl FnOnce(&mut Value)) -> Value {
    let mut body = fixture(name);
    let value = &mut body["entry"][0]["changes"][0]["value"];
    let field = if value.get("message_echoes").is_some() {
        "message_echoes"
    } else {
        "messages"
    };
    f(&mut value[field][0]);
    body
}

/// The original echo, two edits (the second newer), a revoke; the echo's reactions.
fn bodies() -> BTreeMap<&'static str, Value> {
    let reaction = |id: &str, ts: &str, emoji: Option<&str>| {
        changed("msg_reaction", |m| {
            m["id"] = id.into();
            m["timestamp"] = ts.into();
            m["reaction"]["message_id"] = ORIGINAL.into();
            match emoji {
                Some(e) => m["reaction"]["emoji"] = e.into(),
                None => {
                    m["reaction"].as_object_mut().unwrap().remove("emoji");
                }
            }
        })
    };
    BTreeMap::from([
        ("original", fixture("smb_message_echoes")),
        ("edit1", fixture("smb_message_echoes_edit")),
        (
            "edit2",
            changed("smb_message_echoes_edit", |m| {
                m["id"] = "wamid.second-edit".into();
                m["timestamp"] = "1739321400".into();
                m["edit"]["message"]["text"]["body"] = "second edit".into();
            }),
        ),
        ("revoke", fixture("smb_message_echoes_revoke")),
        ("thumbs", reaction("wamid.r1", "1739321500", Some("👍"))),
        ("heart", reaction("wamid.r2", "1739321600", Some("❤️"))),
        ("removed", reaction("wamid.r3", "1739321700", None)),
    ])
}

/// Every order of `items`.
fn permutations(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            out.push(tail);
        }
    }
    out
}

/// A document as text with keys sorted and set-like arrays sorted, so two documents
/// with the same content compare equal whatever order their fields were written in.
fn canonical(value: &Bson) -> String {
    match value {
        Bson::Document(d) => {
            let fields: BTreeMap<&String, String> = d
                .iter()
                .filter(|(k, _)| !["_id", "org"].contains(&k.as_str()))
                .map(|(k, v)| (k, canonical(v)))
                .collect();
            format!("{fields:?}")
        }
        Bson::Array(items) => {
            let mut items: Vec<String> = items.iter().map(canonical).collect();
            items.sort();
            format!("{items:?}")
        }
        other => other.to_string(),
    }
}

struct Store {
    sink: MongoSink,
    db: mongodb::Database,
}

impl Store {
    async fn new() -> Self {
        let mut config = Config::load(None).expect("config from environment");
        config.sinks.mongo.database = format!("t_changes_{}", unique());
        let db = sinks::mongo::connect(&config.sinks.mongo).await.unwrap();
        Self {
            sink: MongoSink::new(db.clone()),
            db,
        }
    }

    /// Writes the bodies named by `order`, one record per batch, as org `org`.
    async fn write(&mut self, org: &str, order: &[&str], bodies: &BTreeMap<&str, Value>) {
        for name in order {
            let records: Vec<Record> = events_of(org, &bodies[name])
                .iter()
                .map(|e| Record {
                    topic: events::topics::WHATSAPP_EVENTS.into(),
                    partition: 0,
                    offset: 0,
                    key: None,
                    value: events::codec::encode(e).unwrap(),
                    headers: vec![],
                    timestamp_ms: None,
                })
                .collect();
            let rejects = self.sink.handle(&records).await.unwrap();
            assert!(rejects.is_empty(), "{name}: {rejects:?}");
        }
    }

    /// Writes `events`, one record per batch.
    async fn write_events(&mut self, events: &[WhatsAppEvent]) {
        for event in events {
            let record = Record {
                topic: events::topics::WHATSAPP_EVENTS.into(),
                value: events::codec::encode(event).unwrap(),
                ..Default::default()
            };
            let rejects = self.sink.handle(&[record]).await.unwrap();
            assert!(rejects.is_empty(), "{rejects:?}");
        }
    }

    /// The one conversation of `org`.
    async fn conversation(&self, org: &str) -> Document {
        self.db
            .collection::<Document>("conversations")
            .find_one(doc! { "org": org })
            .await
            .unwrap()
            .unwrap_or_default()
    }

    async fn message(&self, org: &str) -> Document {
        self.db
            .collection::<Document>("messages")
            .find_one(doc! { "_id": format!("{org}:{ORIGINAL}") })
            .await
            .unwrap()
            .unwrap_or_default()
    }

    async fn count(&self, org: &str) -> u64 {
        self.db
            .collection::<Document>("messages")
            .count_documents(doc! { "org": org })
            .await
            .unwrap()
    }
}

/// Writes every order of `names` under its own org; returns the stored documents.
async fn every_order(store: &mut Store, names: &[&'static str]) -> Vec<(String, Document)> {
    let bodies = bodies();
    let mut out = Vec::new();
    for order in permutations(names) {
        let org = format!("o{}", unique());
        store.write(&org, &order, &bodies).await;
        assert_eq!(
            store.count(&org).await,
            1,
            "{order:?}: one message, no others"
        );
        out.push((format!("{order:?}"), store.message(&org).await));
    }
    out
}

fn all_equal(results: &[(String, Document)]) {
    let (first_order, first) = &results[0];
    let expected = canonical(&Bson::Document(first.clone()));
    for (order, doc) in results {
        assert_eq!(
            canonical(&Bson::Document(doc.clone())),
            expected,
            "{order} differs from {first_order}"
        );
    }
}

/// A stored message as the API reads it.
fn typed(doc: &Document) -> store::inbox::Message {
    mongodb::bson::from_document(doc.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_of_original_edits_and_revoke_stores_the_same_message() {
    let mut store = Store::new().await;

    let edited = every_order(&mut store, &["original", "edit1", "edit2"]).await;
    all_equal(&edited);
    let (_, doc) = &edited[0];
    let (preview, _) = store::inbox::current_content(&typed(doc)).unwrap();
    assert_eq!(
        preview.as_deref(),
        Some("second edit"),
        "the newest edit wins"
    );
    assert_eq!(doc.get_str("type").unwrap(), "text", "the original kept");
    assert_eq!(doc.get_array("edits").unwrap().len(), 2);
    assert!(doc.get_datetime("edited_at").is_ok());

    let deleted = every_order(&mut store, &["original", "edit1", "edit2", "revoke"]).await;
    all_equal(&deleted);
    let (_, doc) = &deleted[0];
    assert!(doc.get_datetime("deleted_at").is_ok());
    assert_eq!(store::inbox::current_content(&typed(doc)), None);
    // The original's conversation and content arrived, whenever it came.
    assert!(
        doc.get_str("conversation_id")
            .unwrap()
            .ends_with("-16505551234")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_keep_the_newest_per_reactor_in_any_order() {
    let mut store = Store::new().await;
    let changed = every_order(&mut store, &["original", "thumbs", "heart"]).await;
    all_equal(&changed);
    let reaction = changed[0]
        .1
        .get_document("reactions")
        .unwrap()
        .get_document("16505551234")
        .unwrap()
        .clone();
    assert_eq!(reaction.get_str("emoji").unwrap(), "❤️");

    let removed = every_order(&mut store, &["original", "thumbs", "heart", "removed"]).await;
    all_equal(&removed);
    let reaction = removed[0]
        .1
        .get_document("reactions")
        .unwrap()
        .get_document("16505551234")
        .unwrap()
        .clone();
    assert_eq!(reaction.get("emoji"), Some(&Bson::Null), "taken off");
    // As the API reads it: the reactor is there, with no emoji.
    let message = typed(&removed[0].1);
    assert_eq!(message.reactions["16505551234"].emoji, None);
}

/// Pablo (12125557890) writes once; then Business-app changes for him: two adds and
/// a remove, at the item's own times 1739321024 < 1739321100 < 1739321500.
fn contact_bodies() -> BTreeMap<&'static str, Value> {
    let add = |name: &str, ts: &str| {
        let mut body = fixture("smb_app_state_sync");
        let items = &mut body["entry"][0]["changes"][0]["value"]["state_sync"];
        let pablo = items[1].clone();
        *items = Value::Array(vec![pablo]);
        items[0]["contact"]["full_name"] = name.into();
        items[0]["metadata"]["timestamp"] = ts.into();
        body
    };
    let wrote: Value = serde_json::from_str(
        &serde_json::to_string(&fixture("msg_text"))
            .unwrap()
            .replace("16505551234", "12125557890"),
    )
    .unwrap();
    BTreeMap::from([
        ("wrote", wrote),
        ("add1", add("Pablo Morales", "1739321024")),
        ("add2", add("Pablo M.", "1739321100")),
        ("remove", fixture("smb_app_state_sync_remove")),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_changes_apply_in_the_business_apps_order_and_a_remove_creates_nothing() {
    let mut store = Store::new().await;
    let bodies = contact_bodies();
    let contacts = store.db.collection::<Document>("contacts");

    // A remove for a number nobody knows creates no contact: only the sync's record,
    // which the API does not show.
    let org = format!("o{}", unique());
    store.write(&org, &["remove"], &bodies).await;
    let visible = doc! { "org": &org, store::inbox::SYNC_ONLY: { "$ne": true } };
    assert_eq!(contacts.count_documents(visible.clone()).await.unwrap(), 0);
    // Once they write, they are a contact.
    store.write(&org, &["wrote"], &bodies).await;
    assert_eq!(contacts.count_documents(visible).await.unwrap(), 1);

    // In any order, known contact (Pablo wrote first) or not: the newest change (the
    // remove) wins; an older add arriving after it does not undo it.
    let mut results = Vec::new();
    for (known, order) in permutations(&["add1", "add2", "remove"])
        .into_iter()
        .flat_map(|o| [(true, o.clone()), (false, o)])
    {
        let org = format!("o{}", unique());
        if known {
            store.write(&org, &["wrote"], &bodies).await;
        }
        store.write(&org, &order, &bodies).await;
        let contact = contacts
            .find_one(doc! { "_id": format!("{org}:12125557890") })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{order:?}: no contact"));
        results.push((format!("{order:?} known={known}"), contact));
    }
    for (order, contact) in &results {
        assert!(
            !contact.get_bool("in_business_app").unwrap(),
            "{order}: {contact}"
        );
        let change = contact.get_document("business_app").unwrap();
        assert_eq!(change.get_str("action").unwrap(), "remove", "{order}");
        assert_eq!(
            change
                .get_datetime("changed_at")
                .unwrap()
                .timestamp_millis(),
            1_739_321_500_000,
            "{order}"
        );
    }
    // Without the remove: the newer add's name, whichever came last.
    for order in permutations(&["add1", "add2"]) {
        let org = format!("o{}", unique());
        store.write(&org, &order, &bodies).await;
        let contact = contacts
            .find_one(doc! { "_id": format!("{org}:12125557890") })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            contact.get_str("full_name").unwrap(),
            "Pablo M.",
            "{order:?}"
        );
        assert!(contact.get_bool("in_business_app").unwrap());
    }
}

/// The conversation shows its newest message whatever order its messages are written
/// in (the first one written sets it; an older one never replaces it), and of two
/// with the same time, the one written last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_shows_its_newest_message_in_any_order() {
    let mut store = Store::new().await;
    let at = 1_700_000_000;
    let sent = |org: &str, wamid: &str| {
        let offset = match wamid {
            "newest" => 10,
            "middle" => 5,
            _ => 0,
        };
        events::event::MessageEvent::builder(org, "111", "222", wamid)
            .sent_at(at + offset)
            .preview(wamid)
            .event()
    };
    for order in permutations(&["oldest", "middle", "newest"]) {
        let org = format!("o{}", unique());
        let events: Vec<_> = order.iter().map(|w| sent(&org, w)).collect();
        store.write_events(&events).await;
        let conversation = store.conversation(&org).await;
        let last = conversation.get_document("last_message").unwrap();
        assert_eq!(last.get_str("id").unwrap(), "newest", "{order:?}");
        assert_eq!(last.get_str("preview").unwrap(), "newest", "{order:?}");
    }
    for order in permutations(&["first", "second"]) {
        let org = format!("o{}", unique());
        let events: Vec<_> = order.iter().map(|w| sent(&org, w)).collect();
        store.write_events(&events).await;
        let last_written = order[1];
        let conversation = store.conversation(&org).await;
        let last = conversation.get_document("last_message").unwrap();
        assert_eq!(last.get_str("id").unwrap(), last_written, "{order:?}");
    }
}

/// A conversation's owner is the assignment latest by `(at_ms, offset)`, whatever
/// order the assignments are written in (a redelivered older one, two in the same
/// millisecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_the_latest_assignment_by_time_then_offset_in_any_order() {
    use events::inbox::{AssignmentEvent, ConversationState};
    let mut store = Store::new().await;
    // (assignee, at_ms, offset): bo is latest (same time as ana, later offset).
    let assignments = [("ana", 5_000, 1), ("bo", 5_000, 2), ("cy", 4_000, 3)];
    for order in permutations(&["ana", "bo", "cy"]) {
        let org = format!("o{}", unique());
        for name in &order {
            let (assignee, at_ms, offset) = assignments.iter().find(|a| a.0 == *name).unwrap();
            let event = AssignmentEvent {
                id: format!("{assignee}-{offset}"),
                org: org.clone(),
                phone_number_id: "111".into(),
                conversation_id: "111-222".into(),
                state: ConversationState::Assigned,
                assignee: Some(assignee.to_string()),
                command_id: None,
                issued_by: None,
                rejected: None,
                note: None,
                at_ms: *at_ms,
            };
            let record = Record {
                topic: events::topics::CONVERSATION_ASSIGNMENTS.into(),
                offset: *offset,
                value: serde_json::to_vec(&event).unwrap(),
                ..Default::default()
            };
            let rejects = store.sink.handle(&[record]).await.unwrap();
            assert!(rejects.is_empty(), "{order:?}: {rejects:?}");
        }
        let conversation = store.conversation(&org).await;
        assert_eq!(
            conversation.get_str("assignee").unwrap(),
            "bo",
            "{order:?}: {conversation}"
        );
        assert_eq!(conversation.get_i64("assignment_offset").unwrap(), 2);
    }
}

/// A message older than the conversation's preview still moves the conversation's
/// times: a customer's message written after a newer echo from the Business app
/// leaves the echo as the preview and still opens the customer's window
/// (`last_inbound_at`), in either order, in one batch or in two. (The sink writes a
/// message's conversation and its preview as one statement; where the preview is
/// newer that statement collides, and the conversation's own update runs alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_message_still_moves_the_conversations_times_in_any_order() {
    use events::event::{MessageEvent, Origin};
    let mut store = Store::new().await;
    let at = 1_700_000_000;
    let message = |org: &str, wamid: &str| {
        let (origin, sent_at) = match wamid {
            "echo" => (Origin::BusinessApp, at + 10),
            _ => (Origin::Customer, at),
        };
        MessageEvent::builder(org, "111", "222", wamid)
            .origin(origin)
            .sent_at(sent_at)
            .preview(wamid)
            .event()
    };
    let seconds = |s: i64| Bson::DateTime(mongodb::bson::DateTime::from_millis(s * 1000));
    for one_batch in [false, true] {
        for order in permutations(&["customer", "echo"]) {
            let org = format!("o{}", unique());
            let events: Vec<_> = order.iter().map(|w| message(&org, w)).collect();
            if one_batch {
                let records: Vec<Record> = events
                    .iter()
                    .map(|e| Record {
                        topic: events::topics::WHATSAPP_EVENTS.into(),
                        value: events::codec::encode(e).unwrap(),
                        ..Default::default()
                    })
                    .collect();
                let rejects = store.sink.handle(&records).await.unwrap();
                assert!(rejects.is_empty(), "{rejects:?}");
            } else {
                store.write_events(&events).await;
            }
            let conversation = store.conversation(&org).await;
            let context = format!("{order:?}, one batch: {one_batch}: {conversation}");
            let last = conversation.get_document("last_message").unwrap();
            assert_eq!(last.get_str("id").unwrap(), "echo", "{context}");
            assert_eq!(
                conversation.get("last_inbound_at"),
                Some(&seconds(at)),
                "{context}"
            );
            assert_eq!(
                conversation.get("last_message_at"),
                Some(&seconds(at + 10)),
                "{context}"
            );
            assert_eq!(conversation.get_str("state").unwrap(), "open", "{context}");
        }
    }
}
