//! Is a schema change safe for the consumers already reading a topic? A pure check of
//! two JSON Schemas (as `schema` generates them) under a Schema Registry
//! compatibility level, so CI refuses a change the registry would refuse (producers
//! failing to encode, ingest answering 503) or that would break a consumer.
//!
//! The question is always "does every value the writer's schema allows pass the
//! reader's schema?":
//! - `Forward`: old readers, new data (reader = old, writer = new). What compose
//!   configures: consumers upgrade after producers.
//! - `Backward`: new readers, old data (reader = new, writer = old).
//! - `Full`: both.
//!
//! Open content (no `additionalProperties: false`, what every schema states) means a
//! writer may add properties its schema does not name: so under `Backward` a
//! property added to the reader is refused (old data may hold it with any type), as
//! Confluent's registry refuses it, while under `Forward` adding an optional
//! property is fine.

use serde_json::Value;

/// A Schema Registry compatibility level (the non-transitive ones: the check runs
/// against the last published schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Backward,
    Forward,
    Full,
    None,
}

impl Level {
    /// From the registry's name (`FORWARD`, `forward_transitive`, ...): transitive
    /// levels check against the previous schema here, as the registry does first.
    pub fn parse(name: &str) -> Option<Level> {
        let name = name.to_ascii_uppercase();
        Some(match name.trim_end_matches("_TRANSITIVE") {
            "BACKWARD" => Level::Backward,
            "FORWARD" => Level::Forward,
            "FULL" => Level::Full,
            "NONE" => Level::None,
            _ => return None,
        })
    }
}

/// Why `new` may not replace `old` under `level`; empty when it may.
pub fn check(old: &Value, new: &Value, level: Level) -> Vec<String> {
    let mut problems = Vec::new();
    if matches!(level, Level::Forward | Level::Full) {
        accepts(
            &Doc::new(old),
            old,
            &Doc::new(new),
            new,
            "old readers of new data",
            &mut problems,
        );
    }
    if matches!(level, Level::Backward | Level::Full) {
        accepts(
            &Doc::new(new),
            new,
            &Doc::new(old),
            old,
            "new readers of old data",
            &mut problems,
        );
    }
    problems
}

/// A schema document, for resolving `#/$defs/...` references.
struct Doc<'a> {
    root: &'a Value,
}

impl<'a> Doc<'a> {
    fn new(root: &'a Value) -> Self {
        Self { root }
    }

    /// `schema`, with a local `$ref` followed (a few levels, no cycles).
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..8 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(pointer) = reference.strip_prefix('#') else {
                break;
            };
            match self.root.pointer(pointer) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }
}

fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn branches(schema: &Value) -> Option<&Vec<Value>> {
    schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
}

fn is_closed(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

/// Records why some value `writer` allows fails `reader`, at `path`.
fn accepts(
    rdoc: &Doc<'_>,
    reader: &Value,
    wdoc: &Doc<'_>,
    writer: &Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let (reader, writer) = (rdoc.resolve(reader), wdoc.resolve(writer));
    if reader == &Value::Bool(true) || reader.as_object().is_some_and(|o| o.is_empty()) {
        return;
    }
    // A union in the writer: each of its branches must pass; in the reader: some
    // branch must take it.
    if let Some(wb) = branches(writer) {
        for (i, branch) in wb.iter().enumerate() {
            accepts(rdoc, reader, wdoc, branch, &format!("{path}|{i}"), problems);
        }
        return;
    }
    if let Some(rb) = branches(reader) {
        let fits = rb.iter().any(|branch| {
            let mut inner = Vec::new();
            accepts(rdoc, branch, wdoc, writer, path, &mut inner);
            inner.is_empty()
        });
        if !fits {
            problems.push(format!("{path}: no variant of the reader takes this value"));
        }
        return;
    }
    if let (Some(rt), Some(wt)) = (types(reader), types(writer)) {
        for t in &wt {
            let ok = rt.contains(t) || (*t == "integer" && rt.contains(&"number"));
            if !ok {
                problems.push(format!("{path}: type {t} is not one of {rt:?}"));
            }
        }
    }
    if let Some(renum) = reader.get("enum").and_then(Value::as_array) {
        match writer.get("enum").and_then(Value::as_array) {
            Some(wenum) => {
                for v in wenum.iter().filter(|v| !renum.contains(v)) {
                    problems.push(format!("{path}: value {v} is not in the reader's enum"));
                }
            }
            None => problems.push(format!("{path}: any value, the reader takes an enum")),
        }
    }
    if let Some(rconst) = reader.get("const")
        && writer.get("const") != Some(rconst)
    {
        problems.push(format!("{path}: the reader wants the constant {rconst}"));
    }
    let empty = serde_json::Map::new();
    let rprops = reader
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let wprops = writer
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required = |s: &Value| -> Vec<String> {
        s.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let wreq = required(writer);
    for name in required(reader) {
        if !wreq.contains(&name) {
            problems.push(format!(
                "{path}.{name}: the reader requires it, the writer may leave it out"
            ));
        }
    }
    for (name, wschema) in wprops {
        match rprops.get(name) {
            Some(rschema) => accepts(
                rdoc,
                rschema,
                wdoc,
                wschema,
                &format!("{path}.{name}"),
                problems,
            ),
            None if is_closed(reader) => problems.push(format!(
                "{path}.{name}: the reader's content is closed (additionalProperties: false)"
            )),
            None => {}
        }
    }
    for name in rprops.keys().filter(|n| !wprops.contains_key(*n)) {
        if !is_closed(writer) {
            problems.push(format!(
                "{path}.{name}: added to an open content model; the writer's values may \
                 already hold it with another type"
            ));
        }
    }
    if let (Some(ritems), Some(witems)) = (reader.get("items"), writer.get("items")) {
        accepts(rdoc, ritems, wdoc, witems, &format!("{path}[]"), problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(extra: Value) -> Value {
        let mut schema = json!({
            "type": "object",
            "additionalProperties": true,
            "properties": {
                "id": { "type": "string" },
                "state": { "$ref": "#/$defs/State" },
                "at_ms": { "type": "integer" }
            },
            "required": ["id", "state"],
            "$defs": { "State": { "type": "string", "enum": ["online", "offline"] } }
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                schema["properties"][k] = v;
            }
        }
        schema
    }

    #[test]
    fn adding_an_optional_field_passes_forward_and_full_fails_backward() {
        let old = event(json!({}));
        let new = event(json!({ "device": { "type": ["string", "null"] } }));
        assert_eq!(check(&old, &new, Level::Forward), Vec::<String>::new());
        // Confluent's BACKWARD refuses it for an open content model (the 503).
        assert!(!check(&old, &new, Level::Backward).is_empty());
        assert!(!check(&old, &new, Level::Full).is_empty());
        assert!(check(&old, &new, Level::None).is_empty());
    }

    #[test]
    fn incompatible_changes_fail_forward() {
        let old = event(json!({}));
        // A required field dropped: old readers need it.
        let mut dropped = old.clone();
        dropped["required"] = json!(["id"]);
        assert!(
            check(&old, &dropped, Level::Forward)
                .iter()
                .any(|p| p.contains(".state")),
            "{:?}",
            check(&old, &dropped, Level::Forward)
        );
        // A type changed.
        let retyped = event(json!({ "at_ms": { "type": "string" } }));
        assert!(!check(&old, &retyped, Level::Forward).is_empty());
        // An enum widened: old readers refuse the new value.
        let mut widened = old.clone();
        widened["$defs"]["State"]["enum"] = json!(["online", "offline", "away"]);
        let problems = check(&old, &widened, Level::Forward);
        assert!(problems.iter().any(|p| p.contains("away")), "{problems:?}");
        // The same widening is fine for new readers of old data.
        assert!(check(&old, &widened, Level::Backward).is_empty());
    }

    #[test]
    fn a_closed_reader_refuses_new_fields() {
        let mut old = event(json!({}));
        old["additionalProperties"] = json!(false);
        let new = event(json!({ "device": { "type": "string" } }));
        assert!(!check(&old, &new, Level::Forward).is_empty());
    }

    #[test]
    fn identical_schemas_are_compatible_at_every_level() {
        let s = event(json!({}));
        for level in [Level::Forward, Level::Backward, Level::Full] {
            assert!(check(&s, &s, level).is_empty(), "{level:?}");
        }
        assert_eq!(Level::parse("forward_transitive"), Some(Level::Forward));
        assert_eq!(Level::parse("sideways"), None);
    }
}
