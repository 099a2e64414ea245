//! Writing a transaction's COMMIT/ABORT markers to its partitions: the
//! partition-leader side of a coordinator's decision ([`MarkerRequest`]),
//! and of Kafka's WriteTxnMarkers. Partitions this node leads are written
//! on their owner shard ([`crate::partition::Partition::append_marker`]);
//! partitions led by another node are forwarded to it over the node links
//! (`TxnMarkers` frames, [`crate::replication::links`]); a partition whose
//! leader is unknown or offline answers `NOT_LEADER_OR_FOLLOWER`, retriable,
//! so the coordinator tries again later. Once a marker is durable on a
//! `__consumer_offsets` partition, that partition's shard completes the
//! producer's transactional offset commits
//! ([`crate::group::runtime::complete_txn_offsets`]).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;

use crate::metadata::nodes::Leader;
use crate::shard::Shard;
use crate::txn::marker_frames::{MarkerPartition, MarkersAnswer, MarkersRequest};
use crate::txn::{ControlType, EndTxnMarker, MarkerRequest, TopicPartition};

/// One marker to write to some partitions: who it is for and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerWrite {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: EndTxnMarker,
}

impl MarkerWrite {
    pub fn of(request: &MarkerRequest) -> Self {
        Self {
            producer_id: request.producer.producer_id,
            producer_epoch: request.producer.epoch,
            marker: EndTxnMarker {
                control_type: request.result,
                coordinator_epoch: request.coordinator_epoch,
            },
        }
    }
}

/// Writes `request`'s marker to each of its partitions (wherever they are
/// led) and answers an error code per partition, 0 when the marker is
/// written and committed there. Retriable codes (`NOT_LEADER_OR_FOLLOWER`,
/// `REQUEST_TIMED_OUT`, `NOT_ENOUGH_REPLICAS`, ...) ask for a retry.
pub async fn write_markers(
    shard: &Rc<Shard>,
    request: &MarkerRequest,
) -> Vec<(TopicPartition, i16)> {
    let write = MarkerWrite::of(request);
    let metadata = shard.metadata();
    let me = shard.config.node_id;
    let mut local = Vec::new();
    let mut remote: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
    let mut answers = Vec::with_capacity(request.partitions.len());
    for partition in &request.partitions {
        match metadata.leader(&partition.topic, partition.partition) {
            Leader::ThisNode => local.push(partition.clone()),
            Leader::Node(node) if node == me => local.push(partition.clone()),
            Leader::Node(node) => remote.entry(node).or_default().push(partition.clone()),
            Leader::Offline => {
                answers.push((partition.clone(), ResponseError::NotLeaderOrFollower.code()));
            }
        }
    }
    let forwards = remote.into_iter().map(|(node, partitions)| {
        let shard = shard.clone();
        async move { forward_markers(&shard, node, write, partitions).await }
    });
    let (written, forwarded) = futures::future::join(
        write_local_markers(shard, write, local),
        futures::future::join_all(forwards),
    )
    .await;
    answers.extend(written);
    answers.extend(forwarded.into_iter().flatten());
    answers
}

/// Asks `node` (the partitions' leader) to write the marker; a node that
/// cannot be asked or does not answer leaves every partition retriable.
async fn forward_markers(
    shard: &Rc<Shard>,
    node: i32,
    write: MarkerWrite,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, i16)> {
    let retriable = |partitions: Vec<TopicPartition>| {
        partitions
            .into_iter()
            .map(|partition| (partition, ResponseError::NotLeaderOrFollower.code()))
            .collect::<Vec<_>>()
    };
    let Some(links) = shard.replica_links() else {
        tracing::debug!(node, "no node links to forward markers over");
        return retriable(partitions);
    };
    match links.ask_markers(node, write, partitions.clone()).await {
        Some(answers) => answers,
        None => {
            tracing::debug!(
                node,
                partitions = partitions.len(),
                "markers not answered by their leader; retriable"
            );
            retriable(partitions)
        }
    }
}

/// Shard 0, for another node: writes a forwarded marker to the partitions
/// named by topic id (an id unknown here answers
/// `UNKNOWN_TOPIC_OR_PARTITION`; one not led here `NOT_LEADER_OR_FOLLOWER`).
pub async fn answer_forwarded(
    shard: &Rc<Shard>,
    image: &crate::metadata::ClusterMetadata,
    request: MarkersRequest,
) -> MarkersAnswer {
    let write = MarkerWrite {
        producer_id: request.producer_id,
        producer_epoch: request.producer_epoch,
        marker: request.marker,
    };
    let mut codes = Vec::with_capacity(request.partitions.len());
    let mut ids: BTreeMap<(String, i32), MarkerPartition> = BTreeMap::new();
    for id in request.partitions {
        match image.topic_by_id(id.topic_id) {
            Some(topic) => {
                ids.insert((topic.name.clone(), id.partition_index), id);
            }
            None => codes.push((id, ResponseError::UnknownTopicOrPartition.code())),
        }
    }
    let partitions = ids
        .keys()
        .map(|(topic, index)| TopicPartition::new(topic.clone(), *index))
        .collect();
    for (partition, code) in write_local_markers(shard, write, partitions).await {
        if let Some(id) = ids.get(&(partition.topic, partition.partition)) {
            codes.push((*id, code));
        }
    }
    MarkersAnswer {
        request_id: request.request_id,
        asking_shard: request.asking_shard,
        partitions: codes,
    }
}

/// Writes the marker to each partition on its owner shard, if this node
/// leads it (else `NOT_LEADER_OR_FOLLOWER`, or the partition's own error:
/// unknown, storage). What WriteTxnMarkers does for each of its partitions.
pub async fn write_local_markers(
    shard: &Rc<Shard>,
    write: MarkerWrite,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, i16)> {
    let mut by_shard: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
    for partition in partitions {
        by_shard
            .entry(shard.owner_of(&partition.topic, partition.partition))
            .or_default()
            .push(partition);
    }
    let calls = by_shard.into_iter().map(|(owner, partitions)| {
        let fallback = partitions.clone();
        async move {
            let written = shard
                .invoke_on(owner, move |owner| async move {
                    let writes = partitions.into_iter().map(|partition| {
                        let owner = owner.clone();
                        async move {
                            let code = write_on_owner(&owner, write, &partition).await;
                            (partition, code)
                        }
                    });
                    futures::future::join_all(writes).await
                })
                .await;
            written.unwrap_or_else(|error| {
                tracing::error!(%error, "markers: owner shard unreachable");
                fallback
                    .into_iter()
                    .map(|partition| (partition, ResponseError::UnknownServerError.code()))
                    .collect()
            })
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// On the partition's owner shard: appends the marker and, on a
/// `__consumer_offsets` partition, completes the producer's transactional
/// offset commits once it is durable.
async fn write_on_owner(shard: &Rc<Shard>, write: MarkerWrite, partition: &TopicPartition) -> i16 {
    let led = match shard.partition(&partition.topic, partition.partition).await {
        Ok(led) => led,
        Err(code) => return code,
    };
    let written = led
        .append_marker(write.producer_id, write.producer_epoch, write.marker)
        .await;
    drop(led);
    match written {
        Ok(_) => {
            if partition.topic == crate::group::runtime::OFFSETS_TOPIC {
                crate::group::runtime::complete_txn_offsets(
                    shard,
                    partition.partition,
                    write.producer_id,
                    write.marker.control_type == ControlType::Commit,
                )
                .await;
            }
            0
        }
        Err(code) => {
            tracing::debug!(topic = %partition.topic, partition = partition.partition, producer_id = write.producer_id, code, "marker refused");
            code
        }
    }
}
