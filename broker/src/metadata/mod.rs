//! Cluster metadata, the pure state machine: topics, their ids, partition
//! counts and replicas (which node leads each partition), config overrides,
//! explicit partition → shard assignments, leader epochs and the cluster's
//! nodes, and (in a cluster) each partition's replication state (replicas,
//! ISR, leader, epochs: [`partitions`]). One immutable snapshot (`Arc<ClusterMetadata>`) is shared by every
//! shard of a node; it changes only by [`MetadataRecord`]s applied to it
//! (pure: [`ClusterMetadata::apply`]).
//!
//! Where the records come from depends on the node: a single node's
//! controller shard applies them and stores the image in
//! `<data-dir>/cluster-metadata.json` ([`store`]); a cluster member applies
//! the [`command::MetadataCommand`]s committed by the Raft metadata quorum
//! ([`crate::cluster`]), in log order, so every node reaches the same image.

use std::collections::BTreeMap;

use crate::errors::KafkaError;
use kafki_net::kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};

pub mod command;
pub mod decommission;
pub mod leadership;
pub mod nodes;
pub mod partitions;
pub mod reassignment;
pub mod store;

pub use nodes::{NodeRegistration, NodeState, PlacementError};
pub use partitions::PartitionChangeRefusal;

use crate::replication::{IsrProposal, PartitionRecord};
pub use store::{JsonFileStore, MetadataStore, METADATA_FILE};

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Our limit on partitions per topic (bounded memory per topic).
pub const PARTITIONS_MAX: i32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub id: uuid::Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
    /// The nodes holding each partition, preferred leader first, as placed
    /// when the partition was created. Empty on a single node: every
    /// partition is its own. Files written before clusters load with none.
    /// Where a partition has a [`PartitionRecord`] (cluster topics created
    /// since replication state exists), that record is what counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<i32>>,
}

impl TopicMeta {
    /// Replicas per partition as placed (1 on a single node).
    pub fn replication_factor(&self) -> i16 {
        self.replicas.first().map_or(1, |replicas| {
            i16::try_from(replicas.len()).unwrap_or(i16::MAX)
        })
    }
}

/// One change of the cluster metadata. Every change is a record applied to
/// the image ([`ClusterMetadata::apply`]), so the same records can later be
/// the entries of a replicated metadata log (the cluster's quorum) rather
/// than closures run on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A topic created, or changed under the same id (configs, partitions).
    Topic(TopicMeta),
    /// A topic deleted, with its shard assignments.
    TopicRemoved {
        name: String,
    },
    /// A partition explicitly assigned to a shard, or (`None`) given back
    /// to the placement function.
    ShardAssignment {
        topic: String,
        partition: i32,
        shard: Option<usize>,
    },
    /// A partition being handed over between shards (or none).
    Moving(Option<(String, i32)>),
    /// A partition got a new leader (today: another shard took it over; in
    /// a cluster: an election): its leader epoch grows by one (and, when it
    /// has a [`PartitionRecord`], its partition epoch too).
    LeaderChange {
        topic: String,
        partition: i32,
    },
    /// A partition's replication state replaced: created with its topic,
    /// a new leader, an ISR change decided by the controller. Applies only
    /// as a compare-and-set on the partition's epochs (see
    /// [`partitions`]); otherwise the whole command is refused.
    PartitionChange {
        topic: String,
        partition: i32,
        state: PartitionRecord,
    },
    /// A partition leader's ISR change (Kafka's AlterPartition): applies
    /// only if the partition is still at the proposal's leader and
    /// partition epochs and every replica it adds is an alive replica;
    /// the partition epoch then grows by one. Otherwise the whole command
    /// is refused with the reason ([`command::Verdict::Refused`]).
    AlterPartition {
        topic: String,
        partition: i32,
        proposal: IsrProposal,
    },
    /// A node joined (or rejoined) the cluster: its registration, alive,
    /// with a new epoch (the metadata offset of this record).
    /// A reassignment of a partition's replicas set or (`None`) cleared;
    /// committed with the partition change it goes with
    /// ([`reassignment`]).
    Reassignment {
        topic: String,
        partition: i32,
        reassignment: Option<reassignment::Reassignment>,
    },
    /// A block of `count` producer ids reserved for `node`, starting at
    /// the image's next id (and at least at `at_least`).
    ProducerIdBlock {
        node: i32,
        count: i64,
        at_least: i64,
    },
    /// The run-time settings of broker `resource` (a node id, or `""` for
    /// every node) replaced by `configs`.
    BrokerConfigs {
        resource: String,
        configs: BTreeMap<String, String>,
    },
    /// `node` marked as being decommissioned (or no longer).
    NodeDecommissioning {
        node: i32,
        decommissioning: bool,
    },
    NodeRegistered(NodeRegistration),
    /// A node's state changed (fenced when its heartbeats stopped, shutting
    /// down, alive again). Ignored when `epoch` is not its current one: a
    /// change decided about an earlier incarnation of the node.
    NodeStateChanged {
        node: i32,
        epoch: u64,
        state: NodeState,
    },
    /// A node left the cluster for good (decommissioned).
    NodeRemoved {
        node: i32,
    },
    /// The cluster's id, set once by the first controller.
    ClusterId(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    /// Increases with every change.
    pub version: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Explicit owners: topic → partition → shard. They override the pure
    /// placement function (see [`crate::placement::resolve_owner`]); set and
    /// dropped through the admin API. Files written before this field
    /// existed load with none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shard_assignments: BTreeMap<String, BTreeMap<i32, usize>>,
    /// Leader epochs above 0: topic → partition → epoch. A partition's
    /// epoch grows by one each time its leader changes
    /// ([`MetadataRecord::LeaderChange`]: today a hand-over between shards,
    /// in a cluster an election). Files written before this field existed load with none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leader_epochs: BTreeMap<String, BTreeMap<i32, i32>>,
    /// The partition being handed over between shards, if any. While set,
    /// no shard serves it (clients get `NOT_LEADER_OR_FOLLOWER` and retry).
    /// Never stored: a restart mid-move finds the old or the new owner in
    /// the file, never a move in progress.
    #[serde(skip)]
    pub moving: Option<(String, i32)>,
    /// The cluster's nodes by id (a cluster member; empty on a single node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<i32, NodeRegistration>,
    /// The offset in the metadata log of the last command applied (0 on a
    /// single node): the metadata epoch every node can compare.
    #[serde(default)]
    pub log_offset: u64,
    /// Each partition's replication state: topic → partition → record.
    /// Only partitions of cluster topics have one; images and logs from
    /// before it existed load with none, and those partitions keep the
    /// old rules (leader = first of `TopicMeta::replicas`, epochs from
    /// `leader_epochs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_records: BTreeMap<String, BTreeMap<i32, PartitionRecord>>,
    /// Broker settings changed at run time ([`crate::config::DYNAMIC_BROKER_SETTINGS`]):
    /// node id (or `""` for every node) → name → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dynamic_broker_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// Nodes being decommissioned: no new partition is placed on them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub decommissioning: std::collections::BTreeSet<i32>,
    /// The first producer id no node was given yet (cluster members).
    #[serde(default)]
    pub next_producer_id: i64,
    /// The producer-id block each node reserved last: `[first, end)`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub producer_id_blocks: BTreeMap<i32, (i64, i64)>,
    /// Reassignments in progress: topic → partition → reassignment
    /// ([`reassignment`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassignments: BTreeMap<String, BTreeMap<i32, reassignment::Reassignment>>,
}

/// Checks a CreateTopics entry against Kafka's rules and builds the topic.
pub fn validate_new_topic(
    current: &ClusterMetadata,
    config: &crate::config::BrokerConfig,
    name: &str,
    partitions: i32,
    replication_factor: usize,
    configs: &BTreeMap<String, String>,
) -> Result<TopicMeta, KafkaError> {
    check_topic_name(name)
        .map_err(|reason| KafkaError::new(ResponseError::InvalidTopicException, reason))?;
    if current.topic(name).is_some() {
        return Err(KafkaError::new(
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    let partitions = if partitions == -1 {
        config.settings.num_partitions
    } else {
        partitions
    };
    if !(1..=PARTITIONS_MAX).contains(&partitions) {
        return Err(KafkaError::new(
            ResponseError::InvalidPartitions,
            format!("Number of partitions must be between 1 and {PARTITIONS_MAX}."),
        ));
    }
    for (key, value) in configs {
        let setting = crate::config::find_setting(key)
            .filter(|setting| setting.topic_name == Some(key.as_str()))
            .ok_or_else(|| {
                KafkaError::new(
                    ResponseError::InvalidConfig,
                    format!("Unknown topic config name: {key}"),
                )
            })?;
        crate::config::check_value(setting, value)
            .map_err(|error| KafkaError::new(ResponseError::InvalidConfig, error.to_string()))?;
    }
    // A cluster member places every partition's replicas on live nodes; a
    // single node keeps none (all are its own) and is one broker.
    let replicas = if config.cluster.is_some() {
        current
            .place_partitions(partitions as usize, replication_factor)
            .map_err(|error| error.to_kafka_error())?
    } else if replication_factor != 1 {
        return Err(PlacementError::TooFewLiveNodes {
            replication_factor,
            live_nodes: 1,
        }
        .to_kafka_error());
    } else {
        Vec::new()
    };
    Ok(TopicMeta {
        name: name.to_string(),
        id: uuid::Uuid::new_v4(),
        partitions,
        configs: configs.clone(),
        internal: name.starts_with("__"),
        replicas,
    })
}

/// Why a topic name is refused (Kafka's rules).
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is longer than {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("topic name contains {bad:?}; legal characters are ASCII alphanumerics, '.', '_' and '-'"));
    }
    Ok(())
}

impl ClusterMetadata {
    /// Whether clients are refused writes, record deletion and deletion of
    /// this topic: the broker's own topics, as Kafka's `Topic.isInternal`
    /// lists them. Deleting `__consumer_offsets` would lose every group's
    /// offsets; a client's record there could forge or erase commits.
    pub fn is_internal_topic(name: &str) -> bool {
        matches!(name, "__consumer_offsets" | "__transaction_state")
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|topic| topic.id == id)
    }

    /// The image after `records`, applied in order; the version rises by
    /// one per record. Pure: validation happened before the records were
    /// made (the controller's handlers), so applying never fails, and the
    /// same records give the same image wherever they are applied.
    pub fn apply_all(&self, records: &[MetadataRecord]) -> Self {
        let mut next = self.clone();
        for record in records {
            next.apply_in_place(record);
        }
        next
    }

    /// The image after one record.
    pub fn apply(&self, record: &MetadataRecord) -> Self {
        self.apply_all(std::slice::from_ref(record))
    }

    fn apply_in_place(&mut self, record: &MetadataRecord) {
        self.version += 1;
        match record {
            MetadataRecord::Topic(topic) => {
                self.topics.insert(topic.name.clone(), topic.clone());
            }
            MetadataRecord::TopicRemoved { name } => {
                self.topics.remove(name);
                // A new topic of the same name starts on the placement
                // function, in epoch 0.
                self.shard_assignments.remove(name);
                self.leader_epochs.remove(name);
                self.partition_records.remove(name);
                self.reassignments.remove(name);
            }
            MetadataRecord::NodeDecommissioning {
                node,
                decommissioning,
            } => {
                if *decommissioning {
                    self.decommissioning.insert(*node);
                } else {
                    self.decommissioning.remove(node);
                }
            }
            MetadataRecord::BrokerConfigs { resource, configs } => {
                if configs.is_empty() {
                    self.dynamic_broker_configs.remove(resource);
                } else {
                    self.dynamic_broker_configs
                        .insert(resource.clone(), configs.clone());
                }
            }
            MetadataRecord::ProducerIdBlock {
                node,
                count,
                at_least,
            } => {
                let first = self.next_producer_id.max(*at_least).max(0);
                let end = first.saturating_add((*count).max(1));
                self.next_producer_id = end;
                self.producer_id_blocks.insert(*node, (first, end));
            }
            MetadataRecord::Reassignment {
                topic,
                partition,
                reassignment,
            } => match reassignment {
                Some(reassignment) => {
                    self.reassignments
                        .entry(topic.clone())
                        .or_default()
                        .insert(*partition, reassignment.clone());
                }
                None => {
                    if let Some(partitions) = self.reassignments.get_mut(topic) {
                        partitions.remove(partition);
                        if partitions.is_empty() {
                            self.reassignments.remove(topic);
                        }
                    }
                }
            },
            MetadataRecord::ShardAssignment {
                topic,
                partition,
                shard,
            } => match shard {
                Some(shard) => {
                    self.shard_assignments
                        .entry(topic.clone())
                        .or_default()
                        .insert(*partition, *shard);
                }
                None => {
                    if let Some(partitions) = self.shard_assignments.get_mut(topic) {
                        partitions.remove(partition);
                        if partitions.is_empty() {
                            self.shard_assignments.remove(topic);
                        }
                    }
                }
            },
            MetadataRecord::LeaderChange { topic, partition } => {
                // A new leader epoch, so the batches the new leader appends
                // and the clients' requests tell the two leaderships apart.
                // A partition with replication state keeps its epoch there.
                if self.bump_recorded_leader_epoch(topic, *partition) {
                    return;
                }
                let epoch = self
                    .leader_epochs
                    .entry(topic.clone())
                    .or_default()
                    .entry(*partition)
                    .or_insert(0);
                *epoch = epoch.saturating_add(1);
            }
            MetadataRecord::PartitionChange {
                topic,
                partition,
                state,
            } => {
                // Checked again here so that `apply` alone (without
                // `apply_command`'s verdict) never installs a stale state.
                if self
                    .check_partition_change(topic, *partition, state)
                    .is_ok()
                {
                    self.set_partition_record(topic, *partition, state.clone());
                }
            }
            MetadataRecord::AlterPartition {
                topic,
                partition,
                proposal,
            } => {
                if let Ok(state) = self.check_alter_partition(topic, *partition, proposal) {
                    self.set_partition_record(topic, *partition, state);
                }
            }
            MetadataRecord::Moving(moving) => self.moving = moving.clone(),
            MetadataRecord::NodeRegistered(node) => {
                // A node that restarted (a new process) must not lead an
                // epoch it led before the restart: its log may have lost an
                // unsynced suffix its followers hold. Each partition it
                // leads gets a new epoch, so followers check their logs
                // against it again.
                let restarted = self
                    .nodes
                    .get(&node.id)
                    .is_some_and(|known| known.incarnation != node.incarnation);
                let mut node = node.clone();
                node.epoch = self.log_offset;
                node.state = NodeState::Alive;
                let id = node.id;
                self.nodes.insert(id, node);
                if restarted {
                    self.renew_leader_epochs_of(id);
                }
            }
            MetadataRecord::NodeStateChanged { node, epoch, state } => {
                if let Some(registered) = self.nodes.get_mut(node) {
                    if registered.epoch == *epoch {
                        registered.state = *state;
                    }
                }
            }
            MetadataRecord::NodeRemoved { node } => {
                self.decommissioning.remove(node);
                self.nodes.remove(node);
            }
            MetadataRecord::ClusterId(id) => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = id.clone();
                }
            }
        }
    }

    /// A copy with `topic` added (or replaced).
    pub fn with_topic(&self, topic: TopicMeta) -> Self {
        self.apply(&MetadataRecord::Topic(topic))
    }

    /// A copy without `name` (and without its shard assignments).
    pub fn without_topic(&self, name: &str) -> Self {
        self.apply(&MetadataRecord::TopicRemoved {
            name: name.to_string(),
        })
    }

    /// The leader epoch of `topic`/`partition` (0 until its leader first
    /// changes): its replication state's when it has one.
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        if let Some(record) = self.partition_record(topic, partition) {
            return record.leader_epoch;
        }
        self.leader_epochs
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .copied()
            .unwrap_or(0)
    }

    /// A run-time broker setting of `node` (its own, else the one for every
    /// node).
    pub fn dynamic_broker_config(&self, node: i32, name: &str) -> Option<&str> {
        self.dynamic_broker_configs
            .get(&node.to_string())
            .and_then(|configs| configs.get(name))
            .or_else(|| {
                self.dynamic_broker_configs
                    .get("")
                    .and_then(|configs| configs.get(name))
            })
            .map(String::as_str)
    }

    /// The explicit assignment of `topic`/`partition`, whether or not that
    /// shard exists.
    pub fn assigned_shard(&self, topic: &str, partition: i32) -> Option<usize> {
        self.shard_assignments.get(topic)?.get(&partition).copied()
    }

    /// The shard owning `topic`/`partition` among `shard_count` shards.
    pub fn owner_of(&self, topic: &str, partition: i32, shard_count: usize) -> usize {
        crate::placement::resolve_owner(
            self.assigned_shard(topic, partition),
            topic,
            partition,
            shard_count,
        )
    }

    /// Whether `topic`/`partition` is being handed over right now.
    pub fn is_moving(&self, topic: &str, partition: i32) -> bool {
        self.moving
            .as_ref()
            .is_some_and(|(moving, index)| *index == partition && moving == topic)
    }

    /// A copy with `topic`/`partition` explicitly assigned to `shard`, or
    /// with its assignment dropped (`None`).
    pub fn with_assignment(&self, topic: &str, partition: i32, shard: Option<usize>) -> Self {
        self.apply(&MetadataRecord::ShardAssignment {
            topic: topic.to_string(),
            partition,
            shard,
        })
    }

    /// A copy marking `topic`/`partition` as being handed over (or, with
    /// `None`, no partition).
    pub fn with_moving(&self, moving: Option<(String, i32)>) -> Self {
        self.apply(&MetadataRecord::Moving(moving))
    }

    /// Assignments naming a shard that does not exist among `shard_count`
    /// (ignored until it does): `(topic, partition, shard)`.
    pub fn stale_assignments(&self, shard_count: usize) -> Vec<(String, i32, usize)> {
        self.shard_assignments
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .filter(|(_, shard)| **shard >= shard_count)
                    .map(|(partition, shard)| (topic.clone(), *partition, *shard))
            })
            .collect()
    }
}

/// A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding.
pub fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

#[cfg(test)]
mod replication_tests;
#[cfg(test)]
mod tests;
