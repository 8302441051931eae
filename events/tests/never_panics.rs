//! The parser never panics: arbitrary bytes, and arbitrary mutations of every fixture,
//! either fail to parse with an error or normalize without panicking.

use std::path::PathBuf;

use events::{OrgDirectory, Webhook, normalize};
use proptest::prelude::*;
use serde_json::Value;

fn fixture_values() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.retain(|p| p.extension().is_some_and(|x| x == "json"));
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the `nth` node (in depth-first order) of `value` with `replacement`.
fn mutate(value: &mut Value, nth: &mut usize, replacement: &Value) -> bool {
    if *nth == 0 {
        *value = replacement.clone();
        return true;
    }
    *nth -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|v| mutate(v, nth, replacement)),
        Value::Object(map) => map.values_mut().any(|v| mutate(v, nth, replacement)),
        _ => false,
    }
}

fn parse_and_normalize(bytes: &[u8]) {
    if let Ok(webhook) = serde_json::from_slice::<Webhook>(bytes) {
        let _ = normalize(&webhook, 0, &OrgDirectory::new("acme", []));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_and_normalize(&bytes);
    }

    #[test]
    fn mutated_fixtures(which in any::<prop::sample::Index>(), node in 0usize..400, replacement in any_json()) {
        let fixtures = fixture_values();
        let mut value = fixtures[which.index(fixtures.len())].clone();
        let mut nth = node;
        mutate(&mut value, &mut nth, &replacement);
        parse_and_normalize(value.to_string().as_bytes());
    }
}
