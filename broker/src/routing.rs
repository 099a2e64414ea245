//! Where a request goes: the nodes clients are told about (each with its
//! advertised address), who leads each partition, which node coordinates a
//! group, and which node clients should treat as the controller. A single
//! node answers with itself; a cluster member answers from the metadata
//! image every node shares: a partition's replication state where it has
//! one (leader, replicas, ISR), else its topic's placement.

use crate::metadata::nodes::Leader;
use crate::metadata::ClusterMetadata;
use crate::shard::Shard;

/// A node as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// The nodes to list in Metadata and DescribeCluster: every live node of
/// the cluster (this one first if it is alive), or this node alone.
pub fn brokers(shard: &Shard, metadata: &ClusterMetadata) -> Vec<NodeAddress> {
    if shard.config.cluster.is_none() || !metadata.is_cluster() {
        return vec![NodeAddress {
            id: shard.config.node_id,
            host: shard.config.advertise_host.clone(),
            port: i32::from(shard.config.advertise_port),
            rack: None,
        }];
    }
    metadata
        .live_nodes()
        .map(|node| NodeAddress {
            id: node.id,
            host: node.host.clone(),
            port: i32::from(node.port),
            rack: node.rack.clone(),
        })
        .collect()
}

/// The node a partition's requests go to, or `None` while it has no leader
/// (its node is fenced or gone: clients get `LEADER_NOT_AVAILABLE`).
pub fn leader_of(
    shard: &Shard,
    metadata: &ClusterMetadata,
    topic: &str,
    partition: i32,
) -> Option<i32> {
    match metadata.leader(topic, partition) {
        Leader::ThisNode => Some(shard.config.node_id),
        Leader::Node(node) => Some(node),
        Leader::Offline => None,
    }
}

/// The replicas of a partition as Metadata lists them.
pub fn replicas_of(
    shard: &Shard,
    metadata: &ClusterMetadata,
    topic: &str,
    partition: i32,
) -> Vec<i32> {
    metadata
        .replicas(topic, partition)
        .map(<[i32]>::to_vec)
        .unwrap_or_else(|| vec![shard.config.node_id])
}

/// The in-sync replicas of a partition as Metadata lists them: its
/// replication state's ISR (kept while it is offline, as Kafka shows it);
/// without one, its replicas while it has a leader and none otherwise (a
/// partition with one replica, as before replication).
pub fn isr_of(shard: &Shard, metadata: &ClusterMetadata, topic: &str, partition: i32) -> Vec<i32> {
    if let Some(record) = metadata.partition_record(topic, partition) {
        return record.isr.clone();
    }
    match leader_of(shard, metadata, topic, partition) {
        Some(_) => replicas_of(shard, metadata, topic, partition),
        None => Vec::new(),
    }
}

/// The replicas of a partition whose node is not alive (Metadata's
/// `offline_replicas`); none on a single node.
pub fn offline_replicas_of(metadata: &ClusterMetadata, topic: &str, partition: i32) -> Vec<i32> {
    if !metadata.is_cluster() {
        return Vec::new();
    }
    metadata
        .replicas(topic, partition)
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|node| !metadata.is_alive(*node))
        .collect()
}

/// The id clients are given as the controller: admin requests sent to any
/// node are forwarded through the quorum, so this is the active controller
/// when it is a live node, else this node.
pub fn controller_id(shard: &Shard, metadata: &ClusterMetadata) -> i32 {
    let leader = shard.shared.cluster.get().and_then(|shared| {
        shared
            .status
            .lock()
            .ok()
            .and_then(|status| status.leader_id)
    });
    match leader {
        Some(id) if metadata.live_nodes().any(|node| node.id == id) => id,
        _ => shard.config.node_id,
    }
}

/// Where a node is reached, if it is alive.
pub fn address_of(shard: &Shard, metadata: &ClusterMetadata, node: i32) -> Option<NodeAddress> {
    brokers(shard, metadata)
        .into_iter()
        .find(|address| address.id == node)
}
