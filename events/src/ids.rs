//! Deterministic ids: the same input always yields the same id, so a redelivered
//! webhook or a replay is recognised by every sink.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `{phone_number_id}-{wa_id}`: one thread per customer per business number. Both parts
/// are digits, so the id is safe in MQTT topics and URLs.
pub fn conversation_id(phone_number_id: &str, contact_wa_id: &str) -> String {
    format!("{phone_number_id}-{contact_wa_id}")
}

/// `wamid:status`: one event per status a message reaches.
pub fn status_id(wamid: &str, status: &str) -> String {
    format!("{wamid}:{status}")
}

/// `prefix:` and 32 hex digits of SHA-256 over the parts' canonical JSON, so equal
/// JSON hashes equally whatever order Meta sent the keys in.
pub fn content_id(prefix: &str, parts: &[&Value]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        let mut canonical = String::new();
        write_canonical(part, &mut canonical);
        hasher.update(canonical.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hex::encode(hasher.finalize());
    format!("{prefix}:{}", &digest[..32])
}

/// JSON with object keys sorted. Written out rather than left to serde_json's map,
/// whose order depends on a crate feature any dependency can switch on.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Digits only: Meta writes the same number as `+1 650-555-1234` in the Business
/// app's contacts and `16505551234` as a wa_id.
pub fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// The longest id (org, agent, device, session, conversation, ...) the system takes.
pub const ID_MAX_LEN: usize = 128;

/// The characters an id may hold: what [`is_valid_id`] accepts, for error messages
/// and the OpenAPI patterns.
pub const ID_CHARS: &str = "letters, digits and - _ . @ =";

/// The one rule for every id that can become part of a key, a MongoDB `_id` or an
/// MQTT topic (orgs, agents, devices, sessions, conversations, commands): 1 to
/// [`ID_MAX_LEN`] ASCII letters, digits and `- _ . @ =`.
///
/// Refused on purpose: the MQTT wildcards `+` and `#` (an org or agent called `+`
/// would turn a broker ACL such as `coexist/{org}/agents/{agent}/inbox` into a
/// wildcard over every org), the level separator `/`, `$` (MQTT system topics and
/// MongoDB operators), `:` (the separator of composite keys such as
/// `{org}:{agent_id}`), whitespace and control characters.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_MAX_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn ids_never_hold_topic_or_key_syntax() {
        for bad in ["", "+", "#", "a/b", "$SYS", "a+b", "org#", "a:b", " a", "é"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        for good in ["acme", "ann@acme.test", "phone-1", "s_1.x=", "AZaz09"] {
            assert!(is_valid_id(good), "{good:?}");
        }
        assert!(is_valid_id(&"a".repeat(ID_MAX_LEN)));
        assert!(!is_valid_id(&"a".repeat(ID_MAX_LEN + 1)));
    }

    proptest! {
        /// A valid id is always exactly one MQTT topic level with no wildcard.
        #[test]
        fn a_valid_id_is_one_plain_topic_level(id in ".{0,140}") {
            if is_valid_id(&id) {
                prop_assert!(!id.contains(['+', '#', '/', '$', ':']));
                prop_assert!(!id.is_empty() && id.len() <= ID_MAX_LEN);
            }
        }
    }

    #[test]
    fn content_id_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":[1,2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":[1,2],"a":1}"#).unwrap();
        let nested_a: Value = serde_json::from_str(r#"{"x":{"p":1,"q":2}}"#).unwrap();
        let nested_b: Value = serde_json::from_str(r#"{"x":{"q":2,"p":1}}"#).unwrap();
        assert_eq!(content_id("x", &[&nested_a]), content_id("x", &[&nested_b]));
        assert_eq!(content_id("x", &[&a]), content_id("x", &[&b]));
        assert_ne!(content_id("x", &[&a]), content_id("x", &[&json!({"a":2})]));
    }

    #[test]
    fn digits_strips_formatting() {
        assert_eq!(digits("+1 (650) 555-1234"), "16505551234");
    }
}
