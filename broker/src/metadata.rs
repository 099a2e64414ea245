//! Cluster metadata: topics, their ids, partition counts, config overrides
//! and explicit partition → shard assignments. One immutable snapshot (`Arc<ClusterMetadata>`) is shared by
//! every shard; changes are made only by the controller shard (shard 0),
//! written to `<data-dir>/cluster-metadata.json` atomically, then the new
//! snapshot is broadcast to all shards before the change is acknowledged.
//! This is the seam where a replicated metadata log will plug in.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const METADATA_FILE: &str = "cluster-metadata.json";
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
    /// The partition being handed over between shards, if any. While set,
    /// no shard serves it (clients get `NOT_LEADER_OR_FOLLOWER` and retry).
    /// Never stored: a restart mid-move finds the old or the new owner in
    /// the file, never a move in progress.
    #[serde(skip)]
    pub moving: Option<(String, i32)>,
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

    /// Writes the metadata atomically and durably.
    pub fn store(&self, data_dir: &Path) -> anyhow::Result<()> {
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

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: uuid::Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|topic| topic.id == id)
    }

    /// A copy with `topic` added.
    pub fn with_topic(&self, topic: TopicMeta) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.topics.insert(topic.name.clone(), topic);
        next
    }

    /// A copy without `name` (and without its shard assignments, so a new
    /// topic of the same name starts on the placement function).
    pub fn without_topic(&self, name: &str) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.topics.remove(name);
        next.shard_assignments.remove(name);
        next
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
        let mut next = self.clone();
        next.version += 1;
        match shard {
            Some(shard) => {
                next.shard_assignments
                    .entry(topic.to_string())
                    .or_default()
                    .insert(partition, shard);
            }
            None => {
                if let Some(partitions) = next.shard_assignments.get_mut(topic) {
                    partitions.remove(&partition);
                    if partitions.is_empty() {
                        next.shard_assignments.remove(topic);
                    }
                }
            }
        }
        next
    }

    /// A copy marking `topic`/`partition` as being handed over (or, with
    /// `None`, no partition).
    pub fn with_moving(&self, moving: Option<(String, i32)>) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.moving = moving;
        next
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
