//! `kafki bench e2e`: producers send at a fixed `--rate`, consumers (started first, at the
//! end of the topic) read the records back, and the latency of each record is measured
//! from its *intended* send time (its slot in the fixed-rate schedule, stamped into the
//! value) to the moment the fetch that carried it returned. A producer that falls behind
//! (back-pressure, a stalled broker) therefore cannot hide the delay: the latency is
//! corrected for coordinated omission. Records due during the warm-up are read but not
//! measured.
//!
//! Each value starts with the run id and the intended time (ns after the run's origin),
//! so records of other runs in the same topic are ignored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafki_client::{Consumer, StartOffset};
use serde::Serialize;

use crate::consume::{topic_partitions, DECOMPRESSED_BYTES_MAX};
use crate::load::{
    connect, runtime, AmountArgs, CommonArgs, FetchArgs, ProduceArgs, ProgressTarget, Recorder,
    Sampler,
};
use crate::produce::{plans, prepare_topic, run_producers, Amount, Stamp, STAMP_BYTES};
use crate::report::{publish, BenchReport, LatencyUs};

/// Options of `kafki bench e2e`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct E2eBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub produce: ProduceArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub amount: AmountArgs,
    /// Seconds at the start whose records are not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_s: f64,
    /// After the producers finished, how long consumers may take to read the rest.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout_s: f64,
}

/// Seconds an e2e run lasts without `--count` or `--duration`.
pub const DEFAULT_DURATION_S: f64 = 10.0;

/// Runs the benchmark and publishes its outputs.
pub fn run(args: E2eBenchArgs) -> anyhow::Result<BenchReport> {
    args.produce.validate()?;
    if args.produce.rate.is_none() {
        bail!("e2e needs --rate (records per second): latency is measured from the fixed-rate schedule");
    }
    if args.produce.record_bytes < STAMP_BYTES {
        bail!("--record-bytes must be at least {STAMP_BYTES} for e2e (the send-time stamp)");
    }
    if args.fetch.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    if !(args.warmup_s.is_finite() && args.warmup_s >= 0.0) {
        bail!("--warmup-s must be zero or positive");
    }
    let amount = Amount::from_args(
        &args.amount,
        Amount::Duration(Duration::from_secs_f64(DEFAULT_DURATION_S)),
    )?;
    let runtime = runtime(args.common.threads)?;
    let (report, latencies) = runtime.block_on(run_async(&args, amount))?;
    publish(&report, &latencies, &args.common)?;
    Ok(report)
}

/// State the consumers share.
struct Progress {
    /// Records of this run read (warm-up included).
    consumed: AtomicU64,
    /// Set once every producer finished: `produced` is final then.
    producers_done: AtomicBool,
    produced: AtomicU64,
    /// Nanoseconds after the origin the last measured record was read.
    last_read_ns: AtomicU64,
}

async fn run_async(
    args: &E2eBenchArgs,
    amount: Amount,
) -> anyhow::Result<(BenchReport, hdrhistogram::Histogram<u64>)> {
    let client = connect(&args.common).await?;
    let topic = args.common.topic.clone();
    prepare_topic(&client, &topic, args.produce.partitions).await?;
    let partitions = topic_partitions(&client, &topic).await?;
    let origin = Instant::now();
    let stamp = Stamp {
        run_id: run_id(),
        origin,
    };
    let end_to_end = Arc::new(Recorder::default());
    let progress = Arc::new(Progress {
        consumed: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
        produced: AtomicU64::new(0),
        last_read_ns: AtomicU64::new(0),
    });
    // Consumers first, positioned at the end, so they see every record of this run.
    let mut consumers = Vec::new();
    for index in 0..args.fetch.consumers {
        let mine = args.fetch.partitions_of(&partitions, index);
        if mine.is_empty() {
            continue;
        }
        let mut consumer = Consumer::new(connect(&args.common).await?, args.fetch.fetch_config());
        consumer.assign(&topic, &mine, StartOffset::Latest).await?;
        consumers.push(consumer);
    }
    let start = Instant::now();
    let warmup_end = start + Duration::from_secs_f64(args.warmup_s);
    if let Amount::Duration(duration) = amount {
        if duration.as_secs_f64() <= args.warmup_s {
            bail!("--duration must be longer than --warmup-s");
        }
    }
    let warmup_end_ns = nanos_since(origin, warmup_end);
    let mut consumer_tasks = Vec::new();
    for consumer in consumers {
        let recorder = end_to_end.clone();
        let progress = progress.clone();
        let drain_timeout = Duration::from_secs_f64(args.drain_timeout_s.max(0.1));
        consumer_tasks.push(tokio::spawn(async move {
            read_stamped(
                consumer,
                stamp,
                warmup_end_ns,
                recorder,
                progress,
                drain_timeout,
            )
            .await
        }));
    }
    let target = match amount {
        Amount::Count(count) => ProgressTarget::Records(count),
        Amount::Duration(duration) => ProgressTarget::Seconds(duration.as_secs_f64()),
    };
    let sampler = Sampler::start(end_to_end.clone(), target, "e2e");
    let producer_acks = Arc::new(Recorder::default());
    let produced = run_producers(
        &args.common,
        &args.produce,
        plans(&args.produce, amount, start, Some(stamp)),
        producer_acks.clone(),
    )
    .await;
    // Whatever happened, let the consumers finish.
    let acknowledged: u64 = produced
        .as_ref()
        .map(|stats| stats.iter().map(|s| s.records_acknowledged).sum())
        .unwrap_or(0);
    progress.produced.store(acknowledged, Ordering::Release);
    progress.producers_done.store(true, Ordering::Release);
    let produced = produced?;
    let mut fetches = 0;
    let mut missing_error = None;
    for task in consumer_tasks {
        match task.await.context("consumer task panicked")? {
            Ok(count) => fetches += count,
            Err(error) => missing_error = Some(error),
        }
    }
    let timeline = sampler.finish().await;
    let consumed_total = progress.consumed.load(Ordering::Acquire);
    let last_read = origin + Duration::from_nanos(progress.last_read_ns.load(Ordering::Acquire));
    let seconds = last_read
        .saturating_duration_since(warmup_end)
        .as_secs_f64();
    let latencies = end_to_end.total();
    let records = end_to_end.records();
    let bytes = end_to_end.bytes();
    let (records_per_s, mib_per_s) = BenchReport::rates(records, bytes, seconds);
    let missing = acknowledged.saturating_sub(consumed_total);
    let mut errors = end_to_end.errors() + producer_acks.errors() + missing;
    let mut first_error = producer_acks.first_error().or(end_to_end.first_error());
    if let Some(error) = missing_error {
        first_error = first_error.or(Some(error.to_string()));
        errors = errors.max(1);
    }
    let report = BenchReport {
        benchmark: "e2e",
        records,
        bytes,
        seconds,
        records_per_s,
        mib_per_s,
        latency_measures:
            "per record: intended send time (fixed-rate schedule) -> read by a consumer",
        latency_us: LatencyUs::of(&latencies),
        errors,
        first_error,
        details: serde_json::json!({
            "coordinated_omission_corrected": true,
            "records_produced": acknowledged,
            "records_read_including_warmup": consumed_total,
            "records_missing": missing,
            "warmup_s": args.warmup_s,
            "fetches": fetches,
            "produce_requests": produced.iter().map(|s| s.requests).sum::<u64>(),
            "produce_latency_us": LatencyUs::of(&producer_acks.total()),
        }),
        config: serde_json::to_value(args)?,
        timeline,
    };
    Ok((report, latencies))
}

/// A run id unlikely to repeat: wall-clock nanoseconds mixed with the process id.
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40) ^ 0x6b61_666b_6965_3265
}

fn nanos_since(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// Reads until every acknowledged record of the run was read (or `drain_timeout` after the
/// producers finished); returns the number of fetches.
async fn read_stamped(
    mut consumer: Consumer,
    stamp: Stamp,
    warmup_end_ns: u64,
    recorder: Arc<Recorder>,
    progress: Arc<Progress>,
    drain_timeout: Duration,
) -> anyhow::Result<u64> {
    let mut fetches = 0;
    let mut latencies_us: Vec<u64> = Vec::with_capacity(4096);
    let mut producers_done_at: Option<Instant> = None;
    let run_id = stamp.run_id.to_be_bytes();
    loop {
        if progress.producers_done.load(Ordering::Acquire) {
            if progress.consumed.load(Ordering::Acquire)
                >= progress.produced.load(Ordering::Acquire)
            {
                return Ok(fetches);
            }
            let since = *producers_done_at.get_or_insert_with(Instant::now);
            if since.elapsed() > drain_timeout {
                bail!(
                    "{} of {} records were not read within {drain_timeout:?} after the producers finished",
                    progress.produced.load(Ordering::Acquire)
                        - progress.consumed.load(Ordering::Acquire),
                    progress.produced.load(Ordering::Acquire)
                );
            }
        }
        let rounds = consumer.poll().await?;
        // Every record of an answer was read when the answer arrived.
        let read_ns = nanos_since(stamp.origin, Instant::now());
        for round in rounds {
            fetches += 1;
            let mut records = 0u64;
            let mut measured = 0u64;
            let mut measured_bytes = 0u64;
            latencies_us.clear();
            for fetched in &round.partitions {
                for batch in fetched.batches() {
                    let batch = batch
                        .with_context(|| format!("{}-{}", fetched.topic, fetched.partition))?;
                    batch
                        .for_each_record(
                            fetched.fetch_offset,
                            DECOMPRESSED_BYTES_MAX,
                            |_, record| {
                                let Some(value) = record.value else {
                                    return;
                                };
                                if value.len() < STAMP_BYTES || value[..8] != run_id {
                                    return;
                                }
                                records += 1;
                                let mut intended = [0u8; 8];
                                intended.copy_from_slice(&value[8..STAMP_BYTES]);
                                let intended_ns = u64::from_be_bytes(intended);
                                if intended_ns >= warmup_end_ns {
                                    measured += 1;
                                    measured_bytes +=
                                        (value.len() + record.key.map_or(0, <[u8]>::len)) as u64;
                                    latencies_us.push(read_ns.saturating_sub(intended_ns) / 1000);
                                }
                            },
                        )
                        .map_err(|error| anyhow::anyhow!("decoding records: {error}"))?;
                }
            }
            progress.consumed.fetch_add(records, Ordering::AcqRel);
            if measured > 0 {
                recorder.record_latencies(latencies_us.iter().copied());
                recorder.add(measured, measured_bytes);
                progress.last_read_ns.fetch_max(read_ns, Ordering::AcqRel);
            }
        }
    }
}
