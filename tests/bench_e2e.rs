//! `coexist bench e2e` as a user runs it, briefly and slowly: the binary starts its
//! own `coexist all`, sends signed webhooks, times them to MQTT, runs the rdkafka
//! baseline, and writes its result file. Not a performance check (debug build, a
//! busy machine): a check that the bench counts right, so its figures can be trusted.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn the_e2e_bench_receives_every_message_exactly_once_and_writes_its_result() {
    let dir = std::env::temp_dir().join(format!("coexist-bench-e2e-{}", support::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("e2e.json");
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coexist"))
        .args([
            "bench",
            "e2e",
            "--rate",
            "40",
            "--seconds",
            "2",
            "--numbers",
            "2",
        ])
        .args(["--drain-seconds", "10", "--idle-seconds", "2", "--json"])
        .arg(&json)
        .env("COEXIST_LOG_LEVEL", "warn")
        .output()
        .expect("run coexist bench e2e");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = std::fs::read_to_string(json.with_extension("log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}\n--- pipeline log ---\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap())
        .expect("the result file is JSON");
    for phase in ["e2e", "baseline"] {
        let p = &report[phase];
        assert_eq!(p["sent"], 80, "{phase}: {p}");
        assert_eq!(p["accepted"], 80, "{phase}: {p}");
        assert_eq!(p["received"], 80, "{phase}: every message arrived: {p}");
        assert_eq!(p["duplicates"], 0, "{phase}: and only once: {p}");
        assert_eq!(p["lost"], 0, "{phase}: {p}");
        let latency = &p["latency"];
        assert_eq!(latency["count"], 80);
        let (p50, p99) = (latency["p50_ms"].as_f64(), latency["p99_ms"].as_f64());
        assert!(p50.is_some_and(|p50| p50 > 0.0) && p50 <= p99, "{latency}");
    }
    // One p99 per second of the schedule (40 a second for 2 s), none above the max.
    let by_second = report["e2e"]["p99_by_second_ms"]
        .as_array()
        .expect("p99 by second");
    let max = report["e2e"]["latency"]["max_ms"].as_f64().unwrap();
    assert_eq!(by_second.len(), 2, "{by_second:?}");
    assert!(
        by_second
            .iter()
            .all(|ms| ms.as_f64().is_some_and(|ms| ms > 0.0 && ms <= max)),
        "{by_second:?} against max {max}"
    );
    assert_eq!(report["params"]["rate"], 40.0);
    // What a later commit is compared on: CPU at rest, memory, the stage breakdown.
    let idle = &report["idle"];
    assert!(idle["coexist_cpu_pct"].as_f64().is_some(), "{idle}");
    assert!(
        idle["broker_pid"].as_u64().is_some(),
        "the local broker is found: {idle}"
    );
    // Under load: every process of the pipeline, the broker, the bench and the
    // machine did some work, and no process more than the machine.
    let busy = &report["busy"];
    let machine = busy["machine_cpu_pct"].as_f64().expect("machine CPU");
    for who in ["coexist_cpu_pct", "broker_cpu_pct", "bench_cpu_pct"] {
        let pct = busy[who]
            .as_f64()
            .unwrap_or_else(|| panic!("{who} in {busy}"));
        assert!(pct > 0.0 && pct <= machine + 1.0, "{who}: {busy}");
    }
    // The local stores are found by their ports and measured; MongoDB wrote every
    // message.
    let stores = busy["stores_cpu_pct"].as_object().expect("stores");
    for store in ["mongodb", "clickhouse", "mqtt"] {
        let pct = stores
            .get(store)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{store} in {busy}"));
        assert!(pct >= 0.0 && pct <= machine + 1.0, "{store}: {busy}");
    }
    assert!(stores["mongodb"].as_f64() > Some(0.0), "{busy}");
    assert!(report["rss_kib_at_rest"].as_u64().is_some_and(|k| k > 1024));
    assert!(report["rss_kib_after"].as_u64().is_some_and(|k| k > 1024));
    let stages = report["stages"].as_array().expect("stages");
    for stage in [
        "received_produced",
        "produced_consumed",
        "consumed_published",
        "received_published",
    ] {
        let s = stages
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("stage {stage} in {stages:?}"));
        // Every message of the run passed each stage once (probes came before the
        // first scrape).
        assert_eq!(s["count"], 80, "{s}");
    }
    assert!(report["ratios"]["steady_p99"].as_f64().is_some());
    assert!(report["started_at_unix"].as_u64().is_some());
    assert!(stdout.contains("webhook → mqtt"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        started.elapsed() < Duration::from_secs(75),
        "the smoke run took {:?}",
        started.elapsed()
    );
}
