//! Which events carry media to copy, and where it goes. Pure.

use events::WhatsAppEvent;
use events::event::EventBody;
use sha2::{Digest, Sha256};

/// A media file to copy from the Graph API to S3.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    /// Index of the record in the batch.
    pub source: usize,
    pub org: String,
    pub phone_number_id: String,
    pub wamid: String,
    pub media_id: String,
    /// The MIME type the webhook named, if any (the Graph API's answer wins).
    pub mime_type: Option<String>,
}

/// The media of every message in the batch that has a Meta media id: customers',
/// Business-app echoes' and history items' alike (Coexist's own sends are already in
/// S3 or came from a link), and an edit's new media, stored on the message it edits
/// (the newest copy is the one served).
pub fn fetches<'a>(events: impl IntoIterator<Item = (usize, &'a WhatsAppEvent)>) -> Vec<Fetch> {
    events
        .into_iter()
        .filter_map(|(source, event)| {
            let (wamid, media) = match &event.body {
                EventBody::Message(m) => (&m.wamid, m.media.as_ref()?),
                EventBody::Edit(c) => (&c.wamid, c.media.as_ref()?),
                _ => return None,
            };
            Some(Fetch {
                source,
                org: event.org.clone(),
                phone_number_id: event.phone_number_id.clone(),
                wamid: wamid.clone(),
                media_id: media.id.clone()?,
                mime_type: media.mime_type.clone(),
            })
        })
        .collect()
}

/// `{org}/{sha256 hex}`: the same bytes land on the same key, whatever message or
/// replay brought them, so a copy is idempotent and deduplicated per org.
pub fn key(org: &str, bytes: &[u8]) -> String {
    format!("{org}/{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::webhook::Webhook;

    fn events_of(path: &str) -> Vec<WhatsAppEvent> {
        let text = std::fs::read_to_string(format!(
            "{}/../events/tests/fixtures/{path}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let webhook: Webhook = serde_json::from_str(&text).unwrap();
        events::normalize(&webhook, 0, &events::OrgDirectory::new("acme", [])).events
    }

    #[test]
    fn an_inbound_image_is_fetched_by_its_media_id() {
        let events = events_of("msg_image");
        let fetches = fetches(events.iter().enumerate());
        assert_eq!(fetches.len(), 1);
        assert_eq!(fetches[0].media_id, "1003383421387256");
        assert_eq!(fetches[0].mime_type.as_deref(), Some("image/jpeg"));
        assert_eq!(fetches[0].org, "acme");
    }

    #[test]
    fn an_edits_new_media_is_fetched_for_the_message_it_edits() {
        let mut events = events_of("smb_message_echoes_edit");
        assert!(fetches(events.iter().enumerate()).is_empty(), "a text edit");
        let EventBody::Edit(change) = &mut events[0].body else {
            panic!("not an edit: {:?}", events[0].body);
        };
        change.media = Some(events::event::MediaRef {
            id: Some("777".into()),
            mime_type: Some("image/png".into()),
            sha256: None,
            filename: None,
        });
        let original = change.wamid.clone();
        let fetches = fetches(events.iter().enumerate());
        assert_eq!(fetches.len(), 1);
        assert_eq!(
            (fetches[0].wamid.as_str(), fetches[0].media_id.as_str()),
            (original.as_str(), "777")
        );
    }

    #[test]
    fn text_and_statuses_have_nothing_to_fetch() {
        for fixture in ["msg_text", "status_sent", "smb_app_state_sync"] {
            let events = events_of(fixture);
            assert!(fetches(events.iter().enumerate()).is_empty(), "{fixture}");
        }
    }

    #[test]
    fn the_key_is_the_org_and_the_content_hash() {
        assert_eq!(
            key("acme", b"abc"),
            "acme/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(key("acme", b"abc"), key("other", b"abc"));
    }
}
