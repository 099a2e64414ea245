//! Fetch: read each partition on its owning shard, up to the high
//! watermark and the byte budgets; long-poll (`max_wait_ms`, `min_bytes`)
//! woken by the owners' log progress.
//!
//! A read starts with the whole batch holding the fetch offset (Kafka
//! returns whole batches; clients skip records before their offset). Budgets,
//! counted in record bytes: `partition_max_bytes` per partition and
//! `max_bytes` for the response; the first batch of the response is returned
//! whole even if larger (KIP-74). Record bytes go out as wire parts: hot-tail
//! buffers from memory, older data as file regions spliced to the socket
//! (`crate::zerocopy`). Incremental fetch sessions (KIP-227) live in
//! `fetch_session.rs`, on the connection's shard.
//!
//! Isolation: a `read_committed` fetch (isolation level 1) reads only
//! below the last stable offset (a batch reaching it is not served: the
//! log never splits one), gets the aborted transactions overlapping what it
//! read (producer id and first offset: the client drops their records) and
//! parks until the last stable offset moves; `read_uncommitted` reads to
//! the high watermark. Both are told the real last stable offset.
//!
//! Fetching from the closest replica (KIP-392), for consumers (replica id
//! < 0) speaking Fetch v11+: a follower replica answers from its own log,
//! up to the high watermark it learned from the leader (beyond its log end:
//! OFFSET_OUT_OF_RANGE, as Kafka; the consumer then goes back to the
//! leader). A leader with `replica.selector.class` set answers a consumer
//! on another rack with the in-sync replica on the consumer's rack as
//! `preferred_read_replica`, no records and at once
//! (`crate::replication::selector`). Older versions and other requests
//! reach leaders only.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::FetchRequest;
use kafki_net::{CorrelationId, FetchPartitionHead, FetchResponseHead, FetchTopicHead};

use super::Reply;
use crate::errors::code_for_log_error;
use crate::fetch_session::{FetchSessions, PartitionAnswer};
use crate::metadata::NodeState;
use crate::replication::selector::{self, NodeView, PartitionView};
use crate::shard::{ServingRole, Shard};
use crate::zerocopy::WirePart;

/// Longest long poll we honour.
const MAX_WAIT_MS_MAX: i32 = 30_000;

/// Kafka's isolation level `READ_COMMITTED`.
const READ_COMMITTED: i8 = 1;

#[derive(Clone)]
struct PartitionRead {
    slot: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    current_leader_epoch: i32,
    /// Reads stop at the last stable offset (isolation level 1).
    read_committed: bool,
}

/// What KIP-392 needs to know of the fetching client, the same for every
/// partition of the request.
#[derive(Clone, Default)]
struct ConsumerPlacement {
    /// A consumer speaking Fetch v11+: a follower replica may answer.
    may_read_follower: bool,
    /// Its `client.rack` when it sent one (for the leader's choice).
    rack: Option<String>,
}

impl ConsumerPlacement {
    fn of(request: &FetchRequest, version: i16) -> Self {
        let consumer = request.replica_id.0 < 0 && request.replica_state.replica_id.0 < 0;
        if !consumer || version < 11 {
            return Self::default();
        }
        let rack = request.rack_id.as_str();
        Self {
            may_read_follower: true,
            rack: (!rack.is_empty()).then(|| rack.to_string()),
        }
    }
}

#[derive(Clone)]
struct ReadOutcome {
    slot: usize,
    error_code: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
    /// `read_committed` only: (producer id, first offset) of the aborted
    /// transactions overlapping the records read.
    aborted_transactions: Option<Vec<(i64, i64)>>,
    records: Option<Vec<WirePart>>,
    /// The replica the consumer should fetch from instead (-1: none).
    preferred_read_replica: i32,
    /// Which role of this node answered (`None`: nothing was read).
    served_by: Option<ServingRole>,
}

impl ReadOutcome {
    fn records_bytes(&self) -> u64 {
        self.records.iter().flatten().map(WirePart::len).sum()
    }

    fn failed(slot: usize, error_code: i16) -> Self {
        Self {
            slot,
            error_code,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted_transactions: None,
            records: None,
            preferred_read_replica: -1,
            served_by: None,
        }
    }

    /// Whether the answer must go out now rather than wait for data: an
    /// error, or a redirect to a preferred replica (Kafka answers those at
    /// once).
    fn answers_at_once(&self) -> bool {
        self.error_code != 0 || self.preferred_read_replica >= 0
    }
}

/// Answers a Fetch: the response head is encoded by `kafki-net`, the record
/// bytes follow as wire parts (hot-tail buffers, or file regions spliced
/// to the socket without a copy).
pub async fn fetch(
    shard: &Rc<Shard>,
    request: FetchRequest,
    version: i16,
    correlation_id: CorrelationId,
) -> Reply {
    let started = Instant::now();
    let max_wait = Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS_MAX) as u64);
    let min_bytes = request.min_bytes.max(0) as u64;
    let max_bytes = if request.max_bytes <= 0 {
        i32::MAX
    } else {
        request.max_bytes
    } as u64;
    let plan = if version >= 7 {
        match shard.fetch_sessions.borrow_mut().plan(&request) {
            Ok(plan) => plan,
            Err(code) => return top_level_error(correlation_id, version, code),
        }
    } else {
        let mut sessionless = FetchSessions::default();
        match sessionless.plan(&request.clone().with_session_epoch(-1)) {
            Ok(plan) => plan,
            Err(code) => return top_level_error(correlation_id, version, code),
        }
    };
    let read_committed = request.isolation_level == READ_COMMITTED;
    let reads: Vec<PartitionRead> = plan
        .reads
        .iter()
        .enumerate()
        .map(|(slot, read)| PartitionRead {
            slot,
            topic: read.topic.clone(),
            partition: read.partition,
            offset: read.fetch_offset,
            max_bytes: read.max_bytes,
            current_leader_epoch: read.current_leader_epoch,
            read_committed,
        })
        .collect();
    let placement = ConsumerPlacement::of(&request, version);
    let mut outcomes = read_all(shard, &reads, &placement, max_bytes).await;
    loop {
        let bytes: u64 = outcomes.iter().map(ReadOutcome::records_bytes).sum();
        let at_once = outcomes.iter().any(ReadOutcome::answers_at_once);
        let elapsed = started.elapsed();
        if bytes >= min_bytes.max(1) || at_once || elapsed >= max_wait || shard.shutting_down.get()
        {
            break;
        }
        // What bounds the reads: a read_committed poll waits for the last
        // stable offset to move, not the high watermark.
        let seen: Vec<i64> = outcomes
            .iter()
            .map(|outcome| {
                if read_committed {
                    outcome.last_stable_offset
                } else {
                    outcome.high_watermark
                }
            })
            .collect();
        let may_read_follower = placement.may_read_follower;
        wait_for_data(
            shard,
            &reads,
            &seen,
            may_read_follower,
            read_committed,
            max_wait - elapsed,
        )
        .await;
        outcomes = read_all(shard, &reads, &placement, max_bytes).await;
    }
    for outcome in &outcomes {
        if outcome.served_by == Some(ServingRole::Follower) {
            shard.metrics.count_follower_fetch_partition();
        }
        if outcome.preferred_read_replica >= 0 {
            shard.metrics.count_preferred_replica_redirect();
        }
    }
    // Group the answers by topic, in read order; an incremental session
    // answer keeps only partitions with something new to say.
    let mut records = Vec::new();
    let mut topics: Vec<FetchTopicHead> = Vec::new();
    for (read, outcome) in reads.iter().zip(outcomes) {
        if plan.incremental
            && !shard.fetch_sessions.borrow_mut().should_send(
                plan.session_id,
                &read.topic,
                read.partition,
                PartitionAnswer {
                    // A redirect is news even when nothing else changed.
                    has_records: outcome.records_bytes() > 0 || outcome.preferred_read_replica >= 0,
                    error_code: outcome.error_code,
                    high_watermark: outcome.high_watermark,
                    last_stable_offset: outcome.last_stable_offset,
                    log_start: outcome.log_start_offset,
                },
            )
        {
            continue;
        }
        if !plan.incremental && plan.session_id != 0 {
            // The opening answer is full; remember what it said.
            shard.fetch_sessions.borrow_mut().should_send(
                plan.session_id,
                &read.topic,
                read.partition,
                PartitionAnswer {
                    has_records: true,
                    error_code: outcome.error_code,
                    high_watermark: outcome.high_watermark,
                    last_stable_offset: outcome.last_stable_offset,
                    log_start: outcome.log_start_offset,
                },
            );
        }
        let records_len = outcome.records_bytes();
        let head = FetchPartitionHead {
            partition_index: read.partition,
            error_code: outcome.error_code,
            high_watermark: outcome.high_watermark,
            last_stable_offset: outcome.last_stable_offset,
            log_start_offset: if version >= 5 {
                outcome.log_start_offset
            } else {
                -1
            },
            aborted_transactions: outcome.aborted_transactions,
            preferred_read_replica: outcome.preferred_read_replica,
            records_len: Some(records_len),
        };
        records.push(outcome.records.unwrap_or_default());
        match topics.last_mut() {
            Some(topic) if topic.topic == read.topic => topic.partitions.push(head),
            _ => topics.push(FetchTopicHead {
                topic: read.topic.clone(),
                partitions: vec![head],
            }),
        }
    }
    let head = FetchResponseHead {
        throttle_time_ms: 0,
        error_code: 0,
        session_id: plan.session_id,
        topics,
    };
    match kafki_net::encode_fetch_response(correlation_id, version, &head) {
        Ok(chunks) => {
            let mut parts = Vec::with_capacity(chunks.len() + records.len());
            let mut records = records.into_iter();
            for chunk in chunks {
                parts.push(WirePart::Bytes(chunk));
                parts.extend(records.next().unwrap_or_default());
            }
            Reply::Parts(parts)
        }
        Err(error) => {
            tracing::error!(version, %error, "cannot encode fetch response; closing connection");
            Reply::Close
        }
    }
}

/// A response with only a top-level error (fetch-session errors).
fn top_level_error(correlation_id: CorrelationId, version: i16, code: i16) -> Reply {
    let head = FetchResponseHead {
        throttle_time_ms: 0,
        error_code: code,
        session_id: 0,
        topics: Vec::new(),
    };
    match kafki_net::encode_fetch_response(correlation_id, version, &head) {
        Ok(chunks) => Reply::Parts(chunks.into_iter().map(WirePart::Bytes).collect()),
        Err(_) => Reply::Close,
    }
}

/// Reads every partition on its owner, shards in turn, sharing the
/// response byte budget.
async fn read_all(
    shard: &Rc<Shard>,
    reads: &[PartitionRead],
    placement: &ConsumerPlacement,
    max_bytes: u64,
) -> Vec<ReadOutcome> {
    let mut by_shard: BTreeMap<usize, Vec<PartitionRead>> = BTreeMap::new();
    for read in reads {
        by_shard
            .entry(shard.owner_of(&read.topic, read.partition))
            .or_default()
            .push(read.clone());
    }
    let mut outcomes: Vec<Option<ReadOutcome>> = vec![None; reads.len()];
    let mut budget = max_bytes;
    for (owner, batch) in by_shard {
        let slots: Vec<usize> = batch.iter().map(|read| read.slot).collect();
        let remaining = budget;
        let first_in_response = budget == max_bytes;
        let placement = placement.clone();
        let results = shard
            .invoke_on(owner, move |owner| async move {
                read_on_owner(owner, batch, &placement, remaining, first_in_response).await
            })
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "fetch: owner shard unreachable");
                slots
                    .into_iter()
                    .map(|slot| ReadOutcome::failed(slot, ResponseError::UnknownServerError.code()))
                    .collect()
            });
        for outcome in results {
            budget = budget.saturating_sub(outcome.records_bytes());
            let slot = outcome.slot;
            if let Some(entry) = outcomes.get_mut(slot) {
                *entry = Some(outcome);
            }
        }
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(slot, outcome)| {
            outcome.unwrap_or(ReadOutcome::failed(
                slot,
                ResponseError::UnknownServerError.code(),
            ))
        })
        .collect()
}

async fn read_on_owner(
    shard: Rc<Shard>,
    reads: Vec<PartitionRead>,
    placement: &ConsumerPlacement,
    mut budget: u64,
    mut first_in_response: bool,
) -> Vec<ReadOutcome> {
    let mut outcomes = Vec::with_capacity(reads.len());
    for read in reads {
        let outcome = read_partition(&shard, &read, placement, budget, first_in_response).await;
        let taken = outcome.records_bytes();
        if taken > 0 {
            first_in_response = false;
        }
        budget = budget.saturating_sub(taken);
        outcomes.push(outcome);
    }
    outcomes
}

/// The partition for a fetch here, and the role that serves it: the
/// leader, or (KIP-392, when the client may read one) a follower.
async fn serving_partition(
    shard: &Shard,
    topic: &str,
    index: i32,
    may_read_follower: bool,
) -> Result<(crate::partition::PartitionRef, ServingRole), i16> {
    if may_read_follower {
        shard.partition_for_consumer_fetch(topic, index).await
    } else {
        let partition = shard.partition(topic, index).await?;
        Ok((partition, ServingRole::Leader))
    }
}

/// The replica a consumer on `rack` should read `read`'s partition from
/// instead of this leader (`replica.selector.class`), from the metadata
/// image: the partition's replicas and ISR, the nodes' racks and liveness.
fn preferred_read_replica(shard: &Shard, read: &PartitionRead, rack: &str) -> Option<i32> {
    let selector = shard.config.settings.replica_selector;
    selector?;
    let metadata = shard.metadata();
    let record = metadata.partition_record(&read.topic, read.partition)?;
    let partition = PartitionView {
        leader: shard.config.node_id,
        replicas: &record.replicas,
        isr: &record.isr,
    };
    selector::preferred_read_replica(selector, rack, partition, |id| {
        metadata.nodes.get(&id).map(|node| NodeView {
            rack: node.rack.as_deref(),
            alive: node.state == NodeState::Alive,
        })
    })
}

async fn read_partition(
    shard: &Shard,
    read: &PartitionRead,
    placement: &ConsumerPlacement,
    budget: u64,
    first_in_response: bool,
) -> ReadOutcome {
    let mut outcome = ReadOutcome::failed(read.slot, 0);
    let served = serving_partition(
        shard,
        &read.topic,
        read.partition,
        placement.may_read_follower,
    )
    .await;
    let (partition, role) = match served {
        Ok(served) => served,
        Err(code) => {
            outcome.error_code = code;
            return outcome;
        }
    };
    if let Err(code) = partition.check_leader_epoch(read.current_leader_epoch) {
        outcome.error_code = code;
        return outcome;
    }
    let offsets = partition.offsets();
    let high_watermark = offsets.high_watermark;
    let last_stable_offset = partition.last_stable_offset();
    outcome.high_watermark = high_watermark as i64;
    outcome.last_stable_offset = last_stable_offset as i64;
    // The bound of this read: committed data, or only stable data.
    let upper = if read.read_committed {
        outcome.aborted_transactions = Some(Vec::new());
        last_stable_offset
    } else {
        high_watermark
    };
    outcome.log_start_offset = offsets.log_start_offset as i64;
    outcome.served_by = Some(role);
    // Kafka answers a redirect with the leader's offsets and no records,
    // whatever the fetch offset (the preferred replica judges it).
    let redirect = match (&placement.rack, role) {
        (Some(rack), ServingRole::Leader) => preferred_read_replica(shard, read, rack),
        _ => None,
    };
    if let Some(node) = redirect {
        outcome.preferred_read_replica = node;
        return outcome;
    }
    if read.offset < 0
        || (read.offset as u64) < offsets.log_start_offset
        || read.offset as u64 > offsets.log_end_offset
    {
        outcome.error_code = ResponseError::OffsetOutOfRange.code();
        return outcome;
    }
    let partition_budget = read.max_bytes.max(0) as u64;
    // After the first batch of the response, nothing may exceed the budget.
    let limit = if first_in_response {
        partition_budget
    } else {
        partition_budget.min(budget)
    };
    if limit == 0 || read.offset as u64 >= upper {
        return outcome;
    }
    let result = if read.read_committed {
        partition.read_committed(read.offset as u64, limit).await
    } else {
        partition.read(read.offset as u64, limit).await
    };
    match result {
        Ok(result) => {
            if !first_in_response && result.bytes > budget {
                return outcome;
            }
            if read.read_committed && result.bytes > 0 {
                // Kafka's collectAbortedTxns over [fetch offset, the
                // offset after the last batch read).
                outcome.aborted_transactions =
                    Some(partition.aborted_transactions(read.offset as u64, result.next_offset));
            }
            let mut parts = Vec::with_capacity(result.chunks.len());
            for chunk in result.chunks {
                match crate::zerocopy::wire_part(chunk).await {
                    Ok((part, path)) => {
                        shard.metrics.add_fetch_bytes(path, part.len());
                        parts.push(part);
                    }
                    Err(_) => {
                        outcome.error_code = ResponseError::KafkaStorageError.code();
                        return outcome;
                    }
                }
            }
            outcome.records = Some(parts);
        }
        Err(error) => outcome.error_code = code_for_log_error(&error),
    }
    outcome
}

/// Waits (up to `timeout`) until any of the partitions' logs makes progress.
async fn wait_for_data(
    shard: &Rc<Shard>,
    reads: &[PartitionRead],
    seen: &[i64],
    may_read_follower: bool,
    read_committed: bool,
    timeout: Duration,
) {
    let mut by_shard: BTreeMap<usize, Vec<(String, i32, i64)>> = BTreeMap::new();
    for (read, seen) in reads.iter().zip(seen) {
        by_shard
            .entry(shard.owner_of(&read.topic, read.partition))
            .or_default()
            .push((read.topic.clone(), read.partition, *seen));
    }
    let waits: Vec<_> = by_shard
        .into_iter()
        .map(|(owner, partitions)| {
            Box::pin(shard.invoke_on(owner, move |owner| async move {
                wait_on_owner(
                    owner,
                    partitions,
                    may_read_follower,
                    read_committed,
                    timeout,
                )
                .await;
            }))
        })
        .collect();
    if waits.is_empty() {
        glommio::timer::sleep(timeout).await;
        return;
    }
    let _ = futures::future::select_all(waits).await;
}

/// Waits until one partition's high watermark (`read_committed`: last
/// stable offset) passes what the last read saw (no wake-up is lost between that read and this wait), or until one
/// is handed over to another shard: a parked poll must not hold the old
/// owner's log open, and the re-read then tells the client to look again.
async fn wait_on_owner(
    shard: Rc<Shard>,
    partitions: Vec<(String, i32, i64)>,
    may_read_follower: bool,
    read_committed: bool,
    timeout: Duration,
) {
    let mut waits = Vec::new();
    for (topic, index, seen) in partitions {
        let served = serving_partition(&shard, &topic, index, may_read_follower).await;
        let Ok((partition, _)) = served else {
            // Gone since the read (deleted, or being handed over): the
            // re-read reports it now rather than after the whole wait.
            return;
        };
        waits.push(Box::pin(async move {
            if read_committed {
                partition.wait_for_stable_offset_beyond(seen).await
            } else {
                partition.wait_for_high_watermark_beyond(seen).await
            }
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>);
    }
    let timer = Box::pin(glommio::timer::sleep(timeout));
    if waits.is_empty() {
        timer.await;
        return;
    }
    futures::future::select(futures::future::select_all(waits), timer).await;
}
