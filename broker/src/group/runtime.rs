//! The consumer-group runtime around the pure coordinator: each shard's
//! [`GroupShard`], routing a group to its coordinator shard, parking
//! JoinGroup/SyncGroup until their rebalance completes, persisting the
//! coordinator's records in `__consumer_offsets` (a commit becomes visible
//! only once stored), the timer, and the reload at start-up.
//!
//! Group `g` is coordinated by the shard that owns partition
//! `fnv1a(g) mod offsets.topic.num.partitions` of `__consumer_offsets`, so a
//! group's state and its offsets records live on the same core.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafki_net::kafka_protocol::error::ResponseError;

use super::{records, CompletedResponse, GroupConfig, GroupCoordinator, Outcome};
use crate::internal_topics::{capped_at_live_nodes, ensure_internal_topic};
use crate::partition::Acks;
use crate::placement::fnv1a_32;
use crate::shard::Shard;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How long a commit waits for its records to be stored before it is
/// answered COORDINATOR_NOT_AVAILABLE (Kafka's `offsets.commit.timeout.ms`
/// default).
const OFFSETS_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause of the per-shard group timer.
const TICK_MAX: Duration = Duration::from_millis(100);

/// The per-shard group state: the coordinator and the parked requests.
pub struct GroupShard {
    pub coordinator: std::cell::RefCell<GroupCoordinator>,
    waiters: std::cell::RefCell<HashMap<u64, futures::channel::oneshot::Sender<CompletedResponse>>>,
    /// Offsets partitions whose groups were replayed into the coordinator
    /// (at start, or on a cluster member when the first request for one
    /// of its groups arrives).
    loaded: std::cell::RefCell<std::collections::HashSet<i32>>,
    /// One replay at a time, so a request never sees a half-loaded one.
    load_lock: glommio::sync::Semaphore,
}

impl GroupShard {
    pub fn new(config: &crate::config::BrokerConfig, shard_id: usize) -> Self {
        let delay = config.settings.group_initial_rebalance_delay.as_millis() as u64;
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 ^ shard_id as u64;
        let group_config = GroupConfig {
            initial_rebalance_delay_ms: delay,
            member_id_seed: seed,
            ..GroupConfig::default()
        };
        Self {
            coordinator: std::cell::RefCell::new(GroupCoordinator::new(group_config)),
            waiters: std::cell::RefCell::new(HashMap::new()),
            loaded: std::cell::RefCell::new(std::collections::HashSet::new()),
            load_lock: glommio::sync::Semaphore::new(1),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

pub(crate) fn offsets_partitions(shard: &Shard) -> i32 {
    shard.config.settings.offsets_topic_partitions
}

pub fn offsets_partition_for(group: &str, partitions: i32) -> i32 {
    (fnv1a_32(group.as_bytes()) % partitions.max(1) as u32) as i32
}

pub(crate) fn coordinator_shard(shard: &Shard, group: &str) -> usize {
    shard.owner_of(
        OFFSETS_TOPIC,
        offsets_partition_for(group, offsets_partitions(shard)),
    )
}

/// Creates `__consumer_offsets` if it does not exist yet.
pub(crate) async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<(), i16> {
    // Kafka's defaults for the offsets topic: compacted, in segments of
    // `offsets.topic.segment.bytes` (100 MiB) so that the cleaner, which
    // never touches the active segment, gets sealed segments to clean.
    let segment_bytes = shard.config.settings.offsets_topic_segment_bytes;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]);
    let replication_factor = capped_at_live_nodes(shard, "offsets.topic.replication.factor", 3);
    ensure_internal_topic(
        shard,
        OFFSETS_TOPIC,
        offsets_partitions(shard),
        replication_factor,
        configs,
    )
    .await
}

/// Drains what the coordinator produced: answers parked requests and
/// persists records, in order; offset commits become visible once their
/// records reached the commit stage. Runs on the coordinator's shard, right
/// after the call that produced them (no await between: the records are
/// that call's). `Err` carries the code for a commit that was not stored.
async fn settle(shard: &Rc<Shard>) -> Result<(), i16> {
    let (completions, records, commits, txn_records, txn_commits) = {
        let mut coordinator = shard.groups.coordinator.borrow_mut();
        (
            coordinator.take_completed(),
            coordinator.take_records(),
            coordinator.take_pending_commits(),
            coordinator.take_txn_records(),
            coordinator.take_pending_txn_commits(),
        )
    };
    for completion in completions {
        if let Some(waiter) = shard
            .groups
            .waiters
            .borrow_mut()
            .remove(&completion.ticket.0)
        {
            let _ = waiter.send(completion.response);
        }
    }
    let partitions = offsets_partitions(shard);
    let stored = persist(shard, records).await;
    if let Ok(stored_at) = &stored {
        let mut commits = commits;
        for commit in &mut commits {
            let partition = offsets_partition_for(&commit.group, partitions);
            commit.committed.stored_at = stored_at.get(&partition).copied().unwrap_or(-1);
        }
        shard.groups.coordinator.borrow_mut().apply_commits(commits);
    } else if !commits.is_empty() {
        tracing::warn!(
            commits = commits.len(),
            "offset commits not stored; answered COORDINATOR_NOT_AVAILABLE and not applied"
        );
    }
    let stored = stored.map(|_| ());
    if txn_records.is_empty() {
        return stored;
    }
    let txn_stored = persist_transactional(shard, txn_records).await;
    if let Ok(stored_at) = &txn_stored {
        let mut txn_commits = txn_commits;
        for commit in &mut txn_commits {
            commit.committed.stored_at = stored_at.get(&commit.group).copied().unwrap_or(-1);
        }
        shard
            .groups
            .coordinator
            .borrow_mut()
            .apply_txn_commits(txn_commits);
    } else {
        tracing::warn!(
            offsets = txn_commits.len(),
            "transactional offsets not stored; answered COORDINATOR_NOT_AVAILABLE"
        );
    }
    stored.and(txn_stored.map(|_| ()))
}

/// Writes each TxnOffsetCommit's records as one transactional batch of its
/// producer (id, epoch, the partition's next sequence for it) to the
/// group's offsets partition, and waits for the commit stage. They stay
/// pending until the producer's marker ([`complete_txn_offsets`]).
///
/// The sequence is read from the partition right before the append, with
/// no await between: a producer sends its TxnOffsetCommits one at a time.
async fn persist_transactional(
    shard: &Rc<Shard>,
    batches: Vec<super::TxnOffsetsRecords>,
) -> Result<BTreeMap<String, i64>, i16> {
    let not_stored = ResponseError::CoordinatorNotAvailable.code();
    let mut outcome = Ok(());
    let mut stored_at = BTreeMap::new();
    let partitions = offsets_partitions(shard);
    for batch in batches {
        let index = offsets_partition_for(&batch.group, partitions);
        let partition = match shard.partition(OFFSETS_TOPIC, index).await {
            Ok(partition) => partition,
            Err(code) => {
                tracing::error!(code, partition = index, "offsets partition unavailable");
                outcome = Err(not_stored);
                continue;
            }
        };
        let pairs: Vec<crate::records::KeyValueRef<'_>> = batch
            .records
            .iter()
            .map(|record| (Some(record.key.as_ref()), record.value.as_deref()))
            .collect();
        let producer = batch.producer;
        let sequence = partition.next_sequence_of(producer.producer_id, producer.producer_epoch);
        let bytes = transactional_batch(
            crate::records::build_keyed_batch(&pairs, now_ms() as i64),
            producer,
            sequence,
        );
        let appended = partition
            .append(vec![bytes], Acks::All, Some(OFFSETS_COMMIT_TIMEOUT))
            .await;
        match appended {
            Ok(appended) => {
                stored_at.insert(batch.group, appended.base_offset as i64);
            }
            Err(refused) => {
                tracing::error!(partition = index, error = %refused.error, "transactional offsets not stored");
                outcome = Err(not_stored);
            }
        }
    }
    outcome.map(|()| stored_at)
}

/// `batch` (one the broker built) stamped as `producer`'s transactional
/// batch starting at `base_sequence`, its CRC computed again.
fn transactional_batch(
    batch: bytes::Bytes,
    producer: super::TxnProducer,
    base_sequence: i32,
) -> bytes::Bytes {
    use kafki_storage::batch::{compute_crc, ATTRIBUTE_TRANSACTIONAL};
    // The v2 batch header's layout (Kafka's DefaultRecordBatch).
    const CRC_AT: usize = 17;
    const ATTRIBUTES_AT: usize = 21;
    const PRODUCER_ID_AT: usize = 43;
    const PRODUCER_EPOCH_AT: usize = 51;
    const BASE_SEQUENCE_AT: usize = 53;
    let mut bytes = bytes::BytesMut::from(batch.as_ref());
    if bytes.len() < kafki_storage::batch::BATCH_HEADER_BYTES {
        return batch;
    }
    let attributes = i16::from_be_bytes([bytes[ATTRIBUTES_AT], bytes[ATTRIBUTES_AT + 1]])
        | ATTRIBUTE_TRANSACTIONAL;
    bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    bytes[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.producer_id.to_be_bytes());
    bytes[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
        .copy_from_slice(&producer.producer_epoch.to_be_bytes());
    bytes[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    bytes.freeze()
}

/// The partition side calls this on the owner shard of `__consumer_offsets`
/// partition `offsets_partition` once `producer_id`'s marker (COMMIT when
/// `commit`, else ABORT) is durable there: the transactional offsets that
/// producer committed for the groups of that partition become committed
/// offsets, or are dropped.
pub async fn complete_txn_offsets(
    shard: &Rc<Shard>,
    offsets_partition: i32,
    producer_id: i64,
    commit: bool,
) {
    let partitions = offsets_partitions(shard);
    let settled =
        shard
            .groups
            .coordinator
            .borrow_mut()
            .complete_txn_offsets(producer_id, commit, |group| {
                offsets_partition_for(group, partitions) == offsets_partition
            });
    if settled > 0 {
        tracing::debug!(
            offsets_partition,
            producer_id,
            commit,
            settled,
            "transactional offsets completed"
        );
    }
}

/// Appends coordinator records to their `__consumer_offsets` partitions and
/// waits for the commit stage. `Err` (COORDINATOR_NOT_AVAILABLE, which every
/// client retries after finding the coordinator again) when any of them
/// was not stored.
async fn persist(
    shard: &Rc<Shard>,
    records: Vec<records::OffsetsRecord>,
) -> Result<BTreeMap<i32, i64>, i16> {
    let mut stored_at = BTreeMap::new();
    if records.is_empty() {
        return Ok(stored_at);
    }
    let not_stored = ResponseError::CoordinatorNotAvailable.code();
    let mut outcome = Ok(());
    let partitions = offsets_partitions(shard);
    let mut by_partition: BTreeMap<i32, Vec<records::OffsetsRecord>> = BTreeMap::new();
    for record in records {
        let group = match records::decode_key(&record.key) {
            Ok(records::RecordKey::Offset { group, .. })
            | Ok(records::RecordKey::Group { group }) => group,
            Err(error) => {
                tracing::error!(%error, "coordinator produced an undecodable key");
                continue;
            }
        };
        by_partition
            .entry(offsets_partition_for(&group, partitions))
            .or_default()
            .push(record);
    }
    for (index, batch_records) in by_partition {
        let pairs: Vec<crate::records::KeyValueRef<'_>> = batch_records
            .iter()
            .map(|record| (Some(record.key.as_ref()), record.value.as_deref()))
            .collect();
        let batch = crate::records::build_keyed_batch(&pairs, now_ms() as i64);
        let partition = match shard.partition(OFFSETS_TOPIC, index).await {
            Ok(partition) => partition,
            Err(code) => {
                tracing::error!(
                    code,
                    partition = index,
                    "offsets partition unavailable; records not persisted"
                );
                outcome = Err(not_stored);
                continue;
            }
        };
        let appended = partition
            .append(vec![batch], Acks::All, Some(OFFSETS_COMMIT_TIMEOUT))
            .await;
        match appended {
            Ok(appended) => {
                stored_at.insert(index, appended.base_offset as i64);
            }
            Err(refused) => {
                tracing::error!(
                    partition = index,
                    error = %refused.error,
                    "offsets records not stored"
                );
                outcome = Err(not_stored);
            }
        }
    }
    outcome.map(|()| stored_at)
}

/// The per-shard timer: expires sessions and rebalances.
pub async fn run_group_timer(shard: Rc<Shard>) {
    loop {
        let now = now_ms();
        let wait = shard
            .groups
            .coordinator
            .borrow()
            .next_deadline()
            .map_or(TICK_MAX, |deadline| {
                Duration::from_millis(deadline.saturating_sub(now)).min(TICK_MAX)
            });
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        shard.groups.coordinator.borrow_mut().tick(now_ms());
        let _ = settle(&shard).await;
    }
}

/// Rebuilds the coordinator from the `__consumer_offsets` partitions this
/// shard owns (at start-up, before serving).
pub async fn load_groups(shard: &Rc<Shard>) {
    if shard.metadata().topic(OFFSETS_TOPIC).is_none() {
        return;
    }
    for index in 0..offsets_partitions(shard) {
        if shard.owner_of(OFFSETS_TOPIC, index) != shard.id {
            continue;
        }
        let _ = ensure_loaded(shard, index).await;
    }
    let groups = shard.groups.coordinator.borrow().group_count();
    if groups > 0 {
        tracing::info!(shard = shard.id, groups, "consumer groups loaded");
    }
}

/// Replays offsets partition `index` into this shard's coordinator unless
/// that was done already. False when it cannot be read here now (a new
/// leader not serving yet): the request gets COORDINATOR_LOAD_IN_PROGRESS.
async fn ensure_loaded(shard: &Rc<Shard>, index: i32) -> bool {
    if shard.groups.loaded.borrow().contains(&index) {
        return true;
    }
    let Ok(_permit) = shard.groups.load_lock.acquire_permit(1).await else {
        return false;
    };
    if shard.groups.loaded.borrow().contains(&index) {
        return true;
    }
    if load_partition(shard, index).await {
        shard.groups.loaded.borrow_mut().insert(index);
        return true;
    }
    false
}

/// After a metadata change: the groups of every offsets partition this
/// shard loaded but this node no longer leads leave the coordinator (their
/// new leader replays them from its copy of the partition), and parked
/// joins are cancelled (their clients find the coordinator again). Loaded
/// again from the log if the partition comes back.
pub fn unload_moved_groups(shard: &Shard) {
    let metadata = shard.metadata();
    let partitions = offsets_partitions(shard);
    let lost: Vec<i32> = shard
        .groups
        .loaded
        .borrow()
        .iter()
        .copied()
        .filter(|index| !metadata.led_by(OFFSETS_TOPIC, *index, shard.config.node_id))
        .collect();
    if lost.is_empty() {
        return;
    }
    let removed = shard
        .groups
        .coordinator
        .borrow_mut()
        .unload_groups(|group| lost.contains(&offsets_partition_for(group, partitions)));
    for index in &lost {
        shard.groups.loaded.borrow_mut().remove(index);
    }
    shard.groups.waiters.borrow_mut().clear();
    tracing::info!(shard = shard.id, partitions = ?lost, groups = removed, "offsets partitions led elsewhere now: their groups left this coordinator");
}

/// Replays one offsets partition; false when it cannot be opened here.
async fn load_partition(shard: &Rc<Shard>, index: i32) -> bool {
    let Ok(partition) = shard.partition(OFFSETS_TOPIC, index).await else {
        return false;
    };
    let offsets = partition.offsets();
    let end = offsets.high_watermark;
    let mut offset = offsets.log_start_offset;
    while offset < end {
        let read = match partition.read(offset, 1 << 20).await {
            Ok(read) if read.next_offset > offset => read,
            Ok(_) => break,
            Err(error) => {
                tracing::error!(partition = index, %error, "cannot replay offsets partition");
                break;
            }
        };
        offset = read.next_offset;
        let Ok(bytes) = read.load().await else { break };
        replay_batches(shard, index, &bytes);
    }
    true
}

/// Replays the batches of one read: plain batches load at once; a
/// transactional batch's offsets stay pending until a marker of its
/// producer follows (COMMIT makes them committed, ABORT drops them).
fn replay_batches(shard: &Rc<Shard>, index: i32, bytes: &bytes::Bytes) {
    let partitions = offsets_partitions(shard);
    let mut skipped = 0usize;
    let mut malformed = 0usize;
    for (header, batch) in crate::records::whole_batches(bytes) {
        let mut coordinator = shard.groups.coordinator.borrow_mut();
        if header.is_control() {
            match control_type_of(&batch) {
                Some(control) => {
                    // 1 COMMIT, 0 ABORT; other control records are not markers.
                    if control == 0 || control == 1 {
                        coordinator.complete_txn_offsets(
                            header.producer_id,
                            control == 1,
                            |group| offsets_partition_for(group, partitions) == index,
                        );
                    }
                }
                None => skipped += 1,
            }
            continue;
        }
        let (pairs, batch_skipped) = crate::records::read_keyed_records(&batch);
        skipped += batch_skipped;
        let records = pairs
            .iter()
            .filter_map(|(key, value)| key.as_ref().map(|key| (key.as_ref(), value.as_deref())));
        if header.is_transactional() {
            malformed +=
                coordinator.load_txn_offsets(header.producer_id, header.base_offset, records);
        } else {
            malformed += coordinator.load(header.base_offset, records).malformed;
        }
    }
    if skipped > 0 || malformed > 0 {
        tracing::warn!(
            partition = index,
            skipped,
            malformed,
            "skipped offsets records"
        );
    }
}

/// The type of a control batch's (first) record: its key's second int16.
fn control_type_of(batch: &bytes::Bytes) -> Option<i16> {
    let (pairs, _) = read_control_records(batch);
    let key = pairs.first()?.0.as_ref()?;
    crate::txn::partition_index::decode_control_key(key).ok()
}

/// `read_keyed_records` skips control batches; read one as a plain batch.
fn read_control_records(batch: &bytes::Bytes) -> (Vec<crate::records::KeyValue>, usize) {
    const ATTRIBUTES_AT: usize = 21;
    let mut plain = bytes::BytesMut::from(batch.as_ref());
    if plain.len() < kafki_storage::batch::BATCH_HEADER_BYTES {
        return (Vec::new(), 1);
    }
    let attributes = i16::from_be_bytes([plain[ATTRIBUTES_AT], plain[ATTRIBUTES_AT + 1]])
        & !kafki_storage::batch::ATTRIBUTE_CONTROL;
    plain[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    crate::records::read_keyed_records(&plain.freeze())
}

/// The group's offsets partition if this node coordinates the group (leads
/// that partition), else `NOT_COORDINATOR`: the client asks FindCoordinator
/// again.
fn coordinator_here(shard: &Shard, group: &str) -> Result<i32, i16> {
    let index = offsets_partition_for(group, offsets_partitions(shard));
    if shard
        .metadata()
        .led_by(OFFSETS_TOPIC, index, shard.config.node_id)
    {
        Ok(index)
    } else {
        Err(ResponseError::NotCoordinator.code())
    }
}

/// Runs `operation` on `group`'s coordinator shard, then settles.
pub(crate) async fn on_coordinator<R, F>(
    shard: &Rc<Shard>,
    group: &str,
    operation: F,
) -> Result<R, i16>
where
    R: Send + 'static,
    F: FnOnce(&mut GroupCoordinator, u64) -> R + Send + 'static,
{
    on_coordinator_stored(shard, group, operation)
        .await
        .map(|(result, _)| result)
}

/// [`on_coordinator`], also saying whether the records the call produced
/// were stored (`Err` with the code to answer when not).
pub(crate) async fn on_coordinator_stored<R, F>(
    shard: &Rc<Shard>,
    group: &str,
    operation: F,
) -> Result<(R, Result<(), i16>), i16>
where
    R: Send + 'static,
    F: FnOnce(&mut GroupCoordinator, u64) -> R + Send + 'static,
{
    ensure_offsets_topic(shard).await?;
    let index = coordinator_here(shard, group)?;
    let target = coordinator_shard(shard, group);
    shard
        .invoke_on(target, move |owner| async move {
            if !ensure_loaded(&owner, index).await {
                return Err(ResponseError::CoordinatorLoadInProgress.code());
            }
            let result = operation(&mut owner.groups.coordinator.borrow_mut(), now_ms());
            let stored = settle(&owner).await;
            Ok((result, stored))
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "group coordinator shard unreachable");
            ResponseError::CoordinatorNotAvailable.code()
        })?
}

/// Like [`on_coordinator`] for JoinGroup/SyncGroup, which may park.
pub(crate) async fn on_coordinator_parked<F>(
    shard: &Rc<Shard>,
    group: &str,
    operation: F,
) -> Result<CompletedResponse, i16>
where
    F: FnOnce(&mut GroupCoordinator, u64) -> Outcome<CompletedResponse> + Send + 'static,
{
    ensure_offsets_topic(shard).await?;
    let index = coordinator_here(shard, group)?;
    let target = coordinator_shard(shard, group);
    let answer = shard
        .invoke_on(target, move |owner| async move {
            if !ensure_loaded(&owner, index).await {
                return Err(ResponseError::CoordinatorLoadInProgress.code());
            }
            let outcome = operation(&mut owner.groups.coordinator.borrow_mut(), now_ms());
            let receiver = match outcome {
                Outcome::Ready(response) => {
                    let _ = settle(&owner).await;
                    return Ok(Some(response));
                }
                Outcome::Pending(ticket) => {
                    let (sender, receiver) = futures::channel::oneshot::channel();
                    owner.groups.waiters.borrow_mut().insert(ticket.0, sender);
                    receiver
                }
            };
            let _ = settle(&owner).await;
            Ok(receiver.await.ok())
        })
        .await;
    match answer {
        Ok(Ok(Some(response))) => Ok(response),
        Ok(Err(code)) => Err(code),
        _ => Err(ResponseError::CoordinatorNotAvailable.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transactional_offsets_batch_is_valid_and_names_its_producer() {
        let plain = crate::records::build_keyed_batch(&[(Some(b"k".as_ref()), Some(b"v"))], 1);
        let producer = super::super::TxnProducer {
            producer_id: 42,
            producer_epoch: 3,
        };
        let stamped = transactional_batch(plain, producer, 5);
        let header =
            kafki_storage::batch::validate_producer_batch(&stamped).expect("a valid batch");
        assert!(header.is_transactional() && !header.is_control());
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 5)
        );
        let (records, skipped) = crate::records::read_keyed_records(&stamped);
        assert_eq!((records.len(), skipped), (1, 0));
    }

    #[test]
    fn a_control_batch_reads_as_its_marker_type() {
        let commit = crate::txn::EndTxnMarker {
            control_type: crate::txn::ControlType::Commit,
            coordinator_epoch: 1,
        };
        let key = commit.encode_key();
        let value = commit.encode_value();
        let plain =
            crate::records::build_keyed_batch(&[(Some(key.as_ref()), Some(value.as_ref()))], 1);
        let mut control = bytes::BytesMut::from(plain.as_ref());
        let attributes = kafki_storage::batch::ATTRIBUTE_CONTROL.to_be_bytes();
        control[21..23].copy_from_slice(&attributes);
        assert_eq!(control_type_of(&control.freeze()), Some(1));
    }
}
