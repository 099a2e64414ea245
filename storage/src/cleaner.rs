//! Log compaction's building blocks, free of any log state: the bounded key
//! map, the per-batch filter (keep whole, drop, or rewrite), the writer of
//! cleaned segment files, and the swap record that replaces segments
//! atomically. `log/compaction.rs` runs a cleaning pass with them.
//!
//! # Files and the crash protocol
//!
//! A pass rewrites consecutive groups of sealed segments. For the group
//! whose first segment is `B` and which ends where the segment `E` starts:
//!
//! 1. `B.log.cleaned` is written with direct I/O and `fdatasync`ed (empty
//!    when nothing of the group stays), then `B.index.cleaned` and
//!    `B.timeindex.cleaned` (each written atomically). The new cleaner
//!    checkpoint, listing every group `B E keep` of the pass as pending, is
//!    written and synced as `cleaner-checkpoint.swap`.
//! 2. **Commit**, under the flush lock: `cleaner-checkpoint.swap` is renamed
//!    over `cleaner-checkpoint` and the directory synced.
//! 3. Still under the lock, for each group: the old index files of the
//!    segments in `[B, E)` are removed, then their `.log` files except `B`'s
//!    (all of them when `keep = 0`), then `B.log.cleaned` is renamed over
//!    `B.log` (removed when `keep = 0`) and the index files over theirs.
//! 4. After the lock: the directory is synced and `cleaner-checkpoint` is
//!    written again without the pending groups.
//!
//! `B.log.cleaned` is each group's marker: it is removed (renamed) last of
//! the group's old files, so while it exists none of the group's new files
//! is in place and every old file still in `[B, E)` is old. At open,
//! recovery applies step 3 to every pending group whose marker is still
//! there ("finished an interrupted compaction swap"), then deletes every
//! other `*.cleaned` file and a leftover `cleaner-checkpoint.swap`
//! ("discarded unfinished compaction output"). So a kill -9 at any point
//! leaves either every old segment of the pass or every new one; redoing
//! step 3 is idempotent, and a group already swapped in is never touched
//! again (files created later in `[B, E)` are safe). A pass starts only
//! once the previous one's pending groups are cleared, so no marker of an
//! uncommitted pass can be taken for a committed one.
//!
//! Why one commit for the whole pass rather than Kafka's per-segment
//! `.swap` rename: a group whose last segments lost all their records cannot
//! be told, from the swapped file alone, which old segments it replaces; and
//! committing all groups at once means a tombstone removed in a later group
//! can never land without the removal of the values it deleted in an earlier
//! group (no resurrection after a crash). And the commit record being the
//! checkpoint itself, the checkpoint can never disagree with the segments.
//!
//! Old segment files are only ever unlinked or replaced by a rename, never
//! truncated or overwritten: a reader holding a region of one (a zero-copy
//! fetch holds a `dup`ed descriptor) keeps reading the old bytes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use crate::batch::{validate_stored_batch, BatchHeader};
use crate::checkpoint::{CleanerCheckpoint, SwapGroup, CLEANER_FILE};
use crate::compression::Compression;
use crate::error::{glommio_io, LogError, LogResult};
use crate::records::{self, assemble_batch, BatchFields, RecordError};
use crate::segment::{
    align_up, log_file_name, offset_index_name, parse_log_file_name, time_index_name, Segment,
    SegmentFile,
};

/// The next cleaner checkpoint of a pass, written before its commit (see
/// the module comment); the commit renames it over `cleaner-checkpoint`.
pub const CHECKPOINT_SWAP_FILE: &str = "cleaner-checkpoint.swap";
/// Suffix of a cleaned file not yet swapped in.
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// Memory the key map may use per entry: a 16-byte digest and an 8-byte
/// offset in a hash table kept at most 7/8 full and sized in powers of two
/// (about 57 bytes per entry in the worst case), rounded up.
pub const KEY_MAP_BYTES_PER_ENTRY: u64 = 64;

/// Limits of one cleaning pass, set by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanerLimits {
    /// Memory for the key → latest offset map of one pass (Kafka's
    /// `log.cleaner.dedupe.buffer.size` divided among the cleaners). A pass
    /// whose dirty part has more keys cleans the prefix that fits and
    /// leaves the rest to the next pass.
    pub dedupe_buffer_bytes: u64,
    /// Largest records section the cleaner decompresses; a larger (or
    /// undecodable) batch is kept whole and its keys are not used.
    pub decompressed_batch_bytes_max: usize,
    /// Test hook: stop the pass at this step as a killed process would,
    /// leaving the files as they are (the log then refuses writes).
    #[doc(hidden)]
    pub crash_at: Option<SwapStep>,
}

impl Default for CleanerLimits {
    fn default() -> Self {
        Self {
            dedupe_buffer_bytes: 128 << 20,
            decompressed_batch_bytes_max: 64 << 20,
            crash_at: None,
        }
    }
}

/// Steps of the swap at which [`CleanerLimits::crash_at`] can stop a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStep {
    /// Cleaned files and `cleaner-checkpoint.swap` written, not renamed.
    BeforeCommit,
    /// Committed, no group applied.
    AfterCommit,
    /// This many groups applied (1-based), the rest not.
    AfterGroups(usize),
    /// Every group applied; the checkpoint still lists them as pending.
    BeforeCleared,
}

/// What one cleaning pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// A pass ran (false: nothing to clean, below the dirty ratio, busy...).
    pub ran: bool,
    pub first_dirty_before: u64,
    pub first_dirty_after: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    /// Groups whose segments were replaced by a cleaned one (or removed).
    pub groups_replaced: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Every record removed, and among them tombstones past
    /// `delete.retention.ms` and records without a key.
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub keyless_removed: u64,
    /// Records removed because their transaction aborted.
    pub aborted_removed: u64,
    pub batches_rewritten: u64,
    pub batches_dropped: u64,
    /// Transaction markers that got their delete horizon, and that went.
    pub markers_horizon_set: u64,
    pub markers_removed: u64,
    /// Offsets of the ABORT markers whose transaction has no data left in
    /// the log (horizon just set, waiting, or removed): the broker drops
    /// their aborted entries, which no fetch needs any more.
    pub aborts_without_data: Vec<u64>,
    /// Batches kept whole because they did not decode (or decompress within
    /// the limit).
    pub batches_undecodable: u64,
    /// Distinct keys in the map; `map_full` when it stopped the pass short.
    pub map_keys: usize,
    pub map_full: bool,
    /// The pass stopped at [`CleanerLimits::crash_at`].
    pub simulated_crash: bool,
    /// How long the swap held the log's flush lock (appends wait for their
    /// stage meanwhile; reads do not wait).
    pub lock_held_us: u64,
}

/// Hashes a 128-bit digest that is already uniformly random: take 64 bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// Key → latest offset, bounded. Keys are kept as 128-bit digests from two
/// independently and randomly keyed SipHash instances (as Kafka keeps MD5
/// digests): a client cannot aim for collisions, and an accidental one
/// among a billion keys has a probability near 2^-68.
pub struct KeyMap {
    latest: HashMap<u128, u64, BuildHasherDefault<DigestHasher>>,
    capacity: usize,
    hashers: [RandomState; 2],
}

impl KeyMap {
    /// A map for at most `budget_bytes` and at most `records_at_most` keys
    /// (no more distinct keys than records can exist). Allocated once: it
    /// never grows past this capacity.
    pub fn new(budget_bytes: u64, records_at_most: u64) -> Self {
        let capacity = (budget_bytes / KEY_MAP_BYTES_PER_ENTRY)
            .min(records_at_most)
            .max(1);
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        Self {
            latest: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            capacity,
            hashers: [RandomState::new(), RandomState::new()],
        }
    }

    pub fn digest(&self, key: &[u8]) -> u128 {
        let high = self.hashers[0].hash_one(key);
        let low = self.hashers[1].hash_one(key);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Notes `offset` for the key; `false` (and nothing noted) when the key
    /// is new and the map is full.
    pub fn insert(&mut self, digest: u128, offset: u64) -> bool {
        if let Some(latest) = self.latest.get_mut(&digest) {
            *latest = (*latest).max(offset);
            return true;
        }
        if self.latest.len() >= self.capacity {
            return false;
        }
        self.latest.insert(digest, offset);
        true
    }

    pub fn latest(&self, digest: u128) -> Option<u64> {
        self.latest.get(&digest).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// What happens to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    /// A later record of the same key exists.
    Superseded,
    /// A tombstone past `delete.retention.ms` in the clean part.
    ExpiredTombstone,
    /// No key: a compacted topic cannot keep it (Kafka drops it too).
    Keyless,
}

/// What happens to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record stays: copy the batch byte for byte.
    Keep,
    /// No record stays.
    Drop,
    /// Some stay: this is the rewritten batch.
    Rewrite(Vec<u8>),
}

/// Counts of removed records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub records: u64,
    pub tombstones: u64,
    pub keyless: u64,
}

fn record_offset(header: &BatchHeader, offset_delta: i32) -> Result<u64, RecordError> {
    if offset_delta < 0 || offset_delta > header.last_offset_delta {
        return Err(RecordError::Malformed {
            index: 0,
            reason: "offset delta outside the batch",
        });
    }
    Ok(header.base_offset as u64 + offset_delta as u64)
}

/// Calls `visit(offset, key)` for every record with a key of the batch at
/// the start of `batch` (decompressing at most `limit` bytes), in order,
/// until `visit` returns `false`. Returns the offset of the record it
/// stopped at, if it stopped.
pub fn for_each_keyed_record(
    batch: &[u8],
    limit: usize,
    mut visit: impl FnMut(u64, &[u8]) -> bool,
) -> Result<Option<u64>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let section = records::batch_records(&batch[..header.total_bytes()], limit)?;
    for record in records::records(&section, header.records_count) {
        let record = record?;
        let offset = record_offset(&header, record.offset_delta)?;
        if let Some(key) = record.key {
            if !visit(offset, key) {
                return Ok(Some(offset));
            }
        }
    }
    Ok(None)
}

/// Decides the fate of every record of the batch at the start of `batch`
/// (decompressing at most `limit` bytes) with `fate(offset, key,
/// is_tombstone)`, and builds the rewritten batch when only some stay.
///
/// A rewritten batch keeps the base offset, last offset delta, leader
/// epoch, attributes (timestamp type included), timestamps, producer id,
/// epoch and base sequence, and the compression codec; it holds the kept
/// records byte for byte (offset and timestamp deltas, headers), a smaller
/// record count and a new CRC32C. Decoding is checked whole before anything
/// is decided, so an error means "keep the batch as it is".
pub fn filter_batch(
    batch: &[u8],
    limit: usize,
    mut fate: impl FnMut(u64, Option<&[u8]>, bool) -> Fate,
) -> Result<(Verdict, Removed), RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let whole = &batch[..header.total_bytes()];
    let codec = Compression::from_attributes(header.attributes)?;
    let section = records::batch_records(whole, limit)?;
    let decoded =
        records::records(&section, header.records_count).collect::<Result<Vec<_>, _>>()?;
    let mut kept = Vec::with_capacity(section.len());
    let mut kept_count: i32 = 0;
    let mut removed = Removed::default();
    for record in &decoded {
        let offset = record_offset(&header, record.offset_delta)?;
        match fate(offset, record.key, record.value.is_none()) {
            Fate::Keep => {
                kept.extend_from_slice(record.encoded);
                kept_count += 1;
            }
            Fate::Superseded => removed.records += 1,
            Fate::ExpiredTombstone => {
                removed.records += 1;
                removed.tombstones += 1;
            }
            Fate::Keyless => {
                removed.records += 1;
                removed.keyless += 1;
            }
        }
    }
    if removed.records == 0 {
        return Ok((Verdict::Keep, removed));
    }
    if kept_count == 0 {
        return Ok((Verdict::Drop, removed));
    }
    let fields = BatchFields {
        records_count: kept_count,
        ..BatchFields::from(&header)
    };
    let mut rewritten = Vec::with_capacity(whole.len());
    assemble_batch(&mut rewritten, &fields, codec, &kept);
    // The rewritten batch replaces durable data: check it as recovery will.
    let check = validate_stored_batch(&rewritten);
    assert!(
        check.is_ok_and(|new| new.base_offset == header.base_offset
            && new.last_offset_delta == header.last_offset_delta
            && new.records_count == kept_count
            && new.total_bytes() == rewritten.len()),
        "rewritten batch at offset {} does not validate",
        header.base_offset
    );
    Ok((Verdict::Rewrite(rewritten), removed))
}

/// The batch `header` describes with no record left: same base offset,
/// offset span, leader epoch, timestamps, producer id/epoch/base sequence
/// and attributes, uncompressed (as Kafka writes the empty batches its
/// cleaner keeps for producer state). Replaying it restores the producer's
/// last sequence.
pub fn empty_batch(header: &BatchHeader) -> Vec<u8> {
    let fields = BatchFields {
        records_count: 0,
        ..BatchFields::from(header)
    };
    let mut batch = Vec::with_capacity(crate::batch::BATCH_HEADER_BYTES);
    assemble_batch(&mut batch, &fields, Compression::None, &[]);
    assert!(
        validate_stored_batch(&batch).is_ok_and(|empty| empty.base_offset == header.base_offset
            && empty.last_offset_delta == header.last_offset_delta
            && empty.producer_id == header.producer_id),
        "empty batch at offset {} does not validate",
        header.base_offset
    );
    batch
}

/// The name of the cleaned (not yet swapped in) version of file `name`.
pub fn cleaned_name(name: &str) -> String {
    format!("{name}{CLEANED_SUFFIX}")
}

/// Writes one cleaned segment file (`<base>.log.cleaned`) with direct I/O in
/// aligned chunks and builds its in-memory metadata and indexes as it goes.
pub struct CleanedWriter {
    file: SegmentFile,
    segment: Segment,
    pending: Vec<u8>,
    flushed: u64,
    chunk_bytes: usize,
    index_interval_bytes: u64,
    final_path: PathBuf,
}

impl CleanedWriter {
    /// Creates the file, reserving `reserve_bytes` (the inputs' size, which
    /// the output never exceeds) so the writes do not extend it.
    pub async fn create(
        dir: &Path,
        base_offset: u64,
        created_ms: i64,
        reserve_bytes: u64,
        chunk_bytes: usize,
        index_interval_bytes: u64,
    ) -> LogResult<Self> {
        let final_path = dir.join(log_file_name(base_offset));
        let path = dir.join(cleaned_name(&log_file_name(base_offset)));
        let file = SegmentFile::open(path, true).await?;
        file.dma
            .truncate(0)
            .await
            .map_err(|error| LogError::io("truncate", &file.path, glommio_io(error)))?;
        if reserve_bytes > 0 {
            file.dma
                .pre_allocate(align_up(reserve_bytes), false)
                .await
                .map_err(|error| LogError::io("preallocate", &file.path, glommio_io(error)))?;
        }
        let mut segment = Segment::new(base_offset, created_ms);
        segment.cleaned = true;
        Ok(Self {
            file,
            segment,
            pending: Vec::with_capacity(chunk_bytes * 2),
            flushed: 0,
            chunk_bytes,
            index_interval_bytes,
            final_path,
        })
    }

    /// Appends one whole, valid batch.
    pub async fn push(&mut self, batch: &[u8]) -> LogResult<()> {
        let header = validate_stored_batch(batch)?;
        assert_eq!(header.total_bytes(), batch.len(), "one whole batch");
        assert!(
            header.base_offset as u64 >= self.segment.next_offset,
            "cleaned batches keep their increasing offsets"
        );
        let position = self.flushed + self.pending.len() as u64;
        self.segment
            .note_batch(&header, position, self.index_interval_bytes);
        self.pending.extend_from_slice(batch);
        if self.pending.len() >= self.chunk_bytes {
            let aligned = (self.pending.len() as u64 & !(crate::segment::BLOCK_BYTES - 1)) as usize;
            self.write_pending(aligned).await?;
        }
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Writes the first `len` pending bytes (a multiple of the block size,
    /// or all of them padded with zeros to one).
    async fn write_pending(&mut self, len: usize) -> LogResult<()> {
        let padded = align_up(len as u64) as usize;
        let mut buffer = self.file.dma.alloc_dma_buffer(padded);
        let bytes = buffer.as_bytes_mut();
        bytes[..len].copy_from_slice(&self.pending[..len]);
        bytes[len..].fill(0);
        let written = self
            .file
            .dma
            .write_at(buffer, self.flushed)
            .await
            .map_err(|error| LogError::io("write", &self.file.path, glommio_io(error)))?;
        if written != padded {
            return Err(LogError::io(
                "write",
                &self.file.path,
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {written} of {padded}"),
                ),
            ));
        }
        self.flushed += len as u64;
        self.pending.drain(..len);
        Ok(())
    }

    /// Writes the rest, trims the file to its size and syncs it. Returns the
    /// open file (named by its final path, which it will have once swapped
    /// in) and its metadata, sealed, with the final time-index entry.
    pub async fn finish(mut self) -> LogResult<(SegmentFile, Segment)> {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.write_pending(len).await?;
        }
        let size = self.flushed;
        self.file.truncate(size).await?;
        self.file.sync_data().await?;
        let mut segment = self.segment;
        assert_eq!(segment.size_bytes, size, "metadata and file agree");
        segment.finish_time_index();
        segment.written_bytes = size;
        segment.allocated_bytes = size;
        segment.verified_bytes = size;
        segment.sealed = true;
        let mut file = self.file;
        file.path = self.final_path;
        Ok((file, segment))
    }
}

fn remove_if_exists(path: &Path) -> LogResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::io("delete", path, source)),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> LogResult<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::io("rename", from, source)),
    }
}

/// Step 3 of the protocol for one group, given the base offsets of the
/// `.log` files in `dir`. Idempotent: redoing it after a crash at any point
/// inside it ends in the same files, and it does nothing to a group already
/// swapped in. Does not sync the directory.
pub fn apply_group(dir: &Path, group: &SwapGroup, bases: &[u64]) -> LogResult<()> {
    let names = [
        log_file_name(group.base),
        offset_index_name(group.base),
        time_index_name(group.base),
    ];
    let marker = dir.join(cleaned_name(&names[0]));
    if marker.exists() {
        for base in bases
            .iter()
            .copied()
            .filter(|base| (group.base..group.end).contains(base))
        {
            remove_if_exists(&dir.join(offset_index_name(base)))?;
            remove_if_exists(&dir.join(time_index_name(base)))?;
            if base != group.base || !group.keep {
                remove_if_exists(&dir.join(log_file_name(base)))?;
            }
        }
        // The marker goes last of the old state.
        if group.keep {
            rename_if_exists(&marker, &dir.join(&names[0]))?;
        } else {
            remove_if_exists(&marker)?;
        }
    }
    // A crash between the log's rename and its indexes' leaves these.
    for name in &names[1..] {
        let cleaned = dir.join(cleaned_name(name));
        if group.keep {
            rename_if_exists(&cleaned, &dir.join(name))?;
        } else {
            remove_if_exists(&cleaned)?;
        }
    }
    Ok(())
}

/// Base offsets of the `.log` files in `dir`, sorted.
pub fn log_file_bases(dir: &Path) -> LogResult<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|source| LogError::io("list dir", dir, source))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LogError::io("list dir", dir, source))?;
        if let Some(base) = parse_log_file_name(&entry.file_name().to_string_lossy()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// At open, before the segments are read: finishes the swap of a committed
/// pass that a crash interrupted, and discards the output of an uncommitted
/// one (see the module comment).
pub fn recover_swap(dir: &Path) -> LogResult<()> {
    let leftovers = || -> LogResult<Vec<PathBuf>> {
        let entries =
            std::fs::read_dir(dir).map_err(|source| LogError::io("list dir", dir, source))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| LogError::io("list dir", dir, source))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(CLEANED_SUFFIX) || name == CHECKPOINT_SWAP_FILE {
                found.push(entry.path());
            }
        }
        Ok(found)
    };
    let Some(checkpoint) = CleanerCheckpoint::load(dir)? else {
        if leftovers()?.is_empty() {
            return Ok(());
        }
        // Without the checkpoint the pending groups are unknown: cleaned
        // files may be committed output whose old segments are gone already.
        return Err(LogError::Damaged {
            path: dir.join(CLEANER_FILE),
            reason: "unreadable cleaner checkpoint beside cleaned files: the log cannot tell which segments are current".into(),
        });
    };
    if !checkpoint.pending().is_empty() {
        let bases = log_file_bases(dir)?;
        let mut finished = 0;
        for group in checkpoint.pending() {
            if dir.join(cleaned_name(&log_file_name(group.base))).exists() {
                finished += 1;
            }
            apply_group(dir, group, &bases)?;
        }
        crate::log::sync_dir(dir)?;
        checkpoint.without_pending().store(dir)?;
        if finished > 0 {
            tracing::warn!(dir = %dir.display(), groups = finished, first_dirty = checkpoint.first_dirty(), "finished an interrupted compaction swap");
        }
    }
    let stale = leftovers()?;
    for path in &stale {
        remove_if_exists(path)?;
    }
    if !stale.is_empty() {
        crate::log::sync_dir(dir)?;
        tracing::warn!(dir = %dir.display(), files = stale.len(), "discarded unfinished compaction output; the old segments stay");
    }
    Ok(())
}

/// Removes the `.cleaned` files of a pass that did not commit (an error,
/// an abort, or the pass future being dropped).
pub struct CleanedFiles {
    dir: PathBuf,
    bases: Vec<u64>,
    armed: bool,
}

impl CleanedFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            bases: Vec::new(),
            armed: true,
        }
    }

    pub fn add(&mut self, base: u64) {
        self.bases.push(base);
    }

    /// After the commit the files belong to the swap.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CleanedFiles {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = std::fs::remove_file(self.dir.join(CHECKPOINT_SWAP_FILE));
        for base in &self.bases {
            for name in [
                log_file_name(*base),
                offset_index_name(*base),
                time_index_name(*base),
            ] {
                let _ = std::fs::remove_file(self.dir.join(cleaned_name(&name)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{encode_record, NewRecord};

    fn batch_of(codec: Compression, base_offset: i64, records: &[NewRecord<'_>]) -> Vec<u8> {
        let mut section = Vec::new();
        for record in records {
            encode_record(&mut section, record);
        }
        let fields = BatchFields {
            base_offset,
            partition_leader_epoch: 3,
            attributes: crate::batch::ATTRIBUTE_LOG_APPEND_TIME,
            last_offset_delta: records.len() as i32 - 1,
            base_timestamp: 1_000,
            max_timestamp: 1_009,
            producer_id: 42,
            producer_epoch: 2,
            base_sequence: 17,
            records_count: records.len() as i32,
        };
        let mut batch = Vec::new();
        assemble_batch(&mut batch, &fields, codec, &section);
        batch
    }

    fn sample(codec: Compression) -> Vec<u8> {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h", Some(b"v"))];
        let records: Vec<NewRecord<'_>> = (0..5)
            .map(|index| NewRecord {
                offset_delta: index,
                timestamp_delta: i64::from(index) * 2,
                key: Some(if index % 2 == 0 { b"even" } else { b"odd" }),
                value: (index != 3).then_some(b"value".as_slice()),
                headers,
            })
            .collect();
        batch_of(codec, 100, &records)
    }

    #[test]
    fn partial_batches_keep_their_header_fields_with_every_codec() {
        for codec in Compression::ALL {
            let batch = sample(codec);
            let original = validate_stored_batch(&batch).expect("valid");
            let (verdict, removed) = filter_batch(&batch, 1 << 20, |offset, _, _| {
                if offset == 101 || offset == 104 {
                    Fate::Keep
                } else {
                    Fate::Superseded
                }
            })
            .expect("filters");
            assert_eq!(removed.records, 3);
            let Verdict::Rewrite(rewritten) = verdict else {
                panic!("{codec:?}: expected a rewrite, got {verdict:?}");
            };
            let header = validate_stored_batch(&rewritten).expect("CRC and shape valid");
            assert_eq!(header.records_count, 2);
            for (name, got, want) in [
                ("base offset", header.base_offset, original.base_offset),
                ("last delta", i64::from(header.last_offset_delta), 4),
                ("epoch", i64::from(header.partition_leader_epoch), 3),
                (
                    "attributes",
                    i64::from(header.attributes),
                    i64::from(original.attributes),
                ),
                ("base timestamp", header.base_timestamp, 1_000),
                ("max timestamp", header.max_timestamp, 1_009),
                ("producer id", header.producer_id, 42),
                ("producer epoch", i64::from(header.producer_epoch), 2),
                ("base sequence", i64::from(header.base_sequence), 17),
            ] {
                assert_eq!(got, want, "{codec:?}: {name}");
            }
            assert_eq!(Compression::from_attributes(header.attributes), Ok(codec));
            let section = records::batch_records(&rewritten, 1 << 20).expect("decompresses");
            let kept: Vec<_> = records::records(&section, 2)
                .collect::<Result<Vec<_>, _>>()
                .expect("decodes");
            assert_eq!(
                kept.iter()
                    .map(|record| record.offset_delta)
                    .collect::<Vec<_>>(),
                vec![1, 4]
            );
            assert_eq!(kept[0].key, Some(b"odd".as_slice()));
            assert_eq!(kept[1].timestamp_delta, 8);
            assert_eq!(kept[1].headers().count(), 1);
        }
    }

    #[test]
    fn empty_batches_keep_the_producer_fields() {
        let batch = sample(Compression::Zstd);
        let header = BatchHeader::parse(&batch).expect("header");
        let empty = empty_batch(&header);
        let parsed = validate_stored_batch(&empty).expect("valid");
        assert_eq!(parsed.records_count, 0);
        assert_eq!(parsed.total_bytes(), crate::batch::BATCH_HEADER_BYTES);
        assert_eq!(
            (
                parsed.producer_id,
                parsed.producer_epoch,
                parsed.base_sequence
            ),
            (42, 2, 17)
        );
        assert_eq!(parsed.last_offset_delta, header.last_offset_delta);
        assert_eq!(
            Compression::from_attributes(parsed.attributes),
            Ok(Compression::None)
        );
        assert_ne!(
            parsed.attributes & crate::batch::ATTRIBUTE_LOG_APPEND_TIME,
            0
        );
    }

    #[test]
    fn whole_and_empty_verdicts() {
        let batch = sample(Compression::Lz4);
        let (verdict, _) = filter_batch(&batch, 1 << 20, |_, _, _| Fate::Keep).expect("ok");
        assert_eq!(verdict, Verdict::Keep);
        let (verdict, removed) = filter_batch(&batch, 1 << 20, |_, _, tombstone| {
            if tombstone {
                Fate::ExpiredTombstone
            } else {
                Fate::Superseded
            }
        })
        .expect("ok");
        assert_eq!(verdict, Verdict::Drop);
        assert_eq!((removed.records, removed.tombstones), (5, 1));
        // Over the decompression limit: an error, so the caller keeps it whole.
        assert!(filter_batch(&sample(Compression::Zstd), 10, |_, _, _| Fate::Keep).is_err());
    }

    #[test]
    fn keyed_records_and_the_map_bound() {
        let batch = sample(Compression::Gzip);
        let mut map = KeyMap::new(KEY_MAP_BYTES_PER_ENTRY, 100);
        assert_eq!(map.capacity(), 1);
        let stopped = for_each_keyed_record(&batch, 1 << 20, |offset, key| {
            map.insert(map.digest(key), offset)
        })
        .expect("decodes");
        // "even" fits (offsets 100, 102, 104); "odd" at 101 does not.
        assert_eq!(stopped, Some(101));
        assert_eq!(map.latest(map.digest(b"even")), Some(100));
        assert_eq!(map.len(), 1);
        let mut big = KeyMap::new(1 << 20, 100);
        for_each_keyed_record(&batch, 1 << 20, |offset, key| {
            big.insert(big.digest(key), offset)
        })
        .expect("decodes");
        assert_eq!(big.latest(big.digest(b"even")), Some(104));
        assert_eq!(big.latest(big.digest(b"odd")), Some(103));
        assert_eq!(big.capacity(), 100);
    }

    #[test]
    fn apply_group_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        for base in [0u64, 10, 20, 30] {
            std::fs::write(path.join(log_file_name(base)), format!("old {base}")).expect("write");
            std::fs::write(path.join(offset_index_name(base)), "old").expect("write");
            std::fs::write(path.join(time_index_name(base)), "old").expect("write");
        }
        for name in [log_file_name(0), offset_index_name(0), time_index_name(0)] {
            std::fs::write(path.join(cleaned_name(&name)), "new").expect("write");
        }
        let groups = [
            SwapGroup {
                base: 0,
                end: 20,
                keep: true,
            },
            SwapGroup {
                base: 20,
                end: 30,
                keep: false,
            },
        ];
        // The marker of the removed group.
        std::fs::write(path.join(cleaned_name(&log_file_name(20))), "").expect("write");
        for round in 0..2 {
            let bases = log_file_bases(path).expect("list");
            for group in &groups {
                apply_group(path, group, &bases).expect("apply");
            }
            if round == 0 {
                // A segment created later inside a group already swapped in
                // is not touched by a redo.
                std::fs::write(path.join(log_file_name(15)), "later").expect("write");
            }
            let mut names: Vec<String> = std::fs::read_dir(path)
                .expect("list")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            let mut expected = vec![
                offset_index_name(0),
                log_file_name(0),
                time_index_name(0),
                log_file_name(15),
                offset_index_name(30),
                log_file_name(30),
                time_index_name(30),
            ];
            expected.sort();
            assert_eq!(names, expected, "round {round}");
            assert_eq!(
                std::fs::read_to_string(path.join(log_file_name(0))).expect("read"),
                "new"
            );
            assert_eq!(
                std::fs::read_to_string(path.join(offset_index_name(0))).expect("read"),
                "new"
            );
        }
    }
}
