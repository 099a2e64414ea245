//! Events: what the dump reports, one stream rendered as text (`render.rs`)
//! or JSON Lines; the sinks that receive them.

use super::*;

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
