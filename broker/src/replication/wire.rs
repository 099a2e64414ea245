//! The node-to-node replication wire format: the bodies of the
//! [`FrameKind::ReplicaFetch`] and [`FrameKind::ReplicaFetchAnswer`] frames
//! (and of the rare `ReplicaRepair` / `ReplicaRepairAnswer`: one damaged
//! batch asked of another replica, see [`RepairRequest`])
//! (the frame header, its length and its CRC32C are the transport's). A pure
//! codec: bytes in, structs out, no I/O, no clock, so property tests and a
//! fuzzer can run on it alone.
//!
//! One connection per node pair (later per shard pair) carries the fetches
//! of every partition the pair shares, so one frame holds many partitions:
//! a follower node sends one [`ReplicaFetch`] naming each partition's
//! [`FetchRequest`], the leader node parks it and answers with one
//! [`ReplicaFetchAnswer`] holding each partition's [`FetchResponse`] and,
//! for a `Records` answer, the record batches exactly as storage holds them.
//!
//! # Layout
//!
//! Fixed-width little-endian integers at fixed offsets (the record batches
//! keep Kafka's own big-endian v2 format: they are never re-encoded).
//! Reserved bytes are zero and checked, so a frame has one encoding and a
//! later version can give them meaning. Every body starts with the version
//! byte; a version this node does not know is refused, never guessed at.
//!
//! `ReplicaFetch` body ([`FETCH_HEADER_BYTES`] + [`PARTITION_FETCH_BYTES`]
//! per partition; every 8-byte field lies at a multiple of 8):
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version ([`WIRE_VERSION`]) |
//! | 1 | 3 | reserved (0) |
//! | 4 | 4 | fetching node, i32: every partition's `FetchRequest::replica` |
//! | 8 | 8 | request id, u64: distinct per frame of one connection, echoed by the answer |
//! | 16 | 4 | max bytes, u32: the budget of record bytes for the whole answer |
//! | 20 | 4 | max wait ms, u32: how long the leader may park the fetch |
//! | 24 | 4 | partition count, u32 |
//! | 28 | 4 | reserved (0) |
//! | 32 | 56 × count | partition fetches, below |
//!
//! A partition fetch:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 16 | topic id (uuid bytes, in order) |
//! | 16 | 4 | partition index, i32 |
//! | 20 | 4 | leader epoch, i32 |
//! | 24 | 4 | last fetched epoch, i32 |
//! | 28 | 4 | reserved (0) |
//! | 32 | 8 | fetch id, u64 |
//! | 40 | 8 | fetch offset, i64 |
//! | 48 | 8 | durable offset, i64 |
//!
//! `ReplicaFetchAnswer` body ([`ANSWER_HEADER_BYTES`], then the partition
//! answers one after the other):
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version ([`WIRE_VERSION`]) |
//! | 1 | 3 | reserved (0) |
//! | 4 | 4 | partition count, u32 |
//! | 8 | 8 | request id, u64 (the fetch's) |
//! | 16 | … | partition answers, below |
//!
//! A partition answer ([`PARTITION_ANSWER_BYTES`] fixed, then its ranges and
//! its record bytes); fields that do not belong to the answer's kind are 0:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 16 | topic id |
//! | 16 | 4 | partition index, i32 |
//! | 20 | 1 | kind: 0 records, 1 diverging, 2 refused, 3 out of range |
//! | 21 | 1 | refusal: 1 not leader, 2 fenced leader epoch, 3 unknown leader epoch, 4 not a replica, 5 malformed |
//! | 22 | 2 | reserved (0) |
//! | 24 | 4 | leader, i32 |
//! | 28 | 4 | leader epoch, i32 |
//! | 32 | 4 | last fetched epoch, i32 (echoed) |
//! | 36 | 4 | diverging: epoch, i32 |
//! | 40 | 8 | fetch id, u64 (echoed) |
//! | 48 | 8 | fetch offset, i64 (echoed) |
//! | 56 | 8 | high watermark, i64 |
//! | 64 | 8 | diverging: end offset; records and out of range: the leader's log start, i64 |
//! | 72 | 4 | records: range count, u32 |
//! | 76 | 4 | records: record bytes, u32 |
//! | 80 | 24 × ranges | ranges: epoch i32, reserved u32 (0), start i64, end i64 |
//! | … | record bytes | record batches, Kafka v2, exactly as stored |
//!
//! # Overhead per partition
//!
//! A fetch costs 56 bytes per partition (plus 32 per frame and the
//! transport's 12-byte frame header). An answer costs 80 bytes per partition
//! plus 24 per record range: 104 bytes for the usual answer of one range
//! (records of one leader epoch), 80 for an empty parked answer, a
//! divergence, an out-of-range answer or a refusal (plus 16 per frame and 12 of frame header). A
//! thousand idle partitions on one node pair thus cost 56 kB per fetch and
//! 80 kB per answer; batching them in one frame is what keeps that to one
//! frame header and one CRC per round.
//!
//! # What decoding checks
//!
//! Everything a hostile or broken peer controls: the version, reserved
//! bytes, every count and length against the bytes left *before* anything
//! is allocated from it, the caps of [`WireLimits`] (partitions per frame,
//! ranges per partition, bytes per record batch), the kinds and refusal
//! codes, and no bytes after the last partition. The record bytes of an
//! answer are checked for *framing* only: they split exactly into batches
//! whose length field lies within the region, with v2 magic and a sane
//! length (`BatchHeader::check_shape`). Their CRC32C is not checked here:
//! that is the storage layer's job when it appends them (it validates every
//! stored batch), and the frame's own CRC already covers transit — except
//! in a spliced answer ([`encode_spliced_answer`]: the same layout with all
//! record bytes moved after a CRC-covered part, so a leader can splice them
//! from its segment files), where [`check_batches_fit_ranges`] checks what
//! the batch CRC leaves out.
//! Meaning is not checked either (offsets, epochs, whether ranges match the
//! batches): the replication machine refuses an answer that does not fit
//! its log (`InputError::MalformedAnswer`).
//!
//! Decoding an answer copies no record byte: each batch comes back as a
//! [`Bytes`] slice of the received body. Encoding copies none either: the
//! caller's chunks are passed through as [`EncodedBody`] segments, ready for
//! a vectored write.

use bytes::{BufMut, Bytes, BytesMut};
use kafki_storage::batch::BatchHeader;
use kafki_storage::BatchError;
use uuid::Uuid;

#[cfg(doc)]
use crate::cluster::transport::FrameKind;
use crate::cluster::transport::FRAME_BYTES_MAX;

use super::log::{NodeId, RecordRange};
use super::messages::{FetchBody, FetchRefusal, FetchRequest, FetchResponse};
use crate::zerocopy::WirePart;

/// The version byte every body starts with.
pub const WIRE_VERSION: u8 = 2;
/// Fixed part of a `ReplicaFetch` body.
pub const FETCH_HEADER_BYTES: usize = 32;
/// One partition of a `ReplicaFetch`.
pub const PARTITION_FETCH_BYTES: usize = 56;
/// Fixed part of a `ReplicaFetchAnswer` body.
pub const ANSWER_HEADER_BYTES: usize = 16;
/// Fixed part of one partition answer (ranges and record bytes follow).
pub const PARTITION_ANSWER_BYTES: usize = 80;
/// One record range of a `Records` answer.
pub const RANGE_BYTES: usize = 24;

const TOPIC_ID_BYTES: usize = 16;

const KIND_RECORDS: u8 = 0;
const KIND_DIVERGING: u8 = 1;
const KIND_REFUSED: u8 = 2;
const KIND_OUT_OF_RANGE: u8 = 3;

// Every 8-byte field of a fetch stays 8-aligned from the body start; so do
// an answer's, up to its first record bytes.
const _: () =
    assert!(FETCH_HEADER_BYTES.is_multiple_of(8) && PARTITION_FETCH_BYTES.is_multiple_of(8));
const _: () = assert!(PARTITION_ANSWER_BYTES.is_multiple_of(8) && RANGE_BYTES.is_multiple_of(8));
// The field tables above add up to the fixed sizes.
const _: () = assert!(FETCH_HEADER_BYTES == 1 + 3 + 4 + 8 + 4 + 4 + 4 + 4);
const _: () = assert!(PARTITION_FETCH_BYTES == TOPIC_ID_BYTES + 4 * 4 + 3 * 8);
const _: () = assert!(ANSWER_HEADER_BYTES == 1 + 3 + 4 + 8);
const _: () =
    assert!(PARTITION_ANSWER_BYTES == TOPIC_ID_BYTES + 4 + 1 + 1 + 2 + 4 * 4 + 4 * 8 + 2 * 4);
const _: () = assert!(RANGE_BYTES == 4 + 4 + 8 + 8);

/// The caps a decoder (and, so that a peer never refuses what this node
/// sends, the encoder) holds a frame to. Both ends use
/// [`WireLimits::DEFAULT`]; tests use smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Partitions in one frame. The driver splits a node pair's partitions
    /// over several fetches above it.
    pub partitions_per_frame_max: u32,
    /// Record ranges (leader epochs) in one partition answer.
    pub ranges_per_partition_max: u32,
    /// Bytes of one record batch (its whole stored size). A topic's
    /// `max.message.bytes` must stay below it, or its larger batches cannot
    /// be replicated.
    pub batch_bytes_max: usize,
}

impl WireLimits {
    pub const DEFAULT: Self = Self {
        // 3.5 MiB of fetch; far above the partitions two nodes share today.
        partitions_per_frame_max: 65_536,
        // One range per leader epoch in the answer; more than a handful
        // means the leader changed that often within one fetch's bytes.
        ranges_per_partition_max: 1_024,
        // 32 times Kafka's default `message.max.bytes` (1 MiB), half a frame.
        batch_bytes_max: 32 << 20,
    };
}

impl Default for WireLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A partition as the replication wire names it: by topic id, which a
/// re-created topic of the same name does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaPartition {
    pub topic_id: Uuid,
    pub partition_index: i32,
}

/// A follower node's fetch for many partitions (one frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetch {
    /// The node fetching; every partition's `request.replica` is this node.
    pub fetching_node: NodeId,
    /// Distinct per fetch on one connection; the answer echoes it.
    pub request_id: u64,
    /// Record bytes the whole answer may carry. As in Kafka, the leader
    /// must still send the first batch of the first partition with data
    /// when that batch alone is larger, or a big batch would stall the
    /// follower forever.
    pub max_bytes: u32,
    /// How long the leader may park the fetch waiting for records.
    pub max_wait_ms: u32,
    pub partitions: Vec<PartitionFetch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFetch {
    pub partition: ReplicaPartition,
    pub request: FetchRequest,
}

/// A piece of an answer's record bytes as the encoder takes it: bytes in
/// memory ([`Bytes`], also what decoding yields), or for the leader's
/// sending side a [`WirePart`] that may be a segment file region the
/// transport splices (see [`encode_spliced_answer`]).
pub trait RecordChunk: Clone + From<Bytes> {
    fn chunk_len(&self) -> usize;
    /// The bytes, when they are in memory.
    fn in_memory(&self) -> Option<&Bytes>;
}

impl RecordChunk for Bytes {
    fn chunk_len(&self) -> usize {
        self.len()
    }

    fn in_memory(&self) -> Option<&Bytes> {
        Some(self)
    }
}

impl RecordChunk for WirePart {
    fn chunk_len(&self) -> usize {
        // Within FRAME_BYTES_MAX when it is encoded (checked there).
        usize::try_from(self.len()).unwrap_or(usize::MAX)
    }

    fn in_memory(&self) -> Option<&Bytes> {
        match self {
            WirePart::Bytes(bytes) => Some(bytes),
            WirePart::File { .. } => None,
        }
    }
}

/// A leader node's answer to one [`ReplicaFetch`] (one frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetchAnswer<R = Bytes> {
    /// The fetch's `request_id`.
    pub request_id: u64,
    pub partitions: Vec<PartitionAnswer<R>>,
}

impl<R: RecordChunk> ReplicaFetchAnswer<R> {
    /// Whether some record bytes are not in memory (file regions): such an
    /// answer can only go as a spliced frame ([`encode_spliced_answer`]).
    pub fn has_file_regions(&self) -> bool {
        self.partitions
            .iter()
            .flat_map(|partition| &partition.record_batches)
            .any(|chunk| chunk.in_memory().is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAnswer<R = Bytes> {
    pub partition: ReplicaPartition,
    pub response: FetchResponse,
    /// For a `Records` answer: the leader's log start when it answered
    /// (followers move their own start up to it, bounded by their high
    /// watermark, as Kafka's fetcher does after DeleteRecords or
    /// retention); 0 otherwise.
    pub leader_log_start: i64,
    /// The record batches of a `Records` response, exactly as stored
    /// (Kafka v2, whole batches); empty for any other response. To encode:
    /// chunks as storage returned them, in order (a chunk may hold several
    /// batches). Decoded: one [`Bytes`] per batch, each a slice of the
    /// received body.
    pub record_batches: Vec<R>,
}

impl<R: RecordChunk> PartitionAnswer<R> {
    /// Record bytes carried for this partition.
    pub fn record_bytes(&self) -> usize {
        self.record_batches.iter().map(RecordChunk::chunk_len).sum()
    }
}

/// An encoded body as a list of segments: the codec's fixed-layout parts
/// and, between them, the caller's record chunks untouched. Write them in
/// order (a vectored write), or join them with [`EncodedBody::to_vec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBody<R = Bytes> {
    pub segments: Vec<R>,
}

impl<R: RecordChunk> EncodedBody<R> {
    /// The body's length in bytes (the frame header's length field).
    pub fn len(&self) -> usize {
        self.segments.iter().map(RecordChunk::chunk_len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|segment| segment.chunk_len() == 0)
    }
}

impl EncodedBody {
    /// The body's CRC32C (the frame header's CRC field), without joining.
    pub fn crc32c(&self) -> u32 {
        self.segments
            .iter()
            .fold(0, |crc, segment| crc32c::crc32c_append(crc, segment))
    }

    /// The body in one buffer (copies the records: for the transport as it
    /// is today, which takes the body as one slice).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.len());
        for segment in &self.segments {
            body.extend_from_slice(segment);
        }
        body
    }
}

/// Why a frame could not be encoded: it would break a cap the peer holds
/// it to, or the message is inconsistent. Nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{count} partitions in one frame; at most {max}")]
    TooManyPartitions { count: usize, max: u32 },
    #[error("{count} record ranges for {partition:?}; at most {max}")]
    TooManyRanges {
        partition: ReplicaPartition,
        count: usize,
        max: u32,
    },
    #[error("{partition:?} is fetched for replica {replica} in a fetch by node {fetching_node}")]
    ReplicaIsNotFetchingNode {
        partition: ReplicaPartition,
        replica: NodeId,
        fetching_node: NodeId,
    },
    #[error("{partition:?} carries record bytes with a response that is not Records")]
    RecordBytesWithoutRecords { partition: ReplicaPartition },
    #[error("a body of {bytes} bytes is over the {max}-byte frame limit")]
    TooLarge { bytes: usize, max: usize },
}

/// Why a received body was refused. The connection it came on is broken or
/// hostile: the driver drops the frame (and may close the connection), the
/// node carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body too short: {needed} bytes needed at byte {at}, {remaining} left")]
    Truncated {
        at: usize,
        needed: usize,
        remaining: usize,
    },
    #[error("replication wire version {0} is not supported (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved bytes at byte {at} are not zero")]
    ReservedNotZero { at: usize },
    #[error("{count} partitions in one frame; at most {max}")]
    TooManyPartitions { count: u32, max: u32 },
    #[error("{count} record ranges at byte {at}; at most {max}")]
    TooManyRanges { at: usize, count: u32, max: u32 },
    #[error("unknown partition answer kind {kind} at byte {at}")]
    UnknownAnswerKind { at: usize, kind: u8 },
    #[error("unknown fetch refusal {code} at byte {at}")]
    UnknownRefusal { at: usize, code: u8 },
    #[error("`{field}` at byte {at} must be 0 in this kind of answer")]
    FieldNotZero { at: usize, field: &'static str },
    #[error("record batch at byte {at}: {source}")]
    BadBatch { at: usize, source: BatchError },
    #[error("record batch of {bytes} bytes at byte {at} is over the {max}-byte limit")]
    BatchTooLarge { at: usize, bytes: usize, max: usize },
    #[error("record batch {base_offset}..={last_offset} of epoch {epoch} does not fit the answer's ranges (epoch@start..end: {ranges})")]
    BatchOutsideRanges {
        base_offset: i64,
        last_offset: i64,
        epoch: i32,
        ranges: String,
    },
    #[error("{count} bytes after the last partition")]
    TrailingBytes { count: usize },
}

// ---------------------------------------------------------------------------
// ReplicaFetch

/// Encodes a fetch body. Every partition's `request.replica` must be the
/// fetching node (the wire carries it once).
pub fn encode_replica_fetch(
    fetch: &ReplicaFetch,
    limits: &WireLimits,
) -> Result<Bytes, EncodeError> {
    let count = check_partition_count(fetch.partitions.len(), limits)?;
    let body_bytes = FETCH_HEADER_BYTES + PARTITION_FETCH_BYTES * fetch.partitions.len();
    if body_bytes > FRAME_BYTES_MAX {
        return Err(EncodeError::TooLarge {
            bytes: body_bytes,
            max: FRAME_BYTES_MAX,
        });
    }
    let mut body = BytesMut::with_capacity(body_bytes);
    body.put_u8(WIRE_VERSION);
    body.put_bytes(0, 3);
    body.put_i32_le(fetch.fetching_node);
    body.put_u64_le(fetch.request_id);
    body.put_u32_le(fetch.max_bytes);
    body.put_u32_le(fetch.max_wait_ms);
    body.put_u32_le(count);
    body.put_bytes(0, 4);
    for PartitionFetch { partition, request } in &fetch.partitions {
        if request.replica != fetch.fetching_node {
            return Err(EncodeError::ReplicaIsNotFetchingNode {
                partition: *partition,
                replica: request.replica,
                fetching_node: fetch.fetching_node,
            });
        }
        put_partition(&mut body, partition);
        body.put_i32_le(request.leader_epoch);
        body.put_i32_le(request.last_fetched_epoch);
        body.put_bytes(0, 4);
        body.put_u64_le(request.fetch_id);
        body.put_i64_le(request.fetch_offset);
        body.put_i64_le(request.durable_offset);
    }
    debug_assert_eq!(body.len(), body_bytes);
    Ok(body.freeze())
}

/// Decodes a fetch body (see the module doc for what is checked).
pub fn decode_replica_fetch(body: &[u8], limits: &WireLimits) -> Result<ReplicaFetch, DecodeError> {
    let mut reader = Reader::new(body);
    reader.version()?;
    reader.reserved::<3>()?;
    let fetching_node = reader.i32()?;
    let request_id = reader.u64()?;
    let max_bytes = reader.u32()?;
    let max_wait_ms = reader.u32()?;
    let count = reader.partition_count(limits)?;
    reader.reserved::<4>()?;
    reader.check_room(count as usize, PARTITION_FETCH_BYTES)?;
    let mut partitions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let partition = reader.partition()?;
        let leader_epoch = reader.i32()?;
        let last_fetched_epoch = reader.i32()?;
        reader.reserved::<4>()?;
        let request = FetchRequest {
            fetch_id: reader.u64()?,
            replica: fetching_node,
            leader_epoch,
            fetch_offset: reader.i64()?,
            last_fetched_epoch,
            durable_offset: reader.i64()?,
        };
        partitions.push(PartitionFetch { partition, request });
    }
    reader.finish()?;
    Ok(ReplicaFetch {
        fetching_node,
        request_id,
        max_bytes,
        max_wait_ms,
        partitions,
    })
}

// ---------------------------------------------------------------------------
// ReplicaFetchAnswer

/// Encodes an answer body; the record chunks become segments of the result
/// without being copied.
pub fn encode_replica_fetch_answer<R: RecordChunk>(
    answer: &ReplicaFetchAnswer<R>,
    limits: &WireLimits,
) -> Result<EncodedBody<R>, EncodeError> {
    let mut fixed = BytesMut::with_capacity(
        ANSWER_HEADER_BYTES + PARTITION_ANSWER_BYTES * answer.partitions.len(),
    );
    let mut segments = Vec::new();
    let body_bytes = encode_answer_into(answer, limits, &mut fixed, |fixed, chunk| {
        if !fixed.is_empty() {
            segments.push(R::from(fixed.split().freeze()));
        }
        segments.push(chunk.clone());
    })?;
    if !fixed.is_empty() {
        segments.push(R::from(fixed.freeze()));
    }
    let encoded = EncodedBody { segments };
    debug_assert_eq!(encoded.len(), body_bytes);
    Ok(encoded)
}

/// Bytes before a spliced answer's metadata: how many bytes the frame CRC
/// covers (u32 LE) and 4 reserved.
pub const SPLICED_PREFIX_BYTES: usize = 8;

/// A `ReplicaFetchAnswerSpliced` body: `covered` (what the frame's CRC32C
/// covers), then the record chunks, which the transport may splice from
/// segment files.
#[derive(Debug, Clone)]
pub struct SplicedBody<R> {
    pub covered: Bytes,
    pub records: Vec<R>,
}

/// Encodes an answer whose record bytes (some of them file regions) go
/// after everything else, outside the frame's CRC, so the transport can
/// splice them from the segment files without reading them:
///
/// | at | bytes | field |
/// |---|---|---|
/// | 0 | 4 | covered bytes, u32 LE: the frame CRC32C covers `[0, covered)` |
/// | 4 | 4 | reserved (0) |
/// | 8 | … | the answer exactly as [`encode_replica_fetch_answer`] lays it out, each partition's record bytes left out (its record-bytes field still counts them) |
/// | covered | … | every partition's record bytes, in partition order |
///
/// What protects the record bytes instead: each batch's own CRC32C, which
/// the follower's storage checks before it appends (`validate_stored_batch`),
/// and, for the header fields that CRC leaves out (base offset, length,
/// leader epoch, magic), the framing checks every answer gets plus
/// [`check_batches_fit_ranges`] against the CRC-covered ranges.
pub fn encode_spliced_answer<R: RecordChunk>(
    answer: &ReplicaFetchAnswer<R>,
    limits: &WireLimits,
) -> Result<SplicedBody<R>, EncodeError> {
    let mut fixed = BytesMut::with_capacity(
        SPLICED_PREFIX_BYTES
            + ANSWER_HEADER_BYTES
            + PARTITION_ANSWER_BYTES * answer.partitions.len(),
    );
    fixed.put_bytes(0, SPLICED_PREFIX_BYTES);
    let mut records = Vec::new();
    let body_bytes = encode_answer_into(answer, limits, &mut fixed, |_, chunk| {
        records.push(chunk.clone());
    })?;
    let total = body_bytes.saturating_add(SPLICED_PREFIX_BYTES);
    if total > FRAME_BYTES_MAX {
        return Err(EncodeError::TooLarge {
            bytes: total,
            max: FRAME_BYTES_MAX,
        });
    }
    // Within FRAME_BYTES_MAX, so within u32.
    let covered = fixed.len() as u32;
    fixed[0..4].copy_from_slice(&covered.to_le_bytes());
    Ok(SplicedBody {
        covered: fixed.freeze(),
        records,
    })
}

/// How many bytes of a `ReplicaFetchAnswerSpliced` body its frame CRC
/// covers, or `None` when the body cannot say (too short, or a count past
/// its end): the transport refuses such a frame.
pub fn spliced_crc_covered(body: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = body.get(0..4)?.try_into().ok()?;
    let covered = u32::from_le_bytes(prefix) as usize;
    (SPLICED_PREFIX_BYTES..=body.len())
        .contains(&covered)
        .then_some(covered)
}

/// Writes the answer header and every partition's fixed part and ranges to
/// `fixed`, handing each record chunk to `on_records` where its bytes
/// belong; returns the body's length counting the record bytes.
fn encode_answer_into<R: RecordChunk>(
    answer: &ReplicaFetchAnswer<R>,
    limits: &WireLimits,
    fixed: &mut BytesMut,
    mut on_records: impl FnMut(&mut BytesMut, &R),
) -> Result<usize, EncodeError> {
    let count = check_partition_count(answer.partitions.len(), limits)?;
    let mut body_bytes = ANSWER_HEADER_BYTES;
    fixed.put_u8(WIRE_VERSION);
    fixed.put_bytes(0, 3);
    fixed.put_u32_le(count);
    fixed.put_u64_le(answer.request_id);
    for partition_answer in &answer.partitions {
        let partition = partition_answer.partition;
        let record_bytes = partition_answer.record_bytes();
        let ranges: &[RecordRange] = match &partition_answer.response.body {
            FetchBody::Records(ranges) => ranges,
            _ if record_bytes > 0 => {
                return Err(EncodeError::RecordBytesWithoutRecords { partition });
            }
            _ => &[],
        };
        if ranges.len() > limits.ranges_per_partition_max as usize {
            return Err(EncodeError::TooManyRanges {
                partition,
                count: ranges.len(),
                max: limits.ranges_per_partition_max,
            });
        }
        body_bytes = body_bytes
            .saturating_add(PARTITION_ANSWER_BYTES + RANGE_BYTES * ranges.len())
            .saturating_add(record_bytes);
        if body_bytes > FRAME_BYTES_MAX {
            return Err(EncodeError::TooLarge {
                bytes: body_bytes,
                max: FRAME_BYTES_MAX,
            });
        }
        // Within FRAME_BYTES_MAX, so within u32 (checked at compile time below).
        put_partition_answer(fixed, partition_answer, ranges, record_bytes as u32);
        for chunk in partition_answer
            .record_batches
            .iter()
            .filter(|chunk| chunk.chunk_len() > 0)
        {
            on_records(fixed, chunk);
        }
    }
    Ok(body_bytes)
}

const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

fn put_partition_answer<R>(
    fixed: &mut BytesMut,
    answer: &PartitionAnswer<R>,
    ranges: &[RecordRange],
    record_bytes: u32,
) {
    let response = &answer.response;
    let (kind, refusal, diverging_epoch, diverging_end_offset) = match &response.body {
        FetchBody::Records(_) => (KIND_RECORDS, 0, 0, answer.leader_log_start.max(0)),
        FetchBody::Diverging { epoch, end_offset } => (KIND_DIVERGING, 0, *epoch, *end_offset),
        FetchBody::Refused(refusal) => (KIND_REFUSED, refusal_code(*refusal), 0, 0),
        FetchBody::OutOfRange { log_start } => (KIND_OUT_OF_RANGE, 0, 0, *log_start),
    };
    put_partition(fixed, &answer.partition);
    fixed.put_u8(kind);
    fixed.put_u8(refusal);
    fixed.put_bytes(0, 2);
    fixed.put_i32_le(response.leader);
    fixed.put_i32_le(response.leader_epoch);
    fixed.put_i32_le(response.last_fetched_epoch);
    fixed.put_i32_le(diverging_epoch);
    fixed.put_u64_le(response.fetch_id);
    fixed.put_i64_le(response.fetch_offset);
    fixed.put_i64_le(response.high_watermark);
    fixed.put_i64_le(diverging_end_offset);
    fixed.put_u32_le(ranges.len() as u32);
    fixed.put_u32_le(record_bytes);
    for range in ranges {
        fixed.put_i32_le(range.epoch);
        fixed.put_bytes(0, 4);
        fixed.put_i64_le(range.start);
        fixed.put_i64_le(range.end);
    }
}

/// Decodes an answer body. `body` is the frame body as received (a
/// `Vec<u8>` becomes one with `Bytes::from`, without copying); the record
/// batches returned are slices of it.
pub fn decode_replica_fetch_answer(
    body: &Bytes,
    limits: &WireLimits,
) -> Result<ReplicaFetchAnswer, DecodeError> {
    let mut reader = Reader::new(body);
    decode_answer_from(&mut reader, None, body, limits)
}

/// Decodes a `ReplicaFetchAnswerSpliced` body ([`encode_spliced_answer`]);
/// the frame's CRC covered its first [`spliced_crc_covered`] bytes. Besides
/// everything [`decode_replica_fetch_answer`] checks, every partition's
/// batches must fit its ranges ([`check_batches_fit_ranges`]): that, with
/// each batch's own CRC32C checked on append, stands in for the frame CRC
/// over the record bytes.
pub fn decode_spliced_answer(
    body: &Bytes,
    limits: &WireLimits,
) -> Result<ReplicaFetchAnswer, DecodeError> {
    let covered = spliced_crc_covered(body).ok_or(DecodeError::Truncated {
        at: 0,
        needed: SPLICED_PREFIX_BYTES,
        remaining: body.len(),
    })?;
    let mut metadata = Reader::new(&body[..covered]);
    metadata.take(4)?;
    metadata.reserved::<4>()?;
    let mut records = Reader {
        body,
        position: covered,
    };
    let answer = decode_answer_from(&mut metadata, Some(&mut records), body, limits)?;
    records.finish()?;
    for partition in &answer.partitions {
        if let FetchBody::Records(ranges) = &partition.response.body {
            check_batches_fit_ranges(ranges, &partition.record_batches)?;
        }
    }
    Ok(answer)
}

/// The answer header and partitions from `reader`; each partition's record
/// bytes from `records` when given (a spliced body keeps them after
/// everything else), else from where they lie in `reader`.
fn decode_answer_from<'body>(
    reader: &mut Reader<'body>,
    mut records: Option<&mut Reader<'body>>,
    body: &Bytes,
    limits: &WireLimits,
) -> Result<ReplicaFetchAnswer, DecodeError> {
    reader.version()?;
    reader.reserved::<3>()?;
    let count = reader.partition_count(limits)?;
    let request_id = reader.u64()?;
    reader.check_room(count as usize, PARTITION_ANSWER_BYTES)?;
    let mut partitions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        partitions.push(decode_partition_answer(
            reader,
            records.as_deref_mut(),
            body,
            limits,
        )?);
    }
    reader.finish()?;
    Ok(ReplicaFetchAnswer {
        request_id,
        partitions,
    })
}

/// Checks what a batch's own CRC32C leaves out against the answer's
/// ranges: batches in offset order without overlap, each one's last offset
/// inside a range (the first batch may start before the first range: a
/// read returns the whole batch holding the fetch offset) and its leader
/// epoch that range's epoch, and nothing past the last range's end.
pub fn check_batches_fit_ranges(
    ranges: &[RecordRange],
    batches: &[Bytes],
) -> Result<(), DecodeError> {
    let mut after: Option<i64> = None;
    for batch in batches {
        let header =
            BatchHeader::parse(batch).map_err(|source| DecodeError::BadBatch { at: 0, source })?;
        let last = header.last_offset();
        let in_order = after.is_none_or(|previous| header.base_offset > previous);
        let range = ranges
            .iter()
            .find(|range| range.start <= last && last < range.end);
        let fits = in_order
            && header.base_offset <= last
            && range.is_some_and(|range| range.epoch == header.partition_leader_epoch);
        if !fits {
            return Err(DecodeError::BatchOutsideRanges {
                base_offset: header.base_offset,
                last_offset: last,
                epoch: header.partition_leader_epoch,
                ranges: ranges
                    .iter()
                    .map(|range| format!("{}@{}..{}", range.epoch, range.start, range.end))
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        after = Some(last);
    }
    Ok(())
}

fn decode_partition_answer<'body>(
    reader: &mut Reader<'body>,
    records: Option<&mut Reader<'body>>,
    body: &Bytes,
    limits: &WireLimits,
) -> Result<PartitionAnswer, DecodeError> {
    let partition = reader.partition()?;
    let kind_at = reader.position;
    let kind = reader.u8()?;
    let refusal_at = reader.position;
    let refusal = reader.u8()?;
    reader.reserved::<2>()?;
    let leader = reader.i32()?;
    let leader_epoch = reader.i32()?;
    let last_fetched_epoch = reader.i32()?;
    let diverging_epoch_at = reader.position;
    let diverging_epoch = reader.i32()?;
    let fetch_id = reader.u64()?;
    let fetch_offset = reader.i64()?;
    let high_watermark = reader.i64()?;
    let diverging_end_at = reader.position;
    let diverging_end_offset = reader.i64()?;
    let range_count_at = reader.position;
    let range_count = reader.u32()?;
    let record_bytes_at = reader.position;
    let record_bytes = reader.u32()? as usize;

    let zero = |value: i64, at: usize, field: &'static str| {
        if value == 0 {
            Ok(())
        } else {
            Err(DecodeError::FieldNotZero { at, field })
        }
    };
    if kind != KIND_REFUSED {
        zero(i64::from(refusal), refusal_at, "refusal")?;
    }
    if kind != KIND_DIVERGING {
        zero(
            i64::from(diverging_epoch),
            diverging_epoch_at,
            "diverging epoch",
        )?;
    }
    if kind == KIND_REFUSED {
        zero(
            diverging_end_offset,
            diverging_end_at,
            "diverging end offset",
        )?;
    }
    let mut record_batches = Vec::new();
    let mut leader_log_start = 0;
    let body_kind = match kind {
        KIND_RECORDS => {
            let ranges = decode_ranges(reader, range_count, range_count_at, limits)?;
            let records = match records {
                Some(records) => records,
                None => reader,
            };
            let region_at = records.position;
            records.take(record_bytes)?;
            let region = body.slice(region_at..region_at + record_bytes);
            record_batches = split_batches(&region, region_at, limits)?;
            leader_log_start = diverging_end_offset.max(0);
            FetchBody::Records(ranges)
        }
        KIND_DIVERGING | KIND_REFUSED | KIND_OUT_OF_RANGE => {
            zero(i64::from(range_count), range_count_at, "range count")?;
            zero(record_bytes as i64, record_bytes_at, "record bytes")?;
            if kind == KIND_DIVERGING {
                FetchBody::Diverging {
                    epoch: diverging_epoch,
                    end_offset: diverging_end_offset,
                }
            } else if kind == KIND_OUT_OF_RANGE {
                FetchBody::OutOfRange {
                    log_start: diverging_end_offset,
                }
            } else {
                let refusal = refusal_from_code(refusal).ok_or(DecodeError::UnknownRefusal {
                    at: refusal_at,
                    code: refusal,
                })?;
                FetchBody::Refused(refusal)
            }
        }
        _ => return Err(DecodeError::UnknownAnswerKind { at: kind_at, kind }),
    };
    Ok(PartitionAnswer {
        partition,
        response: FetchResponse {
            fetch_id,
            leader,
            leader_epoch,
            fetch_offset,
            last_fetched_epoch,
            high_watermark,
            body: body_kind,
        },
        leader_log_start,
        record_batches,
    })
}

fn decode_ranges(
    reader: &mut Reader<'_>,
    range_count: u32,
    range_count_at: usize,
    limits: &WireLimits,
) -> Result<Vec<RecordRange>, DecodeError> {
    if range_count > limits.ranges_per_partition_max {
        return Err(DecodeError::TooManyRanges {
            at: range_count_at,
            count: range_count,
            max: limits.ranges_per_partition_max,
        });
    }
    reader.check_room(range_count as usize, RANGE_BYTES)?;
    let mut ranges = Vec::with_capacity(range_count as usize);
    for _ in 0..range_count {
        let epoch = reader.i32()?;
        reader.reserved::<4>()?;
        let start = reader.i64()?;
        let end = reader.i64()?;
        ranges.push(RecordRange { epoch, start, end });
    }
    Ok(ranges)
}

/// Splits a region of record bytes into its batches, checking framing only
/// (see the module doc: the CRC is storage's to check).
fn split_batches(
    region: &Bytes,
    region_at: usize,
    limits: &WireLimits,
) -> Result<Vec<Bytes>, DecodeError> {
    let mut batches = Vec::new();
    let mut position = 0;
    while position < region.len() {
        let at = region_at + position;
        let rest = &region[position..];
        let header =
            BatchHeader::parse(rest).map_err(|source| DecodeError::BadBatch { at, source })?;
        header
            .check_shape(rest.len())
            .map_err(|source| DecodeError::BadBatch { at, source })?;
        let batch_bytes = header.total_bytes();
        if batch_bytes > limits.batch_bytes_max {
            return Err(DecodeError::BatchTooLarge {
                at,
                bytes: batch_bytes,
                max: limits.batch_bytes_max,
            });
        }
        batches.push(region.slice(position..position + batch_bytes));
        position += batch_bytes;
    }
    Ok(batches)
}

// ---------------------------------------------------------------------------
// ReplicaRepair / ReplicaRepairAnswer

/// A `ReplicaRepair` body: [`REPAIR_REQUEST_BYTES`].
pub const REPAIR_REQUEST_BYTES: usize = 48;
/// The fixed part of a `ReplicaRepairAnswer` body (the batch follows).
pub const REPAIR_ANSWER_HEADER_BYTES: usize = 32;
const _: () = assert!(REPAIR_REQUEST_BYTES == 1 + 3 + 8 + TOPIC_ID_BYTES + 4 + 4 + 8 + 4);
const _: () = assert!(REPAIR_ANSWER_HEADER_BYTES == 1 + 1 + 2 + 4 + 8 + TOPIC_ID_BYTES);

/// A replica with a damaged batch asks another replica for its copy: the
/// batch starting at `offset`, written in `epoch` (`NO_EPOCH`: unknown).
/// Rare (bit rot), so one partition per frame.
///
/// | at | bytes | field |
/// |---|---|---|
/// | 0 | 1 | version |
/// | 1 | 3 | reserved (0) |
/// | 4 | 8 | request id, u64 (echoed) |
/// | 12 | 16 | topic id |
/// | 28 | 4 | partition index, i32 |
/// | 32 | 4 | epoch, i32 |
/// | 36 | 8 | offset, i64 |
/// | 44 | 4 | reserved (0) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairRequest {
    pub request_id: u64,
    pub partition: ReplicaPartition,
    pub epoch: i32,
    pub offset: i64,
}

/// The answer: the whole batch starting at the asked offset, exactly as
/// stored, or none (`batch` empty: not held, or damaged here too).
///
/// | at | bytes | field |
/// |---|---|---|
/// | 0 | 1 | version |
/// | 1 | 1 | has batch: 0 or 1 |
/// | 2 | 2 | reserved (0) |
/// | 4 | 4 | partition index, i32 |
/// | 8 | 8 | request id, u64 |
/// | 16 | 16 | topic id |
/// | 32 | … | the batch (Kafka v2, whole), when there is one |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairAnswer {
    pub request_id: u64,
    pub partition: ReplicaPartition,
    pub batch: Option<Bytes>,
}

pub fn encode_repair_request(request: &RepairRequest) -> Bytes {
    let mut body = BytesMut::with_capacity(REPAIR_REQUEST_BYTES);
    body.put_u8(WIRE_VERSION);
    body.put_bytes(0, 3);
    body.put_u64_le(request.request_id);
    put_partition(&mut body, &request.partition);
    body.put_i32_le(request.epoch);
    body.put_i64_le(request.offset);
    body.put_bytes(0, 4);
    debug_assert_eq!(body.len(), REPAIR_REQUEST_BYTES);
    body.freeze()
}

pub fn decode_repair_request(body: &[u8]) -> Result<RepairRequest, DecodeError> {
    let mut reader = Reader::new(body);
    reader.version()?;
    reader.reserved::<3>()?;
    let request_id = reader.u64()?;
    let partition = reader.partition()?;
    let epoch = reader.i32()?;
    let offset = reader.i64()?;
    reader.reserved::<4>()?;
    reader.finish()?;
    Ok(RepairRequest {
        request_id,
        partition,
        epoch,
        offset,
    })
}

/// The answer's fixed part; the batch (if any) is sent after it as is.
pub fn encode_repair_answer_header(answer: &RepairAnswer) -> Bytes {
    let mut body = BytesMut::with_capacity(REPAIR_ANSWER_HEADER_BYTES);
    body.put_u8(WIRE_VERSION);
    body.put_u8(u8::from(answer.batch.is_some()));
    body.put_bytes(0, 2);
    body.put_i32_le(answer.partition.partition_index);
    body.put_u64_le(answer.request_id);
    body.put_slice(answer.partition.topic_id.as_bytes());
    body.freeze()
}

/// Decodes an answer; the batch is a slice of `body`, checked for framing
/// (exactly one whole batch within the cap), not for its CRC (the repairing
/// log checks that before writing).
pub fn decode_repair_answer(
    body: &Bytes,
    limits: &WireLimits,
) -> Result<RepairAnswer, DecodeError> {
    let mut reader = Reader::new(body);
    reader.version()?;
    let has_batch_at = reader.position;
    let has_batch = reader.u8()?;
    reader.reserved::<2>()?;
    let partition_index = reader.i32()?;
    let request_id = reader.u64()?;
    let topic_id = Uuid::from_bytes(reader.array::<TOPIC_ID_BYTES>()?);
    let partition = ReplicaPartition {
        topic_id,
        partition_index,
    };
    let batch = match has_batch {
        0 => {
            reader.finish()?;
            None
        }
        1 => {
            let at = reader.position;
            let region = body.slice(at..);
            let mut batches = split_batches(&region, at, limits)?;
            if batches.len() != 1 {
                return Err(DecodeError::FieldNotZero {
                    at,
                    field: "batches after the first",
                });
            }
            batches.pop()
        }
        _ => {
            return Err(DecodeError::FieldNotZero {
                at: has_batch_at,
                field: "has batch (0 or 1)",
            })
        }
    };
    Ok(RepairAnswer {
        request_id,
        partition,
        batch,
    })
}

// ---------------------------------------------------------------------------
// Shared pieces

fn check_partition_count(count: usize, limits: &WireLimits) -> Result<u32, EncodeError> {
    match u32::try_from(count) {
        Ok(count) if count <= limits.partitions_per_frame_max => Ok(count),
        _ => Err(EncodeError::TooManyPartitions {
            count,
            max: limits.partitions_per_frame_max,
        }),
    }
}

fn put_partition(body: &mut BytesMut, partition: &ReplicaPartition) {
    body.put_slice(partition.topic_id.as_bytes());
    body.put_i32_le(partition.partition_index);
}

/// Wire codes of refusals: fixed forever (a code never changes meaning).
fn refusal_code(refusal: FetchRefusal) -> u8 {
    match refusal {
        FetchRefusal::NotLeader => 1,
        FetchRefusal::FencedLeaderEpoch => 2,
        FetchRefusal::UnknownLeaderEpoch => 3,
        FetchRefusal::NotAReplica => 4,
        FetchRefusal::Malformed => 5,
    }
}

fn refusal_from_code(code: u8) -> Option<FetchRefusal> {
    match code {
        1 => Some(FetchRefusal::NotLeader),
        2 => Some(FetchRefusal::FencedLeaderEpoch),
        3 => Some(FetchRefusal::UnknownLeaderEpoch),
        4 => Some(FetchRefusal::NotAReplica),
        5 => Some(FetchRefusal::Malformed),
        _ => None,
    }
}

/// A cursor over a body that never reads past its end: every read checks
/// the bytes left first and says where it failed.
struct Reader<'body> {
    body: &'body [u8],
    position: usize,
}

impl<'body> Reader<'body> {
    fn new(body: &'body [u8]) -> Self {
        Self { body, position: 0 }
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.position
    }

    fn take(&mut self, count: usize) -> Result<&'body [u8], DecodeError> {
        if count > self.remaining() {
            return Err(DecodeError::Truncated {
                at: self.position,
                needed: count,
                remaining: self.remaining(),
            });
        }
        let taken = &self.body[self.position..self.position + count];
        self.position += count;
        Ok(taken)
    }

    /// Refuses `count` items of at least `item_bytes` each when the bytes
    /// left cannot hold them, before anything is allocated for them.
    fn check_room(&self, count: usize, item_bytes: usize) -> Result<(), DecodeError> {
        let needed = count.saturating_mul(item_bytes);
        if needed > self.remaining() {
            return Err(DecodeError::Truncated {
                at: self.position,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn reserved<const N: usize>(&mut self) -> Result<(), DecodeError> {
        let at = self.position;
        if self.array::<N>()? != [0u8; N] {
            return Err(DecodeError::ReservedNotZero { at });
        }
        Ok(())
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            WIRE_VERSION => Ok(()),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }

    fn partition_count(&mut self, limits: &WireLimits) -> Result<u32, DecodeError> {
        let count = self.u32()?;
        if count > limits.partitions_per_frame_max {
            return Err(DecodeError::TooManyPartitions {
                count,
                max: limits.partitions_per_frame_max,
            });
        }
        Ok(count)
    }

    fn partition(&mut self) -> Result<ReplicaPartition, DecodeError> {
        let topic_id = Uuid::from_bytes(self.array::<TOPIC_ID_BYTES>()?);
        let partition_index = self.i32()?;
        Ok(ReplicaPartition {
            topic_id,
            partition_index,
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

#[cfg(test)]
mod tests;
