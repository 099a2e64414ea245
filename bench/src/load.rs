//! What `kafki bench produce|consume|e2e` share: their options, the tokio runtime they run
//! on, the client settings, the latency recorder, the once-a-second sampler behind the
//! progress bar and the timeline, record payloads and the fixed-rate schedule.
//!
//! Latencies are recorded in microseconds into HdrHistograms (1 µs to 1 h, 3 significant
//! digits). The hot paths lock a recorder once per batch or fetch, never per record.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kafki_client::{Acks, Client, ClientConfig, Compression, FetchConfig, ProducerConfig};
use serde::Serialize;

use crate::report::TimelinePoint;

/// Options every Kafka-wire benchmark takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CommonArgs {
    /// Brokers to bootstrap from (comma-separated host:port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Topic to use.
    #[arg(long, default_value = "kafki-bench")]
    pub topic: String,
    /// OS threads running the load (1: a current-thread runtime; pin it with taskset).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    pub max_in_flight: usize,
    /// Request timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// Write the JSON report here ("-": stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the latency distribution here, in HdrHistogram's percentile text format
    /// (values in milliseconds).
    #[arg(long)]
    pub hdr: Option<PathBuf>,
    /// Write a self-contained SVG chart of latency percentiles and throughput over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl CommonArgs {
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(&self.bootstrap);
        config.connection.client_id = "kafki-bench".to_string();
        config.connection.max_in_flight = self.max_in_flight.max(1);
        config.connection.request_timeout = Duration::from_millis(self.request_timeout_ms);
        config
    }
}

/// How much to run: a record count, or a duration.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct AmountArgs {
    /// Records to produce (or consume) in total.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Seconds to run instead of a count.
    #[arg(long)]
    pub duration: Option<f64>,
}

/// Options of the producing side (produce and e2e).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ProduceArgs {
    /// Partitions of the topic; it is created with this many if missing.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Producers, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    pub record_bytes: usize,
    /// Distinct keys (0: no keys; records go to partitions batch by batch).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Records per second over all producers (fixed-rate mode); without it: as fast as
    /// possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// 0, 1 or all (-1).
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    #[serde(serialize_with = "serialize_acks")]
    pub acks: Acks,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    #[serde(serialize_with = "serialize_compression")]
    pub compression: Compression,
    /// Largest batch, uncompressed (Kafka's batch.size).
    #[arg(long, default_value_t = 16 * 1024)]
    pub batch_bytes: usize,
    /// How long a batch waits for more records (Kafka's linger.ms).
    #[arg(long, default_value_t = 5.0)]
    pub linger_ms: f64,
    /// Bytes of unacknowledged records per producer before sending waits (buffer.memory).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub buffer_bytes: usize,
    /// How long a batch may take to be acknowledged, retries included, before it fails
    /// (Kafka's delivery.timeout.ms; shorter than Kafka's 120 s default so a run whose
    /// broker went away ends soon).
    #[arg(long, default_value_t = 30_000)]
    pub delivery_timeout_ms: u64,
}

/// `--acks` as clap parses it (shared with `kafki produce`).
pub fn parse_acks(text: &str) -> Result<Acks, String> {
    Acks::parse(text).ok_or_else(|| format!("acks must be 0, 1, -1 or all, not {text:?}"))
}

/// `--compression` as clap parses it (shared with `kafki produce`).
pub fn parse_compression(text: &str) -> Result<Compression, String> {
    text.parse::<Compression>()
        .map_err(|error| error.to_string())
}

fn serialize_acks<S: serde::Serializer>(acks: &Acks, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(match acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    })
}

fn serialize_compression<S: serde::Serializer>(
    compression: &Compression,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(compression.name())
}

impl ProduceArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        if self.producers == 0 {
            bail!("--producers must be at least 1");
        }
        if self.batch_bytes == 0 || self.buffer_bytes < self.batch_bytes {
            bail!("--batch-bytes must be positive and at most --buffer-bytes");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of records per second");
            }
        }
        if !(self.linger_ms.is_finite() && self.linger_ms >= 0.0) {
            bail!("--linger-ms must be zero or positive");
        }
        if self.delivery_timeout_ms == 0 {
            bail!("--delivery-timeout-ms must be positive");
        }
        Ok(())
    }

    pub fn producer_config(&self, track_record_times: bool) -> ProducerConfig {
        ProducerConfig {
            acks: self.acks,
            batch_bytes: self.batch_bytes,
            linger: Duration::from_secs_f64(self.linger_ms / 1000.0),
            compression: self.compression,
            buffer_bytes: self.buffer_bytes,
            max_request_bytes: (1024 * 1024).max(self.batch_bytes * 2),
            track_record_times,
            delivery_timeout: Duration::from_millis(self.delivery_timeout_ms),
            ..ProducerConfig::default()
        }
    }
}

/// Options of the consuming side (consume and e2e).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FetchArgs {
    /// Consumers, each with its own connections and a share of the partitions.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Byte budget of one fetch answer (fetch.max.bytes).
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub fetch_max_bytes: i32,
    /// Byte budget per partition (max.partition.fetch.bytes).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub partition_max_bytes: i32,
    /// The broker answers once this many bytes are there (fetch.min.bytes)...
    #[arg(long, default_value_t = 1)]
    pub fetch_min_bytes: i32,
    /// ...or after this many milliseconds (fetch.max.wait.ms).
    #[arg(long, default_value_t = 500)]
    pub fetch_max_wait_ms: u64,
}

impl FetchArgs {
    /// The partitions consumer `index` reads: every `consumers`-th, from its index on
    /// (empty when there are more consumers than partitions).
    pub fn partitions_of(&self, partitions: &[i32], index: usize) -> Vec<i32> {
        partitions
            .iter()
            .copied()
            .skip(index)
            .step_by(self.consumers.max(1))
            .collect()
    }

    pub fn fetch_config(&self) -> FetchConfig {
        FetchConfig {
            max_wait: Duration::from_millis(self.fetch_max_wait_ms),
            min_bytes: self.fetch_min_bytes,
            max_bytes: self.fetch_max_bytes,
            partition_max_bytes: self.partition_max_bytes,
            isolation_level: 0,
        }
    }
}

/// The runtime a benchmark runs on: current-thread for one thread (no work stealing,
/// nothing to synchronise), multi-thread otherwise.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    runtime.context("starting the tokio runtime")
}

pub async fn connect(common: &CommonArgs) -> anyhow::Result<Client> {
    Client::connect(common.client_config())
        .await
        .with_context(|| format!("connecting to {}", common.bootstrap))
}

/// Latency histogram bounds: 1 µs to one hour.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds: this cannot fail at run time.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

struct Histograms {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// Counters and latency histograms of one run, shared by every producer or consumer of
/// it and the sampler.
pub struct Recorder {
    histograms: Mutex<Histograms>,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            histograms: Mutex::new(Histograms {
                total: new_histogram(),
                interval: new_histogram(),
            }),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }
}

impl Recorder {
    fn histograms(&self) -> MutexGuard<'_, Histograms> {
        self.histograms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records latencies (µs) under one lock.
    pub fn record_latencies(&self, latencies_us: impl IntoIterator<Item = u64>) {
        let mut histograms = self.histograms();
        for latency_us in latencies_us {
            let latency_us = latency_us.max(1);
            histograms.total.saturating_record(latency_us);
            histograms.interval.saturating_record(latency_us);
        }
    }

    /// Records one latency `count` times.
    pub fn record_latency_n(&self, latency_us: u64, count: u64) {
        let mut histograms = self.histograms();
        histograms
            .total
            .saturating_record_n(latency_us.max(1), count);
        histograms
            .interval
            .saturating_record_n(latency_us.max(1), count);
    }

    pub fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_error(&self, records: u64, error: &str) {
        self.errors.fetch_add(records.max(1), Ordering::Relaxed);
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.is_none() {
            *first = Some(error.to_string());
        }
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The whole run's histogram.
    pub fn total(&self) -> Histogram<u64> {
        self.histograms().total.clone()
    }

    /// The histogram since the last call, reset.
    fn take_interval(&self) -> Histogram<u64> {
        let mut histograms = self.histograms();
        let interval = histograms.interval.clone();
        histograms.interval.reset();
        interval
    }
}

/// The progress bar and the timeline: every 100 ms the bar, every second a timeline
/// point, until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<TimelinePoint>>,
}

/// What the progress bar counts towards.
pub enum ProgressTarget {
    Records(u64),
    Seconds(f64),
    /// Unknown in advance (consume to the end of the topic).
    Open,
}

impl Sampler {
    pub fn start(recorder: Arc<Recorder>, target: ProgressTarget, label: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample(recorder, target, label, stop.clone()));
        Self { stop, task }
    }

    /// Stops sampling; returns the timeline (one point per whole second, plus the last
    /// partial second).
    pub async fn finish(self) -> Vec<TimelinePoint> {
        self.stop.store(true, Ordering::Release);
        self.task.await.unwrap_or_default()
    }
}

fn progress_bar(target: &ProgressTarget, label: &str) -> ProgressBar {
    let (bar, template) = match target {
        ProgressTarget::Records(count) => (
            ProgressBar::new(*count),
            "{prefix} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {msg}",
        ),
        ProgressTarget::Seconds(seconds) => (
            ProgressBar::new((seconds * 10.0).ceil() as u64),
            "{prefix} [{elapsed_precise}] {bar:30} {msg}",
        ),
        ProgressTarget::Open => (
            ProgressBar::new_spinner(),
            "{prefix} [{elapsed_precise}] {spinner} {human_pos} {msg}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

async fn sample(
    recorder: Arc<Recorder>,
    target: ProgressTarget,
    label: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<TimelinePoint> {
    let bar = progress_bar(&target, label);
    let start = Instant::now();
    let mut timeline = Vec::new();
    let mut last_records = 0;
    let mut last_bytes = 0;
    let mut last_second = start;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let stopping = stop.load(Ordering::Acquire);
        let now = Instant::now();
        let records = recorder.records();
        match target {
            ProgressTarget::Records(_) | ProgressTarget::Open => bar.set_position(records),
            ProgressTarget::Seconds(_) => {
                bar.set_position((now.duration_since(start).as_secs_f64() * 10.0) as u64)
            }
        }
        let window = now.duration_since(last_second);
        if window >= Duration::from_secs(1) || (stopping && window >= Duration::from_millis(50)) {
            let bytes = recorder.bytes();
            let seconds = window.as_secs_f64();
            let interval = recorder.take_interval();
            let point = TimelinePoint::new(
                now.duration_since(start).as_secs_f64(),
                records - last_records,
                bytes - last_bytes,
                seconds,
                &interval,
            );
            bar.set_message(format!(
                "{:.0} rec/s, p99 {} µs",
                point.records_per_s, point.latency_us_p99
            ));
            timeline.push(point);
            last_records = records;
            last_bytes = bytes;
            last_second = now;
        }
        if stopping {
            break;
        }
    }
    bar.finish_and_clear();
    timeline
}

/// Record values: random upper-case letters, as Kafka's `ProducerPerformance` sends (so
/// compression ratios are comparable), fixed per producer.
pub fn payload(record_bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..record_bytes)
        .map(|_| {
            // xorshift64: cheap, deterministic, good enough for filler.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'A' + (state % 26) as u8
        })
        .collect()
}

/// Writes `value` in decimal into `buffer`, returning the digits (no allocation).
pub fn decimal_key(value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut index = buffer.len();
    let mut rest = value;
    loop {
        index -= 1;
        buffer[index] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buffer[index..]
}

/// A fixed-rate schedule: record `i` is due at `start + offset + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    interval_s: f64,
    offset_s: f64,
}

impl Schedule {
    /// `rate` records per second, this producer's records offset by `offset_s` (so several
    /// producers interleave instead of sending in lock step).
    pub fn new(start: Instant, rate: f64, offset_s: f64) -> Self {
        Self {
            start,
            interval_s: 1.0 / rate,
            offset_s,
        }
    }

    pub fn due(&self, index: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.offset_s + index as f64 * self.interval_s)
    }

    /// Waits until record `index` is due (tokio timers have millisecond resolution: a
    /// high rate is met in small bursts, each record still stamped with its own due time).
    pub async fn wait_for(&self, index: u64) -> Instant {
        let due = self.due(index);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        due
    }
}

/// Splits `total` into `parts` shares that differ by at most one.
pub fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts.max(1) as u64;
    let index = index as u64;
    total / parts + u64::from(index < total % parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(10, 3), (0, 4), (7, 1), (5, 8)] {
            let sum: u64 = (0..parts).map(|index| share(total, parts, index)).sum();
            assert_eq!(sum, total);
        }
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(share(10, 3, 2), 3);
    }

    #[test]
    fn decimal_keys_have_no_leading_zeros() {
        let mut buffer = [0u8; 20];
        assert_eq!(decimal_key(0, &mut buffer), b"0");
        assert_eq!(decimal_key(1234, &mut buffer), b"1234");
        assert_eq!(decimal_key(u64::MAX, &mut buffer), b"18446744073709551615");
    }

    #[test]
    fn payload_is_letters_and_deterministic() {
        let a = payload(64, 7);
        assert_eq!(a.len(), 64);
        assert!(a.iter().all(u8::is_ascii_uppercase));
        assert_eq!(a, payload(64, 7));
        assert_ne!(a, payload(64, 8));
    }

    #[test]
    fn schedule_spaces_records_evenly() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1000.0, 0.0005);
        assert_eq!(schedule.due(0), start + Duration::from_micros(500));
        assert_eq!(schedule.due(10), start + Duration::from_micros(10_500));
    }

    #[test]
    fn recorder_keeps_totals_and_resets_intervals() {
        let recorder = Recorder::default();
        recorder.record_latencies([5, 10, 0]);
        recorder.record_latency_n(100, 3);
        recorder.add(6, 600);
        assert_eq!(recorder.total().len(), 6);
        assert_eq!(recorder.take_interval().len(), 6);
        assert_eq!(recorder.take_interval().len(), 0);
        assert_eq!(recorder.total().min(), 1, "0 µs is recorded as 1");
        assert_eq!((recorder.records(), recorder.bytes()), (6, 600));
    }
}
