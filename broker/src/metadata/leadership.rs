//! The controller's leadership decisions over the whole image, as pure
//! functions: which [`MetadataRecord::PartitionChange`]s to commit when a
//! node is fenced or registers again, and the preferred-leader election
//! (the step a later automatic rebalance repeats). Each partition's choice
//! is [`crate::replication::election`]'s; this module finds the partitions
//! concerned and the settings that apply to them.
//!
//! Every record returned is one partition-epoch step from the image it was
//! computed on, so it applies only to that partition state (see
//! [`super::partitions`]): a decision that raced another change of the
//! partition is refused as stale and made again from the new image.
//!
//! Only partitions with replication state are decided here; the others
//! (from before it existed) keep following their node's liveness.

use crate::replication::election::{elect_leader, fence_replica};
use crate::replication::{NodeId, PartitionRecord};

use super::{ClusterMetadata, MetadataRecord};

fn change(topic: &str, partition: i32, state: PartitionRecord) -> MetadataRecord {
    MetadataRecord::PartitionChange {
        topic: topic.to_string(),
        partition,
        state,
    }
}

/// The partition changes for fencing `node`, computed on `image` (where it
/// may still be alive: it counts as gone). Every partition it leads gets a
/// new leader from its ISR, in preference order, among live nodes; from
/// any live replica only if the topic allows unclean election
/// (`unclean_default` is the broker's `unclean.leader.election.enable`);
/// failing both, the partition goes offline (no leader, ISR kept). It
/// leaves the ISR of the partitions it follows, unless it is their last
/// member (the ISR then names who must come back). Commit them with the
/// fence itself ([`MetadataRecord::NodeStateChanged`]), in one command.
pub fn on_node_fenced(
    image: &ClusterMetadata,
    node: NodeId,
    unclean_default: bool,
) -> Vec<MetadataRecord> {
    let is_alive = |candidate: NodeId| candidate != node && image.is_alive(candidate);
    image
        .partition_records_iter()
        .filter(|(_, _, record)| record.replicas.contains(&node))
        .filter_map(|(topic, partition, record)| {
            let unclean = image.unclean_election_allowed(topic, unclean_default);
            fence_replica(record, node, is_alive, unclean)
                .map(|next| change(topic, partition, next))
        })
        .collect()
}

/// The partition changes once `node` registered again (computed on an
/// image where it is alive): offline partitions whose ISR holds it get a
/// leader again (it, or an ISR member preferred to it that also came back),
/// and partitions that prefer it regain it as leader where it is in the
/// ISR. A node that was removed from an ISR rejoins it through its leader
/// (AlterPartition) once caught up, not here.
pub fn on_node_registered(image: &ClusterMetadata, node: NodeId) -> Vec<MetadataRecord> {
    if !image.is_alive(node) {
        return Vec::new();
    }
    let is_alive = |candidate: NodeId| image.is_alive(candidate);
    image
        .partition_records_iter()
        .filter(|(_, _, record)| record.isr.contains(&node))
        .filter_map(|(topic, partition, record)| {
            let next = match record.leader {
                None => elect_leader(record, is_alive, false)?.record,
                Some(_) => preferred_election(record, &is_alive)?,
            };
            Some(change(topic, partition, next))
        })
        .collect()
}

/// Preferred-leader election over every partition: where the preferred
/// replica (the first) is alive and in the ISR but does not lead, it leads
/// again (leader epoch bumped). Leaves offline partitions to
/// [`on_node_registered`].
pub fn preferred_leader_elections(image: &ClusterMetadata) -> Vec<MetadataRecord> {
    let is_alive = |candidate: NodeId| image.is_alive(candidate);
    image
        .partition_records_iter()
        .filter(|(_, _, record)| record.leader.is_some())
        .filter_map(|(topic, partition, record)| {
            preferred_election(record, &is_alive).map(|next| change(topic, partition, next))
        })
        .collect()
}

/// The record with the preferred replica leading, if it is alive, in the
/// ISR and not the leader already.
fn preferred_election(
    record: &PartitionRecord,
    is_alive: &impl Fn(NodeId) -> bool,
) -> Option<PartitionRecord> {
    let preferred = *record.replicas.first()?;
    if record.leader == Some(preferred) || !record.isr.contains(&preferred) {
        return None;
    }
    // The first live ISR member in preference order is the preferred one.
    elect_leader(record, is_alive, false)
        .map(|election| election.record)
        .filter(|next| next.leader == Some(preferred))
}
