//! The `kafki` command: one binary for the broker, the benchmarks and the
//! operator tools. This file only parses arguments and dispatches.
//!
//! Exit codes: 0 done, 1 failed (for the Kafka-wire tools: a broker's Kafka error, named
//! on stderr), 2 bad usage (see `kafka_tool`).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod cluster;
mod consume;
mod dump;
mod groups;
mod kafka_tool;
mod layout;
mod produce;
mod record_format;
mod timestamp;
mod topics;

#[derive(Debug, Parser)]
#[command(
    name = "kafki",
    version,
    about = "Kafki: a Kafka-compatible streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (defaults: 127.0.0.1:9092, ./kafki-data, all online CPUs).
    Serve(kafki_broker::config::ServeArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// Read segment files offline: batches, records, indexes, checkpoints, damage.
    Dump(dump::DumpArgs),
    /// Show CPU/NUMA/NIC-IRQ layout and a broker's shards, with placement advice.
    Layout(layout::LayoutArgs),
    /// Topic admin on any Kafka broker: create, list, describe, delete, alter-config.
    Topics {
        #[command(subcommand)]
        topics: topics::TopicsCommand,
    },
    /// Console producer: stdin lines to records.
    Produce(produce::ProduceArgs),
    /// Console consumer: records to stdout, in a kcat-like format, optionally in a group.
    Consume(consume::ConsumeArgs),
    /// A cluster's nodes, their state, the active controller and the metadata quorum.
    Cluster(cluster::ClusterArgs),
    /// Consumer-group admin: list, describe (members, lag), reset-offsets.
    Groups {
        #[command(subcommand)]
        groups: groups::GroupsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Append record batches to a partition log directly (no network) and
    /// report throughput, fsyncs and append latency as one JSON line.
    Storage(kafki_bench::storage::StorageBenchArgs),
    /// Produce to any Kafka broker at max or fixed rate; latency per record
    /// from hand-over to acknowledgement.
    Produce(kafki_bench::produce::ProduceBenchArgs),
    /// Consume a topic from the beginning; latency per fetch.
    Consume(kafki_bench::consume::ConsumeBenchArgs),
    /// Fixed-rate producers and consumers; latency per record from its
    /// intended send time to consumption (corrected for coordinated omission).
    E2e(kafki_bench::e2e::E2eBenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench { bench } => run_bench(bench),
        Command::Dump(args) => dump::run(&args),
        Command::Layout(args) => layout::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Topics { topics } => return kafka_tool_exit("topics", topics::run(topics)),
        Command::Produce(args) => return kafka_tool_exit("produce", produce::run(args)),
        Command::Consume(args) => return kafka_tool_exit("consume", consume::run(args)),
        Command::Groups { groups } => return kafka_tool_exit("groups", groups::run(groups)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kafki: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a Kafka-wire tool (see `kafka_tool` for what each means).
fn kafka_tool_exit(tool: &str, outcome: Result<(), kafka_tool::ToolError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kafki {tool}: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn serve(args: kafki_broker::config::ServeArgs) -> anyhow::Result<()> {
    let config = kafki_broker::config::BrokerConfig::from_args(&args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    kafki_broker::server::run(config, stop)
}

fn run_bench(bench: BenchCommand) -> anyhow::Result<()> {
    // The Kafka-wire benchmarks print their summary and write their own files; a run
    // with failed records exits non-zero after reporting.
    let report = match bench {
        BenchCommand::Storage(args) => {
            let report = kafki_bench::storage::run(args)?;
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        BenchCommand::Produce(args) => kafki_bench::produce::run(args)?,
        BenchCommand::Consume(args) => kafki_bench::consume::run(args)?,
        BenchCommand::E2e(args) => kafki_bench::e2e::run(args)?,
    };
    if report.errors > 0 {
        anyhow::bail!(
            "{} errors during the run (first: {})",
            report.errors,
            report.first_error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}
