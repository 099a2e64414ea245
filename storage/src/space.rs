//! Room in a segment file ahead of the writes: the "initialised space"
//! policy.
//!
//! Every policy first *reserves* room with `fallocate` ahead of the data, in
//! steps that double with the segment ([`reserve_target`]), so running out
//! of disk shows up at a reservation, never in the middle of a write. What
//! that leaves is unwritten extents: each `O_DIRECT` write into them
//! converts extents (metadata the next `fdatasync` must write, and io_uring
//! punts such a write to a kernel worker instead of issuing it inline).
//!
//! With [`Preallocation::Zeroed`] a background task per segment also writes
//! zeros into the reserved room just ahead of the data, so appends land on
//! written blocks: a plain overwrite, and an `fdatasync` with only the
//! device cache to flush (about half the latency, docs/BENCHMARKS.md). The
//! fill is an optimisation, never a precondition: it writes one chunk at a
//! time, stays at most [`FILL_AHEAD_MAX_BYTES`] ahead of the data, and a
//! write that needs room the fill has not reached yet *stops* it (waiting
//! for at most the one chunk in flight, so no zero write can land on data)
//! and goes into the reserved, unwritten room as with
//! [`Preallocation::Reserve`]. A failed fill is logged and changes nothing
//! else. The cost is writing the filled bytes twice, counted in
//! `LogStats::zero_filled_bytes`.
//!
//! Whoever truncates or seals a segment file first stops its fill
//! ([`finish_fill`]), so a late zero write can never extend a file past the
//! size it was cut to.

use std::cell::Cell;
use std::rc::Rc;

use crate::error::{glommio_io, LogError, LogResult};
use crate::segment::{align_up, Segment, SegmentFile};

/// Smallest `fallocate` reservation: a partition that holds one record
/// reserves this much, not a whole `preallocate_bytes` (5 000 such
/// partitions reserved 160 GB at 32 MiB).
pub const RESERVE_STEP_MIN_BYTES: u64 = 64 << 10;
/// How far ahead of the data the zero fill goes at most. A write that
/// catches up with the fill waits for one chunk at most, but zeros compete
/// with data for the device: the earlier policy, which filled up to 32 MiB
/// ahead and made writes wait for whole fills, raised the replicated
/// end-to-end p99 at 50 MiB/s from 15-20 ms to 170-220 ms.
pub const FILL_AHEAD_MAX_BYTES: u64 = 4 << 20;
/// One zero write of a fill (one in flight at a time): the longest a write
/// waits for a fill it catches up with.
pub const FILL_CHUNK_BYTES: u64 = 128 << 10;

/// How segment files get room ahead of the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Reserve, and write zeros into the reserved room just ahead of the
    /// data in the background (see the module docs;
    /// `log.preallocate.zero.fill=true`, the default).
    #[default]
    Zeroed,
    /// `fallocate` only: unwritten extents, which each write converts
    /// (metadata the next `fdatasync` must write). Each byte is written
    /// once.
    Reserve,
}

/// A zero fill running in the background for one segment. Dropping it
/// cancels the task (a write already submitted still completes: stop it
/// with [`PendingFill::stop`] before writing where it might reach).
pub struct PendingFill {
    /// Where the fill started.
    from: u64,
    /// Zeros are written (completed) from `from` up to here.
    filled: Rc<Cell<u64>>,
    /// No chunk starts at or past this.
    stop_at: Rc<Cell<u64>>,
    task: glommio::Task<LogResult<()>>,
}

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillEnd {
    /// Where it started.
    pub from: u64,
    /// Zeros are written up to here.
    pub zeroed: u64,
    /// It failed (logged once, when it ended): the segment is not filled
    /// again.
    pub failed: bool,
}

impl PendingFill {
    /// Starts writing zeros to `[from, to)` of `file`, chunk by chunk.
    pub fn start(file: Rc<SegmentFile>, from: u64, to: u64) -> Self {
        let filled = Rc::new(Cell::new(from));
        let stop_at = Rc::new(Cell::new(u64::MAX));
        let task =
            glommio::spawn_local(write_zeros(file, from, to, filled.clone(), stop_at.clone()));
        Self {
            from,
            filled,
            stop_at,
            task,
        }
    }

    /// Zeros are written up to here; the one chunk that may be in flight
    /// starts here, so a write that ends at or before it cannot meet a zero
    /// write.
    pub fn filled(&self) -> u64 {
        self.filled.get()
    }

    /// How the fill ended, if it has (completed or failed), without
    /// waiting.
    pub fn ended(&mut self) -> Option<FillEnd> {
        let outcome = futures::FutureExt::now_or_never(&mut self.task)?;
        Some(self.end_with(outcome))
    }

    /// Stops the fill after the chunk at its current position (the one in
    /// flight, or the first if it has not started: so a fill started just
    /// ahead of busy writes still gets ahead) and returns how it ended.
    pub async fn stop(mut self) -> FillEnd {
        self.stop_at.set(self.filled.get() + 1);
        let outcome = (&mut self.task).await;
        self.end_with(outcome)
    }

    fn end_with(&self, outcome: LogResult<()>) -> FillEnd {
        FillEnd {
            from: self.from,
            zeroed: self.filled.get(),
            failed: !note_outcome(outcome),
        }
    }
}

/// Logs a failed fill; `true` when it succeeded.
fn note_outcome(outcome: LogResult<()>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(error) => {
            // The data goes into reserved (unwritten) room instead: slower
            // to sync, nothing lost. The segment is not filled again.
            tracing::warn!(%error, "zero fill ahead of the data failed; this segment is not filled further");
            false
        }
    }
}

/// Writes zeros to `[from, to)` (block aligned), one chunk at a time,
/// advancing `filled` after each and starting none at or past `stop_at`.
async fn write_zeros(
    file: Rc<SegmentFile>,
    from: u64,
    to: u64,
    filled: Rc<Cell<u64>>,
    stop_at: Rc<Cell<u64>>,
) -> LogResult<()> {
    debug_assert_eq!(from % crate::segment::BLOCK_BYTES, 0);
    debug_assert_eq!(to % crate::segment::BLOCK_BYTES, 0);
    let mut position = from;
    while position < to && position < stop_at.get() {
        let len = (to - position).min(FILL_CHUNK_BYTES) as usize;
        let mut buffer = file.dma.alloc_dma_buffer(len);
        buffer.as_bytes_mut().fill(0);
        let written = file.dma.write_at(buffer, position).await;
        check_whole_write("zero fill", &file, written, len)?;
        position += len as u64;
        filled.set(position);
    }
    Ok(())
}

/// A completed `O_DIRECT` write of `expected` bytes: an error, or a short
/// write (which `O_DIRECT` reports for a full disk), is the `operation`'s
/// failure on `file`.
pub(crate) fn check_whole_write(
    operation: &'static str,
    file: &SegmentFile,
    result: glommio::Result<usize, ()>,
    expected: usize,
) -> LogResult<()> {
    let written = result.map_err(|error| LogError::io(operation, &file.path, glommio_io(error)))?;
    if written != expected {
        return Err(LogError::io(
            operation,
            &file.path,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {expected}"),
            ),
        ));
    }
    Ok(())
}

/// The next background fill of a segment whose data ends at `data_end`,
/// reserved up to `reserved`, with zeros written up to `zeroed` (from an
/// earlier fill): `None` when the fill is far enough ahead (half its reach)
/// or there is no reserved room to fill. The reach doubles with the data
/// (an idle partition's file gets a few blocks of zeros) up to
/// [`FILL_AHEAD_MAX_BYTES`].
pub fn next_fill(data_end: u64, reserved: u64, zeroed: u64) -> Option<(u64, u64)> {
    let from = align_up(data_end).max(zeroed);
    let reach = data_end.clamp(RESERVE_STEP_MIN_BYTES, FILL_AHEAD_MAX_BYTES);
    if from >= data_end + reach / 2 {
        return None;
    }
    let to = (data_end + reach).min(reserved);
    let to = to - to % crate::segment::BLOCK_BYTES;
    (to > from).then_some((from, to))
}

/// How far to reserve (`fallocate`) a segment file that is reserved up to
/// `allocated` when the writes need room up to `need` (block aligned).
/// The step doubles with the file, from [`RESERVE_STEP_MIN_BYTES`] up to
/// `preallocate_bytes`, so the reservation follows the partition's write
/// rate: an idle partition holds tens of KiB, a busy one reaches the full
/// step after a few MiB and keeps the few-`fallocate`s-per-segment cost of
/// a fixed step. Sealing trims what a segment did not use.
///
/// Not capped at `segment_bytes`: with the
/// reservation ending at the data of 16 KiB segments, the broker's
/// compaction test kept a superseded record in 5 of 22 runs
/// (`tests/broker/test_compaction.py`), uncapped in none of 8 (nor main in
/// 6). The cause is not found; `preallocate_bytes = 0` may show it too.
pub fn reserve_target(allocated: u64, need: u64, preallocate_bytes: u64) -> u64 {
    let step = allocated.max(RESERVE_STEP_MIN_BYTES).min(preallocate_bytes);
    need + step
}

/// Stops a segment's fill before its file is cut or sealed.
pub async fn finish_fill(fill: Option<PendingFill>) {
    if let Some(fill) = fill {
        fill.stop().await;
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
    fn fills_stay_a_little_ahead_of_the_data_inside_the_reservation() {
        let kib = 1u64 << 10;
        let mib = 1u64 << 20;
        // A fresh segment with one small batch: a minimal reach.
        assert_eq!(next_fill(100, 68 * kib, 0), Some((4 * kib, 64 * kib)));
        // Never past the reservation.
        assert_eq!(next_fill(100, 16 * kib, 0), Some((4 * kib, 16 * kib)));
        assert_eq!(next_fill(16 * kib, 16 * kib, 0), None);
        // Far enough ahead already: nothing to do.
        assert_eq!(next_fill(mib, 32 * mib, 2 * mib), None);
        // Running short: the reach doubles with the data...
        assert_eq!(
            next_fill(mib, 32 * mib, mib + 4 * kib),
            Some((mib + 4 * kib, 2 * mib))
        );
        // ...up to FILL_AHEAD_MAX_BYTES, from where the last fill ended.
        assert_eq!(
            next_fill(100 * mib, 200 * mib, 101 * mib),
            Some((101 * mib, 104 * mib))
        );
        // A fill never starts behind the data (the tail block is data's).
        assert_eq!(
            next_fill(100 * mib + 1, 200 * mib, 0),
            Some((100 * mib + 4 * kib, 104 * mib))
        );
    }
}
