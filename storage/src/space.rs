//! Room in a segment file ahead of the writes: the "initialised space"
//! policy.
//!
//! Appends land in space that already holds written (zeroed) blocks, so an
//! `O_DIRECT` write is a plain overwrite: no block allocation, no unwritten
//! extent to convert, no size change. On ext4 and XFS that has two effects
//! measured here (docs/BENCHMARKS.md): io_uring can issue the write inline
//! instead of punting it to a kernel worker thread, and the `fdatasync`
//! after it has no metadata to write, only the device cache to flush (about
//! half the latency with four partitions syncing at once).
//!
//! The zeros are written ahead of need by a background task per segment
//! (at most one at a time), in steps that double with the segment's size
//! from [`FILL_STEP_MIN_BYTES`] up to `preallocate_bytes`, so an idle
//! partition costs little and a busy one rarely waits. The fill's own
//! metadata (allocation, file size) becomes durable with the next
//! `fdatasync` of the file, which every durable append needs anyway; data is
//! only written into a region after its fill completed, so no write ever
//! races a fill of the same blocks. The cost is writing every byte twice
//! (zeros, then data), counted in `LogStats::zero_filled_bytes`.
//!
//! Whoever truncates or seals a segment file first awaits its fill
//! ([`finish_fill`]), so a late zero write can never extend a file past the
//! size it was cut to.

use std::rc::Rc;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::error::{glommio_io, LogError, LogResult};
use crate::segment::{align_up, Segment, SegmentFile};

/// Smallest zero fill: an idle partition's file starts at this (8 000
/// partitions holding one record each write 512 MiB of zeros, not the 8 GiB
/// a 1 MiB first step wrote).
pub const FILL_STEP_MIN_BYTES: u64 = 64 << 10;
/// Smallest `fallocate` reservation ([`Preallocation::Reserve`]): a
/// partition that holds one record reserves this much, not a whole
/// `preallocate_bytes` (5 000 such partitions reserved 160 GB at 32 MiB).
pub const RESERVE_STEP_MIN_BYTES: u64 = 64 << 10;
/// Zero writes of one fill in flight at once.
const FILL_DEPTH: usize = 2;

/// How segment files get room ahead of the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Write zeros ahead of the data (see the module docs;
    /// `log.preallocate.zero.fill=true`). Measured on 2026-12-07
    /// (docs/BENCHMARKS.md): small `acks=all` requests get faster (fsync
    /// half as long; one partition with the Java producer's defaults 1.06x,
    /// transactions 1.2-1.45x), but under a steady replicated load the
    /// end-to-end p99 at 50 MiB/s rose from 15-20 ms to 170-220 ms (fills of
    /// up to 32 MiB queue ahead of the data writes; a 4 MiB cap still gave
    /// 45-61 ms). So not the default.
    Zeroed,
    /// `fallocate` without writing: unwritten extents, which each write
    /// converts (metadata the next `fdatasync` must write). Each byte is
    /// written once. The default.
    #[default]
    Reserve,
}

/// A zero fill running in the background for one segment. Dropping it
/// cancels the task (writes already submitted still complete).
pub struct PendingFill {
    /// The file is initialised up to here once the fill succeeded.
    pub end: u64,
    task: Option<glommio::Task<LogResult<()>>>,
    outcome: Option<LogResult<()>>,
}

impl PendingFill {
    /// Starts writing zeros to `[from, to)` of `file`.
    pub fn start(file: Rc<SegmentFile>, from: u64, to: u64, chunk_bytes: usize) -> Self {
        let task = glommio::spawn_local(write_zeros(file, from, to, chunk_bytes));
        Self {
            end: to,
            task: Some(task),
            outcome: None,
        }
    }

    /// Whether the fill has completed (successfully or not), without waiting.
    pub fn is_finished(&mut self) -> bool {
        if self.outcome.is_none() {
            if let Some(task) = self.task.as_mut() {
                if let Some(outcome) = futures::FutureExt::now_or_never(task) {
                    self.task = None;
                    self.outcome = Some(outcome);
                }
            }
        }
        self.outcome.is_some()
    }

    /// Waits for the fill; `Ok(end)` when the region is initialised.
    pub async fn finish(mut self) -> LogResult<u64> {
        let outcome = match (self.outcome.take(), self.task.take()) {
            (Some(outcome), _) => outcome,
            (None, Some(task)) => task.await,
            (None, None) => Ok(()),
        };
        outcome.map(|()| self.end)
    }
}

/// Writes zeros to `[from, to)` (both block aligned) with a few writes in
/// flight.
async fn write_zeros(
    file: Rc<SegmentFile>,
    from: u64,
    to: u64,
    chunk_bytes: usize,
) -> LogResult<()> {
    debug_assert_eq!(from % crate::segment::BLOCK_BYTES, 0);
    debug_assert_eq!(to % crate::segment::BLOCK_BYTES, 0);
    let mut in_flight = FuturesUnordered::new();
    let mut position = from;
    while position < to {
        let len = (to - position).min(chunk_bytes as u64) as usize;
        let mut buffer = file.dma.alloc_dma_buffer(len);
        buffer.as_bytes_mut().fill(0);
        let at = position;
        let file = &file;
        in_flight.push(async move { (file.dma.write_at(buffer, at).await, len) });
        position += len as u64;
        if in_flight.len() >= FILL_DEPTH {
            check_written(file, in_flight.next().await)?;
        }
    }
    while let Some(done) = in_flight.next().await {
        check_written(&file, Some(done))?;
    }
    Ok(())
}

fn check_written(
    file: &SegmentFile,
    done: Option<(glommio::Result<usize, ()>, usize)>,
) -> LogResult<()> {
    let Some((result, expected)) = done else {
        return Ok(());
    };
    let written =
        result.map_err(|error| LogError::io("zero fill", &file.path, glommio_io(error)))?;
    if written != expected {
        return Err(LogError::io(
            "zero fill",
            &file.path,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {expected}"),
            ),
        ));
    }
    Ok(())
}

/// The next background fill for a segment whose file is initialised up to
/// `initialised` and holds data up to `written_end`, or `None` when there is
/// room enough (at least half a step ahead) or the segment cannot grow.
pub fn next_fill(
    initialised: u64,
    written_end: u64,
    segment_bytes: u64,
    preallocate_bytes: u64,
) -> Option<(u64, u64)> {
    let step = initialised.clamp(
        FILL_STEP_MIN_BYTES,
        preallocate_bytes.max(FILL_STEP_MIN_BYTES),
    );
    if initialised >= written_end + step / 2 {
        return None;
    }
    // A segment rolls once its size passes segment.bytes: no need beyond it.
    let limit = align_up(segment_bytes.max(written_end));
    let end = (initialised + step).min(limit);
    (end > initialised).then_some((initialised, end))
}

/// How far to reserve (`fallocate`) a segment file that is reserved up to
/// `allocated` when the writes need room up to `need` (block aligned).
/// The step doubles with the file, from [`RESERVE_STEP_MIN_BYTES`] up to
/// `preallocate_bytes`, so the reservation follows the partition's write
/// rate: an idle partition holds tens of KiB, a busy one reaches the full
/// step after a few MiB and keeps the few-`fallocate`s-per-segment cost of
/// a fixed step. Sealing trims what a segment did not use.
///
/// Not capped at `segment_bytes` (as the zero fill is): with the
/// reservation ending at the data of 16 KiB segments, the broker's
/// compaction test kept a superseded record in 5 of 22 runs
/// (`tests/broker/test_compaction.py`), uncapped in none of 8 (nor main in
/// 6). The cause is not found; `preallocate_bytes = 0` may show it too.
pub fn reserve_target(allocated: u64, need: u64, preallocate_bytes: u64) -> u64 {
    let step = allocated.max(RESERVE_STEP_MIN_BYTES).min(preallocate_bytes);
    need + step
}

/// Waits for a segment's fill before its file is cut or sealed. Errors of
/// the fill do not matter then (the region lies past the data) and are
/// only logged.
pub async fn finish_fill(fill: Option<PendingFill>, file: &SegmentFile) {
    if let Some(fill) = fill {
        if let Err(error) = fill.finish().await {
            tracing::warn!(path = %file.path.display(), %error, "zero fill ahead of the data failed");
        }
    }
}

/// Takes a segment's pending fill out of it (for [`finish_fill`]).
pub fn take_fill(segment: &mut Segment) -> Option<PendingFill> {
    segment.pending_fill.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_with_the_segment() {
        let kib = 1u64 << 10;
        let mib = 1u64 << 20;
        // A fresh segment with one small batch: the minimal step.
        assert_eq!(reserve_target(0, 4 * kib, 32 * mib), 68 * kib);
        // The step doubles with the reserved size...
        assert_eq!(reserve_target(68 * kib, 72 * kib, 32 * mib), 140 * kib);
        assert_eq!(reserve_target(4 * mib, 5 * mib, 32 * mib), 9 * mib);
        // ...up to preallocate_bytes.
        assert_eq!(reserve_target(100 * mib, 101 * mib, 32 * mib), 133 * mib);
        // No preallocation: exactly what the writes need.
        assert_eq!(reserve_target(0, 8 * kib, 0), 8 * kib);
    }

    #[test]
    fn fills_grow_with_the_segment_and_stop_at_its_size() {
        let mib = 1u64 << 20;
        let kib = 1u64 << 10;
        // A fresh segment: one minimal step.
        assert_eq!(next_fill(0, 0, 1 << 30, 32 * mib), Some((0, 64 * kib)));
        assert_eq!(
            next_fill(64 * kib, 40 * kib, 1 << 30, 32 * mib),
            Some((64 * kib, 128 * kib))
        );
        // Enough room ahead: nothing to do.
        assert_eq!(next_fill(4 * mib, mib, 1 << 30, 32 * mib), None);
        // Room running out: the step doubles with the initialised size...
        assert_eq!(
            next_fill(4 * mib, 3 * mib, 1 << 30, 32 * mib),
            Some((4 * mib, 8 * mib))
        );
        // ...up to preallocate_bytes.
        assert_eq!(
            next_fill(256 * mib, 250 * mib, 1 << 30, 32 * mib),
            Some((256 * mib, 288 * mib))
        );
        // Never past segment.bytes (rounded to a block).
        assert_eq!(
            next_fill(mib, 600_000, 1_500_000, 32 * mib),
            Some((mib, align_up(1_500_000)))
        );
        assert_eq!(
            next_fill(align_up(1_500_000), 1_400_000, 1_500_000, 32 * mib),
            None
        );
    }
}
