//! `coexist chaos --short` as CI runs it: every role in the traffic's path SIGKILLed
//! and restarted, MongoDB and ClickHouse restarted, under a steady stream; then every
//! store must hold every event exactly once.
//!
//! It restarts the shared stack's MongoDB and ClickHouse, so it lives in a test
//! binary of its own (cargo runs test binaries one after another).

use std::process::Command;

use serde_json::Value;

#[test]
fn every_store_holds_everything_once_after_every_role_and_store_was_hit() {
    let root = env!("CARGO_MANIFEST_DIR");
    let report_file =
        std::env::temp_dir().join(format!("coexist-chaos-{}.json", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_coexist"));
    command
        .current_dir(root)
        .args(["chaos", "--short", "--json"])
        .arg(&report_file);
    if std::env::var_os("COEXIST_CONFIG").is_none() {
        command.env("COEXIST_CONFIG", format!("{root}/coexist.example.toml"));
    }
    let output = command.output().expect("run coexist chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "coexist chaos failed:\n{stdout}\n{}",
        tail(&String::from_utf8_lossy(&output.stderr), 40)
    );

    let text = std::fs::read_to_string(&report_file).expect("the JSON report");
    let report: Value = serde_json::from_str(&text).expect("a JSON report");
    let faults: Vec<&str> = report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter_map(|f| f["fault"].as_str())
        .collect();
    for expected in [
        "SIGKILL ingest",
        "SIGKILL process-router",
        "SIGKILL process-status",
        "SIGKILL process-notifier",
        "SIGKILL sink-mongo",
        "SIGKILL sink-clickhouse",
        "SIGKILL sink-mqtt",
        "SIGKILL sink-whatsapp",
        "restart mongo",
        "restart clickhouse",
    ] {
        assert!(
            faults.contains(&expected),
            "{expected} missing from {faults:?}"
        );
    }
    let stores = report["stores"].as_array().expect("stores");
    assert_eq!(stores.len(), 10, "{stores:?}");
    for store in stores {
        let name = &store["store"];
        assert!(
            store["expected"].as_u64() > Some(0),
            "{name}: nothing expected"
        );
        assert_eq!(store["lost"], 0, "{name} lost: {store}");
        assert_eq!(store["duplicated"], 0, "{name} duplicated: {store}");
        assert_eq!(store["present"], store["expected"], "{name}: {store}");
    }
    assert!(report["items"].as_u64() > Some(300), "{report}");
    let _ = std::fs::remove_file(&report_file);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
