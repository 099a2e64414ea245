//! `kafki bench storage`: appends valid record batches to one partition log
//! as fast as the chosen sync mode allows and reports throughput, fsyncs and
//! append latency (append call → the stage the mode waits for).
//!
//! * `none`: no fsync while running (policy `Never`); an append is done when
//!   *written* (handed to the device with `O_DIRECT`). `--depth` appends in flight.
//! * `group`: every append waits until *durable*; `--depth` appends in flight
//!   share `fdatasync`s (group commit).
//! * `each`: one append at a time, each waiting for its own `fdatasync`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kafki_storage::{batch, LogConfig, PartitionLog, SyncPolicy};
use serde::Serialize;

/// How appends wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    None,
    Each,
    Group,
}

/// Options of `kafki bench storage`.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageBenchArgs {
    /// Directory for the benchmark's partition log (a real filesystem, not tmpfs).
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes to append in total.
    #[arg(long, default_value_t = 1 << 30)]
    pub total_bytes: u64,
    /// Size of each record batch.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// Size of each record's value inside a batch.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    #[arg(long, value_enum, default_value_t = SyncMode::None)]
    pub sync: SyncMode,
    /// Appends in flight at once (`each` always uses 1).
    #[arg(long, default_value_t = 64)]
    pub depth: usize,
    /// Largest single write the log submits.
    #[arg(long, default_value_t = 1 << 20)]
    pub write_chunk_bytes: usize,
    /// Writes the log keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub write_depth: usize,
    /// Appended but unwritten bytes the log buffers before appends wait.
    #[arg(long, default_value_t = 64 << 20)]
    pub write_buffer_bytes: u64,
    /// Pin the benchmark's executor to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Keep the log directory afterwards (it is deleted by default).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The single-line JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct StorageBenchReport {
    pub sync: SyncMode,
    pub batch_bytes: usize,
    pub depth: usize,
    pub bytes: u64,
    pub batches: u64,
    pub seconds: f64,
    pub mib_per_s: f64,
    pub fsyncs: u64,
    pub writes: u64,
    pub append_latency_us: LatencySummary,
}

/// A valid batch of about `batch_bytes` with values of `record_bytes`.
fn make_batch(batch_bytes: usize, record_bytes: usize) -> Bytes {
    // A record costs its value plus up to 12 bytes of varints.
    let per_record = record_bytes + 12;
    let count = (batch_bytes.saturating_sub(batch::BATCH_HEADER_BYTES) / per_record).max(1);
    let value = vec![0x5a; record_bytes];
    let values: Vec<&[u8]> = (0..count).map(|_| value.as_slice()).collect();
    batch::build_batch(0, &values)
}

/// Runs the benchmark on its own glommio executor and returns the report.
pub fn run(args: StorageBenchArgs) -> anyhow::Result<StorageBenchReport> {
    if args.batch_bytes < batch::BATCH_HEADER_BYTES + 16 {
        bail!(
            "--batch-bytes must be at least {}",
            batch::BATCH_HEADER_BYTES + 16
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    if kafki_storage::dma::is_tmpfs(&args.dir) {
        bail!(
            "{} is on tmpfs, which ignores O_DIRECT: choose a directory on the disk to measure",
            args.dir.display()
        );
    }
    if args.depth == 0 {
        bail!("--depth must be at least 1");
    }
    let placement = match args.cpu {
        Some(cpu) => glommio::Placement::Fixed(cpu),
        None => glommio::Placement::Unbound,
    };
    let handle = glommio::LocalExecutorBuilder::new(placement)
        .name("bench-storage")
        .spawn(move || async move { run_on_executor(args).await })
        .map_err(|error| anyhow::anyhow!("starting the benchmark executor: {error}"))?;
    handle
        .join()
        .map_err(|error| anyhow::anyhow!("benchmark executor failed: {error}"))?
}

async fn run_on_executor(args: StorageBenchArgs) -> anyhow::Result<StorageBenchReport> {
    let (sync_policy, depth) = match args.sync {
        SyncMode::None => (SyncPolicy::Never, args.depth),
        SyncMode::Group => (SyncPolicy::EveryAppend, args.depth),
        SyncMode::Each => (SyncPolicy::EveryAppend, 1),
    };
    let batch_bytes = args.batch_bytes;
    let batch = make_batch(batch_bytes, args.record_bytes);
    let config = LogConfig {
        sync_policy,
        max_batch_bytes: batch.len().max(LogConfig::default().max_batch_bytes),
        write_buffer_bytes_max: args.write_buffer_bytes.max(batch_bytes as u64 * 2),
        write_chunk_bytes: args.write_chunk_bytes,
        write_depth: args.write_depth,
        hot_tail_bytes_max: 16 << 20,
        preallocate_bytes: 256 << 20,
        // fio, the yardstick, writes each byte once; a zero fill
        // (`log.preallocate.zero.fill=true`) writes it twice, which would
        // halve this streaming figure rather than measure the write path.
        preallocation: kafki_storage::space::Preallocation::Reserve,
        retention_age: None,
        ..LogConfig::default()
    };
    let log_dir = args.dir.join("bench-storage-0");
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    let log = PartitionLog::open(&log_dir, config).await?;
    let batch_len = batch.len() as u64;
    let total_batches = args.total_bytes.div_ceil(batch_len).max(1);
    let progress = ProgressBar::new(total_batches * batch_len);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(depth);
    let durable = args.sync != SyncMode::None;
    let started = Instant::now();
    for _ in 0..total_batches {
        if in_flight.len() >= depth {
            if let Some((end, at)) = in_flight.pop_front() {
                wait_stage(&log, end, durable).await?;
                latencies.saturating_record(elapsed_us(at));
            }
        }
        let appended_at = Instant::now();
        let info = log.append(batch.clone(), 0).await?;
        in_flight.push_back((info.last_offset + 1, appended_at));
        retire_completed(&log, &mut in_flight, &mut latencies, durable);
        progress.inc(batch_len);
    }
    while let Some((end, at)) = in_flight.pop_front() {
        wait_stage(&log, end, durable).await?;
        latencies.saturating_record(elapsed_us(at));
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let stats = log.stats();
    let bytes = total_batches * batch_len;
    log.close().await?;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&log_dir);
    }
    Ok(StorageBenchReport {
        sync: args.sync,
        batch_bytes: batch_len as usize,
        depth,
        bytes,
        batches: total_batches,
        seconds,
        mib_per_s: bytes as f64 / (1024.0 * 1024.0) / seconds.max(f64::MIN_POSITIVE),
        fsyncs: stats.fsyncs,
        writes: stats.writes,
        append_latency_us: LatencySummary {
            p50: latencies.value_at_quantile(0.5),
            p99: latencies.value_at_quantile(0.99),
            p999: latencies.value_at_quantile(0.999),
            max: latencies.max(),
        },
    })
}

async fn wait_stage(log: &PartitionLog, end_offset: u64, durable: bool) -> anyhow::Result<()> {
    if durable {
        log.wait_durable(end_offset).await?;
    } else {
        log.wait_written(end_offset).await?;
    }
    Ok(())
}

/// Records the latency of every in-flight append that has already reached
/// its stage, without waiting.
fn retire_completed(
    log: &PartitionLog,
    in_flight: &mut VecDeque<(u64, Instant)>,
    latencies: &mut Histogram<u64>,
    durable: bool,
) {
    let offsets = log.offsets();
    let reached = if durable {
        offsets.durable_offset
    } else {
        offsets.written_offset
    };
    while in_flight.front().is_some_and(|(end, _)| *end <= reached) {
        if let Some((_, at)) = in_flight.pop_front() {
            latencies.saturating_record(elapsed_us(at));
        }
    }
}

fn elapsed_us(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}
