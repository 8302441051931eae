//! Configuration plumbing shared by every role: a TOML file over typed defaults, then
//! environment overrides named after each key's path (`kafka.brokers` is
//! `COEXIST_KAFKA_BROKERS`). The names come from the config types themselves, so the
//! list of valid variables ([`env_keys`]) can never drift from the code.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "COEXIST";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("environment variable {name}: {reason}")]
    Env { name: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A secret (token, password, key): read from config or env, never printed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a secret's value is prefixed with while [`secrets_of`] serializes a config.
const SECRET_MARK: &str = "\u{1}secret:";

thread_local! {
    static MARK_SECRETS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if MARK_SECRETS.with(std::cell::Cell::get) {
            serializer.serialize_str(&format!("{SECRET_MARK}{}", self.0))
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

/// Every key of `config` that holds secrets (a [`Secret`], or a list of them or of
/// tables with one), as its env name, with the secret values under it. Found from
/// the types: how each key was declared, not what it is called.
pub fn secrets_of<T: Serialize>(config: &T) -> std::collections::BTreeMap<String, Vec<String>> {
    MARK_SECRETS.with(|m| m.set(true));
    let table = Table::try_from(config);
    MARK_SECRETS.with(|m| m.set(false));
    let mut out = std::collections::BTreeMap::new();
    if let Ok(table) = table {
        collect_secrets(&table, &mut Vec::new(), &mut out);
    }
    out
}

fn collect_secrets(
    table: &Table,
    path: &mut Vec<String>,
    out: &mut std::collections::BTreeMap<String, Vec<String>>,
) {
    for (key, value) in table {
        path.push(key.clone());
        match value {
            Value::Table(inner) => collect_secrets(inner, path, out),
            other => {
                let mut found = Vec::new();
                marked(other, &mut found);
                if !found.is_empty() {
                    out.insert(env_name(path), found);
                }
            }
        }
        path.pop();
    }
}

/// The secret values anywhere inside a leaf (lists of secrets, lists of tables).
fn marked(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Some(secret) = s.strip_prefix(SECRET_MARK) {
                found.push(secret.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| marked(v, found)),
        Value::Table(t) => t.values().for_each(|v| marked(v, found)),
        _ => {}
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"[redacted]\""
        })
    }
}

/// Loads `T`: its defaults, overlaid by the file (if any), overlaid by `env`.
pub fn load<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut table = defaults::<T>()?;
    if let Some(path) = file {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let from_file: Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: display,
            source,
        })?;
        merge(&mut table, from_file);
    }
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    apply_env(&mut table, &mut Vec::new(), &env)?;
    Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
}

/// Every environment variable that overrides a key of `T`.
pub fn env_keys<T: Serialize + Default>() -> Vec<String> {
    let mut keys = Vec::new();
    if let Ok(table) = defaults::<T>() {
        collect_keys(&table, &mut Vec::new(), &mut keys);
    }
    keys
}

fn defaults<T: Serialize + Default>() -> Result<Table, ConfigError> {
    Table::try_from(T::default()).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// `COEXIST_SINKS_MONGO_URI` for `["sinks", "mongo", "uri"]`.
pub fn env_name(path: &[String]) -> String {
    let mut name = String::from(ENV_PREFIX);
    for part in path {
        name.push('_');
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

fn collect_keys(table: &Table, path: &mut Vec<String>, out: &mut Vec<String>) {
    for (key, value) in table {
        path.push(key.clone());
        match value {
            Value::Table(inner) => collect_keys(inner, path, out),
            _ => out.push(env_name(path)),
        }
        path.pop();
    }
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_env(
    table: &mut Table,
    path: &mut Vec<String>,
    env: &std::collections::HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        if let Value::Table(inner) = value {
            apply_env(inner, path, env)?;
        } else {
            let name = env_name(path);
            if let Some(raw) = env.get(&name) {
                *value = parse_env(value, raw).map_err(|reason| ConfigError::Env {
                    name: name.clone(),
                    reason,
                })?;
            }
        }
        path.pop();
    }
    Ok(())
}

/// Reads an env value as the type of the key's current value. Lists take either JSON
/// (`["a","b"]`, also for lists of tables) or comma-separated strings.
fn parse_env(current: &Value, raw: &str) -> Result<Value, String> {
    let raw_trim = raw.trim();
    Ok(match current {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(
            raw_trim
                .parse()
                .map_err(|_| "expected an integer".to_string())?,
        ),
        Value::Float(_) => Value::Float(
            raw_trim
                .parse()
                .map_err(|_| "expected a number".to_string())?,
        ),
        Value::Boolean(_) => Value::Boolean(match raw_trim {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err("expected true or false".into()),
        }),
        Value::Array(_) if raw_trim.starts_with('[') => {
            let json: serde_json::Value =
                serde_json::from_str(raw_trim).map_err(|e| format!("invalid JSON list: {e}"))?;
            Value::try_from(json).map_err(|e| e.to_string())?
        }
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        other => {
            return Err(format!(
                "cannot override a {} from the environment",
                other.type_str()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Root {
        kafka: Kafka,
        secrets: Vec<Secret>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Kafka {
        brokers: String,
        session_timeout_ms: u32,
        idempotent: bool,
    }

    impl Default for Kafka {
        fn default() -> Self {
            Self {
                brokers: "127.0.0.1:9092".into(),
                session_timeout_ms: 6000,
                idempotent: true,
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_defaults_by_path() {
        let root: Root = load(
            None,
            env(&[
                ("COEXIST_KAFKA_BROKERS", "k:1"),
                ("COEXIST_KAFKA_SESSION_TIMEOUT_MS", "9"),
                ("COEXIST_SECRETS", "a, b"),
            ]),
        )
        .unwrap();
        assert_eq!(root.kafka.brokers, "k:1");
        assert_eq!(root.kafka.session_timeout_ms, 9);
        assert_eq!(root.secrets, vec![Secret::new("a"), Secret::new("b")]);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load::<Root>(None, env(&[("COEXIST_KAFKA_IDEMPOTENT", "maybe")])).unwrap_err();
        assert!(
            err.to_string().contains("COEXIST_KAFKA_IDEMPOTENT"),
            "{err}"
        );
    }

    #[test]
    fn keys_are_listed() {
        let keys = env_keys::<Root>();
        assert!(keys.contains(&"COEXIST_KAFKA_BROKERS".to_string()));
        assert!(keys.contains(&"COEXIST_SECRETS".to_string()));
    }

    #[test]
    fn secrets_are_found_by_type_in_lists_and_tables() {
        #[derive(Serialize)]
        struct Key {
            id: String,
            key: Secret,
        }
        #[derive(Serialize)]
        struct Conf {
            name: String,
            keys: Vec<Key>,
            plain: Vec<Secret>,
            kafka: Inner,
        }
        #[derive(Serialize)]
        struct Inner {
            password: Secret,
            brokers: String,
        }
        let conf = Conf {
            name: "n".into(),
            keys: vec![Key {
                id: "k1".into(),
                key: Secret::new("s1"),
            }],
            plain: vec![Secret::new("a"), Secret::new("b")],
            kafka: Inner {
                password: Secret::new(""),
                brokers: "b".into(),
            },
        };
        let found = secrets_of(&conf);
        let expected: std::collections::BTreeMap<String, Vec<String>> = [
            ("COEXIST_KEYS", vec!["s1"]),
            ("COEXIST_PLAIN", vec!["a", "b"]),
            ("COEXIST_KAFKA_PASSWORD", vec![""]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(found, expected);
        // And plain serialization is untouched.
        let table = Table::try_from(&conf).unwrap();
        assert_eq!(table["kafka"]["password"].as_str(), Some(""));
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "\"[redacted]\"");
    }
}
