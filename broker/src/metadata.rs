//! Cluster metadata: topics, their ids, partition counts and config
//! overrides. One immutable snapshot (`Arc<ClusterMetadata>`) is shared by
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
                    topics: BTreeMap::new(),
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

    /// A copy without `name`.
    pub fn without_topic(&self, name: &str) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.topics.remove(name);
        next
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
}
