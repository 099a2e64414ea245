//! The flusher: writes appended batches to their segment files in aligned
//! blocks, makes room ahead of them (zero fills, reservations), syncs as the
//! policy says, and creates, seals and syncs segments and their index files.

use std::future::poll_fn;
use std::path::Path;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::io::DmaBuffer;

use super::maintenance::leave_clean_state;
use super::{sync_dir, Shared, PAUSED_RETRY};
use crate::checkpoint;
use crate::config::{LogConfig, SyncPolicy};
use crate::error::{glommio_io, LogError, LogResult};
use crate::index::SegmentIndex;
use crate::segment::{
    align_down, align_up, log_file_name, offset_index_name, time_index_name, Segment, SegmentFile,
};
use crate::space::{self, FillEnd, PendingFill, Preallocation};

impl Shared {
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

/// The flusher task: writes appended data as soon as the previous write is
/// done (so writes pipeline behind appends) and syncs as the policy says.
pub(super) async fn run_flusher(shared: Rc<Shared>) {
    loop {
        let paused = shared.state.borrow().paused.is_some();
        let deadline = match shared.next_sync_deadline() {
            Some(delay) if paused => Some(delay.min(PAUSED_RETRY)),
            None if paused => Some(PAUSED_RETRY),
            other => other,
        };
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
        note_flush_outcome(&shared, outcome);
        shared.progress.wake_all();
    }
}

/// Moves the log between writable, paused (a transient error: the batches
/// not yet written stay queued, in order, and the next cycle retries them)
/// and failed (anything else: writes are refused until a reopen). One line
/// when a pause starts and one when it ends, not one per retry.
fn note_flush_outcome(shared: &Shared, outcome: LogResult<()>) {
    let mut state = shared.state.borrow_mut();
    match outcome {
        Ok(()) => {
            if let Some(reason) = state.paused.take() {
                tracing::info!(dir = %shared.dir.display(), paused_by = %reason, "log writes resumed");
            }
        }
        Err(error) if error.is_transient() => {
            if state.paused.is_none() {
                tracing::warn!(
                    dir = %shared.dir.display(),
                    %error,
                    pending_bytes = state.unwritten_bytes,
                    "log writes paused (disk or descriptor table full): appends are refused with a retriable error and pending batches are retried every {} ms",
                    PAUSED_RETRY.as_millis()
                );
            }
            state.paused = Some(error.to_string());
        }
        Err(error) => {
            tracing::error!(dir = %shared.dir.display(), %error, "log write failed; the log refuses further writes");
            state.failed = Some(error.to_string());
        }
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
pub(super) async fn write_pending(shared: &Rc<Shared>) -> LogResult<()> {
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
    // The hot tail is in log order and its unwritten batches are at its
    // end (this segment's, then later segments' after a roll): walk back to
    // the first of them instead of over the whole tail (thousands of
    // written batches, on every write).
    let first_unwritten = state
        .hot
        .iter()
        .rposition(|cached| {
            cached.segment_base < segment.base_offset
                || (cached.segment_base == segment.base_offset
                    && cached.position < segment.written_bytes)
        })
        .map_or(0, |last_written| last_written + 1);
    for cached in state.hot.range(first_unwritten..).filter(|cached| {
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
    leave_clean_state(shared).await?;
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
            let state = &mut *state;
            schedule_fill(
                config,
                &file,
                &mut state.segments[position],
                plan.end_position,
                &mut state.stats,
            );
        }
    }
    if plan.seal_after {
        seal_segment(shared, plan.segment_base, &file).await?;
    }
    Ok(())
}

/// Makes the file ready for writes up to the plan's end and returns how far
/// it is reserved: a background zero fill the writes would reach is stopped
/// first (waiting for its chunk in flight), and room short of the writes is
/// reserved now.
async fn ensure_room(shared: &Shared, file: &Rc<SegmentFile>, plan: &WritePlan) -> LogResult<u64> {
    let config = &shared.config;
    let need = align_up(plan.end_position);
    let pending = {
        let mut state = shared.state.borrow_mut();
        state
            .segment_index(plan.segment_base)
            .and_then(|position| state.segments[position].pending_fill.take())
    };
    if let Some(mut fill) = pending {
        if let Some(end) = fill.ended() {
            note_fill_end(shared, plan.segment_base, end);
        } else if need > fill.filled() {
            note_fill_end(shared, plan.segment_base, fill.stop().await);
        } else {
            let mut state = shared.state.borrow_mut();
            if let Some(position) = state.segment_index(plan.segment_base) {
                state.segments[position].pending_fill = Some(fill);
            }
        }
    }
    let allocated = plan.allocated_bytes;
    if need <= allocated {
        return Ok(allocated);
    }
    let target = space::reserve_target(allocated, need, config.preallocate_bytes);
    let reserve = |end| async move {
        file.dma
            .pre_allocate(end, false)
            .await
            .map_err(|error| LogError::io("preallocate", &file.path, glommio_io(error)))
    };
    match reserve(target).await {
        Ok(()) => Ok(target),
        // A nearly full disk may still hold what these writes need: use the
        // last free blocks rather than pause early.
        Err(error) if error.is_transient() && target > need => {
            reserve(need).await?;
            Ok(need)
        }
        Err(error) => Err(error),
    }
}

/// Records how a fill of the segment at `segment_base` ended.
fn note_fill_end(shared: &Shared, segment_base: u64, end: FillEnd) {
    let mut state = shared.state.borrow_mut();
    let state = &mut *state;
    match state.segment_index(segment_base) {
        Some(position) => record_fill_end(&mut state.segments[position], &mut state.stats, end),
        None => state.stats.zero_filled_bytes += end.zeroed.saturating_sub(end.from),
    }
}

/// Counts a fill's zeros and remembers how far they go (and whether the
/// segment may be filled again).
fn record_fill_end(segment: &mut Segment, stats: &mut super::LogStats, end: FillEnd) {
    stats.zero_filled_bytes += end.zeroed.saturating_sub(end.from);
    segment.zeroed_bytes = segment.zeroed_bytes.max(end.zeroed);
    segment.fill_failed |= end.failed;
}

/// Starts the next background zero fill of the segment if the zeros ahead
/// of `data_end` run short (at most one fill per segment at a time; one
/// that ended is reaped first).
fn schedule_fill(
    config: &LogConfig,
    file: &Rc<SegmentFile>,
    segment: &mut Segment,
    data_end: u64,
    stats: &mut super::LogStats,
) {
    if config.preallocation != Preallocation::Zeroed || segment.fill_failed {
        return;
    }
    if let Some(fill) = segment.pending_fill.as_mut() {
        let Some(end) = fill.ended() else {
            return;
        };
        segment.pending_fill = None;
        record_fill_end(segment, stats, end);
        if segment.fill_failed {
            return;
        }
    }
    if let Some((from, to)) =
        space::next_fill(data_end, segment.allocated_bytes, segment.zeroed_bytes)
    {
        segment.pending_fill = Some(PendingFill::start(file.clone(), from, to));
    }
}

/// Stops the background fills of every segment (before a truncation).
pub(super) async fn finish_all_fills(shared: &Shared) {
    let fills: Vec<(u64, PendingFill)> = shared
        .state
        .borrow_mut()
        .segments
        .iter_mut()
        .filter_map(|segment| Some((segment.base_offset, space::take_fill(segment)?)))
        .collect();
    for (segment_base, fill) in fills {
        let end = fill.stop().await;
        note_fill_end(shared, segment_base, end);
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
    space::check_whole_write("write", file, result, expected)?;
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
    // The new file's directory entry is durable before anything in it is
    // reported durable. Synced on the shard: moved to the blocking threads,
    // a node's first writes to thousands of partitions ran thousands of
    // them at once, and one such run ended in heap corruption (not yet
    // understood; see the issue notes).
    sync_dir(&shared.dir)?;
    let mut state = shared.state.borrow_mut();
    if let Some(position) = state.segment_index(base_offset) {
        state.segments[position].file = Some(file.clone());
    }
    Ok(file)
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
    space::finish_fill(fill).await;
    file.truncate(size).await?;
    let sync_started = Instant::now();
    file.sync_data().await?;
    let sync_micros = elapsed_micros(sync_started);
    // The small files a seal writes (indexes, epochs, recovery point) and
    // their syncs go to the executor's blocking threads: written on the
    // shard, each seal stalled every partition of the core for a few
    // milliseconds of std writes and fsyncs.
    let dir = shared.dir.clone();
    checkpoint::off_executor(move || write_index_files(&dir, base_offset, &index)).await?;
    let epochs = {
        let mut state = shared.state.borrow_mut();
        if let Some(position) = state.segment_index(base_offset) {
            let segment = &mut state.segments[position];
            segment.sealed = true;
            segment.allocated_bytes = size;
            segment.tail_block = Vec::new();
        }
        state.stats.fsyncs += 1;
        state.stats.fsync_micros += sync_micros;
        // Earlier segments were sealed (and synced) before this one.
        if state.durable_offset < next_offset {
            state.durable_offset = next_offset;
            state.unsynced_records = 0;
            state.first_unsynced_write = None;
        }
        state.epochs_dirty = false;
        state.epochs.clone()
    };
    store_epochs(shared, epochs).await?;
    let dir = shared.dir.clone();
    checkpoint::off_executor(move || {
        checkpoint::write_offset(&dir, checkpoint::RECOVERY_POINT_FILE, next_offset)
    })
    .await
}

/// Writes the leader-epoch checkpoint on the executor's blocking threads.
/// A flush's sync and a segment's seal run side by side and may both write
/// it: each copy is numbered when it is taken (on the shard, in the same
/// step as the copy, so a higher number is never older state), and a write
/// is skipped once a higher-numbered copy is on disk, under a lock taken
/// only on the blocking thread. (An async lock here deadlocked: the sync
/// future that held it is not polled while the flush cycle awaits a seal.)
pub(super) async fn store_epochs(
    shared: &Shared,
    epochs: crate::checkpoint::LeaderEpochCache,
) -> LogResult<()> {
    let taken = shared.epochs_taken.get() + 1;
    shared.epochs_taken.set(taken);
    let (written, dir) = (shared.epochs_written.clone(), shared.dir.clone());
    checkpoint::off_executor(move || {
        let mut last = written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last >= taken {
            return Ok(());
        }
        epochs.store(&dir)?;
        *last = taken;
        Ok(())
    })
    .await
}

/// One `fdatasync` of the active segment, covering everything written so
/// far: every caller waiting for durability up to there is released.
pub(super) async fn sync_active(shared: &Shared) -> LogResult<()> {
    let (file, covered, epochs) = {
        let mut state = shared.state.borrow_mut();
        let epochs = std::mem::take(&mut state.epochs_dirty).then(|| state.epochs.clone());
        (state.active().file.clone(), state.written_offset, epochs)
    };
    // A new leader epoch is recorded before the data written in it is
    // reported durable.
    if let Some(epochs) = epochs {
        store_epochs(shared, epochs).await?;
    }
    let sync_started = Instant::now();
    if let Some(file) = file {
        file.sync_data().await?;
    }
    let mut state = shared.state.borrow_mut();
    state.stats.fsyncs += 1;
    state.stats.fsync_micros += elapsed_micros(sync_started);
    if covered > state.durable_offset {
        state.durable_offset = covered;
    }
    if state.durable_offset >= state.written_offset {
        state.unsynced_records = 0;
        state.first_unsynced_write = None;
    }
    Ok(())
}

/// Both index files of a segment, with one directory sync.
pub(super) fn write_index_files(
    dir: &Path,
    base_offset: u64,
    index: &SegmentIndex,
) -> LogResult<()> {
    checkpoint::write_all_atomically(
        dir,
        &[
            (offset_index_name(base_offset), index.encode_offsets()),
            (time_index_name(base_offset), index.encode_times()),
        ],
    )
}

fn elapsed_micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}
