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

/// docker-compose.yml with YAML merge keys (`<<: *coexist-env`) applied.
fn compose() -> serde_yaml_ng::Value {
    let mut compose: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).unwrap();
    compose.apply_merge().unwrap();
    // Merges inside each service (environment: <<: [...]) too.
    if let Some(services) = compose["services"].as_mapping_mut() {
        for (_, service) in services.iter_mut() {
            service.apply_merge().unwrap();
            if let Some(env) = service.get_mut("environment") {
                env.apply_merge().unwrap();
            }
        }
    }
    compose
}

fn as_str(v: &serde_yaml_ng::Value) -> String {
    match v {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's environment as (name, value) pairs.
fn environment(service: &serde_yaml_ng::Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .map(|env| env.iter().map(|(k, v)| (as_str(k), as_str(v))).collect())
        .unwrap_or_default()
}

fn command(service: &serde_yaml_ng::Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .map(|c| c.iter().map(as_str).collect())
        .unwrap_or_default()
}

/// Every long-running role, from the clap definition of `coexist`'s subcommands:
/// each subcommand of [`coexist::roles::Role`], once per value of its argument.
fn role_subcommands() -> Vec<(Vec<String>, coexist::roles::Role)> {
    use clap::{FromArgMatches, Subcommand};
    let cli = coexist::roles::Role::augment_subcommands(clap::Command::new("coexist"));
    let mut roles = Vec::new();
    for sub in cli.get_subcommands() {
        let values: Vec<String> = sub
            .get_arguments()
            .flat_map(|a| a.get_possible_values())
            .map(|v| v.get_name().to_string())
            .collect();
        let argvs: Vec<Vec<String>> = if values.is_empty() {
            vec![vec![sub.get_name().to_string()]]
        } else {
            values
                .into_iter()
                .map(|v| vec![sub.get_name().to_string(), v])
                .collect()
        };
        for argv in argvs {
            let matches = cli
                .clone()
                .try_get_matches_from(std::iter::once("coexist".to_string()).chain(argv.clone()))
                .unwrap();
            roles.push((
                argv,
                coexist::roles::Role::from_arg_matches(&matches).unwrap(),
            ));
        }
    }
    roles
}

/// One `${VAR...}` in a compose value.
#[derive(Debug)]
struct Interpolation {
    var: String,
    /// `?` (required: compose refuses to start without it), `-` (a default), or none.
    operator: Option<char>,
    /// The default after `:-`, or the message after `:?`.
    rest: String,
}

/// The interpolations of a compose value, and the value with each replaced by
/// `§VAR§` (`$$` is a literal `$`).
fn interpolations(value: &str) -> (Vec<Interpolation>, String) {
    let mut found = Vec::new();
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("unclosed ${ in docker-compose.yml");
            let inner = &body[..end];
            let name_end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (var, spec) = inner.split_at(name_end);
            let spec = spec.strip_prefix(':').unwrap_or(spec);
            let operator = spec.chars().next();
            found.push(Interpolation {
                var: var.to_string(),
                operator,
                rest: spec.get(1..).unwrap_or_default().to_string(),
            });
            out.push_str(&format!("§{var}§"));
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (found, out)
}

/// Is `value` (interpolations replaced) free of literal secret material: made only
/// of interpolations, or a URL whose password is one.
fn only_interpolated(value: &str) -> bool {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.split('§').enumerate().all(|(i, part)| {
                if i % 2 == 0 {
                    part.is_empty()
                } else {
                    !part.is_empty()
                }
            })
    };
    if is_token(value) {
        return true;
    }
    if let Some((_, after_scheme)) = value.split_once("://")
        && let Some((userinfo, _)) = after_scheme.split_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        return is_token(password);
    }
    false
}

#[test]
fn docker_compose_sets_only_real_config_keys() {
    let compose = compose();
    let keys: HashSet<String> = Config::env_keys().into_iter().collect();
    let services = compose["services"].as_mapping().expect("services");
    let mut checked = 0;
    for (name, service) in services {
        for (key, _) in environment(service) {
            if key.starts_with("COEXIST_") {
                assert!(
                    keys.contains(&key),
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
}

#[test]
fn docker_compose_runs_every_role_with_the_keys_it_requires() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let roles = role_subcommands();
    assert!(roles.len() >= 11, "{roles:?}");
    let mut problems = Vec::new();
    for (argv, role) in roles {
        let name = role.name();
        let Some(service) = services.get(name.as_str()) else {
            problems.push(format!(
                "no service {name:?} runs `coexist {}`",
                argv.join(" ")
            ));
            continue;
        };
        if command(service) != argv {
            problems.push(format!(
                "{name}: command is {:?}, not {argv:?}",
                command(service)
            ));
        }
        let set: BTreeSet<String> = environment(service).into_iter().map(|(k, _)| k).collect();
        let missing: Vec<String> = coexist::deploy::required_keys(role)
            .difference(&set)
            .cloned()
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{name} does not set {missing:?}"));
        }
        // Runs anywhere, restarts, reports readiness, scales.
        let restart = service["restart"].as_str().unwrap_or("no");
        if !["always", "unless-stopped", "on-failure"].contains(&restart) {
            problems.push(format!("{name}: restart {restart:?}"));
        }
        let health = format!("{:?}", service["healthcheck"]["test"]);
        if !health.contains("/readyz") {
            problems.push(format!("{name}: no /readyz healthcheck"));
        }
        if !service["container_name"].is_null() || !service["ports"].is_null() {
            problems.push(format!(
                "{name}: a container_name or published port stops `--scale`"
            ));
        }
    }
    // The one-shot topic contract, and the simulator only in the demo profile.
    if !command(&services["topics"]).starts_with(&["topics".to_string(), "apply".to_string()]) {
        problems.push("no `topics` service runs `coexist topics apply`".into());
    }
    match services
        .iter()
        .find(|(_, s)| command(s).starts_with(&["simulate".to_string(), "serve".to_string()]))
    {
        None => problems.push("no service runs `coexist simulate serve`".into()),
        Some((_, simulate)) => {
            if simulate["profiles"] != serde_yaml_ng::to_value(["demo"]).unwrap() {
                problems.push("the simulator is not behind `profiles: [demo]`".into());
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn no_secret_in_docker_compose_has_a_literal_value() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let secrets = coexist::deploy::secret_keys();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, service) in services {
        let name = as_str(name);
        for (key, value) in environment(service) {
            let (found, replaced) = interpolations(&value);
            let is_coexist_secret = secrets.contains_key(&key);
            // Other products' secrets, by their documented names.
            let is_other_secret = !key.starts_with("COEXIST_")
                && ["PASSWORD", "SECRET", "COOKIE", "TOKEN"]
                    .iter()
                    .any(|w| key.contains(w));
            if !is_coexist_secret && !is_other_secret {
                continue;
            }
            checked += 1;
            // A required secret (the example has a dev value for it) must make compose
            // refuse to start without it; an optional one may default to empty.
            let required = secrets.get(&key).is_none_or(|example| !example.is_empty());
            for i in &found {
                let ok = i.operator == Some('?')
                    || (!required && i.operator == Some('-') && i.rest.is_empty());
                if !ok {
                    problems.push(format!(
                        "{name}: {key} uses ${{{}}} without :? ({i:?})",
                        i.var
                    ));
                }
            }
            if found.is_empty() {
                problems.push(format!("{name}: {key} has a literal value"));
                continue;
            }
            if is_coexist_secret {
                // What the role would load: every secret value under the key must be
                // an interpolation, however the value is shaped (a JSON list of keys,
                // a URI with a password).
                let config: Config = runtime::config::load(None, [(key.clone(), replaced.clone())])
                    .unwrap_or_else(|e| panic!("{name}: {key}={value} does not load: {e}"));
                let values = runtime::config::secrets_of(&config)
                    .remove(&key)
                    .unwrap_or_default();
                if values.is_empty() || !values.iter().all(|v| only_interpolated(v)) {
                    problems.push(format!("{name}: {key}={value} holds a literal secret"));
                }
            }
        }
    }
    assert!(checked > 10, "{checked}");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_secret_checks_catch_literals() {
    let (found, replaced) = interpolations("mongodb://u:${PW:?set it}@mongo/x");
    assert_eq!(found.len(), 1);
    assert!(only_interpolated(&replaced));
    let (_, literal) = interpolations("mongodb://u:hunter2@${HOST:?}/x");
    assert!(!only_interpolated(&literal));
    let (_, json) = interpolations(r#"[{"id":"k1","key":"${SEALING_KEY:?}"}]"#);
    let config: Config =
        runtime::config::load(None, [("COEXIST_SEALING_KEYS".into(), json)]).unwrap();
    let values = runtime::config::secrets_of(&config)["COEXIST_SEALING_KEYS"].clone();
    assert!(values.iter().all(|v| only_interpolated(v)), "{values:?}");
    let literal: Config = runtime::config::load(
        None,
        [(
            "COEXIST_SEALING_KEYS".into(),
            r#"[{"id":"k1","key":"abc"}]"#.into(),
        )],
    )
    .unwrap();
    let values = runtime::config::secrets_of(&literal)["COEXIST_SEALING_KEYS"].clone();
    assert!(!values.iter().all(|v| only_interpolated(v)));
    assert!(!only_interpolated("§A§x"));
}

#[test]
fn every_required_compose_variable_is_in_the_env_example() {
    let example = read("deploy/.env.example");
    let documented: BTreeSet<String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    let (found, _) = interpolations(&read("docker-compose.yml"));
    let missing: BTreeSet<String> = found
        .into_iter()
        .filter(|i| i.operator == Some('?'))
        .map(|i| i.var)
        .filter(|v| !documented.contains(v))
        .collect();
    assert!(missing.is_empty(), "deploy/.env.example lacks {missing:?}");
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

#[test]
fn emqx_asks_the_apis_hooks_on_its_internal_listener() {
    let compose = compose();
    let api = &compose["services"]["api"];
    let env: std::collections::HashMap<String, String> = environment(api).into_iter().collect();
    assert_eq!(env["COEXIST_API_MQTT_BROKER"], "emqx");
    let hooks_port = env["COEXIST_API_HOOKS_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let public_port = env["COEXIST_API_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(
        hooks_port, public_port,
        "the hooks share the public listener"
    );
    assert!(api["ports"].is_null(), "the api publishes ports");
    let conf = read("deploy/emqx/emqx.conf");
    for path in [api::emqx::AUTHN_PATH, api::emqx::AUTHZ_PATH] {
        assert!(
            conf.contains(&format!("url = \"http://api:{hooks_port}{path}\"")),
            "emqx.conf does not call {path} on api:{hooks_port}"
        );
    }
    // EMQX's body templates carry what the hooks read.
    for placeholder in [
        "${username}",
        "${password}",
        "${clientid}",
        "${topic}",
        "${action}",
    ] {
        assert!(conf.contains(placeholder), "{placeholder}");
    }
    assert!(conf.contains("no_match = deny"));
    let emqx_ports = format!("{:?}", compose["services"]["emqx"]["ports"]);
    assert!(emqx_ports.contains("8883:8883") && emqx_ports.contains("8084:8084"));
    assert!(
        !emqx_ports.contains("\"1883:1883\""),
        "plain MQTT published"
    );
}

#[test]
fn grafana_reads_as_the_read_only_user_without_pasting_text_into_sql() {
    let dashboard = read("dashboards/grafana/coexist.json");
    // No variable pasted into a SQL string literal as typed: the only `'${` is the
    // percent-encoded one inside decodeURLComponent.
    for (at, _) in dashboard.match_indices("'${") {
        assert!(
            dashboard[..at].ends_with("decodeURLComponent("),
            "a dashboard variable is pasted into a SQL string literal: {}",
            &dashboard[at.saturating_sub(40)..at + 20]
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let sql = target["rawSql"].as_str().unwrap();
            // Every variable is percent-encoded into decodeURLComponent('...').
            for (at, _) in sql.match_indices("${") {
                assert!(
                    sql[..at].ends_with("decodeURLComponent('")
                        && sql[at..]
                            .split('}')
                            .next()
                            .unwrap()
                            .ends_with(":percentencode"),
                    "{}: a variable outside decodeURLComponent('${{x:percentencode}}')",
                    panel["title"]
                );
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_ne!(variable["type"], "textbox", "{}", variable["name"]);
        assert!(
            variable["regex"]
                .as_str()
                .is_some_and(|r| r.starts_with("/^"))
        );
    }
    // Grafana and the API query as the read-only user, whose profile cannot write.
    let reader = read("deploy/clickhouse/users.d/coexist-reader.xml");
    assert!(reader.contains("<coexist_reader>") && reader.contains("<readonly>2</readonly>"));
    let datasource = read("deploy/grafana/provisioning/datasources/clickhouse.yaml");
    assert!(datasource.contains("username: coexist_reader"));
    let compose = compose();
    let api: std::collections::HashMap<String, String> = environment(&compose["services"]["api"])
        .into_iter()
        .collect();
    assert_eq!(api["COEXIST_SINKS_CLICKHOUSE_USER"], "coexist_reader");
    for console in ["grafana", "emqx", "minio"] {
        for port in compose["services"][console]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let port = as_str(port);
            let console_port = ["3000", "18083", "9001"]
                .iter()
                .any(|p| port.ends_with(&format!(":{p}")));
            assert!(
                !console_port || port.starts_with("127.0.0.1:"),
                "{console} publishes {port} beyond loopback"
            );
        }
    }
}

#[test]
fn topics_fit_a_cluster_and_tables_survive_their_readers() {
    let contract = coexist::topics::contract().unwrap();
    let place = |env: &str| {
        contract
            .placement(&coexist::config::TopicsConfig {
                env: env.into(),
                ..Default::default()
            })
            .unwrap()
    };
    let production = place("production");
    assert!(production.replication_factor >= 3, "{production:?}");
    assert!(
        production.min_insync_replicas >= 2
            && production.min_insync_replicas < production.replication_factor,
        "{production:?}"
    );
    let development = place("development");
    assert_eq!(
        (
            development.replication_factor,
            development.min_insync_replicas
        ),
        (1, 1)
    );
    // A config override of the replication factor wins.
    let overridden = contract
        .placement(&coexist::config::TopicsConfig {
            env: "production".into(),
            replication_factor: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(overridden.replication_factor, 5);
    // Topics read whole as tables lose nothing a rebuild needs: compacted on a key per
    // entity, or never deleted.
    for name in [
        events::topics::AGENTS_PRESENCE,
        events::topics::DIRECTORY_CHANGES,
    ] {
        let spec = contract.topics.iter().find(|t| t.name == name).unwrap();
        assert!(
            spec.retention_hours < 0,
            "{name} is read whole but deleted after {} h",
            spec.retention_hours
        );
    }
    let presence = contract
        .topics
        .iter()
        .find(|t| t.name == events::topics::AGENTS_PRESENCE)
        .unwrap();
    assert_eq!(presence.cleanup_policy, "compact");
    assert_eq!(presence.key, "org/agent_id/device_id");
}

/// The schemas consumers have now: `main`'s (or `SCHEMA_BASE`'s) as committed, or the
/// working tree's when git cannot say.
fn published_schema(file: &str) -> Option<serde_json::Value> {
    let base = std::env::var("SCHEMA_BASE").unwrap_or_else(|_| "main".into());
    let from_git = std::process::Command::new("git")
        .args(["show", &format!("{base}:{file}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout);
    let text = match from_git {
        Some(bytes) => String::from_utf8(bytes).ok()?,
        None => std::fs::read_to_string(repo(file)).ok()?,
    };
    serde_json::from_str(&text).ok()
}

#[test]
fn schema_changes_keep_consumers_reading_under_composes_compatibility_level() {
    let compose = compose();
    let level_name = as_str(
        &compose["services"]["schema-registry"]["environment"]["SCHEMA_REGISTRY_SCHEMA_COMPATIBILITY_LEVEL"],
    );
    let level = events::compat::Level::parse(&level_name).expect("a registry level");
    assert_eq!(level, events::compat::Level::Forward);
    let mut problems = Vec::new();
    for (topic, generated) in events::schema::topic_value_schemas() {
        // Every schema states its open-content policy.
        assert!(
            generated.get("additionalProperties").is_some(),
            "{topic}: no additionalProperties"
        );
        let file = format!("schemas/{}", events::schema::schema_file_name(topic));
        for (label, published) in [
            ("committed", published_schema(&file)),
            (
                "working tree",
                std::fs::read_to_string(repo(&file))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok()),
            ),
        ] {
            let Some(published) = published else { continue };
            for p in events::compat::check(&published, &generated, level) {
                problems.push(format!("{topic} ({label}): {p}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "schema changes that break consumers under {level_name}: {problems:#?}"
    );
}
