//! Topic values on the wire: JSON, optionally framed in the Confluent wire format
//! (a zero byte, then the 4-byte schema id) when a Schema Registry is configured.
//! Readers accept both forms, so a topic can move to the registry without a flag day.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a Confluent-framed value. JSON text never starts with it.
pub const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;

/// The JSON part of a value, with a Confluent header removed if there is one.
pub fn json_part(value: &[u8]) -> &[u8] {
    match value {
        [CONFLUENT_MAGIC, rest @ ..] if rest.len() >= CONFLUENT_HEADER_LEN - 1 => {
            &value[CONFLUENT_HEADER_LEN..]
        }
        _ => value,
    }
}

/// The schema id of a Confluent-framed value.
pub fn confluent_schema_id(value: &[u8]) -> Option<u32> {
    match value {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Decodes a value in either form.
pub fn decode<T: DeserializeOwned>(value: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(json_part(value))
}

/// Plain JSON (the registry framing is added by the producer when configured).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_both_forms() {
        let plain = br#"{"a":1}"#.to_vec();
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend_from_slice(&plain);
        let a: serde_json::Value = decode(&plain).unwrap();
        let b: serde_json::Value = decode(&framed).unwrap();
        assert_eq!(a, b);
        assert_eq!(confluent_schema_id(&framed), Some(42));
        assert_eq!(confluent_schema_id(&plain), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<serde_json::Value>(&bytes);
        }
    }
}
