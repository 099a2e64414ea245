//! Moving a partition's replicas between nodes (Kafka's KIP-455:
//! AlterPartitionReassignments, ListPartitionReassignments,
//! `kafka-reassign-partitions`), as pure functions of the image.
//!
//! A reassignment to `target` first *adds*: the partition's replicas become
//! `target` followed by the original replicas not in it, so the new nodes
//! open empty followers and copy the log from the leader, and join the ISR
//! through the leader once caught up. When every target replica is in the
//! ISR, the controller *completes* it ([`completions`]): replicas become
//! `target`, the ISR keeps its target members, and if the leader is not a
//! target it hands over to the first in-sync target in the same change.
//! Removed nodes then drop their copy. Clients keep producing and consuming
//! throughout; only a leader change makes them look again.
//!
//! Each change is a [`MetadataRecord::PartitionChange`] (one partition
//! epoch step, refused if stale) committed together with the
//! [`MetadataRecord::Reassignment`] record that sets or clears the
//! reassignment, so the two never disagree.

use serde::{Deserialize, Serialize};

use super::{ClusterMetadata, MetadataRecord};
use crate::replication::{NodeId, PartitionRecord};

/// A reassignment in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// The replicas before it started.
    pub original: Vec<NodeId>,
    /// The replicas wanted.
    pub target: Vec<NodeId>,
}

impl Reassignment {
    /// Target replicas that were not replicas before (Kafka's `adding`).
    pub fn adding(&self) -> Vec<NodeId> {
        minus(&self.target, &self.original)
    }

    /// Original replicas that are not targets (Kafka's `removing`).
    pub fn removing(&self) -> Vec<NodeId> {
        minus(&self.original, &self.target)
    }
}

/// Why a reassignment request is refused (Kafka's error names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReassignError {
    UnknownTopicOrPartition,
    /// Empty, duplicate or unknown nodes, or the partition has no
    /// replication state (a single node's, or from before it existed).
    InvalidReplicaAssignment(String),
    /// Cancel without a reassignment in progress.
    NoReassignmentInProgress,
}

impl ReassignError {
    pub fn code(&self) -> i16 {
        use kafki_net::kafka_protocol::error::ResponseError;
        match self {
            Self::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
            Self::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment.code(),
            Self::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress.code(),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::UnknownTopicOrPartition => "no such topic or partition".to_string(),
            Self::InvalidReplicaAssignment(reason) => reason.clone(),
            Self::NoReassignmentInProgress => {
                "no reassignment in progress for this partition".to_string()
            }
        }
    }
}

fn minus(from: &[NodeId], without: &[NodeId]) -> Vec<NodeId> {
    from.iter()
        .copied()
        .filter(|node| !without.contains(node))
        .collect()
}

fn change(topic: &str, partition: i32, state: PartitionRecord) -> MetadataRecord {
    MetadataRecord::PartitionChange {
        topic: topic.to_string(),
        partition,
        state,
    }
}

fn set(topic: &str, partition: i32, reassignment: Option<Reassignment>) -> MetadataRecord {
    MetadataRecord::Reassignment {
        topic: topic.to_string(),
        partition,
        reassignment,
    }
}

impl ClusterMetadata {
    /// The reassignment of `topic`/`partition` in progress, if any.
    pub fn reassignment(&self, topic: &str, partition: i32) -> Option<&Reassignment> {
        self.reassignments.get(topic)?.get(&partition)
    }

    /// Every reassignment in progress: `(topic, partition, reassignment)`.
    pub fn reassignments_iter(&self) -> impl Iterator<Item = (&str, i32, &Reassignment)> + '_ {
        self.reassignments.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(partition, reassignment)| (topic.as_str(), *partition, reassignment))
        })
    }
}

/// The state `current` takes with `replicas` and `isr`: the leader stays if
/// it is in the new ISR, else the first in-sync replica in `replicas` order
/// that is alive leads in a new epoch. `None` when nobody could lead.
fn with_replicas(
    current: &PartitionRecord,
    replicas: Vec<NodeId>,
    isr: Vec<NodeId>,
    is_alive: impl Fn(NodeId) -> bool,
) -> Option<PartitionRecord> {
    let leader = match current.leader {
        Some(leader) if isr.contains(&leader) => Some(leader),
        Some(_) => Some(
            replicas
                .iter()
                .copied()
                .find(|node| isr.contains(node) && is_alive(*node))?,
        ),
        None => None,
    };
    let leader_epoch = if leader == current.leader {
        current.leader_epoch
    } else {
        current.leader_epoch + 1
    };
    Some(PartitionRecord {
        replicas,
        isr,
        leader,
        leader_epoch,
        partition_epoch: current.partition_epoch + 1,
    })
}

/// The records that start (or replace) a reassignment of
/// `topic`/`partition` to `target`, computed on `image`. A target that
/// only reorders the current replicas applies at once. Empty when the
/// partition already has exactly these replicas and nothing is in progress.
pub fn start(
    image: &ClusterMetadata,
    topic: &str,
    partition: i32,
    target: &[NodeId],
) -> Result<Vec<MetadataRecord>, ReassignError> {
    let exists = image
        .topic(topic)
        .is_some_and(|meta| (0..meta.partitions).contains(&partition));
    if !exists {
        return Err(ReassignError::UnknownTopicOrPartition);
    }
    let current = image.partition_record(topic, partition).ok_or_else(|| {
        ReassignError::InvalidReplicaAssignment(
            "the partition has no replication state (a single node's, or from before clusters replicated)".to_string(),
        )
    })?;
    if target.is_empty() {
        return Err(ReassignError::InvalidReplicaAssignment(
            "the target replica list is empty".to_string(),
        ));
    }
    for (index, node) in target.iter().enumerate() {
        if target[..index].contains(node) {
            return Err(ReassignError::InvalidReplicaAssignment(format!(
                "node {node} appears twice in the target replicas"
            )));
        }
        if !image.nodes.contains_key(node) {
            return Err(ReassignError::InvalidReplicaAssignment(format!(
                "node {node} is not a registered node"
            )));
        }
    }
    let in_progress = image.reassignment(topic, partition);
    let original = in_progress.map_or_else(|| current.replicas.clone(), |r| r.original.clone());
    let same_nodes =
        minus(target, &current.replicas).is_empty() && minus(&current.replicas, target).is_empty();
    if same_nodes {
        if in_progress.is_none() && current.replicas == target {
            return Ok(Vec::new());
        }
        // A new order of the same nodes (or back to what is there now).
        let next = with_replicas(current, target.to_vec(), current.isr.clone(), |node| {
            image.is_alive(node)
        })
        .ok_or_else(|| {
            ReassignError::InvalidReplicaAssignment("no in-sync replica could lead".to_string())
        })?;
        let mut records = vec![change(topic, partition, next)];
        if in_progress.is_some() {
            records.push(set(topic, partition, None));
        }
        return Ok(records);
    }
    let mut replicas = target.to_vec();
    replicas.extend(minus(&original, target));
    let isr: Vec<NodeId> = current
        .isr
        .iter()
        .copied()
        .filter(|node| replicas.contains(node))
        .collect();
    if isr.is_empty() {
        return Err(ReassignError::InvalidReplicaAssignment(
            "no in-sync replica would remain".to_string(),
        ));
    }
    let next =
        with_replicas(current, replicas, isr, |node| image.is_alive(node)).ok_or_else(|| {
            ReassignError::InvalidReplicaAssignment("no in-sync replica could lead".to_string())
        })?;
    Ok(vec![
        change(topic, partition, next),
        set(
            topic,
            partition,
            Some(Reassignment {
                original,
                target: target.to_vec(),
            }),
        ),
    ])
}

/// The records that cancel the reassignment of `topic`/`partition`: back
/// to the original replicas (those still in sync stay in the ISR).
pub fn cancel(
    image: &ClusterMetadata,
    topic: &str,
    partition: i32,
) -> Result<Vec<MetadataRecord>, ReassignError> {
    let current = image
        .partition_record(topic, partition)
        .ok_or(ReassignError::UnknownTopicOrPartition)?;
    let reassignment = image
        .reassignment(topic, partition)
        .ok_or(ReassignError::NoReassignmentInProgress)?;
    let isr = current
        .isr
        .iter()
        .copied()
        .filter(|node| reassignment.original.contains(node))
        .collect::<Vec<_>>();
    if isr.is_empty() {
        return Err(ReassignError::InvalidReplicaAssignment(
            "cannot cancel: no original replica is in sync".to_string(),
        ));
    }
    let next = with_replicas(current, reassignment.original.clone(), isr, |node| {
        image.is_alive(node)
    })
    .ok_or_else(|| {
        ReassignError::InvalidReplicaAssignment(
            "cannot cancel: no original replica could lead".to_string(),
        )
    })?;
    Ok(vec![
        change(topic, partition, next),
        set(topic, partition, None),
    ])
}

/// The controller's step: every reassignment whose target replicas are all
/// in the ISR completes (see the module doc).
pub fn completions(image: &ClusterMetadata) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for (topic, partition, reassignment) in image.reassignments_iter() {
        let Some(current) = image.partition_record(topic, partition) else {
            continue;
        };
        let caught_up = reassignment
            .target
            .iter()
            .all(|node| current.isr.contains(node));
        if !caught_up || current.leader.is_none() {
            continue;
        }
        let isr = reassignment
            .target
            .iter()
            .copied()
            .filter(|node| current.isr.contains(node))
            .collect();
        let Some(next) = with_replicas(current, reassignment.target.clone(), isr, |node| {
            image.is_alive(node)
        }) else {
            continue;
        };
        records.push(change(topic, partition, next));
        records.push(set(topic, partition, None));
    }
    records
}
