//! The consumer-group runtime around the pure coordinator: each shard's
//! [`GroupShard`], routing a group to its coordinator shard, parking
//! JoinGroup/SyncGroup until their rebalance completes, persisting the
//! coordinator's records in `__consumer_offsets` (a commit becomes visible
//! only once stored), the timer, and the reload at start-up.
//!
//! Group `g` is coordinated by the shard that owns partition
//! `fnv1a(g) mod offsets.topic.num.partitions` of `__consumer_offsets`, so a
//! group's state and its offsets records live on the same core.

pub use super::txn_hook::complete_txn_offsets;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use kafki_net::kafka_protocol::error::ResponseError;

use super::{records, CompletedResponse, GroupConfig, GroupCoordinator, Outcome};
use crate::errors::KafkaError;
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

/// `offsets.topic.replication.factor`, at most the live nodes (1 on a
/// single node).
fn offsets_replication_factor(shard: &Shard) -> i16 {
    if shard.config.cluster.is_none() {
        return 1;
    }
    let wanted = shard
        .config
        .kafka
        .get_i64("offsets.topic.replication.factor")
        .unwrap_or(3)
        .max(1);
    let live = shard.metadata().live_nodes().count().max(1) as i64;
    i16::try_from(wanted.min(live)).unwrap_or(1)
}

/// Creates `__consumer_offsets` if it does not exist yet.
pub(crate) async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<(), i16> {
    if shard.metadata().topic(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    // Kafka's defaults for the offsets topic: compacted, in segments of
    // `offsets.topic.segment.bytes` (100 MiB) so that the cleaner, which
    // never touches the active segment, gets sealed segments to clean.
    let segment_bytes = shard.config.settings.offsets_topic_segment_bytes;
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]);
    match shard
        .create_topic(
            OFFSETS_TOPIC.to_string(),
            offsets_partitions(shard),
            offsets_replication_factor(shard),
            configs,
            false,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(KafkaError { code, .. }) if code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err(error) => {
            tracing::error!(%error, "cannot create {OFFSETS_TOPIC}");
            Err(ResponseError::CoordinatorNotAvailable.code())
        }
    }
}

/// Drains what the coordinator produced: answers parked requests and
/// persists records, in order; offset commits become visible once their
/// records reached the commit stage. Runs on the coordinator's shard, right
/// after the call that produced them (no await between: the records are
/// that call's). `Err` carries the code for a commit that was not stored.
async fn settle(shard: &Rc<Shard>) -> Result<(), i16> {
    let (completions, records, commits) = {
        let mut coordinator = shard.groups.coordinator.borrow_mut();
        (
            coordinator.take_completed(),
            coordinator.take_records(),
            coordinator.take_pending_commits(),
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
    let stored = persist(shard, records).await;
    if stored.is_ok() {
        shard.groups.coordinator.borrow_mut().apply_commits(commits);
    } else if !commits.is_empty() {
        tracing::warn!(
            commits = commits.len(),
            "offset commits not stored; answered COORDINATOR_NOT_AVAILABLE and not applied"
        );
    }
    stored
}

/// Appends coordinator records to their `__consumer_offsets` partitions and
/// waits for the commit stage. `Err` (COORDINATOR_NOT_AVAILABLE, which every
/// client retries after finding the coordinator again) when any of them
/// was not stored.
async fn persist(shard: &Rc<Shard>, records: Vec<records::OffsetsRecord>) -> Result<(), i16> {
    if records.is_empty() {
        return Ok(());
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
        if let Err(refused) = appended {
            tracing::error!(
                partition = index,
                error = %refused.error,
                "offsets records not stored"
            );
            outcome = Err(not_stored);
        }
    }
    outcome
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
        let (pairs, skipped) = crate::records::read_keyed_records(&bytes);
        let stats =
            shard
                .groups
                .coordinator
                .borrow_mut()
                .load(pairs.iter().filter_map(|(key, value)| {
                    key.as_ref().map(|key| (key.as_ref(), value.as_deref()))
                }));
        if skipped > 0 || stats.malformed > 0 {
            tracing::warn!(
                partition = index,
                skipped,
                malformed = stats.malformed,
                "skipped offsets records"
            );
        }
    }
    true
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
