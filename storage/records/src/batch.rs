//! The Kafka RecordBatch v2 *header*: parsing, validation and the in-place
//! patches the log makes (base offset, leader epoch, log-append time).
//!
//! Layout (all big-endian), as Kafka defines it:
//!
//! ```text
//!  0 baseOffset i64        8 batchLength i32      12 partitionLeaderEpoch i32
//! 16 magic i8             17 crc u32             21 attributes i16
//! 23 lastOffsetDelta i32  27 baseTimestamp i64   35 maxTimestamp i64
//! 43 producerId i64       51 producerEpoch i16   53 baseSequence i32
//! 57 recordsCount i32     61 records...
//! ```
//!
//! The CRC32C covers bytes `[21, 12 + batchLength)`: everything from the
//! attributes on. Base offset, length and leader epoch lie outside it, which is
//! why the log can assign offsets and epochs without recomputing it.
//! Individual records are never decoded here.

use bytes::{BufMut, Bytes, BytesMut};

use crate::BatchError;

/// Size of the fixed batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `batchLength` counts the bytes after the length field itself.
pub const LENGTH_FIELD_END: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - LENGTH_FIELD_END) as i32;
/// First byte covered by the CRC.
pub const CRC_START: usize = 21;

const OFFSET_BASE: usize = 0;
const OFFSET_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_PRODUCER_ID: usize = 43;
const OFFSET_PRODUCER_EPOCH: usize = 51;
const OFFSET_BASE_SEQUENCE: usize = 53;
const OFFSET_RECORDS_COUNT: usize = 57;

const _: () = assert!(OFFSET_RECORDS_COUNT + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(OFFSET_ATTRIBUTES == CRC_START);

/// Attribute bit: timestamps are log-append time, not create time.
pub const ATTRIBUTE_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit: the batch belongs to a transaction.
pub const ATTRIBUTE_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit: the batch is a control batch (commit/abort marker).
pub const ATTRIBUTE_CONTROL: i16 = 1 << 5;
/// Attribute bit (KIP-534): the base timestamp is the batch's delete
/// horizon, the time after which the log cleaner may remove it (set on
/// transaction markers whose transaction has no data left).
pub const ATTRIBUTE_DELETE_HORIZON: i16 = 1 << 6;

/// The decoded fixed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the length field; the whole batch is `batch_length + 12`.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(raw)
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

impl BatchHeader {
    /// Parses the fixed header from the first 61 bytes of `bytes`. Checks only
    /// that enough bytes are present; see [`validate_batch`] for the rest.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_BYTES,
                present: bytes.len(),
            });
        }
        Ok(Self {
            base_offset: read_i64(bytes, OFFSET_BASE),
            batch_length: read_i32(bytes, OFFSET_LENGTH),
            partition_leader_epoch: read_i32(bytes, OFFSET_LEADER_EPOCH),
            magic: bytes[OFFSET_MAGIC] as i8,
            crc: read_i32(bytes, OFFSET_CRC) as u32,
            attributes: read_i16(bytes, OFFSET_ATTRIBUTES),
            last_offset_delta: read_i32(bytes, OFFSET_LAST_DELTA),
            base_timestamp: read_i64(bytes, OFFSET_BASE_TIMESTAMP),
            max_timestamp: read_i64(bytes, OFFSET_MAX_TIMESTAMP),
            producer_id: read_i64(bytes, OFFSET_PRODUCER_ID),
            producer_epoch: read_i16(bytes, OFFSET_PRODUCER_EPOCH),
            base_sequence: read_i32(bytes, OFFSET_BASE_SEQUENCE),
            records_count: read_i32(bytes, OFFSET_RECORDS_COUNT),
        })
    }

    /// Total size of the batch on the wire and on disk.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + LENGTH_FIELD_END
    }

    /// Offset of the last record: base offset plus the last offset delta.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    /// The delete horizon (ms since the epoch) a cleaner set on this batch
    /// (KIP-534), if any.
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & ATTRIBUTE_DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// Checks that do not need the CRC: magic, length bounds against the bytes
    /// available, and a non-negative last offset delta.
    pub fn check_shape(&self, bytes_available: usize) -> Result<(), BatchError> {
        if self.magic != 2 {
            return Err(BatchError::UnsupportedMagic(self.magic));
        }
        if self.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::BadLength(self.batch_length));
        }
        if self.total_bytes() > bytes_available {
            return Err(BatchError::Truncated {
                needed: self.total_bytes(),
                present: bytes_available,
            });
        }
        if self.last_offset_delta < 0 {
            return Err(BatchError::BadRecordCount {
                records_count: self.records_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        Ok(())
    }
}

/// CRC32C of a whole batch (`bytes` is exactly one batch).
pub fn compute_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(&bytes[CRC_START..])
}

/// Validates one batch as a producer sent it: `bytes` must hold exactly one
/// batch. Checks magic, length, CRC32C and that the record count matches the
/// last offset delta (a producer never sends a compacted batch).
pub fn validate_producer_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    header.check_shape(bytes.len())?;
    if header.total_bytes() != bytes.len() {
        return Err(BatchError::TrailingBytes {
            batch_bytes: header.total_bytes(),
            buffer_bytes: bytes.len(),
        });
    }
    if header.records_count < 1 || header.records_count != header.last_offset_delta + 1 {
        return Err(BatchError::BadRecordCount {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = compute_crc(bytes);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Validates a stored batch found at the start of `bytes` (which may continue
/// with more batches): shape and CRC. Record count may be smaller than the
/// offset span (compaction removes records but keeps the span).
pub fn validate_stored_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    header.check_shape(bytes.len())?;
    if header.records_count < 0 || header.records_count > header.last_offset_delta + 1 {
        return Err(BatchError::BadRecordCount {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    let computed = compute_crc(&bytes[..header.total_bytes()]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Returns a copy of the 61-byte header with the base offset and leader epoch
/// set. Both lie outside the CRC range, so the CRC stays valid.
pub fn patched_header(original: &[u8], base_offset: i64, leader_epoch: i32) -> BytesMut {
    let mut header = BytesMut::with_capacity(BATCH_HEADER_BYTES);
    header.put_slice(&original[..BATCH_HEADER_BYTES]);
    header[OFFSET_BASE..OFFSET_BASE + 8].copy_from_slice(&base_offset.to_be_bytes());
    header[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
    header
}

/// Turns a patched header into a log-append-time header: sets the timestamp
/// type attribute and the max timestamp, then recomputes the CRC over the new
/// header bytes and the unchanged `body` (the bytes after the header).
pub fn apply_log_append_time(header: &mut BytesMut, body: &[u8], append_time_ms: i64) {
    let attributes = read_i16(header, OFFSET_ATTRIBUTES) | ATTRIBUTE_LOG_APPEND_TIME;
    header[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    header[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8]
        .copy_from_slice(&append_time_ms.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[CRC_START..]), body);
    header[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A record's key and value for the batch builders (`None` is null).
pub type KeyValueRef<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Builds a valid uncompressed batch of key-less records with the given
/// values. Used by tests and the storage benchmark.
pub fn build_batch(base_timestamp_ms: i64, values: &[&[u8]]) -> Bytes {
    let records: Vec<KeyValueRef<'_>> = values.iter().map(|value| (None, Some(*value))).collect();
    build_keyed_batch(base_timestamp_ms, &records)
}

/// Builds a valid uncompressed batch of `(key, value)` records (`None` is
/// null: a value of `None` is a tombstone), all stamped `base_timestamp_ms`.
/// Producers' batches are stored as sent; the broker builds batches only for
/// its internal topics (`__consumer_offsets`).
pub fn build_keyed_batch(base_timestamp_ms: i64, records: &[KeyValueRef<'_>]) -> Bytes {
    let mut body = BytesMut::new();
    for (index, (key, value)) in records.iter().enumerate() {
        let mut record = BytesMut::new();
        record.put_u8(0); // attributes
        put_varint(&mut record, 0); // timestamp delta
        put_varint(&mut record, index as i64); // offset delta
        for field in [key, value] {
            match field {
                Some(bytes) => {
                    put_varint(&mut record, bytes.len() as i64);
                    record.put_slice(bytes);
                }
                None => put_varint(&mut record, -1),
            }
        }
        put_varint(&mut record, 0); // header count
        put_varint(&mut body, record.len() as i64);
        body.put_slice(&record);
    }
    let record_count = records.len() as i32;
    let mut batch = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    batch.put_i64(0);
    batch.put_i32((BATCH_HEADER_BYTES - LENGTH_FIELD_END + body.len()) as i32);
    batch.put_i32(-1);
    batch.put_i8(2);
    batch.put_u32(0); // CRC, filled below
    batch.put_i16(0);
    batch.put_i32(record_count - 1);
    batch.put_i64(base_timestamp_ms);
    batch.put_i64(base_timestamp_ms);
    batch.put_i64(-1);
    batch.put_i16(-1);
    batch.put_i32(-1);
    batch.put_i32(record_count);
    batch.put_slice(&body);
    let crc = compute_crc(&batch);
    batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// Appends a zig-zag varint (Kafka's record-field encoding).
pub fn put_varint(buffer: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buffer.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buffer.put_u8(zigzag as u8);
}

/// Reads a zig-zag varint (at most 10 bytes) and advances `cursor`; `None`
/// when the bytes end first or the varint is longer than 10 bytes.
pub fn read_varint(cursor: &mut &[u8]) -> Option<i64> {
    let mut value: u64 = 0;
    for (index, byte) in cursor.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *cursor = &cursor[index + 1..];
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_parses() {
        let batch = build_batch(1_000, &[b"a".as_slice(), b"bc", b"def"]);
        let header = validate_producer_batch(&batch).expect("valid batch");
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.total_bytes(), batch.len());
        assert_eq!(header.max_timestamp, 1_000);
    }

    #[test]
    fn crc_flip_is_detected_everywhere_in_crc_range() {
        let batch = build_batch(5, &[b"hello world".as_slice()]);
        for position in CRC_START..batch.len() {
            let mut damaged = batch.to_vec();
            damaged[position] ^= 0x40;
            assert!(
                validate_producer_batch(&damaged).is_err(),
                "flip at {position} not detected"
            );
        }
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc_valid() {
        let batch = build_batch(5, &[b"x".as_slice(); 4]);
        let mut patched = patched_header(&batch, 1234, 7);
        patched.extend_from_slice(&batch[BATCH_HEADER_BYTES..]);
        let header = validate_stored_batch(&patched).expect("still valid");
        assert_eq!(header.base_offset, 1234);
        assert_eq!(header.partition_leader_epoch, 7);
        assert_eq!(header.last_offset(), 1237);
    }

    #[test]
    fn log_append_time_recomputes_crc() {
        let batch = build_batch(5, &[b"x".as_slice(), b"y"]);
        let mut header = patched_header(&batch, 0, 0);
        apply_log_append_time(&mut header, &batch[BATCH_HEADER_BYTES..], 99_999);
        let mut whole = header.clone();
        whole.extend_from_slice(&batch[BATCH_HEADER_BYTES..]);
        let parsed = validate_stored_batch(&whole).expect("crc recomputed");
        assert_eq!(parsed.max_timestamp, 99_999);
        assert_ne!(parsed.attributes & ATTRIBUTE_LOG_APPEND_TIME, 0);
    }

    #[test]
    fn shape_errors() {
        let batch = build_batch(5, &[b"x".as_slice()]);
        assert!(matches!(
            validate_producer_batch(&batch[..30]),
            Err(BatchError::Truncated { .. })
        ));
        let mut wrong_magic = batch.to_vec();
        wrong_magic[OFFSET_MAGIC] = 1;
        assert!(matches!(
            validate_producer_batch(&wrong_magic),
            Err(BatchError::UnsupportedMagic(1))
        ));
        let mut negative_length = batch.to_vec();
        negative_length[OFFSET_LENGTH..OFFSET_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_producer_batch(&negative_length),
            Err(BatchError::BadLength(-5))
        ));
        let mut extra = batch.to_vec();
        extra.push(0);
        assert!(matches!(
            validate_producer_batch(&extra),
            Err(BatchError::TrailingBytes { .. })
        ));
        let mut bad_count = batch.to_vec();
        bad_count[OFFSET_RECORDS_COUNT..OFFSET_RECORDS_COUNT + 4]
            .copy_from_slice(&7i32.to_be_bytes());
        assert!(matches!(
            validate_producer_batch(&bad_count),
            Err(BatchError::BadRecordCount { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = validate_producer_batch(&bytes);
            let _ = validate_stored_batch(&bytes);
        }
    }
}
