//! A partition's reads and lookups (bounded by the high watermark), its
//! leader epoch, and the maintenance its shard runs on it: producer-state
//! snapshots and expiry, compaction, retention, record deletion, closing.

use std::time::Instant;

use kafki_storage::{
    CleanReport, CleanerInput, CleanerLimits, LogResult, ReadResult, TimestampHit, WriteState,
};

use super::{epoch, Partition};
use crate::producer::snapshot;

impl Partition {
    /// The epoch this node leads the partition in.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    /// Checks a request's `current_leader_epoch` ([`epoch`]).
    pub fn check_leader_epoch(&self, requested: i32) -> Result<(), i16> {
        epoch::check_current_leader_epoch(requested, self.leader_epoch())
    }

    /// Moves the partition to a newer leader epoch (the metadata says so):
    /// later appends are stamped with it, requests naming an older one are
    /// fenced. An older or equal epoch changes nothing. Returns whether it
    /// moved.
    pub fn fence(&self, epoch: i32) -> bool {
        if epoch <= self.leader_epoch.get() {
            return false;
        }
        self.leader_epoch.set(epoch);
        true
    }

    /// The leader epoch of the batch holding `offset`, from the log's epoch
    /// history (-1 when it has none).
    pub fn epoch_at(&self, offset: u64) -> i32 {
        self.log
            .leader_epochs()
            .iter()
            .take_while(|(_, start)| *start <= offset)
            .last()
            .map_or(-1, |(epoch, _)| *epoch)
    }

    /// The latest epoch the log has appended in (-1 when none).
    pub fn latest_epoch(&self) -> i32 {
        self.log
            .leader_epochs()
            .last()
            .map_or(-1, |(epoch, _)| *epoch)
    }

    /// OffsetForLeaderEpoch: the largest epoch ≤ `epoch` and where it ends,
    /// never beyond the high watermark.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        let high_watermark = self.high_watermark();
        self.log
            .end_offset_for_epoch(epoch)
            .map(|(epoch, end)| (epoch, end.min(high_watermark)))
    }

    /// Reads committed records from `offset`: at most `max_bytes` (at least
    /// one whole batch), never at or beyond the high watermark.
    pub async fn read(&self, offset: u64, max_bytes: u64) -> LogResult<ReadResult> {
        let high_watermark = self.high_watermark();
        self.log.read(offset, max_bytes, high_watermark).await
    }

    /// The last stable offset: how far a `read_committed` consumer may
    /// read (below the oldest open transaction, at most the high
    /// watermark).
    pub fn last_stable_offset(&self) -> u64 {
        let high_watermark = self.high_watermark();
        self.producers
            .states
            .borrow()
            .last_stable_offset(high_watermark)
    }

    /// Reads for a `read_committed` consumer: like [`Self::read`], but
    /// never a batch reaching the last stable offset.
    pub async fn read_committed(&self, offset: u64, max_bytes: u64) -> LogResult<ReadResult> {
        let last_stable_offset = self.last_stable_offset();
        self.log.read(offset, max_bytes, last_stable_offset).await
    }

    /// The aborted transactions a `read_committed` fetch of `[from, upper)`
    /// returns: (producer id, first offset), in marker order.
    pub fn aborted_transactions(&self, from: u64, upper: u64) -> Vec<(i64, i64)> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let upper = i64::try_from(upper).unwrap_or(i64::MAX);
        self.producers
            .states
            .borrow()
            .transactions()
            .aborted_overlapping(from, upper)
            .iter()
            .map(|entry| (entry.producer_id, entry.first_offset))
            .collect()
    }

    /// Returns once the last stable offset passes `seen` (a parked
    /// `read_committed` fetch), or as [`Self::wait_for_high_watermark_beyond`]
    /// would for another reason (hand-over, failed log, role change). The
    /// last stable offset moves only when a marker is appended (then the
    /// high watermark must move past it) or the high watermark moves, so
    /// waiting for the high watermark misses nothing.
    pub async fn wait_for_stable_offset_beyond(&self, seen: i64) {
        loop {
            if self.last_stable_offset() as i64 > seen
                || self.is_released()
                || !self.log.is_healthy()
            {
                return;
            }
            let high_watermark = self.high_watermark() as i64;
            self.wait_for_high_watermark_beyond(high_watermark).await;
            if self.high_watermark() as i64 <= high_watermark {
                // Woken for another reason: the caller reads again.
                return;
            }
        }
    }

    /// Returns once the high watermark passes `seen`, the log stops being
    /// healthy, or the partition is handed over: what a fetch long poll
    /// waits for (no wake-up is lost between its read and this wait).
    pub async fn wait_for_high_watermark_beyond(&self, seen: i64) {
        if let Some(replicated) = self.replicated() {
            loop {
                let shown = replicated.readable_high_watermarks();
                let since = self.log.offsets();
                // A leader's consumer high watermark, or a follower's
                // (KIP-392) as readers see it: capped at its written log
                // (the leader's records may wait to be appended). Neither:
                // the role changed, and the re-read says how.
                let readable = match (shown.leader, shown.follower) {
                    (Some(high_watermark), _) => Some(high_watermark),
                    (None, Some(_)) => Some(self.replication.high_watermark(&since) as i64),
                    (None, None) => None,
                };
                if readable.is_none_or(|high_watermark| high_watermark > seen)
                    || replicated.is_stopped()
                    || !self.log.is_healthy()
                    || self.is_released()
                {
                    return;
                }
                let moved = std::pin::pin!(replicated.wait_high_watermark_change(shown));
                let released = std::pin::pin!(self.wait_released());
                if shown.follower.is_some() {
                    let progress = std::pin::pin!(self.log.wait_for_progress(since));
                    let either = futures::future::select(moved, progress);
                    futures::future::select(either, released).await;
                } else {
                    futures::future::select(moved, released).await;
                }
            }
        }
        loop {
            let since = self.log.offsets();
            if self.replication.high_watermark(&since) as i64 > seen
                || !self.log.is_healthy()
                || self.is_released()
            {
                return;
            }
            let progress = std::pin::pin!(self.log.wait_for_progress(since));
            let released = std::pin::pin!(self.wait_released());
            futures::future::select(progress, released).await;
        }
    }

    /// The first batch with a timestamp at or after `timestamp`.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> LogResult<Option<TimestampHit>> {
        self.log.find_by_timestamp(timestamp).await
    }

    /// The largest timestamp and its offset.
    pub fn max_timestamp(&self) -> Option<(i64, u64)> {
        self.log.max_timestamp()
    }

    /// DeleteRecords: makes `offset` the log start (whole segments below it
    /// deleted). Returns the new log start offset.
    pub async fn delete_records_before(&self, offset: u64) -> LogResult<u64> {
        let log_start = self.log.truncate_before(offset).await?;
        self.drop_transactions_below_log_start();
        Ok(log_start)
    }

    /// Aborted-transaction entries whose marker the log no longer holds
    /// go (Kafka drops them with their segment's `.txnindex`).
    fn drop_transactions_below_log_start(&self) {
        let log_start = self.log.offsets().log_start_offset;
        self.producers
            .states
            .borrow_mut()
            .drop_transactions_before(log_start);
    }

    /// Whether the log can still serve (not failed).
    pub fn is_healthy(&self) -> bool {
        self.log.is_healthy()
    }

    /// Whether the log takes writes, or why not.
    pub fn write_state(&self) -> WriteState {
        self.log.write_state()
    }

    /// Whether the topic is compacted (`cleanup.policy` with `compact`).
    pub fn is_compacted(&self) -> bool {
        self.log.config().compaction.is_some()
    }

    /// Segment files the log holds open (descriptors).
    pub fn open_segment_files(&self) -> u64 {
        self.log.open_segment_files()
    }

    /// The shard's producer tick: forgets producers idle beyond
    /// `producer.id.expiration.ms` when `expire` is set, and writes the
    /// producer-state snapshot when one is due. Returns how many producers
    /// were forgotten; `Err` says why a due snapshot was not written.
    pub async fn maintain_producers(&self, expire: bool, now_ms: i64) -> Result<usize, String> {
        let writable = self.log.write_state() == WriteState::Writable;
        if self.is_released() || !self.log.is_healthy() || !writable {
            return Ok(0);
        }
        let expired = if expire {
            self.producers.states.borrow_mut().expire(now_ms)
        } else {
            0
        };
        if snapshot::is_due(&self.log, &self.producers, Instant::now()) {
            snapshot::write(&self.log, &self.producers, |end| self.wait_committed(end)).await?;
        }
        Ok(expired)
    }

    /// Writes the producer-state snapshot unless the file already holds
    /// the live state. Returns the offset written, if any.
    pub async fn snapshot_producers(&self) -> Result<Option<u64>, String> {
        snapshot::write_unless_current(&self.log, &self.producers, |end| self.wait_committed(end))
            .await
    }

    /// One compaction pass, keeping each idempotent producer's last batch
    /// and applying Kafka's transaction rules with what the producer state
    /// knows of the transactions (see `compact_retaining`). Afterwards the
    /// aborted entries whose data the cleaner found gone are dropped; the
    /// snapshot tick saves that, and only then may their markers go.
    pub async fn compact(&self, now_ms: i64, limits: &CleanerLimits) -> LogResult<CleanReport> {
        let input = {
            let states = self.producers.states.borrow();
            let mark = self.producers.snapshot.mark();
            CleanerInput {
                retain: states.last_batch_offsets(),
                transactions: Some(states.cleaner_facts(
                    self.high_watermark(),
                    mark.offset,
                    mark.changes,
                )),
            }
        };
        let report = self.log.compact_retaining(now_ms, limits, &input).await?;
        if !report.aborts_without_data.is_empty() {
            let dropped = self
                .producers
                .states
                .borrow_mut()
                .drop_aborted_without_data(&report.aborts_without_data);
            if dropped > 0 {
                tracing::debug!(topic = %self.topic, partition = self.index, dropped, "aborted entries without data dropped from the transaction index");
            }
        }
        Ok(report)
    }

    /// Deletes segments beyond `retention.ms` / `retention.bytes`.
    pub async fn enforce_retention(&self, now_ms: i64) -> LogResult<usize> {
        let deleted = self.log.enforce_retention(now_ms).await?;
        if deleted > 0 {
            self.drop_transactions_below_log_start();
        }
        Ok(deleted)
    }

    /// Makes everything appended durable (a close while a request still
    /// holds the partition).
    pub async fn flush(&self) -> LogResult<()> {
        self.log.flush().await
    }

    /// Closes a partition this shard gives up (shutdown, hand-over,
    /// reconfiguration): first its producer-state snapshot (which waits for
    /// the log to commit everything appended), then the log, cleanly. A
    /// failed snapshot is logged, not fatal: the next open rebuilds from
    /// the log.
    pub async fn close(self) -> LogResult<()> {
        self.stop_replication();
        let written = self.snapshot_producers().await;
        self.log_closing_snapshot(written, "close");
        self.log.close().await
    }

    /// Closes for a node stop: the producer-state snapshot and the log's
    /// files are written but not synced; the shard's stop syncs the file
    /// system once and marks the logs clean ([`kafki_storage::finish_stop`]).
    pub async fn close_for_stop(self) -> LogResult<Option<kafki_storage::PendingMarker>> {
        self.stop_replication();
        let written = snapshot::write_at_stop(&self.log, &self.producers).await;
        self.log_closing_snapshot(written, "stop");
        self.log.close_unsynced().await
    }

    /// Ends its replication driver (a closing partition): waiting `acks=all`
    /// produces fail, the pump stops.
    fn stop_replication(&self) {
        if let Some(replicated) = self.replicated() {
            replicated.stop();
        }
    }

    /// Logs how the producer-state snapshot of a closing partition went
    /// (`at`: "close" or "stop"). A failure is not fatal: the next open
    /// rebuilds the state from the log.
    fn log_closing_snapshot(&self, written: Result<Option<u64>, String>, at: &str) {
        match written {
            Ok(Some(offset)) => {
                tracing::debug!(topic = %self.topic, partition = self.index, offset, at, "producer-state snapshot written")
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(topic = %self.topic, partition = self.index, %error, at, "producer-state snapshot failed; the next open rebuilds it from the log")
            }
        }
    }

    /// Closes the log of a deleted partition: no snapshot, its files go.
    pub async fn close_deleted(self) -> LogResult<()> {
        self.stop_replication();
        self.log.close().await
    }
}
