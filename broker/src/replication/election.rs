//! The controller's choices for one partition, as pure functions of its
//! committed [`PartitionRecord`] and who is alive: electing a leader, and
//! taking a fenced node out of the ISR. The controller proposes the
//! returned record through the metadata quorum; nothing here is applied
//! until that commits.
//!
//! Why any ISR member is a safe leader: the high watermark is the minimum
//! *durable* offset over the whole (maximal) ISR, so an acknowledged record
//! is fsync'd on every ISR member before the producer hears back, and a
//! replica only joins the ISR once it holds, durably, everything up to the
//! high watermark and the leader's epoch start. A crash keeps what was
//! fsync'd, so even after every node crashed at once, whichever ISR member
//! comes back first holds every acknowledged record and may lead. A node
//! *outside* the ISR may lack some, which is why an unclean election (from
//! any live replica) is only made when the caller allows it, and why the
//! last ISR member is never removed: the ISR then names who must come back.

use super::log::NodeId;
use super::messages::PartitionRecord;

/// A new leader for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// The record to commit: the new leader, the leader and partition
    /// epochs bumped, the ISR without replicas that are not alive (clean)
    /// or just the new leader (unclean).
    pub record: PartitionRecord,
    /// Chosen from outside the ISR: acknowledged records may be lost.
    pub unclean: bool,
}

/// Elects a leader for `current`: the first replica in preference order
/// (the replica list) that is in the ISR and alive; failing that, only if
/// `allow_unclean`, the first live replica. `None` when no one can lead:
/// the caller then commits the partition as offline (`leader: None`) with
/// the ISR unchanged (see [`offline`]), or leaves it as it is.
pub fn elect_leader(
    current: &PartitionRecord,
    is_alive: impl Fn(NodeId) -> bool,
    allow_unclean: bool,
) -> Option<Election> {
    let clean = current
        .replicas
        .iter()
        .copied()
        .find(|node| current.isr.contains(node) && is_alive(*node));
    let (leader, isr, unclean) = match clean {
        Some(leader) => {
            let isr = current
                .replicas
                .iter()
                .copied()
                .filter(|node| current.isr.contains(node) && is_alive(*node))
                .collect();
            (leader, isr, false)
        }
        None if allow_unclean => {
            let leader = current.replicas.iter().copied().find(|n| is_alive(*n))?;
            (leader, vec![leader], true)
        }
        None => return None,
    };
    Some(Election {
        record: PartitionRecord {
            replicas: current.replicas.clone(),
            isr,
            leader: Some(leader),
            leader_epoch: current.leader_epoch + 1,
            partition_epoch: current.partition_epoch + 1,
        },
        unclean,
    })
}

/// The partition with no leader: every ISR member is gone. The ISR is kept
/// as it is (those are the replicas holding every acknowledged record);
/// the leader epoch is bumped so the old leader, should it be a zombie,
/// is fenced by its followers.
pub fn offline(current: &PartitionRecord) -> PartitionRecord {
    PartitionRecord {
        leader: None,
        leader_epoch: current.leader_epoch + 1,
        partition_epoch: current.partition_epoch + 1,
        ..current.clone()
    }
}

/// What the controller commits when `node` is fenced (its session
/// expired): a new leader if it led (or the partition offline if no one
/// else can), else the ISR without it. `None` when nothing changes: the
/// node was not in the ISR, or the partition is offline (its ISR names
/// who must come back, all of them may), or the node is the last member.
pub fn fence_replica(
    current: &PartitionRecord,
    node: NodeId,
    is_alive: impl Fn(NodeId) -> bool,
    allow_unclean: bool,
) -> Option<PartitionRecord> {
    if current.leader == Some(node) {
        let alive_but_fenced = |n: NodeId| n != node && is_alive(n);
        return Some(
            match elect_leader(current, alive_but_fenced, allow_unclean) {
                Some(election) => election.record,
                None => offline(current),
            },
        );
    }
    if current.leader.is_none() || !current.isr.contains(&node) || current.isr.len() <= 1 {
        return None;
    }
    Some(PartitionRecord {
        isr: current.isr.iter().copied().filter(|n| *n != node).collect(),
        partition_epoch: current.partition_epoch + 1,
        ..current.clone()
    })
}
