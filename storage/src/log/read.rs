//! Reading the partition log: whole batches from the hot tail or as file
//! regions (checked against their CRC once), timestamp lookups, and marking
//! damage a read finds.

use std::rc::Rc;

use super::{LogState, PartitionLog, ReadChunk, ReadResult, Shared, TimestampHit};
use crate::batch::{BatchHeader, BATCH_HEADER_BYTES};
use crate::error::{LogError, LogResult};
use crate::segment::{scan_batches, OffsetRule, ScanMode, SegmentFile};

impl PartitionLog {
    /// Reads whole batches starting with the one holding `offset` (or, where
    /// compaction removed it, the next batch after it), up to `max_bytes`
    /// (the first batch is returned whole even if larger, as Kafka does) and
    /// never a batch reaching `upper_bound` (the high watermark or last
    /// stable offset). An empty result below `upper_bound` means compaction
    /// removed everything from `offset` to the end of the log.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u64,
        upper_bound: u64,
    ) -> LogResult<ReadResult> {
        let plan = {
            let state = self.shared.state.borrow();
            if offset < state.log_start_offset || offset > state.next_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    log_start_offset: state.log_start_offset,
                    log_end_offset: state.next_offset,
                });
            }
            let upper = upper_bound.min(state.next_offset);
            if offset >= upper {
                return Ok(ReadResult {
                    next_offset: offset,
                    ..ReadResult::default()
                });
            }
            if state
                .hot
                .front()
                .is_some_and(|front| front.base_offset <= offset)
            {
                return Ok(read_hot(&state, offset, max_bytes, upper));
            }
            let position = state.segment_for_offset(offset);
            let segment = &state.segments[position];
            if segment.size_bytes == 0 {
                // The empty active segment after a gap compaction left.
                return Ok(ReadResult {
                    next_offset: offset,
                    ..ReadResult::default()
                });
            }
            // In a gap before a segment the cleaner never rewrote, the next
            // batch is that segment's first, which may be in the hot tail only.
            let first_wanted = if segment.base_offset > offset && !segment.cleaned {
                segment.base_offset
            } else {
                offset
            };
            if state
                .hot
                .front()
                .is_some_and(|front| front.base_offset <= first_wanted)
            {
                return Ok(read_hot(&state, offset, max_bytes, upper));
            }
            let Some(file) = segment.file.clone() else {
                return Err(LogError::Damaged {
                    path: segment.path_in(&self.shared.dir),
                    reason: "written data without a file".into(),
                });
            };
            FileReadPlan {
                file,
                base_offset: segment.base_offset,
                scan_from: u64::from(segment.index.scan_start(segment.relative(offset))),
                written_bytes: segment.written_bytes,
                rule: state.offset_rule(position),
                upper,
            }
        };
        read_file(&self.shared, plan, offset, max_bytes).await
    }

    /// The first batch whose max timestamp is ≥ `timestamp` (exact, as
    /// ListOffsets needs), or `None` if every batch is older.
    pub async fn find_by_timestamp(&self, timestamp: i64) -> LogResult<Option<TimestampHit>> {
        let mut after_base = None;
        loop {
            let plan = {
                let state = self.shared.state.borrow();
                let log_start = state.log_start_offset;
                let Some(position) = state.segments.iter().position(|segment| {
                    after_base.is_none_or(|base| segment.base_offset > base)
                        && segment.max_timestamp >= timestamp
                        && segment.next_offset > log_start
                }) else {
                    return Ok(None);
                };
                let segment = &state.segments[position];
                let hot_hit = state
                    .hot
                    .iter()
                    .filter(|cached| cached.segment_base == segment.base_offset)
                    .filter(|cached| cached.last_offset >= log_start)
                    .find(|cached| cached.max_timestamp >= timestamp)
                    .map(|cached| TimestampHit {
                        base_offset: cached.base_offset,
                        last_offset: cached.last_offset,
                        max_timestamp: cached.max_timestamp,
                    });
                TimestampPlan {
                    file: segment.file.clone(),
                    scan_from: u64::from(segment.index.time_scan_start(timestamp)),
                    written_bytes: segment.written_bytes,
                    base_offset: segment.base_offset,
                    rule: state.offset_rule(position),
                    log_start,
                    hot_hit,
                }
            };
            let mut found = None;
            if let Some(file) = &plan.file {
                scan_batches(
                    file,
                    plan.scan_from,
                    plan.written_bytes,
                    plan.base_offset,
                    plan.rule,
                    ScanMode::HeadersOnly,
                    |_, header| {
                        let last_offset = header.last_offset() as u64;
                        if header.max_timestamp >= timestamp && last_offset >= plan.log_start {
                            found = Some(TimestampHit {
                                base_offset: header.base_offset as u64,
                                last_offset,
                                max_timestamp: header.max_timestamp,
                            });
                            return false;
                        }
                        true
                    },
                )
                .await?;
            }
            if let Some(hit) = found.or(plan.hot_hit) {
                return Ok(Some(hit));
            }
            // Only batches below the log start matched in this segment.
            after_base = Some(plan.base_offset);
        }
    }

    /// The largest timestamp in the log and the last offset of its batch.
    pub fn max_timestamp(&self) -> Option<(i64, u64)> {
        let state = self.shared.state.borrow();
        state
            .segments
            .iter()
            .filter(|segment| segment.max_timestamp >= 0)
            .max_by_key(|segment| segment.max_timestamp)
            .map(|segment| (segment.max_timestamp, segment.offset_of_max_timestamp))
    }
}

fn read_hot(state: &LogState, offset: u64, max_bytes: u64, upper: u64) -> ReadResult {
    let first = state
        .hot
        .partition_point(|cached| cached.last_offset < offset);
    let mut result = ReadResult {
        next_offset: offset,
        ..ReadResult::default()
    };
    for cached in state.hot.range(first..) {
        let total = cached.total_bytes();
        if cached.last_offset >= upper || (result.bytes > 0 && result.bytes + total > max_bytes) {
            break;
        }
        result.chunks.push(ReadChunk::Memory(cached.header.clone()));
        result.chunks.push(ReadChunk::Memory(cached.body.clone()));
        result.bytes += total;
        result.next_offset = cached.last_offset + 1;
    }
    result
}

struct TimestampPlan {
    file: Option<Rc<SegmentFile>>,
    scan_from: u64,
    written_bytes: u64,
    base_offset: u64,
    rule: OffsetRule,
    log_start: u64,
    hot_hit: Option<TimestampHit>,
}

struct FileReadPlan {
    file: Rc<SegmentFile>,
    base_offset: u64,
    scan_from: u64,
    written_bytes: u64,
    rule: OffsetRule,
    /// No batch reaching this offset is returned.
    upper: u64,
}

/// Finds the region of whole batches to send from a segment file.
async fn read_file(
    shared: &Shared,
    plan: FileReadPlan,
    offset: u64,
    max_bytes: u64,
) -> LogResult<ReadResult> {
    let upper_bound = plan.upper;
    let mut start = None;
    let outcome = scan_batches(
        &plan.file,
        plan.scan_from,
        plan.written_bytes,
        plan.base_offset,
        plan.rule,
        ScanMode::HeadersOnly,
        |position, header| {
            if header.last_offset() as u64 >= offset {
                start = Some((
                    position,
                    header.total_bytes() as u64,
                    header.last_offset() as u64,
                ));
                return false;
            }
            true
        },
    )
    .await?;
    let Some((start_position, first_bytes, first_last_offset)) = start else {
        if outcome.damage.is_none() && outcome.valid_end >= plan.written_bytes {
            // Nothing at or after `offset` in the written part of the file:
            // compaction emptied the rest of a segment that became active
            // again, and what follows (if anything) is not written yet.
            let state = shared.state.borrow();
            return Ok(read_hot(&state, offset, max_bytes, upper_bound));
        }
        // The segment holds `offset` (the plan said so), so not finding its
        // batch means the headers on the way are damaged.
        let reason = outcome
            .damage
            .unwrap_or_else(|| format!("no batch holds offset {offset}"));
        return Err(mark_damaged(shared, &plan, outcome.valid_end, reason));
    };
    if first_last_offset >= upper_bound {
        return Ok(ReadResult {
            next_offset: offset,
            ..ReadResult::default()
        });
    }
    let mut end = start_position + first_bytes;
    let mut next_offset = first_last_offset + 1;
    let limit = start_position.saturating_add(max_bytes);
    // Jump to the furthest indexed boundary within the budget, then walk.
    // Only when the read may end anywhere in the segment: index entries
    // know nothing of the upper bound.
    let jump = {
        let mut state = shared.state.borrow_mut();
        state
            .planned_segment(plan.base_offset, &plan.file)
            .filter(|segment| upper_bound >= segment.next_offset)
            .and_then(|segment| {
                // Strictly below the written end: a boundary *at* it starts a
                // batch that is not on disk yet, whose header cannot be read.
                let limit32 = u32::try_from(limit.min(plan.written_bytes.saturating_sub(1)))
                    .unwrap_or(u32::MAX);
                segment.index.boundary_at_or_below(end as u32, limit32)
            })
    };
    let mut walk_from = end;
    let mut jumped = false;
    if let Some(boundary) = jump {
        walk_from = u64::from(boundary);
        jumped = true;
    }
    if end < limit {
        let mut walked_end = walk_from;
        let mut walked_next = None;
        scan_batches(
            &plan.file,
            walk_from,
            plan.written_bytes,
            plan.base_offset,
            plan.rule,
            ScanMode::HeadersOnly,
            |position, header| {
                let total = header.total_bytes() as u64;
                if header.last_offset() as u64 >= upper_bound || position + total > limit {
                    return false;
                }
                walked_end = position + total;
                walked_next = Some(header.last_offset() as u64 + 1);
                true
            },
        )
        .await?;
        if let Some(walked_next) = walked_next {
            end = walked_end;
            next_offset = walked_next;
        } else if jumped {
            // The jump target starts a batch; everything before it fits.
            end = walk_from;
            next_offset = next_offset_at(&plan, walk_from).await?;
        }
    }
    let (end, next_offset) = verify_region(shared, &plan, start_position, end, next_offset).await?;
    Ok(ReadResult {
        chunks: vec![ReadChunk::File {
            file: plan.file,
            position: start_position,
            len: end - start_position,
        }],
        bytes: end - start_position,
        next_offset,
    })
}

/// Makes sure `[start, end)` of the segment passed its CRC check since open,
/// checking what has not. Returns the region cut short before the first
/// damaged batch; a region that starts at damage is an error.
async fn verify_region(
    shared: &Shared,
    plan: &FileReadPlan,
    start: u64,
    end: u64,
    next_offset: u64,
) -> LogResult<(u64, u64)> {
    let (verified, damaged_at) = {
        let mut state = shared.state.borrow_mut();
        match state.planned_segment(plan.base_offset, &plan.file) {
            Some(segment) => (segment.verified_bytes, segment.damaged_at),
            // Deleted, or replaced by the cleaner, which read (and so
            // CRC-checked) every batch of a segment before replacing it.
            None => return Ok((end, next_offset)),
        }
    };
    if let Some(damaged_at) = damaged_at.filter(|damaged_at| *damaged_at < end) {
        if start >= damaged_at {
            return Err(LogError::Damaged {
                path: plan.file.path.clone(),
                reason: format!("batch at position {start} follows damage at {damaged_at}"),
            });
        }
    }
    if end <= verified {
        return Ok((end, next_offset));
    }
    let outcome = scan_batches(
        &plan.file,
        verified,
        end,
        plan.base_offset,
        plan.rule,
        ScanMode::VerifyCrc,
        |_, _| true,
    )
    .await?;
    {
        let mut state = shared.state.borrow_mut();
        if let Some(segment) = state.planned_segment(plan.base_offset, &plan.file) {
            segment.verified_bytes = segment.verified_bytes.max(outcome.valid_end);
        }
    }
    if outcome.valid_end >= end {
        return Ok((end, next_offset));
    }
    let reason = outcome
        .damage
        .clone()
        .unwrap_or_else(|| "batch cut short".into());
    let error = mark_damaged(shared, plan, outcome.valid_end, reason);
    if outcome.valid_end <= start {
        return Err(error);
    }
    Ok((outcome.valid_end, outcome.next_offset))
}

/// Records damage found by a read in a segment that was trusted at open, and
/// logs it once. Returns the error for reads that start at the damage.
fn mark_damaged(shared: &Shared, plan: &FileReadPlan, position: u64, reason: String) -> LogError {
    let mut state = shared.state.borrow_mut();
    if let Some(segment) = state.planned_segment(plan.base_offset, &plan.file) {
        if segment.damaged_at.is_none_or(|known| position < known) {
            segment.damaged_at = Some(position);
            tracing::error!(path = %plan.file.path.display(), position, %reason, "damaged batch in segment; it will not be served");
        }
    }
    LogError::Damaged {
        path: plan.file.path.clone(),
        reason: format!("at position {position}: {reason}"),
    }
}

/// The base offset of the batch starting at `position`.
async fn next_offset_at(plan: &FileReadPlan, position: u64) -> LogResult<u64> {
    let header = plan.file.read_bytes(position, BATCH_HEADER_BYTES).await?;
    Ok(BatchHeader::parse(&header)?.base_offset as u64)
}
