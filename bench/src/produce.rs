//! `kafki bench produce`: producers send records to a topic (created if missing) as fast
//! as they can or at a fixed rate; latency is per record, from being handed to the
//! producer to its batch's acknowledgement.
//!
//! The record loop allocates nothing per record: the value is one buffer per producer
//! (overwritten in place when stamped for e2e), keys are formatted into a stack buffer,
//! and records are encoded straight into the producer's batch buffers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kafki_client::{partition_for_key, Client, Delivery, Producer, ProducerRecord, ProducerStats};
use serde::Serialize;

use crate::load::{
    connect, decimal_key, payload, runtime, share, AmountArgs, CommonArgs, ProduceArgs,
    ProgressTarget, Recorder, Sampler, Schedule,
};
use crate::report::{publish, BenchReport, LatencyUs};

/// Options of `kafki bench produce`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ProduceBenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub produce: ProduceArgs,
    #[command(flatten)]
    pub amount: AmountArgs,
}

/// Records produced when neither `--count` nor `--duration` is given.
pub const DEFAULT_COUNT: u64 = 1_000_000;

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Count(u64),
    Duration(Duration),
}

impl Amount {
    pub fn from_args(args: &AmountArgs, default: Amount) -> anyhow::Result<Self> {
        match (args.count, args.duration) {
            (Some(count), None) => Ok(Amount::Count(count)),
            (None, Some(seconds)) if seconds.is_finite() && seconds > 0.0 => {
                Ok(Amount::Duration(Duration::from_secs_f64(seconds)))
            }
            (None, Some(_)) => bail!("--duration must be a positive number of seconds"),
            (None, None) => Ok(default),
            (Some(_), Some(_)) => bail!("give --count or --duration, not both"),
        }
    }
}

/// e2e stamps each value with the run id and the record's intended send time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub run_id: u64,
    pub origin: Instant,
}

/// Bytes of the e2e stamp at the start of each value: run id, intended time (ns after
/// the run's origin), both big-endian.
pub(crate) const STAMP_BYTES: usize = 16;

/// What one producer task is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ProducerPlan {
    pub index: usize,
    pub count: Option<u64>,
    pub deadline: Option<Instant>,
    pub schedule: Option<Schedule>,
    pub stamp: Option<Stamp>,
}

/// Runs the benchmark and publishes its outputs.
pub fn run(args: ProduceBenchArgs) -> anyhow::Result<BenchReport> {
    args.produce.validate()?;
    let amount = Amount::from_args(&args.amount, Amount::Count(DEFAULT_COUNT))?;
    let runtime = runtime(args.common.threads)?;
    let (report, latencies) = runtime.block_on(run_async(&args, amount))?;
    publish(&report, &latencies, &args.common)?;
    Ok(report)
}

async fn run_async(
    args: &ProduceBenchArgs,
    amount: Amount,
) -> anyhow::Result<(BenchReport, hdrhistogram::Histogram<u64>)> {
    let client = connect(&args.common).await?;
    prepare_topic(&client, &args.common.topic, args.produce.partitions).await?;
    let recorder = Arc::new(Recorder::default());
    let target = match amount {
        Amount::Count(count) => ProgressTarget::Records(count),
        Amount::Duration(duration) => ProgressTarget::Seconds(duration.as_secs_f64()),
    };
    let sampler = Sampler::start(recorder.clone(), target, "produce");
    let start = Instant::now();
    let plans = plans(&args.produce, amount, start, None);
    let stats = run_producers(&args.common, &args.produce, plans, recorder.clone()).await?;
    let seconds = start.elapsed().as_secs_f64();
    let timeline = sampler.finish().await;
    let latencies = recorder.total();
    let records = recorder.records();
    let bytes = recorder.bytes();
    let (records_per_s, mib_per_s) = BenchReport::rates(records, bytes, seconds);
    let requests: u64 = stats.iter().map(|s| s.requests).sum();
    let report = BenchReport {
        benchmark: "produce",
        records,
        bytes,
        seconds,
        records_per_s,
        mib_per_s,
        latency_measures: "per record: handed to the producer -> acknowledged",
        latency_us: LatencyUs::of(&latencies),
        errors: recorder.errors(),
        first_error: recorder.first_error(),
        details: serde_json::json!({
            "requests": requests,
            "batches": stats.iter().map(|s| s.batches_acknowledged).sum::<u64>(),
            "retries": stats.iter().map(|s| s.retries).sum::<u64>(),
            "records_per_request": records as f64 / requests.max(1) as f64,
        }),
        config: serde_json::to_value(args)?,
        timeline,
    };
    Ok((report, latencies))
}

/// Makes sure the topic exists (creating it with `partitions` if missing) and every
/// partition has a leader.
pub(crate) async fn prepare_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let metadata = client
        .ensure_topic(topic, partitions, Duration::from_secs(30))
        .await
        .with_context(|| format!("preparing topic {topic}"))?;
    if metadata.partitions.len() != partitions as usize {
        tracing::warn!(
            topic,
            existing = metadata.partitions.len(),
            requested = partitions,
            "topic exists with a different partition count; using it as it is"
        );
    }
    Ok(())
}

/// One plan per producer: its share of the count, the deadline, its share of the rate.
pub(crate) fn plans(
    args: &ProduceArgs,
    amount: Amount,
    start: Instant,
    stamp: Option<Stamp>,
) -> Vec<ProducerPlan> {
    (0..args.producers)
        .map(|index| {
            let schedule = args.rate.map(|rate| {
                let per_producer = rate / args.producers as f64;
                // Interleave producers: producer i starts i/rate after producer 0.
                Schedule::new(start, per_producer, index as f64 / rate)
            });
            ProducerPlan {
                index,
                count: match amount {
                    Amount::Count(count) => Some(share(count, args.producers, index)),
                    Amount::Duration(_) => None,
                },
                deadline: match amount {
                    Amount::Duration(duration) => Some(start + duration),
                    Amount::Count(_) => None,
                },
                schedule,
                stamp,
            }
        })
        .collect()
}

/// Runs every plan on its own producer (own client and connections) and returns their
/// final counters. Acknowledgements and latencies go to `recorder`.
pub(crate) async fn run_producers(
    common: &CommonArgs,
    args: &ProduceArgs,
    plans: Vec<ProducerPlan>,
    recorder: Arc<Recorder>,
) -> anyhow::Result<Vec<ProducerStats>> {
    let mut tasks = Vec::with_capacity(plans.len());
    for plan in plans {
        let client = connect(common).await?;
        let topic = common.topic.clone();
        let args = args.clone();
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            drive_producer(client, &topic, &args, plan, recorder).await
        }));
    }
    let mut stats = Vec::with_capacity(tasks.len());
    for task in tasks {
        stats.push(task.await.context("producer task panicked")??);
    }
    Ok(stats)
}

async fn drive_producer(
    client: Client,
    topic: &str,
    args: &ProduceArgs,
    plan: ProducerPlan,
    recorder: Arc<Recorder>,
) -> anyhow::Result<ProducerStats> {
    let listener_recorder = recorder.clone();
    let listener = move |delivery: &Delivery<'_>| match delivery.error {
        Some(error) => {
            listener_recorder.add_error(u64::from(delivery.record_count), &error.to_string())
        }
        None => {
            listener_recorder.record_latencies(delivery.record_latencies_us());
            listener_recorder.add(u64::from(delivery.record_count), delivery.payload_bytes);
        }
    };
    let producer = Producer::new(client, args.producer_config(true), Some(Box::new(listener)))?;
    let partitions = producer.partitions(topic).await?;
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }
    let mut value = payload(args.record_bytes, 0x9e37_79b9 + plan.index as u64);
    if plan.stamp.is_some() && value.len() < STAMP_BYTES {
        bail!("--record-bytes must be at least {STAMP_BYTES} for e2e (the send-time stamp)");
    }
    // Key-less records go to one partition per batch (like Kafka's sticky partitioner),
    // producers starting on different partitions.
    let records_per_batch = (args.batch_bytes / (args.record_bytes + 12)).max(1) as u64;
    let partition_count = partitions.len() as u64;
    let mut key_buffer = [0u8; 20];
    let mut index: u64 = 0;
    loop {
        if plan.count.is_some_and(|count| index >= count) {
            break;
        }
        let due = match &plan.schedule {
            Some(schedule) => Some(schedule.wait_for(index).await),
            None => None,
        };
        let past_deadline = match (plan.deadline, due) {
            (Some(deadline), Some(due)) => due >= deadline,
            // Checking the clock every 64 records keeps the max-rate loop cheap.
            (Some(deadline), None) => index.is_multiple_of(64) && Instant::now() >= deadline,
            (None, _) => false,
        };
        if past_deadline {
            break;
        }
        // A failed batch makes the run invalid: stop sending, so the summary (with the
        // error) comes now rather than after the whole count fails too.
        if index.is_multiple_of(64) && producer.records_failed() > 0 {
            tracing::warn!("stopping: a batch failed (the summary gives the first error)");
            break;
        }
        if let (Some(stamp), Some(due)) = (plan.stamp, due) {
            let intended_ns = u64::try_from(due.saturating_duration_since(stamp.origin).as_nanos())
                .unwrap_or(u64::MAX);
            value[..8].copy_from_slice(&stamp.run_id.to_be_bytes());
            value[8..STAMP_BYTES].copy_from_slice(&intended_ns.to_be_bytes());
        }
        // Keys cycle over 0..keys across all producers together.
        let global_index = index * args.producers as u64 + plan.index as u64;
        let key = (args.keys > 0).then(|| decimal_key(global_index % args.keys, &mut key_buffer));
        let partition = match key {
            Some(key) => partition_for_key(key, partition_count as u32) as usize,
            None => ((index / records_per_batch + plan.index as u64) % partition_count) as usize,
        };
        producer
            .send(
                partitions[partition],
                ProducerRecord {
                    key,
                    value: Some(&value),
                    headers: &[],
                },
            )
            .await?;
        index += 1;
    }
    Ok(producer.close().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce_args(producers: usize, rate: Option<f64>) -> ProduceArgs {
        ProduceArgs {
            partitions: 1,
            producers,
            record_bytes: 100,
            keys: 0,
            rate,
            acks: kafki_client::Acks::Leader,
            compression: kafki_client::Compression::None,
            batch_bytes: 16384,
            linger_ms: 5.0,
            buffer_bytes: 1 << 25,
            delivery_timeout_ms: 30_000,
        }
    }

    #[test]
    fn plans_split_counts_and_rates() {
        let start = Instant::now();
        let plans = plans(
            &produce_args(3, Some(300.0)),
            Amount::Count(10),
            start,
            None,
        );
        assert_eq!(plans.iter().map(|p| p.count.unwrap_or(0)).sum::<u64>(), 10);
        let second = plans[1].schedule.expect("rate");
        // 100 records/s each, producer 1 offset by 1/300 s.
        assert_eq!(second.due(0), start + Duration::from_secs_f64(1.0 / 300.0));
        assert_eq!(
            second.due(1),
            start + Duration::from_secs_f64(1.0 / 300.0 + 0.01)
        );
        let timed = plans_for_duration();
        assert!(timed
            .iter()
            .all(|p| p.count.is_none() && p.deadline.is_some()));
    }

    fn plans_for_duration() -> Vec<ProducerPlan> {
        plans(
            &produce_args(2, None),
            Amount::Duration(Duration::from_secs(1)),
            Instant::now(),
            None,
        )
    }

    #[test]
    fn amounts_come_from_count_or_duration() {
        let default = Amount::Count(5);
        let args = |count, duration| AmountArgs { count, duration };
        assert_eq!(
            Amount::from_args(&args(None, None), default).ok(),
            Some(default)
        );
        assert_eq!(
            Amount::from_args(&args(Some(3), None), default).ok(),
            Some(Amount::Count(3))
        );
        assert_eq!(
            Amount::from_args(&args(None, Some(1.5)), default).ok(),
            Some(Amount::Duration(Duration::from_millis(1500)))
        );
        assert!(Amount::from_args(&args(None, Some(-1.0)), default).is_err());
        assert!(Amount::from_args(&args(Some(1), Some(1.0)), default).is_err());
    }
}
