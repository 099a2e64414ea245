//! Opening a partition directory: recovery after a crash or a clean
//! shutdown, segment listing and opening, index loading, tail rebuilding.

use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

use super::flush::write_index_files;
use super::maintenance::{remove_index_files, remove_segment_files};
use super::{now_ms, sync_dir, LogState, LogStats, Shared};
use crate::checkpoint::{self, CleanerCheckpoint, LeaderEpochCache};
use crate::config::LogConfig;
use crate::error::{LogError, LogResult};
use crate::index::SegmentIndex;
use crate::segment::{
    align_down, log_file_name, offset_index_name, parse_log_file_name, scan_batches,
    time_index_name, OffsetRule, ScanMode, Segment, SegmentFile,
};

/// Rebuilds a segment's size, offsets, timestamps and indexes by walking its
/// batch headers up to `end`.
pub(super) async fn rebuild_metadata(
    shared: &Shared,
    file: &SegmentFile,
    segment: &mut Segment,
    end: u64,
    rule: OffsetRule,
) -> LogResult<()> {
    let interval = shared.config.index_interval_bytes;
    scan_batches(
        file,
        0,
        end,
        segment.base_offset,
        rule,
        ScanMode::HeadersOnly,
        |position, header| {
            segment.note_batch(header, position, interval);
            true
        },
    )
    .await?;
    Ok(())
}

/// The bytes of the partial last block before `end`, to be rewritten.
pub(super) async fn read_tail_block(file: &SegmentFile, end: u64) -> LogResult<Vec<u8>> {
    let start = align_down(end);
    if start == end {
        return Ok(Vec::new());
    }
    file.read_bytes(start, (end - start) as usize).await
}

/// Opens every segment of `dir`, trusting what a clean shutdown (or the
/// recovery point) vouches for and scanning the rest batch by batch.
pub(super) async fn recover(dir: &Path, config: &LogConfig) -> LogResult<LogState> {
    let clean = dir.join(checkpoint::CLEAN_SHUTDOWN_FILE).exists();
    let recovery_point =
        checkpoint::read_offset(dir, checkpoint::RECOVERY_POINT_FILE)?.unwrap_or(0);
    let saved_log_start = checkpoint::read_offset(dir, checkpoint::LOG_START_FILE)?;
    let mut epochs = LeaderEpochCache::load(dir)?;
    let stored_epochs = epochs.clone();
    // First finish (or discard) a compaction swap a crash interrupted, so
    // the segment files below are either all old or all new.
    crate::cleaner::recover_swap(dir)?;
    let loaded_cleaner = CleanerCheckpoint::load(dir)?;
    // Batches the cleaner removed lie below this offset, and only there.
    // An unreadable checkpoint could hide any gap: accept gaps everywhere.
    let gaps_below = loaded_cleaner
        .as_ref()
        .map_or(u64::MAX, CleanerCheckpoint::gaps_below);
    let mut cleaner = loaded_cleaner.clone().unwrap_or_default();
    let bases = list_segments(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    let mut cut_rest = false;
    let mut rebuilt = Vec::with_capacity(bases.len());
    for (position, base) in bases.iter().enumerate() {
        if cut_rest {
            tracing::warn!(dir = %dir.display(), base_offset = base, "deleting segment after damaged data");
            remove_segment_files(dir, *base)?;
            continue;
        }
        if let Some(previous) = segments.last() {
            // After a cleaned segment the next one may start later (the
            // cleaner removed the batches in between), never earlier.
            let continues = if previous.cleaned {
                previous.next_offset == *base
                    || (previous.next_offset < *base && *base <= gaps_below)
            } else {
                previous.next_offset == *base
            };
            if !continues {
                tracing::warn!(dir = %dir.display(), base_offset = base, expected = previous.next_offset, "segment does not continue the log; deleting it and later segments");
                remove_segment_files(dir, *base)?;
                cut_rest = true;
                continue;
            }
        }
        let next_base = bases.get(position + 1).copied();
        let trusted = clean || next_base.is_some_and(|next| next <= recovery_point);
        let cleaned = *base < gaps_below;
        let rule = if cleaned {
            OffsetRule::Increasing {
                gaps_until: gaps_below,
                below: next_base.unwrap_or(u64::MAX),
            }
        } else {
            OffsetRule::Contiguous
        };
        let (mut segment, index_rebuilt, damaged) =
            open_segment(dir, config, *base, trusted, rule, &mut epochs).await?;
        segment.cleaned = cleaned;
        if segment.size_bytes == 0 && position > 0 {
            tracing::info!(dir = %dir.display(), base_offset = base, "removing empty segment");
            remove_segment_files(dir, *base)?;
            // An empty cleaned segment is a gap like any other; an empty
            // dirty one is where the written log ended.
            cut_rest = !cleaned;
            continue;
        }
        let is_last = position + 1 == bases.len();
        let ended_early = if cleaned {
            damaged
        } else {
            next_base.is_some_and(|next| segment.next_offset != next)
        };
        segments.push(segment);
        rebuilt.push(index_rebuilt);
        if ended_early && !is_last {
            cut_rest = true;
        }
    }
    let now = now_ms();
    if segments.is_empty() {
        let start = saved_log_start.unwrap_or(0);
        segments.push(Segment::new(start, now));
    }
    if let Some(last) = segments.last() {
        // (A damaged checkpoint counts as 0 here: no gap is known to end.)
        let gaps_end = cleaner.gaps_below();
        if last.cleaned && last.next_offset < gaps_end {
            // The cleaner emptied the end of the last cleaned segment and the
            // active segment after it had no file yet: the log still ends at
            // the first dirty offset, whose offsets were handed out.
            segments.push(Segment::new(gaps_end, now));
        }
    }
    let last = segments.len() - 1;
    // Whether this open changed the directory (and must sync it).
    let mut changed = !clean;
    for (position, segment) in segments.iter_mut().enumerate() {
        let is_active = position == last;
        segment.sealed = !is_active;
        segment.written_bytes = segment.size_bytes;
        if let Some(file) = segment.file.clone() {
            if is_active {
                segment.tail_block = read_tail_block(&file, segment.size_bytes).await?;
                segment.created_ms = now;
                if file.file_bytes().await? != segment.size_bytes {
                    file.truncate(segment.size_bytes).await?;
                    changed = true;
                }
                segment.allocated_bytes = segment.size_bytes;
                // The sealed index files (if any) describe the old state;
                // after a clean shutdown they are true until the first
                // change ([`leave_clean_state`] removes them then).
                if !clean {
                    remove_index_files(dir, segment.base_offset)?;
                }
            } else if rebuilt.get(position).copied().unwrap_or(true) {
                unless_disk_full(
                    dir,
                    write_index_files(dir, segment.base_offset, &segment.index),
                )?;
                changed = true;
            }
            if !clean {
                file.sync_data().await?;
            }
        }
    }
    let next_offset = segments[last].next_offset;
    let first_base = segments[0].base_offset;
    let log_start_offset = saved_log_start
        .unwrap_or(first_base)
        .max(first_base)
        .min(next_offset);
    if saved_log_start.is_some_and(|saved| saved != log_start_offset) {
        // Recovery lost offsets the saved start pointed past (or retention
        // deleted segments before the start was saved): store the truth.
        unless_disk_full(
            dir,
            checkpoint::write_offset(dir, checkpoint::LOG_START_FILE, log_start_offset),
        )?;
        changed = true;
    }
    if epochs.truncate_from(next_offset) {
        unless_disk_full(dir, epochs.store(dir))?;
        changed = true;
    }
    if loaded_cleaner.is_none() {
        cleaner = CleanerCheckpoint::restart_with_gaps_below(next_offset);
        unless_disk_full(dir, cleaner.store(dir))?;
        changed = true;
    } else if cleaner.truncate(next_offset) {
        unless_disk_full(dir, cleaner.store(dir))?;
        changed = true;
    }
    // Everything now on disk is synced: it is the recovered log. A clean
    // close stored its end, which covers at least as much and is as true
    // (every later change that cuts the log stores its own point).
    let active_base = segments[last].base_offset;
    let covered = recovery_point == active_base || (clean && recovery_point > active_base);
    if !covered {
        unless_disk_full(
            dir,
            checkpoint::write_offset(
                dir,
                checkpoint::RECOVERY_POINT_FILE,
                segments[last].base_offset,
            ),
        )?;
        changed = true;
    }
    // After a clean shutdown the marker stays until the first change
    // ([`leave_clean_state`]): a log that is only read, or idle, until the
    // next clean stop then costs that stop nothing.
    if changed {
        sync_dir(dir)?;
    }
    // A recovery scan may have found epochs the file lacks: the next sync
    // (a close's too) stores them.
    let epochs_dirty = epochs != stored_epochs;
    Ok(LogState {
        segments,
        log_start_offset,
        next_offset,
        written_offset: next_offset,
        durable_offset: next_offset,
        hot: VecDeque::new(),
        hot_bytes: 0,
        unwritten_bytes: 0,
        epochs,
        epochs_dirty,
        unsynced_records: 0,
        first_unsynced_write: None,
        sync_requested_until: 0,
        failed: None,
        paused: None,
        closing: false,
        stats: LogStats::default(),
        cleaner,
        pristine: clean,
    })
}

/// Recovery's checkpoint and index writes record what it found, so the next
/// open finds it faster; none of them is needed to serve the log (its
/// state is in memory, and the next open recomputes anything still stale:
/// an old recovery point only makes it scan more). On a full disk (or a
/// full descriptor table) they are skipped, so a broker started there
/// still opens its logs and serves reads.
fn unless_disk_full(dir: &Path, outcome: LogResult<()>) -> LogResult<()> {
    match outcome {
        Err(error) if error.is_transient() => {
            tracing::warn!(dir = %dir.display(), %error, "recovery could not record what it found (disk or descriptors full); the log opens anyway and the next open redoes it");
            Ok(())
        }
        outcome => outcome,
    }
}

/// Segment base offsets found in `dir`, sorted; removes leftover temp files
/// and index files whose segment is gone.
fn list_segments(dir: &Path) -> LogResult<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|source| LogError::io("list dir", dir, source))?;
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LogError::io("list dir", dir, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_log_file_name(&name) {
            bases.push(base);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(stem) = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"))
        {
            indexes.push((stem.to_string(), entry.path()));
        }
    }
    bases.sort_unstable();
    for (stem, path) in indexes {
        if parse_log_file_name(&format!("{stem}.log"))
            .is_none_or(|base| bases.binary_search(&base).is_err())
        {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(bases)
}

/// Opens one segment. A trusted segment keeps its index files if they pass
/// the checks and only its last index interval is walked; an untrusted one
/// is scanned whole with CRC checks and cut at the first invalid batch.
/// Returns the segment, whether its index was rebuilt, and whether a scan
/// found damage (and cut the segment there).
async fn open_segment(
    dir: &Path,
    config: &LogConfig,
    base_offset: u64,
    trusted: bool,
    rule: OffsetRule,
    epochs: &mut LeaderEpochCache,
) -> LogResult<(Segment, bool, bool)> {
    let path = dir.join(log_file_name(base_offset));
    let file = Rc::new(SegmentFile::open(path.clone(), false).await?);
    let file_bytes = file.file_bytes().await?;
    let mut segment = Segment::new(base_offset, now_ms());
    if trusted {
        if let Some(index) = load_index(dir, base_offset, file_bytes) {
            let resume = index
                .offsets
                .last()
                .map_or(0, |entry| u64::from(entry.position));
            let resume_offset = index.offsets.last().map_or(base_offset, |entry| {
                base_offset + u64::from(entry.relative_offset)
            });
            if let Some(last_time) = index.times.last() {
                segment.max_timestamp = last_time.timestamp;
                segment.offset_of_max_timestamp =
                    base_offset + u64::from(last_time.relative_offset);
            }
            segment.index = index;
            segment.size_bytes = resume;
            let mut tail = Segment::new(base_offset, 0);
            let interval = config.index_interval_bytes;
            let outcome = scan_batches(
                &file,
                resume,
                file_bytes,
                base_offset,
                rule,
                ScanMode::HeadersOnly,
                |position, header| {
                    tail.note_batch(header, position, interval);
                    true
                },
            )
            .await;
            let resume_ok = matches!(&outcome, Ok(found) if found.damage.is_none() && found.valid_end == file_bytes);
            if resume_ok && (resume == 0 || tail.next_offset > resume_offset) {
                if tail.max_timestamp > segment.max_timestamp {
                    segment.max_timestamp = tail.max_timestamp;
                    segment.offset_of_max_timestamp = tail.offset_of_max_timestamp;
                }
                segment.size_bytes = tail.size_bytes.max(resume);
                segment.next_offset = if tail.next_offset > base_offset {
                    tail.next_offset
                } else {
                    base_offset
                };
                segment.file = Some(file);
                return Ok((segment, false, false));
            }
            tracing::warn!(path = %path.display(), "segment does not match its index; scanning it whole");
            segment = Segment::new(base_offset, now_ms());
        }
    }
    let interval = config.index_interval_bytes;
    let outcome = scan_batches(
        &file,
        0,
        file_bytes,
        base_offset,
        rule,
        ScanMode::VerifyCrc,
        |position, header| {
            segment.note_batch(header, position, interval);
            if header.partition_leader_epoch >= 0 {
                epochs.assign(header.partition_leader_epoch, header.base_offset as u64);
            }
            true
        },
    )
    .await?;
    if outcome.valid_end < file_bytes {
        match &outcome.damage {
            Some(reason) => tracing::warn!(
                path = %path.display(),
                valid_bytes = outcome.valid_end,
                cut_bytes = file_bytes - outcome.valid_end,
                next_offset = outcome.next_offset,
                reason = %reason,
                "recovery truncated a damaged segment tail"
            ),
            None => tracing::info!(
                path = %path.display(),
                valid_bytes = outcome.valid_end,
                "recovery trimmed unwritten preallocated space"
            ),
        }
        file.truncate(outcome.valid_end).await?;
    }
    segment.size_bytes = outcome.valid_end;
    segment.verified_bytes = outcome.valid_end;
    segment.next_offset = outcome.next_offset.max(base_offset);
    segment.file = Some(file);
    Ok((segment, true, outcome.damage.is_some()))
}

fn load_index(dir: &Path, base_offset: u64, segment_bytes: u64) -> Option<SegmentIndex> {
    let offsets = std::fs::read(dir.join(offset_index_name(base_offset))).ok()?;
    let times = std::fs::read(dir.join(time_index_name(base_offset))).ok()?;
    SegmentIndex::decode_checked(&offsets, &times, segment_bytes, u64::from(u32::MAX))
}
