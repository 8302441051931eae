//! Every fixture (Meta's documented examples, see fixtures/README.md) parses, round-
//! trips to the same JSON, and normalizes into the expected events.

use std::path::PathBuf;

use events::event::EventBody;
use events::{OrgDirectory, Webhook, normalize};
use serde_json::Value;

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// A one-line summary per event: kind, then what decides routing and storage.
fn summary(webhook: &Webhook) -> Vec<String> {
    let orgs = OrgDirectory::new(
        "acme",
        [("106540352242922".to_string(), "org-1".to_string())],
    );
    let normalized = normalize(webhook, 1_739_000_000_000, &orgs);
    let mut lines: Vec<String> = normalized
        .events
        .iter()
        .map(|e| match &e.body {
            EventBody::Message(m) => format!(
                "message {:?} {:?} {} contact={} {}",
                m.origin,
                m.direction,
                m.message_type,
                m.contact_wa_id,
                m.history_status.clone().unwrap_or_default()
            ),
            EventBody::Edit(c) | EventBody::Revoke(c) => format!(
                "{} {:?} {:?} of={} contact={} {}",
                e.body.kind(),
                c.origin,
                c.direction,
                c.wamid,
                c.contact_wa_id,
                c.preview.clone().unwrap_or_default()
            ),
            EventBody::Reaction(r) => format!(
                "reaction {:?} to={} by={} emoji={}",
                r.origin,
                r.wamid,
                r.reactor,
                r.emoji.clone().unwrap_or_default()
            ),
            EventBody::Status(s) => format!("status {} {}", s.status, s.recipient_id),
            EventBody::ContactSync(c) => {
                format!(
                    "contact_sync {:?} {} at={}",
                    c.action, c.wa_id, c.changed_at
                )
            }
            EventBody::HistoryProgress(h) => {
                format!(
                    "history_progress phase={} chunk={} progress={} errors={}",
                    h.phase,
                    h.chunk_order,
                    h.progress,
                    h.errors.len()
                )
            }
            EventBody::Unhandled(u) => format!("unhandled {}", u.field),
        })
        .collect();
    lines.extend(
        normalized
            .rejected
            .iter()
            .map(|r| format!("rejected {}", r.field)),
    );
    lines
}

#[test]
fn every_fixture_round_trips() {
    for (name, text) in fixtures() {
        let original: Value = serde_json::from_str(&text).unwrap();
        let webhook: Webhook =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = serde_json::to_value(&webhook).unwrap();
        assert_eq!(back, original, "{name} does not round-trip");
        for change in webhook.entry.iter().flat_map(|e| &e.changes) {
            change
                .parse_value()
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", change.field));
        }
    }
}

/// What each fixture must normalize into (reviewed by hand against the fixture).
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "history",
        &[
            "message History Outbound text contact=16505551234 read",
            "message History Outbound media_placeholder contact=16505551234 played",
            "message History Inbound text contact=16505551234 read",
            "message History Outbound text contact=12125557890 delivered",
            "history_progress phase=0 chunk=1 progress=55 errors=0",
        ],
    ),
    (
        "history_declined",
        &["history_progress phase=0 chunk=0 progress=0 errors=1"],
    ),
    (
        "history_lowercase_status",
        &[
            "message History Outbound text contact=16505551234 read",
            "message History Inbound text contact=16505551234 pending",
            "history_progress phase=0 chunk=1 progress=100 errors=0",
        ],
    ),
    (
        "history_media",
        &["message History Outbound image contact= "],
    ),
    (
        "history_progress_only",
        &["history_progress phase=2 chunk=3 progress=100 errors=0"],
    ),
    (
        "msg_audio",
        &["message Customer Inbound audio contact=16505551234 "],
    ),
    (
        "msg_button",
        &["message Customer Inbound button contact=16505551234 "],
    ),
    (
        "msg_contacts",
        &["message Customer Inbound contacts contact=16505551234 "],
    ),
    (
        "msg_document",
        &["message Customer Inbound document contact=16505551234 "],
    ),
    (
        "msg_image",
        &["message Customer Inbound image contact=16505551234 "],
    ),
    (
        "msg_interactive_button_reply",
        &["message Customer Inbound interactive contact=16505551234 "],
    ),
    (
        "msg_interactive_list_reply",
        &["message Customer Inbound interactive contact=16505551234 "],
    ),
    (
        "msg_location",
        &["message Customer Inbound location contact=16505551234 "],
    ),
    (
        "msg_order",
        &["message Customer Inbound order contact=16505551234 "],
    ),
    (
        "msg_reaction",
        &[
            "reaction Customer to=wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA by=16505551234 emoji=👍",
        ],
    ),
    (
        "msg_reaction_removed",
        &[
            "reaction Customer to=wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA by=16505551234 emoji=",
        ],
    ),
    (
        "msg_referral",
        &["message Customer Inbound text contact=16505551234 "],
    ),
    (
        "msg_revoke",
        &[
            "revoke Customer Inbound of=wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTdCNTg5RjY4MEQxRDFGQjQ5MwA= contact=16505551234 ",
        ],
    ),
    (
        "msg_sticker",
        &["message Customer Inbound sticker contact=16505551234 "],
    ),
    (
        "msg_system",
        &["message Customer Inbound system contact=16505551234 "],
    ),
    (
        "msg_system_identity",
        &["message Customer Inbound system contact=16505551234 "],
    ),
    (
        "msg_system_legacy",
        &["message Customer Inbound system contact=16505551234 "],
    ),
    (
        "msg_text",
        &["message Customer Inbound text contact=16505551234 "],
    ),
    (
        "msg_text_reply_context",
        &["message Customer Inbound text contact=16505551234 "],
    ),
    (
        "msg_unknown_type",
        &["message Customer Inbound poll contact=16505551234 "],
    ),
    (
        "msg_unsupported",
        &["message Customer Inbound unsupported contact=16505551234 "],
    ),
    (
        "msg_video",
        &["message Customer Inbound video contact=16505551234 "],
    ),
    (
        "multi_entry",
        &[
            "message Customer Inbound text contact=16505551234 ",
            "status read 16505551234",
            "status delivered 16505551234",
        ],
    ),
    (
        "smb_app_state_sync",
        &[
            "contact_sync Upsert 16505551234 at=1739321024",
            "contact_sync Upsert 12125557890 at=1739321024",
        ],
    ),
    (
        "smb_app_state_sync_remove",
        &["contact_sync Remove 12125557890 at=1739321500"],
    ),
    (
        "smb_message_echoes",
        &["message BusinessApp Outbound text contact=16505551234 "],
    ),
    (
        "smb_message_echoes_edit",
        &[
            "edit BusinessApp Outbound of=wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQyQTlEM0Y3RTFCNUM4QTBENEU2RgA= contact=16505551234 Here's the info you requested (updated link): https://www.meta.com/quest/",
        ],
    ),
    (
        "smb_message_echoes_image",
        &["message BusinessApp Outbound image contact=16505551234 "],
    ),
    (
        "smb_message_echoes_revoke",
        &[
            "revoke BusinessApp Outbound of=wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQyQTlEM0Y3RTFCNUM4QTBENEU2RgA= contact=16505551234 ",
        ],
    ),
    (
        "status_batch_out_of_order",
        &[
            "status read 16505551234",
            "status delivered 16505551234",
            "status delivered 16505551234",
            "status sent 16505551234",
            "status sent 16505551234",
        ],
    ),
    ("status_delivered", &["status delivered 16505551234"]),
    ("status_failed", &["status failed 16505551234"]),
    ("status_read", &["status read 16505551234"]),
    ("status_sent", &["status sent 16505551234"]),
    ("unknown_field", &["unhandled account_update"]),
];

#[test]
fn every_fixture_normalizes_as_expected() {
    let fixtures = fixtures();
    assert_eq!(
        fixtures.len(),
        EXPECTED.len(),
        "a fixture without expectations, or the reverse"
    );
    for ((name, text), (expected_name, expected)) in fixtures.iter().zip(EXPECTED) {
        assert_eq!(name, expected_name);
        let webhook: Webhook = serde_json::from_str(text).unwrap();
        assert_eq!(summary(&webhook), *expected, "{name}");
    }
}

#[test]
fn redelivery_yields_the_same_ids() {
    let orgs = OrgDirectory::new("acme", []);
    for (name, text) in fixtures() {
        let webhook: Webhook = serde_json::from_str(&text).unwrap();
        let ids = |at| {
            normalize(&webhook, at, &orgs)
                .events
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        let first = ids(1);
        assert_eq!(first, ids(2), "{name}");
        let unique: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(unique.len(), first.len(), "{name}: two events share an id");
    }
}

#[test]
fn every_event_fits_the_checked_in_schema() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/whatsapp.events.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let orgs = OrgDirectory::new("acme", []);
    for (name, text) in fixtures() {
        let webhook: Webhook = serde_json::from_str(&text).unwrap();
        for event in normalize(&webhook, 1, &orgs).events {
            let value = serde_json::to_value(&event).unwrap();
            if let Err(error) = validator.validate(&value) {
                panic!(
                    "{name}: event {} does not fit the schema: {error}",
                    event.id
                );
            }
        }
    }
}

#[test]
fn a_change_that_does_not_fit_is_rejected_and_the_rest_kept() {
    let text = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
        {"field":"messages","value":{"messages":"not a list"}},
        {"field":"smb_app_state_sync","value":{"metadata":{"phone_number_id":"9"},"state_sync":[
            {"type":"contact","action":"add","contact":{"phone_number":"+1 555 0100"}}]}}]}]}"#;
    let webhook: Webhook = serde_json::from_str(text).unwrap();
    let out = normalize(&webhook, 1, &OrgDirectory::new("acme", []));
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].field, "messages");
    assert!(
        out.rejected[0].reason.contains("messages"),
        "{}",
        out.rejected[0].reason
    );
    assert_eq!(
        summary(&webhook),
        vec!["contact_sync Upsert 15550100 at=0", "rejected messages"]
    );
}
