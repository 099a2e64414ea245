//! The transaction coordinator, pure: [`TxnCoordinator::handle`] takes one
//! [`Input`] and pushes the [`Effect`]s the driver must carry out, in order.
//! It owns the metadata of every `transactional.id` whose
//! `__transaction_state` partition this node leads, and Kafka's rules
//! (`TransactionCoordinator`, `TransactionMetadata`,
//! `TransactionStateManager`, transaction version 1: KIP-360 epoch bumps,
//! KIP-890 part 1 verification, no epoch bump per transaction).
//!
//! # The rules
//!
//! - A state change is *visible* (answers, timers, other requests see it)
//!   only once its record is durable in `__transaction_state`
//!   ([`Input::LogDurable`]); until then the id has a transition in flight
//!   and every other request for it gets CONCURRENT_TRANSACTIONS. One
//!   record per change; the coordinator knows each record's offset (the
//!   partition's log end at load, plus one per append).
//! - One exception, for throughput: while a CompleteCommit/CompleteAbort
//!   (which nobody waits for) is in flight, the producer's next
//!   AddPartitionsToTxn/AddOffsetsToTxn is *chained* behind it: checked
//!   against the completed state and appended right after, so both
//!   records reach the disk in one write. Its answer still waits for its
//!   own record to be durable, which the ordered log makes imply the
//!   Complete* one's; a failover in between loses both or the second
//!   only, and the client retries either way.
//! - InitProducerId: an unknown id gets a new producer id (from the pool
//!   the driver fills, [`Input::ProducerIds`]) and epoch 0; a known one at
//!   rest gets its epoch bumped (a new producer id once the epoch is
//!   exhausted); with the producer's own id/epoch (KIP-360) the bump
//!   happens only if that epoch is current, and a retry of a bump that
//!   succeeded gets the same answer; any other id/epoch is PRODUCER_FENCED.
//!   An Ongoing transaction is aborted first, with the epoch bumped (the
//!   zombie is fenced), and the caller gets CONCURRENT_TRANSACTIONS once
//!   that abort is durable (it retries and then gets the next epoch).
//! - AddPartitionsToTxn / AddOffsetsToTxn (the group's `__consumer_offsets`
//!   partition): unknown id or another producer id →
//!   INVALID_PRODUCER_ID_MAPPING; another epoch → PRODUCER_FENCED; a
//!   transition in flight or markers being written → CONCURRENT_TRANSACTIONS;
//!   partitions already in the Ongoing transaction → answered at once;
//!   otherwise the transaction becomes (or stays) Ongoing with them.
//! - The verify-only AddPartitionsToTxn a partition leader sends before it
//!   accepts a transaction's first write (KIP-890) changes nothing: the same
//!   id/epoch checks, then per partition NONE if the transaction is Ongoing
//!   and holds it, else INVALID_TXN_STATE.
//! - EndTxn: the same id/epoch checks (the epoch must be equal); Ongoing →
//!   PrepareCommit/PrepareAbort, answered once durable, then the markers
//!   go out; a retry of a finished end (CompleteCommit + commit,
//!   CompleteAbort + abort) is answered NONE, of one still being finished
//!   CONCURRENT_TRANSACTIONS; anything else INVALID_TXN_STATE.
//! - [`Input::MarkersWritten`] (every partition took the marker) →
//!   CompleteCommit/CompleteAbort, partitions cleared.
//! - [`Input::Tick`]: an Ongoing transaction older than its timeout is
//!   aborted with the epoch bumped (no one is answered); an id at rest
//!   unused for `transactional.id.expiration.ms` is removed by a
//!   tombstone.
//! - [`Input::Load`] after a failover replays the partition's records;
//!   every PrepareCommit/PrepareAbort sends its markers again under the
//!   new coordinator epoch; Ongoing ones continue (or time out).
//!   [`Input::Unload`] (leadership lost) drops the partition's ids and
//!   answers what waited with NOT_COORDINATOR; [`Input::AppendFailed`]
//!   does the same (the appends in flight are in doubt) and the driver
//!   loads the partition again from what its log holds.
//!
//! # Contract with the driver
//! - Carry out `Append`s in order, at the offsets they name (the driver
//!   asserts it); report durability with `LogDurable` (the high watermark
//!   of the partition), failures with `AppendFailed`.
//! - Retry `SendMarkers` until every partition took the marker (or no
//!   longer exists), then report `MarkersWritten` with the coordinator
//!   epoch it carried; drop marker work of a partition that was unloaded.
//! - Answer COORDINATOR_LOAD_IN_PROGRESS itself while reading a partition
//!   for `Load`.
//! - Tick before an input whenever time moved.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::partition_index::ControlType;
use super::records::{self, TxnLogEntry, TxnLogRecord};
use super::state::{TopicPartition, TxnMetadata, TxnState, NO_PRODUCER_EPOCH};

/// Identifies a request until its answer comes out.
pub type RequestId = u64;

/// The topic consumer-group offsets live in (AddOffsetsToTxn adds one of
/// its partitions to the transaction).
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Limits and timings; defaults are Kafka's where Kafka has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`.
    pub log_partitions: i32,
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub id_expiration_ms: i64,
    /// The `TransactionLogValue` version written (1, as Kafka 4.x; 0 for
    /// readers that only know the classic one).
    pub log_value_version: i16,
    /// Longest transactional id (what its int16 length can say).
    pub max_transactional_id_bytes: usize,
    /// Partitions one transaction may hold (Kafka has no limit; this
    /// bounds a record and the markers' fan-out).
    pub max_partitions_per_txn: usize,
    /// Transactional ids this coordinator holds at most.
    pub max_transactional_ids: usize,
    /// Ask for a new producer-id block when fewer than this are left.
    pub producer_ids_low_water: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            log_partitions: 50,
            max_timeout_ms: 900_000,
            id_expiration_ms: 604_800_000,
            log_value_version: records::VALUE_VERSION_FLEXIBLE,
            max_transactional_id_bytes: i16::MAX as usize,
            max_partitions_per_txn: 10_000,
            max_transactional_ids: 1_000_000,
            producer_ids_low_water: 100,
        }
    }
}

/// Kafka's error codes the coordinator answers with (one place maps them
/// to numbers: [`TxnError::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnError {
    InvalidRequest,
    InvalidTransactionTimeout,
    NotCoordinator,
    CoordinatorLoadInProgress,
    CoordinatorNotAvailable,
    ConcurrentTransactions,
    ProducerFenced,
    InvalidProducerIdMapping,
    InvalidTxnState,
}

impl TxnError {
    /// The wire code.
    pub fn code(self) -> i16 {
        use kafki_net::kafka_protocol::error::ResponseError as E;
        match self {
            TxnError::InvalidRequest => E::InvalidRequest,
            TxnError::InvalidTransactionTimeout => E::InvalidTransactionTimeout,
            TxnError::NotCoordinator => E::NotCoordinator,
            TxnError::CoordinatorLoadInProgress => E::CoordinatorLoadInProgress,
            TxnError::CoordinatorNotAvailable => E::CoordinatorNotAvailable,
            TxnError::ConcurrentTransactions => E::ConcurrentTransactions,
            TxnError::ProducerFenced => E::ProducerFenced,
            TxnError::InvalidProducerIdMapping => E::InvalidProducerIdMapping,
            TxnError::InvalidTxnState => E::InvalidTxnState,
        }
        .code()
    }

    /// The code for a client too old to know PRODUCER_FENCED (Kafka sends
    /// INVALID_PRODUCER_EPOCH to InitProducerId < v4 and EndTxn,
    /// AddPartitionsToTxn, AddOffsetsToTxn < v2).
    pub fn code_for_legacy_client(self) -> i16 {
        use kafki_net::kafka_protocol::error::ResponseError as E;
        match self {
            TxnError::ProducerFenced => E::InvalidProducerEpoch.code(),
            other => other.code(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

/// One stored `__transaction_state` record, as a load reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: i64,
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// What happens to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The clock reads `now_ms` (wall-clock ms, stored in records; runs
    /// timeouts and expiry).
    Tick { now_ms: i64 },
    /// `transactional_id` `None` is an idempotent producer's request.
    InitProducerId {
        request: RequestId,
        transactional_id: Option<String>,
        timeout_ms: i32,
        /// The producer's own id/epoch when it recovers (KIP-360).
        expected: Option<ProducerIdAndEpoch>,
    },
    AddPartitions {
        request: RequestId,
        transactional_id: String,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
    },
    /// KIP-890: a partition leader asks whether these partitions are in
    /// the producer's Ongoing transaction (changes nothing).
    VerifyPartitions {
        request: RequestId,
        transactional_id: String,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
    },
    /// `offsets_partition`: the group's `__consumer_offsets` partition.
    AddOffsets {
        request: RequestId,
        transactional_id: String,
        producer: ProducerIdAndEpoch,
        offsets_partition: i32,
    },
    EndTxn {
        request: RequestId,
        transactional_id: String,
        producer: ProducerIdAndEpoch,
        commit: bool,
    },
    /// The records of `log_partition` below `below_offset` are durable.
    LogDurable {
        log_partition: i32,
        below_offset: i64,
    },
    /// An append to `log_partition` failed; what is in flight there is in
    /// doubt. `not_leader`: leadership went (NOT_COORDINATOR), else the
    /// log could not take it now (COORDINATOR_NOT_AVAILABLE).
    AppendFailed {
        log_partition: i32,
        not_leader: bool,
    },
    /// Every partition of the transaction took the marker sent for
    /// `producer` under `coordinator_epoch`.
    MarkersWritten {
        transactional_id: String,
        producer: ProducerIdAndEpoch,
        coordinator_epoch: i32,
    },
    /// This node leads `log_partition` at `coordinator_epoch` (its leader
    /// epoch); `records` are what its log holds, in order, ending at
    /// `end_offset`.
    Load {
        log_partition: i32,
        coordinator_epoch: i32,
        records: Vec<StoredRecord>,
        end_offset: i64,
        /// Partitions that may have lost batches answered before they were
        /// durable (`transaction.durable.at.commit`): an unclean stop.
        lost_writes: Option<LostWrites>,
    },
    /// This node no longer leads `log_partition`.
    Unload { log_partition: i32 },
    /// A block of producer ids `[first, first + count)` reserved for this
    /// node.
    ProducerIds { first: i64, count: u64 },
}

/// Markers for every partition of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerRequest {
    pub transactional_id: String,
    pub producer: ProducerIdAndEpoch,
    pub result: ControlType,
    pub coordinator_epoch: i32,
    pub partitions: Vec<TopicPartition>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    InitProducerId(Result<ProducerIdAndEpoch, TxnError>),
    /// One error for every partition of the request (as Kafka answers).
    AddPartitions(Result<(), TxnError>),
    /// Per partition: `None` when it is in the Ongoing transaction.
    VerifyPartitions(Result<Vec<(TopicPartition, Option<TxnError>)>, TxnError>),
    AddOffsets(Result<(), TxnError>),
    EndTxn(Result<(), TxnError>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Append `record` to `__transaction_state` partition `log_partition`;
    /// it lands at `offset`.
    Append {
        log_partition: i32,
        offset: i64,
        record: TxnLogRecord,
    },
    SendMarkers(MarkerRequest),
    Answer {
        request: RequestId,
        response: Response,
    },
    /// Reserve another producer-id block and give it back with
    /// [`Input::ProducerIds`].
    RequestProducerIds,
}

/// An input the coordinator could not take (a driver bug); it is
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("load of partition {log_partition} at epoch {epoch} below the loaded {loaded}")]
    StaleLoad {
        log_partition: i32,
        epoch: i32,
        loaded: i32,
    },
    #[error("durable offset {below_offset} beyond the appends ({next_offset})")]
    DurableBeyondAppends { below_offset: i64, next_offset: i64 },
}

/// What a load made of a partition's records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadStats {
    pub transactional_ids: usize,
    pub markers_resent: usize,
    /// Ongoing transactions aborted because their data may be lost
    /// ([`LostWrites`]).
    pub aborted_lost: usize,
    /// Records that did not decode or hold a state never written (skipped).
    pub malformed: usize,
}

/// What an unclean stop of a single node may have lost: the batches of
/// `partitions` answered once written but not yet durable
/// (`transaction.durable.at.commit`). An Ongoing transaction that began
/// before the node started (`began_before_ms`) and holds one of them is
/// aborted at load with the epoch bumped, as a timed-out one: committing
/// it could commit a transaction with records missing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LostWrites {
    pub partitions: std::collections::BTreeSet<TopicPartition>,
    pub began_before_ms: i64,
}

/// Kafka's `partitionFor`: `abs(transactionalId.hashCode) % partitions`,
/// with Java's `String.hashCode` over UTF-16 units, so ids land where
/// Kafka puts them.
pub fn log_partition_for(transactional_id: &str, log_partitions: i32) -> i32 {
    let mut hash: i32 = 0;
    for unit in transactional_id.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    // Kafka's Utils.abs maps MIN_VALUE to 0.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % log_partitions.max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// A record is in flight.
    Append,
    /// The Prepare* record is durable; markers are being written.
    Markers,
}

#[derive(Debug)]
struct TxnEntry {
    log_partition: i32,
    /// What is durable (or, for an id never written, what it starts as).
    metadata: TxnMetadata,
    pending: Pending,
    /// Appends of this id not durable yet (more than one only when a
    /// transaction was chained behind a completion).
    appends_in_flight: u32,
    /// The in-flight Complete* state the next transaction may chain on
    /// (`Some` only while that is the id's one append in flight).
    completing: Option<TxnMetadata>,
}

impl TxnEntry {
    fn new(log_partition: i32, metadata: TxnMetadata, pending: Pending) -> Self {
        Self {
            log_partition,
            metadata,
            pending,
            appends_in_flight: 0,
            completing: None,
        }
    }

    /// The state a new transaction is checked against: the durable one, or
    /// the completion in flight it may chain behind.
    fn settled_or_completing(&self) -> Option<&TxnMetadata> {
        match (&self.completing, self.pending) {
            (Some(completing), _) => Some(completing),
            (None, Pending::None) => Some(&self.metadata),
            (None, _) => None,
        }
    }
}

/// An append whose record is not durable yet.
#[derive(Debug)]
struct InFlight {
    offset: i64,
    transactional_id: String,
    /// `None`: a tombstone (the id goes).
    target: Option<TxnMetadata>,
    answer: Option<(RequestId, Response)>,
    send_markers: bool,
}

#[derive(Debug)]
struct LogPartition {
    coordinator_epoch: i32,
    next_offset: i64,
    in_flight: VecDeque<InFlight>,
}

/// The coordinator of every `transactional.id` whose log partition this
/// node leads. Lives on the shard that leads those partitions; not shared.
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    now_ms: i64,
    partitions: BTreeMap<i32, LogPartition>,
    entries: BTreeMap<String, TxnEntry>,
    /// Producer-id blocks: `[next, end)` each.
    producer_ids: VecDeque<(i64, i64)>,
    producer_ids_requested: bool,
    last_load: LoadStats,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig, now_ms: i64) -> Self {
        Self {
            config,
            now_ms,
            partitions: BTreeMap::new(),
            entries: BTreeMap::new(),
            producer_ids: VecDeque::new(),
            producer_ids_requested: false,
            last_load: LoadStats::default(),
        }
    }

    /// What the last [`Input::Load`] made of its records (for the log).
    pub fn last_load(&self) -> &LoadStats {
        &self.last_load
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    /// The visible (durable) metadata of an id.
    pub fn metadata(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.entries
            .get(transactional_id)
            .map(|entry| &entry.metadata)
    }

    /// Ids held, with their visible metadata (for Describe/ListTransactions).
    pub fn transactions(&self) -> impl Iterator<Item = (&str, &TxnMetadata)> {
        self.entries
            .iter()
            .map(|(id, entry)| (id.as_str(), &entry.metadata))
    }

    /// The coordinator epoch of a led partition.
    pub fn coordinator_epoch(&self, log_partition: i32) -> Option<i32> {
        self.partitions
            .get(&log_partition)
            .map(|partition| partition.coordinator_epoch)
    }

    /// The earliest time a tick has something to do.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.entries
            .values()
            .filter(|entry| entry.pending == Pending::None)
            .filter_map(|entry| self.deadline_of(&entry.metadata))
            .min()
    }

    fn deadline_of(&self, metadata: &TxnMetadata) -> Option<i64> {
        match metadata.state {
            // Kafka aborts once start + timeout < now.
            TxnState::Ongoing => Some(
                metadata
                    .start_timestamp_ms
                    .saturating_add(i64::from(metadata.timeout_ms))
                    .saturating_add(1),
            ),
            state if state.is_at_rest() => Some(
                metadata
                    .last_update_timestamp_ms
                    .saturating_add(self.config.id_expiration_ms),
            ),
            _ => None,
        }
    }

    /// Takes one input; pushes the effects to carry out onto `out`.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Effect>) -> Result<(), InputError> {
        match input {
            Input::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.run_timers(out);
            }
            Input::InitProducerId {
                request,
                transactional_id,
                timeout_ms,
                expected,
            } => {
                let result =
                    self.init_producer_id(request, transactional_id, timeout_ms, expected, out);
                if let Some(result) = result {
                    answer(out, request, Response::InitProducerId(result));
                }
            }
            Input::AddPartitions {
                request,
                transactional_id,
                producer,
                partitions,
            } => {
                if let Some(result) = self.add_partitions(
                    request,
                    &transactional_id,
                    producer,
                    partitions,
                    false,
                    out,
                ) {
                    answer(out, request, Response::AddPartitions(result));
                }
            }
            Input::AddOffsets {
                request,
                transactional_id,
                producer,
                offsets_partition,
            } => {
                let partitions = vec![TopicPartition::new(
                    CONSUMER_OFFSETS_TOPIC,
                    offsets_partition,
                )];
                if let Some(result) =
                    self.add_partitions(request, &transactional_id, producer, partitions, true, out)
                {
                    answer(out, request, Response::AddOffsets(result));
                }
            }
            Input::VerifyPartitions {
                request,
                transactional_id,
                producer,
                partitions,
            } => {
                let result = self.verify_partitions(&transactional_id, producer, partitions);
                answer(out, request, Response::VerifyPartitions(result));
            }
            Input::EndTxn {
                request,
                transactional_id,
                producer,
                commit,
            } => {
                if let Some(result) =
                    self.end_txn(request, &transactional_id, producer, commit, out)
                {
                    answer(out, request, Response::EndTxn(result));
                }
            }
            Input::LogDurable {
                log_partition,
                below_offset,
            } => self.on_durable(log_partition, below_offset, out)?,
            Input::AppendFailed {
                log_partition,
                not_leader,
            } => {
                let error = if not_leader {
                    TxnError::NotCoordinator
                } else {
                    TxnError::CoordinatorNotAvailable
                };
                self.unload(log_partition, error, out);
            }
            Input::MarkersWritten {
                transactional_id,
                producer,
                coordinator_epoch,
            } => self.on_markers_written(&transactional_id, producer, coordinator_epoch, out),
            Input::Load {
                log_partition,
                coordinator_epoch,
                records,
                end_offset,
                lost_writes,
            } => {
                self.last_load =
                    self.load(log_partition, coordinator_epoch, records, end_offset, out)?;
                if let Some(lost) = lost_writes {
                    self.last_load.aborted_lost = self.abort_lost(log_partition, &lost, out);
                }
            }
            Input::Unload { log_partition } => {
                self.unload(log_partition, TxnError::NotCoordinator, out)
            }
            Input::ProducerIds { first, count } => {
                let end = first.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
                if end > first {
                    self.producer_ids.push_back((first, end));
                }
                self.producer_ids_requested = false;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ requests

    /// The led partition of `transactional_id`, or why it cannot be served.
    fn check_ownership(&self, transactional_id: &str) -> Result<i32, TxnError> {
        if transactional_id.is_empty()
            || transactional_id.len() > self.config.max_transactional_id_bytes
        {
            return Err(TxnError::InvalidRequest);
        }
        let log_partition = log_partition_for(transactional_id, self.config.log_partitions);
        if !self.partitions.contains_key(&log_partition) {
            return Err(TxnError::NotCoordinator);
        }
        Ok(log_partition)
    }

    /// `None` when the answer comes later (after an append).
    fn init_producer_id(
        &mut self,
        request: RequestId,
        transactional_id: Option<String>,
        timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
        out: &mut Vec<Effect>,
    ) -> Option<Result<ProducerIdAndEpoch, TxnError>> {
        let Some(transactional_id) = transactional_id else {
            // An idempotent producer: a fresh id, epoch 0, nothing stored.
            return Some(
                self.take_producer_id(out)
                    .map(|producer_id| ProducerIdAndEpoch {
                        producer_id,
                        epoch: 0,
                    })
                    .ok_or(TxnError::CoordinatorLoadInProgress),
            );
        };
        let log_partition = match self.check_ownership(&transactional_id) {
            Ok(partition) => partition,
            Err(error) => return Some(Err(error)),
        };
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Some(Err(TxnError::InvalidTransactionTimeout));
        }
        if !self.entries.contains_key(&transactional_id) {
            if self.entries.len() >= self.config.max_transactional_ids {
                return Some(Err(TxnError::CoordinatorNotAvailable));
            }
            // Kafka answers COORDINATOR_LOAD_IN_PROGRESS while its id block
            // is being fetched; the client retries.
            let Some(producer_id) = self.take_producer_id(out) else {
                return Some(Err(TxnError::CoordinatorLoadInProgress));
            };
            let metadata = TxnMetadata::fresh(producer_id, timeout_ms, self.now_ms);
            self.entries.insert(
                transactional_id.clone(),
                TxnEntry::new(log_partition, metadata, Pending::None),
            );
        }
        let Some(entry) = self.entries.get(&transactional_id) else {
            return Some(Err(TxnError::CoordinatorNotAvailable));
        };
        if entry.pending != Pending::None {
            return Some(Err(TxnError::ConcurrentTransactions));
        }
        let current = &entry.metadata;
        if let Some(expected) = expected {
            if !expected_producer_is_valid(current, expected) {
                return Some(Err(TxnError::ProducerFenced));
            }
        }
        match current.state {
            TxnState::Ongoing => {
                // Abort it first with the epoch bumped (that epoch is never
                // returned): the client retries and gets the next one.
                let target = fenced_abort(current, self.now_ms);
                let answer = (
                    request,
                    Response::InitProducerId(Err(TxnError::ConcurrentTransactions)),
                );
                self.append(&transactional_id, Some(target), Some(answer), true, out);
                None
            }
            state if state.is_at_rest() => {
                let exhausted = TxnMetadata::epoch_exhausted(current.producer_epoch)
                    && expected.is_none_or(|e| e.epoch == current.producer_epoch);
                let target = if exhausted {
                    let current = current.clone();
                    let producer_id = match self.take_producer_id(out) {
                        Some(id) => id,
                        None => return Some(Err(TxnError::CoordinatorLoadInProgress)),
                    };
                    rotate_producer_id(&current, producer_id, timeout_ms, expected, self.now_ms)
                } else {
                    match bump_epoch(current, timeout_ms, expected, self.now_ms) {
                        Ok(target) => target,
                        Err(error) => return Some(Err(error)),
                    }
                };
                let result = ProducerIdAndEpoch {
                    producer_id: target.producer_id,
                    epoch: target.producer_epoch,
                };
                let answer = (request, Response::InitProducerId(Ok(result)));
                self.append(&transactional_id, Some(target), Some(answer), false, out);
                None
            }
            // PrepareCommit/PrepareAbort (and the never-stored states).
            _ => Some(Err(TxnError::ConcurrentTransactions)),
        }
    }

    /// The checks every request of a producer passes first; gives the
    /// state to act on. `may_chain`: the request may be chained behind a
    /// completion in flight (the state given is then that completion's).
    fn check_producer(
        &self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        may_chain: bool,
    ) -> Result<&TxnMetadata, TxnError> {
        self.check_ownership(transactional_id)?;
        let entry = self
            .entries
            .get(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        // A completion keeps the producer id and epoch.
        if entry.metadata.producer_id != producer.producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if entry.metadata.producer_epoch != producer.epoch {
            return Err(TxnError::ProducerFenced);
        }
        let current = if may_chain {
            entry.settled_or_completing()
        } else {
            (entry.pending == Pending::None).then_some(&entry.metadata)
        };
        match current {
            Some(current) if !current.state.is_preparing() => Ok(current),
            _ => Err(TxnError::ConcurrentTransactions),
        }
    }

    fn add_partitions(
        &mut self,
        request: RequestId,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
        offsets: bool,
        out: &mut Vec<Effect>,
    ) -> Option<Result<(), TxnError>> {
        let current = match self.check_producer(transactional_id, producer, true) {
            Ok(current) => current,
            Err(error) => return Some(Err(error)),
        };
        if current.state == TxnState::Ongoing
            && partitions.iter().all(|p| current.partitions.contains(p))
        {
            return Some(Ok(()));
        }
        if !(current.state == TxnState::Ongoing || current.state.is_at_rest()) {
            return Some(Err(TxnError::InvalidTxnState));
        }
        let mut target = current.clone();
        if target.state != TxnState::Ongoing {
            target.start_timestamp_ms = self.now_ms;
        }
        target.state = TxnState::Ongoing;
        target.partitions.extend(partitions);
        if target.partitions.len() > self.config.max_partitions_per_txn {
            return Some(Err(TxnError::InvalidRequest));
        }
        target.last_update_timestamp_ms = self.now_ms;
        let response = if offsets {
            Response::AddOffsets(Ok(()))
        } else {
            Response::AddPartitions(Ok(()))
        };
        self.append(
            transactional_id,
            Some(target),
            Some((request, response)),
            false,
            out,
        );
        None
    }

    fn verify_partitions(
        &self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<(TopicPartition, Option<TxnError>)>, TxnError> {
        let metadata = self.check_producer(transactional_id, producer, false)?;
        Ok(partitions
            .into_iter()
            .map(|partition| {
                let in_txn =
                    metadata.state == TxnState::Ongoing && metadata.partitions.contains(&partition);
                (partition, (!in_txn).then_some(TxnError::InvalidTxnState))
            })
            .collect())
    }

    fn end_txn(
        &mut self,
        request: RequestId,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        commit: bool,
        out: &mut Vec<Effect>,
    ) -> Option<Result<(), TxnError>> {
        if let Err(error) = self.check_ownership(transactional_id) {
            return Some(Err(error));
        }
        let entry = match self.entries.get(transactional_id) {
            Some(entry) => entry,
            None => return Some(Err(TxnError::InvalidProducerIdMapping)),
        };
        let current = &entry.metadata;
        if current.producer_id != producer.producer_id {
            return Some(Err(TxnError::InvalidProducerIdMapping));
        }
        // Strict equality: a client never bumps its own epoch.
        if current.producer_epoch != producer.epoch {
            return Some(Err(TxnError::ProducerFenced));
        }
        if entry.pending != Pending::None {
            return Some(Err(TxnError::ConcurrentTransactions));
        }
        let result = match (current.state, commit) {
            (TxnState::Ongoing, _) => {
                let mut target = current.clone();
                target.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                target.last_update_timestamp_ms = self.now_ms;
                let answer = (request, Response::EndTxn(Ok(())));
                self.append(transactional_id, Some(target), Some(answer), true, out);
                return None;
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            _ => Err(TxnError::InvalidTxnState),
        };
        Some(result)
    }

    // ------------------------------------------------------------ appends

    /// Appends the record of `target` (or a tombstone) for `transactional_id`;
    /// `answer` and the markers follow once it is durable.
    fn append(
        &mut self,
        transactional_id: &str,
        target: Option<TxnMetadata>,
        answer: Option<(RequestId, Response)>,
        send_markers: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.entries.get_mut(transactional_id) else {
            return;
        };
        let Some(partition) = self.partitions.get_mut(&entry.log_partition) else {
            return;
        };
        debug_assert!(target.as_ref().is_none_or(|t| t
            .state
            .may_follow(entry.completing.as_ref().unwrap_or(&entry.metadata).state)));
        let record = match &target {
            Some(metadata) => {
                records::encode(transactional_id, metadata, self.config.log_value_version)
            }
            None => records::tombstone(transactional_id),
        };
        let offset = partition.next_offset;
        partition.next_offset += 1;
        entry.pending = Pending::Append;
        entry.appends_in_flight += 1;
        // Complete* records come only from the markers' report: nobody
        // waits for them and they send nothing.
        entry.completing = match &target {
            Some(target)
                if matches!(
                    target.state,
                    TxnState::CompleteCommit | TxnState::CompleteAbort
                ) && entry.appends_in_flight == 1 =>
            {
                Some(target.clone())
            }
            _ => None,
        };
        partition.in_flight.push_back(InFlight {
            offset,
            transactional_id: transactional_id.to_string(),
            target,
            answer,
            send_markers,
        });
        out.push(Effect::Append {
            log_partition: entry.log_partition,
            offset,
            record,
        });
    }

    fn on_durable(
        &mut self,
        log_partition: i32,
        below_offset: i64,
        out: &mut Vec<Effect>,
    ) -> Result<(), InputError> {
        let Some(partition) = self.partitions.get_mut(&log_partition) else {
            return Ok(()); // a partition unloaded meanwhile
        };
        if below_offset > partition.next_offset {
            return Err(InputError::DurableBeyondAppends {
                below_offset,
                next_offset: partition.next_offset,
            });
        }
        let coordinator_epoch = partition.coordinator_epoch;
        while partition
            .in_flight
            .front()
            .is_some_and(|append| append.offset < below_offset)
        {
            let Some(append) = partition.in_flight.pop_front() else {
                break;
            };
            let Some(target) = append.target else {
                self.entries.remove(&append.transactional_id);
                continue;
            };
            let Some(entry) = self.entries.get_mut(&append.transactional_id) else {
                continue;
            };
            entry.metadata = target;
            entry.appends_in_flight = entry.appends_in_flight.saturating_sub(1);
            if entry.appends_in_flight == 0 {
                entry.completing = None;
                entry.pending = if append.send_markers {
                    Pending::Markers
                } else {
                    Pending::None
                };
            }
            if let Some((request, response)) = append.answer {
                answer(out, request, response);
            }
            if append.send_markers {
                out.push(Effect::SendMarkers(marker_request(
                    &append.transactional_id,
                    &entry.metadata,
                    coordinator_epoch,
                )));
            }
        }
        Ok(())
    }

    fn on_markers_written(
        &mut self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        coordinator_epoch: i32,
        out: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.entries.get(transactional_id) else {
            return;
        };
        let current = &entry.metadata;
        let expected_epoch = self.coordinator_epoch(entry.log_partition);
        let is_current = entry.pending == Pending::Markers
            && current.state.is_preparing()
            && current.producer_id == producer.producer_id
            && current.producer_epoch == producer.epoch
            && expected_epoch == Some(coordinator_epoch);
        if !is_current {
            return; // a report from before a failover or a duplicate
        }
        let mut target = current.clone();
        target.state = if current.state == TxnState::PrepareCommit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        target.partitions.clear();
        target.last_update_timestamp_ms = self.now_ms;
        self.append(transactional_id, Some(target), None, false, out);
    }

    // ------------------------------------------------------------ timers

    fn run_timers(&mut self, out: &mut Vec<Effect>) {
        let now = self.now_ms;
        let due: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.pending == Pending::None)
            .filter(|(_, entry)| self.deadline_of(&entry.metadata).is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for transactional_id in due {
            let Some(entry) = self.entries.get(&transactional_id) else {
                continue;
            };
            if entry.metadata.state == TxnState::Ongoing {
                // Timed out: abort with the epoch bumped, so the hung
                // producer is fenced wherever the marker lands.
                let target = fenced_abort(&entry.metadata, now);
                self.append(&transactional_id, Some(target), None, true, out);
            } else {
                self.append(&transactional_id, None, None, false, out);
            }
        }
        if self.producer_ids_left() < self.config.producer_ids_low_water {
            self.request_producer_ids(out);
        }
    }

    // ------------------------------------------------------------ producer ids

    fn producer_ids_left(&self) -> u64 {
        self.producer_ids
            .iter()
            .map(|(next, end)| (end - next) as u64)
            .sum()
    }

    fn request_producer_ids(&mut self, out: &mut Vec<Effect>) {
        if !self.producer_ids_requested {
            self.producer_ids_requested = true;
            out.push(Effect::RequestProducerIds);
        }
    }

    fn take_producer_id(&mut self, out: &mut Vec<Effect>) -> Option<i64> {
        let taken = loop {
            let Some((next, end)) = self.producer_ids.front_mut() else {
                break None;
            };
            if *next < *end {
                let id = *next;
                *next += 1;
                break Some(id);
            }
            self.producer_ids.pop_front();
        };
        if self.producer_ids_left() < self.config.producer_ids_low_water {
            self.request_producer_ids(out);
        }
        taken
    }

    // ------------------------------------------------------------ leadership

    fn load(
        &mut self,
        log_partition: i32,
        coordinator_epoch: i32,
        records: Vec<StoredRecord>,
        end_offset: i64,
        out: &mut Vec<Effect>,
    ) -> Result<LoadStats, InputError> {
        if let Some(loaded) = self.partitions.get(&log_partition) {
            if loaded.coordinator_epoch > coordinator_epoch {
                return Err(InputError::StaleLoad {
                    log_partition,
                    epoch: coordinator_epoch,
                    loaded: loaded.coordinator_epoch,
                });
            }
        }
        self.unload(log_partition, TxnError::NotCoordinator, out);
        let mut stats = LoadStats::default();
        let mut replayed: BTreeMap<String, TxnMetadata> = BTreeMap::new();
        for record in &records {
            match records::decode(&record.key, record.value.as_deref()) {
                Ok(TxnLogEntry::Metadata {
                    transactional_id,
                    metadata,
                }) if !matches!(metadata.state, TxnState::Dead | TxnState::PrepareEpochFence) => {
                    replayed.insert(transactional_id, metadata);
                }
                Ok(TxnLogEntry::Tombstone { transactional_id }) => {
                    replayed.remove(&transactional_id);
                }
                _ => stats.malformed += 1,
            }
        }
        self.partitions.insert(
            log_partition,
            LogPartition {
                coordinator_epoch,
                next_offset: end_offset,
                in_flight: VecDeque::new(),
            },
        );
        stats.transactional_ids = replayed.len();
        for (transactional_id, metadata) in replayed {
            let pending = if metadata.state.is_preparing() {
                // The markers may not all be written: write them again.
                out.push(Effect::SendMarkers(marker_request(
                    &transactional_id,
                    &metadata,
                    coordinator_epoch,
                )));
                stats.markers_resent += 1;
                Pending::Markers
            } else {
                Pending::None
            };
            self.entries.insert(
                transactional_id,
                TxnEntry::new(log_partition, metadata, pending),
            );
        }
        Ok(stats)
    }

    /// Aborts (epoch bumped) the Ongoing transactions of `log_partition`
    /// that [`LostWrites`] may have cut short; returns how many.
    fn abort_lost(
        &mut self,
        log_partition: i32,
        lost: &LostWrites,
        out: &mut Vec<Effect>,
    ) -> usize {
        let now = self.now_ms;
        let interrupted: Vec<(String, TxnMetadata)> = self
            .entries
            .iter()
            .filter(|(_, entry)| {
                entry.log_partition == log_partition
                    && entry.pending == Pending::None
                    && entry.metadata.state == TxnState::Ongoing
                    && entry.metadata.start_timestamp_ms < lost.began_before_ms
                    && !entry.metadata.partitions.is_disjoint(&lost.partitions)
            })
            .map(|(id, entry)| (id.clone(), fenced_abort(&entry.metadata, now)))
            .collect();
        for (transactional_id, target) in &interrupted {
            self.append(transactional_id, Some(target.clone()), None, true, out);
        }
        interrupted.len()
    }

    /// Drops a partition's state, answering what waited with `error`.
    fn unload(&mut self, log_partition: i32, error: TxnError, out: &mut Vec<Effect>) {
        if let Some(partition) = self.partitions.remove(&log_partition) {
            for append in partition.in_flight {
                if let Some((request, response)) = append.answer {
                    answer(out, request, response_with_error(&response, error));
                }
            }
        }
        self.entries
            .retain(|_, entry| entry.log_partition != log_partition);
    }
}

fn answer(out: &mut Vec<Effect>, request: RequestId, response: Response) {
    out.push(Effect::Answer { request, response });
}

/// The same kind of response, failed with `error`.
fn response_with_error(response: &Response, error: TxnError) -> Response {
    match response {
        Response::InitProducerId(_) => Response::InitProducerId(Err(error)),
        Response::AddPartitions(_) => Response::AddPartitions(Err(error)),
        Response::VerifyPartitions(_) => Response::VerifyPartitions(Err(error)),
        Response::AddOffsets(_) => Response::AddOffsets(Err(error)),
        Response::EndTxn(_) => Response::EndTxn(Err(error)),
    }
}

fn marker_request(
    transactional_id: &str,
    metadata: &TxnMetadata,
    coordinator_epoch: i32,
) -> MarkerRequest {
    MarkerRequest {
        transactional_id: transactional_id.to_string(),
        producer: ProducerIdAndEpoch {
            producer_id: metadata.producer_id,
            epoch: metadata.producer_epoch,
        },
        result: if metadata.state == TxnState::PrepareCommit {
            ControlType::Commit
        } else {
            ControlType::Abort
        },
        coordinator_epoch,
        partitions: metadata.partitions.iter().cloned().collect(),
    }
}

/// KIP-360: whether a producer recovering with its own id/epoch may
/// continue. Yes when the id was never initialised, when it names the
/// current producer id (its epoch is checked by the bump), or when it
/// names the previous producer id at an exhausted epoch (a retry of the
/// rotation whose answer was lost).
fn expected_producer_is_valid(current: &TxnMetadata, expected: ProducerIdAndEpoch) -> bool {
    current.producer_epoch == NO_PRODUCER_EPOCH
        || expected.producer_id == current.producer_id
        || (expected.producer_id == current.last_producer_id
            && TxnMetadata::epoch_exhausted(expected.epoch))
}

/// PrepareAbort of an Ongoing transaction with the epoch bumped (Kafka's
/// PrepareEpochFence followed by the abort, written as one record).
fn fenced_abort(current: &TxnMetadata, now_ms: i64) -> TxnMetadata {
    let mut target = current.clone();
    target.producer_epoch = current.producer_epoch.saturating_add(1);
    target.last_producer_epoch = NO_PRODUCER_EPOCH;
    target.state = TxnState::PrepareAbort;
    target.last_update_timestamp_ms = now_ms;
    target
}

/// InitProducerId at rest, epoch not exhausted (Kafka's
/// `prepareIncrementProducerEpoch`).
fn bump_epoch(
    current: &TxnMetadata,
    timeout_ms: i32,
    expected: Option<ProducerIdAndEpoch>,
    now_ms: i64,
) -> Result<TxnMetadata, TxnError> {
    let mut target = current.clone();
    let bumped = current.producer_epoch.saturating_add(1);
    match expected {
        None => {
            target.producer_epoch = bumped;
            target.last_producer_epoch = NO_PRODUCER_EPOCH;
        }
        Some(expected)
            if current.producer_epoch == NO_PRODUCER_EPOCH
                || expected.epoch == current.producer_epoch =>
        {
            target.producer_epoch = bumped;
            target.last_producer_epoch = current.producer_epoch;
        }
        // A retry of a bump whose answer was lost: the same answer again.
        Some(expected) if expected.epoch == current.last_producer_epoch => {}
        Some(_) => return Err(TxnError::ProducerFenced),
    }
    target.timeout_ms = timeout_ms;
    target.state = TxnState::Empty;
    target.partitions.clear();
    target.start_timestamp_ms = -1;
    target.last_update_timestamp_ms = now_ms;
    Ok(target)
}

/// InitProducerId once the epochs are used up: a new producer id at epoch
/// 0 (Kafka's `prepareProducerIdRotation`).
fn rotate_producer_id(
    current: &TxnMetadata,
    producer_id: i64,
    timeout_ms: i32,
    expected: Option<ProducerIdAndEpoch>,
    now_ms: i64,
) -> TxnMetadata {
    TxnMetadata {
        producer_id,
        last_producer_id: current.producer_id,
        producer_epoch: 0,
        last_producer_epoch: if expected.is_some() {
            current.producer_epoch
        } else {
            NO_PRODUCER_EPOCH
        },
        timeout_ms,
        state: TxnState::Empty,
        partitions: Default::default(),
        start_timestamp_ms: -1,
        last_update_timestamp_ms: now_ms,
    }
}
