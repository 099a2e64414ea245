//! Per-log configuration, with Kafka's defaults where Kafka has the setting.

use std::time::Duration;

/// When the log calls `fdatasync`, and so when an append becomes *durable*.
///
/// Every append first becomes *ordered* (offsets assigned, readable), then
/// *written* (its bytes were handed to the device with `O_DIRECT`, so they are
/// out of our memory but may still sit in the device's volatile cache), then
/// *durable* (covered by a completed `fdatasync`, which flushes that cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append is synced: the flusher writes whatever is pending and
    /// follows each write with one `fdatasync` shared by all appends it covers
    /// (group commit). An append is durable as soon as its group's sync ends.
    EveryAppend,
    /// Sync once `messages` records were written since the last sync, or
    /// `interval` after the first unsynced write, whichever comes first
    /// (Kafka's `flush.messages` / `flush.ms`). Up to that much acknowledged
    /// data can be lost in a power failure; a process crash loses nothing that
    /// was written.
    Interval { messages: u64, interval: Duration },
    /// Never sync while running (sealed segments and clean shutdown still
    /// sync). A power failure can lose everything since the last roll; a
    /// process crash loses only what was not yet written.
    Never,
}

/// Whether the log keeps producer timestamps or stamps batches itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// How the cleaner compacts a log (`cleanup.policy=compact`), with Kafka's
/// per-topic settings and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionConfig {
    /// Clean only when dirty bytes / (clean + dirty bytes) reach this
    /// (`min.cleanable.dirty.ratio`, 0.5).
    pub min_cleanable_dirty_ratio: f64,
    /// A record stays uncompacted for at least this long: sealed segments
    /// whose newest timestamp is younger are not cleaned yet
    /// (`min.compaction.lag.ms`, 0).
    pub min_compaction_lag: Duration,
    /// A record stays ineligible for compaction at most this long: the log
    /// is cleaned whatever its dirty ratio once its oldest dirty batch is
    /// older, and the active segment is rolled once it is older
    /// (`max.compaction.lag.ms`; `None` = Kafka's default, `Long.MAX_VALUE`).
    pub max_compaction_lag: Option<Duration>,
    /// How long a tombstone stays after the cleaning that first moved it
    /// into the clean part of the log (`delete.retention.ms`, 1 day).
    pub delete_retention: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag: Duration::ZERO,
            max_compaction_lag: None,
            delete_retention: Duration::from_millis(86_400_000),
        }
    }
}

/// Settings of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this size
    /// (`log.segment.bytes`, default 1 GiB).
    pub segment_bytes: u64,
    /// Roll when the active segment is older than this (`log.roll.ms`, 7 days).
    pub segment_age: Duration,
    /// Add an offset/time index entry after this many bytes
    /// (`log.index.interval.bytes`, 4096).
    pub index_interval_bytes: u64,
    /// Delete the oldest sealed segments while the log is larger than this
    /// (`log.retention.bytes`; `None` = unlimited). Both retention limits
    /// apply only with `cleanup.policy` `delete` (or `compact,delete`): the
    /// broker sets them to `None` for a compact-only topic.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest timestamp is older than this
    /// (`log.retention.ms`, 7 days; `None` = forever).
    pub retention_age: Option<Duration>,
    /// Largest batch accepted (`max.message.bytes`, 1 MiB + overhead).
    pub max_batch_bytes: usize,
    pub sync_policy: SyncPolicy,
    pub timestamp_type: TimestampType,
    /// Segment files grow by at most this many bytes at a time.
    pub preallocate_bytes: u64,
    /// How they grow: `fallocate` (default), or zeros written ahead of the
    /// data (see [`crate::space`]).
    pub preallocation: crate::space::Preallocation,
    /// Appended bytes not yet written to the file: appends wait above this.
    pub write_buffer_bytes_max: u64,
    /// Recently appended batches kept in memory for readers, in bytes.
    /// Unwritten batches are always kept, on top of this.
    pub hot_tail_bytes_max: u64,
    /// Largest single write submitted to the device.
    pub write_chunk_bytes: usize,
    /// Writes of one flush in flight at once. With 1 MiB chunks, 8 keeps every
    /// buffer inside glommio's registered I/O memory (10 MiB by default);
    /// deeper queues fall back to fresh heap buffers and measured slower here.
    pub write_depth: usize,
    /// `Some` when the log is compacted (`cleanup.policy` holds `compact`).
    pub compaction: Option<CompactionConfig>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_batch_bytes: 1_048_588,
            sync_policy: SyncPolicy::EveryAppend,
            timestamp_type: TimestampType::CreateTime,
            preallocate_bytes: 32 << 20,
            preallocation: crate::space::Preallocation::Zeroed,
            write_buffer_bytes_max: 32 << 20,
            hot_tail_bytes_max: 16 << 20,
            write_chunk_bytes: 1 << 20,
            write_depth: 8,
            compaction: None,
        }
    }
}
