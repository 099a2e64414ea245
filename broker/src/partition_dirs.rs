//! The data directory's partition folders, `<topic>-<partition>/`: the
//! topic-id stamp each one carries, and the start-up sweep that removes the
//! folders no topic owns any more.
//!
//! Deleting a topic commits when the cluster metadata without it is stored;
//! its folders are removed after that. A crash in between (or a folder a
//! request still held) left them behind, and re-creating the name then
//! served the deleted topic's records. So every folder is stamped with its
//! topic's id (`partition.metadata`, as Kafka does), and at start every
//! folder whose topic is gone, whose partition is out of range or whose
//! stamp names another incarnation of the topic is renamed to
//! `<folder>.<id>-delete` and removed, before any partition opens. Folders
//! already so renamed (a removal cut short) are removed too.
//!
//! The sweep never runs against metadata that was just created: a data
//! directory whose metadata file went missing would otherwise lose every
//! partition. A cluster member, whose image is not current at start, removes
//! only folders already marked. Runs on the main thread before the shards
//! start, and on a shard when a topic is deleted (plain blocking file calls,
//! as the rest of topic deletion today).

use std::path::{Path, PathBuf};

use crate::metadata::ClusterMetadata;

/// The stamp file in each partition folder (Kafka's name).
pub const STAMP_FILE: &str = "partition.metadata";

/// Suffix of a folder marked for removal (Kafka's).
const DELETE_SUFFIX: &str = "-delete";

/// Splits `orders-3` into (`orders`, 3). Topic names may hold `-`; the
/// partition is what follows the last one.
pub fn parse_folder_name(name: &str) -> Option<(&str, i32)> {
    let (topic, index) = name.rsplit_once('-')?;
    if topic.is_empty() || index.is_empty() || !index.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((topic, index.parse().ok()?))
}

/// The topic id a folder's stamp names, if it has a readable one.
pub fn read_stamp(dir: &Path) -> Option<uuid::Uuid> {
    let text = std::fs::read_to_string(dir.join(STAMP_FILE)).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("topic_id:"))
        .and_then(|id| uuid::Uuid::parse_str(id.trim()).ok())
}

/// Stamps `dir` with `topic_id` unless it already carries that stamp.
/// Written atomically, as the log's checkpoints are; a failure is returned
/// for the caller to log: an unstamped folder is adopted by its topic at the
/// next start, so nothing is lost without it.
pub fn ensure_stamp(dir: &Path, topic_id: uuid::Uuid) -> kafki_storage::LogResult<()> {
    if read_stamp(dir) == Some(topic_id) {
        return Ok(());
    }
    kafki_storage::checkpoint::write_atomically(
        dir,
        STAMP_FILE,
        format!("version: 0\ntopic_id: {topic_id}\n").as_bytes(),
    )
}

/// Why a folder is stray, if it is.
fn stray_reason(metadata: &ClusterMetadata, dir: &Path, name: &str) -> Option<String> {
    if name.ends_with(DELETE_SUFFIX) {
        return Some("marked for deletion".to_string());
    }
    let (topic, index) = parse_folder_name(name)?;
    let Some(meta) = metadata.topic(topic) else {
        return Some(format!("topic {topic} does not exist"));
    };
    if index >= meta.partitions {
        return Some(format!("topic {topic} has {} partitions", meta.partitions));
    }
    match read_stamp(dir) {
        Some(id) if id != meta.id => Some(format!(
            "it belongs to an earlier topic {topic} (id {id}, now {})",
            meta.id
        )),
        _ => None,
    }
}

/// Removes a partition folder: first renamed to `<folder>.<id>-delete` (so a
/// crash mid-removal leaves it marked, and a new topic of the same name
/// never opens it), then deleted.
pub fn remove_folder(dir: &Path) -> std::io::Result<()> {
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let doomed: PathBuf = if name.ends_with(DELETE_SUFFIX) {
        dir.to_path_buf()
    } else {
        let marked = dir.with_file_name(format!(
            "{name}.{}{DELETE_SUFFIX}",
            uuid::Uuid::new_v4().simple()
        ));
        match std::fs::rename(dir, &marked) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        marked
    };
    match std::fs::remove_dir_all(&doomed) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Runs blocking folder work (removal, stamps) on the executor's blocking
/// threads, so a shard never stalls its partitions on it.
pub async fn off_shard<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    kafki_storage::checkpoint::off_executor(work).await
}

/// Removes folders on the blocking threads, logging what fails.
pub async fn remove_folders_off_shard(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    off_shard(move || {
        for dir in dirs {
            if let Err(error) = remove_folder(&dir) {
                tracing::warn!(dir = %dir.display(), %error, "removing a deleted partition");
            }
        }
    })
    .await
}

/// The start-up sweep (see the module's comment). Returns how many folders
/// it removed.
pub fn sweep_strays(data_dir: &Path, metadata: &ClusterMetadata) -> usize {
    sweep(data_dir, |path, name| stray_reason(metadata, path, name))
}

/// A cluster member's start-up sweep: only folders already marked for
/// deletion (a removal a crash cut short). Its metadata image is not
/// current until it has caught up with the quorum, and folders of topics
/// created after its last snapshot are not in the snapshot, so it cannot
/// judge the others at start; an unmarked folder of a deleted topic stays
/// until a topic of that name is placed here again (opening checks the
/// stamp and removes it then).
pub fn sweep_marked(data_dir: &Path) -> usize {
    sweep(data_dir, |_, name| {
        name.ends_with(DELETE_SUFFIX)
            .then(|| "marked for deletion".to_string())
    })
}

/// The partitions whose folders hold segment files but no clean-shutdown
/// marker: written to since their last clean close, so an unclean stop may
/// have lost what was written and not yet synced. Read before any
/// partition opens (the first write after an open removes the marker).
pub fn unclean_partitions(data_dir: &Path) -> std::collections::BTreeSet<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (topic, index) = parse_folder_name(&name)?;
            let path = entry.path();
            if path
                .join(kafki_storage::checkpoint::CLEAN_SHUTDOWN_FILE)
                .exists()
            {
                return None;
            }
            let has_segments = std::fs::read_dir(&path).ok()?.flatten().any(|file| {
                file.file_name()
                    .to_str()
                    .is_some_and(|file| file.ends_with(".log"))
            });
            has_segments.then(|| (topic.to_string(), index))
        })
        .collect()
}

/// Removes every folder of `data_dir` that `reason` names a reason for.
fn sweep(data_dir: &Path, reason: impl Fn(&Path, &str) -> Option<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(reason) = reason(&path, &name) else {
            continue;
        };
        match remove_folder(&path) {
            Ok(()) => {
                removed += 1;
                tracing::warn!(folder = %path.display(), %reason, "removed a partition folder no topic owns (a deletion a crash cut short)");
            }
            Err(error) => {
                tracing::error!(folder = %path.display(), %reason, %error, "cannot remove a stray partition folder")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::TopicMeta;
    use std::collections::BTreeMap;

    fn metadata_with(name: &str, partitions: i32) -> (ClusterMetadata, uuid::Uuid) {
        let id = uuid::Uuid::new_v4();
        let topic = TopicMeta {
            name: name.to_string(),
            id,
            partitions,
            configs: BTreeMap::new(),
            internal: false,
            replicas: Vec::new(),
        };
        (ClusterMetadata::default().with_topic(topic), id)
    }

    #[test]
    fn folder_names() {
        assert_eq!(parse_folder_name("orders-3"), Some(("orders", 3)));
        assert_eq!(parse_folder_name("my-topic-12"), Some(("my-topic", 12)));
        assert_eq!(parse_folder_name("orders"), None);
        assert_eq!(parse_folder_name("orders-"), None);
        assert_eq!(parse_folder_name("-3"), None);
        assert_eq!(parse_folder_name("orders-x"), None);
    }

    #[test]
    fn sweep_keeps_owned_folders_and_removes_strays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (metadata, id) = metadata_with("live", 2);
        let make = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("mkdir");
            std::fs::write(path.join("00000000000000000000.log"), b"data").expect("write");
            path
        };
        let owned = make("live-0");
        ensure_stamp(&owned, id).expect("stamp");
        let unstamped = make("live-1");
        let out_of_range = make("live-2");
        let gone = make("deleted-0");
        let older = make("older-0");
        let (mut metadata, _) = (metadata, ());
        let (with_older, _) = metadata_with("older", 1);
        metadata = metadata.with_topic(with_older.topic("older").expect("topic").clone());
        ensure_stamp(&older, uuid::Uuid::new_v4()).expect("stamp");
        let half_removed = make("x-0.abc-delete");
        std::fs::write(dir.path().join("cluster-metadata.json"), b"{}").expect("file");

        assert_eq!(sweep_strays(dir.path(), &metadata), 4);
        assert!(owned.exists());
        assert!(
            unstamped.exists(),
            "an unstamped folder is adopted, not removed"
        );
        for path in [out_of_range, gone, older, half_removed] {
            assert!(!path.exists(), "{} should be gone", path.display());
        }
        assert!(dir.path().join("cluster-metadata.json").exists());
        assert_eq!(read_stamp(&owned), Some(id));
    }

    #[test]
    fn cluster_sweep_removes_only_marked_folders() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("topic-not-in-any-snapshot-0");
        let marked = dir.path().join("gone-0.abc-delete");
        for path in [&live, &marked] {
            std::fs::create_dir(path).expect("mkdir");
        }
        assert_eq!(sweep_marked(dir.path()), 1);
        assert!(live.exists(), "judged only after catching up, not at start");
        assert!(!marked.exists());
    }
}
