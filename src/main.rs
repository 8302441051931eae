//! `coexist`: one binary, a subcommand per role.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coexist::Config;
use coexist::roles::{self, SinkName};
use coexist::topics::Outcome;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every role in one process: ingest, sinks, api.
    All,
    /// The webhook receiver.
    Ingest,
    /// A processor (router, status, notifier).
    Process { name: String },
    /// A sink.
    Sink { name: SinkName },
    /// The REST API.
    Api,
    /// The topic contract (topics.yaml).
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Play Meta's side: send signed webhooks to the receiver.
    Simulate {
        #[command(subcommand)]
        command: SimulateCommand,
    },
    /// Print the effective configuration (secrets redacted) or the env variables.
    Config {
        /// List every COEXIST_* variable instead.
        #[arg(long)]
        env: bool,
    },
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// Customers writing in: signed inbound text webhooks at a steady rate.
    Inbound(coexist::simulate::InboundArgs),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create missing topics and report drift; exits non-zero on drift.
    Apply,
    /// Write the JSON Schemas of every topic's value into DIR.
    Schemas {
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    init_tracing(&config);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::All => roles::all(config, runtime::shutdown::on_signals()).await,
        Command::Ingest => roles::ingest(&config, runtime::shutdown::on_signals()).await,
        Command::Sink { name } => roles::sink(&config, name, runtime::shutdown::on_signals()).await,
        Command::Api => roles::api(&config, runtime::shutdown::on_signals()).await,
        Command::Process { name } => {
            anyhow::bail!(
                "processor `{name}` is not built yet; processors are {:?} (see the Processors issue)",
                processors::NAMES
            )
        }
        Command::Topics {
            command: TopicsCommand::Apply,
        } => {
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
        Command::Simulate {
            command: SimulateCommand::Inbound(args),
        } => coexist::simulate::inbound(&config, args, runtime::shutdown::on_signals()).await,
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
