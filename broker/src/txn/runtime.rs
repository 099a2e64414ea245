//! The transaction-coordinator runtime around the pure [`TxnCoordinator`]:
//! each shard's [`TxnShard`], routing a `transactional.id` to its
//! coordinator shard, parking requests until the coordinator answers them,
//! and carrying out its [`Effect`]s per its driver's contract
//! (`coordinator.rs`): records appended to `__transaction_state` in order
//! with `acks=all` ([`Input::LogDurable`] once committed), markers sent until
//! every partition took them, producer-id blocks from the node's allocator,
//! partitions loaded when this node leads them and unloaded when it stops,
//! and the timer that aborts timed-out transactions and expires ids.
//!
//! `transactional.id` `t` is coordinated by the shard that owns partition
//! [`log_partition_for`]`(t, transaction.state.log.num.partitions)` of
//! `__transaction_state` on the node leading it; that partition's leader
//! epoch is the coordinator epoch. Everything here lives on that shard;
//! other shards only forward requests to it ([`on_txn_coordinator`]).
//!
//! Invariants: appends of one partition reach the log in the order the
//! coordinator emitted them, each at the offset it named (a different
//! offset means someone else wrote: the partition is reloaded), and an
//! append queued before an unload or a failed append is never written
//! (its generation is gone).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use kafki_net::kafka_protocol::error::ResponseError;

use super::coordinator::{log_partition_for, LoadStats};
use super::records::TxnLogRecord;
use super::{
    Effect, Input, MarkerRequest, RequestId, Response, StoredRecord, TxnConfig, TxnCoordinator,
    TxnError,
};
use crate::internal_topics::{capped_at_live_nodes, ensure_internal_topic};
use crate::partition::Acks;
use crate::shard::Shard;

pub const TXN_TOPIC: &str = "__transaction_state";

/// How long one append to `__transaction_state` may wait for `acks=all`
/// before the coordinator gives up on it (and reloads the partition).
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause of the per-shard transaction timer.
const TICK_MAX: Duration = Duration::from_millis(100);

/// How often the timer looks for led partitions not loaded yet (a
/// failover made this node their leader): their Prepare* transactions
/// need their markers sent again even if no client asks.
const LOAD_SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// Producer ids asked for at once from the node's allocator.
const PRODUCER_ID_BLOCK: u64 = 100;

/// Marker retries back off from the first to the last pause.
const MARKER_RETRY_FIRST: Duration = Duration::from_millis(20);
const MARKER_RETRY_MAX: Duration = Duration::from_secs(1);

/// How long AddPartitionsToTxn and AddOffsetsToTxn wait for the previous
/// transaction of their id to complete before answering
/// CONCURRENT_TRANSACTIONS. The Java client retries that answer only after
/// 20 ms, while a commit's markers and CompleteCommit usually land within
/// a millisecond of the EndTxn answer: a producer committing back to back
/// lost a fifth of its time to that backoff.
const CONCURRENT_WAIT: Duration = Duration::from_millis(50);

/// Records appended to a partition in one batch at most.
const APPEND_BATCH_RECORDS_MAX: usize = 500;

/// One coordinator record waiting for its turn to be appended.
struct QueuedAppend {
    log_partition: i32,
    offset: i64,
    record: TxnLogRecord,
    /// The load it belongs to ([`Loaded::generation`]).
    generation: u64,
}

/// A `__transaction_state` partition replayed into the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    /// The leader epoch it was loaded at (the coordinator epoch).
    leader_epoch: i32,
    /// Distinguishes loads of the same partition: appends of an earlier
    /// one are dropped.
    generation: u64,
}

/// The per-shard transaction state: the coordinator of the
/// `__transaction_state` partitions this shard owns and this node leads,
/// and the requests waiting for it. Lives on every shard; holds ids only
/// on the shards owning led partitions.
pub struct TxnShard {
    coordinator: RefCell<TxnCoordinator>,
    waiters: RefCell<HashMap<RequestId, oneshot::Sender<Response>>>,
    next_request: Cell<RequestId>,
    loaded: RefCell<BTreeMap<i32, Loaded>>,
    next_generation: Cell<u64>,
    /// One load at a time, so a request never sees a half-loaded partition.
    load_lock: glommio::sync::Semaphore,
    appends: mpsc::UnboundedSender<QueuedAppend>,
    /// Taken by the appender task when it starts (on first use).
    append_queue: RefCell<Option<mpsc::UnboundedReceiver<QueuedAppend>>>,
    /// Requests waiting for a transaction to move on (CONCURRENT_WAIT),
    /// woken whenever an append or a marker write completes.
    progress_waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl TxnShard {
    pub fn new(config: &crate::config::BrokerConfig) -> Self {
        let settings = &config.settings;
        let txn_config = TxnConfig {
            log_partitions: settings.transaction_state_partitions,
            max_timeout_ms: settings.transaction_max_timeout_ms,
            id_expiration_ms: settings.transactional_id_expiration_ms,
            ..TxnConfig::default()
        };
        let (appends, append_queue) = mpsc::unbounded();
        Self {
            coordinator: RefCell::new(TxnCoordinator::new(txn_config, crate::clock::now_ms())),
            waiters: RefCell::new(HashMap::new()),
            next_request: Cell::new(1),
            loaded: RefCell::new(BTreeMap::new()),
            next_generation: Cell::new(1),
            load_lock: glommio::sync::Semaphore::new(1),
            appends,
            append_queue: RefCell::new(Some(append_queue)),
            progress_waiters: RefCell::new(Vec::new()),
        }
    }

    /// Reads the coordinator (Describe/ListTransactions); never across an
    /// await.
    pub fn with_coordinator<R>(&self, read: impl FnOnce(&TxnCoordinator) -> R) -> R {
        read(&self.coordinator.borrow())
    }

    /// The `__transaction_state` partitions loaded here.
    pub fn loaded_partitions(&self) -> Vec<i32> {
        self.loaded.borrow().keys().copied().collect()
    }
}

pub fn log_partitions(shard: &Shard) -> i32 {
    shard.config.settings.transaction_state_partitions
}

/// The `__transaction_state` partition of `transactional_id`.
pub fn txn_partition_for(shard: &Shard, transactional_id: &str) -> i32 {
    log_partition_for(transactional_id, log_partitions(shard))
}

/// Creates `__transaction_state` if it does not exist yet (compacted, as
/// Kafka's). `Err` is the code to answer.
pub async fn ensure_txn_topic(shard: &Rc<Shard>) -> Result<(), i16> {
    let replication_factor =
        capped_at_live_nodes(shard, "transaction.state.log.replication.factor", 3);
    let min_isr =
        capped_at_live_nodes(shard, "transaction.state.log.min.isr", 2).min(replication_factor);
    let segment_bytes = shard.config.settings.transaction_state_segment_bytes;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
        ("min.insync.replicas".to_string(), min_isr.to_string()),
    ]);
    ensure_internal_topic(
        shard,
        TXN_TOPIC,
        log_partitions(shard),
        replication_factor,
        configs,
    )
    .await
}

/// Whether a transaction's data is made durable by its commit rather than
/// by each produce (`transaction.durable.at.commit`, single node only: the
/// coordinator and every partition stop together, so an unclean stop can be
/// told to the coordinator at its next load, [`LostWrites`]).
pub fn durable_at_commit(config: &crate::config::BrokerConfig) -> bool {
    config.cluster.is_none() && config.settings.transaction_durable_at_commit
}

/// How long EndTxn(commit) waits for its transaction's data to become
/// durable before it answers a retriable error.
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(5);

/// Before EndTxn(commit) with [`durable_at_commit`]: waits until every
/// partition of `producer`'s Ongoing transaction is durable up to its log
/// end (its batches were answered once written). Nothing to do when the
/// transaction is not Ongoing under that producer: the coordinator answers
/// the EndTxn itself (a retry, a fence). A partition gone meanwhile holds
/// nothing to commit. A failed or slow log answers
/// COORDINATOR_NOT_AVAILABLE: the client retries, and the commit is never
/// recorded over data that is not durable.
pub async fn make_txn_data_durable(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer: super::ProducerIdAndEpoch,
) -> Result<(), TxnError> {
    let id = transactional_id.to_string();
    let partitions = inspect_txn_coordinator(shard, transactional_id, move |coordinator| {
        coordinator
            .metadata(&id)
            .filter(|metadata| {
                metadata.state == super::TxnState::Ongoing
                    && metadata.producer_id == producer.producer_id
                    && metadata.producer_epoch == producer.epoch
            })
            .map(|metadata| metadata.partitions.clone())
    })
    .await?;
    let Some(partitions) = partitions else {
        return Ok(());
    };
    let mut by_owner: BTreeMap<usize, Vec<super::TopicPartition>> = BTreeMap::new();
    for partition in partitions {
        by_owner
            .entry(shard.owner_of(&partition.topic, partition.partition))
            .or_default()
            .push(partition);
    }
    let waits = by_owner.into_iter().map(|(owner, partitions)| async move {
        shard
            .invoke_on(owner, move |owner| async move {
                let owner = &owner;
                // The partitions sync concurrently; wait for all at once,
                // under one deadline.
                let waits = partitions.into_iter().map(|partition| async move {
                    let Ok(log) = owner.partition(&partition.topic, partition.partition).await
                    else {
                        return Ok(());
                    };
                    let end = log.offsets().log_end_offset;
                    log.wait_committed(end).await.map_err(|error| {
                        tracing::warn!(topic = %partition.topic, partition = partition.partition, %error, "a transaction's data cannot be made durable; its commit is refused for now");
                        TxnError::CoordinatorNotAvailable
                    })
                });
                let durable = std::pin::pin!(futures::future::try_join_all(waits));
                let expired = std::pin::pin!(glommio::timer::sleep(DURABLE_WAIT_MAX));
                match futures::future::select(durable, expired).await {
                    futures::future::Either::Left((outcome, _)) => outcome.map(|_| ()),
                    futures::future::Either::Right(_) => {
                        tracing::warn!(wait_ms = DURABLE_WAIT_MAX.as_millis() as u64, "a transaction's data did not become durable in time; its commit is refused for now");
                        Err(TxnError::CoordinatorNotAvailable)
                    }
                }
            })
            .await
            .unwrap_or(Err(TxnError::CoordinatorNotAvailable))
    });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, TxnError>>()
        .map(|_| ())
}

/// Runs `make`'s input on the coordinator of `transactional_id` (this
/// node must lead its partition, else NOT_COORDINATOR) and waits for the
/// answer.
pub async fn on_txn_coordinator<F>(
    shard: &Rc<Shard>,
    transactional_id: &str,
    make: F,
) -> Result<Response, TxnError>
where
    F: FnOnce(RequestId) -> Input + Send + 'static,
{
    on_coordinator_shard(
        shard,
        transactional_id,
        move |owner, log_partition| async move { call(&owner, log_partition, make).await },
    )
    .await
}

/// [`on_txn_coordinator`] for AddPartitionsToTxn (verifying too) and AddOffsetsToTxn:
/// while the id's previous transaction is still completing (the answer
/// would be CONCURRENT_TRANSACTIONS) the request waits for it, up to
/// [`CONCURRENT_WAIT`], instead of sending the client into its backoff.
pub async fn on_txn_coordinator_when_settled<F>(
    shard: &Rc<Shard>,
    transactional_id: &str,
    make: F,
) -> Result<Response, TxnError>
where
    F: Fn(RequestId) -> Input + Send + 'static,
{
    on_coordinator_shard(
        shard,
        transactional_id,
        move |owner, log_partition| async move {
            let deadline = std::time::Instant::now() + CONCURRENT_WAIT;
            loop {
                // Registered before the call, so progress made while it runs
                // wakes the wait below too.
                let (woken, progress) = oneshot::channel();
                owner.txn.progress_waiters.borrow_mut().push(woken);
                let answer = call(&owner, log_partition, &make).await;
                let concurrent = matches!(
                    answer,
                    Ok(
                        Response::AddPartitions(Err(TxnError::ConcurrentTransactions))
                            | Response::AddOffsets(Err(TxnError::ConcurrentTransactions))
                            | Response::VerifyPartitions(Err(TxnError::ConcurrentTransactions))
                    )
                );
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if !concurrent || left.is_zero() {
                    return answer;
                }
                let timer = std::pin::pin!(glommio::timer::sleep(left));
                futures::future::select(progress, timer).await;
            }
        },
    )
    .await
}

/// Runs `job` on the shard owning the `__transaction_state` partition of
/// `transactional_id`, if this node leads it (else NOT_COORDINATOR).
async fn on_coordinator_shard<R, J, Fut>(
    shard: &Rc<Shard>,
    transactional_id: &str,
    job: J,
) -> Result<R, TxnError>
where
    R: Send + 'static,
    J: FnOnce(Rc<Shard>, i32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, TxnError>> + 'static,
{
    let log_partition = coordinator_partition_here(shard, transactional_id).await?;
    let target = shard.owner_of(TXN_TOPIC, log_partition);
    shard
        .invoke_on(target, move |owner| job(owner, log_partition))
        .await
        .unwrap_or_else(|error| {
            tracing::error!(%error, "transaction coordinator shard unreachable");
            Err(TxnError::CoordinatorNotAvailable)
        })
}

/// KIP-890's check a partition leader makes before it accepts a
/// transaction's first write to a partition: per partition, `None` when it
/// is in `producer`'s Ongoing transaction. For a coordinator on this node;
/// elsewhere the answer is NOT_COORDINATOR (the wire form is
/// AddPartitionsToTxn v4+ with `verify_only`, [`super::verification`]).
/// While the id's previous step is still landing it waits for it, as
/// AddPartitionsToTxn does, rather than failing the produce at once.
pub async fn verify_partitions(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer: super::ProducerIdAndEpoch,
    partitions: Vec<super::TopicPartition>,
) -> Result<Vec<(super::TopicPartition, Option<TxnError>)>, TxnError> {
    let id = transactional_id.to_string();
    let answer = on_txn_coordinator_when_settled(shard, transactional_id, move |request| {
        Input::VerifyPartitions {
            request,
            transactional_id: id.clone(),
            producer,
            partitions: partitions.clone(),
        }
    })
    .await?;
    match answer {
        Response::VerifyPartitions(result) => result,
        _ => Err(TxnError::CoordinatorNotAvailable),
    }
}

/// Reads the coordinator of `transactional_id` once its partition is
/// loaded (DescribeTransactions).
pub async fn inspect_txn_coordinator<R, F>(
    shard: &Rc<Shard>,
    transactional_id: &str,
    read: F,
) -> Result<R, TxnError>
where
    R: Send + 'static,
    F: FnOnce(&TxnCoordinator) -> R + Send + 'static,
{
    on_coordinator_shard(
        shard,
        transactional_id,
        move |owner, log_partition| async move {
            if !ensure_loaded(&owner, log_partition).await {
                return Err(TxnError::CoordinatorLoadInProgress);
            }
            Ok(owner.txn.with_coordinator(read))
        },
    )
    .await
}

/// The partition of `transactional_id` if this node leads it.
async fn coordinator_partition_here(
    shard: &Rc<Shard>,
    transactional_id: &str,
) -> Result<i32, TxnError> {
    if transactional_id.is_empty() || transactional_id.len() > i16::MAX as usize {
        return Err(TxnError::InvalidRequest);
    }
    ensure_txn_topic(shard)
        .await
        .map_err(|_| TxnError::CoordinatorNotAvailable)?;
    let log_partition = txn_partition_for(shard, transactional_id);
    if shard
        .metadata()
        .led_by(TXN_TOPIC, log_partition, shard.config.node_id)
    {
        Ok(log_partition)
    } else {
        Err(TxnError::NotCoordinator)
    }
}

/// On the coordinator shard: parks a request, gives its input to the
/// coordinator and waits for the answer.
async fn call<F>(shard: &Rc<Shard>, log_partition: i32, make: F) -> Result<Response, TxnError>
where
    F: FnOnce(RequestId) -> Input,
{
    if !ensure_loaded(shard, log_partition).await {
        return Err(TxnError::CoordinatorLoadInProgress);
    }
    let request = shard.txn.next_request.get();
    shard.txn.next_request.set(request + 1);
    let (sender, answer) = oneshot::channel();
    shard.txn.waiters.borrow_mut().insert(request, sender);
    apply(shard, make(request));
    // A waiter is answered by the coordinator, or with NOT_COORDINATOR when
    // its partition goes; a dropped sender means the same.
    answer.await.map_err(|_| TxnError::NotCoordinator)
}

/// Gives the coordinator the time, then `input`, and carries out what
/// both produced.
pub(crate) fn apply(shard: &Rc<Shard>, input: Input) {
    let progress = matches!(
        input,
        Input::LogDurable { .. } | Input::AppendFailed { .. } | Input::MarkersWritten { .. }
    );
    let mut effects = Vec::new();
    {
        let mut coordinator = shard.txn.coordinator.borrow_mut();
        let now_ms = crate::clock::now_ms();
        for input in [Input::Tick { now_ms }, input] {
            if let Err(error) = coordinator.handle(input, &mut effects) {
                tracing::error!(%error, "the transaction coordinator refused an input");
            }
        }
    }
    carry_out(shard, effects);
    if progress {
        for waiter in shard.txn.progress_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// Carries out the coordinator's effects, in order, without awaiting:
/// appends are queued for the shard's appender (which keeps their order),
/// answers complete their parked request, markers and producer ids run
/// as tasks of their own.
fn carry_out(shard: &Rc<Shard>, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Append {
                log_partition,
                offset,
                record,
            } => queue_append(shard, log_partition, offset, record),
            Effect::Answer { request, response } => {
                if let Some(waiter) = shard.txn.waiters.borrow_mut().remove(&request) {
                    let _ = waiter.send(response);
                }
            }
            Effect::SendMarkers(request) => {
                glommio::spawn_local(send_markers(shard.clone(), request)).detach();
            }
            Effect::RequestProducerIds => {
                glommio::spawn_local(fetch_producer_ids(shard.clone())).detach();
            }
        }
    }
}

fn queue_append(shard: &Rc<Shard>, log_partition: i32, offset: i64, record: TxnLogRecord) {
    let Some(loaded) = shard.txn.loaded.borrow().get(&log_partition).copied() else {
        return; // unloaded meanwhile: the coordinator dropped it too
    };
    if let Some(queue) = shard.txn.append_queue.borrow_mut().take() {
        glommio::spawn_local(run_appender(shard.clone(), queue)).detach();
    }
    let queued = QueuedAppend {
        log_partition,
        offset,
        record,
        generation: loaded.generation,
    };
    if shard.txn.appends.unbounded_send(queued).is_err() {
        tracing::error!(log_partition, "the transaction appender is gone");
    }
}

/// Appends queued coordinator records, in order; consecutive records of
/// one partition (and load) go in one batch, so concurrent transactions
/// share an fsync.
async fn run_appender(shard: Rc<Shard>, mut queue: mpsc::UnboundedReceiver<QueuedAppend>) {
    let mut carried: Option<QueuedAppend> = None;
    loop {
        let first = match carried.take() {
            Some(append) => append,
            None => match queue.next().await {
                Some(append) => append,
                None => return,
            },
        };
        let (log_partition, generation) = (first.log_partition, first.generation);
        // Let the tasks this append's own step woke run first: a request
        // waiting for the transaction to complete chains its record behind
        // the completion, and both go to disk in one write.
        crate::shard::yield_once().await;
        let mut batch = vec![first];
        while batch.len() < APPEND_BATCH_RECORDS_MAX {
            match queue.try_recv() {
                Ok(next)
                    if next.log_partition == log_partition && next.generation == generation =>
                {
                    batch.push(next)
                }
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        append_batch(&shard, batch).await;
    }
}

/// Appends one batch of records of one partition and reports the outcome.
async fn append_batch(shard: &Rc<Shard>, batch: Vec<QueuedAppend>) {
    let Some(first) = batch.first() else {
        return;
    };
    let (log_partition, generation, first_offset) =
        (first.log_partition, first.generation, first.offset);
    let is_current = |shard: &Shard| {
        shard
            .txn
            .loaded
            .borrow()
            .get(&log_partition)
            .is_some_and(|loaded| loaded.generation == generation)
    };
    if !is_current(shard) {
        return; // its load is gone; the coordinator answered its waiters
    }
    let contiguous = batch
        .iter()
        .enumerate()
        .all(|(index, append)| append.offset == first_offset + index as i64);
    let outcome = if contiguous {
        write_records(shard, log_partition, first_offset, &batch).await
    } else {
        tracing::error!(log_partition, "coordinator appends are not contiguous");
        Err(false)
    };
    if !is_current(shard) {
        return;
    }
    let input = match outcome {
        Ok(below_offset) => Input::LogDurable {
            log_partition,
            below_offset,
        },
        Err(not_leader) => {
            // What is in flight is in doubt: the coordinator answers its
            // waiters, and the partition is loaded again from its log.
            shard.txn.loaded.borrow_mut().remove(&log_partition);
            Input::AppendFailed {
                log_partition,
                not_leader,
            }
        }
    };
    apply(shard, input);
}

/// Writes `batch` at `first_offset` with `acks=all`; the offset below the
/// last record, or `Err(not_leader)`.
async fn write_records(
    shard: &Rc<Shard>,
    log_partition: i32,
    first_offset: i64,
    batch: &[QueuedAppend],
) -> Result<i64, bool> {
    let partition = match shard.partition(TXN_TOPIC, log_partition).await {
        Ok(partition) => partition,
        Err(code) => {
            tracing::warn!(log_partition, code, "transaction log partition unavailable");
            return Err(code == ResponseError::NotLeaderOrFollower.code());
        }
    };
    let log_end = partition.offsets().log_end_offset as i64;
    if log_end != first_offset {
        tracing::error!(
            log_partition,
            log_end,
            first_offset,
            "transaction log moved under the coordinator; reloading it"
        );
        return Err(false);
    }
    let pairs: Vec<crate::records::KeyValueRef<'_>> = batch
        .iter()
        .map(|append| {
            (
                Some(append.record.key.as_ref()),
                append.record.value.as_deref(),
            )
        })
        .collect();
    let bytes = crate::records::build_keyed_batch(&pairs, crate::clock::now_ms());
    match partition
        .append(vec![bytes], Acks::All, Some(APPEND_TIMEOUT))
        .await
    {
        Ok(appended) if appended.base_offset as i64 == first_offset => {
            Ok(first_offset + batch.len() as i64)
        }
        Ok(appended) => {
            tracing::error!(
                log_partition,
                base_offset = appended.base_offset,
                first_offset,
                "transaction records landed elsewhere than planned; reloading"
            );
            Err(false)
        }
        Err(refused) => {
            tracing::warn!(log_partition, error = %refused.error, "transaction records not stored");
            Err(refused.error.code == ResponseError::NotLeaderOrFollower.code())
        }
    }
}

/// Writes a transaction's markers until every partition took them, then
/// reports it; gives up when the coordinator no longer holds the
/// partition at that epoch (a newer coordinator sends them again).
async fn send_markers(shard: Rc<Shard>, request: MarkerRequest) {
    let log_partition = txn_partition_for(&shard, &request.transactional_id);
    let mut remaining = request.clone();
    let mut pause = MARKER_RETRY_FIRST;
    loop {
        let still_ours = shard
            .txn
            .with_coordinator(|coordinator| coordinator.coordinator_epoch(log_partition))
            == Some(request.coordinator_epoch);
        if !still_ours {
            tracing::debug!(transactional_id = %request.transactional_id, "marker work dropped: partition unloaded");
            return;
        }
        let results = super::markers::write_markers(&shard, &remaining).await;
        let metadata = shard.metadata();
        let pending: Vec<_> = results
            .into_iter()
            .filter(|(partition, code)| {
                *code != 0 && !partition_gone(&metadata, &partition.topic, partition.partition)
            })
            .map(|(partition, code)| {
                tracing::debug!(topic = %partition.topic, partition = partition.partition, code, "marker not written yet");
                partition
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        remaining.partitions = pending;
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(MARKER_RETRY_MAX);
    }
    apply(
        &shard,
        Input::MarkersWritten {
            transactional_id: request.transactional_id,
            producer: request.producer,
            coordinator_epoch: request.coordinator_epoch,
        },
    );
}

/// A partition (or its whole topic) that no longer exists takes no
/// marker: it counts as done.
fn partition_gone(metadata: &crate::metadata::ClusterMetadata, topic: &str, index: i32) -> bool {
    metadata
        .topic(topic)
        .is_none_or(|meta| index < 0 || index >= meta.partitions)
}

/// Reserves producer ids from shard 0's allocator (cluster-wide blocks
/// through the quorum on a cluster member) for this shard's coordinator.
async fn fetch_producer_ids(shard: Rc<Shard>) {
    let allocated = shard
        .invoke_on(0, |controller| async move {
            match controller.quorum() {
                Some(quorum) => {
                    controller
                        .producer_ids
                        .allocate_range_in_cluster(
                            &quorum,
                            controller.config.node_id,
                            &controller.config.data_dir,
                            PRODUCER_ID_BLOCK,
                        )
                        .await
                }
                None => {
                    controller
                        .producer_ids
                        .allocate_range(&controller.config.data_dir, PRODUCER_ID_BLOCK)
                        .await
                }
            }
        })
        .await;
    let (first, count) = match allocated {
        Ok(Ok(range)) => range,
        Ok(Err(message)) => {
            tracing::error!(%message, "no producer ids for the transaction coordinator");
            glommio::timer::sleep(MARKER_RETRY_MAX).await;
            (0, 0) // lets the coordinator ask again
        }
        Err(error) => {
            tracing::error!(%error, "producer-id allocator unreachable");
            glommio::timer::sleep(MARKER_RETRY_MAX).await;
            (0, 0)
        }
    };
    apply(&shard, Input::ProducerIds { first, count });
}

// ------------------------------------------------------------ leadership

/// Whether `log_partition` is loaded here at its current leader epoch;
/// loads it when this shard owns it and this node leads it. False when
/// it cannot be served here now (COORDINATOR_LOAD_IN_PROGRESS).
async fn ensure_loaded(shard: &Rc<Shard>, log_partition: i32) -> bool {
    let current_epoch = |shard: &Shard| shard.metadata().leader_epoch(TXN_TOPIC, log_partition);
    let is_loaded = |shard: &Shard| {
        shard
            .txn
            .loaded
            .borrow()
            .get(&log_partition)
            .is_some_and(|loaded| loaded.leader_epoch == current_epoch(shard))
    };
    if is_loaded(shard) {
        return true;
    }
    let Ok(_permit) = shard.txn.load_lock.acquire_permit(1).await else {
        return false;
    };
    if is_loaded(shard) {
        return true;
    }
    let metadata = shard.metadata();
    if !metadata.led_by(TXN_TOPIC, log_partition, shard.config.node_id)
        || shard.owner_of(TXN_TOPIC, log_partition) != shard.id
    {
        return false;
    }
    // A load at an older epoch stops appending now (its queued appends
    // are dropped), so the log read below is the whole of it.
    shard.txn.loaded.borrow_mut().remove(&log_partition);
    load_partition(shard, log_partition).await
}

/// Replays one `__transaction_state` partition into the coordinator
/// (everything in its log, once committed); false when it cannot be read
/// here now.
async fn load_partition(shard: &Rc<Shard>, log_partition: i32) -> bool {
    let Ok(partition) = shard.partition(TXN_TOPIC, log_partition).await else {
        return false;
    };
    let leader_epoch = shard.metadata().leader_epoch(TXN_TOPIC, log_partition);
    let offsets = partition.offsets();
    let end_offset = offsets.log_end_offset;
    // What a previous leader appended must be committed before it counts.
    let committed = std::pin::pin!(partition.wait_committed(end_offset));
    let expired = std::pin::pin!(glommio::timer::sleep(APPEND_TIMEOUT));
    match futures::future::select(committed, expired).await {
        futures::future::Either::Left((Ok(()), _)) => {}
        _ => {
            tracing::info!(
                log_partition,
                "transaction log not committed yet; load later"
            );
            return false;
        }
    }
    let mut records = Vec::new();
    let mut offset = offsets.log_start_offset;
    while offset < end_offset {
        let read = match partition.read(offset, 1 << 20).await {
            Ok(read) if read.next_offset > offset => read,
            Ok(_) => break,
            Err(error) => {
                tracing::error!(log_partition, %error, "cannot replay the transaction log");
                return false;
            }
        };
        let Ok(bytes) = read.load().await else {
            return false;
        };
        offset = read.next_offset;
        collect_records(&bytes, &mut records);
    }
    let generation = shard.txn.next_generation.get();
    shard.txn.next_generation.set(generation + 1);
    // Loaded first: the load's effects (markers sent again) may append.
    shard.txn.loaded.borrow_mut().insert(
        log_partition,
        Loaded {
            leader_epoch,
            generation,
        },
    );
    apply(
        shard,
        Input::Load {
            log_partition,
            coordinator_epoch: leader_epoch,
            records,
            end_offset: end_offset as i64,
            lost_writes: shard.shared.lost_writes.get().cloned(),
        },
    );
    let stats: LoadStats = shard
        .txn
        .with_coordinator(|coordinator| coordinator.last_load().clone());
    tracing::info!(
        shard = shard.id,
        log_partition,
        coordinator_epoch = leader_epoch,
        transactional_ids = stats.transactional_ids,
        markers_resent = stats.markers_resent,
        aborted_after_unclean_stop = stats.aborted_lost,
        malformed = stats.malformed,
        "transaction log partition loaded"
    );
    true
}

/// The keyed records of every batch in `bytes`, each with its batch's
/// base offset plus its index (the coordinator uses them only to log).
fn collect_records(bytes: &bytes::Bytes, out: &mut Vec<StoredRecord>) {
    for (header, batch) in crate::records::whole_batches(bytes) {
        let (pairs, _) = crate::records::read_keyed_records(&batch);
        for (index, (key, value)) in pairs.into_iter().enumerate() {
            if let Some(key) = key {
                out.push(StoredRecord {
                    offset: header.base_offset + index as i64,
                    key,
                    value,
                });
            }
        }
    }
}

/// After a metadata change: every partition this shard loaded but no
/// longer owns, leads, or leads at the loaded epoch leaves the coordinator
/// (its waiters get NOT_COORDINATOR; a newer leader loads it).
pub fn unload_moved_txn_partitions(shard: &Shard) {
    let metadata = shard.metadata();
    let lost: Vec<i32> = shard
        .txn
        .loaded
        .borrow()
        .iter()
        .filter(|(index, loaded)| {
            !metadata.led_by(TXN_TOPIC, **index, shard.config.node_id)
                || shard.owner_of(TXN_TOPIC, **index) != shard.id
                || metadata.leader_epoch(TXN_TOPIC, **index) != loaded.leader_epoch
        })
        .map(|(index, _)| *index)
        .collect();
    for log_partition in &lost {
        shard.txn.loaded.borrow_mut().remove(log_partition);
        let mut effects = Vec::new();
        let handled = shard.txn.coordinator.borrow_mut().handle(
            Input::Unload {
                log_partition: *log_partition,
            },
            &mut effects,
        );
        if let Err(error) = handled {
            tracing::error!(%error, "the transaction coordinator refused an unload");
        }
        // An unload only answers what waited (NOT_COORDINATOR).
        for effect in effects {
            if let Effect::Answer { request, response } = effect {
                if let Some(waiter) = shard.txn.waiters.borrow_mut().remove(&request) {
                    let _ = waiter.send(response);
                }
            }
        }
    }
    if !lost.is_empty() {
        tracing::info!(shard = shard.id, partitions = ?lost, "transaction log partitions led elsewhere now: unloaded");
    }
}

/// Loads every `__transaction_state` partition this shard owns and this
/// node leads that is not loaded yet.
pub async fn load_led_partitions(shard: &Rc<Shard>) {
    let metadata = shard.metadata();
    let Some(topic) = metadata.topic(TXN_TOPIC) else {
        return;
    };
    for index in 0..topic.partitions {
        if shard.owner_of(TXN_TOPIC, index) == shard.id
            && metadata.led_by(TXN_TOPIC, index, shard.config.node_id)
        {
            let _ = ensure_loaded(shard, index).await;
        }
    }
}

/// The per-shard timer: ticks the coordinator (timeouts, expiry, the
/// producer-id pool) and loads partitions this node came to lead.
pub async fn run_txn_timer(shard: Rc<Shard>) {
    let mut last_scan = std::time::Instant::now();
    load_led_partitions(&shard).await;
    loop {
        let now = crate::clock::now_ms();
        let wait = shard
            .txn
            .with_coordinator(|coordinator| coordinator.next_deadline_ms())
            .map_or(TICK_MAX, |deadline| {
                Duration::from_millis(deadline.saturating_sub(now).max(0) as u64).min(TICK_MAX)
            });
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        if shard.txn.loaded.borrow().is_empty() && last_scan.elapsed() < LOAD_SCAN_INTERVAL {
            continue;
        }
        if !shard.txn.loaded.borrow().is_empty() {
            let mut effects = Vec::new();
            let handled = shard.txn.coordinator.borrow_mut().handle(
                Input::Tick {
                    now_ms: crate::clock::now_ms(),
                },
                &mut effects,
            );
            if let Err(error) = handled {
                tracing::error!(%error, "the transaction coordinator refused a tick");
            }
            carry_out(&shard, effects);
        }
        if last_scan.elapsed() >= LOAD_SCAN_INTERVAL {
            last_scan = std::time::Instant::now();
            load_led_partitions(&shard).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_several_batches_keep_their_offsets() {
        let first = crate::records::build_keyed_batch(
            &[
                (Some(b"a".as_ref()), Some(b"1".as_ref())),
                (Some(b"b"), None),
            ],
            0,
        );
        let second = crate::records::build_keyed_batch(&[(Some(b"c".as_ref()), Some(b"3"))], 0);
        // Stamp the second batch's base offset as the log would.
        let mut second = bytes::BytesMut::from(second.as_ref());
        second[0..8].copy_from_slice(&2i64.to_be_bytes());
        let mut all = bytes::BytesMut::from(first.as_ref());
        all.extend_from_slice(&second);
        let mut out = Vec::new();
        collect_records(&all.freeze(), &mut out);
        let seen: Vec<(i64, &[u8], bool)> = out
            .iter()
            .map(|record| (record.offset, record.key.as_ref(), record.value.is_some()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, b"a".as_ref(), true),
                (1, b"b".as_ref(), false),
                (2, b"c".as_ref(), true)
            ]
        );
    }

    #[test]
    fn a_partition_that_is_gone_counts_as_done() {
        let metadata = crate::metadata::ClusterMetadata::default();
        assert!(partition_gone(&metadata, "missing", 0));
    }
}
