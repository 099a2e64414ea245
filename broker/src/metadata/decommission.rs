//! Taking a node out of the cluster for good, as pure functions of the
//! image: *decommissioning* marks it (new partitions are no longer placed
//! on it) and starts a reassignment of every partition it holds to a live
//! node that does not hold that partition yet (the one holding the fewest
//! replicas, a node on a rack the partition does not use first); the
//! controller completes each move as usual
//! ([`super::reassignment`]). Once it holds nothing, it can be stopped and
//! *removed*, which forgets its registration.

use super::reassignment::{self, ReassignError};
use super::{ClusterMetadata, MetadataRecord};
use crate::replication::NodeId;

/// The records that decommission `node` on `image`: the mark, then one
/// reassignment per partition it holds. Refused when a partition has no
/// live node to move to.
pub fn plan(image: &ClusterMetadata, node: NodeId) -> Result<Vec<MetadataRecord>, String> {
    if !image.nodes.contains_key(&node) {
        return Err(format!("node {node} is not registered"));
    }
    let mut records = vec![MetadataRecord::NodeDecommissioning {
        node,
        decommissioning: true,
    }];
    // Replicas each node holds, counted as the plan moves them.
    let mut held: std::collections::BTreeMap<NodeId, usize> = std::collections::BTreeMap::new();
    for (_, _, record) in image.partition_records_iter() {
        for replica in &record.replicas {
            *held.entry(*replica).or_default() += 1;
        }
    }
    let mut planned = image.clone();
    planned.apply_in_place(&records[0]);
    for (topic, partition, record) in image.partition_records_iter() {
        let current_target = image
            .reassignment(topic, partition)
            .map_or_else(|| record.replicas.clone(), |r| r.target.clone());
        if !current_target.contains(&node) {
            continue;
        }
        let racks_used: Vec<Option<&str>> = current_target
            .iter()
            .filter(|replica| **replica != node)
            .map(|replica| image.nodes.get(replica).and_then(|n| n.rack.as_deref()))
            .collect();
        let replacement = image
            .live_nodes()
            .filter(|candidate| {
                candidate.id != node
                    && !image.is_decommissioning(candidate.id)
                    && !current_target.contains(&candidate.id)
                    && !record.replicas.contains(&candidate.id)
            })
            .min_by_key(|candidate| {
                let rack = candidate.rack.as_deref();
                let rack_used = rack.is_some() && racks_used.contains(&rack);
                (
                    rack_used,
                    held.get(&candidate.id).copied().unwrap_or(0),
                    candidate.id,
                )
            })
            .map(|candidate| candidate.id)
            .ok_or_else(|| {
                format!("no live node can take {topic}-{partition}'s replica from node {node}")
            })?;
        *held.entry(replacement).or_default() += 1;
        let target: Vec<NodeId> = current_target
            .iter()
            .map(|replica| {
                if *replica == node {
                    replacement
                } else {
                    *replica
                }
            })
            .collect();
        let moved = reassignment::start(&planned, topic, partition, &target)
            .map_err(|error: ReassignError| format!("{topic}-{partition}: {}", error.message()))?;
        for record in &moved {
            planned.apply_in_place(record);
        }
        records.extend(moved);
    }
    Ok(records)
}

/// Partitions `node` still holds (as a replica, or as a reassignment's
/// target).
pub fn replicas_held(image: &ClusterMetadata, node: NodeId) -> usize {
    image
        .partition_records_iter()
        .filter(|(topic, partition, record)| {
            record.replicas.contains(&node)
                || image
                    .reassignment(topic, *partition)
                    .is_some_and(|r| r.target.contains(&node))
        })
        .count()
}

/// The record that forgets `node`: refused while it is alive, a voter, or
/// holds any partition.
pub fn removal(
    image: &ClusterMetadata,
    node: NodeId,
    voters: &[NodeId],
) -> Result<MetadataRecord, String> {
    if !image.nodes.contains_key(&node) {
        return Err(format!("node {node} is not registered"));
    }
    if voters.contains(&node) {
        return Err(format!(
            "node {node} is a voter of the metadata quorum: replace it first (POST /v1/cluster/voters)"
        ));
    }
    let held = replicas_held(image, node);
    if held > 0 {
        return Err(format!(
            "node {node} still holds {held} partition(s): decommission it and wait until they moved"
        ));
    }
    if image.is_alive(node) {
        return Err(format!("node {node} is still alive: stop it first"));
    }
    Ok(MetadataRecord::NodeRemoved { node })
}
