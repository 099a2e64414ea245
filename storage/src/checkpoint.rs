//! Small per-partition checkpoint files, each written whole and atomically
//! (temp file, `fsync`, rename, `fsync` of the directory):
//!
//! * `leader-epoch-checkpoint`: Kafka's format, `0\n<count>\n<epoch> <start offset>\n...`
//! * `log-start-offset`: the first offset readers may see (DeleteRecords).
//! * `recovery-point`: every offset below it was durable when written; crash
//!   recovery rescans only the segments from the one holding it.
//! * `.kafki-clean-shutdown`: present only between a clean close and the next
//!   open; its absence makes the open rescan the tail.
//!
//! These are rare, tiny writes, done with blocking std I/O on purpose.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{LogError, LogResult};

pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";
pub const LOG_START_FILE: &str = "log-start-offset";
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
pub const CLEAN_SHUTDOWN_FILE: &str = ".kafki-clean-shutdown";

/// Writes `contents` to `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> LogResult<()> {
    let final_path = dir.join(name);
    let temp_path = dir.join(format!("{name}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&temp_path)?;
        file.write_all(contents)?;
        file.sync_data()?;
        fs::rename(&temp_path, &final_path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|source| LogError::io("write checkpoint", &final_path, source))
}

/// Reads a checkpoint file; `Ok(None)` if it does not exist.
fn read_optional(dir: &Path, name: &str) -> LogResult<Option<String>> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::io("read checkpoint", path, source)),
    }
}

/// Reads a file holding one decimal offset. A damaged file is reported and
/// treated as absent: every caller has a safe fallback.
pub fn read_offset(dir: &Path, name: &str) -> LogResult<Option<u64>> {
    let Some(text) = read_optional(dir, name)? else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(offset) => Ok(Some(offset)),
        Err(_) => {
            tracing::warn!(dir = %dir.display(), file = name, "unreadable checkpoint ignored");
            Ok(None)
        }
    }
}

pub fn write_offset(dir: &Path, name: &str, offset: u64) -> LogResult<()> {
    write_atomically(dir, name, format!("{offset}\n").as_bytes())
}

/// Leader epochs of a partition: each epoch and the first offset written in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<(i32, u64)>,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[(i32, u64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(epoch, _)| *epoch)
    }

    /// Records that `epoch` starts at `start_offset` if it is new. Returns
    /// whether the cache changed.
    pub fn assign(&mut self, epoch: i32, start_offset: u64) -> bool {
        match self.entries.last() {
            Some((latest, _)) if *latest >= epoch => false,
            _ => {
                self.entries.push((epoch, start_offset));
                true
            }
        }
    }

    /// Drops epochs that start at or after `offset` (suffix truncation).
    pub fn truncate_from(&mut self, offset: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < offset);
        before != self.entries.len()
    }

    /// Kafka's OffsetForLeaderEpoch answer: the largest epoch ≤ `epoch` and the
    /// end offset of that epoch (the next epoch's start, or `log_end`).
    pub fn end_offset_for(&self, epoch: i32, log_end: u64) -> Option<(i32, u64)> {
        let index = self.entries.partition_point(|(known, _)| *known <= epoch);
        if index == 0 {
            return None;
        }
        let (found, _) = self.entries[index - 1];
        let end = self.entries.get(index).map_or(log_end, |(_, start)| *start);
        Some((found, end))
    }

    pub fn encode(&self) -> String {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            text.push_str(&format!("{epoch} {offset}\n"));
        }
        text
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut cache = LeaderEpochCache::default();
        for line in lines.take(count) {
            let mut fields = line.split_whitespace();
            let epoch: i32 = fields.next()?.parse().ok()?;
            let offset: u64 = fields.next()?.parse().ok()?;
            if !cache.assign(epoch, offset) {
                return None;
            }
        }
        (cache.entries.len() == count).then_some(cache)
    }

    pub fn load(dir: &Path) -> LogResult<Self> {
        let Some(text) = read_optional(dir, LEADER_EPOCH_FILE)? else {
            return Ok(Self::default());
        };
        Ok(Self::decode(&text).unwrap_or_else(|| {
            tracing::warn!(dir = %dir.display(), "damaged leader-epoch checkpoint; rebuilding from batches");
            Self::default()
        }))
    }

    pub fn store(&self, dir: &Path) -> LogResult<()> {
        write_atomically(dir, LEADER_EPOCH_FILE, self.encode().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_cache_round_trip_and_lookup() {
        let mut cache = LeaderEpochCache::default();
        assert!(cache.assign(0, 0));
        assert!(!cache.assign(0, 10));
        assert!(cache.assign(3, 20));
        assert!(cache.assign(5, 40));
        let decoded = LeaderEpochCache::decode(&cache.encode()).expect("round trip");
        assert_eq!(decoded, cache);
        assert_eq!(cache.end_offset_for(4, 99), Some((3, 40)));
        assert_eq!(cache.end_offset_for(5, 99), Some((5, 99)));
        assert_eq!(cache.end_offset_for(-1, 99), None);
        assert!(cache.truncate_from(30));
        assert_eq!(cache.latest_epoch(), Some(3));
    }

    #[test]
    fn damaged_epoch_file_is_rejected() {
        assert!(LeaderEpochCache::decode("0\n2\n1 0\n").is_none());
        assert!(LeaderEpochCache::decode("1\n0\n").is_none());
        assert!(LeaderEpochCache::decode("0\n2\n5 0\n3 9\n").is_none());
    }

    #[test]
    fn offset_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_offset(dir.path(), "x").expect("read"), None);
        write_offset(dir.path(), "x", 42).expect("write");
        assert_eq!(read_offset(dir.path(), "x").expect("read"), Some(42));
        fs::write(dir.path().join("y"), "garbage").expect("write");
        assert_eq!(read_offset(dir.path(), "y").expect("read"), None);
    }
}
