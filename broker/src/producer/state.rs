//! One partition's idempotent-producer state: it checks the sequence
//! numbers of every batch of every (producer id, epoch) — Kafka's rules:
//!
//! * a batch equal to one of the producer's last five is a duplicate: it is
//!   acknowledged with its original offsets and not appended again;
//! * otherwise its first sequence must follow the last one (wrapping at
//!   `i32::MAX`), else `OUT_OF_ORDER_SEQUENCE_NUMBER`;
//! * an older epoch is fenced (`INVALID_PRODUCER_EPOCH`); a newer epoch must
//!   start at sequence 0;
//! * a producer the partition does not know must start at sequence 0 (Kafka
//!   ≥ 2.5 accepts any sequence there; Kafki keeps the stricter rule, so a
//!   forgotten producer learns it lost its state instead of silently
//!   skipping the duplicate check).
//!
//! [`ProducerStates`] is one partition's state: it lives on the partition's
//! shard only, inside its `Partition`, and changes only in the produce path
//! (check, then append, then [`ProducerStates::record`], with no await in
//! between) and in the shard's maintenance tick. It is bounded two ways:
//!
//! * **expiry** (`producer.id.expiration.ms`, broker and topic, default one
//!   day): a producer whose last batch is older is forgotten, checked every
//!   `producer.id.expiration.check.interval.ms` and when the state is loaded;
//! * **a cap** (`producer.id.max.per.partition`, default 100000): a new
//!   producer beyond it evicts the least recently used one (the one whose
//!   last batch has the lowest offset), with at most one warning per
//!   partition per minute. Without it a client could grow the map without
//!   limit by sending sequence-0 batches under made-up producer ids.
//!
//! The state survives restarts and moves between shards through the
//! per-partition snapshot file ([`crate::producer::snapshot`]): written at
//! every clean close and periodically, loaded at open, with the batch
//! headers after it replayed from the log.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::batch::BatchHeader;

/// Batches remembered per producer for duplicate detection (Kafka: 5).
pub const REMEMBERED_BATCHES: usize = 5;
/// At most one cap warning per partition in this long.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Kafka's default `producer.id.expiration.ms`: one day.
pub const EXPIRATION_MS_DEFAULT: i64 = 86_400_000;
/// Default `producer.id.max.per.partition`. At most ~100 bytes each in
/// memory and in the snapshot, so about 10 MB per partition at the cap.
pub const PRODUCERS_MAX_DEFAULT: usize = 100_000;

/// One remembered batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: u64,
}

/// What a partition knows of one producer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first; never empty once the producer appended a batch.
    pub batches: VecDeque<SequencedBatch>,
    /// When its last batch was appended (ms since the epoch): the broker's
    /// clock for live appends, the batch's max timestamp when replayed
    /// from the log (the only time the log keeps). Expiry compares it.
    pub last_timestamp_ms: i64,
}

impl ProducerEntry {
    /// The base offset of the last batch: the key of the LRU order.
    fn last_offset(&self) -> u64 {
        self.batches.back().map_or(0, |batch| batch.base_offset)
    }
}

/// The bounds of one partition's producer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    /// `producer.id.expiration.ms`.
    pub expiration_ms: i64,
    /// `producer.id.max.per.partition` (at least 1).
    pub producers_max: usize,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        Self {
            expiration_ms: EXPIRATION_MS_DEFAULT,
            producers_max: PRODUCERS_MAX_DEFAULT,
        }
    }
}

/// The verdict on an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Accept,
    /// Already appended at this base offset: acknowledge, do not append.
    Duplicate { base_offset: u64 },
    /// Refuse with this Kafka error code.
    Refuse(i16),
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    let span = i64::from(header.base_sequence) + i64::from(header.last_offset_delta);
    (span % (i64::from(i32::MAX) + 1)) as i32
}

/// Per-partition producer state (on the partition's shard only).
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// (last batch's base offset, producer id) of every producer: the first
    /// is the least recently used. Offsets only grow, so this is the LRU
    /// order without a clock, and it survives a snapshot unchanged.
    recency: BTreeSet<(u64, i64)>,
    limits: ProducerLimits,
    /// `topic-partition`, for log lines.
    label: String,
    /// Bumped by every change, so the snapshot writer can tell whether the
    /// file on disk is behind.
    changes: u64,
    /// Producers evicted for the cap since the last warning, and when that
    /// warning was.
    evicted_unreported: u64,
    last_cap_warning: Option<Instant>,
    /// The partition's transactions (open ones, aborted entries, marker
    /// fencing): kept here because it has the same lifetime as the
    /// sequences (changed only by appends, rebuilt by the same replay,
    /// saved in the same snapshot, counted by the same change counter).
    /// Its rules live in [`crate::producer::transactions`].
    pub(super) transactions: crate::txn::PartitionTxnIndex,
    /// [`Self::changes`] right after the cleaner's report last made this
    /// state drop aborted entries (0: never since it was loaded). Until a
    /// snapshot at least that recent is on disk, a reopen would bring them
    /// back, so their markers must stay in the log.
    pub(super) aborts_dropped_at: u64,
    /// KIP-890 guards of producers whose transaction's first batch here
    /// waits for (or got) the coordinator's confirmation. In memory only:
    /// lost with the state, a guard only costs a refused append and the
    /// client's abort. Its rules live in [`crate::producer::verification`].
    pub(super) verification: crate::producer::verification::VerificationGuards,
}

impl ProducerStates {
    pub fn new(label: String, limits: ProducerLimits) -> Self {
        Self {
            label,
            limits: ProducerLimits {
                producers_max: limits.producers_max.max(1),
                ..limits
            },
            ..Self::default()
        }
    }

    /// Checks a producer batch (non-idempotent batches, producer id -1, are
    /// always accepted).
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id < 0 {
            return SequenceCheck::Accept;
        }
        if header.base_sequence < 0 {
            return SequenceCheck::Refuse(ResponseError::InvalidRecord.code());
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return if header.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            };
        };
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::Refuse(ResponseError::InvalidProducerEpoch.code());
        }
        if header.producer_epoch > entry.epoch {
            return if header.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            };
        }
        let last = last_sequence(header);
        if let Some(known) = entry.batches.iter().find(|known| {
            known.first_sequence == header.base_sequence && known.last_sequence == last
        }) {
            return SequenceCheck::Duplicate {
                base_offset: known.base_offset,
            };
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |known| next_sequence(known.last_sequence));
        if header.base_sequence == expected {
            SequenceCheck::Accept
        } else {
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        }
    }

    /// Records an appended batch (also used when replaying the log).
    /// `timestamp_ms` is when it was appended (see
    /// [`ProducerEntry::last_timestamp_ms`]). A new producer at the cap
    /// evicts the least recently used one first.
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64, timestamp_ms: i64) {
        // `check` refuses a negative sequence from an idempotent producer;
        // a replayed log holding one anyway must not poison the state.
        if header.producer_id < 0 || header.base_sequence < 0 {
            return;
        }
        let producer_id = header.producer_id;
        if !self.producers.contains_key(&producer_id)
            && self.producers.len() >= self.limits.producers_max
        {
            self.evict_least_recently_used();
        }
        let entry = match self.producers.entry(producer_id) {
            Entry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                self.recency.remove(&(entry.last_offset(), producer_id));
                entry
            }
            Entry::Vacant(vacant) => vacant.insert(ProducerEntry {
                epoch: header.producer_epoch,
                ..ProducerEntry::default()
            }),
        };
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SequencedBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
        // Never move a producer's clock back: replayed batches carry client
        // timestamps, which need not grow.
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
        self.recency.insert((entry.last_offset(), producer_id));
        self.changes += 1;
    }

    /// Forgets every producer whose last batch is at least
    /// `producer.id.expiration.ms` older than `now_ms` (Kafka's rule).
    /// Returns how many were forgotten.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let expiration_ms = self.limits.expiration_ms;
        let expired: Vec<i64> = self
            .producers
            .iter()
            .filter(|(_, entry)| now_ms.saturating_sub(entry.last_timestamp_ms) >= expiration_ms)
            .map(|(producer_id, _)| *producer_id)
            .collect();
        for producer_id in &expired {
            if let Some(entry) = self.producers.remove(producer_id) {
                self.recency.remove(&(entry.last_offset(), *producer_id));
            }
        }
        // A transactional producer's epoch and coordinator epoch are kept
        // while its sequences are, or while its transaction is open.
        let producers = &self.producers;
        let forgotten = self
            .transactions
            .forget_idle(|producer_id| producers.contains_key(&producer_id));
        if !expired.is_empty() || forgotten > 0 {
            self.changes += 1;
        }
        expired.len()
    }

    /// Evicts least recently used producers until the cap holds (after
    /// loading a snapshot written under a larger cap).
    pub fn enforce_cap(&mut self) {
        while self.producers.len() > self.limits.producers_max {
            self.evict_least_recently_used();
        }
    }

    fn evict_least_recently_used(&mut self) {
        let Some((_, producer_id)) = self.recency.pop_first() else {
            return;
        };
        self.producers.remove(&producer_id);
        self.changes += 1;
        self.evicted_unreported += 1;
        let now = Instant::now();
        let quiet = self
            .last_cap_warning
            .is_some_and(|last| now.duration_since(last) < CAP_WARNING_EVERY);
        if !quiet {
            tracing::warn!(
                partition = %self.label,
                cap = self.limits.producers_max,
                evicted = self.evicted_unreported,
                "producer-state cap (producer.id.max.per.partition) reached: forgetting the least \
                 recently used producers; a forgotten producer's next batch with a non-zero \
                 sequence gets OUT_OF_ORDER_SEQUENCE_NUMBER"
            );
            self.last_cap_warning = Some(now);
            self.evicted_unreported = 0;
        }
    }

    /// Adds a producer loaded from a snapshot. Returns false (and changes
    /// nothing) if the entry has no batch or the producer is already known:
    /// a decoder that checked its input never asks for either.
    pub fn insert_loaded(&mut self, producer_id: i64, entry: ProducerEntry) -> bool {
        if entry.batches.is_empty() || self.producers.contains_key(&producer_id) {
            return false;
        }
        self.recency.insert((entry.last_offset(), producer_id));
        self.producers.insert(producer_id, entry);
        true
    }

    /// Every producer, least recently used first (the snapshot keeps this
    /// order, so a file written twice from the same state is the same).
    pub fn iter_least_recent_first(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.recency.iter().filter_map(|(_, producer_id)| {
            self.producers
                .get(producer_id)
                .map(|entry| (*producer_id, entry))
        })
    }

    /// The base offset of every producer's last batch. The log cleaner
    /// keeps these batches (empty if all their records go), so that a
    /// replay of the log after the last snapshot restores each producer's
    /// sequence, as Kafka's cleaner does.
    pub fn last_batch_offsets(&self) -> std::collections::HashSet<u64> {
        self.producers
            .values()
            .filter(|entry| !entry.batches.is_empty())
            .map(ProducerEntry::last_offset)
            .collect()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// A counter bumped by every change.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Counts a change made outside this file (the transactions).
    pub(super) fn note_change(&mut self) {
        self.changes += 1;
    }

    pub fn limits(&self) -> ProducerLimits {
        self.limits
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// A batch header of `count` records from sequence `first` of producer
/// `producer_id` in `epoch` (for the producer room's tests).
#[cfg(test)]
pub(crate) fn test_header(producer_id: i64, epoch: i16, first: i32, count: i32) -> BatchHeader {
    BatchHeader {
        base_offset: 0,
        batch_length: 100,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: count - 1,
        base_timestamp: 0,
        max_timestamp: 0,
        producer_id,
        producer_epoch: epoch,
        base_sequence: first,
        records_count: count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_header as header;

    #[test]
    fn sequences_duplicates_and_fencing() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(&header(-1, -1, -1, 3)), SequenceCheck::Accept);
        assert_eq!(
            states.check(&header(7, 0, 5, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(states.check(&header(7, 0, 0, 3)), SequenceCheck::Accept);
        states.record(&header(7, 0, 0, 3), 100, 0);
        assert_eq!(
            states.check(&header(7, 0, 0, 3)),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            states.check(&header(7, 0, 4, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(states.check(&header(7, 0, 3, 2)), SequenceCheck::Accept);
        states.record(&header(7, 0, 3, 2), 103, 0);
        // Only the last five batches are remembered.
        for (index, first) in (5..30).step_by(5).enumerate() {
            states.record(&header(7, 0, first, 5), 200 + index as u64, 0);
        }
        assert_eq!(
            states.check(&header(7, 0, 0, 3)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        // A newer epoch starts again at 0; the old epoch is then fenced.
        assert_eq!(states.check(&header(7, 1, 0, 1)), SequenceCheck::Accept);
        states.record(&header(7, 1, 0, 1), 300, 0);
        assert_eq!(
            states.check(&header(7, 0, 30, 1)),
            SequenceCheck::Refuse(ResponseError::InvalidProducerEpoch.code())
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut states = ProducerStates::default();
        states.record(&header(1, 0, 0, 1), 0, 0);
        states.record(&header(1, 0, 1, 1), 1, 0);
        let entry = states.producers.get_mut(&1).expect("entry");
        entry.batches.back_mut().expect("batch").last_sequence = i32::MAX;
        assert_eq!(
            states.check(&header(1, 0, 0, 1)),
            SequenceCheck::Duplicate { base_offset: 0 }
        );
        entry_after_wrap(&mut states);
    }

    fn entry_after_wrap(states: &mut ProducerStates) {
        // After i32::MAX the next expected sequence is 0 (a new batch 0..0
        // would collide with the remembered one, so test 0..1).
        assert_eq!(states.check(&header(1, 0, 0, 2)), SequenceCheck::Accept);
    }

    fn limited(expiration_ms: i64, producers_max: usize) -> ProducerStates {
        ProducerStates::new(
            "t-0".into(),
            ProducerLimits {
                expiration_ms,
                producers_max,
            },
        )
    }

    #[test]
    fn producers_idle_for_the_expiration_are_forgotten() {
        let mut states = limited(1_000, 10);
        states.record(&header(1, 0, 0, 1), 0, 10_000);
        states.record(&header(2, 0, 0, 1), 1, 10_500);
        assert_eq!(states.expire(10_999), 0, "neither is a full second old");
        assert_eq!(
            states.expire(11_000),
            1,
            "producer 1 is exactly 1000 ms old"
        );
        assert!(states.get(1).is_none());
        assert!(states.get(2).is_some());
        // Forgotten: a non-zero sequence is refused, sequence 0 starts over.
        assert_eq!(
            states.check(&header(1, 0, 1, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(states.check(&header(1, 0, 0, 1)), SequenceCheck::Accept);
        // A replayed batch with an older client timestamp does not move the
        // producer's clock back.
        states.record(&header(2, 0, 1, 1), 2, 5);
        assert_eq!(states.get(2).expect("kept").last_timestamp_ms, 10_500);
        assert_eq!(states.expire(11_499), 0);
        assert_eq!(states.expire(11_500), 1);
        assert!(states.is_empty());
        assert!(states.recency.is_empty(), "the LRU index follows the map");
    }

    #[test]
    fn the_cap_evicts_the_least_recently_used_producer() {
        let mut states = limited(EXPIRATION_MS_DEFAULT, 3);
        for (offset, producer_id) in [10, 20, 30].into_iter().enumerate() {
            states.record(&header(producer_id, 0, 0, 1), offset as u64, 0);
        }
        // Producer 10 appends again: now 20 is the least recently used.
        states.record(&header(10, 0, 1, 1), 3, 0);
        states.record(&header(40, 0, 0, 1), 4, 0);
        assert_eq!(states.len(), 3);
        assert!(states.get(20).is_none(), "20 was the least recently used");
        for kept in [10, 30, 40] {
            assert!(states.get(kept).is_some(), "{kept} must be kept");
        }
        assert_eq!(
            states.check(&header(20, 0, 1, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(
            states.check(&header(30, 0, 0, 1)),
            SequenceCheck::Duplicate { base_offset: 2 }
        );
        // A flood of new ids keeps the map at the cap.
        for producer_id in 1_000..2_000 {
            states.record(&header(producer_id, 0, 0, 1), producer_id as u64, 0);
        }
        assert_eq!(states.len(), 3);
        assert_eq!(states.recency.len(), 3);
        assert!(states.get(1_999).is_some() && states.get(10).is_none());
    }

    #[test]
    fn loading_under_a_smaller_cap_keeps_the_most_recent() {
        let mut states = limited(EXPIRATION_MS_DEFAULT, 2);
        for (producer_id, offset) in [(1, 5u64), (2, 9), (3, 7)] {
            let entry = ProducerEntry {
                epoch: 0,
                batches: VecDeque::from([SequencedBatch {
                    first_sequence: 0,
                    last_sequence: 0,
                    base_offset: offset,
                }]),
                last_timestamp_ms: 0,
            };
            assert!(states.insert_loaded(producer_id, entry));
        }
        assert!(!states.insert_loaded(2, ProducerEntry::default()));
        states.enforce_cap();
        assert_eq!(states.len(), 2);
        assert!(states.get(1).is_none(), "offset 5 was the oldest");
    }
}
