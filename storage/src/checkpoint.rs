//! Small per-partition checkpoint files, each written whole and atomically
//! (temp file, `fsync`, rename, `fsync` of the directory):
//!
//! * `leader-epoch-checkpoint`: Kafka's format, `0\n<count>\n<epoch> <start offset>\n...`
//! * `log-start-offset`: the first offset readers may see (DeleteRecords).
//! * `recovery-point`: every offset below it was durable when written; crash
//!   recovery rescans only the segments from the one holding it.
//! * `.kafki-clean-shutdown`: present only between a clean close and the next
//!   open; its absence makes the open rescan the tail.
//! * `cleaner-checkpoint` (compacted logs): where the clean part of the log
//!   ends (the first dirty offset), when each stretch of the clean part was
//!   first cleaned (tombstone expiry is measured from that), and the groups of
//!   a cleaning pass being swapped in (it is the pass's commit record, see
//!   `cleaner.rs`).
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
pub const CLEANER_FILE: &str = "cleaner-checkpoint";

/// Stretches of a tombstone's wait are rounded up to buckets this fraction
/// of `delete.retention.ms` wide, which bounds the checkpoint to about this
/// many entries whatever the cleaning frequency.
const CLEANER_BUCKETS_PER_RETENTION: i64 = 64;

/// Runs blocking file work (writes and syncs of small files) on the
/// executor's blocking threads rather than on the shard itself: the shard
/// keeps serving meanwhile, and when it closes or opens many logs at once
/// their syncs overlap instead of queueing one after the other.
///
/// The work is counted while it runs ([`wait_blocking_idle`]): glommio's
/// blocking thread panics if its executor is gone when the work ends, which
/// happens when a task that started it is dropped at shutdown.
pub async fn off_executor<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    BLOCKING_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    glommio::executor()
        .spawn_blocking(move || {
            let result = work();
            BLOCKING_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            result
        })
        .await
}

/// Blocking work started with [`off_executor`] and not finished, process-wide.
static BLOCKING_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits (at most `max`) until no work started with [`off_executor`] is
/// running, then a little longer for its answer to reach the executor. An
/// executor calls this last, before it ends.
pub async fn wait_blocking_idle(max: std::time::Duration) {
    let started = std::time::Instant::now();
    while BLOCKING_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst) > 0
        && started.elapsed() < max
    {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
    glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
}

/// [`write_atomically`] for several files with one directory sync: each
/// written to a temp file and synced, then all renamed, then the directory
/// synced once.
pub fn write_all_atomically<N: AsRef<str>, C: AsRef<[u8]>>(
    dir: &Path,
    files: &[(N, C)],
) -> LogResult<()> {
    for (name, contents) in files {
        let name = name.as_ref();
        fs::File::create(dir.join(format!("{name}.tmp")))
            .and_then(|mut file| {
                file.write_all(contents.as_ref())?;
                file.sync_data()
            })
            .map_err(|source| LogError::io("write checkpoint", dir.join(name), source))?;
    }
    for (name, _) in files {
        let name = name.as_ref();
        let final_path = dir.join(name);
        fs::rename(dir.join(format!("{name}.tmp")), &final_path)
            .map_err(|source| LogError::io("write checkpoint", &final_path, source))?;
    }
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| LogError::io("write checkpoint", dir, source))
}

/// Replaces each file (temp file, rename) without syncing anything: for a
/// node stop, whose one `syncfs` afterwards makes them durable
/// ([`crate::log::finish_stop`]).
pub fn write_all_unsynced<N: AsRef<str>, C: AsRef<[u8]>>(
    dir: &Path,
    files: &[(N, C)],
) -> LogResult<()> {
    for (name, contents) in files {
        let name = name.as_ref();
        let temp = dir.join(format!("{name}.tmp"));
        let final_path = dir.join(name);
        fs::write(&temp, contents.as_ref())
            .and_then(|()| fs::rename(&temp, &final_path))
            .map_err(|source| LogError::io("write checkpoint", final_path, source))?;
    }
    Ok(())
}

/// Creates the (empty) clean-shutdown marker and syncs the directory: for a
/// log with nothing else to write (an empty file has no data to sync, so
/// the temp-file dance of [`write_atomically`] buys nothing).
pub fn mark_clean(dir: &Path) -> LogResult<()> {
    let marker = dir.join(CLEAN_SHUTDOWN_FILE);
    fs::File::create(&marker)
        .and_then(|_| fs::File::open(dir)?.sync_all())
        .map_err(|source| LogError::io("write marker", &marker, source))
}

/// Writes `contents` to `dir/name` and syncs the file (not the directory):
/// the first half of an atomic replace whose rename comes later.
pub fn write_synced(dir: &Path, name: &str, contents: &[u8]) -> LogResult<()> {
    let path = dir.join(name);
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&path)?;
        file.write_all(contents)?;
        file.sync_data()
    })();
    result.map_err(|source| LogError::io("write checkpoint", &path, source))
}

/// Renames `dir/from` over `dir/to` and syncs the directory: the second half.
pub fn rename_synced(dir: &Path, from: &str, to: &str) -> LogResult<()> {
    let result = (|| -> std::io::Result<()> {
        fs::rename(dir.join(from), dir.join(to))?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|source| LogError::io("rename checkpoint", dir.join(from), source))
}

/// Writes `contents` to `dir/name` atomically and durably.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> LogResult<()> {
    write_all_atomically(dir, &[(name, contents)])
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

/// One group of a committed cleaning pass: the segments with base offsets in
/// `[base, end)` are replaced by the cleaned segment `base` (`keep`) or
/// removed (its output was empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwapGroup {
    pub base: u64,
    pub end: u64,
    pub keep: bool,
}

/// The cleaner's progress through a compacted log: consecutive stretches
/// `[previous end, end)` of the clean part, each with the time (ms since the
/// epoch, rounded up to a bucket) of the cleaning that first compacted it.
/// The last end is the first dirty offset. Text format:
/// `0\n<gaps below>\n<count>\n<end offset> <cleaned at ms>\n...` then
/// `<group count>\n<base> <end> <keep 0|1>\n...` for `pending`.
///
/// `gaps_below`: every batch the cleaner ever removed lies below it, so
/// recovery accepts offset gaps exactly there (see
/// [`crate::segment::OffsetRule`]). It equals the first dirty offset except
/// after a damaged checkpoint, when the whole log as it was is assumed
/// cleaned while its cleaning starts over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanerCheckpoint {
    gaps_below: u64,
    entries: Vec<(u64, i64)>,
    /// Groups of the pass this checkpoint committed, until they are known
    /// to be swapped in durably (only ever non-empty on disk).
    pending: Vec<SwapGroup>,
}

impl CleanerCheckpoint {
    /// A fresh checkpoint (cleaning starts over) for a log whose offsets
    /// below `end` may have gaps.
    pub fn restart_with_gaps_below(end: u64) -> Self {
        Self {
            gaps_below: end,
            entries: Vec::new(),
            pending: Vec::new(),
        }
    }

    pub fn pending(&self) -> &[SwapGroup] {
        &self.pending
    }

    /// This checkpoint as the commit record of a pass with these groups.
    pub fn with_pending(&self, groups: Vec<SwapGroup>) -> Self {
        Self {
            pending: groups,
            ..self.clone()
        }
    }

    pub fn without_pending(&self) -> Self {
        self.with_pending(Vec::new())
    }

    pub fn entries(&self) -> &[(u64, i64)] {
        &self.entries
    }

    pub fn gaps_below(&self) -> u64 {
        self.gaps_below
    }

    /// The first offset the cleaner has not compacted yet (0: never cleaned).
    pub fn first_dirty(&self) -> u64 {
        self.entries.last().map_or(0, |(end, _)| *end)
    }

    /// When the stretch holding `offset` was first cleaned; `None` when
    /// `offset` lies in the dirty part.
    pub fn cleaned_at(&self, offset: u64) -> Option<i64> {
        let index = self.entries.partition_point(|(end, _)| *end <= offset);
        self.entries.get(index).map(|(_, time)| *time)
    }

    /// Records that a cleaning at `now_ms` moved the first dirty offset to
    /// `end`. Cleanings in the same time bucket share one entry whose time
    /// is the bucket's end, so a tombstone can only wait longer, never less.
    pub fn advance(&mut self, end: u64, now_ms: i64, delete_retention_ms: i64) {
        if end <= self.first_dirty() {
            return;
        }
        self.gaps_below = self.gaps_below.max(end);
        let bucket = (delete_retention_ms / CLEANER_BUCKETS_PER_RETENTION).max(1);
        let time = (now_ms.max(0) / bucket)
            .saturating_add(1)
            .saturating_mul(bucket);
        match self.entries.last_mut() {
            Some(last) if last.1 == time => last.0 = end,
            _ => self.entries.push((end, time)),
        }
    }

    /// Merges the stretches whose tombstones have all expired into one.
    pub fn prune(&mut self, now_ms: i64, delete_retention_ms: i64) {
        let expired = self
            .entries
            .iter()
            .take_while(|(_, time)| time.saturating_add(delete_retention_ms) <= now_ms)
            .count();
        if expired > 1 {
            self.entries.drain(..expired - 1);
        }
    }

    /// Forgets everything at or above `end` (suffix truncation or a log that
    /// recovered shorter): those offsets are dirty again.
    pub fn truncate(&mut self, end: u64) -> bool {
        let before = self.clone();
        self.gaps_below = self.gaps_below.min(end);
        let keep = self
            .entries
            .partition_point(|(stretch_end, _)| *stretch_end < end);
        if keep < self.entries.len() {
            self.entries.truncate(keep + 1);
            self.entries[keep].0 = end;
        }
        if self.entries.len() == 1 && self.entries[0].0 == 0 {
            self.entries.clear();
        }
        before != *self
    }

    pub fn encode(&self) -> String {
        let mut text = format!("0\n{}\n{}\n", self.gaps_below, self.entries.len());
        for (end, time) in &self.entries {
            text.push_str(&format!("{end} {time}\n"));
        }
        text.push_str(&format!("{}\n", self.pending.len()));
        for group in &self.pending {
            text.push_str(&format!(
                "{} {} {}\n",
                group.base,
                group.end,
                u8::from(group.keep)
            ));
        }
        text
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()?.trim() != "0" {
            return None;
        }
        let gaps_below: u64 = lines.next()?.trim().parse().ok()?;
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries: Vec<(u64, i64)> = Vec::new();
        for _ in 0..count {
            let mut fields = lines.next()?.split_whitespace();
            let end: u64 = fields.next()?.parse().ok()?;
            let time: i64 = fields.next()?.parse().ok()?;
            if entries.last().is_some_and(|(previous, _)| *previous >= end) {
                return None;
            }
            entries.push((end, time));
        }
        let groups: usize = lines.next()?.trim().parse().ok()?;
        let mut pending: Vec<SwapGroup> = Vec::new();
        for _ in 0..groups {
            let mut fields = lines.next()?.split_whitespace();
            let base: u64 = fields.next()?.parse().ok()?;
            let end: u64 = fields.next()?.parse().ok()?;
            let keep = match fields.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            };
            let ordered = base < end && pending.last().is_none_or(|previous| previous.end <= base);
            if !ordered {
                return None;
            }
            pending.push(SwapGroup { base, end, keep });
        }
        let first_dirty = entries.last().map_or(0, |(end, _)| *end);
        (gaps_below >= first_dirty).then_some(Self {
            gaps_below,
            entries,
            pending,
        })
    }

    /// Loads the checkpoint. `Ok(None)` when the file exists but does not
    /// decode: the caller must then assume any segment may have been cleaned.
    pub fn load(dir: &Path) -> LogResult<Option<Self>> {
        let Some(text) = read_optional(dir, CLEANER_FILE)? else {
            return Ok(Some(Self::default()));
        };
        let decoded = Self::decode(&text);
        if decoded.is_none() {
            tracing::warn!(dir = %dir.display(), "damaged cleaner checkpoint: the whole log is treated as possibly cleaned and cleaned again from its start");
        }
        Ok(decoded)
    }

    pub fn store(&self, dir: &Path) -> LogResult<()> {
        write_atomically(dir, CLEANER_FILE, self.encode().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaner_checkpoint_stretches() {
        let mut checkpoint = CleanerCheckpoint::default();
        assert_eq!(checkpoint.first_dirty(), 0);
        assert_eq!(checkpoint.cleaned_at(0), None);
        // Retention 6400 ms: buckets of 100 ms.
        checkpoint.advance(10, 1_050, 6_400);
        checkpoint.advance(20, 1_099, 6_400);
        checkpoint.advance(15, 1_200, 6_400);
        checkpoint.advance(30, 1_250, 6_400);
        assert_eq!(checkpoint.entries(), &[(20, 1_100), (30, 1_300)]);
        assert_eq!(checkpoint.cleaned_at(0), Some(1_100));
        assert_eq!(checkpoint.cleaned_at(19), Some(1_100));
        assert_eq!(checkpoint.cleaned_at(20), Some(1_300));
        assert_eq!(checkpoint.cleaned_at(30), None);
        let decoded = CleanerCheckpoint::decode(&checkpoint.encode()).expect("round trip");
        assert_eq!(decoded, checkpoint);
        checkpoint.prune(1_100 + 6_400, 6_400);
        assert_eq!(
            checkpoint.entries().len(),
            2,
            "one expired stretch stays as is"
        );
        checkpoint.advance(40, 9_000, 6_400);
        checkpoint.prune(20_000, 6_400);
        assert_eq!(checkpoint.entries(), &[(40, 9_100)]);
        assert!(checkpoint.truncate(25));
        assert_eq!(checkpoint.entries(), &[(25, 9_100)]);
        assert!(!checkpoint.truncate(30));
        assert!(checkpoint.truncate(0));
        assert_eq!(checkpoint.first_dirty(), 0);
        assert_eq!(checkpoint.gaps_below(), 0);
        assert!(CleanerCheckpoint::decode("0\n9\n2\n5 1\n5 2\n0\n").is_none());
        assert!(CleanerCheckpoint::decode("0\n9\n1\n").is_none());
        assert!(CleanerCheckpoint::decode("0\n4\n1\n5 1\n0\n").is_none());
        assert!(
            CleanerCheckpoint::decode("0\n9\n1\n5 1\n").is_none(),
            "no group count"
        );
        let committing = CleanerCheckpoint::decode("0\n9\n1\n9 1\n0\n")
            .expect("decodes")
            .with_pending(vec![
                SwapGroup {
                    base: 0,
                    end: 4,
                    keep: true,
                },
                SwapGroup {
                    base: 4,
                    end: 9,
                    keep: false,
                },
            ]);
        assert_eq!(
            CleanerCheckpoint::decode(&committing.encode()),
            Some(committing.clone())
        );
        assert_eq!(committing.without_pending().pending(), &[]);
        let overlapping = committing.encode().replace("4 9 0", "3 9 0");
        assert!(CleanerCheckpoint::decode(&overlapping).is_none());
        let restarted = CleanerCheckpoint::restart_with_gaps_below(77);
        assert_eq!((restarted.first_dirty(), restarted.gaps_below()), (0, 77));
        assert_eq!(
            CleanerCheckpoint::decode(&restarted.encode()),
            Some(restarted)
        );
    }

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
