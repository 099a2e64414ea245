//! One cleaning pass of a compacted log (`cleanup.policy=compact`), Kafka's
//! semantics: for every key only the record with the highest offset stays.
//!
//! 1. **Plan** (under the state borrow): the sealed segments are the
//!    candidates (never the active one). The dirty part starts at the
//!    cleaner checkpoint; sealed segments younger than
//!    `min.compaction.lag.ms` end the cleanable range. Clean only when
//!    dirty / (clean + dirty) bytes exceeds `min.cleanable.dirty.ratio`, or
//!    when the oldest dirty batch is older than `max.compaction.lag.ms`.
//! 2. **Key map**: key → latest offset over the dirty part *including the
//!    active segment* (its records count as newest), but only over durable
//!    data below the last stable offset: a record that a crash could still
//!    lose must not make an older, durable one disappear, nor one that may
//!    still abort (or that `read_committed` consumers cannot read yet) a
//!    committed one. Aborted records never enter it. The map is bounded by
//!    [`CleanerLimits::dedupe_buffer_bytes`]; when it fills up the pass
//!    cleans only the prefix its keys cover and the next pass goes on.
//! 3. **Rewrite**: every cleanable segment below the new first dirty offset
//!    (the clean prefix too: new keys supersede old records there), in
//!    groups of consecutive segments whose total size fits `segment.bytes`,
//!    into `<base>.log.cleaned`. A record stays unless a later record of
//!    its key is in the map, it has no key, or it is a tombstone whose
//!    stretch of the clean part was first cleaned at least
//!    `delete.retention.ms` ago ([`CleanerCheckpoint::cleaned_at`]: a
//!    tombstone is always kept by the cleaning that first compacts it).
//!    The new first dirty offset is never past the last stable offset, so
//!    every transactional batch rewritten is decided; the transaction rules
//!    below decide its fate first. A lone segment that would come out
//!    unchanged is not rewritten at all.
//! 4. **Swap** (under the flush lock, no `.await` inside): check that
//!    nothing changed the segments meanwhile (retention, truncation), then
//!    the commit protocol of [`crate::cleaner`], then publish the new
//!    segments in memory and drop their batches from the hot tail.
//!
//! Idempotent-producer state: the broker snapshots it and, at open, replays
//! the batch headers after the snapshot (`broker/src/producer/snapshot.rs`), which may
//! reach into cleaned segments. So the caller names the batches to keep
//! ([`PartitionLog::compact_retaining`]: each producer's last batch); one
//! whose records all go stays as an empty batch with its header fields, as
//! Kafka's cleaner does. Every other batch with nothing left is dropped
//! (an empty batch kept by a former pass too, once no longer retained).
//!
//! # Transactions (Kafka's `LogCleaner`, KIP-98 and KIP-534)
//!
//! Storage does not know which transactions aborted; the broker does. So
//! the caller passes [`CleanerInput::transactions`]: the aborted
//! transactions (producer id, first offset, marker offset) of its
//! aborted-transaction index, the last stable offset, and the offset below
//! which markers may go. That is simpler than having the cleaner learn the
//! outcomes from the markers, which come after the data they decide (Kafka
//! too reads its `.txnindex` ahead for that). Below the last stable offset
//! every transaction has its marker, so a transactional batch there is
//! aborted exactly when an aborted range of its producer covers it, and
//! committed otherwise. Without them (`None`, storage-only callers) control
//! and transactional batches pass through whole, their keys unused.
//!
//! - Committed records compact like any other; aborted ones all go (their
//!   batch is kept empty when it is its producer's last).
//! - Markers: one pass walks the log from its start in offset order
//!   ([`TxnWalk`]) and notes which producers have a data batch since their
//!   last marker. A marker whose transaction had a batch walked stays as it
//!   is (even when this pass removes that batch: a consumer that read the
//!   data must still find the marker). A marker of a transaction with no
//!   data left gets the delete-horizon attribute and `now +
//!   delete.retention.ms` as its base timestamp (KIP-534, rather than the
//!   tombstones' [`CleanerCheckpoint::cleaned_at`], which dates from when
//!   the marker's stretch was first cleaned, possibly long before its data
//!   went); a pass after the horizon removes it, unless the caller still
//!   needs it: its aborted entry is still listed (a `read_committed`
//!   consumer told of an aborted transaction skips the producer's batches
//!   until it reads the ABORT marker), or it lies at or beyond
//!   `markers_removable_below` (the broker's producer-state snapshot does
//!   not cover it: a replay after a restart needs it to close the
//!   transaction). [`CleanReport::aborts_without_data`] tells the broker
//!   which aborted entries no fetch needs any more.
//!
//! Between batches the pass yields to the executor; its reads and writes
//! are glommio I/O, so it shares the shard with appends and fetches. It
//! holds the flush lock only for the swap's renames and a few fsyncs.

use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::{CachedBatch, PartitionLog};
use crate::batch::BatchHeader;
use crate::checkpoint::{self, CleanerCheckpoint, SwapGroup};
use crate::cleaner::{
    apply_group, cleaned_name, empty_batch, filter_batch, for_each_keyed_record, CleanReport,
    CleanedFiles, CleanedWriter, CleanerLimits, Fate, KeyMap, SwapStep, Verdict,
    CHECKPOINT_SWAP_FILE,
};
use crate::cleaner_txn::{CleanerInput, MarkerFate, TxnDataFate, TxnWalk};
use crate::config::CompactionConfig;
use crate::error::{LogError, LogResult};
use crate::segment::{offset_index_name, time_index_name, Segment, SegmentFile};

/// Bytes the pass reads at a time (whole batches, through the log's reads).
const READ_CHUNK_BYTES: u64 = 1 << 20;
/// Bytes the pass writes at a time.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// A segment as the plan saw it; checked again before the swap.
struct Snapshot {
    base_offset: u64,
    file: Option<Rc<SegmentFile>>,
    size_bytes: u64,
    next_offset: u64,
    created_ms: i64,
}

impl Snapshot {
    fn matches(&self, segment: &Segment) -> bool {
        let same_file = match (&self.file, &segment.file) {
            (Some(planned), Some(current)) => Rc::ptr_eq(planned, current),
            (None, None) => true,
            _ => false,
        };
        same_file
            && segment.sealed
            && segment.base_offset == self.base_offset
            && segment.size_bytes == self.size_bytes
    }
}

/// What a pass works on, taken out of the state.
struct Plan {
    /// The cleanable sealed segments, from the first segment of the log.
    segments: Vec<Snapshot>,
    /// Base offset of the first segment that is not cleanable.
    uncleanable_base: u64,
    first_dirty: u64,
    durable_end: u64,
    log_start: u64,
    checkpoint: CleanerCheckpoint,
    segment_count: usize,
}

impl Plan {
    /// Where the segment at `position` ends (the next one's base offset).
    fn segment_end(&self, position: usize) -> u64 {
        self.segments
            .get(position + 1)
            .map_or(self.uncleanable_base, |next| next.base_offset)
    }
}

/// One group's result.
enum GroupOutput {
    /// Left as it is (no file written).
    Unchanged,
    /// Replaced by `new` (`None`: removed, its output was empty).
    Replaced {
        group: SwapGroup,
        new: Option<Box<Segment>>,
    },
}

/// Resets the one-pass-at-a-time flag however the pass ends.
struct Running<'a>(&'a std::cell::Cell<bool>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Whole batches of the log from `next` up to (not including) a batch
/// starting at or after `until`, read through [`PartitionLog::read`] (so from
/// the hot tail or the files, CRC-checked where not yet verified).
struct BatchReader<'a> {
    log: &'a PartitionLog,
    next: u64,
    until: u64,
    upper: u64,
    buffer: Bytes,
    position: usize,
    bytes_read: u64,
}

impl<'a> BatchReader<'a> {
    fn new(log: &'a PartitionLog, from: u64, until: u64, upper: u64) -> Self {
        Self {
            log,
            next: from,
            until,
            upper,
            buffer: Bytes::new(),
            position: 0,
            bytes_read: 0,
        }
    }

    async fn next_batch(&mut self) -> LogResult<Option<(BatchHeader, Bytes)>> {
        loop {
            if self.position < self.buffer.len() {
                let header = BatchHeader::parse(&self.buffer[self.position..])?;
                let end = self.position + header.total_bytes();
                // `read` returns whole batches only.
                assert!(end <= self.buffer.len(), "a read returned a partial batch");
                let batch = self.buffer.slice(self.position..end);
                self.position = end;
                if header.base_offset as u64 >= self.until {
                    self.next = self.until;
                    self.buffer = Bytes::new();
                    return Ok(None);
                }
                self.next = header.last_offset() as u64 + 1;
                return Ok(Some((header, batch)));
            }
            if self.next >= self.until || self.next >= self.upper {
                return Ok(None);
            }
            let read = self
                .log
                .read(self.next, READ_CHUNK_BYTES, self.upper)
                .await?;
            if read.chunks.is_empty() {
                return Ok(None);
            }
            self.buffer = read.load().await?;
            self.position = 0;
            self.bytes_read += self.buffer.len() as u64;
        }
    }
}

/// Groups consecutive segments whose total size fits `max_bytes` and whose
/// offsets fit the 32-bit relative offsets of one segment's indexes.
fn group_segments(segments: &[Snapshot], max_bytes: u64) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < segments.len() {
        let mut bytes = segments[start].size_bytes;
        let mut end = start + 1;
        while let Some(next) = segments.get(end) {
            let span = next.next_offset.max(next.base_offset) - segments[start].base_offset;
            if bytes + next.size_bytes > max_bytes || span >= u64::from(u32::MAX - 1) {
                break;
            }
            bytes += next.size_bytes;
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// A cleaned group's file, created on the first change.
struct GroupSink {
    base_offset: u64,
    created_ms: i64,
    reserve_bytes: u64,
    writer: Option<CleanedWriter>,
    /// While `Some`, nothing was written yet and every batch so far (below
    /// this offset) stays byte for byte: the segment may be left as it is.
    untouched_until: Option<u64>,
    /// Where the untouched batches start.
    untouched_from: u64,
}

impl PartitionLog {
    /// Runs one cleaning pass if the log is compacted and dirty enough (see
    /// the module comment). `now_ms` is the wall clock (tombstone expiry,
    /// compaction lags). Appends, reads and flushes go on meanwhile. A pass
    /// that finds its segments changed under it (retention, truncation)
    /// discards its output; the next pass starts over.
    pub async fn compact(&self, now_ms: i64, limits: &CleanerLimits) -> LogResult<CleanReport> {
        self.compact_retaining(now_ms, limits, &CleanerInput::default())
            .await
    }

    /// [`PartitionLog::compact`] with what the caller knows of the log: the
    /// batches never to drop (one whose records all go is kept as an empty
    /// batch with its header fields) and its transactions (see
    /// [`CleanerInput`] and the module comment).
    pub async fn compact_retaining(
        &self,
        now_ms: i64,
        limits: &CleanerLimits,
        input: &CleanerInput,
    ) -> LogResult<CleanReport> {
        let Some(config) = self.shared.config.compaction.clone() else {
            return Ok(CleanReport::default());
        };
        if self.shared.compacting.replace(true) {
            return Ok(CleanReport::default());
        }
        let _running = Running(&self.shared.compacting);
        if self.shared.cleaner_pending.get() {
            // The last pass could not clear its pending groups: no new
            // cleaned file may exist before they are (see `crate::cleaner`).
            let cleared = self.shared.state.borrow().cleaner.clone();
            let dir = self.shared.dir.clone();
            checkpoint::off_executor(move || cleared.store(&dir)).await?;
            self.shared.cleaner_pending.set(false);
        }
        self.roll_for_max_lag(&config, now_ms);
        self.seal_rolled_segments().await;
        let Some(plan) = self.compaction_plan(&config, now_ms).await? else {
            return Ok(CleanReport::default());
        };
        let started = Instant::now();
        let mut report = CleanReport {
            ran: true,
            first_dirty_before: plan.first_dirty,
            first_dirty_after: plan.first_dirty,
            segments_before: plan.segment_count,
            segments_after: plan.segment_count,
            ..CleanReport::default()
        };
        let (map, covered_until) = self
            .build_key_map(&plan, limits, input, &mut report)
            .await?;
        let first_dirty_after = covered_until.min(plan.uncleanable_base);
        if first_dirty_after <= plan.first_dirty {
            return Ok(report);
        }
        let rewrite_end = plan
            .segments
            .iter()
            .take_while(|segment| segment.base_offset < first_dirty_after)
            .count();
        let groups = group_segments(
            &plan.segments[..rewrite_end],
            self.shared.config.segment_bytes,
        );
        let mut files = CleanedFiles::new(&self.shared.dir);
        let mut outputs = Vec::with_capacity(groups.len());
        let pass = Pass {
            plan: &plan,
            map: &map,
            limits,
            delete_retention_ms: config.delete_retention.as_millis() as i64,
            now_ms,
            first_dirty_after,
            input,
        };
        // One walk of the transactions over every group, in offset order.
        let mut walk = input.transactions.as_ref().map(TxnWalk::new);
        for range in &groups {
            let output = self
                .clean_group(&pass, range.clone(), walk.as_mut(), &mut files, &mut report)
                .await?;
            outputs.push(output);
        }
        let context = SwapContext {
            plan: &plan,
            groups: &groups,
            rewrite_end,
            first_dirty_after,
            delete_retention_ms: config.delete_retention.as_millis() as i64,
            now_ms,
            crash_at: limits.crash_at,
        };
        self.swap(context, outputs, files, &mut report).await?;
        if report.groups_replaced > 0 || report.records_removed > 0 {
            tracing::info!(
                dir = %self.shared.dir.display(),
                first_dirty = report.first_dirty_after,
                segments_before = report.segments_before,
                segments_after = report.segments_after,
                bytes_read = report.bytes_read,
                bytes_written = report.bytes_written,
                records_removed = report.records_removed,
                tombstones_removed = report.tombstones_removed,
                aborted_removed = report.aborted_removed,
                markers_horizon_set = report.markers_horizon_set,
                markers_removed = report.markers_removed,
                map_keys = report.map_keys,
                map_full = report.map_full,
                elapsed_ms = started.elapsed().as_millis() as u64,
                lock_held_us = report.lock_held_us,
                "compacted log"
            );
        }
        Ok(report)
    }

    /// A rolled segment is sealed by the flusher's next round, which an idle
    /// log may not have soon: ask for it and wait, so this pass can clean it.
    /// The flusher does the work, at its own priority.
    async fn seal_rolled_segments(&self) {
        std::future::poll_fn(|context| {
            let state = self.shared.state.borrow();
            let unsealed = state.segments[..state.segments.len() - 1]
                .iter()
                .any(|segment| !segment.sealed);
            if !unsealed || state.check_writable().is_err() {
                return std::task::Poll::Ready(());
            }
            self.shared.progress.register(context.waker());
            drop(state);
            self.shared.wake_flusher();
            std::task::Poll::Pending
        })
        .await
    }

    /// `max.compaction.lag.ms` also bounds how long a record can sit in the
    /// active segment, which is never cleaned: roll it once it is that old.
    fn roll_for_max_lag(&self, config: &CompactionConfig, now_ms: i64) {
        let Some(max_lag) = config.max_compaction_lag else {
            return;
        };
        let rolled = {
            let mut state = self.shared.state.borrow_mut();
            let active = state.active();
            let old = now_ms.saturating_sub(active.created_ms) >= max_lag.as_millis() as i64;
            if active.size_bytes > 0 && old && state.check_writable().is_ok() {
                let next = state.next_offset;
                state.segments.push(Segment::new(next, now_ms));
                true
            } else {
                false
            }
        };
        if rolled {
            // The flusher seals the rolled segment on its next round.
            self.shared.wake_flusher();
        }
    }

    async fn compaction_plan(
        &self,
        config: &CompactionConfig,
        now_ms: i64,
    ) -> LogResult<Option<Plan>> {
        let (plan, dirty_bytes, clean_bytes, first_dirty_file) = {
            let state = self.shared.state.borrow();
            if state.check_writable().is_err() {
                return Ok(None);
            }
            let first_dirty = state
                .cleaner
                .first_dirty()
                .max(state.segments[0].base_offset);
            // Sealed segments are a prefix; the last segment is active.
            let sealed_end = state.segments[..state.segments.len() - 1]
                .iter()
                .take_while(|segment| segment.sealed)
                .count();
            let Some(dirty_start) = state.segments[..sealed_end]
                .iter()
                .position(|segment| segment.next_offset > first_dirty)
            else {
                return Ok(None);
            };
            let lag_ms = config.min_compaction_lag.as_millis() as i64;
            let cleanable_end = if lag_ms > 0 {
                let newest_allowed = now_ms.saturating_sub(lag_ms);
                dirty_start
                    + state.segments[dirty_start..sealed_end]
                        .iter()
                        .take_while(|segment| {
                            let newest = if segment.max_timestamp >= 0 {
                                segment.max_timestamp
                            } else {
                                segment.created_ms
                            };
                            newest <= newest_allowed
                        })
                        .count()
            } else {
                sealed_end
            };
            if cleanable_end == dirty_start {
                return Ok(None);
            }
            let size = |range: Range<usize>| -> u64 {
                state.segments[range]
                    .iter()
                    .map(|segment| segment.size_bytes)
                    .sum()
            };
            let segments = state.segments[..cleanable_end]
                .iter()
                .map(|segment| Snapshot {
                    base_offset: segment.base_offset,
                    file: segment.file.clone(),
                    size_bytes: segment.size_bytes,
                    next_offset: segment.next_offset,
                    created_ms: segment.created_ms,
                })
                .collect();
            let plan = Plan {
                segments,
                uncleanable_base: state.segments[cleanable_end].base_offset,
                first_dirty,
                durable_end: state.durable_offset,
                log_start: state.log_start_offset,
                checkpoint: state.cleaner.clone(),
                segment_count: state.segments.len(),
            };
            let first_dirty_file = state.segments[dirty_start].file.clone();
            (
                plan,
                size(dirty_start..cleanable_end),
                size(0..dirty_start),
                first_dirty_file,
            )
        };
        if dirty_bytes == 0 {
            return Ok(None);
        }
        let ratio = dirty_bytes as f64 / (dirty_bytes + clean_bytes) as f64;
        if ratio > config.min_cleanable_dirty_ratio {
            return Ok(Some(plan));
        }
        // Below the ratio: clean anyway once the oldest dirty batch waited
        // `max.compaction.lag.ms` (Kafka reads the first batch's timestamp).
        let (Some(max_lag), Some(file)) = (config.max_compaction_lag, first_dirty_file) else {
            return Ok(None);
        };
        let header = file.read_bytes(0, crate::batch::BATCH_HEADER_BYTES).await?;
        let first = BatchHeader::parse(&header)?;
        let overdue = first.max_timestamp >= 0
            && first.max_timestamp < now_ms.saturating_sub(max_lag.as_millis() as i64);
        Ok(overdue.then_some(plan))
    }

    /// Key → latest offset over the durable dirty part. Returns the map and
    /// the offset up to which it covers every record.
    async fn build_key_map(
        &self,
        plan: &Plan,
        limits: &CleanerLimits,
        input: &CleanerInput,
        report: &mut CleanReport,
    ) -> LogResult<(KeyMap, u64)> {
        let start = plan.first_dirty.max(plan.log_start);
        // Below the last stable offset every transaction is decided, and
        // a record there is final; one after it could still be aborted (or,
        // plain, would hide a key from `read_committed` consumers that
        // cannot read it yet).
        let stable_end = input
            .transactions
            .as_ref()
            .map_or(u64::MAX, |facts| facts.stable_end);
        let end = plan.durable_end.min(stable_end);
        let mut map = KeyMap::new(limits.dedupe_buffer_bytes, end.saturating_sub(start));
        let mut reader = BatchReader::new(self, start, end, end);
        let mut covered_until = end;
        let aborted = input.transactions.as_ref().map(TxnWalk::new);
        while let Some((header, batch)) = reader.next_batch().await? {
            let unusable = header.is_transactional()
                && aborted.as_ref().is_none_or(|walk| {
                    walk.is_aborted(header.producer_id, header.base_offset as u64)
                });
            // Markers have no keys of the topic; an aborted record (or one
            // whose outcome the caller did not say) must never supersede.
            if header.is_control() || unusable {
                continue;
            }
            let stopped = for_each_keyed_record(
                &batch,
                limits.decompressed_batch_bytes_max,
                |offset, key| offset < start || map.insert(map.digest(key), offset),
            );
            match stopped {
                Ok(Some(offset)) => {
                    report.map_full = true;
                    covered_until = offset;
                    break;
                }
                Ok(None) => {}
                Err(error) => {
                    // Its keys stay out of the map: nothing is removed because
                    // of it, and the batch is kept whole when rewritten.
                    tracing::debug!(dir = %self.shared.dir.display(), base_offset = header.base_offset, %error, "cleaner cannot decode batch");
                }
            }
            glommio::yield_if_needed().await;
        }
        report.bytes_read += reader.bytes_read;
        report.map_keys = map.len();
        Ok((map, covered_until))
    }

    async fn clean_group(
        &self,
        pass: &Pass<'_>,
        range: Range<usize>,
        mut walk: Option<&mut TxnWalk>,
        files: &mut CleanedFiles,
        report: &mut CleanReport,
    ) -> LogResult<GroupOutput> {
        let Pass {
            plan,
            map,
            delete_retention_ms,
            now_ms,
            first_dirty_after,
            input,
            ..
        } = *pass;
        let retain = &input.retain;
        let first = &plan.segments[range.start];
        let group_end = plan.segment_end(range.end - 1);
        let fate = |offset: u64, key: Option<&[u8]>, tombstone: bool| -> Fate {
            // Nothing at or after the new checkpoint goes (a segment may
            // straddle it): every gap lies below it, which recovery checks.
            if offset >= first_dirty_after {
                return Fate::Keep;
            }
            let Some(key) = key else {
                return Fate::Keyless;
            };
            if map
                .latest(map.digest(key))
                .is_some_and(|latest| latest > offset)
            {
                return Fate::Superseded;
            }
            let expired = plan
                .checkpoint
                .cleaned_at(offset)
                .is_some_and(|cleaned| cleaned.saturating_add(delete_retention_ms) <= now_ms);
            if tombstone && expired {
                return Fate::ExpiredTombstone;
            }
            Fate::Keep
        };
        // A lone segment may come out unchanged: then nothing is written. Not
        // when batches below the log start would go (they are not read).
        let mut may_stay = range.len() == 1;
        if may_stay && plan.log_start > first.base_offset {
            may_stay = match &first.file {
                Some(file) if first.size_bytes > 0 => {
                    let header = file.read_bytes(0, crate::batch::BATCH_HEADER_BYTES).await?;
                    BatchHeader::parse(&header)?.last_offset() as u64 >= plan.log_start
                }
                _ => false,
            };
        }
        let mut sink = GroupSink {
            base_offset: first.base_offset,
            created_ms: plan.segments[range.clone()]
                .iter()
                .map(|segment| segment.created_ms)
                .max()
                .unwrap_or(first.created_ms),
            reserve_bytes: plan.segments[range.clone()]
                .iter()
                .map(|segment| segment.size_bytes)
                .sum(),
            writer: None,
            untouched_until: may_stay.then_some(first.base_offset.max(plan.log_start)),
            untouched_from: first.base_offset.max(plan.log_start),
        };
        if !may_stay {
            self.start_writer(&mut sink, plan, files, report).await?;
        }
        for position in range.clone() {
            let segment = &plan.segments[position];
            if segment.size_bytes == 0 {
                continue;
            }
            let from = segment.base_offset.max(plan.log_start);
            let until = plan.segment_end(position);
            let mut reader = BatchReader::new(self, from, until, plan.durable_end);
            while let Some((header, batch)) = reader.next_batch().await? {
                let verdict =
                    self.batch_verdict(pass, walk.as_deref_mut(), &header, &batch, fate, report);
                match verdict {
                    Verdict::Keep => match (&mut sink.untouched_until, &mut sink.writer) {
                        (Some(until), _) => *until = header.last_offset() as u64 + 1,
                        (None, Some(writer)) => writer.push(&batch).await?,
                        (None, None) => unreachable!("a sink writes once it stops being untouched"),
                    },
                    Verdict::Drop if retain.contains(&(header.base_offset as u64)) => {
                        report.batches_rewritten += 1;
                        self.start_writer(&mut sink, plan, files, report).await?;
                        if let Some(writer) = &mut sink.writer {
                            writer.push(&empty_batch(&header)).await?;
                        }
                    }
                    Verdict::Drop => {
                        report.batches_dropped += 1;
                        self.start_writer(&mut sink, plan, files, report).await?;
                    }
                    Verdict::Rewrite(rewritten) => {
                        report.batches_rewritten += 1;
                        self.start_writer(&mut sink, plan, files, report).await?;
                        if let Some(writer) = &mut sink.writer {
                            writer.push(&rewritten).await?;
                        }
                    }
                }
                glommio::yield_if_needed().await;
            }
            report.bytes_read += reader.bytes_read;
        }
        let Some(writer) = sink.writer.take() else {
            return Ok(GroupOutput::Unchanged);
        };
        report.bytes_written += writer.bytes();
        let (file, mut segment) = writer.finish().await?;
        // An empty output replaces nothing, except at the start of the log,
        // whose first base offset must stay (it is the log start's floor).
        let keep = segment.size_bytes > 0 || range.start == 0;
        let group = SwapGroup {
            base: first.base_offset,
            end: group_end,
            keep,
        };
        if !keep {
            return Ok(GroupOutput::Replaced { group, new: None });
        }
        let index_files = [
            (
                cleaned_name(&offset_index_name(group.base)),
                segment.index.encode_offsets(),
            ),
            (
                cleaned_name(&time_index_name(group.base)),
                segment.index.encode_times(),
            ),
        ];
        let dir = self.shared.dir.clone();
        checkpoint::off_executor(move || {
            index_files
                .iter()
                .try_for_each(|(name, bytes)| checkpoint::write_atomically(&dir, name, bytes))
        })
        .await?;
        segment.file = Some(Rc::new(file));
        Ok(GroupOutput::Replaced {
            group,
            new: Some(Box::new(segment)),
        })
    }

    /// What becomes of one batch of a group: the transaction rules (module
    /// comment, step 3) first, then `fate` for each record.
    fn batch_verdict(
        &self,
        pass: &Pass<'_>,
        walk: Option<&mut TxnWalk>,
        header: &BatchHeader,
        batch: &[u8],
        fate: impl Fn(u64, Option<&[u8]>, bool) -> Fate,
        report: &mut CleanReport,
    ) -> Verdict {
        let base_offset = header.base_offset as u64;
        // At or after the new checkpoint nothing goes, and a batch reaching
        // it stays whole.
        let beyond = header.last_offset() as u64 >= pass.first_dirty_after;
        match walk {
            None if header.is_control() || header.is_transactional() => return Verdict::Keep,
            None => {}
            Some(walk) if header.is_control() => {
                if beyond || pass.input.retain.contains(&base_offset) {
                    return Verdict::Keep;
                }
                let marker = walk.on_control(
                    header,
                    batch,
                    pass.now_ms,
                    pass.delete_retention_ms,
                    &mut report.aborts_without_data,
                );
                return match marker {
                    MarkerFate::Keep | MarkerFate::KeepForBroker => Verdict::Keep,
                    MarkerFate::SetHorizon(rewritten) => {
                        report.markers_horizon_set += 1;
                        Verdict::Rewrite(rewritten)
                    }
                    MarkerFate::Remove => {
                        report.markers_removed += 1;
                        Verdict::Drop
                    }
                };
            }
            Some(walk) if header.is_transactional() => {
                // Noted even beyond: its marker must see that data remains.
                let data = walk.on_data(header);
                if beyond {
                    return Verdict::Keep;
                }
                if data == TxnDataFate::Aborted && header.records_count > 0 {
                    let records = header.records_count.max(0) as u64;
                    report.records_removed += records;
                    report.aborted_removed += records;
                    return Verdict::Drop;
                }
            }
            Some(_) => {}
        }
        if header.records_count == 0 && !beyond {
            // A batch a former pass kept empty for its producer: it goes
            // once the producer has written since.
            return if pass.input.retain.contains(&base_offset) {
                Verdict::Keep
            } else {
                Verdict::Drop
            };
        }
        match filter_batch(batch, pass.limits.decompressed_batch_bytes_max, fate) {
            Ok((verdict, removed)) => {
                report.records_removed += removed.records;
                report.tombstones_removed += removed.tombstones;
                report.keyless_removed += removed.keyless;
                verdict
            }
            Err(error) => {
                tracing::debug!(dir = %self.shared.dir.display(), base_offset = header.base_offset, %error, "cleaner keeps an undecodable batch whole");
                report.batches_undecodable += 1;
                Verdict::Keep
            }
        }
    }

    /// Creates the group's cleaned file and copies into it the batches that
    /// were left untouched so far.
    async fn start_writer(
        &self,
        sink: &mut GroupSink,
        plan: &Plan,
        files: &mut CleanedFiles,
        report: &mut CleanReport,
    ) -> LogResult<()> {
        if sink.writer.is_some() {
            return Ok(());
        }
        files.add(sink.base_offset);
        let mut writer = CleanedWriter::create(
            &self.shared.dir,
            sink.base_offset,
            sink.created_ms,
            sink.reserve_bytes,
            WRITE_CHUNK_BYTES,
            self.shared.config.index_interval_bytes,
        )
        .await?;
        if let Some(until) = sink.untouched_until.take() {
            let mut reader = BatchReader::new(self, sink.untouched_from, until, plan.durable_end);
            while let Some((_, batch)) = reader.next_batch().await? {
                writer.push(&batch).await?;
            }
            report.bytes_read += reader.bytes_read;
        }
        sink.writer = Some(writer);
        Ok(())
    }

    /// Step 4 of the module comment: prepares the commit, then validates,
    /// commits, applies and publishes under the flush lock, then clears the
    /// pending groups (the protocol of [`crate::cleaner`]).
    async fn swap(
        &self,
        context: SwapContext<'_>,
        outputs: Vec<GroupOutput>,
        mut files: CleanedFiles,
        report: &mut CleanReport,
    ) -> LogResult<()> {
        let dir = self.shared.dir.clone();
        let plan = context.plan;
        let mut checkpoint = plan.checkpoint.clone();
        checkpoint.advance(
            context.first_dirty_after,
            context.now_ms,
            context.delete_retention_ms,
        );
        checkpoint.prune(context.now_ms, context.delete_retention_ms);
        let swap_groups: Vec<SwapGroup> = outputs
            .iter()
            .filter_map(|output| match output {
                GroupOutput::Replaced { group, .. } => Some(*group),
                GroupOutput::Unchanged => None,
            })
            .collect();
        // Written and synced now, so that the commit under the lock is a
        // rename and one directory sync.
        let record = checkpoint.with_pending(swap_groups.clone());
        let (swap_dir, encoded) = (dir.clone(), record.encode());
        checkpoint::off_executor(move || {
            checkpoint::write_synced(&swap_dir, CHECKPOINT_SWAP_FILE, encoded.as_bytes())
        })
        .await?;
        if self.simulate_crash(context.crash_at, SwapStep::BeforeCommit, report) {
            // A killed process leaves its files behind.
            files.disarm();
            return Ok(());
        }
        let permit = self.shared.lock().await?;
        super::maintenance::leave_clean_state(&self.shared).await?;
        let locked = Instant::now();
        let committed = self.swap_locked(
            context,
            outputs,
            &mut files,
            &checkpoint,
            &swap_groups,
            report,
        );
        drop(permit);
        report.lock_held_us = locked.elapsed().as_micros() as u64;
        if !committed? || swap_groups.is_empty() || report.simulated_crash {
            return Ok(());
        }
        // Until cleared, no pass may write a cleaned file (see `crate::cleaner`).
        self.shared.cleaner_pending.set(true);
        // The renames are durable before the groups stop being pending.
        let synced_dir = dir.clone();
        checkpoint::off_executor(move || super::sync_dir(&synced_dir)).await?;
        if self.simulate_crash(context.crash_at, SwapStep::BeforeCleared, report) {
            return Ok(());
        }
        let (cleared_dir, cleared) = (dir.clone(), checkpoint.clone());
        checkpoint::off_executor(move || cleared.store(&cleared_dir)).await?;
        self.shared.cleaner_pending.set(false);
        Ok(())
    }

    /// The swap proper, with the flush lock held. Nothing here awaits: the
    /// swap runs whole, or not at all (a dropped pass cannot stop it
    /// halfway). Returns whether the pass was committed.
    fn swap_locked(
        &self,
        context: SwapContext<'_>,
        outputs: Vec<GroupOutput>,
        files: &mut CleanedFiles,
        checkpoint: &CleanerCheckpoint,
        swap_groups: &[SwapGroup],
        report: &mut CleanReport,
    ) -> LogResult<bool> {
        let dir = &self.shared.dir;
        let plan = context.plan;
        {
            let state = self.shared.state.borrow();
            if state.check_writable().is_err() {
                return Err(LogError::Closed);
            }
            let unchanged = state.cleaner == plan.checkpoint
                && state.segments.len() > context.rewrite_end
                && plan.segments[..context.rewrite_end]
                    .iter()
                    .zip(&state.segments)
                    .all(|(planned, current)| planned.matches(current));
            if !unchanged {
                tracing::info!(dir = %dir.display(), "segments changed during compaction; its output is discarded");
                return Ok(false);
            }
        }
        checkpoint::rename_synced(dir, CHECKPOINT_SWAP_FILE, checkpoint::CLEANER_FILE)?;
        // From here on recovery finishes the swap: the files are its.
        files.disarm();
        if !swap_groups.is_empty() {
            if self.simulate_crash(context.crash_at, SwapStep::AfterCommit, report) {
                return Ok(true);
            }
            let bases = self.segment_bases();
            for (done, group) in swap_groups.iter().enumerate() {
                if let Err(error) = apply_group(dir, group, &bases) {
                    // Half applied on disk; the next open finishes it from the
                    // checkpoint. Until then this log takes no writes.
                    tracing::error!(dir = %dir.display(), %error, "compaction swap failed; the log refuses writes until reopened");
                    self.shared.state.borrow_mut().failed = Some(error.to_string());
                    return Err(error);
                }
                if self.simulate_crash(context.crash_at, SwapStep::AfterGroups(done + 1), report) {
                    return Ok(true);
                }
            }
        }
        self.publish(context, outputs, checkpoint.clone(), report);
        Ok(true)
    }

    /// Test hook: stops the pass at `step` as a killed process would. The
    /// log then refuses writes (its memory no longer matches its files).
    fn simulate_crash(
        &self,
        crash_at: Option<SwapStep>,
        step: SwapStep,
        report: &mut CleanReport,
    ) -> bool {
        if crash_at != Some(step) {
            return false;
        }
        report.simulated_crash = true;
        self.shared.state.borrow_mut().failed = Some(format!("simulated crash {step:?}"));
        true
    }

    /// Installs the pass's result in memory (files already swapped).
    fn publish(
        &self,
        context: SwapContext<'_>,
        outputs: Vec<GroupOutput>,
        checkpoint: CleanerCheckpoint,
        report: &mut CleanReport,
    ) {
        let mut state = self.shared.state.borrow_mut();
        let old = std::mem::take(&mut state.segments);
        let mut segments = Vec::with_capacity(old.len());
        let mut replaced = Vec::new();
        let mut old = old.into_iter();
        for (range, output) in context.groups.iter().zip(outputs) {
            let olds: Vec<Segment> = old.by_ref().take(range.len()).collect();
            match output {
                GroupOutput::Unchanged => segments.extend(olds),
                GroupOutput::Replaced { new, .. } => {
                    report.groups_replaced += 1;
                    replaced.extend(olds.iter().map(|segment| segment.base_offset));
                    segments.extend(new.map(|segment| *segment));
                }
            }
        }
        segments.extend(old);
        let gaps_below = checkpoint.gaps_below();
        for segment in &mut segments {
            if segment.base_offset < gaps_below {
                segment.cleaned = true;
            }
        }
        assert!(
            segments
                .windows(2)
                .all(|pair| pair[0].base_offset < pair[1].base_offset
                    && pair[0].next_offset <= pair[1].base_offset),
            "compacted segments keep increasing offsets"
        );
        state.segments = segments;
        // Written batches of replaced segments may linger in the hot tail:
        // readers must see the cleaned log.
        state
            .hot
            .retain(|cached| !replaced.contains(&cached.segment_base));
        state.hot_bytes = state.hot.iter().map(CachedBatch::total_bytes).sum();
        state.cleaner = checkpoint;
        report.first_dirty_after = context.first_dirty_after;
        report.segments_after = state.segments.len();
    }
}

/// What rewriting a group needs to know about the pass.
#[derive(Clone, Copy)]
struct Pass<'a> {
    plan: &'a Plan,
    map: &'a KeyMap,
    limits: &'a CleanerLimits,
    delete_retention_ms: i64,
    now_ms: i64,
    first_dirty_after: u64,
    input: &'a CleanerInput,
}

/// What the swap needs to know about the pass.
#[derive(Clone, Copy)]
struct SwapContext<'a> {
    plan: &'a Plan,
    groups: &'a [Range<usize>],
    rewrite_end: usize,
    first_dirty_after: u64,
    delete_retention_ms: i64,
    now_ms: i64,
    crash_at: Option<SwapStep>,
}
