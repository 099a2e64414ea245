//! `kafki dump`: reads Kafka-format segment files offline (no broker, plain
//! std reads, not `O_DIRECT`) and prints every batch header, optionally
//! every record, and what is damaged and where.
//!
//! PATH may be one segment (`.log`, checked with its sibling `.index` and
//! `.timeindex`; or one of those index files, whose entries are then
//! listed), a partition directory (`<topic>-<partition>/`: every segment in
//! offset order, their indexes and the checkpoint files) or a data
//! directory (every partition in it).
//!
//! Damage (counted by `--verify`): a batch whose CRC32C, length, magic or
//! record count is wrong; a batch or header cut short by the end of the
//! file; bytes that are not a batch; offsets that do not increase, or that
//! skip where Kafki's cleaner made no gap (gaps ending at or below the bound
//! in the partition's `cleaner-checkpoint` are compaction's and fine, as
//! Kafki's recovery accepts them; elsewhere recovery cuts a segment at a gap;
//! `--allow-gaps` makes every gap a warning, for logs Apache Kafka
//! compacted); leader epochs that go
//! backwards; index entries that point past the data or between batches; a
//! time index that goes backwards; a recovery point beyond the end of the
//! log; a file that cannot be read. Warnings: checkpoint files that do not
//! parse or disagree with the batches, records that do not decode, orphan
//! index files. Kafka's preallocated-file trailer of zeros is the normal end
//! of data, not damage.
//!
//! The base offset, length and leader epoch of a batch lie outside its CRC,
//! so a flipped bit there shows up only as an offset, length or epoch that
//! does not fit its neighbours: that is why those checks count as damage.
//!
//! Memory stays bounded whatever a file claims: files are read through a
//! 1 MiB window, a batch is held whole only when it is at most 64 MiB (to
//! decode its records), decompression stops at 64 MiB, and at most 100
//! problems per file are printed (all are counted). After damage the walk
//! looks for the next batch that passes its CRC, so one bad batch does not
//! hide the rest of the segment. The reader is generic over [`ReadAt`], so
//! tests and the fuzzing run on bytes in memory.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kafki_storage::batch::{
    BatchHeader, ATTRIBUTE_CONTROL, ATTRIBUTE_LOG_APPEND_TIME, ATTRIBUTE_TRANSACTIONAL,
    BATCH_HEADER_BYTES, BATCH_LENGTH_MIN, CRC_START, LENGTH_FIELD_END,
};
use kafki_storage::checkpoint::{
    CleanerCheckpoint, LeaderEpochCache, CLEANER_FILE, CLEAN_SHUTDOWN_FILE, LEADER_EPOCH_FILE,
    LOG_START_FILE, RECOVERY_POINT_FILE,
};
use kafki_storage::compression::Compression;
use kafki_storage::index::{OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use kafki_storage::records;
use kafki_storage::segment::parse_log_file_name;
use serde::Serialize;

use crate::timestamp::format_ms;

mod events;
mod index_check;
mod reading;
mod render;
#[cfg(test)]
mod tests;
mod walk;

pub use events::*;
use index_check::*;
pub use reading::*;
pub use render::*;
pub use walk::*;

/// How much of a file is read at a time.
const WINDOW_BYTES: usize = 1 << 20;
/// Largest batch held whole in memory to decode its records.
const BATCH_IN_MEMORY_MAX: u64 = 64 << 20;
/// Largest decompressed records section.
const DECOMPRESSED_MAX: usize = 64 << 20;
/// Larger index files are not loaded (Kafka's default cap is 10 MiB).
const INDEX_FILE_MAX: u64 = 256 << 20;
/// Larger checkpoint files are not read (they hold a few lines).
const CHECKPOINT_FILE_MAX: u64 = 1 << 20;
/// Problems printed per file; the rest are only counted.
const PROBLEMS_SHOWN_PER_FILE: u64 = 100;
/// Epoch changes remembered per partition (a garbage file could claim one
/// per batch).
const EPOCH_CHANGES_MAX: usize = 10_000;
/// Kafka's relative offsets are 32-bit: a segment spans less than this.
const RELATIVE_OFFSET_SPAN: i64 = 1 << 31;
const OFFSET_MAGIC: usize = 16;
const HEADER: usize = BATCH_HEADER_BYTES;

/// `kafki dump` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// A segment file (`.log`, or its `.index`/`.timeindex`), a partition
    /// directory (`<topic>-<partition>`) or a data directory.
    pub path: PathBuf,
    /// Exit non-zero when anything is damaged, naming the first damage.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON Lines: one object per line, its `type` says what it is.
    #[arg(long)]
    pub json: bool,
    /// Decode and print every record (offset, timestamp, key, value, headers).
    #[arg(long)]
    pub records: bool,
    /// Show at most this many bytes of each key, value and header value.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub max_bytes: usize,
    /// Report offset gaps as warnings, not damage: logs compacted by Apache
    /// Kafka have them (Kafki's recovery cuts a segment at a gap).
    #[arg(long)]
    pub allow_gaps: bool,
}

/// What to print and how strict to be.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub records: bool,
    pub max_bytes: usize,
    pub allow_gaps: bool,
    /// Print each batch (off when listing an index file's entries).
    pub show_batches: bool,
    /// List the entries of this index kind (`offset` or `time`): PATH was
    /// that index file.
    pub list_index: Option<&'static str>,
}

impl Options {
    pub fn from_args(args: &DumpArgs) -> Self {
        Self {
            records: args.records,
            max_bytes: args.max_bytes,
            allow_gaps: args.allow_gaps,
            show_batches: true,
            list_index: None,
        }
    }
}

/// Runs `kafki dump`: prints to stdout; with `--verify`, any damage is an
/// error naming the first one.
pub fn run(args: &DumpArgs) -> anyhow::Result<()> {
    let stdout = BufWriter::new(io::stdout().lock());
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink(stdout))
    } else {
        Box::new(TextSink(stdout))
    };
    let mut dumper = Dumper::new(Options::from_args(args), sink.as_mut());
    dumper.dump_path(&args.path)?;
    let (totals, first_damage, output_error) = dumper.finish();
    let output_error = output_error.or_else(|| sink.flush().err());
    match output_error {
        // `kafki dump ... | head` is not a failure.
        Some(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Some(error) => return Err(error).context("writing the dump"),
        None => {}
    }
    if args.verify && totals.damage > 0 {
        let first = first_damage.map_or_else(String::new, |problem| {
            format!("; first: {}", problem.describe())
        });
        anyhow::bail!(
            "verify failed: {} damaged place{} ({} warning{}){first}",
            totals.damage,
            plural(totals.damage),
            totals.warnings,
            plural(totals.warnings)
        );
    }
    Ok(())
}
