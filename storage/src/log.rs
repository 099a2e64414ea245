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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::io::DmaBuffer;
use glommio::sync::Semaphore;

use crate::batch::{self, BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint::{self, CleanerCheckpoint, LeaderEpochCache};
use crate::config::{LogConfig, SyncPolicy, TimestampType};
use crate::dma::prime_device;
use crate::error::{glommio_io, LogError, LogResult};
use crate::index::SegmentIndex;
use crate::segment::{
    align_down, align_up, log_file_name, offset_index_name, parse_log_file_name, scan_batches,
    time_index_name, OffsetRule, ScanMode, Segment, SegmentFile, BLOCK_BYTES,
};
use crate::space::{self, PendingFill, Preallocation};

mod compaction;

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
    /// Zeros written ahead of the data ([`Preallocation::Zeroed`]).
    pub zero_filled_bytes: u64,
    pub fsyncs: u64,
    pub segments: u64,
}

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
    closing: bool,
    stats: LogStats,
    /// Where compaction stands; every batch it removed lies below
    /// `cleaner.first_dirty()`.
    cleaner: CleanerCheckpoint,
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
        if self.closing {
            return Err(LogError::Closed);
        }
        Ok(())
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
        let state = self.shared.state.borrow();
        LogOffsets {
            log_start_offset: state.log_start_offset,
            next_offset: state.next_offset,
            written_offset: state.written_offset,
            durable_offset: state.durable_offset,
            size_bytes: state.size_bytes(),
        }
    }

    pub fn stats(&self) -> LogStats {
        let state = self.shared.state.borrow();
        LogStats {
            segments: state.segments.len() as u64,
            ..state.stats
        }
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
        if let Some(latest) = state.epochs.latest_epoch() {
            if leader_epoch < latest {
                return Err(LogError::StaleLeaderEpoch {
                    epoch: leader_epoch,
                    latest,
                });
            }
        }
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
        let last_offset = patched.last_offset() as u64;
        let active = state.active_mut();
        let position = active.size_bytes;
        let segment_base = active.base_offset;
        if active.next_offset == active.base_offset {
            active.created_ms = now;
        }
        active.note_batch(&patched, position, config.index_interval_bytes);
        state.hot.push_back(CachedBatch {
            base_offset,
            last_offset,
            max_timestamp: patched.max_timestamp,
            records: original.records_count as u64,
            segment_base,
            position,
            header: header.freeze(),
            body,
        });
        state.hot_bytes += total;
        state.unwritten_bytes += total;
        state.next_offset = last_offset + 1;
        if leader_epoch >= 0 && state.epochs.assign(leader_epoch, base_offset) {
            state.epochs_dirty = true;
        }
        state.stats.appended_batches += 1;
        state.stats.appended_bytes += total;
        drop(state);
        self.shared.wake_flusher();
        Ok(AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms,
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

    /// False once the log failed (a write error) or is closing: it will not
    /// make progress any more.
    pub fn is_healthy(&self) -> bool {
        let state = self.shared.state.borrow();
        state.failed.is_none() && !state.closing
    }

    /// Writes everything appended so far and syncs it.
    pub async fn flush(&self) -> LogResult<()> {
        let end = self.shared.state.borrow().next_offset;
        self.wait_durable(end).await
    }

    /// Reads whole batches starting with the one holding `offset` (or, where
    /// compaction removed it, the next batch after it), up to `max_bytes`
    /// (the first batch is returned whole even if larger, as Kafka does) and
    /// never a batch reaching `upper_bound` (the high watermark or last
    /// stable offset). An empty result below `upper_bound` means compaction
    /// removed everything from `offset` to the end of the log.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        upper_bound: u64,
    ) -> LogResult<ReadResult> {
        let plan = {
            let state = self.shared.state.borrow();
            if offset < state.log_start_offset || offset > state.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.next_offset,
                });
            }
            let upper = upper_bound.min(state.next_offset);
            if offset >= upper {
                return Ok(ReadResult {
                    next_offset: offset,
                    ..ReadResult::default()
                });
            }
            if state
                .hot
                .front()
                .is_some_and(|front| front.base_offset <= offset)
            {
                return Ok(read_hot(&state, offset, max_bytes, upper));
            }
            let position = state.segment_for_offset(offset);
            let segment = &state.segments[position];
            if segment.size_bytes == 0 {
                // The empty active segment after a gap compaction left.
                return Ok(ReadResult {
                    next_offset: offset,
                    ..ReadResult::default()
                });
            }
            // In a gap before a segment the cleaner never rewrote, the next
            // batch is that segment's first, which may be in the hot tail only.
            let first_wanted = if segment.base_offset > offset && !segment.cleaned {
                segment.base_offset
            } else {
                offset
            };
            if state
                .hot
                .front()
                .is_some_and(|front| front.base_offset <= first_wanted)
            {
                return Ok(read_hot(&state, offset, max_bytes, upper));
            }
            let Some(file) = segment.file.clone() else {
                return Err(LogError::Damaged {
                    path: segment.path_in(&self.shared.dir),
                    reason: "written data without a file".into(),
                });
            };
            FileReadPlan {
                file,
                base_offset: segment.base_offset,
                scan_from: u64::from(segment.index.scan_start(segment.relative(offset))),
                written_bytes: segment.written_bytes,
                rule: state.offset_rule(position),
                upper,
            }
        };
        read_file(&self.shared, plan, offset, max_bytes).await
    }

    /// The first batch whose max timestamp is ≥ `timestamp` (exact, as
    /// ListOffsets needs), or `None` if every batch is older.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> LogResult<Option<TimestampHit>> {
        let mut after_base = None;
        loop {
            let plan = {
                let state = self.shared.state.borrow();
                let log_start = state.log_start_offset;
                let Some(position) = state.segments.iter().position(|segment| {
                    after_base.is_none_or(|base| segment.base_offset > base)
                        && segment.max_timestamp >= timestamp
                        && segment.next_offset > log_start
                }) else {
                    return Ok(None);
                };
                let segment = &state.segments[position];
                let hot_hit = state
                    .hot
                    .iter()
                    .filter(|cached| cached.segment_base == segment.base_offset)
                    .filter(|cached| cached.last_offset >= log_start)
                    .find(|cached| cached.max_timestamp >= timestamp)
                    .map(|cached| TimestampHit {
                        base_offset: cached.base_offset,
                        last_offset: cached.last_offset,
                        max_timestamp: cached.max_timestamp,
                    });
                TimestampPlan {
                    file: segment.file.clone(),
                    scan_from: u64::from(segment.index.time_scan_start(timestamp)),
                    written_bytes: segment.written_bytes,
                    base_offset: segment.base_offset,
                    rule: state.offset_rule(position),
                    log_start,
                    hot_hit,
                }
            };
            let mut found = None;
            if let Some(file) = &plan.file {
                scan_batches(
                    file,
                    plan.scan_from,
                    plan.written_bytes,
                    plan.base_offset,
                    plan.rule,
                    ScanMode::HeadersOnly,
                    |_, header| {
                        let last_offset = header.last_offset() as u64;
                        if header.max_timestamp >= timestamp && last_offset >= plan.log_start {
                            found = Some(TimestampHit {
                                base_offset: header.base_offset as u64,
                                last_offset,
                                max_timestamp: header.max_timestamp,
                            });
                            return false;
                        }
                        true
                    },
                )
                .await?;
            }
            if let Some(hit) = found.or(plan.hot_hit) {
                return Ok(Some(hit));
            }
            // Only batches below the log start matched in this segment.
            after_base = Some(plan.base_offset);
        }
    }

    /// The largest timestamp in the log and the last offset of its batch.
    pub fn max_timestamp(&self) -> Option<(i64, u64)> {
        let state = self.shared.state.borrow();
        state
            .segments
            .iter()
            .filter(|segment| segment.max_timestamp >= 0)
            .max_by_key(|segment| segment.max_timestamp)
            .map(|segment| (segment.max_timestamp, segment.offset_of_max_timestamp))
    }

    /// Starts a new segment at the next append (if the active one has data).
    pub fn roll(&self) {
        let mut state = self.shared.state.borrow_mut();
        if state.active().size_bytes > 0 {
            let next = state.next_offset;
            state.segments.push(Segment::new(next, now_ms()));
        }
    }

    /// Removes every batch that holds an offset at or after `offset`; the log
    /// then ends at the start of the batch that held `offset`. Replication
    /// uses this to drop a diverged suffix. Durable before it returns.
    pub async fn truncate_to(&self, offset: u64) -> LogResult<()> {
        let _permit = self.shared.lock().await?;
        write_pending(&self.shared).await?;
        truncate_suffix(&self.shared, offset).await?;
        self.shared.progress.wake_all();
        Ok(())
    }

    /// Advances the log start offset to `offset` (DeleteRecords) and deletes
    /// segments wholly below it. Returns the new log start offset.
    pub async fn truncate_before(&self, offset: u64) -> LogResult<u64> {
        let _permit = self.shared.lock().await?;
        let new_start = {
            let mut state = self.shared.state.borrow_mut();
            let new_start = offset.min(state.next_offset);
            if new_start <= state.log_start_offset {
                return Ok(state.log_start_offset);
            }
            state.log_start_offset = new_start;
            new_start
        };
        checkpoint::write_offset(&self.shared.dir, checkpoint::LOG_START_FILE, new_start)?;
        delete_segments_where(&self.shared, |segment, _| segment.next_offset <= new_start)?;
        // After a gap compaction left, the first remaining segment may start
        // past `new_start`: the log start moves up to it (as in Kafka).
        let start = self.shared.state.borrow().log_start_offset;
        if start != new_start {
            checkpoint::write_offset(&self.shared.dir, checkpoint::LOG_START_FILE, start)?;
        }
        Ok(start)
    }

    /// Deletes sealed segments beyond the retention limits (bytes, age).
    /// Returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> LogResult<usize> {
        let _permit = self.shared.lock().await?;
        let config = &self.shared.config;
        let mut excess = {
            let state = self.shared.state.borrow();
            config
                .retention_bytes
                .map_or(0, |limit| state.size_bytes().saturating_sub(limit))
        };
        let oldest_allowed = config
            .retention_age
            .map(|age| now_ms.saturating_sub(age.as_millis() as i64));
        let deleted = delete_segments_where(&self.shared, |segment, _| {
            let newest = if segment.max_timestamp >= 0 {
                segment.max_timestamp
            } else {
                segment.created_ms
            };
            let too_old = oldest_allowed.is_some_and(|oldest| newest < oldest);
            let too_big = excess >= segment.size_bytes && excess > 0;
            if too_big || too_old {
                excess = excess.saturating_sub(segment.size_bytes);
                true
            } else {
                false
            }
        })?;
        if deleted > 0 {
            let start = self.shared.state.borrow().log_start_offset;
            checkpoint::write_offset(&self.shared.dir, checkpoint::LOG_START_FILE, start)?;
        }
        Ok(deleted)
    }

    /// Writes and syncs everything, writes the indexes and checkpoints, and
    /// leaves the clean-shutdown marker so the next open skips the rescan.
    pub async fn close(mut self) -> LogResult<()> {
        let shared = self.shared.clone();
        let permit = shared.lock().await?;
        write_pending(&shared).await?;
        sync_active(&shared).await?;
        let (file, segment_bytes, index, next_offset, epochs, fill) = {
            let mut state = shared.state.borrow_mut();
            state.closing = true;
            let next_offset = state.next_offset;
            let epochs = state.epochs.clone();
            let active = state.active_mut();
            active.finish_time_index();
            (
                active.file.clone(),
                active.size_bytes,
                active.index.clone(),
                next_offset,
                epochs,
                space::take_fill(active),
            )
        };
        if let Some(file) = &file {
            space::finish_fill(fill, file).await;
            file.dma
                .truncate(segment_bytes)
                .await
                .map_err(|error| LogError::io("truncate", &file.path, glommio_io(error)))?;
            file.dma
                .fdatasync()
                .await
                .map_err(|error| LogError::io("fdatasync", &file.path, glommio_io(error)))?;
            let base = file_base(&file.path);
            write_index_files(&shared.dir, base, &index)?;
        }
        epochs.store(&shared.dir)?;
        checkpoint::write_offset(&shared.dir, checkpoint::RECOVERY_POINT_FILE, next_offset)?;
        checkpoint::write_atomically(&shared.dir, checkpoint::CLEAN_SHUTDOWN_FILE, b"")?;
        drop(permit);
        shared.wake_flusher();
        shared.progress.wake_all();
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

    /// Whether the policy (or a waiter) wants a sync now.
    fn sync_due(&self) -> bool {
        let state = self.state.borrow();
        if state.durable_offset >= state.written_offset {
            return false;
        }
        if state.sync_requested_until > state.durable_offset {
            return true;
        }
        match self.config.sync_policy {
            SyncPolicy::EveryAppend => true,
            SyncPolicy::Interval { messages, interval } => {
                state.unsynced_records >= messages
                    || state
                        .first_unsynced_write
                        .is_some_and(|first| first.elapsed() >= interval)
            }
            SyncPolicy::Never => false,
        }
    }

    /// How long the flusher may sleep before an interval sync falls due.
    fn next_sync_deadline(&self) -> Option<Duration> {
        let SyncPolicy::Interval { interval, .. } = self.config.sync_policy else {
            return None;
        };
        let mut state = self.state.borrow_mut();
        if state.durable_offset >= state.written_offset {
            // Nothing unsynced (e.g. a truncation removed it): no deadline,
            // or the flusher would wake at once, forever.
            state.first_unsynced_write = None;
            state.unsynced_records = 0;
            return None;
        }
        let first = state.first_unsynced_write?;
        Some(interval.saturating_sub(first.elapsed()))
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

fn read_hot(state: &LogState, offset: u64, max_bytes: u64, upper: u64) -> ReadResult {
    let first = state
        .hot
        .partition_point(|cached| cached.last_offset < offset);
    let mut result = ReadResult {
        next_offset: offset,
        ..ReadResult::default()
    };
    for cached in state.hot.range(first..) {
        let total = cached.total_bytes();
        if cached.last_offset >= upper || (result.bytes > 0 && result.bytes + total > max_bytes) {
            break;
        }
        result.chunks.push(ReadChunk::Memory(cached.header.clone()));
        result.chunks.push(ReadChunk::Memory(cached.body.clone()));
        result.bytes += total;
        result.next_offset = cached.last_offset + 1;
    }
    result
}

struct TimestampPlan {
    file: Option<Rc<SegmentFile>>,
    scan_from: u64,
    written_bytes: u64,
    base_offset: u64,
    rule: OffsetRule,
    log_start: u64,
    hot_hit: Option<TimestampHit>,
}

struct FileReadPlan {
    file: Rc<SegmentFile>,
    base_offset: u64,
    scan_from: u64,
    written_bytes: u64,
    rule: OffsetRule,
    /// No batch reaching this offset is returned.
    upper: u64,
}

/// Finds the region of whole batches to send from a segment file.
async fn read_file(
    shared: &Shared,
    plan: FileReadPlan,
    offset: u64,
    max_bytes: u64,
) -> LogResult<ReadResult> {
    let upper_bound = plan.upper;
    let mut start = None;
    let outcome = scan_batches(
        &plan.file,
        plan.scan_from,
        plan.written_bytes,
        plan.base_offset,
        plan.rule,
        ScanMode::HeadersOnly,
        |position, header| {
            if header.last_offset() as u64 >= offset {
                start = Some((
                    position,
                    header.total_bytes() as u64,
                    header.last_offset() as u64,
                ));
                return false;
            }
            true
        },
    )
    .await?;
    let Some((start_position, first_bytes, first_last_offset)) = start else {
        if outcome.damage.is_none() && outcome.valid_end >= plan.written_bytes {
            // Nothing at or after `offset` in the written part of the file:
            // compaction emptied the rest of a segment that became active
            // again, and what follows (if anything) is not written yet.
            let state = shared.state.borrow();
            return Ok(read_hot(&state, offset, max_bytes, upper_bound));
        }
        // The segment holds `offset` (the plan said so), so not finding its
        // batch means the headers on the way are damaged.
        let reason = outcome
            .damage
            .unwrap_or_else(|| format!("no batch holds offset {offset}"));
        return Err(mark_damaged(shared, &plan, outcome.valid_end, reason));
    };
    if first_last_offset >= upper_bound {
        return Ok(ReadResult {
            next_offset: offset,
            ..ReadResult::default()
        });
    }
    let mut end = start_position + first_bytes;
    let mut next_offset = first_last_offset + 1;
    let limit = start_position.saturating_add(max_bytes);
    // Jump to the furthest indexed boundary within the budget, then walk.
    // Only when the read may end anywhere in the segment: index entries
    // know nothing of the upper bound.
    let jump = {
        let mut state = shared.state.borrow_mut();
        state
            .planned_segment(plan.base_offset, &plan.file)
            .filter(|segment| upper_bound >= segment.next_offset)
            .and_then(|segment| {
                // Strictly below the written end: a boundary *at* it starts a
                // batch that is not on disk yet, whose header cannot be read.
                let limit32 = u32::try_from(limit.min(plan.written_bytes.saturating_sub(1)))
                    .unwrap_or(u32::MAX);
                segment.index.boundary_at_or_below(end as u32, limit32)
            })
    };
    let mut walk_from = end;
    let mut jumped = false;
    if let Some(boundary) = jump {
        walk_from = u64::from(boundary);
        jumped = true;
    }
    if end < limit {
        let mut walked_end = walk_from;
        let mut walked_next = None;
        scan_batches(
            &plan.file,
            walk_from,
            plan.written_bytes,
            plan.base_offset,
            plan.rule,
            ScanMode::HeadersOnly,
            |position, header| {
                let total = header.total_bytes() as u64;
                if header.last_offset() as u64 >= upper_bound || position + total > limit {
                    return false;
                }
                walked_end = position + total;
                walked_next = Some(header.last_offset() as u64 + 1);
                true
            },
        )
        .await?;
        if let Some(walked_next) = walked_next {
            end = walked_end;
            next_offset = walked_next;
        } else if jumped {
            // The jump target starts a batch; everything before it fits.
            end = walk_from;
            next_offset = next_offset_at(&plan, walk_from).await?;
        }
    }
    let (end, next_offset) = verify_region(shared, &plan, start_position, end, next_offset).await?;
    Ok(ReadResult {
        chunks: vec![ReadChunk::File {
            file: plan.file,
            position: start_position,
            len: end - start_position,
        }],
        bytes: end - start_position,
        next_offset,
    })
}

/// Makes sure `[start, end)` of the segment passed its CRC check since open,
/// checking what has not. Returns the region cut short before the first
/// damaged batch; a region that starts at damage is an error.
async fn verify_region(
    shared: &Shared,
    plan: &FileReadPlan,
    start: u64,
    end: u64,
    next_offset: u64,
) -> LogResult<(u64, u64)> {
    let (verified, damaged_at) = {
        let mut state = shared.state.borrow_mut();
        match state.planned_segment(plan.base_offset, &plan.file) {
            Some(segment) => (segment.verified_bytes, segment.damaged_at),
            // Deleted, or replaced by the cleaner, which read (and so
            // CRC-checked) every batch of a segment before replacing it.
            None => return Ok((end, next_offset)),
        }
    };
    if let Some(damaged_at) = damaged_at.filter(|damaged_at| *damaged_at < end) {
        if start >= damaged_at {
            return Err(LogError::Damaged {
                path: plan.file.path.clone(),
                reason: format!("batch at position {start} follows damage at {damaged_at}"),
            });
        }
    }
    if end <= verified {
        return Ok((end, next_offset));
    }
    let outcome = scan_batches(
        &plan.file,
        verified,
        end,
        plan.base_offset,
        plan.rule,
        ScanMode::VerifyCrc,
        |_, _| true,
    )
    .await?;
    {
        let mut state = shared.state.borrow_mut();
        if let Some(segment) = state.planned_segment(plan.base_offset, &plan.file) {
            segment.verified_bytes = segment.verified_bytes.max(outcome.valid_end);
        }
    }
    if outcome.valid_end >= end {
        return Ok((end, next_offset));
    }
    let reason = outcome
        .damage
        .clone()
        .unwrap_or_else(|| "batch cut short".into());
    let error = mark_damaged(shared, plan, outcome.valid_end, reason);
    if outcome.valid_end <= start {
        return Err(error);
    }
    Ok((outcome.valid_end, outcome.next_offset))
}

/// Records damage found by a read in a segment that was trusted at open, and
/// logs it once. Returns the error for reads that start at the damage.
fn mark_damaged(shared: &Shared, plan: &FileReadPlan, position: u64, reason: String) -> LogError {
    let mut state = shared.state.borrow_mut();
    if let Some(segment) = state.planned_segment(plan.base_offset, &plan.file) {
        if segment.damaged_at.is_none_or(|known| position < known) {
            segment.damaged_at = Some(position);
            tracing::error!(path = %plan.file.path.display(), position, %reason, "damaged batch in segment; it will not be served");
        }
    }
    LogError::Damaged {
        path: plan.file.path.clone(),
        reason: format!("at position {position}: {reason}"),
    }
}

/// The base offset of the batch starting at `position`.
async fn next_offset_at(plan: &FileReadPlan, position: u64) -> LogResult<u64> {
    let header = plan.file.read_bytes(position, BATCH_HEADER_BYTES).await?;
    Ok(BatchHeader::parse(&header)?.base_offset as u64)
}

/// The flusher task: writes appended data as soon as the previous write is
/// done (so writes pipeline behind appends) and syncs as the policy says.
async fn run_flusher(shared: Rc<Shared>) {
    loop {
        let deadline = shared.next_sync_deadline();
        let work = poll_fn(|context| {
            if shared.flusher_work.replace(false) {
                return Poll::Ready(());
            }
            *shared.flusher_waker.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        });
        match deadline {
            Some(delay) => {
                futures::future::select(Box::pin(work), Box::pin(glommio::timer::sleep(delay)))
                    .await;
            }
            None => work.await,
        }
        if shared.state.borrow().closing {
            return;
        }
        let Ok(permit) = shared.lock().await else {
            return;
        };
        if shared.state.borrow().closing {
            return;
        }
        let outcome = flush_cycle(&shared).await;
        drop(permit);
        if let Err(error) = outcome {
            tracing::error!(dir = %shared.dir.display(), %error, "log write failed; the log refuses further writes");
            shared.state.borrow_mut().failed = Some(error.to_string());
        }
        shared.progress.wake_all();
    }
}

/// Writes what is pending and syncs as the policy says, overlapping the two:
/// while an `fdatasync` is in flight, batches appended meanwhile are already
/// written, and the next sync starts as soon as the previous one completes.
/// So a durable append waits for about one sync, not for a write plus a sync
/// plus the remainder of the cycle it arrived in. Waiters for the *written*
/// stage are woken after each write, never held behind a sync. The caller
/// holds the flush lock, so no truncation or close runs meanwhile.
async fn flush_cycle(shared: &Rc<Shared>) -> LogResult<()> {
    let mut sync: Option<futures::future::LocalBoxFuture<'_, LogResult<()>>> = None;
    loop {
        write_pending(shared).await?;
        shared.progress.wake_all();
        if sync.is_none() && shared.sync_due() {
            sync = Some(Box::pin(sync_active(shared)));
        }
        let Some(running) = sync.as_mut() else {
            return Ok(());
        };
        let new_work = poll_fn(|context| {
            if shared.flusher_work.replace(false) {
                return Poll::Ready(());
            }
            *shared.flusher_waker.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        });
        match futures::future::select(running, Box::pin(new_work)).await {
            futures::future::Either::Left((synced, _)) => {
                synced?;
                sync = None;
                shared.progress.wake_all();
            }
            // Keep the sync running; write the new batches beside it.
            futures::future::Either::Right(((), _)) => {}
        }
    }
}

/// One segment's share of a flush, taken out of the state.
struct WritePlan {
    segment_base: u64,
    file: Option<Rc<SegmentFile>>,
    seal_after: bool,
    start_position: u64,
    end_position: u64,
    allocated_bytes: u64,
    tail_block: Vec<u8>,
    pieces: Vec<Bytes>,
    end_offset: u64,
    records: u64,
}

/// Writes every unwritten batch to its segment file. Caller holds the lock.
async fn write_pending(shared: &Rc<Shared>) -> LogResult<()> {
    while let Some(plan) = plan_write(shared) {
        execute_write(shared, plan).await?;
    }
    Ok(())
}

fn plan_write(shared: &Shared) -> Option<WritePlan> {
    let state = shared.state.borrow();
    let last = state.segments.len() - 1;
    // The oldest segment with unwritten bytes, or a rolled one still to seal.
    let segment_position = state
        .segments
        .iter()
        .enumerate()
        .position(|(position, segment)| {
            segment.written_bytes < segment.size_bytes || (!segment.sealed && position < last)
        })?;
    let segment = &state.segments[segment_position];
    let seal_after = segment_position + 1 < state.segments.len();
    let mut pieces = Vec::new();
    let mut end_offset = state.written_offset;
    let mut records = 0;
    for cached in state.hot.iter().filter(|cached| {
        cached.segment_base == segment.base_offset && cached.position >= segment.written_bytes
    }) {
        pieces.push(cached.header.clone());
        pieces.push(cached.body.clone());
        end_offset = cached.last_offset + 1;
        records += cached.records;
    }
    Some(WritePlan {
        segment_base: segment.base_offset,
        file: segment.file.clone(),
        seal_after,
        start_position: align_down(segment.written_bytes),
        end_position: segment.size_bytes,
        allocated_bytes: segment.allocated_bytes,
        tail_block: segment.tail_block.clone(),
        pieces,
        end_offset,
        records,
    })
}

async fn execute_write(shared: &Rc<Shared>, plan: WritePlan) -> LogResult<()> {
    let config = &shared.config;
    let file = match plan.file.clone() {
        Some(file) => file,
        None => create_segment_file(shared, plan.segment_base).await?,
    };
    let allocated = ensure_room(shared, &file, &plan).await?;
    let (new_tail, writes) = if plan.end_position > plan.start_position {
        write_blocks(&file, &plan, config).await?
    } else {
        (plan.tail_block.clone(), 0)
    };
    {
        let mut state = shared.state.borrow_mut();
        let Some(position) = state.segment_index(plan.segment_base) else {
            return Err(LogError::Closed);
        };
        let segment = &mut state.segments[position];
        if segment.verified_bytes >= segment.written_bytes {
            // Appended batches were validated on the way in.
            segment.verified_bytes = plan.end_position;
        }
        segment.written_bytes = plan.end_position;
        segment.tail_block = new_tail;
        segment.allocated_bytes = allocated;
        let written = plan.end_position - (plan.start_position + plan.tail_block.len() as u64);
        state.written_offset = state.written_offset.max(plan.end_offset);
        state.unwritten_bytes = state.unwritten_bytes.saturating_sub(written);
        state.unsynced_records += plan.records;
        if state.first_unsynced_write.is_none() && plan.records > 0 {
            state.first_unsynced_write = Some(Instant::now());
        }
        state.stats.written_bytes += written;
        state.stats.writes += writes;
        let budget = config.hot_tail_bytes_max;
        state.evict_hot(budget);
        if !plan.seal_after {
            let scheduled = schedule_fill(
                config,
                &file,
                &mut state.segments[position],
                plan.end_position,
            );
            state.stats.zero_filled_bytes += scheduled;
        }
    }
    if plan.seal_after {
        seal_segment(shared, plan.segment_base, &file).await?;
    }
    Ok(())
}

/// Makes the file ready for writes up to the plan's end and returns how far
/// it is ready: reaps the segment's background zero fill (waiting for it
/// only when the writes need its region), and when that is not enough fills
/// (or, with [`Preallocation::Reserve`], reserves) the rest now.
async fn ensure_room(shared: &Shared, file: &Rc<SegmentFile>, plan: &WritePlan) -> LogResult<u64> {
    let config = &shared.config;
    let need = align_up(plan.end_position);
    let mut allocated = plan.allocated_bytes;
    let pending = {
        let mut state = shared.state.borrow_mut();
        state
            .segment_index(plan.segment_base)
            .and_then(|position| state.segments[position].pending_fill.take())
    };
    if let Some(mut fill) = pending {
        if need > allocated || fill.is_finished() {
            match fill.finish().await {
                Ok(end) => allocated = allocated.max(end),
                // Filled again below if the writes need it.
                Err(error) => {
                    tracing::warn!(path = %file.path.display(), %error, "zero fill ahead of the data failed")
                }
            }
        } else {
            let mut state = shared.state.borrow_mut();
            if let Some(position) = state.segment_index(plan.segment_base) {
                state.segments[position].pending_fill = Some(fill);
            }
        }
    }
    if need <= allocated {
        return Ok(allocated);
    }
    match config.preallocation {
        Preallocation::Reserve => {
            let target = need + config.preallocate_bytes;
            file.dma
                .pre_allocate(target, false)
                .await
                .map_err(|error| LogError::io("preallocate", &file.path, glommio_io(error)))?;
            Ok(target)
        }
        Preallocation::Zeroed => {
            // Only what these writes need (and a little): the background
            // fill goes further without holding them up.
            let from = align_up(allocated);
            let segment_end = align_up(config.segment_bytes).max(need);
            let target = (need + space::FILL_STEP_MIN_BYTES).min(segment_end);
            PendingFill::start(file.clone(), from, target, config.write_chunk_bytes)
                .finish()
                .await?;
            shared.state.borrow_mut().stats.zero_filled_bytes += target - from;
            Ok(target)
        }
    }
}

/// Starts the next background zero fill of the segment if its ready space
/// runs short (at most one per segment at a time). Returns the bytes the
/// fill will write.
fn schedule_fill(
    config: &LogConfig,
    file: &Rc<SegmentFile>,
    segment: &mut Segment,
    end: u64,
) -> u64 {
    if config.preallocation != Preallocation::Zeroed || segment.pending_fill.is_some() {
        return 0;
    }
    let ready = align_up(segment.allocated_bytes);
    let Some((from, to)) =
        space::next_fill(ready, end, config.segment_bytes, config.preallocate_bytes)
    else {
        return 0;
    };
    segment.pending_fill = Some(PendingFill::start(
        file.clone(),
        from,
        to,
        config.write_chunk_bytes,
    ));
    to - from
}

/// Waits for the background fills of every segment (before a truncation).
async fn finish_all_fills(shared: &Shared) {
    let fills: Vec<(PendingFill, Option<Rc<SegmentFile>>)> = {
        let mut state = shared.state.borrow_mut();
        state
            .segments
            .iter_mut()
            .filter_map(|segment| {
                let file = segment.file.clone();
                space::take_fill(segment).map(|fill| (fill, file))
            })
            .collect()
    };
    for (fill, file) in fills {
        if let Some(file) = file {
            space::finish_fill(Some(fill), &file).await;
        }
    }
}

/// Copies the tail block and the pending batches into aligned DMA buffers
/// and writes them with up to `write_depth` writes in flight. Returns the
/// new partial tail block.
async fn write_blocks(
    file: &SegmentFile,
    plan: &WritePlan,
    config: &LogConfig,
) -> LogResult<(Vec<u8>, u64)> {
    let aligned_end = align_up(plan.end_position);
    let tail_start = align_down(plan.end_position);
    let mut new_tail = Vec::with_capacity((plan.end_position - tail_start) as usize);
    let mut source = PieceCursor::new(&plan.tail_block, &plan.pieces);
    let mut in_flight = FuturesUnordered::new();
    let mut chunk_start = plan.start_position;
    let mut writes = 0u64;
    while chunk_start < aligned_end {
        let chunk_len = (aligned_end - chunk_start).min(config.write_chunk_bytes as u64) as usize;
        let mut buffer: DmaBuffer = file.dma.alloc_dma_buffer(chunk_len);
        let bytes = buffer.as_bytes_mut();
        let logical_end = plan.end_position.min(chunk_start + chunk_len as u64);
        let data_len = (logical_end - chunk_start) as usize;
        source.copy_into(&mut bytes[..data_len]);
        bytes[data_len..].fill(0);
        if logical_end > tail_start && chunk_start <= tail_start {
            let from = (tail_start - chunk_start) as usize;
            new_tail.extend_from_slice(&bytes[from..data_len]);
        }
        let position = chunk_start;
        in_flight.push(async move {
            let written = file.dma.write_at(buffer, position).await;
            (written, chunk_len)
        });
        writes += 1;
        chunk_start += chunk_len as u64;
        if in_flight.len() >= config.write_depth {
            finish_write(file, in_flight.next().await)?;
        }
    }
    while let Some(done) = in_flight.next().await {
        finish_write(file, Some(done))?;
    }
    Ok((new_tail, writes))
}

fn finish_write(
    file: &SegmentFile,
    done: Option<(glommio::Result<usize, ()>, usize)>,
) -> LogResult<()> {
    let Some((result, expected)) = done else {
        return Ok(());
    };
    let written = result.map_err(|error| LogError::io("write", &file.path, glommio_io(error)))?;
    if written != expected {
        return Err(LogError::io(
            "write",
            &file.path,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {expected}"),
            ),
        ));
    }
    Ok(())
}

/// Sequential reader over the tail block followed by the pending pieces.
struct PieceCursor<'a> {
    tail: &'a [u8],
    pieces: &'a [Bytes],
    piece: usize,
    within: usize,
    tail_done: usize,
}

impl<'a> PieceCursor<'a> {
    fn new(tail: &'a [u8], pieces: &'a [Bytes]) -> Self {
        Self {
            tail,
            pieces,
            piece: 0,
            within: 0,
            tail_done: 0,
        }
    }

    /// Fills `out` completely from the stream. The plan guarantees the
    /// stream holds exactly the bytes between the start and end positions.
    fn copy_into(&mut self, out: &mut [u8]) {
        let mut filled = 0;
        if self.tail_done < self.tail.len() {
            let take = (self.tail.len() - self.tail_done).min(out.len());
            out[..take].copy_from_slice(&self.tail[self.tail_done..self.tail_done + take]);
            self.tail_done += take;
            filled = take;
        }
        while filled < out.len() && self.piece < self.pieces.len() {
            let piece = &self.pieces[self.piece];
            let take = (piece.len() - self.within).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&piece[self.within..self.within + take]);
            filled += take;
            self.within += take;
            if self.within == piece.len() {
                self.piece += 1;
                self.within = 0;
            }
        }
        assert_eq!(filled, out.len(), "write plan and pending batches disagree");
    }
}

async fn create_segment_file(shared: &Shared, base_offset: u64) -> LogResult<Rc<SegmentFile>> {
    let path = shared.dir.join(log_file_name(base_offset));
    let file = Rc::new(SegmentFile::open(path, true).await?);
    sync_dir(&shared.dir)?;
    let mut state = shared.state.borrow_mut();
    if let Some(position) = state.segment_index(base_offset) {
        state.segments[position].file = Some(file.clone());
    }
    Ok(file)
}

pub(crate) fn sync_dir(dir: &Path) -> LogResult<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| LogError::io("fsync dir", dir, source))
}

/// Seals a fully written segment: trims preallocated space, syncs it,
/// writes its indexes and moves the recovery point past it.
async fn seal_segment(shared: &Shared, base_offset: u64, file: &SegmentFile) -> LogResult<()> {
    let (size, index, next_offset, fill) = {
        let mut state = shared.state.borrow_mut();
        let Some(position) = state.segment_index(base_offset) else {
            return Ok(());
        };
        let segment = &mut state.segments[position];
        segment.finish_time_index();
        (
            segment.size_bytes,
            segment.index.clone(),
            segment.next_offset,
            space::take_fill(segment),
        )
    };
    space::finish_fill(fill, file).await;
    file.dma
        .truncate(size)
        .await
        .map_err(|error| LogError::io("truncate", &file.path, glommio_io(error)))?;
    file.dma
        .fdatasync()
        .await
        .map_err(|error| LogError::io("fdatasync", &file.path, glommio_io(error)))?;
    write_index_files(&shared.dir, base_offset, &index)?;
    let epochs = {
        let mut state = shared.state.borrow_mut();
        if let Some(position) = state.segment_index(base_offset) {
            let segment = &mut state.segments[position];
            segment.sealed = true;
            segment.allocated_bytes = size;
            segment.tail_block = Vec::new();
        }
        state.stats.fsyncs += 1;
        // Earlier segments were sealed (and synced) before this one.
        if state.durable_offset < next_offset {
            state.durable_offset = next_offset;
            state.unsynced_records = 0;
            state.first_unsynced_write = None;
        }
        state.epochs_dirty = false;
        state.epochs.clone()
    };
    epochs.store(&shared.dir)?;
    checkpoint::write_offset(&shared.dir, checkpoint::RECOVERY_POINT_FILE, next_offset)
}

/// One `fdatasync` of the active segment, covering everything written so
/// far: every caller waiting for durability up to there is released.
async fn sync_active(shared: &Shared) -> LogResult<()> {
    let (file, covered, epochs) = {
        let mut state = shared.state.borrow_mut();
        let epochs = std::mem::take(&mut state.epochs_dirty).then(|| state.epochs.clone());
        (state.active().file.clone(), state.written_offset, epochs)
    };
    if let Some(epochs) = epochs {
        epochs.store(&shared.dir)?;
    }
    if let Some(file) = file {
        file.dma
            .fdatasync()
            .await
            .map_err(|error| LogError::io("fdatasync", &file.path, glommio_io(error)))?;
    }
    let mut state = shared.state.borrow_mut();
    state.stats.fsyncs += 1;
    if covered > state.durable_offset {
        state.durable_offset = covered;
    }
    if state.durable_offset >= state.written_offset {
        state.unsynced_records = 0;
        state.first_unsynced_write = None;
    }
    Ok(())
}

fn file_base(path: &Path) -> u64 {
    path.file_name()
        .and_then(|name| name.to_str())
        .and_then(parse_log_file_name)
        .unwrap_or(0)
}

fn write_index_files(dir: &Path, base_offset: u64, index: &SegmentIndex) -> LogResult<()> {
    checkpoint::write_atomically(
        dir,
        &offset_index_name(base_offset),
        &index.encode_offsets(),
    )?;
    checkpoint::write_atomically(dir, &time_index_name(base_offset), &index.encode_times())
}

fn remove_segment_files(dir: &Path, base_offset: u64) -> LogResult<()> {
    for name in [
        log_file_name(base_offset),
        offset_index_name(base_offset),
        time_index_name(base_offset),
    ] {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::io("delete segment", path, source)),
        }
    }
    Ok(())
}

/// Deletes sealed segments from the oldest while `doomed` says so, moving
/// the log start past them. Caller holds the lock.
fn delete_segments_where(
    shared: &Shared,
    mut doomed: impl FnMut(&Segment, &LogState) -> bool,
) -> LogResult<usize> {
    let mut deleted = 0;
    loop {
        let base = {
            let state = shared.state.borrow();
            let Some(oldest) = state.segments.first() else {
                break;
            };
            if state.segments.len() == 1 || !oldest.sealed || !doomed(oldest, &state) {
                break;
            }
            oldest.base_offset
        };
        remove_segment_files(&shared.dir, base)?;
        let mut state = shared.state.borrow_mut();
        state.segments.remove(0);
        state.hot.retain(|cached| cached.segment_base != base);
        state.hot_bytes = state.hot.iter().map(CachedBatch::total_bytes).sum();
        let first_base = state.segments[0].base_offset;
        state.log_start_offset = state.log_start_offset.max(first_base);
        deleted += 1;
        tracing::info!(dir = %shared.dir.display(), base_offset = base, "deleted segment");
    }
    if deleted > 0 {
        sync_dir(&shared.dir)?;
    }
    Ok(deleted)
}

/// Cuts the log so it ends at the start of the batch holding `offset`, or at
/// `offset` itself where compaction left a gap there. Everything is written
/// already (caller flushed) and the lock is held.
async fn truncate_suffix(shared: &Shared, offset: u64) -> LogResult<()> {
    finish_all_fills(shared).await;
    let (doomed, keep) = {
        let state = shared.state.borrow();
        if offset >= state.next_offset {
            return Ok(());
        }
        let keep = state
            .segments
            .iter()
            .rposition(|segment| segment.base_offset < offset)
            .unwrap_or(0);
        let doomed: Vec<u64> = state.segments[keep + 1..]
            .iter()
            .map(|segment| segment.base_offset)
            .collect();
        (doomed, keep)
    };
    for base in &doomed {
        remove_segment_files(&shared.dir, *base)?;
    }
    let (file, base_offset, scan_from, size, verified, cleaned, gaps_until) = {
        let mut state = shared.state.borrow_mut();
        let gaps_until = state.cleaner.gaps_below();
        state.segments.truncate(keep + 1);
        let segment = state.active_mut();
        segment.sealed = false;
        (
            segment.file.clone(),
            segment.base_offset,
            u64::from(segment.index.scan_start(segment.relative(offset))),
            segment.size_bytes,
            segment.verified_bytes,
            segment.cleaned,
            gaps_until,
        )
    };
    // It is the last segment now: no next segment bounds its offsets.
    let rule = if cleaned {
        OffsetRule::Increasing {
            gaps_until,
            below: u64::MAX,
        }
    } else {
        OffsetRule::Contiguous
    };
    // Sealed index files of a segment that becomes active again are stale.
    remove_index_files(&shared.dir, base_offset)?;
    let mut cut_position = 0;
    let mut cut_base = None;
    let mut segment = Segment::new(base_offset, now_ms());
    segment.cleaned = cleaned;
    if let Some(file) = &file {
        let mut cut = None;
        scan_batches(
            file,
            scan_from,
            size,
            base_offset,
            rule,
            ScanMode::HeadersOnly,
            |position, header| {
                if header.last_offset() as u64 >= offset {
                    cut = Some((position, header.base_offset as u64));
                    return false;
                }
                true
            },
        )
        .await?;
        cut_base = cut.map(|(_, base)| base);
        cut_position = cut.map_or(size, |(position, _)| position);
        file.dma
            .truncate(cut_position)
            .await
            .map_err(|error| LogError::io("truncate", &file.path, glommio_io(error)))?;
        file.dma
            .fdatasync()
            .await
            .map_err(|error| LogError::io("fdatasync", &file.path, glommio_io(error)))?;
        rebuild_metadata(shared, file, &mut segment, cut_position, rule).await?;
        segment.file = Some(file.clone());
        segment.tail_block = read_tail_block(file, cut_position).await?;
        segment.allocated_bytes = cut_position;
        segment.verified_bytes = verified.min(cut_position);
    }
    sync_dir(&shared.dir)?;
    let mut state = shared.state.borrow_mut();
    // Where the cut batch started. In a cleaned segment `offset` may lie in
    // a gap compaction made: then no batch holds it, nothing below it goes,
    // and the log ends at `offset` itself, as Kafka's truncation does.
    let new_end = if segment.cleaned {
        cut_base
            .map_or(offset, |base| base.min(offset))
            .max(segment.next_offset)
    } else {
        segment.next_offset
    };
    debug_assert_eq!(segment.size_bytes, cut_position);
    segment.written_bytes = segment.size_bytes;
    segment.next_offset = new_end;
    segment.cleaned = segment.cleaned && segment.base_offset < new_end;
    *state.active_mut() = segment;
    state.next_offset = new_end;
    state.written_offset = state.written_offset.min(new_end);
    state.durable_offset = state.durable_offset.min(new_end);
    state.sync_requested_until = state.sync_requested_until.min(new_end);
    let log_start_moved = state.log_start_offset > new_end;
    state.log_start_offset = state.log_start_offset.min(new_end);
    state.hot.retain(|cached| cached.last_offset < new_end);
    state.hot_bytes = state.hot.iter().map(CachedBatch::total_bytes).sum();
    state.unwritten_bytes = 0;
    state.epochs.truncate_from(new_end);
    let epochs = state.epochs.clone();
    // Offsets from here on are dirty again (new appends will land there).
    let cleaner = state
        .cleaner
        .truncate(new_end)
        .then(|| state.cleaner.clone());
    drop(state);
    epochs.store(&shared.dir)?;
    if let Some(cleaner) = cleaner {
        cleaner.store(&shared.dir)?;
    }
    if log_start_moved {
        checkpoint::write_offset(&shared.dir, checkpoint::LOG_START_FILE, new_end)?;
    }
    let recovery_point =
        checkpoint::read_offset(&shared.dir, checkpoint::RECOVERY_POINT_FILE)?.unwrap_or(0);
    if recovery_point > new_end {
        checkpoint::write_offset(&shared.dir, checkpoint::RECOVERY_POINT_FILE, new_end)?;
    }
    Ok(())
}

fn remove_index_files(dir: &Path, base_offset: u64) -> LogResult<()> {
    for name in [offset_index_name(base_offset), time_index_name(base_offset)] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::io("delete index", path, source)),
        }
    }
    Ok(())
}

/// Rebuilds a segment's size, offsets, timestamps and indexes by walking its
/// batch headers up to `end`.
async fn rebuild_metadata(
    shared: &Shared,
    file: &SegmentFile,
    segment: &mut Segment,
    end: u64,
    rule: OffsetRule,
) -> LogResult<()> {
    let interval = shared.config.index_interval_bytes;
    scan_batches(
        file,
        0,
        end,
        segment.base_offset,
        rule,
        ScanMode::HeadersOnly,
        |position, header| {
            segment.note_batch(header, position, interval);
            true
        },
    )
    .await?;
    Ok(())
}

/// The bytes of the partial last block before `end`, to be rewritten.
async fn read_tail_block(file: &SegmentFile, end: u64) -> LogResult<Vec<u8>> {
    let start = align_down(end);
    if start == end {
        return Ok(Vec::new());
    }
    file.read_bytes(start, (end - start) as usize).await
}

/// Opens every segment of `dir`, trusting what a clean shutdown (or the
/// recovery point) vouches for and scanning the rest batch by batch.
async fn recover(dir: &Path, config: &LogConfig) -> LogResult<LogState> {
    let clean = dir.join(checkpoint::CLEAN_SHUTDOWN_FILE).exists();
    let recovery_point =
        checkpoint::read_offset(dir, checkpoint::RECOVERY_POINT_FILE)?.unwrap_or(0);
    let saved_log_start = checkpoint::read_offset(dir, checkpoint::LOG_START_FILE)?;
    let mut epochs = LeaderEpochCache::load(dir)?;
    // First finish (or discard) a compaction swap a crash interrupted, so
    // the segment files below are either all old or all new.
    crate::cleaner::recover_swap(dir)?;
    let loaded_cleaner = CleanerCheckpoint::load(dir)?;
    // Batches the cleaner removed lie below this offset, and only there.
    // An unreadable checkpoint could hide any gap: accept gaps everywhere.
    let gaps_below = loaded_cleaner
        .as_ref()
        .map_or(u64::MAX, CleanerCheckpoint::gaps_below);
    let mut cleaner = loaded_cleaner.clone().unwrap_or_default();
    let bases = list_segments(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    let mut cut_rest = false;
    let mut rebuilt = Vec::with_capacity(bases.len());
    for (position, base) in bases.iter().enumerate() {
        if cut_rest {
            tracing::warn!(dir = %dir.display(), base_offset = base, "deleting segment after damaged data");
            remove_segment_files(dir, *base)?;
            continue;
        }
        if let Some(previous) = segments.last() {
            // After a cleaned segment the next one may start later (the
            // cleaner removed the batches in between), never earlier.
            let continues = if previous.cleaned {
                previous.next_offset == *base
                    || (previous.next_offset < *base && *base <= gaps_below)
            } else {
                previous.next_offset == *base
            };
            if !continues {
                tracing::warn!(dir = %dir.display(), base_offset = base, expected = previous.next_offset, "segment does not continue the log; deleting it and later segments");
                remove_segment_files(dir, *base)?;
                cut_rest = true;
                continue;
            }
        }
        let next_base = bases.get(position + 1).copied();
        let trusted = clean || next_base.is_some_and(|next| next <= recovery_point);
        let cleaned = *base < gaps_below;
        let rule = if cleaned {
            OffsetRule::Increasing {
                gaps_until: gaps_below,
                below: next_base.unwrap_or(u64::MAX),
            }
        } else {
            OffsetRule::Contiguous
        };
        let (mut segment, index_rebuilt, damaged) =
            open_segment(dir, config, *base, trusted, rule, &mut epochs).await?;
        segment.cleaned = cleaned;
        if segment.size_bytes == 0 && position > 0 {
            tracing::info!(dir = %dir.display(), base_offset = base, "removing empty segment");
            remove_segment_files(dir, *base)?;
            // An empty cleaned segment is a gap like any other; an empty
            // dirty one is where the written log ended.
            cut_rest = !cleaned;
            continue;
        }
        let is_last = position + 1 == bases.len();
        let ended_early = if cleaned {
            damaged
        } else {
            next_base.is_some_and(|next| segment.next_offset != next)
        };
        segments.push(segment);
        rebuilt.push(index_rebuilt);
        if ended_early && !is_last {
            cut_rest = true;
        }
    }
    let now = now_ms();
    if segments.is_empty() {
        let start = saved_log_start.unwrap_or(0);
        segments.push(Segment::new(start, now));
    }
    if let Some(last) = segments.last() {
        // (A damaged checkpoint counts as 0 here: no gap is known to end.)
        let gaps_end = cleaner.gaps_below();
        if last.cleaned && last.next_offset < gaps_end {
            // The cleaner emptied the end of the last cleaned segment and the
            // active segment after it had no file yet: the log still ends at
            // the first dirty offset, whose offsets were handed out.
            segments.push(Segment::new(gaps_end, now));
        }
    }
    let last = segments.len() - 1;
    for (position, segment) in segments.iter_mut().enumerate() {
        let is_active = position == last;
        segment.sealed = !is_active;
        segment.written_bytes = segment.size_bytes;
        if let Some(file) = segment.file.clone() {
            if is_active {
                segment.tail_block = read_tail_block(&file, segment.size_bytes).await?;
                segment.created_ms = now;
                file.dma
                    .truncate(segment.size_bytes)
                    .await
                    .map_err(|error| LogError::io("truncate", &file.path, glommio_io(error)))?;
                segment.allocated_bytes = segment.size_bytes;
                // The sealed index files (if any) describe the old state.
                remove_index_files(dir, segment.base_offset)?;
            } else if rebuilt.get(position).copied().unwrap_or(true) {
                write_index_files(dir, segment.base_offset, &segment.index)?;
            }
            if !clean {
                file.dma
                    .fdatasync()
                    .await
                    .map_err(|error| LogError::io("fdatasync", &file.path, glommio_io(error)))?;
            }
        }
    }
    let next_offset = segments[last].next_offset;
    let first_base = segments[0].base_offset;
    let log_start_offset = saved_log_start
        .unwrap_or(first_base)
        .max(first_base)
        .min(next_offset);
    if saved_log_start.is_some_and(|saved| saved != log_start_offset) {
        // Recovery lost offsets the saved start pointed past (or retention
        // deleted segments before the start was saved): store the truth.
        checkpoint::write_offset(dir, checkpoint::LOG_START_FILE, log_start_offset)?;
    }
    if epochs.truncate_from(next_offset) {
        epochs.store(dir)?;
    }
    if loaded_cleaner.is_none() {
        cleaner = CleanerCheckpoint::restart_with_gaps_below(next_offset);
        cleaner.store(dir)?;
    } else if cleaner.truncate(next_offset) {
        cleaner.store(dir)?;
    }
    // Everything now on disk is synced: it is the recovered log.
    checkpoint::write_offset(
        dir,
        checkpoint::RECOVERY_POINT_FILE,
        segments[last].base_offset,
    )?;
    let marker = dir.join(checkpoint::CLEAN_SHUTDOWN_FILE);
    if clean {
        std::fs::remove_file(&marker)
            .map_err(|source| LogError::io("remove marker", &marker, source))?;
    }
    sync_dir(dir)?;
    Ok(LogState {
        segments,
        log_start_offset,
        next_offset,
        written_offset: next_offset,
        durable_offset: next_offset,
        hot: VecDeque::new(),
        hot_bytes: 0,
        unwritten_bytes: 0,
        epochs,
        epochs_dirty: false,
        unsynced_records: 0,
        first_unsynced_write: None,
        sync_requested_until: 0,
        failed: None,
        closing: false,
        stats: LogStats::default(),
        cleaner,
    })
}

/// Segment base offsets found in `dir`, sorted; removes leftover temp files
/// and index files whose segment is gone.
fn list_segments(dir: &Path) -> LogResult<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|source| LogError::io("list dir", dir, source))?;
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LogError::io("list dir", dir, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_log_file_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(stem) = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"))
        {
            indexes.push((stem.to_string(), entry.path()));
        }
    }
    bases.sort_unstable();
    for (stem, path) in indexes {
        if parse_log_file_name(&format!("{stem}.log"))
            .is_none_or(|base| bases.binary_search(&base).is_err())
        {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(bases)
}

/// Opens one segment. A trusted segment keeps its index files if they pass
/// the checks and only its last index interval is walked; an untrusted one
/// is scanned whole with CRC checks and cut at the first invalid batch.
/// Returns the segment, whether its index was rebuilt, and whether a scan
/// found damage (and cut the segment there).
async fn open_segment(
    dir: &Path,
    config: &LogConfig,
    base_offset: u64,
    trusted: bool,
    rule: OffsetRule,
    epochs: &mut LeaderEpochCache,
) -> LogResult<(Segment, bool, bool)> {
    let path = dir.join(log_file_name(base_offset));
    let file = Rc::new(SegmentFile::open(path.clone(), false).await?);
    let file_bytes = file.file_bytes().await?;
    let mut segment = Segment::new(base_offset, now_ms());
    if trusted {
        if let Some(index) = load_index(dir, base_offset, file_bytes) {
            let resume = index
                .offsets
                .last()
                .map_or(0, |entry| u64::from(entry.position));
            let resume_offset = index.offsets.last().map_or(base_offset, |entry| {
                base_offset + u64::from(entry.relative_offset)
            });
            if let Some(last_time) = index.times.last() {
                segment.max_timestamp = last_time.timestamp;
                segment.offset_of_max_timestamp =
                    base_offset + u64::from(last_time.relative_offset);
            }
            segment.index = index;
            segment.size_bytes = resume;
            let mut tail = Segment::new(base_offset, 0);
            let interval = config.index_interval_bytes;
            let outcome = scan_batches(
                &file,
                resume,
                file_bytes,
                base_offset,
                rule,
                ScanMode::HeadersOnly,
                |position, header| {
                    tail.note_batch(header, position, interval);
                    true
                },
            )
            .await;
            let resume_ok = matches!(&outcome, Ok(found) if found.damage.is_none() && found.valid_end == file_bytes);
            if resume_ok && (resume == 0 || tail.next_offset > resume_offset) {
                if tail.max_timestamp > segment.max_timestamp {
                    segment.max_timestamp = tail.max_timestamp;
                    segment.offset_of_max_timestamp = tail.offset_of_max_timestamp;
                }
                segment.size_bytes = tail.size_bytes.max(resume);
                segment.next_offset = if tail.next_offset > base_offset {
                    tail.next_offset
                } else {
                    base_offset
                };
                segment.file = Some(file);
                return Ok((segment, false, false));
            }
            tracing::warn!(path = %path.display(), "segment does not match its index; scanning it whole");
            segment = Segment::new(base_offset, now_ms());
        }
    }
    let interval = config.index_interval_bytes;
    let outcome = scan_batches(
        &file,
        0,
        file_bytes,
        base_offset,
        rule,
        ScanMode::VerifyCrc,
        |position, header| {
            segment.note_batch(header, position, interval);
            if header.partition_leader_epoch >= 0 {
                epochs.assign(header.partition_leader_epoch, header.base_offset as u64);
            }
            true
        },
    )
    .await?;
    if outcome.valid_end < file_bytes {
        match &outcome.damage {
            Some(reason) => tracing::warn!(
                path = %path.display(),
                valid_bytes = outcome.valid_end,
                cut_bytes = file_bytes - outcome.valid_end,
                next_offset = outcome.next_offset,
                reason = %reason,
                "recovery truncated a damaged segment tail"
            ),
            None => tracing::info!(
                path = %path.display(),
                valid_bytes = outcome.valid_end,
                "recovery trimmed unwritten preallocated space"
            ),
        }
        file.dma
            .truncate(outcome.valid_end)
            .await
            .map_err(|error| LogError::io("truncate", &path, glommio_io(error)))?;
    }
    segment.size_bytes = outcome.valid_end;
    segment.verified_bytes = outcome.valid_end;
    segment.next_offset = outcome.next_offset.max(base_offset);
    segment.file = Some(file);
    Ok((segment, true, outcome.damage.is_some()))
}

fn load_index(dir: &Path, base_offset: u64, segment_bytes: u64) -> Option<SegmentIndex> {
    let offsets = std::fs::read(dir.join(offset_index_name(base_offset))).ok()?;
    let times = std::fs::read(dir.join(time_index_name(base_offset))).ok()?;
    SegmentIndex::decode_checked(&offsets, &times, segment_bytes, u64::from(u32::MAX))
}
