//! The contracts that live in files: topics.yaml against the code, the checked-in
//! schemas against the types, the example config and docker-compose against the
//! config keys, and .ci/run against the README. Pure file checks, no servers.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use coexist::Config;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn topics_yaml_names_exactly_the_topics_of_the_code() {
    let contract = coexist::topics::contract().unwrap();
    let names: Vec<&str> = contract.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, events::topics::ALL);
    for topic in &contract.topics {
        assert!(topic.partitions > 0, "{}", topic.name);
        assert!(
            ["delete", "compact"].contains(&topic.cleanup_policy.as_str()),
            "{}",
            topic.name
        );
        assert!(
            !topic.description.is_empty() && !topic.writers.is_empty(),
            "{}",
            topic.name
        );
    }
    // Conversation topics are keyed by the business number (DESIGN.md).
    for name in [
        events::topics::WHATSAPP_EVENTS,
        events::topics::CONVERSATION_COMMANDS,
        events::topics::CONVERSATION_ASSIGNMENTS,
    ] {
        let spec = contract.topics.iter().find(|t| t.name == name).unwrap();
        assert_eq!(spec.key, "phone_number_id", "{name}");
    }
}

#[test]
fn every_schema_in_topics_yaml_is_generated_and_up_to_date() {
    let generated: Vec<(&str, serde_json::Value)> = events::schema::topic_value_schemas();
    let contract = coexist::topics::contract().unwrap();
    for topic in &contract.topics {
        match generated.iter().find(|(name, _)| *name == topic.name) {
            Some((name, schema)) => {
                let file = format!("schemas/{}", events::schema::schema_file_name(name));
                assert_eq!(
                    topic.schema, file,
                    "{name}: topics.yaml names another schema file"
                );
                assert!(
                    read(&file) == events::schema::render(schema),
                    "{file} is stale: run `cargo run -- topics schemas` and commit the result"
                );
            }
            None => assert_eq!(
                topic.schema, "none",
                "{}: no type generates its schema",
                topic.name
            ),
        }
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("schemas"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = generated
        .iter()
        .map(|(n, _)| events::schema::schema_file_name(n))
        .collect();
    assert_eq!(
        on_disk, expected,
        "schemas/ holds files no topic uses, or lacks some"
    );
}

/// Leaf paths of a TOML table, as env names.
fn env_names(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let name = format!("{prefix}_{}", key.to_ascii_uppercase());
        match value {
            toml::Value::Table(inner) => env_names(inner, &name, out),
            _ => {
                out.insert(name);
            }
        }
    }
}

#[test]
fn the_example_config_loads_and_documents_every_key() {
    let path = repo("coexist.example.toml");
    let config: Config = runtime::config::load(Some(&path), std::iter::empty()).unwrap();
    assert!(!config.ingest.app_secrets.is_empty());
    let table: toml::Table = toml::from_str(&read("coexist.example.toml")).unwrap();
    let mut documented = BTreeSet::new();
    env_names(&table, "COEXIST", &mut documented);
    let keys: BTreeSet<String> = Config::env_keys().into_iter().collect();
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from coexist.example.toml: {missing:?}"
    );
}

#[test]
fn docker_compose_sets_only_real_config_keys() {
    let compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).unwrap();
    let keys: HashSet<String> = Config::env_keys().into_iter().collect();
    let services = compose["services"].as_mapping().expect("services");
    let mut checked = 0;
    for (name, service) in services {
        let Some(env) = service["environment"].as_mapping() else {
            continue;
        };
        for (key, _) in env {
            let key = key.as_str().unwrap_or_default();
            if key.starts_with("COEXIST_") {
                assert!(
                    keys.contains(key),
                    "docker-compose service {name:?} sets unknown key {key}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 10,
        "expected the coexist services to be configured through COEXIST_* keys"
    );
    for role in [
        "ingest",
        "sink-mongo",
        "sink-clickhouse",
        "sink-mqtt",
        "api",
        "topics",
    ] {
        assert!(
            services.contains_key(role),
            "docker-compose lacks the {role} service"
        );
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let readme = read("README.md");
    let test_command = readme
        .lines()
        .find(|l| l.trim_start().starts_with("scripts/test"))
        .expect("README names the test command")
        .split('#')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let ci = read(".ci/run");
    let commands: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("set "))
        .collect();
    assert_eq!(
        commands.last().copied(),
        Some(format!("exec {test_command}").as_str()),
        ".ci/run: {commands:?}"
    );
}
