//! Repairing a batch a read found damaged (bit rot in a segment that passed
//! its checks when it was written) with another replica's copy of it.
//!
//! Replicas of a partition hold the same batches byte for byte below the
//! high watermark (a follower appends the leader's batches exactly as
//! stored), so the damaged batch's bytes can be fetched from another replica
//! and written back in place: same offsets, same length, same position.
//! What makes a replacement acceptable, all checked here before a byte is
//! written:
//! - it passes its own CRC and starts at the offset the damaged batch must
//!   start at (the end of the last good batch before the damage);
//! - it was written in the leader epoch this log's epoch history gives that
//!   offset (a stale replica's batch of another epoch is refused);
//! - it fits the hole exactly: the batch after it in this file starts at
//!   its last offset + 1, or it ends where the segment's data ends.
//!
//! Only segments compaction never rewrote are repaired: each replica
//! compacts on its own, so their cleaned segments differ.

use bytes::Bytes;

use super::flush::write_pending;
use super::recovery::read_tail_block;
use super::PartitionLog;
use crate::batch::{validate_stored_batch, BatchHeader, BATCH_HEADER_BYTES};
use crate::checkpoint;
use crate::error::{LogError, LogResult};
use crate::segment::{scan_batches, ScanMode};

/// The first damaged batch a read found, as a repair asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DamagedBatch {
    /// The offset the damaged batch starts at.
    pub offset: u64,
    /// The leader epoch this log's history gives that offset.
    pub epoch: Option<i32>,
    /// Where it lies: the segment's base offset and the byte position.
    pub segment_base: u64,
    pub position: u64,
}

/// Why a replacement was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepairRefusal {
    #[error("no damaged batch is known")]
    NothingDamaged,
    #[error("the replacement does not pass its own checks: {0}")]
    BadBatch(String),
    #[error("the replacement starts at {found}, the damaged batch at {expected}")]
    WrongOffset { expected: u64, found: i64 },
    #[error("the replacement is of leader epoch {found}, the damaged offset of {expected}")]
    WrongEpoch { expected: i32, found: i32 },
    #[error("the replacement ({bytes} bytes) does not fit the damaged batch's place: {why}")]
    DoesNotFit { bytes: usize, why: String },
}

impl PartitionLog {
    /// Whether a read found a damaged batch that is still there (cheap).
    pub fn has_damage(&self) -> bool {
        self.shared
            .state
            .borrow()
            .segments
            .iter()
            .any(|segment| segment.damaged_at.is_some() && !segment.cleaned)
    }

    /// The first damaged batch a read found in a segment that can be
    /// repaired (see the module doc), with the offset it starts at.
    pub async fn damaged_batch(&self) -> LogResult<Option<DamagedBatch>> {
        let (file, base_offset, position, rule) = {
            let state = self.shared.state.borrow();
            let Some((index, segment)) = state.segments.iter().enumerate().find(|(_, segment)| {
                segment.damaged_at.is_some() && !segment.cleaned && segment.file.is_some()
            }) else {
                return Ok(None);
            };
            let (Some(file), Some(position)) = (segment.file.clone(), segment.damaged_at) else {
                return Ok(None);
            };
            (
                file,
                segment.base_offset,
                position,
                state.offset_rule(index),
            )
        };
        let walked = scan_batches(
            &file,
            0,
            position,
            base_offset,
            rule,
            ScanMode::HeadersOnly,
            |_, _| true,
        )
        .await?;
        if walked.valid_end != position {
            // The headers before it do not lead to it: not a place a
            // replacement can be fitted into.
            return Ok(None);
        }
        let offset = walked.next_offset;
        let epoch = self.epoch_of(offset);
        Ok(Some(DamagedBatch {
            offset,
            epoch,
            segment_base: base_offset,
            position,
        }))
    }

    /// The leader epoch this log's history gives `offset`.
    fn epoch_of(&self, offset: u64) -> Option<i32> {
        let state = self.shared.state.borrow();
        state
            .epochs
            .entries()
            .iter()
            .take_while(|(_, start)| *start <= offset)
            .last()
            .map(|(epoch, _)| *epoch)
    }

    /// Writes `batch` (another replica's copy) over the damaged batch `at`
    /// describes, durably, once every check of the module doc passes. The
    /// outer error is the disk's; the inner one says why nothing was written.
    pub async fn repair_damaged(
        &self,
        at: DamagedBatch,
        batch: Bytes,
    ) -> LogResult<Result<(), RepairRefusal>> {
        let header = match validate_stored_batch(&batch) {
            Ok(header) => header,
            Err(error) => return Ok(Err(RepairRefusal::BadBatch(error.to_string()))),
        };
        if header.base_offset < 0 || header.base_offset as u64 != at.offset {
            return Ok(Err(RepairRefusal::WrongOffset {
                expected: at.offset,
                found: header.base_offset,
            }));
        }
        if let Some(expected) = at.epoch {
            if header.partition_leader_epoch != expected {
                return Ok(Err(RepairRefusal::WrongEpoch {
                    expected,
                    found: header.partition_leader_epoch,
                }));
            }
        }
        let _permit = self.shared.lock().await?;
        // Appends in flight land first: the active segment's tail block is
        // read back after the repair, with nothing pending behind it.
        write_pending(&self.shared).await?;
        let (file, data_end, next_offset, active) = {
            let state = self.shared.state.borrow();
            let last = state.segments.len() - 1;
            let Some((index, segment)) = state
                .segments
                .iter()
                .enumerate()
                .find(|(_, segment)| segment.base_offset == at.segment_base)
            else {
                return Ok(Err(RepairRefusal::NothingDamaged));
            };
            let (Some(file), Some(damaged_at)) = (segment.file.clone(), segment.damaged_at) else {
                return Ok(Err(RepairRefusal::NothingDamaged));
            };
            if damaged_at != at.position || segment.cleaned {
                return Ok(Err(RepairRefusal::NothingDamaged));
            }
            (
                file,
                segment.written_bytes,
                segment.next_offset,
                index == last,
            )
        };
        let end = at.position + batch.len() as u64;
        let fits = if end == data_end {
            if header.last_offset() as u64 + 1 == next_offset {
                Ok(())
            } else {
                Err(format!(
                    "it ends the segment's data but the segment ends at offset {next_offset}"
                ))
            }
        } else if end + BATCH_HEADER_BYTES as u64 <= data_end {
            let after = file.read_bytes(end, BATCH_HEADER_BYTES).await?;
            match BatchHeader::parse(&after) {
                Ok(next) if next.base_offset == header.last_offset() + 1 => Ok(()),
                Ok(next) => Err(format!(
                    "the batch after it starts at {}, not {}",
                    next.base_offset,
                    header.last_offset() + 1
                )),
                Err(error) => Err(format!("no batch starts after it: {error}")),
            }
        } else {
            Err(format!(
                "it would end at byte {end}, within the last header before {data_end}"
            ))
        };
        if let Err(why) = fits {
            return Ok(Err(RepairRefusal::DoesNotFit {
                bytes: batch.len(),
                why,
            }));
        }
        let path = file.path.clone();
        let position = at.position;
        checkpoint::off_executor(move || {
            use std::os::unix::fs::FileExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|handle| {
                    handle.write_all_at(&batch, position)?;
                    handle.sync_data()
                });
            written.map_err(|source| LogError::io("repair a damaged batch", path, source))
        })
        .await?;
        let tail_block = if active {
            Some(read_tail_block(&file, data_end).await?)
        } else {
            None
        };
        let mut state = self.shared.state.borrow_mut();
        if let Some(segment) = state
            .segments
            .iter_mut()
            .find(|segment| segment.base_offset == at.segment_base)
        {
            segment.damaged_at = None;
            // Checked again from here by the next read (the replacement and
            // whatever lies after it).
            segment.verified_bytes = segment.verified_bytes.min(at.position);
            if let Some(tail_block) = tail_block {
                segment.tail_block = tail_block;
            }
        }
        drop(state);
        tracing::warn!(
            path = %file.path.display(),
            position,
            offset = at.offset,
            bytes = end - position,
            "repaired a damaged batch with another replica's copy"
        );
        Ok(Ok(()))
    }
}
