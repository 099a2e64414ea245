//! Process-wide Prometheus metrics: one private registry holding every
//! `kafki_*` metric, [`ShardMetrics`] (the per-shard handle the hot path
//! uses) and [`render`] (the text exposition served at `GET /metrics`).
//!
//! Every hot-path metric carries a `shard` label, so each shard thread only
//! touches its own atomics: no cross-core cache-line bouncing. A
//! [`ShardMetrics`] resolves its labeled children once (the per-API ones on
//! the first request of that API), so recording a request is an array index
//! plus a few relaxed atomic adds, with no hashing or locking.
//!
//! The registry is process-wide: several brokers in one process (tests)
//! share the same series, and two `ShardMetrics` built for the same shard id
//! share the same children.

use std::cell::{OnceCell, RefCell};
use std::sync::LazyLock;
use std::time::Duration;

use kafki_net::kafka_protocol::messages::ApiKey;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets, in seconds: 50 µs to 10 s. Fetch long-polls (up to the
/// client's `max.wait.ms`) land in the upper buckets by design.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// One slot per possible API key up to this bound; keys at or above it (or
/// negative, or unknown to kafka-protocol) share the `Unknown` slot.
const API_SLOTS: usize = 128;

/// The label used for API keys kafka-protocol does not know.
const UNKNOWN_API: &str = "Unknown";

/// How a fetch response's record bytes reached the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchPath {
    /// Zero-copy from the segment file (`sendfile`/splice).
    Sendfile,
    /// Served from an in-memory buffer (e.g. the active segment's tail).
    Memory,
    /// Read from the file into a buffer, then written: a region whose
    /// descriptor could not be shared (the descriptor table was full).
    /// TLS connections will take this path too.
    Copy,
}

impl FetchPath {
    /// The `path` label value.
    pub fn label(self) -> &'static str {
        match self {
            FetchPath::Sendfile => "sendfile",
            FetchPath::Memory => "memory",
            FetchPath::Copy => "copy",
        }
    }

    fn index(self) -> usize {
        match self {
            FetchPath::Sendfile => 0,
            FetchPath::Memory => 1,
            FetchPath::Copy => 2,
        }
    }

    const ALL: [FetchPath; 3] = [FetchPath::Sendfile, FetchPath::Memory, FetchPath::Copy];
}

/// The metric families, registered once in [`REGISTRY`].
struct Families {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    fetch_bytes: IntCounterVec,
    replica_answer_bytes: IntCounterVec,
    follower_fetch_partitions: IntCounterVec,
    preferred_replica_redirects: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    answer_writes: IntCounterVec,
    partitions: IntGaugeVec,
    connections: IntGaugeVec,
    inflight: IntGaugeVec,
    connections_refused: IntCounterVec,
    frames_refused: IntCounterVec,
    cleaner_passes: IntCounterVec,
    cleaner_read_bytes: IntCounterVec,
    cleaner_written_bytes: IntCounterVec,
    cleaner_removed_records: IntCounterVec,
    partition_moves: IntCounterVec,
    log_writes: IntCounterVec,
    log_written_bytes: IntCounterVec,
    log_zero_filled_bytes: IntCounterVec,
    log_fsyncs: IntCounterVec,
    log_fsync_micros: IntCounterVec,
    logs_unwritable: IntGaugeVec,
    data_dir_bytes: IntGaugeVec,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(Families::new);

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names, help and labels are compile-time constants: failure here is a
    // programming error caught by the tests, never something a client causes.
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("metric registered once");
    vec
}

impl Families {
    fn new() -> Self {
        let registry = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kafki_request_latency_seconds",
                "Time from a request's arrival to its response being ready, by shard and Kafka API.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["shard", "api"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(latency.clone()))
            .expect("metric registered once");
        Self {
            requests: counter_vec(
                &registry,
                "kafki_requests_total",
                "Kafka requests handled, by shard and API.",
                &["shard", "api"],
            ),
            latency,
            fetch_bytes: counter_vec(
                &registry,
                "kafki_fetch_bytes_total",
                "Record bytes returned by Fetch, by shard and how they reached the socket (sendfile: spliced from the file; memory: from the hot tail; copy: read from the file into memory).",
                &["shard", "path"],
            ),
            replica_answer_bytes: counter_vec(
                &registry,
                "kafki_replica_answer_bytes_total",
                "Record bytes this node's leader replicas read for follower nodes, by shard and how they reach the socket (sendfile: spliced from the segment file; memory: from the hot tail; copy: read from the file into memory).",
                &["shard", "path"],
            ),
            follower_fetch_partitions: counter_vec(
                &registry,
                "kafki_follower_fetch_partitions_total",
                "Partitions of consumer Fetch answers served by this node's follower replica (KIP-392), by shard of the connection.",
                &["shard"],
            ),
            preferred_replica_redirects: counter_vec(
                &registry,
                "kafki_preferred_replica_redirects_total",
                "Partitions of consumer Fetch answers where this leader named a preferred read replica on the client's rack instead of sending records (KIP-392, replica.selector.class), by shard of the connection.",
                &["shard"],
            ),
            bytes_in: counter_vec(
                &registry,
                "kafki_bytes_in_total",
                "Bytes read from Kafka client connections, by shard.",
                &["shard"],
            ),
            bytes_out: counter_vec(
                &registry,
                "kafki_bytes_out_total",
                "Bytes written to Kafka client connections, by shard.",
                &["shard"],
            ),
            answer_writes: counter_vec(
                &registry,
                "kafki_answer_writes_total",
                "Writes of answers to Kafka client connections, by shard; answers already there when one is written join it, so pipelining clients get several per write.",
                &["shard"],
            ),
            partitions: gauge_vec(
                &registry,
                "kafki_partitions",
                "Partitions currently open on the shard.",
                &["shard"],
            ),
            connections: gauge_vec(
                &registry,
                "kafki_connections",
                "Open Kafka client connections, by shard.",
                &["shard"],
            ),
            inflight: gauge_vec(
                &registry,
                "kafki_inflight_requests",
                "Requests received whose response is not yet written (queue depth), by shard.",
                &["shard"],
            ),
            connections_refused: counter_vec(
                &registry,
                "kafki_connections_refused_total",
                "Connections refused at accept, by shard and reason.",
                &["shard", "reason"],
            ),
            frames_refused: counter_vec(
                &registry,
                "kafki_frames_refused_total",
                "Request frames refused (too large, malformed, over budget...), by shard and reason.",
                &["shard", "reason"],
            ),
            cleaner_passes: counter_vec(
                &registry,
                "kafki_cleaner_passes_total",
                "Log cleaning (compaction) passes that ran, by shard.",
                &["shard"],
            ),
            cleaner_read_bytes: counter_vec(
                &registry,
                "kafki_cleaner_read_bytes_total",
                "Bytes the log cleaner read (key map and rewrite), by shard.",
                &["shard"],
            ),
            cleaner_written_bytes: counter_vec(
                &registry,
                "kafki_cleaner_written_bytes_total",
                "Bytes the log cleaner wrote into cleaned segments, by shard.",
                &["shard"],
            ),
            cleaner_removed_records: counter_vec(
                &registry,
                "kafki_cleaner_removed_records_total",
                "Records the log cleaner removed (superseded, expired tombstones, without key), by shard.",
                &["shard"],
            ),
            partition_moves: counter_vec(
                &registry,
                "kafki_partition_moves_total",
                "Partition hand-overs between shards run by the controller, by outcome (completed, aborted).",
                &["outcome"],
            ),
            log_writes: counter_vec(
                &registry,
                "kafki_log_writes_total",
                "O_DIRECT writes of appended data submitted by the partition logs, by shard.",
                &["shard"],
            ),
            log_written_bytes: counter_vec(
                &registry,
                "kafki_log_written_bytes_total",
                "Appended bytes written to segment files, by shard.",
                &["shard"],
            ),
            log_zero_filled_bytes: counter_vec(
                &registry,
                "kafki_log_zero_filled_bytes_total",
                "Zeros written ahead of appends to initialise segment space (log.preallocate.zero.fill), by shard.",
                &["shard"],
            ),
            log_fsyncs: counter_vec(
                &registry,
                "kafki_log_fsyncs_total",
                "fdatasync calls of the partition logs (group commits and seals), by shard.",
                &["shard"],
            ),
            log_fsync_micros: counter_vec(
                &registry,
                "kafki_log_fsync_microseconds_total",
                "Time spent waiting in those fdatasync calls, by shard (divided by kafki_log_fsyncs_total: the mean fsync latency).",
                &["shard"],
            ),
            logs_unwritable: gauge_vec(
                &registry,
                "kafki_logs_unwritable",
                "Partition logs that refuse writes, by shard and state: paused (disk or descriptor table full; resumes by itself) or failed (an I/O error; needs a restart).",
                &["shard", "state"],
            ),
            data_dir_bytes: gauge_vec(
                &registry,
                "kafki_data_dir_bytes",
                "The data directory's filesystem: free (available to the broker) and total bytes.",
                &["kind"],
            ),
            registry,
        }
    }
}

/// Counts one partition hand-over with `outcome` (`"completed"` or
/// `"aborted"`). Controller only, and rare: resolves the child each time.
pub fn count_partition_move(outcome: &'static str) {
    FAMILIES.partition_moves.with_label_values(&[outcome]).inc();
}

/// The label value for an API key: kafka-protocol's name (`Produce`,
/// `Fetch`, ...) or `Unknown`.
pub fn api_name(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(key) => format!("{key:?}"),
        Err(()) => UNKNOWN_API.to_string(),
    }
}

/// Resolved children for one API on one shard.
struct ApiMetrics {
    requests: IntCounter,
    latency: Histogram,
}

/// One shard's metric handles. Create one per shard, on the shard's thread,
/// and keep it for the shard's life (e.g. in `Shard`, or behind an `Rc`).
///
/// Not `Sync` (it caches lazily through `OnceCell`/`RefCell`); every method
/// takes `&self`. All updates are relaxed atomic operations on children only
/// this shard writes.
pub struct ShardMetrics {
    shard: String,
    /// Indexed by API key; the last slot is `Unknown`.
    apis: Box<[OnceCell<ApiMetrics>]>,
    fetch_bytes: [IntCounter; 3],
    replica_answer_bytes: [IntCounter; 3],
    follower_fetch_partitions: IntCounter,
    preferred_replica_redirects: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    answer_writes: IntCounter,
    partitions: IntGauge,
    connections: IntGauge,
    inflight: IntGauge,
    /// Refusal reasons seen so far (few, and refusals are rare).
    connections_refused: RefCell<Vec<(&'static str, IntCounter)>>,
    frames_refused: RefCell<Vec<(&'static str, IntCounter)>>,
    /// Passes, bytes read, bytes written, records removed.
    cleaner: [IntCounter; 4],
    /// Writes, written bytes, zero-filled bytes, fsyncs, fsync microseconds.
    storage: [IntCounter; 5],
    /// Logs paused, logs failed.
    unwritable: [IntGauge; 2],
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl ShardMetrics {
    /// Resolves the shard's children. The shard-level series (bytes,
    /// gauges, fetch paths) appear in [`render`] from now on, at zero;
    /// per-API series appear on that API's first request; refusal series on
    /// the first refusal with that reason.
    pub fn new(shard_id: usize) -> Self {
        let families = &*FAMILIES;
        let shard = shard_id.to_string();
        let label = shard.as_str();
        let fetch_bytes = FetchPath::ALL.map(|path| {
            families
                .fetch_bytes
                .with_label_values(&[label, path.label()])
        });
        let replica_answer_bytes = FetchPath::ALL.map(|path| {
            families
                .replica_answer_bytes
                .with_label_values(&[label, path.label()])
        });
        Self {
            apis: (0..=API_SLOTS).map(|_| OnceCell::new()).collect(),
            fetch_bytes,
            replica_answer_bytes,
            follower_fetch_partitions: families
                .follower_fetch_partitions
                .with_label_values(&[label]),
            preferred_replica_redirects: families
                .preferred_replica_redirects
                .with_label_values(&[label]),
            bytes_in: families.bytes_in.with_label_values(&[label]),
            bytes_out: families.bytes_out.with_label_values(&[label]),
            answer_writes: families.answer_writes.with_label_values(&[label]),
            partitions: families.partitions.with_label_values(&[label]),
            connections: families.connections.with_label_values(&[label]),
            inflight: families.inflight.with_label_values(&[label]),
            connections_refused: RefCell::new(Vec::new()),
            frames_refused: RefCell::new(Vec::new()),
            cleaner: [
                families.cleaner_passes.with_label_values(&[label]),
                families.cleaner_read_bytes.with_label_values(&[label]),
                families.cleaner_written_bytes.with_label_values(&[label]),
                families.cleaner_removed_records.with_label_values(&[label]),
            ],
            storage: [
                families.log_writes.with_label_values(&[label]),
                families.log_written_bytes.with_label_values(&[label]),
                families.log_zero_filled_bytes.with_label_values(&[label]),
                families.log_fsyncs.with_label_values(&[label]),
                families.log_fsync_micros.with_label_values(&[label]),
            ],
            unwritable: [
                families
                    .logs_unwritable
                    .with_label_values(&[label, "paused"]),
                families
                    .logs_unwritable
                    .with_label_values(&[label, "failed"]),
            ],
            shard,
        }
    }

    fn api(&self, api_key: i16) -> &ApiMetrics {
        let known = usize::try_from(api_key)
            .ok()
            .filter(|slot| *slot < API_SLOTS && ApiKey::try_from(api_key).is_ok());
        let slot = known.unwrap_or(API_SLOTS);
        self.apis[slot].get_or_init(|| {
            let name = if known.is_some() {
                api_name(api_key)
            } else {
                UNKNOWN_API.to_string()
            };
            let labels = [self.shard.as_str(), name.as_str()];
            ApiMetrics {
                requests: FAMILIES.requests.with_label_values(&labels),
                latency: FAMILIES.latency.with_label_values(&labels),
            }
        })
    }

    /// Counts one handled request of `api_key` and observes its latency.
    pub fn record_request(&self, api_key: i16, latency: Duration) {
        let api = self.api(api_key);
        api.requests.inc();
        api.latency.observe(latency.as_secs_f64());
    }

    /// Adds Fetch record bytes served through `path`.
    pub fn add_fetch_bytes(&self, path: FetchPath, bytes: u64) {
        self.fetch_bytes[path.index()].inc_by(bytes);
    }

    /// Counts record bytes a leader replica sent to a follower node.
    pub fn add_replica_answer_bytes(&self, path: FetchPath, bytes: u64) {
        self.replica_answer_bytes[path.index()].inc_by(bytes);
    }

    /// Counts one partition of a consumer Fetch answer a follower replica
    /// served (KIP-392).
    pub fn count_follower_fetch_partition(&self) {
        self.follower_fetch_partitions.inc();
    }

    /// Counts one partition of a consumer Fetch answer redirected to a
    /// preferred read replica (KIP-392).
    pub fn count_preferred_replica_redirect(&self) {
        self.preferred_replica_redirects.inc();
    }

    /// Adds bytes read from client sockets.
    pub fn add_bytes_in(&self, bytes: u64) {
        self.bytes_in.inc_by(bytes);
    }

    /// Counts one write of answers (`bytes` in all) to a client socket.
    pub fn answers_written(&self, bytes: u64) {
        self.answer_writes.inc();
        self.bytes_out.inc_by(bytes);
    }

    /// Sets the number of partitions open on this shard.
    pub fn set_partitions(&self, partitions: i64) {
        self.partitions.set(partitions);
    }

    /// A client connection was accepted (and not refused).
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// A connection counted by [`Self::connection_opened`] closed.
    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// A request was read and queued (queue depth + 1).
    pub fn request_started(&self) {
        self.inflight.inc();
    }

    /// A request counted by [`Self::request_started`] is done (response
    /// written, dropped, or its connection closed).
    pub fn request_finished(&self) {
        self.inflight.dec();
    }

    /// Counts one cleaning pass that ran.
    pub fn record_clean(&self, report: &kafki_storage::CleanReport) {
        if !report.ran {
            return;
        }
        self.cleaner[0].inc();
        self.cleaner[1].inc_by(report.bytes_read);
        self.cleaner[2].inc_by(report.bytes_written);
        self.cleaner[3].inc_by(report.records_removed);
    }

    /// Adds one log's write and sync counts since its last report.
    /// How many of the shard's logs refuse writes now.
    pub fn set_unwritable(&self, paused: usize, failed: usize) {
        self.unwritable[0].set(paused as i64);
        self.unwritable[1].set(failed as i64);
    }

    pub fn add_storage(&self, delta: &kafki_storage::LogStats) {
        self.storage[0].inc_by(delta.writes);
        self.storage[1].inc_by(delta.written_bytes);
        self.storage[2].inc_by(delta.zero_filled_bytes);
        self.storage[3].inc_by(delta.fsyncs);
        self.storage[4].inc_by(delta.fsync_micros);
    }

    /// A connection was refused at accept, e.g. `"connection_limit"`.
    pub fn connection_refused(&self, reason: &'static str) {
        refusal(
            &self.connections_refused,
            &FAMILIES.connections_refused,
            &self.shard,
            reason,
        )
        .inc();
    }

    /// A request frame was refused, e.g. `"too_large"`, `"malformed"`.
    pub fn frame_refused(&self, reason: &'static str) {
        refusal(
            &self.frames_refused,
            &FAMILIES.frames_refused,
            &self.shard,
            reason,
        )
        .inc();
    }
}

fn refusal(
    cache: &RefCell<Vec<(&'static str, IntCounter)>>,
    family: &IntCounterVec,
    shard: &str,
    reason: &'static str,
) -> IntCounter {
    let mut cache = cache.borrow_mut();
    if let Some((_, counter)) = cache.iter().find(|(seen, _)| *seen == reason) {
        return counter.clone();
    }
    let counter = family.with_label_values(&[shard, reason]);
    cache.push((reason, counter.clone()));
    counter
}

/// Every metric in the Prometheus text exposition format (version 0.0.4),
/// as served at `GET /metrics`. Safe to call from any thread.
pub fn render() -> String {
    let families = FAMILIES.registry.gather();
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(error) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(%error, "encoding metrics");
    }
    String::from_utf8(out)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Records the data directory's free and total bytes (process-wide).
pub fn set_data_dir_space(space: crate::disk::Space) {
    let families = &*FAMILIES;
    families
        .data_dir_bytes
        .with_label_values(&["free"])
        .set(space.free_bytes.min(i64::MAX as u64) as i64);
    families
        .data_dir_bytes
        .with_label_values(&["total"])
        .set(space.total_bytes.min(i64::MAX as u64) as i64);
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test uses its own shard ids, since the registry is process-wide.
    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn render_contains_every_metric_after_increments() {
        let metrics = ShardMetrics::new(9001);
        metrics.record_request(0, Duration::from_micros(300));
        metrics.record_request(1, Duration::from_millis(20));
        metrics.record_request(1, Duration::from_millis(30));
        metrics.record_request(-5, Duration::from_millis(1));
        metrics.record_request(30_000, Duration::from_millis(1));
        metrics.add_fetch_bytes(FetchPath::Sendfile, 1000);
        metrics.add_fetch_bytes(FetchPath::Memory, 200);
        metrics.add_fetch_bytes(FetchPath::Copy, 30);
        metrics.add_replica_answer_bytes(FetchPath::Sendfile, 4000);
        metrics.add_bytes_in(4096);
        metrics.answers_written(8192);
        metrics.count_follower_fetch_partition();
        metrics.count_follower_fetch_partition();
        metrics.count_preferred_replica_redirect();
        metrics.set_partitions(12);
        metrics.connection_opened();
        metrics.connection_opened();
        metrics.connection_closed();
        metrics.request_started();
        metrics.request_started();
        metrics.request_finished();
        metrics.connection_refused("connection_limit");
        metrics.connection_refused("connection_limit");
        metrics.frame_refused("too_large");
        metrics.record_clean(&kafki_storage::CleanReport {
            ran: true,
            bytes_read: 100,
            bytes_written: 40,
            records_removed: 7,
            ..Default::default()
        });

        let text = render();
        for name in [
            "kafki_requests_total",
            "kafki_request_latency_seconds",
            "kafki_fetch_bytes_total",
            "kafki_replica_answer_bytes_total",
            "kafki_follower_fetch_partitions_total",
            "kafki_preferred_replica_redirects_total",
            "kafki_bytes_in_total",
            "kafki_bytes_out_total",
            "kafki_answer_writes_total",
            "kafki_partitions",
            "kafki_connections",
            "kafki_inflight_requests",
            "kafki_connections_refused_total",
            "kafki_frames_refused_total",
            "kafki_cleaner_passes_total",
            "kafki_cleaner_read_bytes_total",
            "kafki_cleaner_written_bytes_total",
            "kafki_cleaner_removed_records_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
            let kind = if name == "kafki_request_latency_seconds" {
                "histogram"
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "no TYPE {kind} for {name}"
            );
        }
        let s = r#"shard="9001""#;
        let check = |series: &str, expected: f64| {
            assert_eq!(
                value_of(&text, series),
                Some(expected),
                "{series} in\n{text}"
            );
        };
        check(
            &format!(r#"kafki_requests_total{{api="Produce",{s}}}"#),
            1.0,
        );
        check(&format!(r#"kafki_requests_total{{api="Fetch",{s}}}"#), 2.0);
        check(
            &format!(r#"kafki_requests_total{{api="Unknown",{s}}}"#),
            2.0,
        );
        check(
            &format!(r#"kafki_request_latency_seconds_count{{api="Fetch",{s}}}"#),
            2.0,
        );
        check(
            &format!(r#"kafki_request_latency_seconds_bucket{{api="Fetch",{s},le="0.025"}}"#),
            1.0,
        );
        check(
            &format!(r#"kafki_fetch_bytes_total{{path="sendfile",{s}}}"#),
            1000.0,
        );
        check(
            &format!(r#"kafki_fetch_bytes_total{{path="memory",{s}}}"#),
            200.0,
        );
        check(
            &format!(r#"kafki_fetch_bytes_total{{path="copy",{s}}}"#),
            30.0,
        );
        check(&format!(r#"kafki_bytes_in_total{{{s}}}"#), 4096.0);
        check(
            &format!(r#"kafki_follower_fetch_partitions_total{{{s}}}"#),
            2.0,
        );
        check(
            &format!(r#"kafki_preferred_replica_redirects_total{{{s}}}"#),
            1.0,
        );
        check(&format!(r#"kafki_bytes_out_total{{{s}}}"#), 8192.0);
        check(&format!(r#"kafki_answer_writes_total{{{s}}}"#), 1.0);
        check(&format!(r#"kafki_partitions{{{s}}}"#), 12.0);
        check(&format!(r#"kafki_connections{{{s}}}"#), 1.0);
        check(&format!(r#"kafki_inflight_requests{{{s}}}"#), 1.0);
        check(
            &format!(r#"kafki_connections_refused_total{{reason="connection_limit",{s}}}"#),
            2.0,
        );
        check(
            &format!(r#"kafki_frames_refused_total{{reason="too_large",{s}}}"#),
            1.0,
        );
        check(&format!(r#"kafki_cleaner_passes_total{{{s}}}"#), 1.0);
        check(&format!(r#"kafki_cleaner_read_bytes_total{{{s}}}"#), 100.0);
        check(
            &format!(r#"kafki_cleaner_written_bytes_total{{{s}}}"#),
            40.0,
        );
        check(
            &format!(r#"kafki_cleaner_removed_records_total{{{s}}}"#),
            7.0,
        );

        // Exposition text: every line is a comment or `name{labels} value`.
        for line in text.lines().filter(|line| !line.is_empty()) {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(series.starts_with("kafki_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn shard_series_exist_at_zero_and_shards_are_separate() {
        let a = ShardMetrics::new(9101);
        let b = ShardMetrics::new(9102);
        a.add_bytes_in(5);
        let text = render();
        assert_eq!(
            value_of(&text, r#"kafki_bytes_in_total{shard="9101"}"#),
            Some(5.0)
        );
        assert_eq!(
            value_of(&text, r#"kafki_bytes_in_total{shard="9102"}"#),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, r#"kafki_connections{shard="9102"}"#),
            Some(0.0)
        );
        drop(b);
    }

    #[test]
    fn api_names_come_from_kafka_protocol() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1), "Fetch");
        assert_eq!(api_name(18), "ApiVersions");
        assert_eq!(api_name(-1), "Unknown");
        assert_eq!(api_name(i16::MAX), "Unknown");
    }
}
