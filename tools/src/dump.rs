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

// ---------------------------------------------------------------------------
// Events: what the dump reports, rendered as text or JSON Lines.

/// One thing the dump reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    DataDir {
        path: String,
        partitions: usize,
        /// Files and non-partition directories beside the partitions.
        other: Vec<String>,
    },
    Partition {
        path: String,
        topic: Option<String>,
        partition: Option<i32>,
        segments: usize,
        other_files: Vec<String>,
    },
    Segment {
        path: String,
        base_offset: Option<u64>,
        file_bytes: u64,
    },
    Batch(BatchInfo),
    Record(RecordInfo),
    IndexEntry(IndexEntryInfo),
    Problem(Problem),
    SegmentSummary(SegmentSummary),
    IndexSummary(IndexSummary),
    PartitionSummary(PartitionSummary),
    Summary(Totals),
}

/// One batch header, as found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchInfo {
    pub path: String,
    pub position: u64,
    pub base_offset: i64,
    pub last_offset: i64,
    pub records_count: i32,
    /// The `batchLength` field: bytes after it; the batch is 12 bytes more.
    pub batch_length: i32,
    pub magic: i8,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    /// `none`, `gzip`, `snappy`, `lz4`, `zstd` or `unknown(N)`.
    pub codec: String,
    /// `CreateTime` or `LogAppendTime`.
    pub timestamp_type: &'static str,
    pub transactional: bool,
    pub control: bool,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub crc_stored: u32,
    pub crc_computed: u32,
    pub crc_ok: bool,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordInfo {
    pub path: String,
    pub batch_position: u64,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Shown>,
    pub value: Option<Shown>,
    pub headers: Vec<HeaderInfo>,
    /// For a control batch's record: `COMMIT`, `ABORT` or `type N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderInfo {
    pub key: Shown,
    pub value: Option<Shown>,
}

/// Bytes shown as text when they are printable UTF-8, else as hex; at most
/// `--max-bytes` of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown {
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    pub truncated: bool,
}

/// One entry of an index file (listed when PATH is that index file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexEntryInfo {
    pub path: String,
    /// `offset` (`.index`) or `time` (`.timeindex`).
    pub kind: &'static str,
    pub entry: usize,
    pub relative_offset: u32,
    /// The absolute offset, when the file name gives the base offset.
    pub offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Damage,
    Warning,
}

/// Something wrong, and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// A stable name for the kind of problem (`bad_crc`, `truncated_batch`, ...).
    pub code: &'static str,
    pub path: String,
    pub position: Option<u64>,
    pub offset: Option<i64>,
    pub message: String,
}

impl Problem {
    /// One line naming the file, the place and what is wrong.
    pub fn describe(&self) -> String {
        let mut place = self.path.clone();
        if let Some(position) = self.position {
            place.push_str(&format!(" position {position}"));
        }
        if let Some(offset) = self.offset {
            place.push_str(&format!(" offset {offset}"));
        }
        format!("{place}: {}", self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSummary {
    pub path: String,
    pub batches: u64,
    /// Sum of the batches' record counts.
    pub records: u64,
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// End of the last batch walked.
    pub data_bytes: u64,
    /// Zero bytes after the data (preallocated space): the normal end.
    pub zero_trailer_bytes: u64,
    /// Bytes after damage where no valid batch could be found.
    pub unreadable_bytes: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    pub damage: u64,
    pub warnings: u64,
    pub problems_not_shown: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexSummary {
    pub path: String,
    /// `offset` or `time`.
    pub kind: &'static str,
    pub entries: usize,
    /// All-zero entries at the end (Kafka preallocates the active index).
    pub zero_entries: usize,
    pub damage: u64,
    pub warnings: u64,
    pub problems_not_shown: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionSummary {
    pub path: String,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub first_offset: Option<i64>,
    /// One past the last offset found.
    pub next_offset: Option<i64>,
    pub log_start_offset: Option<u64>,
    pub recovery_point: Option<u64>,
    /// The `leader-epoch-checkpoint` entries: (epoch, start offset).
    pub leader_epoch_checkpoint: Option<Vec<(i32, u64)>>,
    /// Epoch changes found in the batches: (epoch, first offset seen).
    pub leader_epochs_in_batches: Vec<(i32, i64)>,
    pub clean_shutdown_marker: bool,
    /// Damage and warnings of the partition's files, its segments included.
    pub damage: u64,
    pub warnings: u64,
}

/// Counts over everything dumped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub partitions: u64,
    pub segments: u64,
    pub batches: u64,
    pub records: u64,
    pub damage: u64,
    pub warnings: u64,
}

/// Where events go.
pub trait Sink {
    fn emit(&mut self, event: &Event) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Collects events in memory (tests).
impl Sink for Vec<Event> {
    fn emit(&mut self, event: &Event) -> io::Result<()> {
        self.push(event.clone());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One JSON object per line.
pub struct JsonSink<W: Write>(pub W);

impl<W: Write> Sink for JsonSink<W> {
    fn emit(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, event)?;
        self.0.write_all(b"\n")
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Lines for people: `key=value` fields, one batch per line.
pub struct TextSink<W: Write>(pub W);

impl<W: Write> Sink for TextSink<W> {
    fn emit(&mut self, event: &Event) -> io::Result<()> {
        writeln!(self.0, "{}", render_text(event))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The text form of one event (one or more lines, no final newline).
pub fn render_text(event: &Event) -> String {
    match event {
        Event::DataDir {
            path,
            partitions,
            other,
        } => {
            let mut line = format!(
                "data directory {path}: {partitions} partition{}",
                plural(*partitions as u64)
            );
            if !other.is_empty() {
                line.push_str(&format!("; other entries: {}", other.join(", ")));
            }
            line
        }
        Event::Partition {
            path,
            topic,
            partition,
            segments,
            other_files,
        } => {
            let mut line = format!("partition {path}");
            if let (Some(topic), Some(partition)) = (topic, partition) {
                line.push_str(&format!(" (topic {topic}, partition {partition})"));
            }
            line.push_str(&format!(": {segments} segment{}", plural(*segments as u64)));
            if !other_files.is_empty() {
                line.push_str(&format!("; other files: {}", other_files.join(", ")));
            }
            line
        }
        Event::Segment {
            path,
            base_offset,
            file_bytes,
        } => {
            let base = base_offset.map_or_else(String::new, |base| format!(", base offset {base}"));
            format!("segment {path}: {file_bytes} bytes{base}")
        }
        Event::Batch(batch) => {
            let crc = if batch.crc_ok {
                format!("crc={:#010x} ok", batch.crc_stored)
            } else {
                format!(
                    "crc={:#010x} BAD computed={:#010x}",
                    batch.crc_stored, batch.crc_computed
                )
            };
            format!(
                "  batch pos={} offsets={}..{} count={} length={} epoch={} codec={} ts_type={} \
                 txn={} control={} base_ts={} max_ts={} producer_id={} producer_epoch={} \
                 base_seq={} {crc}",
                batch.position,
                batch.base_offset,
                batch.last_offset,
                batch.records_count,
                batch.batch_length,
                batch.partition_leader_epoch,
                batch.codec,
                batch.timestamp_type,
                batch.transactional,
                batch.control,
                batch.base_timestamp,
                batch.max_timestamp,
                batch.producer_id,
                batch.producer_epoch,
                batch.base_sequence,
            )
        }
        Event::Record(record) => {
            let mut line = format!(
                "    record offset={} ts={} key={} value={}",
                record.offset,
                record.timestamp,
                shown_text(record.key.as_ref()),
                shown_text(record.value.as_ref())
            );
            if !record.headers.is_empty() {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|header| {
                        format!(
                            "{}={}",
                            shown_text(Some(&header.key)),
                            shown_text(header.value.as_ref())
                        )
                    })
                    .collect();
                line.push_str(&format!(" headers=[{}]", headers.join(", ")));
            }
            if let Some(control) = &record.control {
                line.push_str(&format!(" control={control}"));
            }
            line
        }
        Event::IndexEntry(entry) => {
            let offset = entry
                .offset
                .map_or_else(|| "?".to_string(), |offset| offset.to_string());
            match (entry.position, entry.timestamp) {
                (Some(position), _) => format!(
                    "  entry {} relative_offset={} offset={offset} position={position}",
                    entry.entry, entry.relative_offset
                ),
                (None, Some(timestamp)) => format!(
                    "  entry {} timestamp={timestamp} relative_offset={} offset={offset}",
                    entry.entry, entry.relative_offset
                ),
                (None, None) => format!("  entry {}", entry.entry),
            }
        }
        Event::Problem(problem) => {
            let word = match problem.severity {
                Severity::Damage => "DAMAGE",
                Severity::Warning => "WARNING",
            };
            let mut place = file_name_of(&problem.path);
            if let Some(position) = problem.position {
                place.push_str(&format!(" pos={position}"));
            }
            if let Some(offset) = problem.offset {
                place.push_str(&format!(" offset={offset}"));
            }
            format!("  {word} [{}] {place}: {}", problem.code, problem.message)
        }
        Event::SegmentSummary(summary) => {
            let offsets = match (summary.first_offset, summary.last_offset) {
                (Some(first), Some(last)) => format!("offsets {first}..{last}"),
                _ => "no offsets".to_string(),
            };
            let end = if summary.unreadable_bytes > 0 {
                format!("{} unreadable bytes at the end", summary.unreadable_bytes)
            } else if summary.zero_trailer_bytes > 0 {
                format!(
                    "end of data ({} zero bytes preallocated)",
                    summary.zero_trailer_bytes
                )
            } else {
                "end of data at end of file".to_string()
            };
            let times = match (summary.min_timestamp, summary.max_timestamp) {
                (Some(min), Some(max)) => {
                    format!(", timestamps {} .. {}", format_ms(min), format_ms(max))
                }
                _ => String::new(),
            };
            format!(
                "  segment summary: {} batches, {} records, {offsets}, {} data bytes, {end}{times}, {}",
                summary.batches,
                summary.records,
                summary.data_bytes,
                problems_text(summary.damage, summary.warnings, summary.problems_not_shown)
            )
        }
        Event::IndexSummary(summary) => {
            let zeros = if summary.zero_entries > 0 {
                format!(" (+{} zero entries preallocated)", summary.zero_entries)
            } else {
                String::new()
            };
            let kind = if summary.kind == "offset" {
                "index"
            } else {
                "timeindex"
            };
            format!(
                "  {kind} {}: {} entries{zeros}, {}",
                file_name_of(&summary.path),
                summary.entries,
                problems_text(summary.damage, summary.warnings, summary.problems_not_shown)
            )
        }
        Event::PartitionSummary(summary) => {
            let offsets = match (summary.first_offset, summary.next_offset) {
                (Some(first), Some(next)) => format!("offsets {first}..{}", next - 1),
                _ => "no batches".to_string(),
            };
            let optional = |value: Option<u64>| {
                value.map_or_else(|| "-".to_string(), |value| value.to_string())
            };
            let epochs = match &summary.leader_epoch_checkpoint {
                Some(entries) if entries.is_empty() => "none".to_string(),
                Some(entries) => entries
                    .iter()
                    .map(|(epoch, start)| format!("{epoch}@{start}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "-".to_string(),
            };
            format!(
                "partition summary {}: {}, {}, {}, {offsets}, log start {}, recovery point {}, \
                 leader epochs {epochs}, clean shutdown marker {}, {}",
                file_name_of(&summary.path),
                counted(summary.segments as u64, "segment"),
                counted(summary.batches, "batch"),
                counted(summary.records, "record"),
                optional(summary.log_start_offset),
                optional(summary.recovery_point),
                if summary.clean_shutdown_marker {
                    "present"
                } else {
                    "absent"
                },
                problems_text(summary.damage, summary.warnings, 0)
            )
        }
        Event::Summary(totals) => format!(
            "summary: {}, {}, {}, {}, {}",
            counted(totals.partitions, "partition"),
            counted(totals.segments, "segment"),
            counted(totals.batches, "batch"),
            counted(totals.records, "record"),
            problems_text(totals.damage, totals.warnings, 0)
        ),
    }
}

/// `3 batches`, `1 batch`.
fn counted(count: u64, noun: &str) -> String {
    let suffix = match (count, noun.ends_with("ch")) {
        (1, _) => "",
        (_, true) => "es",
        _ => "s",
    };
    format!("{count} {noun}{suffix}")
}

fn problems_text(damage: u64, warnings: u64, not_shown: u64) -> String {
    let mut text = if damage == 0 && warnings == 0 {
        "ok".to_string()
    } else {
        format!("{damage} damage, {warnings} warning{}", plural(warnings))
    };
    if not_shown > 0 {
        text.push_str(&format!(" ({not_shown} not shown)"));
    }
    text
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

fn shown_text(shown: Option<&Shown>) -> String {
    let Some(shown) = shown else {
        return "null".to_string();
    };
    let mut text = match (&shown.text, &shown.hex) {
        (Some(text), _) => format!("{text:?}"),
        (None, Some(hex)) => format!("hex:{hex}"),
        (None, None) => String::new(),
    };
    if shown.truncated {
        text.push_str(&format!("...({} bytes)", shown.size));
    }
    text
}

fn file_name_of(path: &str) -> String {
    Path::new(path).file_name().map_or_else(
        || path.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Shows `bytes` as text when printable UTF-8, else as hex, cut at `max`.
pub fn show(bytes: &[u8], max: usize) -> Shown {
    let truncated = bytes.len() > max;
    let prefix = &bytes[..bytes.len().min(max)];
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => Some(text),
        // Cut inside a multi-byte character: show up to it.
        Err(error) if truncated && error.error_len().is_none() => {
            std::str::from_utf8(&prefix[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let printable = |text: &&str| {
        text.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
    };
    match text.filter(printable) {
        Some(text) => Shown {
            size: bytes.len(),
            text: Some(text.to_string()),
            hex: None,
            truncated,
        },
        None => Shown {
            size: bytes.len(),
            text: None,
            hex: Some(prefix.iter().map(|byte| format!("{byte:02x}")).collect()),
            truncated,
        },
    }
}

// ---------------------------------------------------------------------------
// Reading bytes.

/// Random-access reads of a segment's bytes.
pub trait ReadAt {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buffer, position)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buffer: &mut [u8], position: u64) -> io::Result<()> {
        let start = usize::try_from(position).map_err(|_| eof())?;
        let end = start.checked_add(buffer.len()).ok_or_else(eof)?;
        let bytes = self.get(start..end).ok_or_else(eof)?;
        buffer.copy_from_slice(bytes);
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

/// A cached window over a source of `file_bytes` bytes: sequential small
/// reads cost one `pread` per window.
struct Window<'a, R: ReadAt + ?Sized> {
    source: &'a R,
    file_bytes: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl<'a, R: ReadAt + ?Sized> Window<'a, R> {
    fn new(source: &'a R, file_bytes: u64) -> Self {
        Self {
            source,
            file_bytes,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// `count` bytes at `position`; an error if they are not all in the file.
    fn get(&mut self, position: u64, count: usize) -> io::Result<&[u8]> {
        let end = position
            .checked_add(count as u64)
            .filter(|end| *end <= self.file_bytes)
            .ok_or_else(eof)?;
        let cached_end = self.start + self.bytes.len() as u64;
        if position < self.start || end > cached_end {
            let want = (count.max(WINDOW_BYTES) as u64).min(self.file_bytes - position) as usize;
            if self.bytes.capacity() > 2 * want.max(WINDOW_BYTES) {
                // Give back the memory of a large batch read before.
                self.bytes = Vec::new();
            }
            self.bytes.resize(want, 0);
            if let Err(error) = self.source.read_exact_at(&mut self.bytes, position) {
                self.bytes.clear();
                return Err(error);
            }
            self.start = position;
        }
        let from = (position - self.start) as usize;
        Ok(&self.bytes[from..from + count])
    }

    /// The first non-zero byte at or after `from`, if any.
    fn first_non_zero(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut position = from;
        while position < self.file_bytes {
            let count = (self.file_bytes - position).min(WINDOW_BYTES as u64) as usize;
            let bytes = self.get(position, count)?;
            if let Some(at) = bytes.iter().position(|byte| *byte != 0) {
                return Ok(Some(position + at as u64));
            }
            position += count as u64;
        }
        Ok(None)
    }

    /// How many zero bytes end the file after `from`.
    fn zero_suffix(&mut self, from: u64) -> io::Result<u64> {
        let mut end = self.file_bytes;
        while end > from {
            let count = (end - from).min(WINDOW_BYTES as u64) as usize;
            let start = end - count as u64;
            let bytes = self.get(start, count)?;
            if let Some(at) = bytes.iter().rposition(|byte| *byte != 0) {
                return Ok(self.file_bytes - (start + at as u64 + 1));
            }
            end = start;
        }
        Ok(self.file_bytes - from)
    }

    /// CRC32C of the batch of `size` bytes at `position`, streamed.
    fn batch_crc(&mut self, position: u64, size: u64) -> io::Result<u32> {
        let end = position + size;
        let mut at = position + CRC_START as u64;
        let mut crc = 0;
        while at < end {
            let count = (end - at).min(WINDOW_BYTES as u64) as usize;
            crc = crc32c::crc32c_append(crc, self.get(at, count)?);
            at += count as u64;
        }
        Ok(crc)
    }
}

/// Size of a batch whose length field is `batch_length` (already checked
/// to be at least the minimum).
fn batch_size(batch_length: i32) -> u64 {
    u64::try_from(batch_length).unwrap_or(0) + LENGTH_FIELD_END as u64
}

/// Could a valid batch start with these header bytes, `remaining` bytes
/// before the end of the file? Cheap checks first: the CRC comes after.
fn plausible_header(bytes: &[u8], remaining: u64, segment_base: Option<u64>) -> bool {
    let Ok(header) = BatchHeader::parse(bytes) else {
        return false;
    };
    let in_segment = match segment_base {
        Some(base) => {
            let base = base as i64;
            header.base_offset >= base && header.base_offset - base < RELATIVE_OFFSET_SPAN
        }
        None => header.base_offset >= 0,
    };
    header.magic == 2
        && header.batch_length >= BATCH_LENGTH_MIN
        && batch_size(header.batch_length) <= remaining
        && header.last_offset_delta >= 0
        && header.records_count >= 0
        && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1
        && Compression::from_attributes(header.attributes).is_ok()
        && in_segment
}

/// The next position at or after `from` where a batch passes every header
/// check and its CRC, if any.
fn find_next_batch<R: ReadAt + ?Sized>(
    window: &mut Window<'_, R>,
    from: u64,
    segment_base: Option<u64>,
) -> io::Result<Option<u64>> {
    let file_bytes = window.file_bytes;
    let mut position = from;
    while position.saturating_add(HEADER as u64) <= file_bytes {
        let span = (file_bytes - position).min(WINDOW_BYTES as u64) as usize;
        let found = {
            let bytes = window.get(position, span)?;
            (0..=span - HEADER).find(|&at| {
                bytes[at + OFFSET_MAGIC] == 2
                    && plausible_header(
                        &bytes[at..at + HEADER],
                        file_bytes - position - at as u64,
                        segment_base,
                    )
            })
        };
        match found {
            Some(at) => {
                let candidate = position + at as u64;
                let header = BatchHeader::parse(window.get(candidate, HEADER)?)
                    .map_err(|error| io::Error::other(error.to_string()))?;
                if window.batch_crc(candidate, batch_size(header.batch_length))? == header.crc {
                    return Ok(Some(candidate));
                }
                position = candidate + 1;
            }
            None => position += (span - HEADER + 1) as u64,
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Index files.

/// Counts of one file's problems, for its summary line and the cap on
/// printed problems.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    damage: u64,
    warnings: u64,
    shown: u64,
}

impl Tally {
    fn not_shown(&self) -> u64 {
        (self.damage + self.warnings).saturating_sub(self.shown)
    }
}

/// An index file's entries and the problems found in them, checked while
/// the segment is walked (entries must sit on batch starts).
struct OffsetIndexCheck {
    path: String,
    base: Option<u64>,
    /// (position, relative offset, entry number), sorted by position.
    by_position: Vec<(u32, u32, usize)>,
    cursor: usize,
    entries: usize,
    zero_entries: usize,
    problems: Vec<Problem>,
}

struct TimeIndexCheck {
    path: String,
    base: Option<u64>,
    /// (relative offset, timestamp, entry number), sorted by offset.
    by_offset: Vec<(u32, i64, usize)>,
    cursor: usize,
    entries: usize,
    zero_entries: usize,
    problems: Vec<Problem>,
}

/// Splits index bytes into whole entries, without the all-zero entries at
/// the end (preallocated slots). Returns (entries, zero entries, ragged
/// trailing bytes).
fn index_entries(bytes: &[u8], entry_bytes: usize) -> (Vec<&[u8]>, usize, usize) {
    let mut entries: Vec<&[u8]> = bytes.chunks_exact(entry_bytes).collect();
    let ragged = bytes.len() % entry_bytes;
    let mut zero_entries = 0;
    while entries
        .last()
        .is_some_and(|entry| entry.iter().all(|byte| *byte == 0))
    {
        entries.pop();
        zero_entries += 1;
    }
    (entries, zero_entries, ragged)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(raw)
}

fn be_i64(bytes: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(raw)
}

fn absolute(base: Option<u64>, relative: u32) -> Option<i64> {
    base.map(|base| (base as i64).saturating_add(i64::from(relative)))
}

fn damage(
    code: &'static str,
    path: &str,
    position: Option<u64>,
    offset: Option<i64>,
    message: String,
) -> Problem {
    Problem {
        severity: Severity::Damage,
        code,
        path: path.to_string(),
        position,
        offset,
        message,
    }
}

fn warning(
    code: &'static str,
    path: &str,
    position: Option<u64>,
    offset: Option<i64>,
    message: String,
) -> Problem {
    Problem {
        severity: Severity::Warning,
        ..damage(code, path, position, offset, message)
    }
}

impl OffsetIndexCheck {
    fn new(path: &str, base: Option<u64>, bytes: &[u8]) -> Self {
        let (raw, zero_entries, ragged) = index_entries(bytes, OFFSET_ENTRY_BYTES);
        let mut problems = Vec::new();
        if ragged != 0 {
            problems.push(damage(
                "index_ragged",
                path,
                None,
                None,
                format!(
                    "{} bytes is not a whole number of {OFFSET_ENTRY_BYTES}-byte entries",
                    bytes.len()
                ),
            ));
        }
        let mut by_position = Vec::with_capacity(raw.len());
        let mut previous: Option<(u32, u32)> = None;
        for (entry, bytes) in raw.iter().enumerate() {
            let relative = be_u32(bytes);
            let position = be_u32(&bytes[4..]);
            if let Some((last_relative, last_position)) = previous {
                if relative <= last_relative || position <= last_position {
                    problems.push(damage(
                        "index_not_increasing",
                        path,
                        Some(u64::from(position)),
                        absolute(base, relative),
                        format!(
                            "entry {entry} (relative offset {relative}, position {position}) does not \
                             follow entry {} (relative offset {last_relative}, position {last_position})",
                            entry - 1
                        ),
                    ));
                }
            }
            previous = Some((relative, position));
            by_position.push((position, relative, entry));
        }
        by_position.sort_unstable();
        Self {
            path: path.to_string(),
            base,
            entries: raw.len(),
            by_position,
            cursor: 0,
            zero_entries,
            problems,
        }
    }

    /// The walk found a batch holding `base_offset..=last_offset` at `position`.
    fn visit_batch(&mut self, position: u64, base_offset: i64, last_offset: i64) {
        while let Some(&(entry_position, relative, entry)) = self.by_position.get(self.cursor) {
            let entry_position_u64 = u64::from(entry_position);
            if entry_position_u64 > position {
                break;
            }
            let offset = absolute(self.base, relative);
            if entry_position_u64 < position {
                self.problems.push(damage(
                    "index_not_batch_start",
                    &self.path,
                    Some(entry_position_u64),
                    offset,
                    format!("entry {entry} points at position {entry_position}, which is not the start of a batch"),
                ));
            } else if let Some(offset) =
                offset.filter(|offset| *offset < base_offset || *offset > last_offset)
            {
                self.problems.push(damage(
                    "index_offset_mismatch",
                    &self.path,
                    Some(entry_position_u64),
                    Some(offset),
                    format!(
                        "entry {entry} says offset {offset} is at position {entry_position}, but the batch there holds offsets {base_offset}..{last_offset}"
                    ),
                ));
            }
            self.cursor += 1;
        }
    }

    /// The walk ended; entries not yet matched point past the data or at
    /// bytes that are not a batch.
    fn finish(&mut self, data_end: u64) {
        while let Some(&(entry_position, relative, entry)) = self.by_position.get(self.cursor) {
            let position = u64::from(entry_position);
            let offset = absolute(self.base, relative);
            let problem = if position >= data_end {
                damage(
                    "index_past_data",
                    &self.path,
                    Some(position),
                    offset,
                    format!("entry {entry} points at position {entry_position}, past the end of the data at {data_end}"),
                )
            } else {
                damage(
                    "index_not_batch_start",
                    &self.path,
                    Some(position),
                    offset,
                    format!("entry {entry} points at position {entry_position}, which is not the start of a batch"),
                )
            };
            self.problems.push(problem);
            self.cursor += 1;
        }
    }
}

impl TimeIndexCheck {
    fn new(path: &str, base: Option<u64>, bytes: &[u8]) -> Self {
        let (raw, zero_entries, ragged) = index_entries(bytes, TIME_ENTRY_BYTES);
        let mut problems = Vec::new();
        if ragged != 0 {
            problems.push(damage(
                "timeindex_ragged",
                path,
                None,
                None,
                format!(
                    "{} bytes is not a whole number of {TIME_ENTRY_BYTES}-byte entries",
                    bytes.len()
                ),
            ));
        }
        let mut by_offset = Vec::with_capacity(raw.len());
        let mut previous: Option<(i64, u32)> = None;
        for (entry, bytes) in raw.iter().enumerate() {
            let timestamp = be_i64(bytes);
            let relative = be_u32(&bytes[8..]);
            if let Some((last_timestamp, last_relative)) = previous {
                if timestamp < last_timestamp || relative < last_relative {
                    problems.push(damage(
                        "timeindex_not_monotonic",
                        path,
                        None,
                        absolute(base, relative),
                        format!(
                            "entry {entry} (timestamp {timestamp}, relative offset {relative}) goes back from \
                             entry {} (timestamp {last_timestamp}, relative offset {last_relative})",
                            entry - 1
                        ),
                    ));
                }
            }
            previous = Some((timestamp, relative));
            by_offset.push((relative, timestamp, entry));
        }
        by_offset.sort_unstable();
        Self {
            path: path.to_string(),
            base,
            entries: raw.len(),
            by_offset,
            cursor: 0,
            zero_entries,
            problems,
        }
    }

    /// The walk found a batch ending at `last_offset`; `running_max` is the
    /// largest max-timestamp of the segment's batches so far, this one
    /// included.
    fn visit_batch(&mut self, last_offset: i64, running_max: i64) {
        let Some(base) = self.base else {
            return;
        };
        while let Some(&(relative, timestamp, entry)) = self.by_offset.get(self.cursor) {
            let offset = (base as i64).saturating_add(i64::from(relative));
            if offset > last_offset {
                break;
            }
            if timestamp > running_max {
                self.problems.push(damage(
                    "timeindex_timestamp_too_high",
                    &self.path,
                    None,
                    Some(offset),
                    format!(
                        "entry {entry} says timestamp {timestamp} at offset {offset}, but no batch up to that offset has one above {running_max}"
                    ),
                ));
            }
            self.cursor += 1;
        }
    }

    fn finish(&mut self, last_offset: Option<i64>) {
        while let Some(&(relative, _, entry)) = self.by_offset.get(self.cursor) {
            let offset = absolute(self.base, relative);
            let end = last_offset.map_or_else(
                || "no batches".to_string(),
                |last| format!("the last offset is {last}"),
            );
            self.problems.push(damage(
                "timeindex_past_data",
                &self.path,
                None,
                offset,
                format!(
                    "entry {entry} points at relative offset {relative}, past the data ({end})"
                ),
            ));
            self.cursor += 1;
        }
    }
}

// ---------------------------------------------------------------------------
// The walk.

/// Leader epochs seen along a partition's batches.
#[derive(Debug, Default)]
struct EpochTrack {
    last: Option<i32>,
    changes: Vec<(i32, i64)>,
}

/// What walking one segment found.
#[derive(Debug, Default)]
struct SegmentOutcome {
    first_offset: Option<i64>,
    /// One past the last offset of the last batch walked.
    next_offset: Option<i64>,
    batches: u64,
    records: u64,
    damage: u64,
    warnings: u64,
}

/// Index files of a segment, as loaded.
#[derive(Default)]
struct SegmentIndexes {
    offset: Option<OffsetIndexCheck>,
    time: Option<TimeIndexCheck>,
}

/// Walks files and reports what it finds to a [`Sink`].
pub struct Dumper<'s> {
    options: Options,
    sink: &'s mut dyn Sink,
    output_error: Option<io::Error>,
    totals: Totals,
    first_damage: Option<Problem>,
    /// Offset gaps ending at or below this are the cleaner's (the bound of
    /// the partition's `cleaner-checkpoint`; 0 without one).
    gaps_below: u64,
}

impl<'s> Dumper<'s> {
    pub fn new(options: Options, sink: &'s mut dyn Sink) -> Self {
        Self {
            options,
            sink,
            output_error: None,
            totals: Totals::default(),
            first_damage: None,
            gaps_below: 0,
        }
    }

    /// The gap bound of the partition directory `dir`: the cleaner
    /// checkpoint's, `u64::MAX` (with a warning) when it does not decode, as
    /// Kafki's recovery treats it.
    fn load_gaps_below(&mut self, dir: &Path, tally: &mut Tally) {
        let path = dir.join(CLEANER_FILE);
        self.gaps_below = match fs::read_to_string(&path) {
            Err(_) => 0,
            Ok(text) => match CleanerCheckpoint::decode(&text) {
                Some(checkpoint) => checkpoint.gaps_below(),
                None => {
                    let label = path.display().to_string();
                    self.report(
                        tally,
                        warning(
                            "cleaner_checkpoint",
                            &label,
                            None,
                            None,
                            "cleaner checkpoint does not parse: offset gaps are accepted everywhere, as Kafki's recovery does".into(),
                        ),
                    );
                    u64::MAX
                }
            },
        };
    }

    /// The totals, the first damage found, and the first output error.
    pub fn finish(self) -> (Totals, Option<Problem>, Option<io::Error>) {
        (self.totals, self.first_damage, self.output_error)
    }

    /// Whether output failed (e.g. a closed pipe): stop walking.
    fn stopped(&self) -> bool {
        self.output_error.is_some()
    }

    fn emit(&mut self, event: Event) {
        if self.output_error.is_none() {
            if let Err(error) = self.sink.emit(&event) {
                self.output_error = Some(error);
            }
        }
    }

    fn report(&mut self, tally: &mut Tally, problem: Problem) {
        match problem.severity {
            Severity::Damage => {
                tally.damage += 1;
                self.totals.damage += 1;
                if self.first_damage.is_none() {
                    self.first_damage = Some(problem.clone());
                }
            }
            Severity::Warning => {
                tally.warnings += 1;
                self.totals.warnings += 1;
            }
        }
        if tally.shown < PROBLEMS_SHOWN_PER_FILE {
            tally.shown += 1;
            self.emit(Event::Problem(problem));
        }
    }

    /// Dumps whatever `path` is, then the overall summary.
    pub fn dump_path(&mut self, path: &Path) -> anyhow::Result<()> {
        let metadata =
            fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            if is_partition_dir(path)? {
                self.dump_partition(path)?;
            } else {
                self.dump_data_dir(path)?;
            }
        } else {
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".log") {
                let mut epochs = EpochTrack::default();
                let base = parse_log_file_name(&name);
                if let Some(dir) = path.parent() {
                    self.load_gaps_below(dir, &mut Tally::default());
                }
                self.dump_segment_file(path, base, None, &mut epochs);
            } else if let Some(stem) = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
            {
                // List the entries, checked against the segment beside it.
                self.options.show_batches = false;
                self.options.records = false;
                self.options.list_index = Some(if name.ends_with(".index") {
                    "offset"
                } else {
                    "time"
                });
                let log = path.with_file_name(format!("{stem}.log"));
                let base = parse_log_file_name(&format!("{stem}.log"));
                let mut epochs = EpochTrack::default();
                if log.exists() {
                    self.dump_segment_file(&log, base, None, &mut epochs);
                } else {
                    let mut tally = Tally::default();
                    let indexes = self.load_indexes(path, base, &mut tally);
                    self.finish_indexes(indexes, u64::MAX, None);
                }
            } else {
                anyhow::bail!(
                    "{}: not a segment file (.log, .index, .timeindex) or a directory",
                    path.display()
                );
            }
        }
        let totals = self.totals.clone();
        self.emit(Event::Summary(totals));
        Ok(())
    }

    fn dump_data_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        let mut partitions = Vec::new();
        let mut other = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            match (is_dir, parse_partition_dir_name(&name)) {
                (true, Some((topic, partition))) => {
                    partitions.push((topic.to_string(), partition, entry.path()))
                }
                (true, None) => other.push(format!("{name}/")),
                (false, _) => other.push(name),
            }
        }
        partitions.sort();
        other.sort();
        self.emit(Event::DataDir {
            path: dir.display().to_string(),
            partitions: partitions.len(),
            other,
        });
        for (_, _, path) in partitions {
            if self.stopped() {
                break;
            }
            if let Err(error) = self.dump_partition(&path) {
                let mut tally = Tally::default();
                let path = path.display().to_string();
                self.report(
                    &mut tally,
                    damage("read_error", &path, None, None, format!("{error:#}")),
                );
            }
        }
        Ok(())
    }

    fn dump_partition(&mut self, dir: &Path) -> anyhow::Result<()> {
        let label = dir.display().to_string();
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (topic, partition) = match parse_partition_dir_name(&name) {
            Some((topic, partition)) => (Some(topic.to_string()), Some(partition)),
            None => (None, None),
        };
        let mut segments = Vec::new();
        let mut index_stems = Vec::new();
        let mut other_files = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {label}"))? {
            let entry = entry.with_context(|| format!("listing {label}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(base) = parse_log_file_name(&name) {
                segments.push((base, entry.path()));
            } else if let Some(stem) = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
            {
                index_stems.push((stem.to_string(), name.clone()));
            } else if ![
                LEADER_EPOCH_FILE,
                LOG_START_FILE,
                RECOVERY_POINT_FILE,
                CLEAN_SHUTDOWN_FILE,
                CLEANER_FILE,
            ]
            .contains(&name.as_str())
            {
                other_files.push(name);
            }
        }
        segments.sort();
        other_files.sort();
        self.emit(Event::Partition {
            path: label.clone(),
            topic,
            partition,
            segments: segments.len(),
            other_files,
        });
        let mut tally = Tally::default();
        self.load_gaps_below(dir, &mut tally);
        index_stems.sort();
        for (stem, file) in &index_stems {
            if !dir.join(format!("{stem}.log")).exists() {
                let path = dir.join(file).display().to_string();
                self.report(
                    &mut tally,
                    warning(
                        "orphan_index",
                        &path,
                        None,
                        None,
                        "index file without its .log segment".into(),
                    ),
                );
            }
        }

        let mut epochs = EpochTrack::default();
        let mut first_offset = None;
        let mut next_offset: Option<i64> = None;
        let (mut batches, mut records) = (0u64, 0u64);
        let (mut segment_damage, mut segment_warnings) = (0u64, 0u64);
        for (base, path) in &segments {
            if self.stopped() {
                break;
            }
            // Segment boundaries: each starts where the one before ended.
            if let Some(expected) = next_offset {
                let base_offset = *base as i64;
                let path_label = path.display().to_string();
                if base_offset < expected {
                    self.report(
                        &mut tally,
                        damage(
                            "segment_overlap",
                            &path_label,
                            None,
                            Some(base_offset),
                            format!("segment base offset {base} is below the previous segment's end {expected}"),
                        ),
                    );
                } else if base_offset > expected {
                    let problem = self.gap_problem(
                        &path_label,
                        None,
                        base_offset,
                        format!("segment base offset {base} skips offsets {expected}..{} after the previous segment", base_offset - 1),
                    );
                    if let Some(problem) = problem {
                        self.report(&mut tally, problem);
                    }
                }
            }
            let outcome = self.dump_segment_file(path, Some(*base), next_offset, &mut epochs);
            first_offset = first_offset.or(outcome.first_offset);
            // An empty segment leaves the expected offset where it was.
            next_offset = outcome.next_offset.or(next_offset);
            batches += outcome.batches;
            records += outcome.records;
            segment_damage += outcome.damage;
            segment_warnings += outcome.warnings;
        }

        let checkpoints = self.check_checkpoints(
            dir,
            &epochs,
            first_offset,
            next_offset,
            &segments,
            &mut tally,
        );
        self.totals.partitions += 1;
        self.emit(Event::PartitionSummary(PartitionSummary {
            path: label,
            segments: segments.len(),
            batches,
            records,
            first_offset,
            next_offset,
            log_start_offset: checkpoints.log_start,
            recovery_point: checkpoints.recovery_point,
            leader_epoch_checkpoint: checkpoints.epochs,
            leader_epochs_in_batches: epochs.changes,
            clean_shutdown_marker: checkpoints.clean_shutdown,
            damage: tally.damage + segment_damage,
            warnings: tally.warnings + segment_warnings,
        }));
        Ok(())
    }

    /// An offset gap ending at `offset`: nothing when Kafki's cleaner made
    /// it (it ends at or below the cleaner checkpoint's bound), else damage
    /// for Kafki (its recovery cuts there), a warning with `--allow-gaps`.
    fn gap_problem(
        &self,
        path: &str,
        position: Option<u64>,
        offset: i64,
        message: String,
    ) -> Option<Problem> {
        if u64::try_from(offset).is_ok_and(|offset| offset <= self.gaps_below) {
            return None;
        }
        Some(if self.options.allow_gaps {
            warning("offset_gap", path, position, Some(offset), message)
        } else {
            damage(
                "offset_gap",
                path,
                position,
                Some(offset),
                format!("{message} (Kafki's recovery cuts the log here; --allow-gaps for logs Apache Kafka compacted)"),
            )
        })
    }

    fn check_checkpoints(
        &mut self,
        dir: &Path,
        epochs: &EpochTrack,
        first_offset: Option<i64>,
        next_offset: Option<i64>,
        segments: &[(u64, PathBuf)],
        tally: &mut Tally,
    ) -> Checkpoints {
        let mut found = Checkpoints {
            clean_shutdown: dir.join(CLEAN_SHUTDOWN_FILE).exists(),
            ..Checkpoints::default()
        };
        let log_end = next_offset
            .or_else(|| segments.first().map(|(base, _)| *base as i64))
            .unwrap_or(0);
        for name in [LOG_START_FILE, RECOVERY_POINT_FILE] {
            let path = dir.join(name);
            let label = path.display().to_string();
            let text = match read_small_file(&path) {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(error) => {
                    self.report(
                        tally,
                        warning(
                            "bad_checkpoint",
                            &label,
                            None,
                            None,
                            format!("cannot read: {error}"),
                        ),
                    );
                    continue;
                }
            };
            let Ok(offset) = text.trim().parse::<u64>() else {
                self.report(
                    tally,
                    warning(
                        "bad_checkpoint",
                        &label,
                        None,
                        None,
                        format!("not a decimal offset: {:?}", text.trim()),
                    ),
                );
                continue;
            };
            let offset_i64 = i64::try_from(offset).unwrap_or(i64::MAX);
            if name == LOG_START_FILE {
                found.log_start = Some(offset);
                if offset_i64 > log_end {
                    self.report(
                        tally,
                        warning(
                            "log_start_beyond_end",
                            &label,
                            None,
                            Some(offset_i64),
                            format!("log start offset {offset} is beyond the end of the log ({log_end})"),
                        ),
                    );
                }
            } else {
                found.recovery_point = Some(offset);
                if offset_i64 > log_end {
                    self.report(
                        tally,
                        damage(
                            "recovery_point_beyond_end",
                            &label,
                            None,
                            Some(offset_i64),
                            format!("recovery point {offset} is beyond the end of the log ({log_end}): offsets that were durable are missing"),
                        ),
                    );
                }
            }
        }

        let path = dir.join(LEADER_EPOCH_FILE);
        let label = path.display().to_string();
        match read_small_file(&path) {
            Ok(None) => {}
            Err(error) => self.report(
                tally,
                warning(
                    "bad_checkpoint",
                    &label,
                    None,
                    None,
                    format!("cannot read: {error}"),
                ),
            ),
            Ok(Some(text)) => match LeaderEpochCache::decode(&text) {
                None => self.report(
                    tally,
                    warning(
                        "bad_checkpoint",
                        &label,
                        None,
                        None,
                        "not a valid leader-epoch checkpoint (Kafki rebuilds it from the batches)"
                            .into(),
                    ),
                ),
                Some(cache) => {
                    let entries = cache.entries().to_vec();
                    self.compare_epochs(&label, &entries, epochs, first_offset, next_offset, tally);
                    found.epochs = Some(entries);
                }
            },
        }
        found
    }

    /// The checkpoint should name every epoch change the batches show.
    fn compare_epochs(
        &mut self,
        label: &str,
        checkpoint: &[(i32, u64)],
        epochs: &EpochTrack,
        first_offset: Option<i64>,
        next_offset: Option<i64>,
        tally: &mut Tally,
    ) {
        for (index, (epoch, first_seen)) in epochs.changes.iter().enumerate() {
            let entry = checkpoint.iter().find(|(known, _)| known == epoch);
            // The first epoch seen may have started in a segment retention
            // deleted: its checkpoint start may be earlier.
            let consistent = match entry {
                Some((_, start)) if index == 0 => (*start as i64) <= *first_seen,
                Some((_, start)) => *start as i64 == *first_seen,
                None => false,
            };
            if !consistent {
                let said = entry.map_or_else(
                    || "has no entry for it".to_string(),
                    |(_, start)| format!("says it starts at {start}"),
                );
                self.report(
                    tally,
                    warning(
                        "epoch_checkpoint_mismatch",
                        label,
                        None,
                        Some(*first_seen),
                        format!("batches show leader epoch {epoch} from offset {first_seen}; the checkpoint {said}"),
                    ),
                );
            }
        }
        let (Some(first), Some(next)) = (first_offset, next_offset) else {
            return;
        };
        for (epoch, start) in checkpoint {
            let start = *start as i64;
            let in_log = start > first && start < next;
            if in_log && !epochs.changes.iter().any(|(seen, _)| seen == epoch) {
                self.report(
                    tally,
                    warning(
                        "epoch_checkpoint_mismatch",
                        label,
                        None,
                        Some(start),
                        format!("the checkpoint says leader epoch {epoch} starts at {start}, but no batch of that epoch is in the log"),
                    ),
                );
            }
        }
    }

    fn load_indexes(
        &mut self,
        index_path: &Path,
        base: Option<u64>,
        tally: &mut Tally,
    ) -> SegmentIndexes {
        let offset_path = index_path.with_extension("index");
        let time_path = index_path.with_extension("timeindex");
        let mut indexes = SegmentIndexes::default();
        for (path, is_offset) in [(offset_path, true), (time_path, false)] {
            let label = path.display().to_string();
            match read_index_file(&path) {
                Ok(None) => {}
                Ok(Some(bytes)) => {
                    if is_offset {
                        indexes.offset = Some(OffsetIndexCheck::new(&label, base, &bytes));
                    } else {
                        indexes.time = Some(TimeIndexCheck::new(&label, base, &bytes));
                    }
                }
                Err(error) => {
                    self.report(
                        tally,
                        damage("read_error", &label, None, None, format!("{error:#}")),
                    );
                }
            }
        }
        indexes
    }

    fn finish_indexes(
        &mut self,
        mut indexes: SegmentIndexes,
        data_end: u64,
        last_offset: Option<i64>,
    ) -> (u64, u64) {
        let (mut damage_count, mut warning_count) = (0, 0);
        if let Some(mut check) = indexes.offset.take() {
            check.finish(data_end);
            let tally = self.index_problems(&check.problems);
            damage_count += tally.damage;
            warning_count += tally.warnings;
            if self.options.list_index == Some("offset") {
                // Listed in file order.
                let mut entries = check.by_position.clone();
                entries.sort_unstable_by_key(|(_, _, entry)| *entry);
                for (position, relative, entry) in entries {
                    self.emit(Event::IndexEntry(IndexEntryInfo {
                        path: check.path.clone(),
                        kind: "offset",
                        entry,
                        relative_offset: relative,
                        offset: absolute(check.base, relative),
                        position: Some(position),
                        timestamp: None,
                    }));
                }
            }
            self.emit(Event::IndexSummary(IndexSummary {
                path: check.path,
                kind: "offset",
                entries: check.entries,
                zero_entries: check.zero_entries,
                damage: tally.damage,
                warnings: tally.warnings,
                problems_not_shown: tally.not_shown(),
            }));
        }
        if let Some(mut check) = indexes.time.take() {
            check.finish(last_offset);
            let tally = self.index_problems(&check.problems);
            damage_count += tally.damage;
            warning_count += tally.warnings;
            if self.options.list_index == Some("time") {
                let mut entries = check.by_offset.clone();
                entries.sort_unstable_by_key(|(_, _, entry)| *entry);
                for (relative, timestamp, entry) in entries {
                    self.emit(Event::IndexEntry(IndexEntryInfo {
                        path: check.path.clone(),
                        kind: "time",
                        entry,
                        relative_offset: relative,
                        offset: absolute(check.base, relative),
                        position: None,
                        timestamp: Some(timestamp),
                    }));
                }
            }
            self.emit(Event::IndexSummary(IndexSummary {
                path: check.path,
                kind: "time",
                entries: check.entries,
                zero_entries: check.zero_entries,
                damage: tally.damage,
                warnings: tally.warnings,
                problems_not_shown: tally.not_shown(),
            }));
        }
        (damage_count, warning_count)
    }

    fn index_problems(&mut self, problems: &[Problem]) -> Tally {
        let mut tally = Tally::default();
        for problem in problems {
            self.report(&mut tally, problem.clone());
        }
        tally
    }

    /// Opens and walks one `.log` file with its indexes. `expected_next` is
    /// where the previous segment ended.
    fn dump_segment_file(
        &mut self,
        path: &Path,
        base: Option<u64>,
        expected_next: Option<i64>,
        epochs: &mut EpochTrack,
    ) -> SegmentOutcome {
        let label = path.display().to_string();
        let mut tally = Tally::default();
        let opened = File::open(path).and_then(|file| {
            let bytes = file.metadata()?.len();
            Ok((file, bytes))
        });
        let (file, file_bytes) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.emit(Event::Segment {
                    path: label.clone(),
                    base_offset: base,
                    file_bytes: 0,
                });
                self.report(
                    &mut tally,
                    damage(
                        "read_error",
                        &label,
                        None,
                        None,
                        format!("cannot read: {error}"),
                    ),
                );
                return SegmentOutcome {
                    damage: tally.damage,
                    ..SegmentOutcome::default()
                };
            }
        };
        let indexes = self.load_indexes(path, base, &mut tally);
        self.walk_segment(
            &label,
            &file,
            file_bytes,
            base,
            expected_next,
            epochs,
            indexes,
            tally,
        )
    }

    /// Walks the batches of one segment's bytes, reporting each and every
    /// problem, then the segment's and its indexes' summaries.
    #[allow(clippy::too_many_arguments)]
    fn walk_segment<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        source: &R,
        file_bytes: u64,
        base: Option<u64>,
        expected_next: Option<i64>,
        epochs: &mut EpochTrack,
        mut indexes: SegmentIndexes,
        mut tally: Tally,
    ) -> SegmentOutcome {
        self.emit(Event::Segment {
            path: label.to_string(),
            base_offset: base,
            file_bytes,
        });
        self.totals.segments += 1;
        let mut window = Window::new(source, file_bytes);
        let mut outcome = SegmentOutcome::default();
        let mut summary = SegmentSummary {
            path: label.to_string(),
            batches: 0,
            records: 0,
            first_offset: None,
            last_offset: None,
            data_bytes: 0,
            zero_trailer_bytes: 0,
            unreadable_bytes: 0,
            min_timestamp: None,
            max_timestamp: None,
            damage: 0,
            warnings: 0,
            problems_not_shown: 0,
        };
        // The offset the next batch must start at (None: the first batch of
        // a segment without a known base).
        let mut expected = base.map(|base| base as i64).or(expected_next);
        let mut first_batch = true;
        let mut running_max = -1i64;
        let mut position = 0u64;
        while position < file_bytes && !self.stopped() {
            let step = self.step(
                label,
                &mut window,
                position,
                base,
                &mut expected,
                &mut first_batch,
                &mut tally,
            );
            match step {
                Step::Batch {
                    header,
                    size,
                    crc_ok,
                    crc_computed,
                    problems,
                } => {
                    let last = header
                        .base_offset
                        .saturating_add(i64::from(header.last_offset_delta.max(0)));
                    if self.options.show_batches {
                        self.emit(Event::Batch(batch_info(
                            label,
                            position,
                            &header,
                            crc_computed,
                            crc_ok,
                        )));
                    }
                    for problem in problems {
                        self.report(&mut tally, problem);
                    }
                    self.note_epoch(label, position, &header, epochs, &mut tally);
                    if self.options.records {
                        self.dump_records(label, &mut window, position, size, &header, &mut tally);
                    }
                    if header.max_timestamp > running_max {
                        running_max = header.max_timestamp;
                    }
                    if let Some(check) = indexes.offset.as_mut() {
                        check.visit_batch(position, header.base_offset, last);
                    }
                    if let Some(check) = indexes.time.as_mut() {
                        check.visit_batch(last, running_max);
                    }
                    summary.batches += 1;
                    summary.records += u64::try_from(header.records_count).unwrap_or(0);
                    summary.first_offset = summary.first_offset.or(Some(header.base_offset));
                    summary.last_offset = Some(last);
                    if header.base_timestamp >= 0 {
                        summary.min_timestamp = Some(
                            summary
                                .min_timestamp
                                .map_or(header.base_timestamp, |min: i64| {
                                    min.min(header.base_timestamp)
                                }),
                        );
                    }
                    if header.max_timestamp >= 0 {
                        summary.max_timestamp = Some(
                            summary
                                .max_timestamp
                                .map_or(header.max_timestamp, |max: i64| {
                                    max.max(header.max_timestamp)
                                }),
                        );
                    }
                    position += size;
                    summary.data_bytes = position;
                }
                Step::Skip { to } => position = to,
                Step::ZeroTrailer => {
                    summary.zero_trailer_bytes = file_bytes - position;
                    break;
                }
                Step::Unreadable { zero_suffix } => {
                    summary.unreadable_bytes = file_bytes - position - zero_suffix;
                    summary.zero_trailer_bytes = zero_suffix;
                    break;
                }
            }
        }
        let (index_damage, index_warnings) = {
            summary.damage = tally.damage;
            summary.warnings = tally.warnings;
            summary.problems_not_shown = tally.not_shown();
            outcome.batches = summary.batches;
            outcome.records = summary.records;
            outcome.first_offset = summary.first_offset;
            outcome.next_offset = summary.last_offset.map(|last| last.saturating_add(1));
            self.totals.batches += summary.batches;
            self.totals.records += summary.records;
            let data_end = summary.data_bytes;
            let last_offset = summary.last_offset;
            self.emit(Event::SegmentSummary(summary));
            self.finish_indexes(indexes, data_end, last_offset)
        };
        outcome.damage = tally.damage + index_damage;
        outcome.warnings = tally.warnings + index_warnings;
        outcome
    }

    /// Reads what is at `position`: a batch (reported problems included),
    /// damage to skip, or the end of the data.
    #[allow(clippy::too_many_arguments)]
    fn step<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        window: &mut Window<'_, R>,
        position: u64,
        base: Option<u64>,
        expected: &mut Option<i64>,
        first_batch: &mut bool,
        tally: &mut Tally,
    ) -> Step {
        let file_bytes = window.file_bytes;
        let remaining = file_bytes - position;
        let read_error = |dumper: &mut Self, tally: &mut Tally, error: io::Error| {
            dumper.report(
                tally,
                damage(
                    "read_error",
                    label,
                    Some(position),
                    None,
                    format!("cannot read: {error}"),
                ),
            );
            Step::Unreadable { zero_suffix: 0 }
        };
        let head_len = remaining.min(HEADER as u64) as usize;
        let head = match window.get(position, head_len) {
            Ok(bytes) => bytes.to_vec(),
            Err(error) => return read_error(self, tally, error),
        };
        if head.iter().all(|byte| *byte == 0) {
            return match window.first_non_zero(position) {
                Ok(None) => Step::ZeroTrailer,
                Ok(Some(data_at)) => {
                    // The first non-zero byte may lie inside the next
                    // batch's header (its base offset starts with zeros).
                    let (to, tail) = match self.resync(window, position + 1, base) {
                        Ok(found) => found,
                        Err(error) => return read_error(self, tally, error),
                    };
                    self.report(
                        tally,
                        damage(
                            "zero_bytes_then_data",
                            label,
                            Some(position),
                            None,
                            format!(
                                "zero bytes where a batch should start, but data follows (first \
                                 non-zero byte at {data_at}){tail}"
                            ),
                        ),
                    );
                    to
                }
                Err(error) => read_error(self, tally, error),
            };
        }
        let Ok(header) = BatchHeader::parse(&head) else {
            let (to, tail) = match self.resync(window, position + 1, base) {
                Ok(found) => found,
                Err(error) => return read_error(self, tally, error),
            };
            self.report(
                tally,
                damage("truncated_header", label, Some(position), None, format!("a partial batch header: only {remaining} bytes before the end of the file{tail}")),
            );
            return to;
        };
        let shape_problem = if header.batch_length < BATCH_LENGTH_MIN {
            Some((
                "bad_length",
                format!(
                    "batch length {} is below the minimum {BATCH_LENGTH_MIN}",
                    header.batch_length
                ),
            ))
        } else if batch_size(header.batch_length) > remaining {
            Some((
                "truncated_batch",
                format!(
                    "batch of {} bytes (base offset {}) is cut short: {remaining} bytes before the end of the file",
                    batch_size(header.batch_length),
                    header.base_offset
                ),
            ))
        } else if header.magic != 2 {
            Some((
                "bad_magic",
                format!("magic {} (only v2 record batches are read)", header.magic),
            ))
        } else {
            None
        };
        if let Some((code, message)) = shape_problem {
            let (to, tail) = match self.resync(window, position + 1, base) {
                Ok(found) => found,
                Err(error) => return read_error(self, tally, error),
            };
            self.report(
                tally,
                damage(
                    code,
                    label,
                    Some(position),
                    Some(header.base_offset),
                    format!("{message}{tail}"),
                ),
            );
            return to;
        }
        let size = batch_size(header.batch_length);
        let crc_computed = match window.batch_crc(position, size) {
            Ok(crc) => crc,
            Err(error) => return read_error(self, tally, error),
        };
        let crc_ok = crc_computed == header.crc;
        // Reported after the batch line, so they read as its notes.
        let mut problems = Vec::new();
        let last = header
            .base_offset
            .saturating_add(i64::from(header.last_offset_delta.max(0)));
        let at = Some(position);
        let offset = Some(header.base_offset);
        if !crc_ok {
            problems.push(
                damage(
                    "bad_crc",
                    label,
                    at,
                    offset,
                    format!(
                        "CRC32C mismatch in the batch with offsets {}..{last}: stored {:#010x}, computed {crc_computed:#010x}",
                        header.base_offset, header.crc
                    ),
                ),
            );
        }
        let count_ok = header.last_offset_delta >= 0
            && header.records_count >= 0
            && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1;
        if !count_ok {
            problems.push(damage(
                "bad_record_count",
                label,
                at,
                offset,
                format!(
                    "records count {} does not fit last offset delta {}",
                    header.records_count, header.last_offset_delta
                ),
            ));
        }
        if header.base_offset < 0 {
            problems.push(damage(
                "bad_offset",
                label,
                at,
                offset,
                format!("negative base offset {}", header.base_offset),
            ));
        } else if let Some(wanted) = *expected {
            if header.base_offset < wanted {
                let (code, message) = if *first_batch && base.is_some() {
                    ("offset_below_segment_base", format!("first batch starts at offset {}, below the segment's base offset {wanted}", header.base_offset))
                } else {
                    (
                        "offsets_not_increasing",
                        format!(
                            "batch starts at offset {}, but the batch before ended at {}",
                            header.base_offset,
                            wanted - 1
                        ),
                    )
                };
                problems.push(damage(code, label, at, offset, message));
            } else if header.base_offset > wanted {
                let problem = self.gap_problem(
                    label,
                    at,
                    header.base_offset,
                    format!(
                        "batch starts at offset {}; offsets {wanted}..{} are missing",
                        header.base_offset,
                        header.base_offset - 1
                    ),
                );
                problems.extend(problem);
            }
        }
        *first_batch = false;
        if header.base_offset >= 0 {
            *expected = Some(last.saturating_add(1));
        }
        Step::Batch {
            header,
            size,
            crc_ok,
            crc_computed,
            problems,
        }
    }

    /// Finds where to go on after damage at `from`: the next valid batch, or
    /// the end. Returns the step and a clause for the problem's message.
    fn resync<R: ReadAt + ?Sized>(
        &mut self,
        window: &mut Window<'_, R>,
        from: u64,
        base: Option<u64>,
    ) -> io::Result<(Step, String)> {
        match find_next_batch(window, from, base)? {
            Some(next) => Ok((
                Step::Skip { to: next },
                format!("; the next valid batch is at position {next}"),
            )),
            None => {
                let zero_suffix = window.zero_suffix(from)?;
                let unreadable = window.file_bytes - from - zero_suffix;
                let tail = if zero_suffix > 0 {
                    format!("; no valid batch after it ({unreadable} more bytes, then {zero_suffix} zero bytes to the end)")
                } else {
                    format!("; no valid batch after it ({unreadable} more bytes to the end)")
                };
                Ok((Step::Unreadable { zero_suffix }, tail))
            }
        }
    }

    fn note_epoch(
        &mut self,
        label: &str,
        position: u64,
        header: &BatchHeader,
        epochs: &mut EpochTrack,
        tally: &mut Tally,
    ) {
        let epoch = header.partition_leader_epoch;
        // -1 is "no epoch" (as a producer sends it); a leader sets one.
        if epoch == -1 {
            return;
        }
        if epoch < 0 {
            self.report(
                tally,
                damage(
                    "bad_epoch",
                    label,
                    Some(position),
                    Some(header.base_offset),
                    format!("negative leader epoch {epoch}"),
                ),
            );
            return;
        }
        match epochs.last {
            Some(last) if epoch < last => {
                self.report(
                    tally,
                    damage(
                        "epoch_decrease",
                        label,
                        Some(position),
                        Some(header.base_offset),
                        format!("leader epoch {epoch} after epoch {last}: epochs never go back in a log"),
                    ),
                );
            }
            Some(last) if epoch == last => return,
            _ => {}
        }
        epochs.last = Some(epoch);
        if epochs.changes.len() < EPOCH_CHANGES_MAX {
            epochs.changes.push((epoch, header.base_offset));
        }
    }

    fn dump_records<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        window: &mut Window<'_, R>,
        position: u64,
        size: u64,
        header: &BatchHeader,
        tally: &mut Tally,
    ) {
        let not_decoded = |reason: String| {
            warning(
                "records_not_decoded",
                label,
                Some(position),
                Some(header.base_offset),
                reason,
            )
        };
        if size > BATCH_IN_MEMORY_MAX {
            let problem = not_decoded(format!(
                "records not decoded: the batch is larger than {BATCH_IN_MEMORY_MAX} bytes"
            ));
            self.report(tally, problem);
            return;
        }
        let bytes = match window.get(position, size as usize) {
            Ok(bytes) => bytes.to_vec(),
            Err(error) => {
                self.report(
                    tally,
                    damage(
                        "read_error",
                        label,
                        Some(position),
                        None,
                        format!("cannot read: {error}"),
                    ),
                );
                return;
            }
        };
        let section = match records::batch_records(&bytes, DECOMPRESSED_MAX) {
            Ok(section) => section,
            Err(error) => {
                self.report(tally, not_decoded(format!("records not decoded: {error}")));
                return;
            }
        };
        let log_append_time = header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0;
        let control = header.attributes & ATTRIBUTE_CONTROL != 0;
        let max = self.options.max_bytes;
        for record in records::records(&section, header.records_count) {
            if self.stopped() {
                return;
            }
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    let problem = warning(
                        "record_malformed",
                        label,
                        Some(position),
                        Some(header.base_offset),
                        format!("{error}"),
                    );
                    self.report(tally, problem);
                    return;
                }
            };
            let timestamp = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.saturating_add(record.timestamp_delta)
            };
            let marker = control.then(|| control_marker(record.key));
            self.emit(Event::Record(RecordInfo {
                path: label.to_string(),
                batch_position: position,
                offset: header
                    .base_offset
                    .saturating_add(i64::from(record.offset_delta)),
                timestamp,
                key: record.key.map(|key| show(key, max)),
                value: record.value.map(|value| show(value, max)),
                headers: record
                    .headers()
                    .map(|(key, value)| HeaderInfo {
                        key: show(key, max),
                        value: value.map(|value| show(value, max)),
                    })
                    .collect(),
                control: marker,
            }));
        }
    }
}

/// What one step of the walk found.
enum Step {
    Batch {
        header: BatchHeader,
        size: u64,
        crc_ok: bool,
        crc_computed: u32,
        /// What is wrong with it, reported after the batch itself.
        problems: Vec<Problem>,
    },
    /// Damage: go on at `to` (the next valid batch).
    Skip { to: u64 },
    /// All zeros from here to the end: the normal end of data.
    ZeroTrailer,
    /// Nothing readable from here on (`zero_suffix` zero bytes end the file).
    Unreadable { zero_suffix: u64 },
}

#[derive(Debug, Default)]
struct Checkpoints {
    log_start: Option<u64>,
    recovery_point: Option<u64>,
    epochs: Option<Vec<(i32, u64)>>,
    clean_shutdown: bool,
}

/// A control record's key: version (i16) then type (0 abort, 1 commit).
fn control_marker(key: Option<&[u8]>) -> String {
    match key {
        Some([_, _, high, low, ..]) => match i16::from_be_bytes([*high, *low]) {
            0 => "ABORT".to_string(),
            1 => "COMMIT".to_string(),
            other => format!("type {other}"),
        },
        _ => "unreadable control key".to_string(),
    }
}

fn batch_info(
    path: &str,
    position: u64,
    header: &BatchHeader,
    crc_computed: u32,
    crc_ok: bool,
) -> BatchInfo {
    let codec = match Compression::from_attributes(header.attributes) {
        Ok(codec) => codec.name().to_string(),
        Err(_) => format!("unknown({})", header.attributes & 0x07),
    };
    BatchInfo {
        path: path.to_string(),
        position,
        base_offset: header.base_offset,
        last_offset: header
            .base_offset
            .saturating_add(i64::from(header.last_offset_delta)),
        records_count: header.records_count,
        batch_length: header.batch_length,
        magic: header.magic,
        partition_leader_epoch: header.partition_leader_epoch,
        attributes: header.attributes,
        codec,
        timestamp_type: if header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            "LogAppendTime"
        } else {
            "CreateTime"
        },
        transactional: header.attributes & ATTRIBUTE_TRANSACTIONAL != 0,
        control: header.attributes & ATTRIBUTE_CONTROL != 0,
        base_timestamp: header.base_timestamp,
        max_timestamp: header.max_timestamp,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        crc_stored: header.crc,
        crc_computed,
        crc_ok,
    }
}

/// `my-topic-3` → (`my-topic`, 3).
pub fn parse_partition_dir_name(name: &str) -> Option<(&str, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty()
        || partition.is_empty()
        || !partition.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

/// A partition directory holds segments or checkpoint files, or (empty)
/// has a partition's name; anything else is taken as a data directory.
fn is_partition_dir(dir: &Path) -> anyhow::Result<bool> {
    let mut has_subdirs = false;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_partition_file = parse_log_file_name(&name).is_some()
            || name.ends_with(".index")
            || name.ends_with(".timeindex")
            || [
                LEADER_EPOCH_FILE,
                LOG_START_FILE,
                RECOVERY_POINT_FILE,
                CLEAN_SHUTDOWN_FILE,
                CLEANER_FILE,
            ]
            .contains(&name.as_str());
        if is_partition_file {
            return Ok(true);
        }
        has_subdirs |= entry.file_type().is_ok_and(|kind| kind.is_dir());
    }
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(!has_subdirs && parse_partition_dir_name(&name).is_some())
}

/// Reads an index file, refusing absurd sizes; `None` if it does not exist.
fn read_index_file(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    read_bounded(path, INDEX_FILE_MAX)
}

/// Reads a checkpoint file as text; `None` if it does not exist.
fn read_small_file(path: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_bounded(path, CHECKPOINT_FILE_MAX)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let length = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if length > limit {
        anyhow::bail!(
            "{} is {length} bytes, more than the {limit} bytes read",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(length as usize);
    io::Read::read_to_end(&mut io::Read::take(file, limit), &mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(bytes))
}

/// Dumps segment bytes held in memory (tests and fuzzing): `index` and
/// `time_index` are the bytes of its index files, if any.
#[cfg(test)]
pub fn dump_segment_bytes(
    options: Options,
    label: &str,
    base: Option<u64>,
    bytes: &[u8],
    index: Option<&[u8]>,
    time_index: Option<&[u8]>,
) -> (Vec<Event>, Totals) {
    let mut events: Vec<Event> = Vec::new();
    let totals = {
        let mut dumper = Dumper::new(options, &mut events);
        let indexes = SegmentIndexes {
            offset: index
                .map(|bytes| OffsetIndexCheck::new(&format!("{label}.index"), base, bytes)),
            time: time_index
                .map(|bytes| TimeIndexCheck::new(&format!("{label}.timeindex"), base, bytes)),
        };
        let mut epochs = EpochTrack::default();
        dumper.walk_segment(
            label,
            bytes,
            bytes.len() as u64,
            base,
            None,
            &mut epochs,
            indexes,
            Tally::default(),
        );
        dumper.finish().0
    };
    (events, totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
    use proptest::prelude::*;

    const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

    fn options() -> Options {
        Options {
            records: false,
            max_bytes: 64,
            allow_gaps: false,
            show_batches: true,
            list_index: None,
        }
    }

    /// A batch of `count` keyed records with one header each.
    fn batch(
        base_offset: i64,
        epoch: i32,
        count: usize,
        codec: Compression,
        attributes: i16,
    ) -> Vec<u8> {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc"))];
        let mut section = Vec::new();
        for index in 0..count {
            let key = format!("key-{index}");
            let value = format!("value-{base_offset}-{index}");
            encode_record(
                &mut section,
                &NewRecord {
                    timestamp_delta: index as i64,
                    offset_delta: index as i32,
                    key: Some(key.as_bytes()),
                    value: Some(value.as_bytes()),
                    headers,
                },
            );
        }
        let fields = BatchFields {
            base_offset,
            partition_leader_epoch: epoch,
            attributes,
            last_offset_delta: count as i32 - 1,
            base_timestamp: BASE_TIMESTAMP + base_offset,
            max_timestamp: BASE_TIMESTAMP + base_offset + count as i64 - 1,
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: base_offset as i32,
            records_count: count as i32,
        };
        let mut bytes = Vec::new();
        assemble_batch(&mut bytes, &fields, codec, &section);
        bytes
    }

    /// Five batches of three records (offsets 0..14), then `zeros` zero bytes.
    /// Returns the bytes and each batch's position.
    fn segment(zeros: usize) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut positions = Vec::new();
        for index in 0..5 {
            positions.push(bytes.len() as u64);
            let codec = Compression::ALL[index % Compression::ALL.len()];
            bytes.extend(batch(index as i64 * 3, 0, 3, codec, 0));
        }
        bytes.resize(bytes.len() + zeros, 0);
        (bytes, positions)
    }

    fn dump(options: Options, bytes: &[u8]) -> (Vec<Event>, Totals) {
        dump_segment_bytes(options, "test.log", Some(0), bytes, None, None)
    }

    fn problems(events: &[Event]) -> Vec<&Problem> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Problem(problem) => Some(problem),
                _ => None,
            })
            .collect()
    }

    fn batches(events: &[Event]) -> Vec<&BatchInfo> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Batch(batch) => Some(batch),
                _ => None,
            })
            .collect()
    }

    fn segment_summary(events: &[Event]) -> &SegmentSummary {
        events
            .iter()
            .find_map(|event| match event {
                Event::SegmentSummary(summary) => Some(summary),
                _ => None,
            })
            .expect("a segment summary")
    }

    #[test]
    fn reports_every_batch_field_and_the_preallocated_trailer() {
        let (bytes, positions) = segment(4096);
        let (events, totals) = dump(options(), &bytes);
        assert!(problems(&events).is_empty(), "{:?}", problems(&events));
        let found = batches(&events);
        assert_eq!(found.len(), 5);
        for (index, batch) in found.iter().enumerate() {
            assert_eq!(batch.position, positions[index]);
            assert_eq!(batch.base_offset, index as i64 * 3);
            assert_eq!(batch.last_offset, index as i64 * 3 + 2);
            assert_eq!(batch.records_count, 3);
            assert_eq!(batch.codec, Compression::ALL[index].name());
            assert_eq!(batch.producer_id, 7);
            assert_eq!(batch.producer_epoch, 2);
            assert_eq!(batch.base_sequence, index as i32 * 3);
            assert_eq!(batch.base_timestamp, BASE_TIMESTAMP + index as i64 * 3);
            assert_eq!(batch.timestamp_type, "CreateTime");
            assert!(batch.crc_ok && batch.crc_stored == batch.crc_computed);
            assert!(!batch.transactional && !batch.control);
            let size = positions
                .get(index + 1)
                .copied()
                .unwrap_or(bytes.len() as u64 - 4096)
                - positions[index];
            assert_eq!(batch.batch_length as u64 + 12, size);
        }
        let summary = segment_summary(&events);
        assert_eq!(summary.zero_trailer_bytes, 4096);
        assert_eq!(summary.data_bytes, bytes.len() as u64 - 4096);
        assert_eq!(
            (summary.first_offset, summary.last_offset),
            (Some(0), Some(14))
        );
        assert_eq!((totals.batches, totals.records, totals.damage), (5, 15, 0));
        let text = render_text(&Event::SegmentSummary(summary.clone()));
        assert!(
            text.contains("end of data (4096 zero bytes preallocated)"),
            "{text}"
        );
        assert!(text.contains("2023-11-14T22:13:20.000Z"), "{text}");
    }

    #[test]
    fn records_are_decoded_from_every_codec() {
        let (bytes, _) = segment(0);
        let (events, totals) = dump(
            Options {
                records: true,
                max_bytes: 8,
                ..options()
            },
            &bytes,
        );
        assert_eq!(
            totals.damage + totals.warnings,
            0,
            "{:?}",
            problems(&events)
        );
        let records: Vec<&RecordInfo> = events
            .iter()
            .filter_map(|event| match event {
                Event::Record(record) => Some(record),
                _ => None,
            })
            .collect();
        assert_eq!(records.len(), 15);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.offset, index as i64);
            assert_eq!(
                record.timestamp,
                BASE_TIMESTAMP + (index as i64 / 3) * 3 + index as i64 % 3
            );
            let key = record.key.as_ref().expect("key");
            assert_eq!(
                key.text.as_deref(),
                Some(format!("key-{}", index % 3).as_str())
            );
            let value = record.value.as_ref().expect("value");
            let full = format!("value-{}-{}", index / 3 * 3, index % 3);
            assert_eq!(value.text.as_deref(), Some(&full[..8]));
            assert!(value.truncated && value.size == full.len(), "{value:?}");
            assert_eq!(record.headers.len(), 1);
            assert_eq!(record.headers[0].key.text.as_deref(), Some("trace"));
        }
        let line = render_text(&Event::Record(records[4].clone()));
        assert!(
            line.contains("offset=4") && line.contains("key=\"key-1\""),
            "{line}"
        );
        assert!(
            line.contains("value=\"value-3-\"...(9 bytes)")
                && line.contains("headers=[\"trace\"=\"abc\"]"),
            "{line}"
        );
    }

    #[test]
    fn attributes_transactions_control_and_log_append_time() {
        let mut bytes = batch(0, 3, 2, Compression::None, ATTRIBUTE_TRANSACTIONAL);
        let mut control_section = Vec::new();
        encode_record(
            &mut control_section,
            &NewRecord {
                key: Some(&[0, 0, 0, 1]),
                value: Some(&[0, 0, 0, 0, 0, 3]),
                ..NewRecord::default()
            },
        );
        let control = BatchFields {
            base_offset: 2,
            partition_leader_epoch: 3,
            attributes: ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL,
            records_count: 1,
            ..BatchFields::default()
        };
        assemble_batch(&mut bytes, &control, Compression::None, &control_section);
        bytes.extend(batch(3, 3, 1, Compression::None, ATTRIBUTE_LOG_APPEND_TIME));
        let (events, totals) = dump(
            Options {
                records: true,
                ..options()
            },
            &bytes,
        );
        assert_eq!(totals.damage, 0, "{:?}", problems(&events));
        let found = batches(&events);
        assert!(found[0].transactional && !found[0].control);
        assert!(found[1].transactional && found[1].control);
        assert_eq!(found[2].timestamp_type, "LogAppendTime");
        assert!(found.iter().all(|batch| batch.partition_leader_epoch == 3));
        let markers: Vec<Option<String>> = events
            .iter()
            .filter_map(|event| match event {
                Event::Record(record) => Some(record.control.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(markers, vec![None, None, Some("COMMIT".to_string()), None]);
        let line = render_text(&Event::Batch(found[1].clone()));
        assert!(
            line.contains("epoch=3") && line.contains("txn=true control=true"),
            "{line}"
        );
        assert!(line.contains("crc=0x") && line.ends_with(" ok"), "{line}");
    }

    #[test]
    fn a_flipped_byte_names_the_batch_and_the_walk_goes_on() {
        let (mut bytes, positions) = segment(1024);
        let flip_at = positions[2] as usize + 70;
        bytes[flip_at] ^= 0x10;
        let (events, totals) = dump(options(), &bytes);
        let found = problems(&events);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, "bad_crc");
        assert_eq!(found[0].position, Some(positions[2]));
        assert_eq!(found[0].offset, Some(6));
        assert!(
            found[0].message.contains("offsets 6..8"),
            "{}",
            found[0].message
        );
        assert_eq!(
            batches(&events).len(),
            5,
            "the batches after the damage are still read"
        );
        assert_eq!(totals.damage, 1);
        assert!(!batches(&events)[2].crc_ok);
        let line = render_text(&Event::Problem(found[0].clone()));
        assert!(
            line.starts_with("  DAMAGE [bad_crc] test.log pos="),
            "{line}"
        );
    }

    #[test]
    fn a_damaged_length_resyncs_at_the_next_valid_batch() {
        let (mut bytes, positions) = segment(0);
        let at = positions[1] as usize + 8;
        bytes[at..at + 4].copy_from_slice(&20i32.to_be_bytes());
        let (events, _) = dump(options(), &bytes);
        let found = problems(&events);
        assert_eq!(found[0].code, "bad_length", "{found:?}");
        assert!(
            found[0]
                .message
                .contains(&format!("next valid batch is at position {}", positions[2])),
            "{}",
            found[0].message
        );
        // The batch after the skipped one starts at 6, not 3.
        assert_eq!(found[1].code, "offset_gap", "{found:?}");
        assert_eq!(batches(&events).len(), 4);

        let mut huge = segment(0).0;
        huge[positions[1] as usize + 8..positions[1] as usize + 12]
            .copy_from_slice(&i32::MAX.to_be_bytes());
        let (events, _) = dump(options(), &huge);
        assert_eq!(problems(&events)[0].code, "truncated_batch");
        assert_eq!(batches(&events).len(), 4);
    }

    #[test]
    fn a_truncated_tail_is_damage_after_the_good_batches() {
        let (bytes, positions) = segment(0);
        let cut = &bytes[..positions[4] as usize + 30];
        let (events, totals) = dump(options(), cut);
        let found = problems(&events);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, "truncated_header");
        assert_eq!(found[0].position, Some(positions[4]));
        let cut = &bytes[..positions[4] as usize + 70];
        let (events, _) = dump(options(), cut);
        assert_eq!(problems(&events)[0].code, "truncated_batch");
        let summary = segment_summary(&events);
        assert_eq!(summary.data_bytes, positions[4]);
        // The cut batch may end in zero bytes.
        assert_eq!(summary.unreadable_bytes + summary.zero_trailer_bytes, 70);
        assert_eq!(totals.batches, 4);
    }

    #[test]
    fn zeros_followed_by_data_are_damage() {
        let (bytes, positions) = segment(0);
        let mut holed = bytes.clone();
        holed[positions[1] as usize..positions[2] as usize].fill(0);
        let (events, _) = dump(options(), &holed);
        let found = problems(&events);
        assert_eq!(found[0].code, "zero_bytes_then_data", "{found:?}");
        assert_eq!(found[0].position, Some(positions[1]));
        assert_eq!(batches(&events).len(), 4);
    }

    #[test]
    fn offsets_outside_the_crc_are_checked() {
        let (mut bytes, positions) = segment(0);
        // The base offset lies outside the CRC: only continuity shows it.
        let at = positions[2] as usize;
        bytes[at..at + 8].copy_from_slice(&2i64.to_be_bytes());
        let (events, _) = dump(options(), &bytes);
        let codes: Vec<&str> = problems(&events)
            .iter()
            .map(|problem| problem.code)
            .collect();
        assert_eq!(
            codes,
            ["offsets_not_increasing", "offset_gap"],
            "{:?}",
            problems(&events)
        );

        let (mut bytes, positions) = segment(0);
        let at = positions[2] as usize;
        bytes[at..at + 8].copy_from_slice(&100i64.to_be_bytes());
        let (events, totals) = dump(options(), &bytes);
        assert_eq!(problems(&events)[0].code, "offset_gap");
        assert_eq!(totals.damage, 2, "{:?}", problems(&events));
        let (_, relaxed) = dump(
            Options {
                allow_gaps: true,
                ..options()
            },
            &bytes,
        );
        assert_eq!((relaxed.damage, relaxed.warnings), (1, 1));

        // A segment named 00..0100.log must start at offset 100.
        let (bytes, _) = segment(0);
        let (events, _) = dump_segment_bytes(options(), "x.log", Some(100), &bytes, None, None);
        assert_eq!(problems(&events)[0].code, "offset_below_segment_base");
    }

    #[test]
    fn leader_epochs_must_not_go_back() {
        let mut bytes = batch(0, 5, 1, Compression::None, 0);
        bytes.extend(batch(1, 4, 1, Compression::None, 0));
        let (events, _) = dump(options(), &bytes);
        let found = problems(&events);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, "epoch_decrease");
        assert_eq!(found[0].offset, Some(1));
    }

    fn offset_index(entries: &[(u32, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(relative, position)| {
                [relative.to_be_bytes(), position.to_be_bytes()].concat()
            })
            .collect()
    }

    fn time_index(entries: &[(i64, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(timestamp, relative)| {
                [
                    timestamp.to_be_bytes().to_vec(),
                    relative.to_be_bytes().to_vec(),
                ]
                .concat()
            })
            .collect()
    }

    fn index_codes(index: &[u8], time: &[u8]) -> (Vec<&'static str>, Vec<IndexSummary>) {
        let (bytes, _) = segment(512);
        let (events, _) =
            dump_segment_bytes(options(), "s.log", Some(0), &bytes, Some(index), Some(time));
        let codes = problems(&events)
            .iter()
            .map(|problem| problem.code)
            .collect();
        let summaries = events
            .iter()
            .filter_map(|event| match event {
                Event::IndexSummary(summary) => Some(summary.clone()),
                _ => None,
            })
            .collect();
        (codes, summaries)
    }

    #[test]
    fn indexes_are_checked_against_the_batches() {
        let (_, positions) = segment(0);
        let p = |index: usize| positions[index] as u32;
        let good_index = offset_index(&[(5, p(1)), (11, p(3))]);
        let good_time = time_index(&[(BASE_TIMESTAMP + 5, 5), (BASE_TIMESTAMP + 14, 14)]);
        let (codes, summaries) = index_codes(&good_index, &good_time);
        assert!(codes.is_empty(), "{codes:?}");
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[0].entries, 2);

        // Kafka preallocates the active segment's index: zero entries at the end.
        let mut padded = good_index.clone();
        padded.resize(padded.len() + 80, 0);
        let (codes, summaries) = index_codes(&padded, &good_time);
        assert!(codes.is_empty(), "{codes:?}");
        assert_eq!((summaries[0].entries, summaries[0].zero_entries), (2, 10));

        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (
                offset_index(&[(5, p(1)), (11, 100_000)]),
                good_time.clone(),
                "index_past_data",
            ),
            (
                offset_index(&[(5, p(1) + 3)]),
                good_time.clone(),
                "index_not_batch_start",
            ),
            (
                offset_index(&[(9, p(1))]),
                good_time.clone(),
                "index_offset_mismatch",
            ),
            (
                offset_index(&[(11, p(3)), (5, p(1))]),
                good_time.clone(),
                "index_not_increasing",
            ),
            (good_index[..11].to_vec(), good_time.clone(), "index_ragged"),
            (
                good_index.clone(),
                time_index(&[(BASE_TIMESTAMP + 9, 9), (BASE_TIMESTAMP + 5, 11)]),
                "timeindex_not_monotonic",
            ),
            (
                good_index.clone(),
                time_index(&[(BASE_TIMESTAMP + 5, 40)]),
                "timeindex_past_data",
            ),
            (
                good_index.clone(),
                time_index(&[(BASE_TIMESTAMP + 500, 5)]),
                "timeindex_timestamp_too_high",
            ),
            (
                good_index.clone(),
                good_time[..13].to_vec(),
                "timeindex_ragged",
            ),
        ];
        for (index, time, wanted) in cases {
            let (codes, _) = index_codes(&index, &time);
            assert!(codes.contains(&wanted), "{wanted}: {codes:?}");
        }
    }

    #[test]
    fn problems_beyond_the_cap_are_counted_not_printed() {
        // 300 one-record batches with bad CRCs.
        let mut bytes = Vec::new();
        for offset in 0..300 {
            let mut one = batch(offset, 0, 1, Compression::None, 0);
            let last = one.len() - 1;
            one[last] ^= 1;
            bytes.extend(one);
        }
        let (events, totals) = dump(options(), &bytes);
        assert_eq!(totals.damage, 300);
        assert_eq!(problems(&events).len(), PROBLEMS_SHOWN_PER_FILE as usize);
        assert_eq!(segment_summary(&events).problems_not_shown, 200);
    }

    #[test]
    fn shown_bytes_and_timestamps() {
        assert_eq!(show(b"hello", 64).text.as_deref(), Some("hello"));
        let binary = show(&[0, 1, 0xff], 64);
        assert_eq!((binary.text, binary.hex.as_deref()), (None, Some("0001ff")));
        let cut = show("héllo".as_bytes(), 2);
        assert_eq!(
            (cut.text.as_deref(), cut.truncated, cut.size),
            (Some("h"), true, 6)
        );
        assert_eq!(format_ms(BASE_TIMESTAMP), "2023-11-14T22:13:20.000Z");
        assert_eq!(
            parse_partition_dir_name("my-topic-12"),
            Some(("my-topic", 12))
        );
        assert_eq!(parse_partition_dir_name("topic-"), None);
        assert_eq!(parse_partition_dir_name("-3"), None);
        assert_eq!(parse_partition_dir_name("kafki-data"), None);
    }

    /// Every event renders, as text and as JSON, without panicking.
    fn render_all(events: &[Event]) {
        for event in events {
            let _ = render_text(event);
            serde_json::to_string(event).expect("events serialize");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            index in proptest::collection::vec(any::<u8>(), 0..64),
            time in proptest::collection::vec(any::<u8>(), 0..64),
            base in proptest::option::of(0u64..1000),
        ) {
            let options = Options { records: true, ..options() };
            let (events, _) = dump_segment_bytes(options, "fuzz.log", base, &bytes, Some(&index), Some(&time));
            render_all(&events);
        }

        #[test]
        fn garbled_segments_never_panic(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
            cut in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            let (mut bytes, positions) = segment(256);
            for (at, value, kind) in edits {
                let at = at.index(bytes.len());
                match kind {
                    0 => bytes[at] ^= value | 1,
                    1 => bytes[at] = value,
                    2 => bytes.insert(at, value),
                    _ => { bytes.remove(at); }
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let index = offset_index(&[(5, positions[1] as u32), (11, positions[3] as u32)]);
            let options = Options { records: true, ..options() };
            let (events, totals) = dump_segment_bytes(options, "garbled.log", Some(0), &bytes, Some(&index), None);
            render_all(&events);
            // Whatever was found, the counts add up.
            let shown = problems(&events).len() as u64;
            prop_assert!(shown <= totals.damage + totals.warnings);
        }

        #[test]
        fn a_single_flip_in_a_batch_is_always_found(at in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let (mut bytes, positions) = segment(0);
            let end = bytes.len();
            let at = at.index(end);
            // Raising the last batch's leader epoch (outside the CRC) is
            // what a new leader does: nothing can tell it from damage.
            let last_epoch = positions[4] as usize + 12..positions[4] as usize + 16;
            prop_assume!(!last_epoch.contains(&at) || (at == last_epoch.start && bit == 7));
            bytes[at] ^= 1 << bit;
            let (events, totals) = dump(options(), &bytes);
            // Inside a batch header's producer-set fields or body, the CRC
            // catches it; in the base offset, length or epoch, continuity
            // or the next batch does. Either way: damage, near the flip.
            prop_assert!(totals.damage > 0, "flip at {at} not found: {:?}", problems(&events));
            let batch_start = positions.iter().rev().find(|start| **start <= at as u64).copied().unwrap_or(0);
            let first = problems(&events).first().and_then(|problem| problem.position);
            prop_assert!(first.is_some_and(|position| position >= batch_start.saturating_sub(1)), "flip at {at} in batch at {batch_start}, first problem at {first:?}");
        }
    }
}
