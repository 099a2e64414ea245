//! The cluster's nodes as the metadata image holds them (registration,
//! state, epoch), where each partition is led, and the pure placement of a
//! new topic's partition replicas over the live nodes (balanced leaders,
//! distinct racks).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use kafki_net::kafka_protocol::error::ResponseError;

use super::ClusterMetadata;
use crate::errors::KafkaError;

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
    /// Nobody serves it: its leader is fenced, shutting down or gone, or
    /// (with replication state) it has no leader until an ISR member is
    /// back.
    Offline,
}

/// Why partitions could not be placed (Kafka's INVALID_REPLICATION_FACTOR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementError {
    ReplicationFactorBelowOne,
    /// Each replica of a partition needs its own live node.
    TooFewLiveNodes {
        replication_factor: usize,
        live_nodes: usize,
    },
}

impl PlacementError {
    /// The answer a CreateTopics or CreatePartitions client gets (Kafka's
    /// wording).
    pub fn to_kafka_error(self) -> KafkaError {
        let message = match self {
            PlacementError::ReplicationFactorBelowOne => {
                "Replication factor must be larger than 0.".to_string()
            }
            PlacementError::TooFewLiveNodes {
                replication_factor,
                live_nodes,
            } => format!(
                "Replication factor: {replication_factor} larger than available brokers: {live_nodes}."
            ),
        };
        KafkaError::new(ResponseError::InvalidReplicationFactor, message)
    }
}

/// How many partitions each node holds, to balance new ones.
#[derive(Debug, Default)]
struct NodeLoad {
    /// Partitions it is the preferred leader of.
    leads: usize,
    /// Partitions it holds a replica of (led ones included).
    replicas: usize,
}

impl ClusterMetadata {
    /// Whether this image belongs to a cluster (has nodes), not one node.
    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Who leads `topic`/`partition`: the leader in its replication state,
    /// else (older topics) its first replica, in both cases only while
    /// that node is alive. A partition without replicas (a single node's,
    /// or a topic from before the cluster) is this node's.
    pub fn leader(&self, topic: &str, partition: i32) -> Leader {
        let node = match self.partition_record(topic, partition) {
            Some(record) => match record.leader {
                Some(node) => node,
                None => return Leader::Offline,
            },
            None => match self.replicas(topic, partition).and_then(|r| r.first()) {
                Some(node) => *node,
                None => return Leader::ThisNode,
            },
        };
        if self.is_alive(node) {
            Leader::Node(node)
        } else {
            Leader::Offline
        }
    }

    /// Whether node `me` serves `topic`/`partition` now.
    pub fn led_by(&self, topic: &str, partition: i32, me: i32) -> bool {
        match self.leader(topic, partition) {
            Leader::ThisNode => true,
            Leader::Node(node) => node == me,
            Leader::Offline => false,
        }
    }

    /// Whether `me` keeps a copy of the partition: it leads it, or it is
    /// one of the replicas of a partition with several (a follower).
    pub fn hosts_replica(&self, topic: &str, partition: i32, me: i32) -> bool {
        self.led_by(topic, partition, me)
            || self
                .partition_record(topic, partition)
                .is_some_and(|record| record.replicas.len() > 1 && record.replicas.contains(&me))
    }

    /// Whether `node` is being decommissioned.
    pub fn is_decommissioning(&self, node: i32) -> bool {
        self.decommissioning.contains(&node)
    }

    /// The nodes that are alive, by id.
    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeRegistration> {
        self.nodes
            .values()
            .filter(|node| node.state == NodeState::Alive)
    }

    /// How many partitions `node` leads as the image records it (alive or
    /// not): the leader of its replication state, else its first replica.
    pub fn partitions_led_by(&self, node: i32) -> usize {
        self.topics
            .values()
            .flat_map(|topic| (0..topic.partitions).map(move |index| (topic, index)))
            .filter(|(topic, index)| {
                let leader = match self.partition_record(&topic.name, *index) {
                    Some(record) => record.leader,
                    None => self
                        .replicas(&topic.name, *index)
                        .and_then(|replicas| replicas.first().copied()),
                };
                leader == Some(node)
            })
            .count()
    }

    /// Each node's preferred leaderships and replicas over every partition.
    fn load_per_node(&self) -> BTreeMap<i32, NodeLoad> {
        let mut load: BTreeMap<i32, NodeLoad> = BTreeMap::new();
        for topic in self.topics.values() {
            for index in 0..topic.partitions {
                let replicas = self.replicas(&topic.name, index).unwrap_or_default();
                for (position, node) in replicas.iter().enumerate() {
                    let entry = load.entry(*node).or_default();
                    entry.replicas += 1;
                    entry.leads += usize::from(position == 0);
                }
            }
        }
        load
    }

    /// Replicas for `count` new partitions, `replication_factor` distinct
    /// live nodes each, preferred leader first. Leaders go to the live
    /// nodes that lead the fewest partitions (then hold the fewest
    /// replicas; with one replica, consecutive leaders alternate racks
    /// where nodes name them; ties by id), so leadership spreads evenly.
    /// Followers go to nodes on racks the partition does not use yet, where
    /// there are any (Kafka's rack-aware assignment: losing one rack loses
    /// no partition), then to the nodes holding the fewest replicas, then
    /// round the ring from the leader. A node without a rack shares none.
    /// Refused when there are fewer live nodes than replicas.
    pub fn place_partitions(
        &self,
        count: usize,
        replication_factor: usize,
    ) -> Result<Vec<Vec<i32>>, PlacementError> {
        if replication_factor == 0 {
            return Err(PlacementError::ReplicationFactorBelowOne);
        }
        let live: Vec<&NodeRegistration> = self
            .live_nodes()
            .filter(|node| !self.is_decommissioning(node.id))
            .collect();
        if live.len() < replication_factor {
            return Err(PlacementError::TooFewLiveNodes {
                replication_factor,
                live_nodes: live.len(),
            });
        }
        let mut load = self.load_per_node();
        let mut placed = Vec::with_capacity(count);
        let mut last_leader_rack: Option<&str> = None;
        for _ in 0..count {
            let mut replicas: Vec<&NodeRegistration> = Vec::with_capacity(replication_factor);
            while replicas.len() < replication_factor {
                let is_leader = replicas.is_empty();
                let leader_position = replicas
                    .first()
                    .and_then(|leader| live.iter().position(|node| node.id == leader.id))
                    .unwrap_or(0);
                let pick = live
                    .iter()
                    .enumerate()
                    .filter(|(_, node)| !replicas.iter().any(|chosen| chosen.id == node.id))
                    .min_by_key(|(position, node)| {
                        let node_load = load.get(&node.id);
                        let leads = node_load.map_or(0, |l| l.leads);
                        let held = node_load.map_or(0, |l| l.replicas);
                        let rack = node.rack.as_deref();
                        if is_leader {
                            // With one replica, consecutive partitions
                            // alternate racks; with more, the followers
                            // spread over racks, and leaders alternating
                            // racks too would unbalance the replica counts.
                            let same_rack = replication_factor == 1
                                && rack.is_some()
                                && rack == last_leader_rack;
                            (leads, held, same_rack, node.id)
                        } else {
                            let rack_used = rack.is_some()
                                && replicas.iter().any(|chosen| chosen.rack.as_deref() == rack);
                            // Ties go round the ring from the leader, so
                            // each leader's followers differ (Kafka's shift).
                            let after_leader =
                                (position + live.len() - leader_position) % live.len();
                            (usize::from(rack_used), held, false, after_leader as i32)
                        }
                    })
                    .map(|(_, node)| *node);
                // `live` holds at least `replication_factor` nodes, so a
                // node not chosen yet always exists.
                let Some(node) = pick else {
                    break;
                };
                let entry = load.entry(node.id).or_default();
                entry.replicas += 1;
                if is_leader {
                    entry.leads += 1;
                    last_leader_rack = node.rack.as_deref();
                }
                replicas.push(node);
            }
            placed.push(replicas.iter().map(|node| node.id).collect());
        }
        Ok(placed)
    }
}
