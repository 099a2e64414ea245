//! Consumer-group requests (classic protocol): each is translated into a
//! call of the pure coordinator ([`crate::group`]) run on the group's
//! coordinator shard by the runtime ([`crate::group::runtime`]), and its
//! answer into the response. A commit is answered only after its records
//! reached `__consumer_offsets`' commit stage (durable by default), so a
//! committed offset survives a crash. TxnOffsetCommit is answered the same
//! way; its offsets become visible at the transaction's COMMIT marker.
//! FindCoordinator also answers transactional ids (key type 1).

use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafki_net::kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};

use super::str_bytes;
use crate::group::runtime::{
    ensure_offsets_topic, on_coordinator, on_coordinator_parked, on_coordinator_stored,
};
use crate::group::{CompletedResponse, Outcome};
use crate::shard::Shard;

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
    // Key type 0 is a group, 1 a transactional id; others (share groups)
    // are not supported.
    const GROUP: i8 = 0;
    const TRANSACTION: i8 = 1;
    let key_type = request.key_type;
    let ready = match key_type {
        GROUP => ensure_offsets_topic(shard).await,
        TRANSACTION => crate::txn::runtime::ensure_txn_topic(shard).await,
        _ => Err(ResponseError::InvalidRequest.code()),
    };
    let code = match &ready {
        Err(code) => *code,
        Ok(()) => 0,
    };
    // The coordinator is the node leading the key's partition of
    // `__consumer_offsets` or `__transaction_state`.
    let metadata = shard.metadata();
    let coordinator_of = |key: &str| -> Result<crate::routing::NodeAddress, i16> {
        if code != 0 {
            return Err(code);
        }
        let (topic, partition) = if key_type == TRANSACTION {
            if key.is_empty() || key.len() > i16::MAX as usize {
                return Err(ResponseError::InvalidRequest.code());
            }
            (
                crate::txn::runtime::TXN_TOPIC,
                crate::txn::runtime::txn_partition_for(shard, key),
            )
        } else {
            (
                crate::group::runtime::OFFSETS_TOPIC,
                crate::group::runtime::offsets_partition_for(
                    key,
                    crate::group::runtime::offsets_partitions(shard),
                ),
            )
        };
        crate::routing::leader_of(shard, &metadata, topic, partition)
            .and_then(|node| crate::routing::address_of(shard, &metadata, node))
            .ok_or(ResponseError::CoordinatorNotAvailable.code())
    };
    if version >= 4 {
        let coordinators = keys
            .into_iter()
            .map(|key| {
                let coordinator = Coordinator::default().with_key(str_bytes(&key));
                match coordinator_of(&key) {
                    Ok(node) => coordinator
                        .with_node_id(BrokerId(node.id))
                        .with_host(str_bytes(&node.host))
                        .with_port(node.port),
                    Err(code) => coordinator
                        .with_error_code(code)
                        .with_node_id(BrokerId(-1))
                        .with_port(-1),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match coordinator_of(keys.first().map(String::as_str).unwrap_or("")) {
        Ok(node) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node.id))
            .with_host(str_bytes(&node.host))
            .with_port(node.port),
        Err(code) => FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
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
    let outcome = on_coordinator_stored(shard, &group, move |coordinator, now| {
        coordinator.commit_offsets(now, version, &request)
    })
    .await;
    match outcome {
        Ok((response, Ok(()))) => response,
        // Accepted but not stored: every partition the coordinator
        // accepted is answered with the storage failure instead.
        Ok((mut response, Err(code))) => {
            for topic in &mut response.topics {
                for partition in &mut topic.partitions {
                    if partition.error_code == 0 {
                        partition.error_code = code;
                    }
                }
            }
            response
        }
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

/// TxnOffsetCommit (v0–v4): offsets of a transactional producer, held
/// pending by the group coordinator until the transaction's marker. Old
/// clients (< v2) get INVALID_PRODUCER_EPOCH where Kafka fences.
pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    request: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    use kafki_net::kafka_protocol::messages::txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
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
    let outcome = on_coordinator_stored(shard, &group, move |coordinator, now| {
        coordinator.txn_commit_offsets(now, &request)
    })
    .await;
    let legacy = |code: i16| {
        if version < 2 && code == ResponseError::ProducerFenced.code() {
            ResponseError::InvalidProducerEpoch.code()
        } else {
            code
        }
    };
    match outcome {
        Ok((mut response, stored)) => {
            for topic in &mut response.topics {
                for partition in &mut topic.partitions {
                    if let (0, Err(code)) = (partition.error_code, stored) {
                        partition.error_code = code;
                    }
                    partition.error_code = legacy(partition.error_code);
                }
            }
            response
        }
        Err(code) => {
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    TxnOffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|index| {
                                    TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(legacy(code))
                                })
                                .collect(),
                        )
                })
                .collect();
            TxnOffsetCommitResponse::default().with_topics(topics)
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
