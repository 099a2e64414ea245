//! The cluster's nodes as the metadata image holds them (registration,
//! state, epoch), where each partition is led, and the pure placement of a
//! new topic's partitions over the live nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ClusterMetadata;

/// A node as it registered with the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub id: i32,
    /// The metadata offset of its latest registration: a node that comes
    /// back (after a fence or a restart) registers again and gets a new one,
    /// so a change decided about its earlier incarnation cannot apply.
    pub epoch: u64,
    /// Where Kafka clients reach it (its advertised listener).
    pub host: String,
    pub port: u16,
    /// Where other nodes reach it (`--cluster-listen`).
    pub cluster_listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// Its shard count (partitions are placed over shards within it).
    pub shards: usize,
    /// Random per process start: how a node recognises its own
    /// registration in the log (an observer's goes through another node).
    #[serde(default)]
    pub incarnation: u64,
    pub state: NodeState,
}

/// What the controller knows of a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeating: it leads its partitions.
    Alive,
    /// Its heartbeats stopped for longer than the session timeout: its
    /// partitions have no leader until it registers again.
    Fenced,
    /// Stopping cleanly (told the controller): no new partitions go to it.
    ShuttingDown,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Fenced => "fenced",
            NodeState::ShuttingDown => "shutting_down",
        }
    }
}

/// Who leads a partition, as a request handler needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    /// A single node: every partition is this node's.
    ThisNode,
    /// A cluster member leads it and is alive.
    Node(i32),
    /// Its node is fenced, shutting down or gone: nobody serves it.
    Offline(i32),
}

impl ClusterMetadata {
    /// Whether this image belongs to a cluster (has nodes), not one node.
    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Who leads `topic`/`partition`. A partition without replicas (a
    /// single node's, or a topic from before the cluster) is this node's.
    pub fn leader(&self, topic: &str, partition: i32) -> Leader {
        let node = self
            .topics
            .get(topic)
            .and_then(|meta| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|p| meta.replicas.get(p))
            })
            .and_then(|replicas| replicas.first().copied());
        match node {
            None => Leader::ThisNode,
            Some(node) => match self.nodes.get(&node) {
                Some(registration) if registration.state == NodeState::Alive => Leader::Node(node),
                _ => Leader::Offline(node),
            },
        }
    }

    /// Whether node `me` serves `topic`/`partition` now.
    pub fn led_by(&self, topic: &str, partition: i32, me: i32) -> bool {
        match self.leader(topic, partition) {
            Leader::ThisNode => true,
            Leader::Node(node) => node == me,
            Leader::Offline(_) => false,
        }
    }

    /// The nodes that are alive, by id.
    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeRegistration> {
        self.nodes
            .values()
            .filter(|node| node.state == NodeState::Alive)
    }

    /// How many partitions (of any topic) each node leads.
    fn partitions_per_node(&self) -> BTreeMap<i32, usize> {
        let mut counts = BTreeMap::new();
        for topic in self.topics.values() {
            for replicas in &topic.replicas {
                if let Some(node) = replicas.first() {
                    *counts.entry(*node).or_default() += 1;
                }
            }
        }
        counts
    }

    /// Nodes for `count` new partitions (one replica each): the live nodes
    /// that lead the fewest partitions first, ties by id, so partitions (and
    /// load) spread evenly; racks alternate where nodes name them. Empty
    /// when no node is alive (the caller answers an error).
    pub fn place_partitions(&self, count: usize) -> Vec<Vec<i32>> {
        let mut load = self.partitions_per_node();
        let live: Vec<&NodeRegistration> = self.live_nodes().collect();
        if live.is_empty() {
            return Vec::new();
        }
        let mut placed = Vec::with_capacity(count);
        let mut last_rack: Option<&str> = None;
        for _ in 0..count {
            let pick = live
                .iter()
                .min_by_key(|node| {
                    let same_rack = last_rack.is_some() && node.rack.as_deref() == last_rack;
                    (load.get(&node.id).copied().unwrap_or(0), same_rack, node.id)
                })
                .map(|node| (node.id, node.rack.as_deref()));
            let Some((node, rack)) = pick else {
                break;
            };
            *load.entry(node).or_default() += 1;
            last_rack = rack;
            placed.push(vec![node]);
        }
        placed
    }
}
