//! How a partition's high watermark advances: the seam where replication
//! plugs in. A partition with one replica commits *locally*: the high
//! watermark is the offset up to which the local log reached the topic's
//! commit stage. A partition with several replicas is *replicated*: the
//! high watermark is its replication machine's (durable on every in-sync
//! replica, [`crate::replication`]), and `acks=all` waits for it there.
//! This file also holds the partition's doors for the replication driver
//! (reads for followers, a follower's appends and truncation), and whether
//! a follower replica may serve consumers (KIP-392): up to the high
//! watermark it learned from the leader, capped at its written log.

use std::rc::Rc;

use bytes::Bytes;
use kafki_storage::batch::BatchHeader;
use kafki_storage::{LogOffsets, LogResult, PartitionLog, SyncPolicy};

use super::Partition;
use crate::metrics::FetchPath;
use crate::replication::driver::Replicated;
use crate::replication::LocalLog;
use crate::zerocopy::WirePart;

/// The stage of the local log that commits a record (what `acks=all`
/// waits for and what consumers see up to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStage {
    /// The batch was written (`O_DIRECT` write completed): the topic has a
    /// relaxed flush policy (`flush.messages` > 1 or `flush.ms`).
    Written,
    /// The batch is on stable storage (`fdatasync`, group-committed).
    Durable,
}

impl CommitStage {
    /// The stage a log with `policy` commits at.
    pub fn for_policy(policy: SyncPolicy) -> Self {
        if policy == SyncPolicy::EveryAppend {
            Self::Durable
        } else {
            Self::Written
        }
    }
}

/// How a partition commits records.
#[derive(Clone)]
pub enum Replication {
    /// One replica, this node: committed = reached `stage` locally.
    Local { stage: CommitStage },
    /// Several replicas: committed = durable on every in-sync replica.
    Replicated(Rc<Replicated>),
}

impl Replication {
    /// The high watermark given the local log's offsets.
    pub fn high_watermark(&self, offsets: &LogOffsets) -> u64 {
        match self {
            // Capped at the written log: a follower's (KIP-392) may run
            // ahead of it while the leader's records wait to be appended; a
            // leader's never does.
            Self::Replicated(replicated) => {
                (replicated.high_watermark().max(0) as u64).min(offsets.written_offset)
            }
            Self::Local {
                stage: CommitStage::Durable,
            } => offsets.durable_offset,
            Self::Local {
                stage: CommitStage::Written,
            } => offsets.written_offset,
        }
    }

    /// Waits until every offset below `end_offset` is committed.
    pub async fn wait_committed(&self, log: &PartitionLog, end_offset: u64) -> LogResult<()> {
        match self {
            // Waited for through `Replicated::wait_acknowledged` instead.
            Self::Replicated(_) => Ok(()),
            Self::Local {
                stage: CommitStage::Durable,
            } => log.wait_durable(end_offset).await,
            Self::Local {
                stage: CommitStage::Written,
            } => log.wait_written(end_offset).await,
        }
    }
}

impl Partition {
    /// The replicated state, if the partition has several replicas.
    pub fn replicated(&self) -> Option<&Rc<Replicated>> {
        match &self.replication {
            Replication::Replicated(replicated) => Some(replicated),
            Replication::Local { .. } => None,
        }
    }

    /// Whether clients may use it here: always for a local partition; a
    /// replicated one only while it leads with a high watermark to show.
    pub fn serves_clients(&self) -> bool {
        self.replicated()
            .is_none_or(|replicated| replicated.serves_clients())
    }

    /// Whether a consumer may read it here although it does not lead
    /// (KIP-392): a replicated partition's follower that knows a high
    /// watermark. Produce and the other client requests stay refused.
    pub fn serves_follower_reads(&self) -> bool {
        self.replicated()
            .is_some_and(|replicated| replicated.follower_high_watermark().is_some())
    }

    /// A waiter for the log's progress that does not hold the partition.
    pub fn progress_watcher(&self) -> kafki_storage::ProgressWatcher {
        self.log.progress_watcher()
    }

    /// The log as the replication machine pictures it: epochs with records,
    /// end and durable offsets.
    pub fn replica_log_view(&self) -> LocalLog {
        log_view(&self.log)
    }

    /// Whole batches from `from` below `to`, at most `max_bytes` (at least
    /// one batch), as pieces to send to a follower without copying
    /// ([`crate::zerocopy::wire_part`]: the hot tail's buffers, segment file
    /// regions to splice), each with how it will reach the socket; and the
    /// offset after them.
    pub async fn read_for_replica(
        &self,
        from: u64,
        to: u64,
        max_bytes: u64,
    ) -> LogResult<(Vec<(WirePart, FetchPath)>, u64)> {
        let read = self.log.read(from, max_bytes, to).await?;
        let next_offset = read.next_offset;
        if read.chunks.is_empty() {
            return Ok((Vec::new(), from));
        }
        let mut parts = Vec::with_capacity(read.chunks.len());
        for chunk in read.chunks {
            parts.push(crate::zerocopy::wire_part(chunk).await?);
        }
        Ok((parts, next_offset))
    }

    /// Whether a read found a damaged batch here that is not repaired yet.
    pub fn has_damage(&self) -> bool {
        self.log.has_damage()
    }

    /// The first damaged batch a read found (for a repair).
    pub async fn damaged_batch(&self) -> LogResult<Option<kafki_storage::DamagedBatch>> {
        self.log.damaged_batch().await
    }

    /// Writes another replica's copy over the damaged batch `at` (checked
    /// first, see storage's `repair_damaged`).
    pub async fn repair_damaged(
        &self,
        at: kafki_storage::DamagedBatch,
        batch: Bytes,
    ) -> LogResult<Result<(), kafki_storage::RepairRefusal>> {
        self.log.repair_damaged(at, batch).await
    }

    /// This replica's copy of the whole batch starting at `offset`, for
    /// another replica repairing its own; `None` if it holds no batch
    /// starting there (or cannot read it either).
    pub async fn batch_at(&self, offset: u64) -> Option<Bytes> {
        let read = self.log.read(offset, 1, u64::MAX).await.ok()?;
        let bytes = read.load().await.ok()?;
        let header = BatchHeader::parse(&bytes).ok()?;
        let total = header.total_bytes();
        (header.base_offset == offset as i64 && bytes.len() >= total).then(|| bytes.slice(..total))
    }

    /// A follower's append of one of the leader's batches, exactly as the
    /// leader stored it; its producer's sequence (and transaction, or
    /// marker) is recorded as the leader did, so a producer retrying after a failover is recognised here.
    pub async fn append_from_leader(&self, batch: Bytes) -> LogResult<()> {
        let header = BatchHeader::parse(&batch).ok();
        if let Some(header) = &header {
            // A log just started again at the leader's log start, which
            // DeleteRecords may have put inside a batch: the leader sends
            // that whole batch, so the log starts at its base instead
            // (Kafka's follower does the same).
            let offsets = self.log.offsets();
            let base = u64::try_from(header.base_offset).unwrap_or(u64::MAX);
            let holds_next = base < offsets.next_offset
                && u64::try_from(header.last_offset())
                    .is_ok_and(|last| last >= offsets.next_offset);
            if offsets.next_offset == offsets.log_start_offset && holds_next {
                self.log.truncate_fully_and_start_at(base).await?;
            }
        }
        let stored = batch.clone();
        let info = self.log.append_replicated(batch).await?;
        if let Some(header) = header {
            // The transactions too, so a follower that becomes leader
            // serves `read_committed` and fences markers as its leader did.
            self.producers.states.borrow_mut().record_stored_batch(
                &header,
                &stored,
                info.base_offset,
                crate::clock::now_ms(),
            );
        }
        Ok(())
    }

    /// Drops a diverged suffix: the log then ends at `offset` (an error if
    /// storage could not end it exactly there). The idempotent producers'
    /// state is loaded again from what is left: batches of the dropped
    /// suffix must not be recognised as duplicates of a retry (the retry
    /// would be acknowledged at an offset that now holds another record).
    pub async fn truncate_for_replica(&self, offset: i64) -> anyhow::Result<()> {
        let offset = u64::try_from(offset).unwrap_or(0);
        self.log.truncate_to(offset).await?;
        self.reload_producers().await;
        let end = self.log.offsets().next_offset;
        if end != offset {
            anyhow::bail!("the log ends at {end} after truncating to {offset}");
        }
        Ok(())
    }

    /// Drops the whole log and starts it again, empty, at `offset` (a
    /// follower below its leader's log start). No producer state survives:
    /// the old snapshot lies below the new log start and is not used.
    pub async fn reset_for_replica(&self, offset: i64) -> anyhow::Result<()> {
        let offset = u64::try_from(offset).unwrap_or(0);
        self.log.truncate_fully_and_start_at(offset).await?;
        self.reload_producers().await;
        Ok(())
    }

    /// The idempotent producers' state loaded again from the log as it is.
    async fn reload_producers(&self) {
        crate::producer::snapshot::reload(&self.log, &self.producers).await;
    }
}

/// [`Partition::replica_log_view`] of `log`: epochs whose first offset lies
/// below the log end (an epoch noted before any record of it is left out).
pub fn log_view(log: &PartitionLog) -> LocalLog {
    let offsets = log.offsets();
    let end = offsets.next_offset as i64;
    let durable = (offsets.durable_offset as i64).min(end);
    let mut epochs: Vec<(i32, i64)> = Vec::new();
    for (epoch, start) in log.leader_epochs() {
        let start = start as i64;
        if start >= end || epoch < 0 {
            continue;
        }
        match epochs.last_mut() {
            Some(last) if last.1 == start => *last = (epoch, start),
            Some(last) if last.0 >= epoch => {}
            _ => epochs.push((epoch, start)),
        }
    }
    let last_epoch = epochs.last().map_or(0, |(epoch, _)| *epoch);
    LocalLog::new(epochs, end, durable).unwrap_or_else(|error| {
        tracing::warn!(dir = %log.dir().display(), %error, "leader-epoch history unusable for replication; treating the log as one epoch");
        let whole = if end > 0 { vec![(last_epoch, 0)] } else { Vec::new() };
        LocalLog::new(whole, end, durable).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_watermark_follows_the_commit_stage() {
        let offsets = LogOffsets {
            log_start_offset: 0,
            next_offset: 10,
            written_offset: 7,
            durable_offset: 4,
            size_bytes: 0,
        };
        let durable = Replication::Local {
            stage: CommitStage::for_policy(SyncPolicy::EveryAppend),
        };
        let written = Replication::Local {
            stage: CommitStage::for_policy(SyncPolicy::Interval {
                messages: 2,
                interval: std::time::Duration::from_secs(1),
            }),
        };
        assert_eq!(durable.high_watermark(&offsets), 4);
        assert_eq!(written.high_watermark(&offsets), 7);
    }
}
