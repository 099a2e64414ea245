//! The partition log: append, read, lookups, truncation, retention, flushing
//! and crash recovery for one partition directory `<topic>-<partition>/`.
//!
//! Lives on exactly one glommio executor (the partition's shard); it is
//! `!Send` and uses no locks on the data path. Its invariants:
//!
//! * Offsets strictly increase: every batch starts after the previous
//!   batch's last offset. They are contiguous (the next batch starts right
//!   after it, across segments too) everywhere except below the cleaner
//!   checkpoint, where compaction removed records (see `compaction.rs`).
//! * `log_start_offset <= durable_offset <= written_offset <= next_offset`
//!   except that the log start may pass the durable point after DeleteRecords.
//! * Every batch that is not yet written (at or above `written_offset`) is in
//!   the hot-tail cache, so readers always find it in memory.
//! * Only the flusher task (or a caller holding the flush lock) writes files,
//!   and there is one flush at a time, so a rewrite of the partial tail block
//!   can never race an older write of the same block.
//! * No `RefCell` borrow is held across an `.await`: each step takes an owned
//!   plan out of the state, drops the borrow, then does the I/O.
//!
//! An append goes through three stages: *ordered* (`append` returns: offsets
//! assigned, readable), *written* (`wait_written`: bytes handed to the device
//! with `O_DIRECT`) and *durable* (`wait_durable`: covered by `fdatasync`).
//!
//! This file holds the [`PartitionLog`] type, its shared state, open and
//! close, append and the stage waits. Reading is in `read.rs`, writing and
//! syncing in `flush.rs`, roll, truncation and retention in
//! `maintenance.rs`, opening a directory in `recovery.rs` and cleaning in
//! `compaction.rs`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint::{self, CleanerCheckpoint, LeaderEpochCache};
use crate::config::{LogConfig, TimestampType};
use crate::dma::prime_device;
use crate::error::{LogError, LogResult};
use crate::segment::{
    offset_index_name, parse_log_file_name, time_index_name, OffsetRule, Segment, SegmentFile,
    BLOCK_BYTES,
};
use crate::space;

mod compaction;
mod flush;
mod maintenance;
mod read;
mod recovery;
mod repair;

pub use repair::{DamagedBatch, RepairRefusal};

use flush::{finish_all_fills, run_flusher, sync_active, write_pending};
use recovery::recover;

/// What an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Set when the log stamped the batch (LogAppendTime topics).
    pub log_append_time_ms: Option<i64>,
}

/// A piece of a read: bytes the log holds in memory, or a region of a
/// segment file for the network layer to send without copying.
#[derive(Clone)]
pub enum ReadChunk {
    Memory(Bytes),
    File {
        file: Rc<SegmentFile>,
        position: u64,
        len: u64,
    },
}

impl ReadChunk {
    pub fn len(&self) -> u64 {
        match self {
            ReadChunk::Memory(bytes) => bytes.len() as u64,
            ReadChunk::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for ReadChunk {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadChunk::Memory(bytes) => write!(formatter, "Memory({} bytes)", bytes.len()),
            ReadChunk::File {
                file,
                position,
                len,
            } => {
                write!(formatter, "File({}@{position}+{len})", file.path.display())
            }
        }
    }
}

/// Whole batches starting with the one that holds the requested offset.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub chunks: Vec<ReadChunk>,
    pub bytes: u64,
    /// One past the last offset returned (the next offset to ask for).
    pub next_offset: u64,
}

impl ReadResult {
    /// Copies every chunk into one buffer (the copy path: TLS, tests, tools).
    pub async fn load(&self) -> LogResult<Bytes> {
        let mut out = BytesMut::with_capacity(self.bytes as usize);
        for chunk in &self.chunks {
            match chunk {
                ReadChunk::Memory(bytes) => out.extend_from_slice(bytes),
                ReadChunk::File {
                    file,
                    position,
                    len,
                } => file.read_into(*position, *len as usize, &mut out).await?,
            }
        }
        Ok(out.freeze())
    }
}

/// A batch found by a timestamp lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampHit {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

/// Counters of one log, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub appended_batches: u64,
    pub appended_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
    /// Zeros written ahead of the data ([`space::Preallocation::Zeroed`]).
    pub zero_filled_bytes: u64,
    pub fsyncs: u64,
    /// Time spent waiting in those fdatasync calls, in microseconds.
    pub fsync_micros: u64,
    pub segments: u64,
}

/// Whether a log takes writes (for health reports and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteState {
    Writable,
    /// A transient error (full disk, full descriptor table) paused writes;
    /// they resume by themselves once a retry succeeds.
    Paused(String),
    /// A permanent error: writes are refused until the log is reopened.
    Failed(String),
}

/// How often a paused log retries its pending writes.
pub const PAUSED_RETRY: Duration = Duration::from_millis(500);

/// Offsets and sizes of the log at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start_offset: u64,
    pub next_offset: u64,
    pub written_offset: u64,
    pub durable_offset: u64,
    pub size_bytes: u64,
}

/// One recently appended batch, held in memory. The header is the patched
/// copy (offset, epoch, maybe timestamp); the body is the producer's bytes.
struct CachedBatch {
    base_offset: u64,
    last_offset: u64,
    max_timestamp: i64,
    records: u64,
    segment_base: u64,
    position: u64,
    header: Bytes,
    body: Bytes,
}

impl CachedBatch {
    fn total_bytes(&self) -> u64 {
        (self.header.len() + self.body.len()) as u64
    }
}

struct LogState {
    segments: Vec<Segment>,
    log_start_offset: u64,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    hot: VecDeque<CachedBatch>,
    hot_bytes: u64,
    unwritten_bytes: u64,
    epochs: LeaderEpochCache,
    epochs_dirty: bool,
    /// Records written since the last sync, and when the first of them was.
    unsynced_records: u64,
    first_unsynced_write: Option<Instant>,
    /// A caller of `wait_durable` needs a sync up to here.
    sync_requested_until: u64,
    failed: Option<String>,
    /// Set while writes are paused by a transient error (full disk, full
    /// descriptor table); the flusher retries every [`PAUSED_RETRY`].
    paused: Option<String>,
    closing: bool,
    stats: LogStats,
    /// Where compaction stands; every batch it removed lies below
    /// `cleaner.first_dirty()`.
    cleaner: CleanerCheckpoint,
    /// Opened after a clean shutdown and unchanged on disk since: the
    /// clean-shutdown marker and the active segment's index files are still
    /// in place and true, so a close has nothing to write. Whatever changes
    /// a file first calls [`maintenance::leave_clean_state`]. This keeps the
    /// clean stop and start of a node with thousands of idle partitions
    /// nearly free (they took ~10 file syncs each, 58 s for 20 000
    /// partitions).
    pristine: bool,
}

impl LogState {
    fn active(&self) -> &Segment {
        // The segment list is never empty: open and truncation keep one.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    fn segment_index(&self, base_offset: u64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&base_offset, |segment| segment.base_offset)
            .ok()
    }

    /// The segment a read plan was made for, if it is still the same one: the
    /// cleaner may have replaced it (same base offset, new file) since.
    fn planned_segment(
        &mut self,
        base_offset: u64,
        file: &Rc<SegmentFile>,
    ) -> Option<&mut Segment> {
        let position = self.segment_index(base_offset)?;
        let segment = &mut self.segments[position];
        segment
            .file
            .as_ref()
            .is_some_and(|known| Rc::ptr_eq(known, file))
            .then_some(segment)
    }

    /// How scans of the segment at `position` check offsets.
    fn offset_rule(&self, position: usize) -> OffsetRule {
        let next_base = self
            .segments
            .get(position + 1)
            .map(|segment| segment.base_offset);
        self.segments[position].offset_rule(next_base, self.cleaner.gaps_below())
    }

    /// Index of the segment that holds `offset` (or the first after a gap).
    fn segment_for_offset(&self, offset: u64) -> usize {
        let after = self
            .segments
            .partition_point(|segment| segment.base_offset <= offset);
        let candidate = after.saturating_sub(1);
        if self.segments[candidate].next_offset <= offset && candidate + 1 < self.segments.len() {
            candidate + 1
        } else {
            candidate
        }
    }

    fn check_writable(&self) -> LogResult<()> {
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        if let Some(reason) = &self.paused {
            return Err(LogError::Paused(reason.clone()));
        }
        if self.closing {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Appends never go back to an older leader epoch than the log holds.
    fn check_epoch(&self, leader_epoch: i32) -> LogResult<()> {
        match self.epochs.latest_epoch() {
            Some(latest) if leader_epoch < latest => Err(LogError::StaleLeaderEpoch {
                epoch: leader_epoch,
                latest,
            }),
            _ => Ok(()),
        }
    }

    /// Never written (or emptied): one segment without a file, no offsets.
    fn holds_nothing(&self) -> bool {
        self.segments.len() == 1
            && self.segments[0].file.is_none()
            && self.next_offset == self.log_start_offset
            && self.hot.is_empty()
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.size_bytes).sum()
    }

    /// Drops written batches from the front of the hot tail while it is over
    /// its budget (or below the log start).
    fn evict_hot(&mut self, budget: u64) {
        while let Some(front) = self.hot.front() {
            let written = front.last_offset < self.written_offset;
            let below_start = front.last_offset < self.log_start_offset;
            if !(written && (self.hot_bytes > budget || below_start)) {
                break;
            }
            self.hot_bytes -= front.total_bytes();
            self.hot.pop_front();
        }
    }
}

/// A set of wakers to wake together (single-threaded, executor-local).
#[derive(Default)]
struct WaitList {
    wakers: RefCell<Vec<Waker>>,
}

impl WaitList {
    fn register(&self, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        if !wakers.iter().any(|known| known.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }
}

/// State shared by the log handle and its flusher task.
struct Shared {
    dir: PathBuf,
    config: LogConfig,
    state: RefCell<LogState>,
    /// One flush (or truncation, retention, close) at a time.
    flush_lock: Semaphore,
    /// Leader-epoch checkpoint copies taken for writing, and the number of
    /// the newest one on disk (see `flush::store_epochs`).
    epochs_taken: Cell<u64>,
    epochs_written: std::sync::Arc<std::sync::Mutex<u64>>,
    /// Raised when there is something for the flusher to do.
    flusher_work: Cell<bool>,
    flusher_waker: RefCell<Option<Waker>>,
    /// Woken after every flush: stage waiters and appenders waiting for room.
    progress: WaitList,
    /// A cleaning pass is running (one at a time).
    compacting: Cell<bool>,
    /// `cleaner-checkpoint` on disk may still list a pass's pending groups.
    cleaner_pending: Cell<bool>,
}

fn offsets_of(state: &LogState) -> LogOffsets {
    LogOffsets {
        log_start_offset: state.log_start_offset,
        next_offset: state.next_offset,
        written_offset: state.written_offset,
        durable_offset: state.durable_offset,
        size_bytes: state.size_bytes(),
    }
}

/// See [`PartitionLog::progress_watcher`].
pub struct ProgressWatcher {
    shared: Rc<Shared>,
}

impl ProgressWatcher {
    /// The log's offsets now.
    pub fn offsets(&self) -> LogOffsets {
        offsets_of(&self.shared.state.borrow())
    }

    /// Whether the log will not make progress any more (closing, closed
    /// or failed): a waiter must stop waiting on it.
    pub fn is_finished(&self) -> bool {
        let state = self.shared.state.borrow();
        state.closing || state.failed.is_some()
    }

    /// As [`PartitionLog::wait_for_progress`].
    pub async fn wait_for_progress(&self, since: LogOffsets) {
        poll_fn(|context| {
            let state = self.shared.state.borrow();
            let moved = state.written_offset != since.written_offset
                || state.durable_offset != since.durable_offset
                || state.next_offset != since.next_offset;
            if moved || state.failed.is_some() || state.closing {
                return Poll::Ready(());
            }
            self.shared.progress.register(context.waker());
            Poll::Pending
        })
        .await
    }
}

/// A partition log. Create with [`PartitionLog::open`]; end with
/// [`PartitionLog::close`] (clean) or drop (treated as a crash on next open).
pub struct PartitionLog {
    shared: Rc<Shared>,
    flusher: Option<glommio::Task<()>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering it if the last
    /// shutdown was not clean. Must run inside a glommio executor.
    pub async fn open(dir: impl Into<PathBuf>, config: LogConfig) -> LogResult<Self> {
        let dir = dir.into();
        validate_config(&config)?;
        std::fs::create_dir_all(&dir).map_err(|source| LogError::io("create dir", &dir, source))?;
        let probe_dir = dir
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(&dir);
        prime_device(probe_dir).await?;
        if crate::dma::is_tmpfs(&dir) {
            tracing::warn!(dir = %dir.display(), "log directory is on tmpfs: O_DIRECT and fdatasync do nothing there, nothing is durable");
        }
        let state = recover(&dir, &config).await?;
        let shared = Rc::new(Shared {
            dir,
            config,
            state: RefCell::new(state),
            flush_lock: Semaphore::new(1),
            epochs_taken: Cell::new(0),
            epochs_written: std::sync::Arc::new(std::sync::Mutex::new(0)),
            flusher_work: Cell::new(false),
            flusher_waker: RefCell::new(None),
            progress: WaitList::default(),
            compacting: Cell::new(false),
            cleaner_pending: Cell::new(false),
        });
        let flusher = glommio::spawn_local(run_flusher(shared.clone()));
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    pub fn offsets(&self) -> LogOffsets {
        offsets_of(&self.shared.state.borrow())
    }

    pub fn stats(&self) -> LogStats {
        let state = self.shared.state.borrow();
        LogStats {
            segments: state.segments.len() as u64,
            ..state.stats
        }
    }

    /// Segments whose file is open (each holds
    /// [`crate::segment::DESCRIPTORS_PER_SEGMENT`] descriptors).
    pub fn open_segment_files(&self) -> u64 {
        let state = self.shared.state.borrow();
        state
            .segments
            .iter()
            .filter(|segment| segment.file.is_some())
            .count() as u64
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        let state = self.shared.state.borrow();
        state
            .segments
            .iter()
            .map(|segment| segment.base_offset)
            .collect()
    }

    /// Base offset and data bytes of each segment, oldest first (from
    /// memory: no `stat` of the files).
    pub fn segment_sizes(&self) -> Vec<(u64, u64)> {
        let state = self.shared.state.borrow();
        state
            .segments
            .iter()
            .map(|segment| (segment.base_offset, segment.size_bytes))
            .collect()
    }

    pub fn leader_epochs(&self) -> Vec<(i32, u64)> {
        self.shared.state.borrow().epochs.entries().to_vec()
    }

    /// OffsetForLeaderEpoch: the largest epoch ≤ `epoch` and where it ends.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        let state = self.shared.state.borrow();
        state.epochs.end_offset_for(epoch, state.next_offset)
    }

    /// Appends one producer batch (stage *ordered*), waiting first while the
    /// write buffer is full. Returns the offsets it was given.
    pub async fn append(&self, batch: Bytes, leader_epoch: i32) -> LogResult<AppendInfo> {
        self.wait_for_buffer_room().await?;
        self.append_now(batch, leader_epoch)
    }

    /// Appends without waiting for buffer room (the buffer may overshoot its
    /// limit by this batch). Validates the batch fully first: nothing is
    /// appended unless it is a well-formed v2 batch with a correct CRC.
    pub fn append_now(&self, batch: Bytes, leader_epoch: i32) -> LogResult<AppendInfo> {
        let config = &self.shared.config;
        if batch.len() > config.max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                limit: config.max_batch_bytes,
            });
        }
        let original = batch::validate_producer_batch(&batch)?;
        let mut state = self.shared.state.borrow_mut();
        state.check_writable()?;
        state.check_epoch(leader_epoch)?;
        let now = now_ms();
        let total = batch.len() as u64;
        maybe_roll(&mut state, config, total, original.last_offset_delta, now);
        let base_offset = state.next_offset;
        let mut header = batch::patched_header(&batch, base_offset as i64, leader_epoch);
        let body = batch.slice(BATCH_HEADER_BYTES..);
        let log_append_time_ms =
            (config.timestamp_type == TimestampType::LogAppendTime).then(|| {
                batch::apply_log_append_time(&mut header, &body, now);
                now
            });
        let patched = BatchHeader::parse(&header)?;
        let last_offset = place_batch(
            &mut state,
            config,
            &patched,
            header.freeze(),
            body,
            original.records_count,
            leader_epoch,
            now,
        );
        drop(state);
        self.shared.wake_flusher();
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms,
        })
    }

    /// A follower's append: a batch exactly as the leader stored it (its
    /// offsets, leader epoch and timestamps kept, nothing patched). Its
    /// base offset must not be below this log's end; it may be above it
    /// (a compacted leader log has gaps). Validated first (shape, CRC);
    /// nothing is appended otherwise. Waits for buffer room like
    /// [`PartitionLog::append`].
    pub async fn append_replicated(&self, batch: Bytes) -> LogResult<AppendInfo> {
        self.wait_for_buffer_room().await?;
        let config = &self.shared.config;
        if batch.len() > config.max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                limit: config.max_batch_bytes,
            });
        }
        let header = batch::validate_stored_batch(&batch)?;
        if header.total_bytes() != batch.len() {
            return Err(LogError::InvalidBatch(
                crate::error::BatchError::TrailingBytes {
                    batch_bytes: header.total_bytes(),
                    buffer_bytes: batch.len(),
                },
            ));
        }
        let mut state = self.shared.state.borrow_mut();
        state.check_writable()?;
        let base_offset = u64::try_from(header.base_offset).unwrap_or(0);
        if header.base_offset < 0 || base_offset < state.next_offset {
            return Err(LogError::OffsetOutOfOrder {
                base_offset: header.base_offset,
                log_end_offset: state.next_offset,
            });
        }
        let leader_epoch = header.partition_leader_epoch;
        state.check_epoch(leader_epoch)?;
        let now = now_ms();
        // A gap: the next batch starts later (offsets the leader's cleaner
        // removed); the active segment keeps its base.
        state.next_offset = base_offset;
        maybe_roll(
            &mut state,
            config,
            batch.len() as u64,
            header.last_offset_delta,
            now,
        );
        let head = batch.slice(..BATCH_HEADER_BYTES);
        let body = batch.slice(BATCH_HEADER_BYTES..);
        let last_offset = place_batch(
            &mut state,
            config,
            &header,
            head,
            body,
            header.records_count,
            leader_epoch,
            now,
        );
        drop(state);
        self.shared.wake_flusher();
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms: None,
        })
    }

    /// Waits while the write buffer is full. A caller that must check
    /// something and append atomically (sequence numbers) waits here first,
    /// then checks and calls [`PartitionLog::append_now`] with no await between.
    pub async fn wait_for_buffer_room(&self) -> LogResult<()> {
        let limit = self.shared.config.write_buffer_bytes_max;
        poll_fn(|context| {
            let state = self.shared.state.borrow();
            if let Err(error) = state.check_writable() {
                return Poll::Ready(Err(error));
            }
            if state.unwritten_bytes < limit {
                return Poll::Ready(Ok(()));
            }
            self.shared.progress.register(context.waker());
            drop(state);
            self.shared.wake_flusher();
            Poll::Pending
        })
        .await
    }

    /// Waits until every offset below `end_offset` is written to its file.
    pub async fn wait_written(&self, end_offset: u64) -> LogResult<()> {
        self.wait_until(end_offset, false).await
    }

    /// Waits until every offset below `end_offset` is durable, asking for a
    /// sync if the policy would not do one soon (group commit: concurrent
    /// callers share one `fdatasync`).
    pub async fn wait_durable(&self, end_offset: u64) -> LogResult<()> {
        {
            let mut state = self.shared.state.borrow_mut();
            state.sync_requested_until = state.sync_requested_until.max(end_offset);
        }
        self.shared.wake_flusher();
        self.wait_until(end_offset, true).await
    }

    async fn wait_until(&self, end_offset: u64, durable: bool) -> LogResult<()> {
        poll_fn(|context| {
            let state = self.shared.state.borrow();
            let reached = if durable {
                state.durable_offset
            } else {
                state.written_offset
            };
            if reached >= end_offset.min(state.next_offset) {
                return Poll::Ready(Ok(()));
            }
            if let Some(reason) = &state.failed {
                return Poll::Ready(Err(LogError::Failed(reason.clone())));
            }
            // The batch stays queued and is written once the pause ends;
            // its producer hears of the pause now rather than at its
            // timeout (a retry is recognised as a duplicate when the
            // producer is idempotent).
            if let Some(reason) = &state.paused {
                return Poll::Ready(Err(LogError::Paused(reason.clone())));
            }
            self.shared.progress.register(context.waker());
            Poll::Pending
        })
        .await
    }

    /// Waits until the written or durable offset moves past `since` (or the
    /// log fails or closes). Fetch long polls wait on this.
    pub async fn wait_for_progress(&self, since: LogOffsets) {
        poll_fn(|context| {
            let state = self.shared.state.borrow();
            let moved = state.written_offset != since.written_offset
                || state.durable_offset != since.durable_offset
                || state.next_offset < since.next_offset;
            if moved || state.failed.is_some() || state.closing {
                return Poll::Ready(());
            }
            self.shared.progress.register(context.waker());
            Poll::Pending
        })
        .await
    }

    /// A handle that waits for this log's progress without holding the log
    /// (a replication driver parks on it while the partition may close).
    pub fn progress_watcher(&self) -> ProgressWatcher {
        ProgressWatcher {
            shared: self.shared.clone(),
        }
    }

    /// False once the log failed (a write error) or is closing: it will not
    /// make progress any more.
    pub fn is_healthy(&self) -> bool {
        let state = self.shared.state.borrow();
        state.failed.is_none() && !state.closing
    }

    /// Whether the log takes writes now, and if not why.
    pub fn write_state(&self) -> WriteState {
        let state = self.shared.state.borrow();
        if let Some(reason) = &state.failed {
            WriteState::Failed(reason.clone())
        } else if let Some(reason) = &state.paused {
            WriteState::Paused(reason.clone())
        } else {
            WriteState::Writable
        }
    }

    /// Writes everything appended so far and syncs it.
    pub async fn flush(&self) -> LogResult<()> {
        let end = self.shared.state.borrow().next_offset;
        self.wait_durable(end).await
    }

    /// Writes and syncs everything, writes the indexes and checkpoints, and
    /// leaves the clean-shutdown marker so the next open skips the rescan.
    ///
    /// A log that changed nothing on disk since a clean open writes nothing:
    /// its marker and files are still those of the last clean close. The
    /// index and checkpoint files of a changed log are written and synced
    /// on the executor's blocking threads, so a shard closing many logs at
    /// once has their syncs overlap (and the file system commit them
    /// together) instead of running one after the other on the shard.
    pub async fn close(mut self) -> LogResult<()> {
        self.seal(Durability::SyncedHere).await?;
        self.stop_flusher().await
    }

    /// Closes for a node stop, which closes thousands of logs at once:
    /// every file is written as [`PartitionLog::close`] writes it, but
    /// nothing is synced, and the recovery point and clean-shutdown marker
    /// (which promise that the files are on disk) are left to
    /// [`finish_stop`], which syncs each file system once first. Returns
    /// what is left to do, `None` when the log needs nothing more. A crash
    /// before [`finish_stop`] leaves no marker: the next open recovers.
    pub async fn close_unsynced(mut self) -> LogResult<Option<PendingMarker>> {
        let pending = self.seal(Durability::Deferred).await?;
        self.stop_flusher().await?;
        Ok(pending)
    }

    /// The common part of the closes: write everything, seal the active
    /// segment, then (synced here) mark the log clean or (deferred) say
    /// what is left.
    async fn seal(&self, durability: Durability) -> LogResult<Option<PendingMarker>> {
        let shared = self.shared.clone();
        let permit = shared.lock().await?;
        write_pending(&shared).await?;
        if shared.state.borrow().pristine {
            shared.state.borrow_mut().closing = true;
            return Ok(None);
        }
        if shared.state.borrow().holds_nothing() {
            // No segment file, no offsets: no index or checkpoint to keep,
            // only the marker, so the next open is clean (and its close
            // free). Not synced: with no files to trust, a marker lost in a
            // crash only makes the next open a (trivial) recovery. A node
            // stop closes thousands of these at once.
            shared.state.borrow_mut().closing = true;
            let marker = shared.dir.join(checkpoint::CLEAN_SHUTDOWN_FILE);
            std::fs::File::create(&marker)
                .map_err(|source| LogError::io("write marker", &marker, source))?;
            return Ok(None);
        }
        match durability {
            Durability::SyncedHere => sync_active(&shared).await?,
            Durability::Deferred => {
                // The epochs are stored as always (rarely changed); the
                // data waits for the file system's sync.
                let epochs = {
                    let mut state = shared.state.borrow_mut();
                    std::mem::take(&mut state.epochs_dirty).then(|| state.epochs.clone())
                };
                if let Some(epochs) = epochs {
                    flush::store_epochs(&shared, epochs).await?;
                }
            }
        }
        let (file, segment_bytes, index, next_offset, fill) = {
            let mut state = shared.state.borrow_mut();
            state.closing = true;
            let next_offset = state.next_offset;
            let active = state.active_mut();
            active.finish_time_index();
            (
                active.file.clone(),
                active.size_bytes,
                active.index.clone(),
                next_offset,
                space::take_fill(active),
            )
        };
        if let Some(file) = &file {
            space::finish_fill(fill).await;
            file.truncate(segment_bytes).await?;
            if durability == Durability::SyncedHere {
                file.sync_data().await?;
            }
        }
        let index_base = file.as_ref().map(|file| file_base(&file.path));
        let dir = shared.dir.clone();
        let pending = PendingMarker {
            dir: dir.clone(),
            recovery_point: next_offset,
        };
        // The epochs were stored above if they changed. Synced here: the
        // index files and the recovery point (the log's end: all of it is
        // synced) share one directory sync, and the marker has its own:
        // five syncs where a close took ten. Deferred: no sync at all; the
        // recovery point and marker wait for the file system's.
        let outcome = checkpoint::off_executor(move || -> LogResult<Option<PendingMarker>> {
            let mut files = Vec::new();
            if let Some(base) = index_base {
                files.push((offset_index_name(base), index.encode_offsets()));
                files.push((time_index_name(base), index.encode_times()));
            }
            match durability {
                Durability::SyncedHere => {
                    files.push((
                        checkpoint::RECOVERY_POINT_FILE.to_string(),
                        format!("{next_offset}\n").into_bytes(),
                    ));
                    checkpoint::write_all_atomically(&dir, &files)?;
                    // Last: it promises that everything above is on disk.
                    checkpoint::mark_clean(&dir)?;
                    Ok(None)
                }
                Durability::Deferred => {
                    checkpoint::write_all_unsynced(&dir, &files)?;
                    Ok(Some(pending))
                }
            }
        })
        .await;
        drop(permit);
        outcome
    }

    /// Ends the flusher task of a closing log (`closing` is set).
    async fn stop_flusher(&mut self) -> LogResult<()> {
        self.shared.wake_flusher();
        self.shared.progress.wake_all();
        if let Some(flusher) = self.flusher.take() {
            flusher.await;
        }
        Ok(())
    }

    /// Test and tool hook: stops like a crashed process. Waits for the flush
    /// in flight (if any) to complete, as the device would, then stops the
    /// flusher without writing, syncing or marking anything. Returns the
    /// offsets at the moment of the "crash".
    pub async fn abandon(mut self) -> LogOffsets {
        if let Ok(permit) = self.shared.lock().await {
            self.shared.state.borrow_mut().closing = true;
            // Zero writes already submitted complete too, as on a device.
            finish_all_fills(&self.shared).await;
            drop(permit);
        }
        let offsets = self.offsets();
        self.shared.wake_flusher();
        if let Some(flusher) = self.flusher.take() {
            flusher.await;
        }
        offsets
    }
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        self.shared.state.borrow_mut().closing = true;
        self.shared.progress.wake_all();
    }
}

impl Shared {
    fn wake_flusher(&self) {
        self.flusher_work.set(true);
        if let Some(waker) = self.flusher_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn lock(&self) -> LogResult<glommio::sync::Permit<'_>> {
        self.flush_lock
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)
    }
}

fn validate_config(config: &LogConfig) -> LogResult<()> {
    let invalid = |reason: &str| {
        Err(LogError::io(
            "validate config",
            PathBuf::new(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.to_string()),
        ))
    };
    if config.segment_bytes < BLOCK_BYTES || config.segment_bytes > i32::MAX as u64 {
        return invalid("segment_bytes must be between 4 KiB and 2 GiB - 1");
    }
    if config.write_chunk_bytes == 0
        || !(config.write_chunk_bytes as u64).is_multiple_of(BLOCK_BYTES)
    {
        return invalid("write_chunk_bytes must be a positive multiple of 4096");
    }
    if config.write_depth == 0 || config.max_batch_bytes < BATCH_HEADER_BYTES {
        return invalid("write_depth must be positive and max_batch_bytes at least a header");
    }
    Ok(())
}

/// Rolls the active segment if this batch would overfill it, it is too old,
/// or relative offsets would overflow.
/// Where a close makes its files durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Its own syncs, before the marker ([`PartitionLog::close`]).
    SyncedHere,
    /// One file-system sync for many logs, later ([`finish_stop`]).
    Deferred,
}

/// What a log closed by [`PartitionLog::close_unsynced`] still needs once
/// its file system is synced: its recovery point and marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMarker {
    dir: PathBuf,
    recovery_point: u64,
}

/// Finishes a node stop for logs closed with
/// [`PartitionLog::close_unsynced`]: one `syncfs` per file system holding
/// them (the data, indexes, snapshots and truncations of every log reach
/// the disk together: one journal commit where each log took five
/// `fsync`s), then each log's recovery point and clean-shutdown marker,
/// then one more `syncfs` for those. Blocking: call it off the shards.
/// Returns how many logs it marked clean; on an error none after it is
/// marked (their next open recovers, which is safe).
pub fn finish_stop(pending: &[PendingMarker]) -> LogResult<usize> {
    let file_systems = one_handle_per_file_system(pending)?;
    sync_file_systems(&file_systems)?;
    for log in pending {
        checkpoint::write_all_unsynced(
            &log.dir,
            &[(
                checkpoint::RECOVERY_POINT_FILE,
                format!("{}\n", log.recovery_point),
            )],
        )?;
        let marker = log.dir.join(checkpoint::CLEAN_SHUTDOWN_FILE);
        std::fs::File::create(&marker)
            .map_err(|source| LogError::io("write marker", &marker, source))?;
    }
    sync_file_systems(&file_systems)?;
    Ok(pending.len())
}

/// An open directory on each file system (by device number) holding the
/// logs, with its path, found once for both syncs of a stop.
fn one_handle_per_file_system(pending: &[PendingMarker]) -> LogResult<Vec<(std::fs::File, &Path)>> {
    use std::os::unix::fs::MetadataExt;
    let mut devices = std::collections::HashSet::new();
    let mut handles = Vec::new();
    for log in pending {
        let dir = log.dir.as_path();
        let handle =
            std::fs::File::open(dir).map_err(|source| LogError::io("syncfs", dir, source))?;
        let device = handle
            .metadata()
            .map_err(|source| LogError::io("syncfs", dir, source))?
            .dev();
        if devices.insert(device) {
            handles.push((handle, dir));
        }
    }
    Ok(handles)
}

/// `syncfs` on each of the file systems.
fn sync_file_systems(file_systems: &[(std::fs::File, &Path)]) -> LogResult<()> {
    use std::os::fd::AsRawFd;
    for (handle, dir) in file_systems {
        nix::unistd::syncfs(handle.as_raw_fd())
            .map_err(|errno| LogError::io("syncfs", *dir, std::io::Error::from(errno)))?;
    }
    Ok(())
}

/// Puts a batch whose header is final at the end of the active segment and
/// the write buffer, and notes where its leader epoch starts; returns its
/// last offset. The caller has rolled the segment if needed and wakes the
/// flusher.
#[allow(clippy::too_many_arguments)]
fn place_batch(
    state: &mut LogState,
    config: &LogConfig,
    header: &BatchHeader,
    header_bytes: Bytes,
    body: Bytes,
    records: i32,
    leader_epoch: i32,
    now: i64,
) -> u64 {
    let base_offset = state.next_offset;
    let last_offset = header.last_offset() as u64;
    let total = (header_bytes.len() + body.len()) as u64;
    let active = state.active_mut();
    let position = active.size_bytes;
    let segment_base = active.base_offset;
    if active.next_offset == active.base_offset {
        active.created_ms = now;
    }
    active.note_batch(header, position, config.index_interval_bytes);
    state.hot.push_back(CachedBatch {
        base_offset,
        last_offset,
        max_timestamp: header.max_timestamp,
        records: u64::try_from(records).unwrap_or(0),
        segment_base,
        position,
        header: header_bytes,
        body,
    });
    state.hot_bytes += total;
    state.unwritten_bytes += total;
    state.next_offset = last_offset + 1;
    state.stats.appended_batches += 1;
    state.stats.appended_bytes += total;
    if leader_epoch >= 0 && state.epochs.assign(leader_epoch, base_offset) {
        state.epochs_dirty = true;
    }
    last_offset
}

fn maybe_roll(
    state: &mut LogState,
    config: &LogConfig,
    batch_bytes: u64,
    last_delta: i32,
    now: i64,
) {
    let next = state.next_offset;
    let active = state.active();
    if active.size_bytes == 0 {
        return;
    }
    let too_big = active.size_bytes + batch_bytes > config.segment_bytes;
    let too_old = now.saturating_sub(active.created_ms) >= config.segment_age.as_millis() as i64;
    let relative_overflow = next + last_delta as u64 - active.base_offset > u64::from(u32::MAX - 1);
    if too_big || too_old || relative_overflow {
        state.segments.push(Segment::new(next, now));
    }
}

pub(crate) fn sync_dir(dir: &Path) -> LogResult<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| LogError::io("fsync dir", dir, source))
}

fn file_base(path: &Path) -> u64 {
    path.file_name()
        .and_then(|name| name.to_str())
        .and_then(parse_log_file_name)
        .unwrap_or(0)
}
