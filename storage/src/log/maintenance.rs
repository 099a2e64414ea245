//! Changes to the log's extent: roll, truncation (of a suffix or below a
//! new log start), retention, deleting segments, and leaving the clean state.

use std::path::Path;
use std::time::Duration;

use super::flush::{finish_all_fills, write_pending};
use super::recovery::{read_tail_block, rebuild_metadata};
use super::{now_ms, sync_dir, CachedBatch, LogState, PartitionLog, Shared};
use crate::checkpoint;
use crate::error::{LogError, LogResult};
use crate::segment::{
    log_file_name, offset_index_name, scan_batches, time_index_name, OffsetRule, ScanMode, Segment,
};

impl PartitionLog {
    /// Starts a new segment at the next append (if the active one has data).
    pub fn roll(&self) {
        let mut state = self.shared.state.borrow_mut();
        if state.active().size_bytes > 0 {
            let next = state.next_offset;
            state.segments.push(Segment::new(next, now_ms()));
        }
    }

    /// Removes every batch that holds an offset at or after `offset`; the log
    /// then ends at the start of the batch that held `offset`. Replication
    /// uses this to drop a diverged suffix. Durable before it returns.
    pub async fn truncate_to(&self, offset: u64) -> LogResult<()> {
        let _permit = self.shared.lock().await?;
        write_pending(&self.shared).await?;
        leave_clean_state(&self.shared).await?;
        truncate_suffix(&self.shared, offset).await?;
        self.shared.progress.wake_all();
        Ok(())
    }

    /// Drops every record and starts the log again, empty, at `offset`
    /// (Kafka's `truncateFullyAndStartAt`): a follower whose log ends below
    /// its leader's log start cannot fetch what it lacks and starts over at
    /// the leader's start. Durable before it returns. A crash part way
    /// leaves the old log start with no segment (or the old segments): the
    /// follower then asks again and is reset again.
    pub async fn truncate_fully_and_start_at(&self, offset: u64) -> LogResult<()> {
        let _permit = self.shared.lock().await?;
        write_pending(&self.shared).await?;
        leave_clean_state(&self.shared).await?;
        finish_all_fills(&self.shared).await;
        let bases = self.segment_bases();
        let dir = self.shared.dir.clone();
        checkpoint::off_executor(move || {
            for base in bases {
                remove_segment_files(&dir, base)?;
            }
            sync_dir(&dir)
        })
        .await?;
        let (epochs, cleaner) = {
            let mut state = self.shared.state.borrow_mut();
            state.segments = vec![Segment::new(offset, now_ms())];
            state.log_start_offset = offset;
            state.next_offset = offset;
            state.written_offset = offset;
            state.durable_offset = offset;
            state.sync_requested_until = offset;
            state.hot.clear();
            state.hot_bytes = 0;
            state.unwritten_bytes = 0;
            state.unsynced_records = 0;
            state.first_unsynced_write = None;
            state.epochs.truncate_from(0);
            state.cleaner.truncate(0);
            (state.epochs.clone(), state.cleaner.clone())
        };
        let dir = self.shared.dir.clone();
        checkpoint::off_executor(move || {
            epochs.store(&dir)?;
            cleaner.store(&dir)?;
            checkpoint::write_offset(&dir, checkpoint::RECOVERY_POINT_FILE, offset)?;
            checkpoint::write_offset(&dir, checkpoint::LOG_START_FILE, offset)?;
            sync_dir(&dir)
        })
        .await?;
        tracing::info!(dir = %self.shared.dir.display(), offset, "log emptied to start again at its leader's log start");
        self.shared.progress.wake_all();
        Ok(())
    }

    /// Advances the log start offset to `offset` (DeleteRecords) and deletes
    /// segments wholly below it. Returns the new log start offset.
    pub async fn truncate_before(&self, offset: u64) -> LogResult<u64> {
        let _permit = self.shared.lock().await?;
        let new_start = {
            let mut state = self.shared.state.borrow_mut();
            let new_start = offset.min(state.next_offset);
            if new_start <= state.log_start_offset {
                return Ok(state.log_start_offset);
            }
            state.log_start_offset = new_start;
            new_start
        };
        leave_clean_state(&self.shared).await?;
        match write_log_start(&self.shared.dir, new_start).await {
            Ok(()) => {
                delete_segments_where(&self.shared, |segment, _| segment.next_offset <= new_start)
                    .await?;
            }
            // On a full disk the checkpoint's new file may not fit: delete
            // the whole segments first (the space an operator is after),
            // then write it. A crash in between leaves the log starting at
            // its first remaining segment, which is all DeleteRecords asked
            // for when the offset was a segment boundary.
            Err(error) if error.is_transient() => {
                tracing::warn!(dir = %self.shared.dir.display(), %error, "delete records on a full disk: deleting segments before the log-start checkpoint");
                delete_segments_where(&self.shared, |segment, _| segment.next_offset <= new_start)
                    .await?;
                write_checkpoint_when_room(&self.shared.dir, checkpoint::LOG_START_FILE, new_start)
                    .await?;
            }
            Err(error) => return Err(error),
        }
        // After a gap compaction left, the first remaining segment may start
        // past `new_start`: the log start moves up to it (as in Kafka).
        let start = self.shared.state.borrow().log_start_offset;
        if start != new_start {
            write_log_start(&self.shared.dir, start).await?;
        }
        Ok(start)
    }

    /// Deletes sealed segments beyond the retention limits (bytes, age).
    /// Returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> LogResult<usize> {
        let _permit = self.shared.lock().await?;
        let config = &self.shared.config;
        let mut excess = {
            let state = self.shared.state.borrow();
            config
                .retention_bytes
                .map_or(0, |limit| state.size_bytes().saturating_sub(limit))
        };
        let oldest_allowed = config
            .retention_age
            .map(|age| now_ms.saturating_sub(age.as_millis() as i64));
        let deleted = delete_segments_where(&self.shared, |segment, _| {
            let newest = if segment.max_timestamp >= 0 {
                segment.max_timestamp
            } else {
                segment.created_ms
            };
            let too_old = oldest_allowed.is_some_and(|oldest| newest < oldest);
            let too_big = excess >= segment.size_bytes && excess > 0;
            if too_big || too_old {
                excess = excess.saturating_sub(segment.size_bytes);
                true
            } else {
                false
            }
        })
        .await?;
        if deleted > 0 {
            let start = self.shared.state.borrow().log_start_offset;
            write_log_start(&self.shared.dir, start).await?;
        }
        Ok(deleted)
    }
}

/// Writes the log-start checkpoint on the executor's blocking threads.
async fn write_log_start(dir: &Path, offset: u64) -> LogResult<()> {
    let dir = dir.to_path_buf();
    checkpoint::off_executor(move || {
        checkpoint::write_offset(&dir, checkpoint::LOG_START_FILE, offset)
    })
    .await
}

pub(super) fn remove_segment_files(dir: &Path, base_offset: u64) -> LogResult<()> {
    for name in [
        log_file_name(base_offset),
        offset_index_name(base_offset),
        time_index_name(base_offset),
    ] {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::io("delete segment", path, source)),
        }
    }
    Ok(())
}

/// Writes an offset checkpoint right after deleting files to make room for
/// it: glommio closes a dropped file's descriptors in the background, and
/// an unlinked file's blocks come back only then, so a full-disk failure is
/// retried for a short while (bounded) before it is returned.
async fn write_checkpoint_when_room(dir: &Path, name: &str, offset: u64) -> LogResult<()> {
    const TRIES: u32 = 20;
    const PAUSE: Duration = Duration::from_millis(25);
    let mut tries = 0;
    loop {
        match checkpoint::write_offset(dir, name, offset) {
            Err(error) if error.is_transient() && tries < TRIES => {
                tries += 1;
                glommio::timer::sleep(PAUSE).await;
            }
            outcome => return outcome,
        }
    }
}

/// Makes the files changeable: a log opened clean still has its
/// clean-shutdown marker (which would make the next open trust the files)
/// and its active segment's index files (which describe the segment as it
/// was). Both go, durably, before the first change: once per open, on the
/// shard (like a roll's directory sync, see `flush::create_segment_file`:
/// after a restart thousands of logs take their first write at once). The
/// caller holds the flush lock.
pub(super) async fn leave_clean_state(shared: &Shared) -> LogResult<()> {
    let active_base = {
        let state = shared.state.borrow();
        if !state.pristine {
            return Ok(());
        }
        state.active().base_offset
    };
    let marker = shared.dir.join(checkpoint::CLEAN_SHUTDOWN_FILE);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(LogError::io("remove marker", &marker, source)),
    }
    remove_index_files(&shared.dir, active_base)?;
    sync_dir(&shared.dir)?;
    shared.state.borrow_mut().pristine = false;
    Ok(())
}

/// Deletes sealed segments from the oldest while `doomed` says so, moving
/// the log start past them; the files go (and the directory is synced) on
/// the executor's blocking threads. Caller holds the lock.
async fn delete_segments_where(
    shared: &Shared,
    mut doomed: impl FnMut(&Segment, &LogState) -> bool,
) -> LogResult<usize> {
    let mut deleted = 0;
    loop {
        let base = {
            let state = shared.state.borrow();
            let Some(oldest) = state.segments.first() else {
                break;
            };
            if state.segments.len() == 1 || !oldest.sealed || !doomed(oldest, &state) {
                break;
            }
            oldest.base_offset
        };
        leave_clean_state(shared).await?;
        let dir = shared.dir.clone();
        checkpoint::off_executor(move || remove_segment_files(&dir, base)).await?;
        let mut state = shared.state.borrow_mut();
        state.segments.remove(0);
        state.hot.retain(|cached| cached.segment_base != base);
        state.hot_bytes = state.hot.iter().map(CachedBatch::total_bytes).sum();
        let first_base = state.segments[0].base_offset;
        state.log_start_offset = state.log_start_offset.max(first_base);
        deleted += 1;
        tracing::info!(dir = %shared.dir.display(), base_offset = base, "deleted segment");
    }
    if deleted > 0 {
        let dir = shared.dir.clone();
        checkpoint::off_executor(move || sync_dir(&dir)).await?;
    }
    Ok(deleted)
}

/// Cuts the log so it ends at the start of the batch holding `offset`, or at
/// `offset` itself where compaction left a gap there. Everything is written
/// already (caller flushed) and the lock is held.
async fn truncate_suffix(shared: &Shared, offset: u64) -> LogResult<()> {
    finish_all_fills(shared).await;
    let (doomed, keep) = {
        let state = shared.state.borrow();
        if offset >= state.next_offset {
            return Ok(());
        }
        let keep = state
            .segments
            .iter()
            .rposition(|segment| segment.base_offset < offset)
            .unwrap_or(0);
        let doomed: Vec<u64> = state.segments[keep + 1..]
            .iter()
            .map(|segment| segment.base_offset)
            .collect();
        (doomed, keep)
    };
    for base in &doomed {
        remove_segment_files(&shared.dir, *base)?;
    }
    let (file, base_offset, scan_from, size, verified, cleaned, gaps_until) = {
        let mut state = shared.state.borrow_mut();
        let gaps_until = state.cleaner.gaps_below();
        state.segments.truncate(keep + 1);
        let segment = state.active_mut();
        segment.sealed = false;
        (
            segment.file.clone(),
            segment.base_offset,
            u64::from(segment.index.scan_start(segment.relative(offset))),
            segment.size_bytes,
            segment.verified_bytes,
            segment.cleaned,
            gaps_until,
        )
    };
    // It is the last segment now: no next segment bounds its offsets.
    let rule = if cleaned {
        OffsetRule::Increasing {
            gaps_until,
            below: u64::MAX,
        }
    } else {
        OffsetRule::Contiguous
    };
    // Sealed index files of a segment that becomes active again are stale.
    remove_index_files(&shared.dir, base_offset)?;
    let mut cut_position = 0;
    let mut cut_base = None;
    let mut segment = Segment::new(base_offset, now_ms());
    segment.cleaned = cleaned;
    if let Some(file) = &file {
        let mut cut = None;
        scan_batches(
            file,
            scan_from,
            size,
            base_offset,
            rule,
            ScanMode::HeadersOnly,
            |position, header| {
                if header.last_offset() as u64 >= offset {
                    cut = Some((position, header.base_offset as u64));
                    return false;
                }
                true
            },
        )
        .await?;
        cut_base = cut.map(|(_, base)| base);
        cut_position = cut.map_or(size, |(position, _)| position);
        file.truncate(cut_position).await?;
        file.sync_data().await?;
        rebuild_metadata(shared, file, &mut segment, cut_position, rule).await?;
        segment.file = Some(file.clone());
        segment.tail_block = read_tail_block(file, cut_position).await?;
        segment.allocated_bytes = cut_position;
        segment.zeroed_bytes = segment.zeroed_bytes.min(cut_position);
        segment.verified_bytes = verified.min(cut_position);
    }
    let synced_dir = shared.dir.clone();
    checkpoint::off_executor(move || sync_dir(&synced_dir)).await?;
    let (new_end, log_start_moved, epochs, cleaner) = {
        let mut state = shared.state.borrow_mut();
        // Where the cut batch started. In a cleaned segment `offset` may lie in
        // a gap compaction made: then no batch holds it, nothing below it goes,
        // and the log ends at `offset` itself, as Kafka's truncation does.
        let new_end = if segment.cleaned {
            cut_base
                .map_or(offset, |base| base.min(offset))
                .max(segment.next_offset)
        } else {
            segment.next_offset
        };
        debug_assert_eq!(segment.size_bytes, cut_position);
        segment.written_bytes = segment.size_bytes;
        segment.next_offset = new_end;
        segment.cleaned = segment.cleaned && segment.base_offset < new_end;
        *state.active_mut() = segment;
        state.next_offset = new_end;
        state.written_offset = state.written_offset.min(new_end);
        state.durable_offset = state.durable_offset.min(new_end);
        state.sync_requested_until = state.sync_requested_until.min(new_end);
        let log_start_moved = state.log_start_offset > new_end;
        state.log_start_offset = state.log_start_offset.min(new_end);
        state.hot.retain(|cached| cached.last_offset < new_end);
        state.hot_bytes = state.hot.iter().map(CachedBatch::total_bytes).sum();
        state.unwritten_bytes = 0;
        state.epochs.truncate_from(new_end);
        let epochs = state.epochs.clone();
        // Offsets from here on are dirty again (new appends will land there).
        let cleaner = state
            .cleaner
            .truncate(new_end)
            .then(|| state.cleaner.clone());
        (new_end, log_start_moved, epochs, cleaner)
    };
    let dir = shared.dir.clone();
    checkpoint::off_executor(move || {
        epochs.store(&dir)?;
        if let Some(cleaner) = cleaner {
            cleaner.store(&dir)?;
        }
        if log_start_moved {
            checkpoint::write_offset(&dir, checkpoint::LOG_START_FILE, new_end)?;
        }
        let recovery_point =
            checkpoint::read_offset(&dir, checkpoint::RECOVERY_POINT_FILE)?.unwrap_or(0);
        if recovery_point > new_end {
            checkpoint::write_offset(&dir, checkpoint::RECOVERY_POINT_FILE, new_end)?;
        }
        Ok(())
    })
    .await
}

pub(super) fn remove_index_files(dir: &Path, base_offset: u64) -> LogResult<()> {
    for name in [offset_index_name(base_offset), time_index_name(base_offset)] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::io("delete index", path, source)),
        }
    }
    Ok(())
}
