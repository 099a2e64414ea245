//! Producer-state snapshots: the idempotent-producer state of one partition
//! ([`ProducerStates`]) kept in a file beside its log, so that a restart or
//! a move to another shard does not forget producers whose last batch sits
//! in an older segment (Kafka keeps `<offset>.snapshot` files for the same
//! reason).
//!
//! # The file: `<topic>-<partition>/producer-state-snapshot`
//!
//! One file per partition, replaced whole: written to
//! `producer-state-snapshot.tmp`, `fdatasync`ed, renamed over the old one,
//! then the directory is synced, all through glommio's io_uring file API so
//! the shard never blocks on the disk. Big-endian:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `KPSN` |
//! | 4 | 2 | version (2; version 1 files, without the transactions, are read too) |
//! | 6 | 2 | flags (0) |
//! | 8 | 4 | length of the whole file |
//! | 12 | 4 | CRC32C of bytes 0..12 and 16..length |
//! | 16 | 8 | offset: the state after every batch below it |
//! | 24 | 8 | written at (ms since the epoch; informational) |
//! | 32 | 4 | producer count |
//! | 36 | … | per producer, least recently used first: id i64, epoch i16, last timestamp ms i64, batch count u8 (1..=5), then per batch (oldest first) first sequence i32, last sequence i32, base offset u64 |
//! | … | 8 | v2: the transaction index's end (the next transactional write starts at or after it) |
//! | … | 4 | v2: transactional producer count, then per producer: id i64, epoch i16, coordinator epoch i32, open u8 (0/1), open transaction's first offset i64 and last offset i64 (0 when none) |
//! | … | 4 | v2: aborted-transaction count, then per entry (by marker offset): producer id i64, first offset i64, marker offset i64, last stable offset after it i64 |
//!
//! The aborted entries are those ending at or above the log start when the
//! snapshot was taken (retention and DeleteRecords drop the older ones).
//!
//! # When it is written
//!
//! * at every clean close: shutdown, the old owner's half of a partition
//!   move (before its log closes), and a reopen for changed settings;
//! * from the shard's maintenance tick ([`SNAPSHOT_CHECK_INTERVAL`], off the
//!   produce path) when it is due: the log rolled a segment since the last
//!   snapshot (so a crash replays about one segment at most, as with
//!   Kafka's snapshot at each roll), or it changed and the last snapshot is
//!   [`SNAPSHOT_AGE_MAX`] old (slow partitions that rarely roll), or the
//!   log start moved past it (retention, DeleteRecords), or there is none.
//!
//! Its offset is taken together with the state (no await between), and the
//! file is written only once the log reached its commit stage at that
//! offset, so a crash normally leaves the file at or below the recovered
//! log end.
//!
//! # At open ([`load`])
//!
//! The snapshot is used if it decodes (magic, version, length, CRC and every
//! field checked) and its offset lies within [log start, log end]; the batch
//! headers from its offset to the log end are then replayed. Otherwise a
//! line says which (missing, damaged and why, below the log start, beyond
//! the log end) and the state is rebuilt from the log alone, starting at
//! the last segment and reaching back over older sealed segments while they
//! add up to at most [`FALLBACK_SCAN_BYTES_MAX`]: producers whose last batch
//! lies before that are forgotten (as after expiry). A refused file is
//! removed: one beyond the log end describes batches the crash cut, and the
//! offsets it names will be reused by different batches. Nothing here can
//! make the open fail. Expiry and the cap are applied to the loaded state.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use glommio::io::{BufferedFile, Directory};
use glommio::sync::Semaphore;
use kafki_storage::batch::BatchHeader;
use kafki_storage::{LogResult, PartitionLog};

use crate::clock::now_ms;
use crate::producer::state::{
    ProducerEntry, ProducerLimits, ProducerStates, SequencedBatch, PRODUCERS_MAX_DEFAULT,
    REMEMBERED_BATCHES,
};
use crate::txn::partition_index::{IndexParts, ProducerTxnPart};
use crate::txn::{AbortedTxn, PartitionTxnIndex};

pub const SNAPSHOT_FILE: &str = "producer-state-snapshot";
const SNAPSHOT_TEMP_FILE: &str = "producer-state-snapshot.tmp";
const MAGIC: [u8; 4] = *b"KPSN";
pub const VERSION: u16 = 2;
/// The first version, without the transactions: still read.
const VERSION_WITHOUT_TRANSACTIONS: u16 = 1;
/// Id, epoch, coordinator epoch, open flag, first and last offsets.
const TXN_PRODUCER_BYTES: usize = 8 + 2 + 4 + 1 + 8 + 8;
/// Producer id, first offset, marker offset, last stable offset.
const ABORTED_TXN_BYTES: usize = 8 * 4;
/// Aborted entries a snapshot file may hold (bounds the read at open; a
/// partition holding more keeps only the newest in its file).
const ABORTED_TXNS_MAX: usize = 1_000_000;
/// Magic, version, flags, length, CRC, offset, written at, count.
const HEADER_BYTES: usize = 36;
/// Where the CRC field sits; the CRC covers everything but itself.
const CRC_AT: usize = 12;
/// Id, epoch, last timestamp, batch count.
const ENTRY_FIXED_BYTES: usize = 8 + 2 + 8 + 1;
/// First sequence, last sequence, base offset.
const BATCH_BYTES: usize = 4 + 4 + 8;
const ENTRY_BYTES_MAX: usize = ENTRY_FIXED_BYTES + REMEMBERED_BATCHES * BATCH_BYTES;

/// How often each shard looks at its partitions' snapshots (and expiry).
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A changed state is written at least this often, even without a roll.
pub const SNAPSHOT_AGE_MAX: Duration = Duration::from_secs(30);
/// After a failed write the tick tries again this much later.
pub const SNAPSHOT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Without a usable snapshot, sealed segments before the last one are
/// replayed while they add up to at most this much.
pub const FALLBACK_SCAN_BYTES_MAX: u64 = 64 << 20;
/// Bytes read from the log per step of a replay.
const REPLAY_READ_BYTES: u64 = 1 << 20;

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The state after every batch below this offset.
    pub offset: u64,
    pub written_ms: i64,
    /// Least recently used first.
    pub producers: Vec<(i64, ProducerEntry)>,
    /// The transaction index (empty from a version 1 file).
    pub transactions: IndexParts,
}

/// Why a snapshot file is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("not a producer-state snapshot (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0} (this broker reads versions 1 to {VERSION})")]
    UnsupportedVersion(u16),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("{0} bytes beyond the length the header gives")]
    TrailingBytes(usize),
    #[error("{size} bytes, more than the {limit} a snapshot can need")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error(
        "its offset {offset} is below the log start {log_start}: batches after it were deleted"
    )]
    BelowLogStart { offset: u64, log_start: u64 },
    #[error(
        "its offset {offset} is beyond the log end {log_end}: the log's tail was cut (a crash?)"
    )]
    BeyondLogEnd { offset: u64, log_end: u64 },
}

fn crc_of(bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_AT]), &bytes[CRC_AT + 4..])
}

/// Encodes `states` as the snapshot of offset `offset`.
pub fn encode(states: &ProducerStates, offset: u64, written_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + states.len() * ENTRY_BYTES_MAX);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&written_ms.to_be_bytes());
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for (producer_id, entry) in states.iter_least_recent_first() {
        // The state never holds more than REMEMBERED_BATCHES; keep the
        // newest if it ever did, so the count fits its byte.
        let skip = entry.batches.len().saturating_sub(REMEMBERED_BATCHES);
        let batches: Vec<&SequencedBatch> = entry.batches.iter().skip(skip).collect();
        if batches.is_empty() {
            continue;
        }
        out.extend_from_slice(&producer_id.to_be_bytes());
        out.extend_from_slice(&entry.epoch.to_be_bytes());
        out.extend_from_slice(&entry.last_timestamp_ms.to_be_bytes());
        out.push(batches.len() as u8);
        for batch in batches {
            out.extend_from_slice(&batch.first_sequence.to_be_bytes());
            out.extend_from_slice(&batch.last_sequence.to_be_bytes());
            out.extend_from_slice(&batch.base_offset.to_be_bytes());
        }
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
    encode_transactions(&mut out, &states.transactions().parts());
    let length = out.len() as u32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc_of(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Appends the v2 transactions section.
fn encode_transactions(out: &mut Vec<u8>, parts: &IndexParts) {
    out.extend_from_slice(&parts.end_offset.to_be_bytes());
    out.extend_from_slice(&(parts.producers.len() as u32).to_be_bytes());
    for producer in &parts.producers {
        out.extend_from_slice(&producer.producer_id.to_be_bytes());
        out.extend_from_slice(&producer.epoch.to_be_bytes());
        out.extend_from_slice(&producer.coordinator_epoch.to_be_bytes());
        let (open, (first, last)) = match producer.open {
            Some(range) => (1u8, range),
            None => (0u8, (0, 0)),
        };
        out.push(open);
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&last.to_be_bytes());
    }
    let skip = parts.aborted.len().saturating_sub(ABORTED_TXNS_MAX);
    let aborted = &parts.aborted[skip..];
    out.extend_from_slice(&(aborted.len() as u32).to_be_bytes());
    for entry in aborted {
        out.extend_from_slice(&entry.producer_id.to_be_bytes());
        out.extend_from_slice(&entry.first_offset.to_be_bytes());
        out.extend_from_slice(&entry.last_offset.to_be_bytes());
        out.extend_from_slice(&entry.last_stable_offset.to_be_bytes());
    }
}

/// Decodes the v2 transactions section of a snapshot of `offset`, checking
/// every field (counts against the bytes left, unique producers, open
/// transactions and aborted entries below the index's end, which lies at or
/// below the snapshot's offset, aborted entries in marker order).
fn decode_transactions(reader: &mut Reader<'_>, offset: u64) -> Result<IndexParts, SnapshotError> {
    let malformed = |what: String| SnapshotError::Malformed(format!("transactions: {what}"));
    let end_offset = reader.i64("transaction index end")?;
    if end_offset < 0 || end_offset as u64 > offset {
        return Err(malformed(format!(
            "index end {end_offset} outside 0..={offset}"
        )));
    }
    let count = reader.u32("transactional producer count")? as usize;
    if count > reader.remaining() / TXN_PRODUCER_BYTES {
        return Err(SnapshotError::Truncated(format!(
            "{count} transactional producers cannot fit in the {} bytes left",
            reader.remaining()
        )));
    }
    let mut producers = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for _ in 0..count {
        let producer_id = reader.i64("transactional producer id")?;
        let epoch = reader.i16("producer epoch")?;
        let coordinator_epoch = reader.i32("coordinator epoch")?;
        let open = reader.u8("open flag")?;
        let first = reader.i64("open first offset")?;
        let last = reader.i64("open last offset")?;
        if producer_id < 0 || !seen.insert(producer_id) {
            return Err(malformed(format!(
                "bad or repeated producer id {producer_id}"
            )));
        }
        let open = match open {
            0 => None,
            1 if 0 <= first && first <= last && last < end_offset => Some((first, last)),
            _ => {
                return Err(malformed(format!(
                    "producer {producer_id}: open flag {open}, offsets {first}..={last}"
                )))
            }
        };
        producers.push(ProducerTxnPart {
            producer_id,
            epoch,
            coordinator_epoch,
            open,
        });
    }
    let count = reader.u32("aborted transaction count")? as usize;
    if count > reader.remaining() / ABORTED_TXN_BYTES {
        return Err(SnapshotError::Truncated(format!(
            "{count} aborted transactions cannot fit in the {} bytes left",
            reader.remaining()
        )));
    }
    let mut aborted: Vec<AbortedTxn> = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = AbortedTxn {
            producer_id: reader.i64("aborted producer id")?,
            first_offset: reader.i64("aborted first offset")?,
            last_offset: reader.i64("aborted marker offset")?,
            last_stable_offset: reader.i64("aborted last stable offset")?,
        };
        let ordered = aborted
            .last()
            .is_none_or(|previous| previous.last_offset < entry.last_offset);
        if entry.producer_id < 0
            || entry.first_offset < 0
            || entry.first_offset > entry.last_offset
            || entry.last_offset >= end_offset
            || !ordered
        {
            return Err(malformed(format!("bad aborted entry {entry:?}")));
        }
        aborted.push(entry);
    }
    Ok(IndexParts {
        producers,
        aborted,
        end_offset,
    })
}

/// Reads big-endian fields from a slice, refusing to run past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(SnapshotError::Truncated(format!(
                "{what} at byte {} runs past the end ({} bytes)",
                self.at,
                self.bytes.len()
            )));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], SnapshotError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, SnapshotError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn i16(&mut self, what: &str) -> Result<i16, SnapshotError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, SnapshotError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, SnapshotError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// Decodes a snapshot file, checking everything before trusting anything:
/// header, length, CRC, then every field (counts against the bytes left,
/// batch counts, sequences, offsets below the snapshot's, unique ids).
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::Truncated(format!(
            "{} bytes, the header alone needs {HEADER_BYTES}",
            bytes.len()
        )));
    }
    let mut reader = Reader { bytes, at: 0 };
    let magic = reader.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(SnapshotError::BadMagic(magic));
    }
    let version = reader.u16("version")?;
    if version != VERSION && version != VERSION_WITHOUT_TRANSACTIONS {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let flags = reader.u16("flags")?;
    let length = reader.u32("length")? as usize;
    if length < bytes.len() {
        return Err(SnapshotError::TrailingBytes(bytes.len() - length));
    }
    if length > bytes.len() {
        return Err(SnapshotError::Truncated(format!(
            "{} of the {length} bytes the header gives",
            bytes.len()
        )));
    }
    let stored = reader.u32("crc")?;
    let computed = crc_of(bytes);
    if stored != computed {
        return Err(SnapshotError::BadCrc { stored, computed });
    }
    if flags != 0 {
        return Err(SnapshotError::Malformed(format!(
            "unknown flags {flags:#06x}"
        )));
    }
    let offset = reader.u64("offset")?;
    let written_ms = reader.i64("written at")?;
    let count = reader.u32("producer count")? as usize;
    let fits = reader.remaining() / (ENTRY_FIXED_BYTES + BATCH_BYTES);
    if count > fits {
        return Err(SnapshotError::Truncated(format!(
            "{count} producers cannot fit in the {} bytes left",
            reader.remaining()
        )));
    }
    let mut producers = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for index in 0..count {
        let producer_id = reader.i64("producer id")?;
        let epoch = reader.i16("epoch")?;
        let last_timestamp_ms = reader.i64("last timestamp")?;
        let batch_count = reader.u8("batch count")? as usize;
        let malformed =
            |what: String| SnapshotError::Malformed(format!("producer #{index}: {what}"));
        if producer_id < 0 || !seen.insert(producer_id) {
            return Err(malformed(format!(
                "bad or repeated producer id {producer_id}"
            )));
        }
        if batch_count == 0 || batch_count > REMEMBERED_BATCHES {
            return Err(malformed(format!("{batch_count} batches")));
        }
        let mut batches = VecDeque::with_capacity(batch_count);
        for _ in 0..batch_count {
            let batch = SequencedBatch {
                first_sequence: reader.i32("first sequence")?,
                last_sequence: reader.i32("last sequence")?,
                base_offset: reader.u64("base offset")?,
            };
            if batch.first_sequence < 0 || batch.last_sequence < 0 {
                return Err(malformed("negative sequence".into()));
            }
            if batch.base_offset >= offset {
                return Err(malformed(format!(
                    "batch at offset {} not below the snapshot's offset {offset}",
                    batch.base_offset
                )));
            }
            if batches
                .back()
                .is_some_and(|previous: &SequencedBatch| previous.base_offset >= batch.base_offset)
            {
                return Err(malformed("batch offsets do not increase".into()));
            }
            batches.push_back(batch);
        }
        producers.push((
            producer_id,
            ProducerEntry {
                epoch,
                batches,
                last_timestamp_ms,
            },
        ));
    }
    let transactions = if version == VERSION_WITHOUT_TRANSACTIONS {
        IndexParts::default()
    } else {
        decode_transactions(&mut reader, offset)?
    };
    if reader.remaining() != 0 {
        // The length matched, so these bytes are inside the CRC: a writer bug.
        return Err(SnapshotError::Malformed(format!(
            "{} bytes after the last section",
            reader.remaining()
        )));
    }
    Ok(Snapshot {
        offset,
        written_ms,
        producers,
        transactions,
    })
}

/// A snapshot is usable only if its offset lies within the log.
pub fn check_range(offset: u64, log_start: u64, log_end: u64) -> Result<(), SnapshotError> {
    if offset < log_start {
        return Err(SnapshotError::BelowLogStart { offset, log_start });
    }
    if offset > log_end {
        return Err(SnapshotError::BeyondLogEnd { offset, log_end });
    }
    Ok(())
}

/// The largest file a snapshot under `producers_max` (or the default cap,
/// if larger: the file may predate a lowered cap) can be.
fn file_bytes_max(producers_max: usize) -> u64 {
    let producers = producers_max.max(PRODUCERS_MAX_DEFAULT) as u64;
    // Transactional producers are idempotent ones too, plus at most the
    // open transactions (counted once more per producer).
    let per_producer = (ENTRY_BYTES_MAX + 2 * TXN_PRODUCER_BYTES) as u64;
    HEADER_BYTES as u64
        + 16
        + producers.saturating_mul(per_producer)
        + (ABORTED_TXNS_MAX * ABORTED_TXN_BYTES) as u64
}

fn io_error(error: glommio::GlommioError<()>) -> std::io::Error {
    match error {
        glommio::GlommioError::IoError(source) => source,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Reads the snapshot file of `dir`: `Ok(None)` if there is none.
pub async fn read_file(dir: &Path, bytes_max: u64) -> Result<Option<Vec<u8>>, SnapshotError> {
    let unreadable = |error: std::io::Error| SnapshotError::Unreadable(error.to_string());
    let path = dir.join(SNAPSHOT_FILE);
    let file = match BufferedFile::open(&path).await.map_err(io_error) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error)),
    };
    let result = async {
        let size = file
            .file_size()
            .await
            .map_err(io_error)
            .map_err(unreadable)?;
        if size > bytes_max {
            return Err(SnapshotError::TooLarge {
                size,
                limit: bytes_max,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        while (bytes.len() as u64) < size {
            let want = (size - bytes.len() as u64) as usize;
            let read = file
                .read_at(bytes.len() as u64, want)
                .await
                .map_err(io_error)
                .map_err(unreadable)?;
            if read.is_empty() {
                break; // shrank while we read: decode reports it truncated
            }
            bytes.extend_from_slice(&read);
        }
        Ok(Some(bytes))
    }
    .await;
    let _ = file.close().await;
    result
}

/// Replaces the snapshot file of `dir` with `bytes`, atomically and durably
/// (temp file, `fdatasync`, rename, directory sync).
pub async fn write_file(dir: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    write_file_with(dir, bytes, FileSync::Synced).await
}

/// Whether a snapshot write syncs its file and directory itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSync {
    Synced,
    /// A node stop: the file system is synced once for every log before
    /// any is marked clean (`kafki_storage::finish_stop`).
    Deferred,
}

/// [`write_file`], syncing as `sync` says.
async fn write_file_with(dir: &Path, bytes: Vec<u8>, sync: FileSync) -> std::io::Result<()> {
    // A name of its own per write: a write cut short (its task dropped at a
    // stop, its rename still running on a blocking thread) must not have
    // its temp file taken or renamed away by the next writer's.
    let temp = dir.join(format!(
        "{SNAPSHOT_TEMP_FILE}.{}",
        uuid::Uuid::new_v4().simple()
    ));
    let file = BufferedFile::create(&temp).await.map_err(io_error)?;
    let written = async {
        let total = bytes.len();
        let done = file.write_at(bytes, 0).await.map_err(io_error)?;
        if done < total {
            // Regular files write short only when the disk is full; the
            // next tick tries again.
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {done} of {total} bytes"),
            ));
        }
        if sync == FileSync::Synced {
            file.fdatasync().await.map_err(io_error)?;
        }
        Ok(())
    }
    .await;
    let closed = file.close().await.map_err(io_error);
    written?;
    closed?;
    glommio::io::rename(&temp, dir.join(SNAPSHOT_FILE))
        .await
        .map_err(io_error)?;
    if sync == FileSync::Deferred {
        return Ok(());
    }
    let directory = Directory::open(dir).await.map_err(io_error)?;
    let synced = directory.sync().await.map_err(io_error);
    let _ = directory.close().await;
    synced
}

/// What the file on disk covers, compared with the live state to decide
/// whether a new snapshot is due. Lives in its partition, on its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMark {
    /// The offset of the usable file on disk (`None`: none is).
    pub offset: Option<u64>,
    /// [`ProducerStates::changes`] when that file was taken.
    pub changes: u64,
    /// The active segment's base then: another one means the log rolled.
    pub segment_base: u64,
    pub at: Instant,
}

/// One partition's snapshot bookkeeping: the mark, and a lock held while a
/// file is written or the state is loaded again, so that no write runs
/// beside another or beside a reload (whose load removes unfinished temp
/// files and whose truncated log a write's older state no longer matches).
pub struct SnapshotSlot {
    mark: Cell<SnapshotMark>,
    lock: Semaphore,
    /// Moves on at each reload: a write that took the state before it
    /// drops its file instead of storing records the log no longer holds.
    generation: Cell<u64>,
    /// After a failed write, the tick waits until then (one warning per
    /// [`SNAPSHOT_RETRY_AFTER`], not per second, on a full disk).
    retry_at: Cell<Option<Instant>>,
}

impl SnapshotSlot {
    pub fn new(mark: SnapshotMark) -> Self {
        Self {
            mark: Cell::new(mark),
            lock: Semaphore::new(1),
            generation: Cell::new(0),
            retry_at: Cell::new(None),
        }
    }

    pub fn mark(&self) -> SnapshotMark {
        self.mark.get()
    }

    /// After the state was loaded again (a truncated log): the snapshot
    /// the new state came from.
    fn reset(&self, mark: SnapshotMark) {
        self.mark.set(mark);
        self.generation.set(self.generation.get().wrapping_add(1));
    }
}

/// Loads the producers' state of `log` again, as the log now is (after a
/// truncation), with no snapshot write running meanwhile: one that took
/// the state before is dropped when it gets the lock.
pub async fn reload(log: &PartitionLog, producers: &PartitionProducers) {
    let Ok(_permit) = producers.snapshot.lock.acquire_permit(1).await else {
        return; // the partition is closing
    };
    let (label, limits) = {
        let states = producers.states.borrow();
        (states.label().to_string(), states.limits())
    };
    let loaded = load(log, label, limits, now_ms()).await;
    *producers.states.borrow_mut() = loaded.states;
    producers.snapshot.reset(loaded.mark);
}

fn active_segment_base(log: &PartitionLog) -> u64 {
    log.segment_bases().last().copied().unwrap_or(0)
}

/// Whether the tick should write a new snapshot of a partition's producers
/// now (see the module docs for the rules).
pub fn is_due(log: &PartitionLog, producers: &PartitionProducers, now: Instant) -> bool {
    if producers
        .snapshot
        .retry_at
        .get()
        .is_some_and(|retry_at| now < retry_at)
    {
        return false;
    }
    let mark = producers.snapshot.mark();
    let offsets = log.offsets();
    let states = producers.states.borrow();
    let Some(offset) = mark.offset else {
        return !states.is_empty() || offsets.next_offset > offsets.log_start_offset;
    };
    let stale = offset < offsets.log_start_offset;
    let grew = offsets.next_offset > offset;
    let changed = states.changes() != mark.changes;
    let rolled = grew && active_segment_base(log) != mark.segment_base;
    let old = now.duration_since(mark.at) >= SNAPSHOT_AGE_MAX;
    stale || rolled || ((changed || grew) && old)
}

/// Whether the file on disk already holds exactly the live state.
fn is_current(log: &PartitionLog, producers: &PartitionProducers) -> bool {
    let mark = producers.snapshot.mark();
    let offsets = log.offsets();
    let states = producers.states.borrow();
    match mark.offset {
        Some(offset) => {
            offset == offsets.next_offset
                && offset >= offsets.log_start_offset
                && mark.changes == states.changes()
        }
        None => states.is_empty() && offsets.next_offset == offsets.log_start_offset,
    }
}

/// Writes the snapshot unless the file already matches the live state.
/// Returns the offset written, if any. For closes: the final word before
/// the log closes (another shard may open it next).
pub async fn write_unless_current<F, Committed>(
    log: &PartitionLog,
    producers: &PartitionProducers,
    wait_committed: F,
) -> Result<Option<u64>, String>
where
    F: FnOnce(u64) -> Committed,
    Committed: Future<Output = LogResult<()>>,
{
    if is_current(log, producers) {
        return Ok(None);
    }
    write(log, producers, wait_committed).await
}

/// A node stop's snapshot: like [`write_unless_current`], but neither
/// waiting for the log to commit nor syncing: the stop syncs the file
/// system before it marks any log clean, and a crash before that leaves a
/// file the next open refuses if it names an offset beyond the recovered
/// log (see [`load`]).
pub async fn write_at_stop(
    log: &PartitionLog,
    producers: &PartitionProducers,
) -> Result<Option<u64>, String> {
    if is_current(log, producers) {
        return Ok(None);
    }
    write_now(log, producers, |_| async { Ok(()) }, FileSync::Deferred).await
}

/// Writes the snapshot: the state and offset taken together, then (once
/// `wait_committed` says the partition committed that offset) the file.
/// Returns the offset, `None` when a reload overtook it (nothing written).
pub async fn write<F, Committed>(
    log: &PartitionLog,
    producers: &PartitionProducers,
    wait_committed: F,
) -> Result<Option<u64>, String>
where
    F: FnOnce(u64) -> Committed,
    Committed: Future<Output = LogResult<()>>,
{
    let written = write_now(log, producers, wait_committed, FileSync::Synced).await;
    let retry_at = written
        .is_err()
        .then(|| Instant::now() + SNAPSHOT_RETRY_AFTER);
    producers.snapshot.retry_at.set(retry_at);
    written
}

async fn write_now<F, Committed>(
    log: &PartitionLog,
    producers: &PartitionProducers,
    wait_committed: F,
    sync: FileSync,
) -> Result<Option<u64>, String>
where
    F: FnOnce(u64) -> Committed,
    Committed: Future<Output = LogResult<()>>,
{
    let generation = producers.snapshot.generation.get();
    // No await from here to `encode`: the state is exactly that of `offset`.
    let offset = log.offsets().next_offset;
    let segment_base = active_segment_base(log);
    let (bytes, changes) = {
        let states = producers.states.borrow();
        (encode(&states, offset, now_ms()), states.changes())
    };
    // A file naming an offset the log could still lose would be refused at
    // the next open anyway; waiting makes it usable after a crash too.
    wait_committed(offset)
        .await
        .map_err(|error| format!("the log did not commit offset {offset}: {error}"))?;
    // Not held while waiting for the commit: a reload (on the replication
    // path the commit may need) must not wait for it.
    let _permit = producers
        .snapshot
        .lock
        .acquire_permit(1)
        .await
        .map_err(|_| "the partition is closing".to_string())?;
    if producers.snapshot.generation.get() != generation {
        return Ok(None); // reloaded meanwhile: this state may be stale
    }
    // A write that took its state later may have got the lock first (this
    // one waited longer for its commit): the file keeps the newer state.
    let written = producers.snapshot.mark.get();
    if written
        .offset
        .is_some_and(|at| (at, written.changes) >= (offset, changes))
    {
        return Ok(None);
    }
    write_file_with(log.dir(), bytes, sync)
        .await
        .map_err(|error| format!("cannot write {SNAPSHOT_FILE}: {error}"))?;
    producers.snapshot.mark.set(SnapshotMark {
        offset: Some(offset),
        changes,
        segment_base,
        at: Instant::now(),
    });
    Ok(Some(offset))
}

/// What a partition holds of the producer room: the live sequence state
/// and what its snapshot file covers. Lives in its partition, on its shard.
pub struct PartitionProducers {
    pub states: RefCell<ProducerStates>,
    pub snapshot: SnapshotSlot,
}

impl PartitionProducers {
    pub fn new(loaded: Loaded) -> Self {
        Self {
            states: RefCell::new(loaded.states),
            snapshot: SnapshotSlot::new(loaded.mark),
        }
    }
}

/// The state loaded at open, and what the file on disk covers.
pub struct Loaded {
    pub states: ProducerStates,
    pub mark: SnapshotMark,
}

/// Where a replay without a usable snapshot starts: the last segment, and
/// older sealed segments while they add up to at most
/// [`FALLBACK_SCAN_BYTES_MAX`] (sizes from the log's memory, not a `stat`
/// of each file on the shard).
fn fallback_start(log: &PartitionLog, bytes_max: u64) -> u64 {
    let sizes = log.segment_sizes();
    let log_start = log.offsets().log_start_offset;
    let mut from = sizes.last().map_or(0, |(base, _)| *base);
    let mut budget = bytes_max;
    for (base, size) in sizes.iter().rev().skip(1) {
        if *size > budget {
            break;
        }
        budget -= size;
        from = *base;
    }
    from.max(log_start)
}

/// Replays the batch headers of `[from, to)` into `states`, skipping
/// batches below `skip_below` (already in the snapshot). Returns how many
/// batches it read, and why it stopped early if it did.
async fn replay(
    log: &PartitionLog,
    states: &mut ProducerStates,
    from: u64,
    to: u64,
    skip_below: u64,
    now_ms: i64,
) -> (u64, Option<String>) {
    let mut batches = 0u64;
    let mut offset = from;
    while offset < to {
        let read = match log.read(offset, REPLAY_READ_BYTES, to).await {
            Ok(read) => read,
            Err(error) => return (batches, Some(format!("reading offset {offset}: {error}"))),
        };
        if read.chunks.is_empty() {
            // Compaction removed every batch from here to `to`.
            break;
        }
        if read.next_offset <= offset {
            return (batches, Some(format!("no progress at offset {offset}")));
        }
        let bytes = match read.load().await {
            Ok(bytes) => bytes,
            Err(error) => return (batches, Some(format!("loading offset {offset}: {error}"))),
        };
        let mut position = 0usize;
        while position < bytes.len() {
            let Ok(header) = BatchHeader::parse(&bytes[position..]) else {
                break;
            };
            if header.batch_length < 0 || header.base_offset < 0 {
                break;
            }
            let base_offset = header.base_offset as u64;
            if base_offset >= skip_below {
                // The log's timestamps are the client's (or the broker's,
                // LogAppendTime); a future one must not make a producer
                // immortal, a missing one counts as now.
                let timestamp_ms = if header.max_timestamp >= 0 {
                    header.max_timestamp.min(now_ms)
                } else {
                    now_ms
                };
                let batch_end = position
                    .saturating_add(header.total_bytes())
                    .min(bytes.len());
                states.record_stored_batch(
                    &header,
                    &bytes[position..batch_end],
                    base_offset,
                    timestamp_ms,
                );
            }
            batches += 1;
            position += header.total_bytes();
        }
        offset = read.next_offset;
    }
    (batches, None)
}

/// Loads a partition's producer state at open (see the module docs).
/// Never fails: the worst case is a state rebuilt from the log's tail.
pub async fn load(
    log: &PartitionLog,
    label: String,
    limits: ProducerLimits,
    now_ms: i64,
) -> Loaded {
    load_with_fallback(log, label, limits, now_ms, FALLBACK_SCAN_BYTES_MAX).await
}

/// Removes temp files of snapshot writes that never finished (a crash, or
/// a stop that dropped the write): at open no write of this partition runs.
async fn remove_stale_temp_files(dir: &Path) {
    let dir = dir.to_path_buf();
    kafki_storage::checkpoint::off_executor(move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(SNAPSHOT_TEMP_FILE)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    })
    .await
}

/// [`load`], with the fallback replay reaching back over at most
/// `fallback_bytes_max` of sealed segments (tests use 0: the last segment).
async fn load_with_fallback(
    log: &PartitionLog,
    label: String,
    limits: ProducerLimits,
    now_ms: i64,
    fallback_bytes_max: u64,
) -> Loaded {
    let offsets = log.offsets();
    let (log_start, log_end) = (offsets.log_start_offset, offsets.next_offset);
    let dir = log.dir().to_path_buf();
    remove_stale_temp_files(&dir).await;
    let mut states = ProducerStates::new(label.clone(), limits);
    let found = match read_file(&dir, file_bytes_max(limits.producers_max)).await {
        Ok(Some(bytes)) => decode(&bytes).and_then(|snapshot| {
            check_range(snapshot.offset, log_start, log_end).map(|()| Some(snapshot))
        }),
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    let snapshot_offset = match found {
        Ok(Some(snapshot)) => {
            for (producer_id, entry) in snapshot.producers {
                states.insert_loaded(producer_id, entry);
            }
            states.load_transactions(PartitionTxnIndex::from_parts(snapshot.transactions));
            Some(snapshot.offset)
        }
        Ok(None) => {
            if log_end > log_start {
                tracing::info!(partition = %label, "no producer-state snapshot: rebuilding the producer state from the log's last segments");
            }
            None
        }
        Err(error) => {
            tracing::warn!(partition = %label, file = SNAPSHOT_FILE, reason = %error, "producer-state snapshot not used: rebuilding the producer state from the log's last segments");
            // Never read it again (see the module docs for why even one
            // that is merely beyond the log end must go).
            if let Err(error) = glommio::io::remove(dir.join(SNAPSHOT_FILE)).await {
                tracing::warn!(partition = %label, %error, "cannot remove the refused producer-state snapshot");
            }
            None
        }
    };
    let from = snapshot_offset.unwrap_or_else(|| fallback_start(log, fallback_bytes_max));
    let skip_below = snapshot_offset.unwrap_or(0);
    let (batches, stopped) = replay(log, &mut states, from, log_end, skip_below, now_ms).await;
    if let Some(reason) = stopped {
        tracing::warn!(partition = %label, %reason, "producer-state replay stopped early: producers whose last batch comes later may be forgotten");
    }
    states.drop_transactions_before(log_start);
    let expired = states.expire(now_ms);
    states.enforce_cap();
    if snapshot_offset.is_some() || log_end > log_start {
        tracing::info!(
            partition = %label,
            source = if snapshot_offset.is_some() { "snapshot" } else { "log" },
            snapshot_offset = snapshot_offset.map_or(-1, |offset| offset as i64),
            replayed_from = from,
            replayed_batches = batches,
            log_end,
            producers = states.len(),
            expired,
            "producer state loaded"
        );
    } else {
        // A partition that never held anything has nothing to say.
        tracing::debug!(partition = %label, "producer state: empty partition");
    }
    // The file holds the state as it was before the replay, when the
    // change counter was 0 (loading does not count as a change).
    let mark = SnapshotMark {
        offset: snapshot_offset,
        changes: 0,
        segment_base: active_segment_base(log),
        at: Instant::now(),
    };
    Loaded { states, mark }
}

#[cfg(test)]
mod tests;
