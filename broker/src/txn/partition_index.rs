//! What a partition leader knows of the transactions writing to it, for
//! `read_committed` fetches: the open transactions (producer id → first
//! offset), the last stable offset, the aborted-transaction entries
//! (Kafka's `.txnindex`, one list here, queried per segment by offset
//! range), the coordinator epoch and producer epoch each marker is checked
//! against; and Kafka's control record format (COMMIT/ABORT markers).
//!
//! Rules (Kafka's `ProducerStateManager` / `ProducerAppendInfo`):
//! - a transactional data batch opens the producer's transaction at its
//!   first offset, unless one is open; a batch of an older producer epoch
//!   than the partition last saw is refused (INVALID_PRODUCER_EPOCH);
//! - a marker whose coordinator epoch is older than the last marker's of
//!   that producer is refused (TRANSACTION_COORDINATOR_FENCED: a deposed
//!   coordinator), one of an older producer epoch too; an accepted marker
//!   raises the producer's epoch to its own (so a zombie at the old epoch
//!   is fenced from then on) and closes the open transaction, if any (a
//!   marker without one is a harmless retry);
//! - the last stable offset is the lowest first offset of the open
//!   transactions *and of the ended ones whose marker the high watermark
//!   has not passed yet* (Kafka's unreplicated transactions: a consumer
//!   sees a transaction's records only once its outcome is committed, so
//!   the LSO never moves back when a leader that had not replicated the
//!   marker fails over), or the high watermark when there is none (never
//!   above it). The ended ones are kept in memory only: after a reopen the
//!   rule holds again from the next marker on;
//! - an ABORT that closes a transaction leaves an entry (producer id, first
//!   offset, last offset = the marker's offset, the stable offset right
//!   after it); a fetch of `[from, upper)` gets the entries with
//!   `last >= from && first < upper`.
//!
//! Whether a producer may open a transaction here at all is the
//! coordinator's to say (KIP-890 verification, see
//! [`super::coordinator::Input::VerifyPartitions`]); this index trusts its
//! caller asked. Lives on the partition's shard, inside its state.

use std::collections::BTreeMap;

/// The type of a control record (the key's second field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    pub fn id(self) -> i16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }
}

/// A COMMIT/ABORT marker as stored: the only record of a control batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnMarker {
    pub control_type: ControlType,
    pub coordinator_epoch: i32,
}

/// Batch attribute bits a marker batch carries (transactional | control).
pub const TRANSACTIONAL_ATTRIBUTE: i16 = 1 << 4;
pub const CONTROL_ATTRIBUTE: i16 = 1 << 5;

/// Ended transactions kept for the LSO rule at most (see the module docs).
const ENDED_UNREPLICATED_MAX: usize = 1024;

const CONTROL_KEY_VERSION: i16 = 0;
const MARKER_VALUE_VERSION: i16 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlRecordError {
    #[error("control record truncated or overlong")]
    BadLength,
    #[error("unknown control key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown control type {0}")]
    UnknownType(i16),
}

impl EndTxnMarker {
    /// The control record key: version int16 (0), type int16.
    pub fn encode_key(&self) -> [u8; 4] {
        let mut key = [0u8; 4];
        key[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        key[2..].copy_from_slice(&self.control_type.id().to_be_bytes());
        key
    }

    /// The marker value: version int16 (0), coordinator epoch int32.
    pub fn encode_value(&self) -> [u8; 6] {
        let mut value = [0u8; 6];
        value[..2].copy_from_slice(&MARKER_VALUE_VERSION.to_be_bytes());
        value[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        value
    }

    /// Reads a marker. Kafka reads only the key's first two fields and the
    /// value's first two, so longer (newer) keys and values are accepted.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, ControlRecordError> {
        let control_type = match decode_control_key(key)? {
            0 => ControlType::Abort,
            1 => ControlType::Commit,
            other => return Err(ControlRecordError::UnknownType(other)),
        };
        if value.len() < 6 {
            return Err(ControlRecordError::BadLength);
        }
        let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
        Ok(Self {
            control_type,
            coordinator_epoch,
        })
    }
}

/// The type field of any control record key (markers and others, such as
/// KRaft's, which a partition skips).
pub fn decode_control_key(key: &[u8]) -> Result<i16, ControlRecordError> {
    if key.len() < 4 {
        return Err(ControlRecordError::BadLength);
    }
    let version = i16::from_be_bytes([key[0], key[1]]);
    if version != CONTROL_KEY_VERSION {
        return Err(ControlRecordError::UnknownKeyVersion(version));
    }
    Ok(i16::from_be_bytes([key[2], key[3]]))
}

/// One aborted transaction, as Kafka's `AbortedTxn` (and what Fetch sends
/// as `aborted_transactions`: producer id and first offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// The ABORT marker's offset.
    pub last_offset: i64,
    /// The last stable offset right after the marker.
    pub last_stable_offset: i64,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexRefusal {
    /// INVALID_PRODUCER_EPOCH (47) on produce; on WriteTxnMarkers too.
    InvalidProducerEpoch { known_epoch: i16 },
    /// TRANSACTION_COORDINATOR_FENCED (52).
    CoordinatorFenced { known_coordinator_epoch: i32 },
    /// Offsets must only grow.
    OffsetNotAfterEnd { end: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProducerTxnState {
    epoch: i16,
    /// The coordinator epoch of the last marker (-1 before any).
    coordinator_epoch: i32,
    /// (first, last) offsets of the open transaction.
    open: Option<(i64, i64)>,
}

/// One partition's transaction index.
#[derive(Debug, Default, Clone)]
pub struct PartitionTxnIndex {
    producers: BTreeMap<i64, ProducerTxnState>,
    /// Open transactions by first offset (→ producer id).
    open_by_first_offset: BTreeMap<i64, i64>,
    /// Ordered by last offset (markers come in offset order).
    aborted: Vec<AbortedTxn>,
    /// Offsets written so far end here (each write must start at or after).
    end_offset: i64,
    /// Ended transactions whose marker may still be above the high
    /// watermark: first offset → marker offset. Not in snapshots.
    ended_unreplicated: BTreeMap<i64, i64>,
    /// The highest high watermark a reader asked with: entries whose
    /// marker lies below it are dropped at the next write.
    high_watermark_seen: std::cell::Cell<i64>,
}

impl PartitionTxnIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `producer_id` has a transaction open here (a produce of a
    /// transactional batch without one must be verified first).
    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|state| state.open.is_some())
    }

    /// Whether `producer_id` has a transaction open here at `epoch` (Kafka's
    /// `hasOngoingTransaction(producerId, producerEpoch)`): a batch of a newer
    /// epoch starts a transaction the coordinator must confirm.
    pub fn has_open_transaction_at(&self, producer_id: i64, epoch: i16) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|state| state.open.is_some() && state.epoch == epoch)
    }

    /// The epoch the partition last saw of `producer_id`.
    pub fn producer_epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|state| state.epoch)
    }

    fn check_offset(&self, offset: i64) -> Result<(), IndexRefusal> {
        if offset < self.end_offset {
            return Err(IndexRefusal::OffsetNotAfterEnd {
                end: self.end_offset,
            });
        }
        Ok(())
    }

    /// Checks a transactional data batch of `producer_id` at `epoch`
    /// without recording it (the produce path checks, appends, then calls
    /// [`Self::record_transactional_batch`]).
    pub fn check_transactional_batch(
        &self,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(), IndexRefusal> {
        match self.producers.get(&producer_id) {
            Some(state) if epoch < state.epoch => Err(IndexRefusal::InvalidProducerEpoch {
                known_epoch: state.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// A transactional data batch at `[first_offset, last_offset]` was
    /// appended: opens the producer's transaction if none is open.
    pub fn record_transactional_batch(
        &mut self,
        producer_id: i64,
        epoch: i16,
        first_offset: i64,
        last_offset: i64,
    ) -> Result<(), IndexRefusal> {
        self.check_transactional_batch(producer_id, epoch)?;
        self.check_offset(first_offset)?;
        let state = self
            .producers
            .entry(producer_id)
            .or_insert(ProducerTxnState {
                epoch,
                coordinator_epoch: -1,
                open: None,
            });
        state.epoch = state.epoch.max(epoch);
        match &mut state.open {
            Some((_, last)) => *last = last_offset,
            None => {
                state.open = Some((first_offset, last_offset));
                self.open_by_first_offset.insert(first_offset, producer_id);
            }
        }
        self.end_offset = last_offset + 1;
        Ok(())
    }

    /// Checks a marker for `producer_id` without recording it.
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<(), IndexRefusal> {
        let Some(state) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if marker.coordinator_epoch < state.coordinator_epoch {
            return Err(IndexRefusal::CoordinatorFenced {
                known_coordinator_epoch: state.coordinator_epoch,
            });
        }
        if epoch < state.epoch {
            return Err(IndexRefusal::InvalidProducerEpoch {
                known_epoch: state.epoch,
            });
        }
        Ok(())
    }

    /// A marker was appended at `offset`: closes the producer's open
    /// transaction; returns the aborted entry an ABORT leaves.
    pub fn record_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        marker: EndTxnMarker,
        offset: i64,
    ) -> Result<Option<AbortedTxn>, IndexRefusal> {
        self.check_marker(producer_id, epoch, marker)?;
        self.check_offset(offset)?;
        self.end_offset = offset + 1;
        let state = self
            .producers
            .entry(producer_id)
            .or_insert(ProducerTxnState {
                epoch,
                coordinator_epoch: marker.coordinator_epoch,
                open: None,
            });
        state.epoch = epoch;
        state.coordinator_epoch = marker.coordinator_epoch;
        let Some((first_offset, _)) = state.open.take() else {
            return Ok(None);
        };
        self.open_by_first_offset.remove(&first_offset);
        let replicated_below = self.high_watermark_seen.get();
        self.ended_unreplicated
            .retain(|_, marker| *marker >= replicated_below);
        self.ended_unreplicated.insert(first_offset, offset);
        // A follower or a replay never learns the high watermark here: the
        // oldest entries go first (their markers are the likeliest below it).
        while self.ended_unreplicated.len() > ENDED_UNREPLICATED_MAX {
            self.ended_unreplicated.pop_first();
        }
        if marker.control_type == ControlType::Commit {
            return Ok(None);
        }
        let last_stable_offset = self
            .open_by_first_offset
            .keys()
            .next()
            .copied()
            .unwrap_or(offset + 1);
        let entry = AbortedTxn {
            producer_id,
            first_offset,
            last_offset: offset,
            last_stable_offset,
        };
        self.aborted.push(entry);
        Ok(Some(entry))
    }

    /// The high watermark rose to at least `high_watermark`: ended
    /// transactions whose marker lies below it stop holding the LSO (and are
    /// forgotten at the next marker).
    pub fn note_high_watermark(&self, high_watermark: i64) {
        self.high_watermark_seen
            .set(self.high_watermark_seen.get().max(high_watermark));
    }

    /// The first offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open_by_first_offset.keys().next().copied()
    }

    /// How far a `read_committed` consumer may read: below the oldest open
    /// transaction and the oldest ended one whose marker is not below
    /// `high_watermark` yet.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.note_high_watermark(high_watermark);
        let unreplicated = self
            .ended_unreplicated
            .iter()
            .find(|(_, marker)| **marker >= high_watermark)
            .map(|(first, _)| *first);
        [self.first_unstable_offset(), unreplicated]
            .into_iter()
            .flatten()
            .fold(high_watermark, i64::min)
    }

    /// The aborted transactions a fetch of `[from, upper)` must return
    /// (Kafka's `collectAbortedTxns`), in marker order.
    pub fn aborted_overlapping(&self, from: i64, upper: i64) -> Vec<AbortedTxn> {
        // Entries are ordered by last offset: skip those ending before `from`.
        let start = self
            .aborted
            .partition_point(|entry| entry.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|entry| entry.first_offset < upper)
            .copied()
            .collect()
    }

    /// Retention moved the log start: entries ending before it go.
    pub fn drop_before(&mut self, log_start_offset: i64) {
        self.aborted
            .retain(|entry| entry.last_offset >= log_start_offset);
    }

    /// The log cleaner removed every record of these aborted transactions
    /// (named by their markers' offsets): their entries go, as Kafka's
    /// cleaner leaves them out of the cleaned segment's `.txnindex`. A
    /// fetch then no longer names them; their markers stay in the log for
    /// `delete.retention.ms` more, for consumers told of them before.
    /// Returns how many went.
    pub fn drop_aborted_at(&mut self, marker_offsets: &std::collections::HashSet<i64>) -> usize {
        let before = self.aborted.len();
        self.aborted
            .retain(|entry| !marker_offsets.contains(&entry.last_offset));
        before - self.aborted.len()
    }

    /// How many aborted entries it holds.
    pub fn aborted_len(&self) -> usize {
        self.aborted.len()
    }

    pub fn open_transactions(&self) -> usize {
        self.open_by_first_offset.len()
    }

    /// Forgets producers with no open transaction that `keep` does not
    /// name (their idempotent state expired): bounds the map by the live
    /// producers plus the open transactions. Returns how many went.
    pub fn forget_idle(&mut self, keep: impl Fn(i64) -> bool) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|producer_id, state| state.open.is_some() || keep(*producer_id));
        before - self.producers.len()
    }

    /// Every producer the index knows (its epoch, last coordinator epoch
    /// and open transaction), by producer id.
    pub fn producers(&self) -> impl Iterator<Item = ProducerTxnPart> + '_ {
        self.producers
            .iter()
            .map(|(producer_id, state)| ProducerTxnPart {
                producer_id: *producer_id,
                epoch: state.epoch,
                coordinator_epoch: state.coordinator_epoch,
                open: state.open,
            })
    }

    /// Everything the index holds, for a snapshot file: per producer its
    /// epoch, last coordinator epoch and open transaction; the aborted
    /// entries; the offset the next write must start at or after.
    pub fn parts(&self) -> IndexParts {
        IndexParts {
            producers: self.producers().collect(),
            aborted: self.aborted.clone(),
            end_offset: self.end_offset,
        }
    }

    /// An index from [`Self::parts`] (a snapshot file's, already checked:
    /// unique producers, `first <= last < end_offset`, aborted entries
    /// ordered by last offset).
    pub fn from_parts(parts: IndexParts) -> Self {
        let mut index = Self {
            aborted: parts.aborted,
            end_offset: parts.end_offset,
            ..Self::default()
        };
        for part in parts.producers {
            if let Some((first, _)) = part.open {
                index.open_by_first_offset.insert(first, part.producer_id);
            }
            index.producers.insert(
                part.producer_id,
                ProducerTxnState {
                    epoch: part.epoch,
                    coordinator_epoch: part.coordinator_epoch,
                    open: part.open,
                },
            );
        }
        index
    }
}

/// One producer's entry in [`IndexParts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTxnPart {
    pub producer_id: i64,
    pub epoch: i16,
    /// -1 before any marker.
    pub coordinator_epoch: i32,
    /// (first, last) offsets of its open transaction.
    pub open: Option<(i64, i64)>,
}

/// A [`PartitionTxnIndex`] taken apart (for the producer-state snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexParts {
    pub producers: Vec<ProducerTxnPart>,
    pub aborted: Vec<AbortedTxn>,
    pub end_offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: EndTxnMarker = EndTxnMarker {
        control_type: ControlType::Commit,
        coordinator_epoch: 1,
    };
    const ABORT: EndTxnMarker = EndTxnMarker {
        control_type: ControlType::Abort,
        coordinator_epoch: 1,
    };

    #[test]
    fn control_record_golden_bytes() {
        assert_eq!(COMMIT.encode_key(), [0, 0, 0, 1]);
        assert_eq!(ABORT.encode_key(), [0, 0, 0, 0]);
        let marker = EndTxnMarker {
            control_type: ControlType::Commit,
            coordinator_epoch: 0x0102_0304,
        };
        assert_eq!(marker.encode_value(), [0, 0, 1, 2, 3, 4]);
        assert_eq!(
            EndTxnMarker::decode(&marker.encode_key(), &marker.encode_value()),
            Ok(marker)
        );
    }

    #[test]
    fn control_record_refuses_bad_bytes() {
        assert_eq!(
            EndTxnMarker::decode(&[0, 0, 0], &[0; 6]),
            Err(ControlRecordError::BadLength)
        );
        assert_eq!(
            EndTxnMarker::decode(&[0, 1, 0, 1], &[0; 6]),
            Err(ControlRecordError::UnknownKeyVersion(1))
        );
        assert_eq!(
            EndTxnMarker::decode(&[0, 0, 0, 5], &[0; 6]),
            Err(ControlRecordError::UnknownType(5))
        );
        assert_eq!(
            EndTxnMarker::decode(&[0, 0, 0, 1], &[0; 5]),
            Err(ControlRecordError::BadLength)
        );
    }

    #[test]
    fn lso_is_the_high_watermark_without_open_transactions() {
        let index = PartitionTxnIndex::new();
        assert_eq!(index.last_stable_offset(42), 42);
    }

    #[test]
    fn lso_stops_at_the_oldest_open_transaction() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 5, 6).expect("ok");
        index.record_transactional_batch(8, 0, 9, 9).expect("ok");
        assert_eq!(index.last_stable_offset(20), 5);
        // Never above the high watermark.
        assert_eq!(index.last_stable_offset(3), 3);
        index.record_marker(7, 0, COMMIT, 10).expect("ok");
        // The commit marker at 10 is below the high watermark (20).
        assert_eq!(index.last_stable_offset(20), 9);
        index.record_marker(8, 0, COMMIT, 11).expect("ok");
        assert_eq!(index.last_stable_offset(20), 20);
    }

    #[test]
    fn a_second_batch_does_not_move_the_first_offset() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 5, 5).expect("ok");
        index.record_transactional_batch(7, 0, 8, 9).expect("ok");
        assert_eq!(index.first_unstable_offset(), Some(5));
    }

    #[test]
    fn abort_leaves_an_entry_with_the_stable_offset_after_it() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 0, 1).expect("ok");
        index.record_transactional_batch(8, 0, 2, 2).expect("ok");
        let entry = index.record_marker(7, 0, ABORT, 3).expect("ok");
        assert_eq!(
            entry,
            Some(AbortedTxn {
                producer_id: 7,
                first_offset: 0,
                last_offset: 3,
                last_stable_offset: 2, // producer 8 still open at 2
            })
        );
        let entry = index.record_marker(8, 0, ABORT, 4).expect("ok");
        assert_eq!(entry.map(|e| e.last_stable_offset), Some(5));
    }

    #[test]
    fn commit_leaves_no_entry_and_a_marker_without_transaction_is_a_retry() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 0, 0).expect("ok");
        assert_eq!(index.record_marker(7, 0, COMMIT, 1), Ok(None));
        assert_eq!(index.record_marker(7, 0, COMMIT, 2), Ok(None));
        assert_eq!(index.record_marker(9, 0, ABORT, 3), Ok(None));
        assert!(index.aborted_overlapping(0, 100).is_empty());
    }

    #[test]
    fn fetch_gets_exactly_the_overlapping_aborted_entries() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(1, 0, 0, 0).expect("ok");
        index.record_marker(1, 0, ABORT, 1).expect("ok"); // [0, 1]
        index.record_transactional_batch(2, 0, 5, 5).expect("ok");
        index.record_marker(2, 0, ABORT, 8).expect("ok"); // [5, 8]
        let ids = |index: &PartitionTxnIndex, from, upper| -> Vec<i64> {
            index
                .aborted_overlapping(from, upper)
                .iter()
                .map(|e| e.producer_id)
                .collect()
        };
        assert_eq!(ids(&index, 0, 100), vec![1, 2]);
        assert_eq!(ids(&index, 2, 100), vec![2]); // the first ended at 1
        assert_eq!(ids(&index, 0, 5), vec![1]); // the second starts at 5
        assert_eq!(ids(&index, 8, 9), vec![2]); // its marker is at 8
        assert_eq!(ids(&index, 9, 20), Vec::<i64>::new());
        index.drop_before(2);
        assert_eq!(ids(&index, 0, 100), vec![2]);
    }

    #[test]
    fn a_marker_fences_the_older_producer_epoch() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 3, 0, 0).expect("ok");
        // The coordinator aborted with a bumped epoch (timeout or fence).
        index.record_marker(7, 4, ABORT, 1).expect("ok");
        assert_eq!(
            index.record_transactional_batch(7, 3, 2, 2),
            Err(IndexRefusal::InvalidProducerEpoch { known_epoch: 4 })
        );
        assert_eq!(
            index.check_marker(7, 3, ABORT),
            Err(IndexRefusal::InvalidProducerEpoch { known_epoch: 4 })
        );
        index.record_transactional_batch(7, 4, 2, 2).expect("ok");
    }

    #[test]
    fn a_deposed_coordinators_marker_is_fenced() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 0, 0).expect("ok");
        let newer = EndTxnMarker {
            control_type: ControlType::Abort,
            coordinator_epoch: 5,
        };
        index.record_marker(7, 0, newer, 1).expect("ok");
        let older = EndTxnMarker {
            control_type: ControlType::Commit,
            coordinator_epoch: 4,
        };
        assert_eq!(
            index.record_marker(7, 0, older, 2),
            Err(IndexRefusal::CoordinatorFenced {
                known_coordinator_epoch: 5
            })
        );
    }

    #[test]
    fn offsets_must_grow() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 4, 5).expect("ok");
        assert_eq!(
            index.record_marker(7, 0, COMMIT, 5),
            Err(IndexRefusal::OffsetNotAfterEnd { end: 6 })
        );
    }

    #[test]
    fn an_ended_transaction_holds_the_lso_until_its_marker_is_below_the_high_watermark() {
        let mut index = PartitionTxnIndex::new();
        index.record_transactional_batch(7, 0, 4, 8).expect("ok");
        index.record_marker(7, 0, COMMIT, 9).expect("ok");
        // The marker (9) is not committed yet: its records are not stable.
        assert_eq!(index.last_stable_offset(9), 4);
        assert_eq!(index.last_stable_offset(10), 10);
        // A later transaction's marker: the first one's entry is dropped
        // (its marker is below the high watermark seen).
        index.record_transactional_batch(7, 0, 10, 11).expect("ok");
        index.record_marker(7, 0, ABORT, 12).expect("ok");
        assert_eq!(index.ended_unreplicated.len(), 1);
        assert_eq!(index.last_stable_offset(12), 10);
        assert_eq!(index.last_stable_offset(13), 13);
    }

    #[test]
    fn ended_transactions_stay_bounded_without_readers() {
        // A partition nobody reads (no LSO asked) and whose leader never
        // tells the high watermark: the oldest entries go.
        let mut index = PartitionTxnIndex::new();
        for txn in 0..5_000i64 {
            index
                .record_transactional_batch(7, 0, 2 * txn, 2 * txn)
                .expect("ok");
            index.record_marker(7, 0, COMMIT, 2 * txn + 1).expect("ok");
        }
        assert_eq!(index.ended_unreplicated.len(), ENDED_UNREPLICATED_MAX);
        // The leader tells the high watermark before each marker: only the
        // transactions above it stay.
        index.note_high_watermark(10_000);
        index
            .record_transactional_batch(7, 0, 10_000, 10_000)
            .expect("ok");
        index.record_marker(7, 0, COMMIT, 10_001).expect("ok");
        assert_eq!(index.ended_unreplicated.len(), 1);
        assert_eq!(index.last_stable_offset(10_001), 10_000);
    }
}
