//! What the transaction coordinator keeps per `transactional.id`
//! ([`TxnMetadata`]) and the states a transaction moves through
//! ([`TxnState`]), with Kafka's numbering (the `TransactionStatus` byte of
//! the `__transaction_state` value) and Kafka's table of legal transitions.
//! Pure data: the rules that pick a transition live in
//! [`super::coordinator`].

use std::collections::BTreeSet;

/// `RecordBatch.NO_PRODUCER_ID`.
pub const NO_PRODUCER_ID: i64 = -1;
/// `RecordBatch.NO_PRODUCER_EPOCH`.
pub const NO_PRODUCER_EPOCH: i16 = -1;

/// One partition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// Kafka's `TransactionState`, with its wire ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnState {
    /// No transaction open (also: just initialised).
    Empty,
    /// Partitions were added; the producer is writing.
    Ongoing,
    /// EndTxn(commit) is durable; markers are being written.
    PrepareCommit,
    /// EndTxn(abort), a timeout or a fence is durable; markers are being
    /// written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// Expired; its tombstone follows. Never written as a value.
    Dead,
    /// An Ongoing transaction being fenced (a new InitProducerId or the
    /// timeout). Kafka holds it only as a pending state and writes
    /// PrepareAbort with the bumped epoch; so does Kafki.
    PrepareEpochFence,
}

impl TxnState {
    /// The `TransactionStatus` byte.
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name Kafka's tools print (`kafka-transactions.sh describe`).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// Markers are being written: every request but a matching retry
    /// waits (CONCURRENT_TRANSACTIONS).
    pub fn is_preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }

    /// No transaction is open: a new one may start, the id may expire.
    pub fn is_at_rest(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }

    /// Kafka's `validPreviousStates` (transaction version 1: an abort
    /// always comes from an open transaction).
    pub fn may_follow(self, previous: TxnState) -> bool {
        use TxnState::*;
        match self {
            Empty => previous.is_at_rest(),
            Ongoing => previous == Ongoing || previous.is_at_rest(),
            PrepareCommit => previous == Ongoing,
            PrepareAbort => matches!(previous, Ongoing | PrepareEpochFence),
            CompleteCommit => previous == PrepareCommit,
            CompleteAbort => previous == PrepareAbort,
            Dead => previous.is_at_rest(),
            PrepareEpochFence => previous == Ongoing,
        }
    }
}

/// Kafka's `TransactionMetadata` without the locks: what one
/// `transactional.id` holds, exactly what its `__transaction_state` value
/// stores (plus `last_producer_epoch`, which Kafka keeps only in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id before the last rotation (epoch exhaustion), so a
    /// retried InitProducerId of that old id is recognised (KIP-360);
    /// `PreviousProducerId` in the log value v1.
    pub last_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump by an InitProducerId carrying the
    /// producer's own id/epoch, so that its retry gets the same answer
    /// (KIP-360). Not stored in the log (as in Kafka): a retry across a
    /// coordinator failover is fenced.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Sorted, so records and markers come out in one order.
    pub partitions: BTreeSet<TopicPartition>,
    /// When the open transaction began (its first AddPartitions); -1 when
    /// none is open.
    pub start_timestamp_ms: i64,
    pub last_update_timestamp_ms: i64,
}

impl TxnMetadata {
    /// A `transactional.id` seen for the first time: not initialised yet
    /// (epoch -1), held only in memory until its first record is durable.
    pub fn fresh(producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        Self {
            producer_id,
            last_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_timestamp_ms: -1,
            last_update_timestamp_ms: now_ms,
        }
    }

    /// Whether the epochs of this producer id are used up: the epoch
    /// `i16::MAX` is kept for the fence that may still be needed (Kafka's
    /// `isEpochExhausted`).
    pub fn epoch_exhausted(epoch: i16) -> bool {
        epoch >= i16::MAX - 1
    }
}
