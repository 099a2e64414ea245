//! Each partition's replication state in the metadata image: its
//! [`PartitionRecord`] (replicas, ISR, leader, leader and partition epochs),
//! the records that change it and the rules they must keep to apply:
//!
//! - [`MetadataRecord::PartitionChange`] (the controller's: creation, an
//!   election, a fence) replaces the state only as a compare-and-set on the
//!   partition epoch: it must be exactly one above the current one, and the
//!   leader epoch one above too when the leader changes (else unchanged).
//!   A change computed from a state that has since moved on is refused as
//!   stale, so the controller may propose it without locking the image.
//! - [`MetadataRecord::AlterPartition`] (a leader's ISR change, Kafka's
//!   AlterPartition) applies only at the proposal's leader and partition
//!   epochs, keeps the leader in the ISR, and may add only replicas whose
//!   node is alive; it bumps the partition epoch.
//!
//! Partitions without a record (a single node's; cluster topics from before
//! this state existed) keep the old rules: leader = the first of
//! `TopicMeta::replicas`, epochs from `ClusterMetadata::leader_epochs`.

use crate::replication::{IsrProposal, NodeId, PartitionRecord};

use super::{ClusterMetadata, MetadataRecord, NodeState, TopicMeta};

/// Why a partition change or ISR proposal was refused (nothing of its
/// command applied). The names follow Kafka's AlterPartition errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionChangeRefusal {
    /// No such topic or partition, or (AlterPartition) it has no
    /// replication state.
    UnknownPartition,
    /// Stale: the partition has a newer leader epoch than the proposal's
    /// (Kafka's FENCED_LEADER_EPOCH): the proposer no longer leads in it.
    StaleLeaderEpoch,
    /// Stale: the partition changed since the proposal was computed
    /// (Kafka's INVALID_UPDATE_VERSION); recompute from the new state.
    StalePartitionEpoch,
    /// The proposer is not the partition's leader.
    NotLeader,
    /// The ISR would gain a node that is not a replica or not alive
    /// (Kafka's INELIGIBLE_REPLICA).
    IneligibleReplica(NodeId),
    /// The new state is inconsistent: empty or repeated replicas or ISR
    /// members, a leader outside the ISR, a leader change without a new
    /// leader epoch (Kafka's INVALID_REQUEST).
    InvalidState,
}

impl PartitionChangeRefusal {
    /// Whether the proposer computed from an older state and may try again
    /// from the current one.
    pub fn is_stale(self) -> bool {
        matches!(self, Self::StaleLeaderEpoch | Self::StalePartitionEpoch)
    }
}

/// The records that give `topic`'s partitions from `first_partition` on
/// their first replication state: leader = the first replica, ISR = every
/// replica, epochs 0 (a new partition holds no record yet, so every replica
/// is in sync). None for a single node's topic (no replicas).
pub fn initial_partition_records(topic: &TopicMeta, first_partition: i32) -> Vec<MetadataRecord> {
    let first = usize::try_from(first_partition).unwrap_or(usize::MAX);
    topic
        .replicas
        .iter()
        .enumerate()
        .skip(first)
        .filter_map(|(index, replicas)| {
            let partition = i32::try_from(index).ok()?;
            Some(MetadataRecord::PartitionChange {
                topic: topic.name.clone(),
                partition,
                state: PartitionRecord {
                    replicas: replicas.clone(),
                    isr: replicas.clone(),
                    leader: replicas.first().copied(),
                    leader_epoch: 0,
                    partition_epoch: 0,
                },
            })
        })
        .collect()
}

impl ClusterMetadata {
    /// The replication state of `topic`/`partition`, if it has one.
    pub fn partition_record(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        self.partition_records.get(topic)?.get(&partition)
    }

    /// Every partition with replication state: `(topic, partition, record)`.
    pub fn partition_records_iter(
        &self,
    ) -> impl Iterator<Item = (&str, i32, &PartitionRecord)> + '_ {
        self.partition_records
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(partition, record)| (topic.as_str(), *partition, record))
            })
    }

    /// The replicas of `topic`/`partition`, preferred leader first: its
    /// replication state's, else the topic's placement. `None` when it has
    /// neither (a single node's partition, or no such partition).
    pub fn replicas(&self, topic: &str, partition: i32) -> Option<&[NodeId]> {
        if let Some(record) = self.partition_record(topic, partition) {
            return Some(&record.replicas);
        }
        let meta = self.topics.get(topic)?;
        meta.replicas
            .get(usize::try_from(partition).ok()?)
            .map(Vec::as_slice)
    }

    /// Whether `node` is registered and alive (heartbeating).
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|registration| registration.state == NodeState::Alive)
    }

    /// Whether `change` may replace the state of `topic`/`partition` now:
    /// see the module doc for the rules.
    pub fn check_partition_change(
        &self,
        topic: &str,
        partition: i32,
        change: &PartitionRecord,
    ) -> Result<(), PartitionChangeRefusal> {
        let exists = self
            .topics
            .get(topic)
            .is_some_and(|meta| (0..meta.partitions).contains(&partition));
        if !exists {
            return Err(PartitionChangeRefusal::UnknownPartition);
        }
        if !change.is_well_formed() {
            return Err(PartitionChangeRefusal::InvalidState);
        }
        let Some(current) = self.partition_record(topic, partition) else {
            return Ok(());
        };
        if Some(change.partition_epoch) != current.partition_epoch.checked_add(1) {
            return Err(PartitionChangeRefusal::StalePartitionEpoch);
        }
        let expected_leader_epoch = if change.leader == current.leader {
            Some(current.leader_epoch)
        } else {
            current.leader_epoch.checked_add(1)
        };
        if Some(change.leader_epoch) != expected_leader_epoch {
            return Err(PartitionChangeRefusal::InvalidState);
        }
        Ok(())
    }

    /// The state `proposal` (a leader's ISR change) would give
    /// `topic`/`partition`, or why it is refused.
    pub fn check_alter_partition(
        &self,
        topic: &str,
        partition: i32,
        proposal: &IsrProposal,
    ) -> Result<PartitionRecord, PartitionChangeRefusal> {
        let current = self
            .partition_record(topic, partition)
            .ok_or(PartitionChangeRefusal::UnknownPartition)?;
        if proposal.leader_epoch != current.leader_epoch {
            return Err(PartitionChangeRefusal::StaleLeaderEpoch);
        }
        if proposal.partition_epoch != current.partition_epoch {
            return Err(PartitionChangeRefusal::StalePartitionEpoch);
        }
        if current.leader != Some(proposal.leader) {
            return Err(PartitionChangeRefusal::NotLeader);
        }
        for node in &proposal.isr {
            let added = !current.isr.contains(node);
            if added && !(current.replicas.contains(node) && self.is_alive(*node)) {
                return Err(PartitionChangeRefusal::IneligibleReplica(*node));
            }
        }
        let next = PartitionRecord {
            isr: proposal.isr.clone(),
            partition_epoch: current
                .partition_epoch
                .checked_add(1)
                .ok_or(PartitionChangeRefusal::InvalidState)?,
            ..current.clone()
        };
        if !next.is_well_formed() {
            return Err(PartitionChangeRefusal::InvalidState);
        }
        Ok(next)
    }

    /// Whether unclean leader election is allowed for `topic`: its
    /// `unclean.leader.election.enable` override, else `broker_default`
    /// (the broker setting, which the image does not hold).
    pub fn unclean_election_allowed(&self, topic: &str, broker_default: bool) -> bool {
        self.topics
            .get(topic)
            .and_then(|meta| meta.configs.get("unclean.leader.election.enable"))
            .and_then(|value| value.trim().parse::<bool>().ok())
            .unwrap_or(broker_default)
    }

    /// Raises the leader and partition epochs of a partition with
    /// replication state (a hand-over between shards is a leader change
    /// too); false when it has none.
    /// A new leader epoch (and partition epoch) for every partition `node`
    /// leads, leader unchanged (it restarted).
    pub(super) fn renew_leader_epochs_of(&mut self, node: NodeId) {
        for partitions in self.partition_records.values_mut() {
            for record in partitions.values_mut() {
                if record.leader == Some(node) {
                    record.leader_epoch = record.leader_epoch.saturating_add(1);
                    record.partition_epoch = record.partition_epoch.saturating_add(1);
                }
            }
        }
    }

    pub(super) fn bump_recorded_leader_epoch(&mut self, topic: &str, partition: i32) -> bool {
        let Some(record) = self
            .partition_records
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
        else {
            return false;
        };
        record.leader_epoch = record.leader_epoch.saturating_add(1);
        record.partition_epoch = record.partition_epoch.saturating_add(1);
        true
    }

    pub(super) fn set_partition_record(
        &mut self,
        topic: &str,
        partition: i32,
        record: PartitionRecord,
    ) {
        self.partition_records
            .entry(topic.to_string())
            .or_default()
            .insert(partition, record);
    }
}
