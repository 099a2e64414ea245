//! The replica's picture of its own partition log, as much of it as
//! replication needs and nothing more: the leader-epoch history (each epoch
//! and the first offset written in it, storage's `leader-epoch-checkpoint`),
//! the log end offset and the durable offset (end of what was fsync'd).
//! Records themselves never enter the replication machine: it moves
//! [`RecordRange`]s (offsets plus the epoch they were written in) and the
//! driver moves the bytes.
//!
//! Invariants kept by every method: epochs strictly increase, their start
//! offsets strictly increase and lie below the log end (an epoch with no
//! record is not in the history), `0 <= durable_offset <= end_offset`.
//! The log start is not modelled (retention is the driver's): a log reset
//! to start at `X` ([`LocalLog::starting_at`], a follower below its
//! leader's log start) has no epochs and ends at `X`.

use std::fmt;

/// A Kafka offset (i64 on the wire).
pub type Offset = i64;
/// A partition leader epoch (bumped on every leader change).
pub type LeaderEpoch = i32;
/// A partition epoch (bumped on every leader or ISR change committed through
/// the metadata quorum; the compare-and-set of an ISR change proposal).
pub type PartitionEpoch = i32;
/// A node (broker) id.
pub type NodeId = i32;

/// "No epoch": a log with no record, Kafka's `UNDEFINED_EPOCH`.
pub const NO_EPOCH: LeaderEpoch = -1;

/// Records `[start, end)`, all written in leader epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRange {
    pub epoch: LeaderEpoch,
    pub start: Offset,
    pub end: Offset,
}

impl RecordRange {
    pub fn len(&self) -> i64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why a log picture or an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogViewError {
    EpochsNotIncreasing,
    EpochStartOutOfRange {
        epoch: LeaderEpoch,
        start: Offset,
    },
    DurableBeyondEnd {
        durable: Offset,
        end: Offset,
    },
    NegativeOffset,
    /// An append not starting at the log end, empty, or older than the
    /// log's last epoch.
    AppendDoesNotFit {
        range: RecordRange,
        end: Offset,
        last_epoch: LeaderEpoch,
    },
}

impl fmt::Display for LogViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// See the module doc.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalLog {
    /// `(epoch, first offset written in it)`.
    epochs: Vec<(LeaderEpoch, Offset)>,
    end_offset: Offset,
    durable_offset: Offset,
}

impl LocalLog {
    /// An empty log.
    pub fn empty() -> Self {
        Self::default()
    }

    /// An empty log whose next offset is `offset` (a follower that dropped
    /// its log to start at its leader's log start).
    pub fn starting_at(offset: Offset) -> Self {
        let offset = offset.max(0);
        Self {
            epochs: Vec::new(),
            end_offset: offset,
            durable_offset: offset,
        }
    }

    /// The log as storage recovered it.
    pub fn new(
        epochs: Vec<(LeaderEpoch, Offset)>,
        end_offset: Offset,
        durable_offset: Offset,
    ) -> Result<Self, LogViewError> {
        if end_offset < 0 || durable_offset < 0 {
            return Err(LogViewError::NegativeOffset);
        }
        if durable_offset > end_offset {
            return Err(LogViewError::DurableBeyondEnd {
                durable: durable_offset,
                end: end_offset,
            });
        }
        for pair in epochs.windows(2) {
            if pair[0].0 >= pair[1].0 || pair[0].1 >= pair[1].1 {
                return Err(LogViewError::EpochsNotIncreasing);
            }
        }
        if let Some(&(epoch, start)) = epochs
            .iter()
            .find(|(epoch, start)| *epoch < 0 || *start < 0 || *start >= end_offset)
        {
            return Err(LogViewError::EpochStartOutOfRange { epoch, start });
        }
        Ok(Self {
            epochs,
            end_offset,
            durable_offset,
        })
    }

    pub fn end_offset(&self) -> Offset {
        self.end_offset
    }

    pub fn durable_offset(&self) -> Offset {
        self.durable_offset
    }

    pub fn epochs(&self) -> &[(LeaderEpoch, Offset)] {
        &self.epochs
    }

    /// The epoch of the last record, [`NO_EPOCH`] for an empty log.
    pub fn last_epoch(&self) -> LeaderEpoch {
        self.epochs.last().map_or(NO_EPOCH, |(epoch, _)| *epoch)
    }

    /// Kafka's OffsetForLeaderEpoch on this log: the largest epoch `<=
    /// epoch` and where it ends (the next epoch's start, or the log end).
    /// When no epoch is that old: `(NO_EPOCH, start of the first epoch)`,
    /// i.e. nothing of this log is known to be in `epoch` or before.
    pub fn end_of_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        let index = self.epochs.partition_point(|(known, _)| *known <= epoch);
        if index == 0 {
            let first_start = self.epochs.first().map_or(self.end_offset, |(_, s)| *s);
            return (NO_EPOCH, first_start);
        }
        let (found, _) = self.epochs[index - 1];
        let end = self
            .epochs
            .get(index)
            .map_or(self.end_offset, |(_, start)| *start);
        (found, end)
    }

    /// The records in `[from, to)` cut at epoch boundaries (`from..to`
    /// clamped to the log).
    pub fn ranges(&self, from: Offset, to: Offset) -> Vec<RecordRange> {
        let to = to.min(self.end_offset);
        let mut ranges = Vec::new();
        for (index, &(epoch, start)) in self.epochs.iter().enumerate() {
            let end = self
                .epochs
                .get(index + 1)
                .map_or(self.end_offset, |(_, next)| *next);
            let start = start.max(from);
            let end = end.min(to);
            if start < end {
                ranges.push(RecordRange { epoch, start, end });
            }
        }
        ranges
    }

    /// Appends `range` at the end (a leader's own append, or a follower's
    /// copy of the leader's records).
    pub(crate) fn append(&mut self, range: RecordRange) -> Result<(), LogViewError> {
        let last_epoch = self.last_epoch();
        if range.start != self.end_offset || range.is_empty() || range.epoch < last_epoch.max(0) {
            return Err(LogViewError::AppendDoesNotFit {
                range,
                end: self.end_offset,
                last_epoch,
            });
        }
        if range.epoch > last_epoch {
            self.epochs.push((range.epoch, range.start));
        }
        self.end_offset = range.end;
        Ok(())
    }

    /// Drops every record at or after `offset` (no-op past the end).
    pub(crate) fn truncate_to(&mut self, offset: Offset) {
        let offset = offset.max(0);
        if offset >= self.end_offset {
            return;
        }
        self.epochs.retain(|(_, start)| *start < offset);
        self.end_offset = offset;
        self.durable_offset = self.durable_offset.min(offset);
    }

    /// The log is durable up to `offset` (clamped to the end). Whether the
    /// durable offset moved.
    pub(crate) fn mark_durable(&mut self, offset: Offset) -> bool {
        let offset = offset.min(self.end_offset);
        if offset > self.durable_offset {
            self.durable_offset = offset;
            true
        } else {
            false
        }
    }
}
