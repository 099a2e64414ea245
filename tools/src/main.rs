//! The `kafki` command: one binary for the broker, the benchmarks and the
//! operator tools. This file only parses arguments and dispatches.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod dump;
mod layout;

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
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Append record batches to a partition log directly (no network) and
    /// report throughput, fsyncs and append latency as one JSON line.
    Storage(kafki_bench::storage::StorageBenchArgs),
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
        Command::Bench {
            bench: BenchCommand::Storage(args),
        } => run_storage_bench(args),
        Command::Dump(args) => dump::run(&args),
        Command::Layout(args) => layout::run(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kafki: {error:#}");
            ExitCode::FAILURE
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

fn run_storage_bench(args: kafki_bench::storage::StorageBenchArgs) -> anyhow::Result<()> {
    let report = kafki_bench::storage::run(args)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
