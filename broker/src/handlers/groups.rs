//! Consumer groups (classic protocol) on top of the pure coordinator in
//! [`crate::group`]: routing, parking JoinGroup/SyncGroup until their
//! rebalance completes, and persisting the coordinator's records in the
//! internal topic `__consumer_offsets`.
//!
//! Group `g` is coordinated by the shard that owns partition
//! `fnv1a(g) mod offsets.topic.num.partitions` of `__consumer_offsets`, so a
//! group's state and its offsets records live on the same core. A commit is
//! answered only after its records reached the topic's commit stage
//! (durable by default), so a committed offset survives a crash.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafki_net::kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};

use super::str_bytes;
use crate::group::{records, CompletedResponse, GroupConfig, GroupCoordinator, Outcome};
use crate::placement::fnv1a_32;
use crate::shard::Shard;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Longest pause of the per-shard group timer.
const TICK_MAX: Duration = Duration::from_millis(100);

/// The per-shard group state: the coordinator and the parked requests.
pub struct GroupShard {
    pub coordinator: std::cell::RefCell<GroupCoordinator>,
    waiters: std::cell::RefCell<HashMap<u64, futures::channel::oneshot::Sender<CompletedResponse>>>,
}

impl GroupShard {
    pub fn new(config: &crate::config::BrokerConfig, shard_id: usize) -> Self {
        let delay = config
            .kafka
            .get_i64("group.initial.rebalance.delay.ms")
            .filter(|delay| *delay >= 0)
            .unwrap_or(3000) as u64;
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 ^ shard_id as u64;
        let group_config = GroupConfig {
            initial_rebalance_delay_ms: delay,
            member_id_seed: seed,
            ..GroupConfig::default()
        };
        Self {
            coordinator: std::cell::RefCell::new(GroupCoordinator::new(group_config)),
            waiters: std::cell::RefCell::new(HashMap::new()),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn offsets_partitions(shard: &Shard) -> i32 {
    shard
        .config
        .kafka
        .get_i64("offsets.topic.num.partitions")
        .filter(|count| *count > 0 && *count <= 1000)
        .unwrap_or(50) as i32
}

pub fn offsets_partition_for(group: &str, partitions: i32) -> i32 {
    (fnv1a_32(group.as_bytes()) % partitions.max(1) as u32) as i32
}

fn coordinator_shard(shard: &Shard, group: &str) -> usize {
    shard.owner_of(
        OFFSETS_TOPIC,
        offsets_partition_for(group, offsets_partitions(shard)),
    )
}

/// Creates `__consumer_offsets` if it does not exist yet.
async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<(), i16> {
    if shard.metadata().topic(OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    // Kafka's defaults for the offsets topic: compacted, in segments of
    // `offsets.topic.segment.bytes` (100 MiB) so that the cleaner, which
    // never touches the active segment, gets sealed segments to clean.
    let segment_bytes = shard
        .config
        .kafka
        .get_i64("offsets.topic.segment.bytes")
        .filter(|bytes| *bytes > 0)
        .unwrap_or(104_857_600);
    let configs = BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]);
    match shard
        .create_topic(
            OFFSETS_TOPIC.to_string(),
            offsets_partitions(shard),
            configs,
            false,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err((code, _)) if code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err((code, message)) => {
            tracing::error!(code, %message, "cannot create {OFFSETS_TOPIC}");
            Err(ResponseError::CoordinatorNotAvailable.code())
        }
    }
}

/// Drains what the coordinator produced: answers parked requests and
/// persists records, in order. Runs on the coordinator's shard.
async fn settle(shard: &Rc<Shard>) {
    let (completions, records) = {
        let mut coordinator = shard.groups.coordinator.borrow_mut();
        (coordinator.take_completed(), coordinator.take_records())
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
    persist(shard, records).await;
}

/// Appends coordinator records to their `__consumer_offsets` partitions and
/// waits for the commit stage.
async fn persist(shard: &Rc<Shard>, records: Vec<records::OffsetsRecord>) {
    if records.is_empty() {
        return;
    }
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
                continue;
            }
        };
        match partition.log.append(batch, partition.leader_epoch).await {
            Ok(info) => {
                if let Err(error) = partition.wait_committed(info.last_offset + 1).await {
                    tracing::error!(%error, "offsets records not committed");
                }
            }
            Err(error) => tracing::error!(%error, "offsets records not appended"),
        }
    }
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
        settle(&shard).await;
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
        let Ok(partition) = shard.partition(OFFSETS_TOPIC, index).await else {
            continue;
        };
        let offsets = partition.log.offsets();
        let end = partition.high_watermark_of(&offsets);
        let mut offset = offsets.log_start_offset;
        while offset < end {
            let read = match partition.log.read(offset, 1 << 20, end).await {
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
            let stats = shard
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
    }
    let groups = shard.groups.coordinator.borrow().group_count();
    if groups > 0 {
        tracing::info!(shard = shard.id, groups, "consumer groups loaded");
    }
}

/// Runs `operation` on `group`'s coordinator shard, then settles.
async fn on_coordinator<R, F>(shard: &Rc<Shard>, group: &str, operation: F) -> Result<R, i16>
where
    R: Send + 'static,
    F: FnOnce(&mut GroupCoordinator, u64) -> R + Send + 'static,
{
    ensure_offsets_topic(shard).await?;
    let target = coordinator_shard(shard, group);
    shard
        .invoke_on(target, move |owner| async move {
            let result = operation(&mut owner.groups.coordinator.borrow_mut(), now_ms());
            settle(&owner).await;
            result
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "group coordinator shard unreachable");
            ResponseError::CoordinatorNotAvailable.code()
        })
}

/// Like [`on_coordinator`] for JoinGroup/SyncGroup, which may park.
async fn on_coordinator_parked<F>(
    shard: &Rc<Shard>,
    group: &str,
    operation: F,
) -> Result<CompletedResponse, i16>
where
    F: FnOnce(&mut GroupCoordinator, u64) -> Outcome<CompletedResponse> + Send + 'static,
{
    ensure_offsets_topic(shard).await?;
    let target = coordinator_shard(shard, group);
    let answer = shard
        .invoke_on(target, move |owner| async move {
            let outcome = operation(&mut owner.groups.coordinator.borrow_mut(), now_ms());
            let receiver = match outcome {
                Outcome::Ready(response) => {
                    settle(&owner).await;
                    return Some(response);
                }
                Outcome::Pending(ticket) => {
                    let (sender, receiver) = futures::channel::oneshot::channel();
                    owner.groups.waiters.borrow_mut().insert(ticket.0, sender);
                    receiver
                }
            };
            settle(&owner).await;
            receiver.await.ok()
        })
        .await;
    match answer {
        Ok(Some(response)) => Ok(response),
        _ => Err(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub async fn find_coordinator(
    shard: &Rc<Shard>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let keys: Vec<String> = if version >= 4 {
        request
            .coordinator_keys
            .iter()
            .map(|key| key.to_string())
            .collect()
    } else {
        vec![request.key.to_string()]
    };
    let ready = ensure_offsets_topic(shard).await;
    let node = shard.config.node_id;
    let host = str_bytes(&shard.config.advertise_host);
    let port = i32::from(shard.config.advertise_port);
    // Key type 0 is a group; 1 (transactions) is not supported yet.
    let supported = request.key_type == 0;
    let code = match (&ready, supported) {
        (Err(code), _) => *code,
        (Ok(()), false) => ResponseError::InvalidRequest.code(),
        (Ok(()), true) => 0,
    };
    if version >= 4 {
        let coordinators = keys
            .into_iter()
            .map(|key| {
                let mut coordinator = Coordinator::default()
                    .with_key(str_bytes(&key))
                    .with_error_code(code);
                if code == 0 {
                    coordinator = coordinator
                        .with_node_id(BrokerId(node))
                        .with_host(host.clone())
                        .with_port(port);
                }
                coordinator
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let mut response = FindCoordinatorResponse::default().with_error_code(code);
    if code == 0 {
        response = response
            .with_node_id(BrokerId(node))
            .with_host(host)
            .with_port(port);
    } else {
        response = response.with_node_id(BrokerId(-1)).with_port(-1);
    }
    response
}

pub async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> JoinGroupResponse {
    let group = request.group_id.to_string();
    let outcome = on_coordinator_parked(shard, &group, move |coordinator, now| {
        match coordinator.join(now, version, &request, &client_id, &client_host) {
            Outcome::Ready(response) => Outcome::Ready(CompletedResponse::Join(response)),
            Outcome::Pending(ticket) => Outcome::Pending(ticket),
        }
    })
    .await;
    match outcome {
        Ok(CompletedResponse::Join(response)) => response,
        Ok(CompletedResponse::Sync(_)) | Err(_) => JoinGroupResponse::default()
            .with_error_code(
                outcome
                    .err()
                    .unwrap_or(ResponseError::UnknownServerError.code()),
            )
            .with_generation_id(-1),
    }
}

pub async fn sync_group(
    shard: &Rc<Shard>,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group = request.group_id.to_string();
    let outcome = on_coordinator_parked(shard, &group, move |coordinator, now| {
        match coordinator.sync(now, version, &request) {
            Outcome::Ready(response) => Outcome::Ready(CompletedResponse::Sync(response)),
            Outcome::Pending(ticket) => Outcome::Pending(ticket),
        }
    })
    .await;
    match outcome {
        Ok(CompletedResponse::Sync(response)) => response,
        Ok(CompletedResponse::Join(_)) | Err(_) => SyncGroupResponse::default().with_error_code(
            outcome
                .err()
                .unwrap_or(ResponseError::UnknownServerError.code()),
        ),
    }
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    request: HeartbeatRequest,
    version: i16,
) -> HeartbeatResponse {
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, move |coordinator, now| {
        coordinator.heartbeat(now, version, &request)
    })
    .await
    .unwrap_or_else(|code| HeartbeatResponse::default().with_error_code(code))
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, move |coordinator, now| {
        coordinator.leave(now, version, &request)
    })
    .await
    .unwrap_or_else(|code| LeaveGroupResponse::default().with_error_code(code))
}

pub async fn offset_commit(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    use kafki_net::kafka_protocol::messages::offset_commit_response::{
        OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    };
    let group = request.group_id.to_string();
    let topics: Vec<(kafki_net::kafka_protocol::messages::TopicName, Vec<i32>)> = request
        .topics
        .iter()
        .map(|topic| {
            (
                topic.name.clone(),
                topic
                    .partitions
                    .iter()
                    .map(|partition| partition.partition_index)
                    .collect(),
            )
        })
        .collect();
    match on_coordinator(shard, &group, move |coordinator, now| {
        coordinator.commit_offsets(now, version, &request)
    })
    .await
    {
        Ok(response) => response,
        Err(code) => {
            // Every partition carries the error, as Kafka answers.
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|index| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetCommitResponse::default().with_topics(topics)
        }
    }
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version < 8 {
        let group = request.group_id.to_string();
        return on_coordinator(shard, &group, move |coordinator, _| {
            coordinator.fetch_offsets(version, &request)
        })
        .await
        .unwrap_or_else(|code| OffsetFetchResponse::default().with_error_code(code));
    }
    let mut merged = OffsetFetchResponse::default();
    for wanted in &request.groups {
        let group = wanted.group_id.to_string();
        let single = request.clone().with_groups(vec![wanted.clone()]);
        match on_coordinator(shard, &group, move |coordinator, _| coordinator.fetch_offsets(version, &single)).await {
            Ok(response) => merged.groups.extend(response.groups),
            Err(code) => merged.groups.push(
                kafki_net::kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup::default()
                    .with_group_id(wanted.group_id.clone())
                    .with_error_code(code),
            ),
        }
    }
    merged
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut merged = DescribeGroupsResponse::default();
    for group in &request.groups {
        let single = request.clone().with_groups(vec![group.clone()]);
        let name = group.to_string();
        if let Ok(response) = on_coordinator(shard, &name, move |coordinator, _| {
            coordinator.describe(version, &single)
        })
        .await
        {
            merged.groups.extend(response.groups);
        }
    }
    merged
}

pub async fn list_groups(
    shard: &Rc<Shard>,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut merged = ListGroupsResponse::default();
    for target in 0..shard.count {
        let request = request.clone();
        if let Ok(response) = shard
            .invoke_on(target, move |owner| async move {
                owner.groups.coordinator.borrow().list(version, &request)
            })
            .await
        {
            if response.error_code != 0 {
                merged.error_code = response.error_code;
            }
            merged.groups.extend(response.groups);
        }
    }
    merged
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
    version: i16,
) -> DeleteGroupsResponse {
    let mut merged = DeleteGroupsResponse::default();
    for group in &request.groups_names {
        let single = request.clone().with_groups_names(vec![group.clone()]);
        let name = group.to_string();
        if let Ok(response) = on_coordinator(shard, &name, move |coordinator, now| {
            coordinator.delete(now, version, &single)
        })
        .await
        {
            merged.results.extend(response.results);
        }
    }
    merged
}
