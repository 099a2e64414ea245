//! One segment of a partition log: its files, its in-memory metadata, and the
//! streaming scanner that walks and validates the batches in its `.log` file.
//!
//! Files of the segment whose first offset is `B` (20 digits, Kafka naming):
//! `B.log` (the batches), `B.index` and `B.timeindex` (see `index.rs`).
//! A segment's `.log` is written only through its `DmaFile` (`O_DIRECT`);
//! its buffered read-only descriptor serves the log's reads and, duplicated
//! ([`SegmentFile::share`]), the network layer's `sendfile`/`splice` of
//! sealed data. Two descriptors per segment: a node holds one open segment
//! per idle partition at least, and 20 000 partitions must fit the usual
//! descriptor limits.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use glommio::io::{BufferedFile, DmaFile, OpenOptions};

use crate::batch::{validate_stored_batch, BatchHeader, BATCH_HEADER_BYTES, CRC_START};
use crate::error::{glommio_io, LogError, LogResult};
use crate::index::SegmentIndex;

/// Descriptors an open segment holds (`dma` and `buffered`).
pub const DESCRIPTORS_PER_SEGMENT: u64 = 2;

/// Direct-I/O alignment used for every write position and length.
pub const BLOCK_BYTES: u64 = 4096;

/// How much of a segment file the scanner reads at a time (at most).
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// A headers-only scan's first read. Lookups start at an index entry, a few
/// KiB before the batch they want, and need only its 61-byte header: reading
/// a whole scan chunk there (as recovery does) read a MiB from the device for
/// every fetch of a cold partition, twice the data the fetch then sent. Each
/// further read of the same scan doubles, up to `SCAN_CHUNK_BYTES`, so a walk
/// over many small batches still takes few reads.
const HEADER_SCAN_FIRST_BYTES: usize = 8 << 10;

pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

pub fn offset_index_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

pub fn time_index_name(base_offset: u64) -> String {
    format!("{base_offset:020}.timeindex")
}

/// Parses `00000000000000000042.log` into 42.
pub fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn align_down(value: u64) -> u64 {
    value & !(BLOCK_BYTES - 1)
}

pub fn align_up(value: u64) -> u64 {
    align_down(value + BLOCK_BYTES - 1)
}

/// The open files of one segment.
///
/// Writes go through `dma` (`O_DIRECT`); every read goes through the page
/// cache: `buffered` for the reads the log itself makes (batch lookups, CRC
/// checks, compaction), asynchronous through io_uring, and a duplicate of
/// it ([`SegmentFile::share`]) for the network layer's `splice` (a third
/// descriptor per segment, opened only to be duplicated, cost 10 000
/// descriptors per 10 000 idle partitions). One cache for both matters: a fetch of a cold
/// region after a restart is CRC-checked once before it is served, and with
/// `O_DIRECT` reads that check read the region from the device a first time
/// and the splice a second. Through the cache the check's read is the one
/// device read (with readahead) and the splice finds the pages there. The
/// kernel keeps the cache coherent with the `O_DIRECT` writes (it drops the
/// cached pages a direct write covers when the write completes), and reads
/// never go past the written end.
pub struct SegmentFile {
    pub path: PathBuf,
    pub dma: DmaFile,
    pub buffered: BufferedFile,
}

impl SegmentFile {
    pub async fn open(path: PathBuf, create: bool) -> LogResult<Self> {
        let dma = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(&path)
            .await
            .map_err(|error| LogError::io("open segment", &path, glommio_io(error)))?;
        let buffered = BufferedFile::open(&path)
            .await
            .map_err(|error| LogError::io("open segment", &path, glommio_io(error)))?;
        Ok(Self {
            path,
            dma,
            buffered,
        })
    }

    /// Raw read-only descriptor (buffered) for zero-copy sends.
    pub fn raw_fd(&self) -> RawFd {
        self.buffered.as_raw_fd()
    }

    /// A descriptor of its own for the file (`dup` of the read-only one),
    /// which may cross threads and outlive the segment: what a zero-copy
    /// send holds while the log may seal, clean or delete the segment.
    pub fn share(&self) -> std::io::Result<std::fs::File> {
        // SAFETY: `buffered` owns this descriptor and keeps it open for as
        // long as `self` lives; the borrow ends within this call, after
        // `try_clone_to_owned` made a descriptor of our own (`F_DUPFD_CLOEXEC`).
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.buffered.as_raw_fd()) };
        borrowed.try_clone_to_owned().map(std::fs::File::from)
    }

    /// Cuts (or extends) the file to `size` bytes.
    pub async fn truncate(&self, size: u64) -> LogResult<()> {
        self.dma
            .truncate(size)
            .await
            .map_err(|error| LogError::io("truncate", &self.path, glommio_io(error)))
    }

    /// `fdatasync`: the written data (and the size) reach stable storage.
    pub async fn sync_data(&self) -> LogResult<()> {
        self.dma
            .fdatasync()
            .await
            .map_err(|error| LogError::io("fdatasync", &self.path, glommio_io(error)))
    }

    /// Size of the file on disk (may include preallocated space).
    pub async fn file_bytes(&self) -> LogResult<u64> {
        self.dma
            .file_size()
            .await
            .map_err(|error| LogError::io("stat segment", &self.path, glommio_io(error)))
    }

    /// Reads `len` bytes at `position` into memory.
    pub async fn read_bytes(&self, position: u64, len: usize) -> LogResult<Vec<u8>> {
        let mut out = BytesMut::with_capacity(len);
        self.read_into(position, len, &mut out).await?;
        Ok(Vec::from(out))
    }

    /// Appends exactly `len` bytes of the file from `position` to `out`,
    /// read through the page cache (see the type's comment). A read that
    /// ends early is retried from where it stopped; one that finds the end
    /// of the file first is damage (a file shorter than its metadata).
    pub async fn read_into(&self, position: u64, len: usize, out: &mut BytesMut) -> LogResult<()> {
        out.reserve(len);
        let mut done = 0usize;
        while done < len {
            let chunk = self
                .buffered
                .read_at(position + done as u64, len - done)
                .await
                .map_err(|error| LogError::io("read segment", &self.path, glommio_io(error)))?;
            if chunk.is_empty() {
                return Err(LogError::Damaged {
                    path: self.path.clone(),
                    reason: format!("short read at {position}: {done} of {len} bytes"),
                });
            }
            out.extend_from_slice(&chunk);
            done += chunk.len();
        }
        Ok(())
    }
}

/// Metadata of one segment, kept in memory on the partition's shard.
pub struct Segment {
    pub base_offset: u64,
    /// `None` only for a freshly rolled active segment whose file the flusher
    /// has not created yet.
    pub file: Option<std::rc::Rc<SegmentFile>>,
    /// Logical size: every appended batch, written or not.
    pub size_bytes: u64,
    /// Bytes handed to the device (a prefix of `size_bytes`).
    pub written_bytes: u64,
    /// One past the last offset in the segment.
    pub next_offset: u64,
    /// Largest batch max-timestamp, and the last offset of that batch.
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: u64,
    pub index: SegmentIndex,
    pub bytes_since_index: u64,
    /// Wall-clock ms when the segment got its first batch (roll by age).
    pub created_ms: i64,
    /// Sealed segments are immutable, truncated to their logical size, with
    /// their index files written.
    pub sealed: bool,
    /// Bytes of the last partially filled block, already written once and to
    /// be rewritten (with more data after it) by the next flush.
    pub tail_block: Vec<u8>,
    /// File bytes ready for writes (reserved with `fallocate`, see
    /// [`crate::space`]).
    pub allocated_bytes: u64,
    /// Zeros are written ahead of the data up to here (0: not known).
    pub zeroed_bytes: u64,
    /// A zero fill of this segment failed: it is not filled again.
    pub fill_failed: bool,
    /// A zero fill ahead of the data, running in the background.
    pub pending_fill: Option<crate::space::PendingFill>,
    /// A prefix of the file whose batches passed their CRC check since open
    /// (scanned at recovery, written by us, or checked by a read). Reads
    /// check the rest before serving it, so a damaged batch is never served.
    pub verified_bytes: u64,
    /// Where a read found damage in a segment trusted at open, if it did.
    pub damaged_at: Option<u64>,
    /// The segment lies (at least partly) below the cleaner checkpoint: the
    /// cleaner may have removed batches, so offsets inside it and up to the
    /// next segment are strictly increasing instead of contiguous.
    pub cleaned: bool,
}

impl Segment {
    pub fn new(base_offset: u64, created_ms: i64) -> Self {
        Self {
            base_offset,
            file: None,
            size_bytes: 0,
            written_bytes: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            index: SegmentIndex::default(),
            bytes_since_index: 0,
            created_ms,
            sealed: false,
            tail_block: Vec::new(),
            allocated_bytes: 0,
            zeroed_bytes: 0,
            fill_failed: false,
            pending_fill: None,
            verified_bytes: 0,
            damaged_at: None,
            cleaned: false,
        }
    }

    /// How a scan of this segment checks offsets; `next_base` is the base
    /// offset of the following segment, if there is one, and `gaps_until`
    /// the cleaner checkpoint's bound on gaps.
    pub fn offset_rule(&self, next_base: Option<u64>, gaps_until: u64) -> OffsetRule {
        if self.cleaned {
            OffsetRule::Increasing {
                gaps_until,
                below: next_base.unwrap_or(u64::MAX),
            }
        } else {
            OffsetRule::Contiguous
        }
    }

    pub fn relative(&self, offset: u64) -> u32 {
        let relative = offset.saturating_sub(self.base_offset);
        u32::try_from(relative).unwrap_or(u32::MAX)
    }

    /// Records a batch placed at `position` in the in-memory indexes and
    /// counters. Called for appends and for batches found by a scan.
    pub fn note_batch(&mut self, header: &BatchHeader, position: u64, index_interval_bytes: u64) {
        let last_offset = header.last_offset() as u64;
        let total = header.total_bytes() as u64;
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = last_offset;
        }
        if self.bytes_since_index >= index_interval_bytes {
            self.index
                .push_offset(self.relative(last_offset), position as u32);
            self.index.push_time(
                self.max_timestamp,
                self.relative(self.offset_of_max_timestamp),
            );
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += total;
        self.size_bytes = position + total;
        self.next_offset = last_offset + 1;
    }

    /// Adds the final time-index entry a sealed segment carries, so the
    /// segment's max timestamp survives a clean restart.
    pub fn finish_time_index(&mut self) {
        if self.max_timestamp >= 0 && self.next_offset > self.base_offset {
            self.index.push_time(
                self.max_timestamp,
                self.relative(self.offset_of_max_timestamp),
            );
        }
    }

    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(log_file_name(self.base_offset))
    }
}

/// What a scan of a segment file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Position just after the last valid batch.
    pub valid_end: u64,
    /// One past the last offset of the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before `scan_end`, if it did. `None` also when it
    /// stopped at an all-zero tail (preallocated or never-written space).
    pub damage: Option<String>,
}

/// Whether the scan checks CRCs (recovery) or only walks headers (lookups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMode {
    VerifyCrc,
    HeadersOnly,
}

/// How the scanner checks the base offsets of consecutive batches. Base
/// offset and length lie outside the CRC, so these checks are what catches a
/// damaged offset field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetRule {
    /// Every batch starts right after the previous one's last offset: a
    /// segment the cleaner never rewrote.
    Contiguous,
    /// A cleaned segment: every batch starts after the previous one's last
    /// offset, either right after it or, where the cleaner removed what lay
    /// between, at most at `gaps_until` (the cleaner never removes anything
    /// at or after its checkpoint, so no gap ends later); and every batch
    /// ends below `below` (the next segment's base offset).
    Increasing { gaps_until: u64, below: u64 },
}

/// Walks the batches of `file` from `position` up to `scan_end`, calling
/// `visit(position, header)` for each valid one; `visit` returns `false` to
/// stop early. Checks length bounds, magic, offsets (the first batch at
/// `expected_offset` when the scan starts at the file's start, at or after
/// it otherwise, then as `rule` says) and, in `VerifyCrc` mode,
/// the CRC32C. Memory stays bounded by the scan chunk size whatever lengths
/// the file claims.
pub async fn scan_batches(
    file: &SegmentFile,
    mut position: u64,
    scan_end: u64,
    expected_offset: u64,
    rule: OffsetRule,
    mode: ScanMode,
    mut visit: impl FnMut(u64, &BatchHeader) -> bool,
) -> LogResult<ScanOutcome> {
    let mut next_offset = expected_offset;
    let mut first = true;
    let from_start = position == 0;
    // `window` holds file bytes starting at `position`.
    let mut window = BytesMut::new();
    let mut chunk_bytes = match mode {
        ScanMode::VerifyCrc => SCAN_CHUNK_BYTES,
        ScanMode::HeadersOnly => HEADER_SCAN_FIRST_BYTES,
    };
    let outcome = |valid_end, next_offset, damage: Option<String>| ScanOutcome {
        valid_end,
        next_offset,
        damage,
    };
    loop {
        let remaining = scan_end.saturating_sub(position);
        if remaining == 0 {
            return Ok(outcome(position, next_offset, None));
        }
        if (window.len() as u64) < (BATCH_HEADER_BYTES as u64).min(remaining) {
            fill(file, &mut window, position, scan_end, chunk_bytes).await?;
            chunk_bytes = (chunk_bytes * 2).min(SCAN_CHUNK_BYTES);
        }
        if (window.len() as u64) < BATCH_HEADER_BYTES as u64 {
            return Ok(outcome(
                position,
                next_offset,
                tail_damage(&window, "partial batch header"),
            ));
        }
        let header = match BatchHeader::parse(&window) {
            Ok(header) => header,
            Err(error) => return Ok(outcome(position, next_offset, Some(error.to_string()))),
        };
        if let Err(error) = header.check_shape(remaining as usize) {
            return Ok(outcome(
                position,
                next_offset,
                tail_damage(&window, &error.to_string()),
            ));
        }
        let base = header.base_offset;
        let offset_ok = match rule {
            _ if base < 0 => false,
            // From the start of the file, the first batch starts at the
            // segment's base offset (or after a gap the cleaner made); a
            // scan from inside the file only knows it is not below it.
            OffsetRule::Contiguous if first && from_start => base as u64 == expected_offset,
            OffsetRule::Increasing { gaps_until, .. } if first && from_start => {
                base as u64 == expected_offset
                    || (base as u64 > expected_offset && base as u64 <= gaps_until)
            }
            _ if first => base as u64 >= expected_offset,
            OffsetRule::Contiguous => base as u64 == next_offset,
            OffsetRule::Increasing { gaps_until, .. } => {
                base as u64 == next_offset
                    || (base as u64 > next_offset && base as u64 <= gaps_until)
            }
        };
        if !offset_ok {
            let reason = format!("batch base offset {base} where {next_offset} was expected");
            return Ok(outcome(position, next_offset, Some(reason)));
        }
        if let OffsetRule::Increasing { below, .. } = rule {
            if header.last_offset() as u64 >= below {
                let reason = format!(
                    "batch last offset {} reaches the next segment at {below}",
                    header.last_offset()
                );
                return Ok(outcome(position, next_offset, Some(reason)));
            }
        }
        let total = header.total_bytes();
        if mode == ScanMode::VerifyCrc {
            if let Some(reason) =
                verify_crc(file, &mut window, position, total, scan_end, &header).await?
            {
                return Ok(outcome(position, next_offset, Some(reason)));
            }
        } else if window.len() >= total {
            let _ = window.split_to(total);
        } else {
            window.clear();
        }
        if !visit(position, &header) {
            return Ok(outcome(
                position + total as u64,
                header.last_offset() as u64 + 1,
                None,
            ));
        }
        first = false;
        position += total as u64;
        next_offset = header.last_offset() as u64 + 1;
    }
}

/// A stop at bytes that are all zero is the normal end of written data
/// (preallocated space), not damage.
fn tail_damage(window: &[u8], reason: &str) -> Option<String> {
    if window.iter().all(|byte| *byte == 0) {
        None
    } else {
        Some(reason.to_string())
    }
}

/// Appends the next `chunk_bytes` of the file (from `position +
/// window.len()`) to `window`, never past `scan_end`.
async fn fill(
    file: &SegmentFile,
    window: &mut BytesMut,
    position: u64,
    scan_end: u64,
    chunk_bytes: usize,
) -> LogResult<()> {
    let from = position + window.len() as u64;
    let len = scan_end.saturating_sub(from).min(chunk_bytes as u64) as usize;
    if len == 0 {
        return Ok(());
    }
    file.read_into(from, len, window).await
}

/// Checks the CRC of the batch at the start of `window`, streaming the parts
/// of the batch that are not in memory yet. Consumes the batch from `window`.
async fn verify_crc(
    file: &SegmentFile,
    window: &mut BytesMut,
    position: u64,
    total: usize,
    scan_end: u64,
    header: &BatchHeader,
) -> LogResult<Option<String>> {
    if window.len() < total && total <= SCAN_CHUNK_BYTES {
        fill(file, window, position, scan_end, SCAN_CHUNK_BYTES).await?;
    }
    if window.len() >= total {
        let batch = window.split_to(total);
        return Ok(validate_stored_batch(&batch)
            .err()
            .map(|error| error.to_string()));
    }
    // A batch larger than the scan chunk: fold the CRC over streamed chunks.
    let mut crc = crc32c::crc32c(&window[CRC_START..]);
    let mut consumed = window.len() as u64;
    window.clear();
    while consumed < total as u64 {
        let len = (total as u64 - consumed).min(SCAN_CHUNK_BYTES as u64) as usize;
        let chunk = file.read_bytes(position + consumed, len).await?;
        crc = crc32c::crc32c_append(crc, &chunk);
        consumed += len as u64;
    }
    if crc != header.crc {
        return Ok(Some(format!(
            "CRC32C mismatch: stored {:#010x}, computed {crc:#010x}",
            header.crc
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_log_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_log_file_name("0042.log"), None);
        assert_eq!(parse_log_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_log_file_name("0000000000000000004x.log"), None);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_down(4097), 4096);
        assert_eq!(align_up(4097), 8192);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_up(0), 0);
    }
}
