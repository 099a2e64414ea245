//! Where a single node keeps its metadata image between starts: one JSON
//! file in the data directory, replaced atomically. (A cluster member keeps
//! the metadata log of [`crate::cluster`] instead.)

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{new_cluster_id, ClusterMetadata};

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
}
