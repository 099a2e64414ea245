//! Cluster metadata: topics, their ids, partition counts, config overrides
//! and explicit partition → shard assignments. One immutable snapshot
//! (`Arc<ClusterMetadata>`) is shared by every shard; changes are made only
//! by the controller shard (shard 0) as [`MetadataRecord`]s applied to the
//! image (pure: [`ClusterMetadata::apply`]), stored through a
//! [`MetadataStore`] (today [`JsonFileStore`]: `<data-dir>/cluster-metadata.json`,
//! written atomically), then broadcast to all shards before the change is
//! acknowledged. The records and the store are the seams where the cluster's
//! replicated metadata log plugs in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::errors::KafkaError;
use anyhow::Context;
use kafki_net::kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};

pub const METADATA_FILE: &str = "cluster-metadata.json";

/// Where the metadata image lives between starts.
pub trait MetadataStore {
    /// The stored image, or a new empty one (stored) if there is none.
    fn load_or_create(&self) -> anyhow::Result<ClusterMetadata>;
    /// Replaces the stored image, durably, before the change is answered.
    fn store(&self, image: &ClusterMetadata) -> anyhow::Result<()>;
}

/// The single node's store: one JSON file in the data directory, replaced
/// atomically (temp file, fsync, rename, directory fsync).
#[derive(Debug, Clone)]
pub struct JsonFileStore {
    pub data_dir: std::path::PathBuf,
}

impl MetadataStore for JsonFileStore {
    fn load_or_create(&self) -> anyhow::Result<ClusterMetadata> {
        ClusterMetadata::load_or_create(&self.data_dir)
    }

    fn store(&self, image: &ClusterMetadata) -> anyhow::Result<()> {
        image.store(&self.data_dir)
    }
}
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
    TopicRemoved { name: String },
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
    /// a cluster: an election): its leader epoch grows by one.
    LeaderChange { topic: String, partition: i32 },
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
}

/// Checks a CreateTopics entry against Kafka's rules and builds the topic.
pub fn validate_new_topic(
    current: &ClusterMetadata,
    config: &crate::config::BrokerConfig,
    name: &str,
    partitions: i32,
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
    Ok(TopicMeta {
        name: name.to_string(),
        id: uuid::Uuid::new_v4(),
        partitions,
        configs: configs.clone(),
        internal: name.starts_with("__"),
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
    /// Loads the metadata file, or starts fresh with a new cluster id.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(METADATA_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged; fix or remove it", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let metadata = ClusterMetadata {
                    version: 0,
                    cluster_id: new_cluster_id(),
                    ..Default::default()
                };
                metadata.store(data_dir)?;
                Ok(metadata)
            }
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the metadata file atomically (temp file, fsync, rename, dir
    /// fsync). On a full disk it releases the space reserve and tries once
    /// more ([`crate::disk`]), so deleting topics still works there.
    pub fn store(&self, data_dir: &Path) -> anyhow::Result<()> {
        crate::disk::write_with_reserve(data_dir, || self.store_once(data_dir))
    }

    /// [`ClusterMetadata::store`] on the executor's blocking threads: a write
    /// and two fsyncs on the shard itself would stall every partition it
    /// serves (milliseconds each on this disk).
    pub async fn store_off_shard(&self, data_dir: &Path) -> anyhow::Result<()> {
        let snapshot = self.clone();
        let store = JsonFileStore {
            data_dir: data_dir.to_path_buf(),
        };
        kafki_storage::checkpoint::off_executor(move || store.store(&snapshot)).await
    }

    fn store_once(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(METADATA_FILE);
        let temp = data_dir.join(format!("{METADATA_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self)?;
        let mut file =
            std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }

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
            }
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
                let epoch = self
                    .leader_epochs
                    .entry(topic.clone())
                    .or_default()
                    .entry(*partition)
                    .or_insert(0);
                *epoch = epoch.saturating_add(1);
            }
            MetadataRecord::Moving(moving) => self.moving = moving.clone(),
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
    /// changes).
    pub fn leader_epoch(&self, topic: &str, partition: i32) -> i32 {
        self.leader_epochs
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .copied()
            .unwrap_or(0)
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
fn new_cluster_id() -> String {
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
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("orders.v1_eu-west").is_ok());
        assert!(check_topic_name("").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name("a b").is_err());
        assert!(check_topic_name("a/b").is_err());
        assert!(check_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let created = ClusterMetadata::load_or_create(dir.path()).expect("create");
        assert_eq!(created.cluster_id.len(), 22);
        let next = created.with_topic(TopicMeta {
            name: "t".into(),
            id: uuid::Uuid::new_v4(),
            partitions: 3,
            configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
            internal: false,
        });
        next.store(dir.path()).expect("store");
        let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
        assert_eq!(loaded, next);
        assert_eq!(loaded.version, 1);
        std::fs::write(dir.path().join(METADATA_FILE), b"{broken").expect("write");
        assert!(ClusterMetadata::load_or_create(dir.path()).is_err());
    }

    fn topic(name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            name: name.into(),
            id: uuid::Uuid::new_v4(),
            partitions,
            configs: BTreeMap::new(),
            internal: false,
        }
    }

    #[test]
    fn records_applied_in_order_give_one_image_wherever_they_are_applied() {
        let t = topic("t", 2);
        let records = vec![
            MetadataRecord::Topic(t.clone()),
            MetadataRecord::ShardAssignment {
                topic: "t".into(),
                partition: 1,
                shard: Some(3),
            },
            MetadataRecord::Moving(Some(("t".into(), 1))),
            MetadataRecord::Moving(None),
            MetadataRecord::Topic(TopicMeta {
                partitions: 4,
                ..t.clone()
            }),
        ];
        let start = ClusterMetadata::default();
        let image = start.apply_all(&records);
        assert_eq!(image.version, start.version + records.len() as u64);
        assert_eq!(image.topic("t").map(|topic| topic.partitions), Some(4));
        assert_eq!(image.assigned_shard("t", 1), Some(3));
        assert!(!image.is_moving("t", 1));
        // Records survive a round trip (a replicated log will carry them)
        // and replaying them one by one gives the same image.
        let text = serde_json::to_string(&records).expect("encode");
        let decoded: Vec<MetadataRecord> = serde_json::from_str(&text).expect("decode");
        let replayed = decoded
            .iter()
            .fold(start.clone(), |image, record| image.apply(record));
        assert_eq!(replayed, image);
        // Removing the topic drops its assignments and epochs too.
        let removed = image.apply(&MetadataRecord::TopicRemoved { name: "t".into() });
        assert!(removed.topic("t").is_none());
        assert_eq!(removed.assigned_shard("t", 1), None);
        assert_eq!(removed.leader_epoch("t", 1), 0);
    }

    #[test]
    fn each_change_of_leader_starts_a_new_epoch() {
        let image = ClusterMetadata::default().with_topic(topic("t", 2));
        assert_eq!(image.leader_epoch("t", 0), 0);
        let change = MetadataRecord::LeaderChange {
            topic: "t".into(),
            partition: 0,
        };
        let moved = image.apply(&change);
        assert_eq!(moved.leader_epoch("t", 0), 1);
        assert_eq!(moved.leader_epoch("t", 1), 0, "only the moved partition");
        // An assignment alone (the owner may stay the same) is no new leader.
        let pinned = moved.apply(&MetadataRecord::ShardAssignment {
            topic: "t".into(),
            partition: 0,
            shard: Some(1),
        });
        assert_eq!(pinned.leader_epoch("t", 0), 1);
        let back = pinned.apply(&change);
        assert_eq!(back.leader_epoch("t", 0), 2);
        // Stored and loaded with the image; a config change keeps it.
        let text = serde_json::to_string(&back).expect("encode");
        let loaded: ClusterMetadata = serde_json::from_str(&text).expect("decode");
        assert_eq!(loaded.leader_epoch("t", 0), 2);
        let changed = loaded.with_topic(TopicMeta {
            partitions: 3,
            ..topic("t", 2)
        });
        assert_eq!(changed.leader_epoch("t", 0), 2);
    }

    #[test]
    fn a_file_from_before_assignments_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = r#"{"version":3,"cluster_id":"abc","topics":{"t":{"name":"t",
            "id":"67e55044-10b1-426f-9247-bb680e5fe0c8","partitions":2,"configs":{},
            "internal":false}}}"#;
        std::fs::write(dir.path().join(METADATA_FILE), old).expect("write");
        let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
        assert!(loaded.shard_assignments.is_empty());
        assert_eq!(
            loaded.owner_of("t", 1, 4),
            crate::placement::shard_for("t", 1, 4)
        );
    }

    #[test]
    fn assignments_round_trip_but_a_move_in_progress_is_never_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let created = ClusterMetadata::load_or_create(dir.path()).expect("create");
        let next = created
            .with_topic(topic("t", 3))
            .with_assignment("t", 2, Some(1))
            .with_moving(Some(("t".into(), 2)));
        assert!(next.is_moving("t", 2));
        assert!(!next.is_moving("t", 1));
        assert!(!next.is_moving("u", 2));
        next.store(dir.path()).expect("store");
        let loaded = ClusterMetadata::load_or_create(dir.path()).expect("load");
        assert_eq!(loaded.assigned_shard("t", 2), Some(1));
        assert_eq!(loaded.moving, None);
        assert_eq!(loaded.owner_of("t", 2, 2), 1);
    }

    #[test]
    fn owner_resolution_override_stale_and_fallback() {
        let pure = crate::placement::shard_for("t", 0, 2);
        let other = 1 - pure;
        let metadata = ClusterMetadata::default()
            .with_topic(topic("t", 2))
            .with_assignment("t", 0, Some(other))
            .with_assignment("t", 1, Some(7));
        assert_eq!(metadata.owner_of("t", 0, 2), other);
        // Shard 7 does not exist with 2 shards: the function decides.
        assert_eq!(
            metadata.owner_of("t", 1, 2),
            crate::placement::shard_for("t", 1, 2)
        );
        assert_eq!(metadata.owner_of("t", 1, 8), 7);
        assert_eq!(metadata.stale_assignments(2), vec![("t".to_string(), 1, 7)]);
        assert!(metadata.stale_assignments(8).is_empty());
        let dropped = metadata.with_assignment("t", 0, None);
        assert_eq!(dropped.owner_of("t", 0, 2), pure);
        let dropped = dropped.with_assignment("t", 1, None);
        assert!(
            dropped.shard_assignments.is_empty(),
            "empty topic entries go too"
        );
    }

    #[test]
    fn deleting_a_topic_drops_its_assignments_and_growing_keeps_them() {
        let metadata = ClusterMetadata::default()
            .with_topic(topic("t", 2))
            .with_topic(topic("u", 1))
            .with_assignment("t", 1, Some(0))
            .with_assignment("u", 0, Some(1));
        let mut grown = metadata.topic("t").cloned().expect("t");
        grown.partitions = 5;
        let grown = metadata.with_topic(grown);
        assert_eq!(grown.assigned_shard("t", 1), Some(0));
        let deleted = grown.without_topic("t");
        assert_eq!(deleted.assigned_shard("t", 1), None);
        assert!(!deleted.shard_assignments.contains_key("t"));
        assert_eq!(deleted.assigned_shard("u", 0), Some(1));
    }
}
