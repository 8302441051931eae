//! What a deployment must set for each role, derived from the config types: the
//! keys whose built-in default only works on the local stack. tests/contract.rs
//! holds docker-compose.yml to it; an operator gets the same list from
//! `coexist config --env`.
//!
//! A key is required for a role when it lies in one of the role's sections
//! ([`Role::sections`], plus `[log]` and `[metrics]`) and either
//! - its default names this machine (`127.0.0.1`, `localhost`): a server address
//!   or a listen address that no container can use as is; or
//! - it holds a secret (declared as [`runtime::Secret`]) that the example config
//!   gives a development value: a value anyone can read in this repository.
//!   Secrets the example leaves empty mean "off" (SASL, a system user's Graph
//!   token, Expo's access token) and stay optional.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Table, Value};

use crate::Config;
use crate::roles::Role;

/// The example config, as published.
const EXAMPLE: &str = include_str!("../coexist.example.toml");

/// Sections every process reads.
const EVERY_PROCESS: [&str; 2] = ["log", "metrics"];

/// Env names of every key that holds a secret, with the example config's values
/// under it (empty when the example leaves it empty).
pub fn secret_keys() -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = runtime::config::secrets_of(&Config::default())
        .into_keys()
        .map(|k| (k, Vec::new()))
        .collect();
    if let Ok(example) = toml::from_str::<Config>(EXAMPLE) {
        for (key, values) in runtime::config::secrets_of(&example) {
            keys.insert(key, values.into_iter().filter(|v| !v.is_empty()).collect());
        }
    }
    keys
}

/// The env names of every key `role` needs set in a deployment (see the module
/// doc).
pub fn required_keys(role: Role) -> BTreeSet<String> {
    let prefixes: Vec<String> = EVERY_PROCESS
        .iter()
        .chain(role.sections())
        .map(|s| section_env_prefix(s))
        .collect();
    let within = |key: &str| prefixes.iter().any(|p| key.starts_with(p.as_str()));
    let mut required = BTreeSet::new();
    if let Ok(defaults) = Table::try_from(Config::default()) {
        let mut local = Vec::new();
        local_only(&defaults, &mut Vec::new(), &mut local);
        required.extend(local.into_iter().filter(|k| within(k)));
    }
    for (key, example_values) in secret_keys() {
        if within(&key) && !example_values.is_empty() {
            required.insert(key);
        }
    }
    required
}

/// `COEXIST_SINKS_MONGO_` for `sinks.mongo`.
fn section_env_prefix(section: &str) -> String {
    let path: Vec<String> = section.split('.').map(String::from).collect();
    format!("{}_", runtime::config::env_name(&path))
}

/// Does this default name the local machine?
fn names_this_machine(value: &str) -> bool {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|local| value.contains(local))
}

fn local_only(table: &Table, path: &mut Vec<String>, out: &mut Vec<String>) {
    for (key, value) in table {
        path.push(key.clone());
        match value {
            Value::Table(inner) => local_only(inner, path, out),
            Value::String(s) if names_this_machine(s) => out.push(runtime::config::env_name(path)),
            _ => {}
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::{ProcessorName, SinkName};

    #[test]
    fn the_api_needs_its_stores_and_keys_and_not_the_kafka_password() {
        let api = required_keys(Role::Api);
        for key in [
            "COEXIST_KAFKA_BROKERS",
            "COEXIST_METRICS_LISTEN",
            "COEXIST_API_LISTEN",
            "COEXIST_API_JWT_KEYS",
            "COEXIST_API_OTP_PEPPER",
            "COEXIST_SEALING_KEYS",
            "COEXIST_SINKS_MONGO_URI",
            "COEXIST_SINKS_CLICKHOUSE_URL",
        ] {
            assert!(api.contains(key), "{key}: {api:?}");
        }
        // Empty in the example: SASL is off unless set.
        assert!(!api.contains("COEXIST_KAFKA_SASL_PASSWORD"));
        // Not the API's sections.
        assert!(!api.contains("COEXIST_INGEST_LISTEN"));
    }

    #[test]
    fn a_processor_needs_only_kafka_and_its_listener() {
        let router = required_keys(Role::Process {
            name: ProcessorName::Router,
        });
        let expected: BTreeSet<String> = ["COEXIST_KAFKA_BROKERS", "COEXIST_METRICS_LISTEN"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(router, expected);
    }

    #[test]
    fn the_whatsapp_sink_opens_sealed_tokens() {
        let sink = required_keys(Role::Sink {
            name: SinkName::Whatsapp,
        });
        assert!(sink.contains("COEXIST_SEALING_KEYS"), "{sink:?}");
        assert!(sink.contains("COEXIST_S3_SECRET_ACCESS_KEY"), "{sink:?}");
        assert!(!sink.contains("COEXIST_GRAPH_ACCESS_TOKEN"), "{sink:?}");
    }

    #[test]
    fn secrets_are_found_by_type() {
        let secrets = secret_keys();
        for key in [
            "COEXIST_MQTT_PASSWORD",
            "COEXIST_KAFKA_SASL_PASSWORD",
            "COEXIST_API_JWT_KEYS",
            "COEXIST_SEALING_KEYS",
            "COEXIST_INGEST_APP_SECRETS",
            "COEXIST_SINKS_MONGO_URI",
        ] {
            assert!(secrets.contains_key(key), "{key}");
        }
        assert!(!secrets.contains_key("COEXIST_MQTT_USERNAME"));
    }
}
