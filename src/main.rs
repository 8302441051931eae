//! `coexist`: one binary, a subcommand per role.

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coexist::Config;
use coexist::roles;
use coexist::topics::Outcome;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "coexist",
    version,
    about = "A shared WhatsApp Business inbox on Kafka"
)]
struct Cli {
    /// Config file (TOML). Every key can also be set as COEXIST_<SECTION>_<KEY>.
    #[arg(long, short, global = true, env = "COEXIST_CONFIG")]
    config: Option<PathBuf>,
    /// Where a role serves /metrics, /healthz and /readyz (overrides [metrics] listen;
    /// "" serves nothing). Role processes on one machine need one port each.
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every role in one process: ingest, sinks, api.
    All,
    #[command(flatten)]
    Role(roles::Role),
    /// The topic contract (topics.yaml).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Re-run raw webhooks through normalization: how a parser fix reaches old data.
    /// Events keep their ids, so sinks update rather than duplicate.
    Replay {
        /// Replay what arrived in the last DURATION (e.g. 2h, 7days).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// From this time, in ms since the epoch.
        #[arg(long, conflicts_with = "since")]
        from_ms: Option<i64>,
        /// Up to this time, in ms since the epoch (default: everything there now).
        #[arg(long)]
        to_ms: Option<i64>,
        /// From this offset in every partition.
        #[arg(long, conflicts_with_all = ["since", "from_ms"])]
        from_offset: Option<i64>,
    },
    /// Benchmarks, each against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Play Meta's and Expo's side: signed webhooks in, Graph API and Expo out.
    Simulate {
        #[command(subcommand)]
        command: SimulateCommand,
    },
    /// Faults under load: SIGKILL and restart every role in the traffic's path and
    /// restart MongoDB and ClickHouse under a steady stream, then count what each
    /// store lost or holds twice. Exits non-zero unless both are 0 everywhere.
    Chaos(coexist::chaos::ChaosArgs),
    /// What agents' apps receive over MQTT, one readable line per message.
    Watch(coexist::watch::WatchArgs),
    /// Administration of a deployment.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the effective configuration (secrets redacted) or the env variables.
    Config {
        /// List every COEXIST_* variable instead.
        #[arg(long)]
        env: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Signed webhooks over HTTP vs. raw rdkafka produce of the same payloads.
    Ingest(coexist::bench::IngestArgs),
    /// Status events through the status processor vs. raw consume of the same records.
    Status(coexist::bench::processors::ProcessorArgs),
    /// Messages and commands through the router vs. raw consume of the same records.
    Router(coexist::bench::processors::ProcessorArgs),
    /// Assignments and messages through the notifier vs. raw consume of the same records.
    Notifier(coexist::bench::processors::ProcessorArgs),
    /// The heaviest dashboard panel over 10 million status rows vs. count() of them.
    Analytics(coexist::bench::analytics::AnalyticsArgs),
    /// Signed webhooks at a steady rate, timed until they arrive over MQTT, vs.
    /// rdkafka produce → consume of the same payloads at the same rate.
    E2e(coexist::bench::e2e::E2eArgs),
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// Customers writing in: signed inbound text webhooks at a steady rate.
    Inbound(coexist::simulate::InboundArgs),
    /// Answer as Meta's Graph API and Expo's push service on one port.
    Serve(coexist::simulate::ServeArgs),
    /// A realistic week of one org's traffic, straight onto the topics the sinks read.
    Scenario(coexist::simulate::scenario::ScenarioArgs),
    /// Agents' apps: online over MQTT, each answering the customer messages that
    /// reach its inbox with a send command.
    Agents(coexist::simulate::agents::AgentsArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an org and its first admin (directory changes on Kafka, written by the
    /// mongo sink), so someone can log in. Idempotent.
    Bootstrap(coexist::admin::BootstrapArgs),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create missing topics and report drift; exits non-zero on drift.
    Apply {
        /// Which of topics.yaml's environments places them (replication factor,
        /// min.insync.replicas); default [topics] env.
        #[arg(long)]
        env: Option<String>,
    },
    /// Write the JSON Schemas of every topic's value into DIR.
    Schemas {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(listen) = cli.metrics_listen {
        config.metrics.listen = listen;
    }
    init_tracing(&config);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::All => observed(config, roles::all).await,
        Command::Role(role) => {
            observed(config, |c, s| async move { roles::run(role, &c, s).await }).await
        }
        Command::Topics {
            command: TopicsCommand::Apply { env },
        } => {
            let mut config = config;
            if let Some(env) = env {
                config.topics.env = env;
            }
            let outcomes = roles::apply_topics(&config).await?;
            let mut drifted = 0;
            for (topic, outcome) in outcomes {
                match outcome {
                    Outcome::Created => println!("created  {topic}"),
                    Outcome::Matches => println!("ok       {topic}"),
                    Outcome::Drift(diffs) => {
                        drifted += 1;
                        println!("DRIFT    {topic}: {}", diffs.join("; "));
                    }
                }
            }
            anyhow::ensure!(drifted == 0, "{drifted} topic(s) differ from topics.yaml");
            Ok(())
        }
        Command::Topics {
            command: TopicsCommand::Schemas { out },
        } => {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for (topic, schema) in events::schema::topic_value_schemas() {
                let path = out.join(events::schema::schema_file_name(topic));
                std::fs::write(&path, events::schema::render(&schema))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Replay {
            since,
            from_ms,
            to_ms,
            from_offset,
        } => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            let from_ms = from_ms.or(since.map(|d| now_ms - d.as_millis() as i64));
            let range = ingest::replay::Range {
                from_ms,
                to_ms,
                from_offset,
            };
            let plan = ingest::replay::plan(&config.kafka, &range)?;
            let total: u64 = plan.iter().map(ingest::replay::Span::estimated_len).sum();
            println!(
                "replaying about {total} raw webhooks from {} partitions",
                plan.len()
            );
            let publisher = config.kafka.publisher("replay").await?;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "[{bar:40}] {pos}/{len} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            // Who owns each number now: the directory read whole, over the seed.
            let (directory, follower) = runtime::directory::follow(
                &config.kafka,
                Vec::new(),
                "replay-directory",
                tokio_util::sync::CancellationToken::new(),
            )
            .await?;
            follower.abort();
            let sealer = runtime::seal::Sealer::from_config(&config.sealing)?;
            let orgs = ingest::owners::Owners::build(&directory.get(), &sealer, &config.ingest);
            let summary =
                ingest::replay::run(&config.kafka, &publisher, &orgs, &plan, |done, _| {
                    bar.set_position(done)
                })
                .await?;
            publisher.flush(std::time::Duration::from_secs(10));
            bar.finish();
            println!(
                "replayed {} webhooks: {} events, {} changes rejected, {} unreadable bodies dead-lettered",
                summary.records, summary.events, summary.rejected, summary.dead_lettered
            );
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Ingest(args),
        } => {
            let report = coexist::bench::ingest(config, args).await?;
            print!("{}", coexist::bench::report(&report));
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Status(args),
        } => processor_bench(config, coexist::bench::processors::Processor::Status, args).await,
        Command::Bench {
            command: BenchCommand::Router(args),
        } => processor_bench(config, coexist::bench::processors::Processor::Router, args).await,
        Command::Bench {
            command: BenchCommand::Notifier(args),
        } => {
            processor_bench(
                config,
                coexist::bench::processors::Processor::Notifier,
                args,
            )
            .await
        }
        Command::Bench {
            command: BenchCommand::Analytics(args),
        } => {
            let report = coexist::bench::analytics::run(config, args).await?;
            print!("{}", coexist::bench::analytics::report(&report));
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::E2e(args),
        } => {
            let (report, path) = coexist::bench::e2e::run(config, args).await?;
            print!("{}", coexist::bench::e2e::render(&report, &path));
            Ok(())
        }
        Command::Simulate {
            command: SimulateCommand::Inbound(args),
        } => coexist::simulate::inbound(&config, args, runtime::shutdown::on_signals()).await,
        Command::Simulate {
            command: SimulateCommand::Serve(args),
        } => coexist::simulate::serve(&config, args, runtime::shutdown::on_signals()).await,
        Command::Simulate {
            command: SimulateCommand::Scenario(args),
        } => coexist::simulate::scenario::run(&config, args).await,
        Command::Simulate {
            command: SimulateCommand::Agents(args),
        } => coexist::simulate::agents::run(&config, args, runtime::shutdown::on_signals()).await,
        Command::Watch(args) => {
            coexist::watch::run(&config, args, runtime::shutdown::on_signals()).await
        }
        Command::Chaos(args) => {
            let report = coexist::chaos::run(&config, args).await?;
            print!("{}", report.table());
            anyhow::ensure!(
                report.clean(),
                "chaos run {} lost or duplicated data",
                report.run
            );
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::Bootstrap(args),
        } => coexist::admin::bootstrap(&config, &args).await,
        Command::Config { env: true } => {
            Config::env_keys().iter().for_each(|k| println!("{k}"));
            Ok(())
        }
        Command::Config { env: false } => {
            println!("{config:#?}");
            Ok(())
        }
    }
}

/// Runs a role with the process's one metrics and health listener beside it. The
/// listener binds before the role starts, so a taken port fails the start loudly
/// rather than leaving a role nobody can scrape.
async fn observed<F, Fut>(config: Config, role: F) -> anyhow::Result<()>
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = runtime::shutdown::on_signals();
    let listener = runtime::observe::serve(&config.metrics.listen, shutdown.clone()).await?;
    let result = role(config, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(listener) = listener {
        let _ = listener.await;
    }
    result
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one processor bench and prints it next to its raw-consume baseline.
async fn processor_bench(
    config: Config,
    processor: coexist::bench::processors::Processor,
    args: coexist::bench::processors::ProcessorArgs,
) -> anyhow::Result<()> {
    let (raw, work) = coexist::bench::processors::run(config, processor, args).await?;
    let name = format!("{processor:?}").to_lowercase();
    println!(
        "raw consume              {:>7} in {:>6.2} s = {:>8.0} events/s",
        raw.count,
        raw.seconds,
        raw.per_second()
    );
    println!(
        "{:<24} {:>7} in {:>6.2} s = {:>8.0} events/s",
        format!("{name} processor"),
        work.count,
        work.seconds,
        work.per_second()
    );
    println!(
        "processor / raw consume: {:.0}%",
        100.0 * work.per_second() / raw.per_second()
    );
    Ok(())
}
