//! `kafki bench consume`: consumers read a topic from the beginning, each a share of the
//! partitions (assigned, no group), until the end offsets seen at the start (or until
//! `--count` records, or `--duration`). Every record is decoded (decompressing batches,
//! CRC-checked), as a real consumer would; latency is per fetch (request to answer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafki_client::{Client, Consumer, FetchedBatch, OffsetSpec, StartOffset};
use serde::Serialize;

use crate::load::{
    connect, runtime, AmountArgs, CommonArgs, FetchArgs, ProgressTarget, Recorder, Sampler,
};
use crate::produce::Amount;
use crate::report::{publish, BenchReport, LatencyUs};

/// Largest decompressed records section accepted per batch.
pub const DECOMPRESSED_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Options of `kafki bench consume`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ConsumeBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub amount: AmountArgs,
    /// Give up when no record arrived for this many seconds before the end was reached.
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout_s: f64,
}

/// When a consumer stops.
#[derive(Debug, Clone)]
enum Goal {
    /// Read up to these offsets, per assigned partition.
    EndOffsets(Vec<(i32, i64)>),
    /// Read this many records over all consumers.
    Records(u64),
    Deadline(Instant),
}

/// Runs the benchmark and publishes its outputs.
pub fn run(args: ConsumeBenchArgs) -> anyhow::Result<BenchReport> {
    if args.fetch.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    let runtime = runtime(args.common.threads)?;
    let (report, latencies) = runtime.block_on(run_async(&args))?;
    publish(&report, &latencies, &args.common)?;
    Ok(report)
}

async fn run_async(
    args: &ConsumeBenchArgs,
) -> anyhow::Result<(BenchReport, hdrhistogram::Histogram<u64>)> {
    let client = connect(&args.common).await?;
    let topic = &args.common.topic;
    let partitions = topic_partitions(&client, topic).await?;
    let amount = match (args.amount.count, args.amount.duration) {
        (None, None) => None,
        _ => Some(Amount::from_args(&args.amount, Amount::Count(0))?),
    };
    let end_offsets = client
        .list_offsets(topic, &partitions, OffsetSpec::Latest)
        .await?;
    let start_offsets = client
        .list_offsets(topic, &partitions, OffsetSpec::Earliest)
        .await?;
    let available: i64 = partitions
        .iter()
        .map(|p| end_offsets[p] - start_offsets[p])
        .sum();
    let target = match amount {
        None => ProgressTarget::Records(available.max(0) as u64),
        Some(Amount::Count(count)) => ProgressTarget::Records(count),
        Some(Amount::Duration(duration)) => ProgressTarget::Seconds(duration.as_secs_f64()),
    };
    let recorder = Arc::new(Recorder::default());
    let consumed = Arc::new(AtomicU64::new(0));
    let sampler = Sampler::start(recorder.clone(), target, "consume");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..args.fetch.consumers {
        let mine = args.fetch.partitions_of(&partitions, index);
        if mine.is_empty() {
            continue;
        }
        let goal = match amount {
            None => Goal::EndOffsets(mine.iter().map(|p| (*p, end_offsets[p])).collect()),
            Some(Amount::Count(count)) => Goal::Records(count),
            Some(Amount::Duration(duration)) => Goal::Deadline(start + duration),
        };
        let consumer_client = connect(&args.common).await?;
        let mut consumer = Consumer::new(consumer_client, args.fetch.fetch_config());
        consumer.assign(topic, &mine, StartOffset::Earliest).await?;
        let recorder = recorder.clone();
        let consumed = consumed.clone();
        let idle_timeout = Duration::from_secs_f64(args.idle_timeout_s.max(0.1));
        tasks.push(tokio::spawn(async move {
            consume_until(consumer, goal, recorder, consumed, idle_timeout).await
        }));
    }
    let mut fetches = 0;
    for task in tasks {
        fetches += task.await.context("consumer task panicked")??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let timeline = sampler.finish().await;
    let latencies = recorder.total();
    let records = recorder.records();
    let bytes = recorder.bytes();
    let (records_per_s, mib_per_s) = BenchReport::rates(records, bytes, seconds);
    let report = BenchReport {
        benchmark: "consume",
        records,
        bytes,
        seconds,
        records_per_s,
        mib_per_s,
        latency_measures: "per fetch: request sent -> answer received",
        latency_us: LatencyUs::of(&latencies),
        errors: recorder.errors(),
        first_error: recorder.first_error(),
        details: serde_json::json!({
            "fetches": fetches,
            "records_available_at_start": available,
            "records_per_fetch": records as f64 / fetches.max(1) as f64,
        }),
        config: serde_json::to_value(args)?,
        timeline,
    };
    Ok((report, latencies))
}

pub(crate) async fn topic_partitions(client: &Client, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = client.refresh_metadata(&[topic]).await?;
    let Some(topic_metadata) = metadata.topic(topic) else {
        bail!("topic {topic} does not exist (produce to it first)");
    };
    Ok(topic_metadata
        .partitions
        .iter()
        .map(|p| p.partition)
        .collect())
}

/// Fetches until the goal is met; returns the number of fetches.
async fn consume_until(
    mut consumer: Consumer,
    goal: Goal,
    recorder: Arc<Recorder>,
    consumed: Arc<AtomicU64>,
    idle_timeout: Duration,
) -> anyhow::Result<u64> {
    let mut fetches = 0;
    let mut last_progress = Instant::now();
    loop {
        let done = match &goal {
            Goal::EndOffsets(ends) => {
                consumer.positions().iter().all(|(_, partition, position)| {
                    ends.iter()
                        .any(|(p, end)| p == partition && position >= end)
                })
            }
            Goal::Records(count) => consumed.load(Ordering::Acquire) >= *count,
            Goal::Deadline(deadline) => Instant::now() >= *deadline,
        };
        if done {
            return Ok(fetches);
        }
        if last_progress.elapsed() > idle_timeout {
            bail!(
                "no records for {idle_timeout:?} before the end was reached ({} read)",
                consumed.load(Ordering::Acquire)
            );
        }
        let budget = match goal {
            Goal::Records(count) => Some(count),
            _ => None,
        };
        for round in consumer.poll().await? {
            fetches += 1;
            recorder.record_latency_n(round.round_trip.as_micros() as u64, 1);
            let mut records = 0;
            let mut bytes = 0;
            for fetched in &round.partitions {
                for batch in fetched.batches() {
                    let batch = batch
                        .with_context(|| format!("{}-{}", fetched.topic, fetched.partition))?;
                    let (batch_records, batch_bytes) =
                        count_batch(&batch, fetched.fetch_offset, budget, &consumed)?;
                    records += batch_records;
                    bytes += batch_bytes;
                }
            }
            if records > 0 {
                last_progress = Instant::now();
            }
            recorder.add(records, bytes);
        }
    }
}

/// Decodes every record of `batch` at or after `from_offset` and returns (records, key and
/// value bytes). With a `budget`, takes at most what is left of it over all consumers
/// (`consumed` is the shared count), so the total never exceeds `--count`.
fn count_batch(
    batch: &FetchedBatch<'_>,
    from_offset: i64,
    budget: Option<u64>,
    consumed: &AtomicU64,
) -> anyhow::Result<(u64, u64)> {
    let first = batch.base_offset().max(from_offset);
    let expected = u64::try_from(batch.next_offset() - first).unwrap_or(0);
    let granted = match budget {
        None => {
            consumed.fetch_add(expected, Ordering::AcqRel);
            u64::MAX
        }
        Some(count) => {
            let previous = consumed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                    Some(taken + expected.min(count.saturating_sub(taken)))
                })
                .unwrap_or(count);
            expected.min(count.saturating_sub(previous))
        }
    };
    let mut records = 0u64;
    let mut bytes = 0u64;
    batch
        .for_each_record(from_offset, DECOMPRESSED_BYTES_MAX, |_, record| {
            if records < granted {
                records += 1;
                bytes += (record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len))
                    as u64;
            }
        })
        .map_err(|error| anyhow::anyhow!("batch at offset {}: {error}", batch.base_offset()))?;
    if let Some(count) = budget {
        // Compacted batches hold fewer records than their offset span: give back the rest.
        let unused = expected.min(granted).saturating_sub(records);
        if unused > 0 && count > 0 {
            consumed.fetch_sub(unused, Ordering::AcqRel);
        }
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_client::RecordBatches;
    use kafki_storage::compression::Compression;
    use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};

    fn batch_bytes(base_offset: i64, count: i32) -> Vec<u8> {
        let mut section = Vec::new();
        for index in 0..count {
            encode_record(
                &mut section,
                &NewRecord {
                    offset_delta: index,
                    key: Some(b"k"),
                    value: Some(b"vvvv"),
                    ..NewRecord::default()
                },
            );
        }
        let fields = BatchFields {
            base_offset,
            last_offset_delta: count - 1,
            records_count: count,
            ..BatchFields::default()
        };
        let mut bytes = Vec::new();
        assemble_batch(&mut bytes, &fields, Compression::Gzip, &section);
        bytes
    }

    #[test]
    fn counting_respects_fetch_offset_and_budget() {
        let bytes = batch_bytes(100, 10);
        let batch = RecordBatches::new(&bytes)
            .next()
            .expect("one")
            .expect("valid");
        let consumed = AtomicU64::new(0);
        assert_eq!(
            count_batch(&batch, 103, None, &consumed).ok(),
            Some((7, 35))
        );
        assert_eq!(consumed.load(Ordering::Acquire), 7);
        let limited = AtomicU64::new(6);
        assert_eq!(
            count_batch(&batch, 100, Some(10), &limited).ok(),
            Some((4, 20))
        );
        assert_eq!(limited.load(Ordering::Acquire), 10);
        assert_eq!(
            count_batch(&batch, 100, Some(10), &limited).ok(),
            Some((0, 0))
        );
        assert_eq!(limited.load(Ordering::Acquire), 10);
    }
}
