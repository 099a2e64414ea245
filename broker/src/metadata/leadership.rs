//! The controller's leadership decisions over the whole image, as pure
//! functions: which [`MetadataRecord::PartitionChange`]s to commit when a
//! node is fenced or registers again, the automatic preferred-leader
//! election (`auto.leader.rebalance.enable`), and the elections an operator
//! asks for (ElectLeaders: [`elections_for`]). Each partition's choice is
//! [`crate::replication::election`]'s; this module finds the partitions
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

use super::nodes::Leader;
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
/// and, with `rebalance` (the broker's `auto.leader.rebalance.enable`),
/// partitions that prefer it regain it as leader where it is in the ISR.
/// A node that was removed from an ISR rejoins it through its leader
/// (AlterPartition) once caught up, not here.
pub fn on_node_registered(
    image: &ClusterMetadata,
    node: NodeId,
    rebalance: bool,
) -> Vec<MetadataRecord> {
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
                Some(_) if rebalance => preferred_election(record, &is_alive)?,
                Some(_) => return None,
            };
            Some(change(topic, partition, next))
        })
        .collect()
}

/// Unclean elections for offline partitions (no leader) whose ISR has no
/// live member but another replica is alive, where the topic allows it
/// (its `unclean.leader.election.enable`, else `unclean_default`, the
/// broker's): the first live replica leads alone, as Kafka's controller
/// does for offline partitions on its own. [`on_node_fenced`] only decides
/// at the fence, when the out-of-sync replica may still be down, and
/// [`on_node_registered`] only elects ISR members; without this, a replica
/// coming back after the fence, or the topic setting turned on later (it
/// is dynamic), would leave the partition offline until an operator asked.
/// Partitions with a live ISR member are left to the clean election.
pub fn unclean_elections(image: &ClusterMetadata, unclean_default: bool) -> Vec<MetadataRecord> {
    let is_alive = |candidate: NodeId| image.is_alive(candidate);
    image
        .partition_records_iter()
        .filter(|(_, _, record)| record.leader.is_none())
        .filter(|(_, _, record)| !record.isr.iter().any(|node| is_alive(*node)))
        .filter(|(topic, _, _)| image.unclean_election_allowed(topic, unclean_default))
        .filter_map(|(topic, partition, record)| {
            let election = elect_leader(record, is_alive, true)?;
            Some(change(topic, partition, election.record))
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

/// An ElectLeaders request's election type (Kafka's `ElectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionType {
    /// The preferred replica (the first) leads, if it is alive and in the ISR.
    Preferred,
    /// A partition without a leader gets one: from its ISR if a member is
    /// alive, else from any live replica (acknowledged records may be lost).
    Unclean,
}

/// What an operator's election decided for one partition; the handler
/// turns it into Kafka's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionOutcome {
    /// This node leads from now on (its change is among the plan's records).
    Elected(NodeId),
    /// The preferred replica leads already (preferred), or the partition
    /// has a leader (unclean): Kafka's ELECTION_NOT_NEEDED.
    NotNeeded,
    /// Preferred: the preferred replica is not alive or not in the ISR
    /// (and, offline, no other ISR member is alive either): Kafka's
    /// PREFERRED_LEADER_NOT_AVAILABLE.
    PreferredNotAvailable,
    /// Unclean: no replica of the leaderless partition is alive: Kafka's
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE.
    NoEligibleLeader,
    /// No such topic or partition: Kafka's UNKNOWN_TOPIC_OR_PARTITION.
    UnknownPartition,
}

/// The elections an ElectLeaders request asks for, decided on one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionPlan {
    /// One [`MetadataRecord::PartitionChange`] per partition elected, one
    /// epoch step from the image: commit them together; a refusal as stale
    /// means deciding again on the newer image.
    pub records: Vec<MetadataRecord>,
    /// Per topic asked for (in request order; every topic, by name, when
    /// all were), each partition's outcome in the order asked.
    pub topics: Vec<(String, Vec<(i32, ElectionOutcome)>)>,
}

/// The partitions an election request names: `None` = every partition of
/// every topic.
pub type ElectionTargets<'a> = Option<&'a [(String, Vec<i32>)]>;

/// Decides an operator's election (Kafka's ElectLeaders) on `image`, for
/// `targets`, partition by partition as Kafka's controller does: a
/// partition already led as wanted needs nothing; otherwise a new leader
/// is chosen (a *preferred* election that finds the partition offline
/// elects the first live ISR member, as Kafka's does); else the reason why
/// not. An unclean election ignores the topic's
/// `unclean.leader.election.enable`: asking for one is the operator's
/// consent. A partition named twice is decided once.
///
/// Partitions without replication state keep the old rules (leader = the
/// first replica while alive, or this node on a single node): they never
/// need an election, and cannot get one while their node is away.
pub fn elections_for(
    image: &ClusterMetadata,
    election: ElectionType,
    targets: ElectionTargets<'_>,
) -> ElectionPlan {
    let mut plan = ElectionPlan::default();
    let mut decided = std::collections::HashMap::new();
    let mut decide = |topic: &str, partition: i32| -> ElectionOutcome {
        *decided
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let (outcome, next) = decide_election(image, election, topic, partition);
                if let Some(state) = next {
                    plan.records.push(change(topic, partition, state));
                }
                outcome
            })
    };
    let mut topics = Vec::new();
    match targets {
        Some(asked) => {
            for (topic, partitions) in asked {
                let outcomes = partitions.iter().map(|p| (*p, decide(topic, *p)));
                topics.push((topic.clone(), outcomes.collect()));
            }
        }
        None => {
            for (topic, meta) in &image.topics {
                let outcomes = (0..meta.partitions).map(|p| (p, decide(topic, p)));
                topics.push((topic.clone(), outcomes.collect()));
            }
        }
    }
    plan.topics = topics;
    plan
}

/// One partition's election: the outcome and, when elected, its new state.
fn decide_election(
    image: &ClusterMetadata,
    election: ElectionType,
    topic: &str,
    partition: i32,
) -> (ElectionOutcome, Option<PartitionRecord>) {
    let exists = image
        .topics
        .get(topic)
        .is_some_and(|meta| (0..meta.partitions).contains(&partition));
    if !exists {
        return (ElectionOutcome::UnknownPartition, None);
    }
    let Some(record) = image.partition_record(topic, partition) else {
        let outcome = match (image.leader(topic, partition), election) {
            (Leader::ThisNode | Leader::Node(_), _) => ElectionOutcome::NotNeeded,
            (Leader::Offline, ElectionType::Preferred) => ElectionOutcome::PreferredNotAvailable,
            (Leader::Offline, ElectionType::Unclean) => ElectionOutcome::NoEligibleLeader,
        };
        return (outcome, None);
    };
    let is_alive = |candidate: NodeId| image.is_alive(candidate);
    let next = match election {
        ElectionType::Preferred => {
            if record.leader.is_some() && record.leader == record.replicas.first().copied() {
                return (ElectionOutcome::NotNeeded, None);
            }
            match record.leader {
                Some(_) => preferred_election(record, &is_alive)
                    .ok_or(ElectionOutcome::PreferredNotAvailable),
                // Offline: Kafka's preferred election takes any live ISR
                // member then (the controller would do so too, shortly).
                None => elect_leader(record, is_alive, false)
                    .map(|election| election.record)
                    .ok_or(ElectionOutcome::PreferredNotAvailable),
            }
        }
        ElectionType::Unclean => {
            if record.leader.is_some() {
                return (ElectionOutcome::NotNeeded, None);
            }
            elect_leader(record, is_alive, true)
                .map(|election| election.record)
                .ok_or(ElectionOutcome::NoEligibleLeader)
        }
    };
    match next {
        Ok(state) => match state.leader {
            Some(leader) => (ElectionOutcome::Elected(leader), Some(state)),
            // An election always names a leader.
            None => (ElectionOutcome::NoEligibleLeader, None),
        },
        Err(outcome) => (outcome, None),
    }
}
