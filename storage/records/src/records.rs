//! Individual records inside a v2 batch: decoding (bounded, never trusting
//! a length beyond the bytes present), encoding, and assembling whole
//! batches (header, optional compression, CRC32C).
//!
//! Record layout (Kafka's, lengths are zig-zag varints, `-1` is null):
//!
//! ```text
//! length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//! keyLength varint | key | valueLength varint | value
//! headerCount varint | (headerKeyLength varint | key | headerValueLength varint | value)*
//! ```
//!
//! The log never calls this on the produce or fetch hot path (it stores
//! batches as sent). Users: compaction (keys), exact timestamp lookup inside a
//! batch, the broker's internal topics, and the client side (bench, tools).

use crate::batch::{compute_crc, read_varint, BatchHeader, BATCH_HEADER_BYTES, LENGTH_FIELD_END};
use crate::compression::{self, Compression, CompressionError};

/// Why a records section does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record {index}: {reason}")]
    Malformed { index: usize, reason: &'static str },
    #[error("batch: {0}")]
    Batch(#[from] crate::BatchError),
    #[error(transparent)]
    Compression(#[from] CompressionError),
}

/// One decoded record, borrowing from the records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    header_count: usize,
    headers_raw: &'a [u8],
    /// The record as encoded in the section, length prefix included: the
    /// cleaner copies kept records byte for byte into a rewritten batch.
    pub encoded: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's headers as `(key, value)`; already validated while decoding.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let mut cursor = self.headers_raw;
        (0..self.header_count).map_while(move |_| {
            let key = read_bytes(&mut cursor).ok()??;
            let value = read_bytes(&mut cursor).ok()?;
            Some((key, value))
        })
    }

    pub fn header_count(&self) -> usize {
        self.header_count
    }
}

/// Reads a varint-length-prefixed byte string (`None` for length -1).
fn read_bytes<'a>(cursor: &mut &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    let length = read_varint(cursor).ok_or("truncated length")?;
    if length == -1 {
        return Ok(None);
    }
    let length = usize::try_from(length).map_err(|_| "negative length")?;
    if length > cursor.len() {
        return Err("length beyond the record");
    }
    let (bytes, rest) = cursor.split_at(length);
    *cursor = rest;
    Ok(Some(bytes))
}

fn decode_record(record: &[u8]) -> Result<Record<'_>, &'static str> {
    let (&attributes, mut cursor) = record.split_first().ok_or("empty record")?;
    let timestamp_delta = read_varint(&mut cursor).ok_or("truncated timestamp delta")?;
    let offset_delta = read_varint(&mut cursor).ok_or("truncated offset delta")?;
    let offset_delta = i32::try_from(offset_delta).map_err(|_| "offset delta out of range")?;
    let key = read_bytes(&mut cursor)?;
    let value = read_bytes(&mut cursor)?;
    let header_count = read_varint(&mut cursor).ok_or("truncated header count")?;
    let header_count = usize::try_from(header_count).map_err(|_| "negative header count")?;
    let headers_raw = cursor;
    // Each header needs at least two bytes: bound the loop by the bytes left.
    if header_count > headers_raw.len() / 2 {
        return Err("header count beyond the record");
    }
    for _ in 0..header_count {
        read_bytes(&mut cursor)?.ok_or("null header key")?;
        read_bytes(&mut cursor)?;
    }
    if !cursor.is_empty() {
        return Err("bytes after the headers");
    }
    Ok(Record {
        attributes: attributes as i8,
        timestamp_delta,
        offset_delta,
        key,
        value,
        header_count,
        headers_raw,
        encoded: record,
    })
}

/// Iterates the records of an (uncompressed) records section.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    remaining: usize,
    index: usize,
}

/// The records of `section`, expecting `count` of them (a batch's
/// `recordsCount`). Yields an error and stops at the first malformed one.
pub fn records(section: &[u8], count: i32) -> Records<'_> {
    Records {
        rest: section,
        remaining: usize::try_from(count).unwrap_or(0),
        index: 0,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let index = self.index;
        self.index += 1;
        let malformed = |reason| Some(Err(RecordError::Malformed { index, reason }));
        let start = self.rest;
        let Some(length) = read_varint(&mut self.rest) else {
            self.remaining = 0;
            return malformed("truncated record length");
        };
        let Ok(length) = usize::try_from(length) else {
            self.remaining = 0;
            return malformed("negative record length");
        };
        if length > self.rest.len() {
            self.remaining = 0;
            return malformed("record length beyond the batch");
        }
        let (record, rest) = self.rest.split_at(length);
        self.rest = rest;
        let encoded = &start[..start.len() - rest.len()];
        match decode_record(record) {
            Ok(record) => Some(Ok(Record { encoded, ..record })),
            Err(reason) => {
                self.remaining = 0;
                malformed(reason)
            }
        }
    }
}

/// The uncompressed records section of `batch` (one whole batch, header
/// included), decompressing at most `limit` bytes. Borrows when the batch
/// is not compressed.
pub fn batch_records(
    batch: &[u8],
    limit: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let section = &batch[BATCH_HEADER_BYTES..header.total_bytes()];
    match Compression::from_attributes(header.attributes)? {
        Compression::None => Ok(std::borrow::Cow::Borrowed(section)),
        codec => Ok(std::borrow::Cow::Owned(compression::decompress(
            codec, section, limit,
        )?)),
    }
}

/// The index of the first record without a key in the batch at the start
/// of `batch`, decompressing at most `limit` bytes; `Ok(None)` when every
/// record has one. A compacted topic refuses such batches (Kafka: "Compacted
/// topic cannot accept message without key"), so the broker calls this for
/// compacted topics only, off the path of every other topic.
pub fn first_keyless_record(batch: &[u8], limit: usize) -> Result<Option<usize>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let section = batch_records(&batch[..header.total_bytes()], limit)?;
    for (index, record) in records(&section, header.records_count).enumerate() {
        if record?.key.is_none() {
            return Ok(Some(index));
        }
    }
    Ok(None)
}

/// Length of a zig-zag varint.
pub fn varint_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - zigzag.max(1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends a zig-zag varint to a `Vec`.
pub fn push_varint(output: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        output.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    output.push(zigzag as u8);
}

fn bytes_len(field: Option<&[u8]>) -> usize {
    match field {
        Some(bytes) => varint_len(bytes.len() as i64) + bytes.len(),
        None => 1,
    }
}

fn push_bytes(output: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(bytes) => {
            push_varint(output, bytes.len() as i64);
            output.extend_from_slice(bytes);
        }
        None => push_varint(output, -1),
    }
}

/// A record to encode.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Appends one encoded record (length prefix included) to `output`.
pub fn encode_record(output: &mut Vec<u8>, record: &NewRecord<'_>) {
    let headers_len: usize = record
        .headers
        .iter()
        .map(|(key, value)| bytes_len(Some(key)) + bytes_len(*value))
        .sum();
    let body_len = 1
        + varint_len(record.timestamp_delta)
        + varint_len(i64::from(record.offset_delta))
        + bytes_len(record.key)
        + bytes_len(record.value)
        + varint_len(record.headers.len() as i64)
        + headers_len;
    output.reserve(varint_len(body_len as i64) + body_len);
    push_varint(output, body_len as i64);
    output.push(0);
    push_varint(output, record.timestamp_delta);
    push_varint(output, i64::from(record.offset_delta));
    push_bytes(output, record.key);
    push_bytes(output, record.value);
    push_varint(output, record.headers.len() as i64);
    for (key, value) in record.headers {
        push_bytes(output, Some(key));
        push_bytes(output, *value);
    }
}

/// The header fields of a batch to assemble. `attributes` must not carry
/// compression bits; [`assemble_batch`] sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFields {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl Default for BatchFields {
    fn default() -> Self {
        Self {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 0,
        }
    }
}

impl From<&BatchHeader> for BatchFields {
    fn from(header: &BatchHeader) -> Self {
        Self {
            base_offset: header.base_offset,
            partition_leader_epoch: header.partition_leader_epoch,
            attributes: header.attributes & !compression::ATTRIBUTE_COMPRESSION_MASK,
            last_offset_delta: header.last_offset_delta,
            base_timestamp: header.base_timestamp,
            max_timestamp: header.max_timestamp,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            records_count: header.records_count,
        }
    }
}

/// Appends a whole batch to `output`: the 61-byte header from `fields`, the
/// `records` section compressed with `codec`, and the CRC32C.
pub fn assemble_batch(
    output: &mut Vec<u8>,
    fields: &BatchFields,
    codec: Compression,
    records: &[u8],
) {
    let start = output.len();
    output.extend_from_slice(&fields.base_offset.to_be_bytes());
    output.extend_from_slice(&[0; 4]); // batch length, below
    output.extend_from_slice(&fields.partition_leader_epoch.to_be_bytes());
    output.push(2);
    output.extend_from_slice(&[0; 4]); // CRC, below
    let attributes =
        (fields.attributes & !compression::ATTRIBUTE_COMPRESSION_MASK) | codec.attribute_bits();
    output.extend_from_slice(&attributes.to_be_bytes());
    output.extend_from_slice(&fields.last_offset_delta.to_be_bytes());
    output.extend_from_slice(&fields.base_timestamp.to_be_bytes());
    output.extend_from_slice(&fields.max_timestamp.to_be_bytes());
    output.extend_from_slice(&fields.producer_id.to_be_bytes());
    output.extend_from_slice(&fields.producer_epoch.to_be_bytes());
    output.extend_from_slice(&fields.base_sequence.to_be_bytes());
    output.extend_from_slice(&fields.records_count.to_be_bytes());
    debug_assert_eq!(output.len() - start, BATCH_HEADER_BYTES);
    compression::compress(codec, records, output);
    let batch_length = (output.len() - start - LENGTH_FIELD_END) as i32;
    output[start + 8..start + 12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = compute_crc(&output[start..]);
    output[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// In the batch at the start of `batch`, the offset and timestamp of the
/// first record whose timestamp is ≥ `target` (exact, as ListOffsets needs),
/// decompressing at most `limit` bytes. For log-append-time batches every
/// record carries the batch's max timestamp, so the answer is the first
/// record. `Ok(None)` when no record is that recent.
pub fn first_record_at_or_after(
    batch: &[u8],
    target: i64,
    limit: usize,
) -> Result<Option<(i64, i64)>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let whole = &batch[..header.total_bytes()];
    let log_append_time = header.attributes & crate::batch::ATTRIBUTE_LOG_APPEND_TIME != 0;
    let section = batch_records(whole, limit)?;
    for record in records(&section, header.records_count) {
        let record = record?;
        let timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header.base_timestamp.saturating_add(record.timestamp_delta)
        };
        if timestamp >= target {
            let offset = header
                .base_offset
                .saturating_add(i64::from(record.offset_delta));
            return Ok(Some((offset, timestamp)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate_producer_batch;

    fn build(codec: Compression, records: &[NewRecord<'_>], base_timestamp: i64) -> Vec<u8> {
        let mut section = Vec::new();
        for record in records {
            encode_record(&mut section, record);
        }
        let max_delta = records
            .iter()
            .map(|record| record.timestamp_delta)
            .max()
            .unwrap_or(0);
        let fields = BatchFields {
            last_offset_delta: records.len() as i32 - 1,
            base_timestamp,
            max_timestamp: base_timestamp + max_delta,
            records_count: records.len() as i32,
            ..BatchFields::default()
        };
        let mut batch = Vec::new();
        assemble_batch(&mut batch, &fields, codec, &section);
        batch
    }

    #[test]
    fn assembled_batches_validate_and_decode_with_every_codec() {
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h1", Some(b"v1")), (b"h2", None)];
        let wanted = [
            NewRecord {
                key: Some(b"k0"),
                value: Some(b"value zero"),
                headers,
                ..Default::default()
            },
            NewRecord {
                offset_delta: 1,
                timestamp_delta: 5,
                key: None,
                value: None,
                ..Default::default()
            },
            NewRecord {
                offset_delta: 2,
                timestamp_delta: 9,
                key: Some(b""),
                value: Some(&[7; 300]),
                ..Default::default()
            },
        ];
        for codec in Compression::ALL {
            let batch = build(codec, &wanted, 1_000);
            let header = validate_producer_batch(&batch).expect("valid");
            assert_eq!(Compression::from_attributes(header.attributes), Ok(codec));
            let section = batch_records(&batch, 1 << 20).expect("decompresses");
            let decoded: Vec<Record<'_>> = records(&section, header.records_count)
                .collect::<Result<_, _>>()
                .expect("decodes");
            assert_eq!(decoded.len(), 3);
            let concatenated: Vec<u8> = decoded
                .iter()
                .flat_map(|record| record.encoded.to_vec())
                .collect();
            assert_eq!(
                concatenated,
                section.to_vec(),
                "encoded spans tile the section"
            );
            assert_eq!(first_keyless_record(&batch, 1 << 20), Ok(Some(1)));
            for (got, want) in decoded.iter().zip(&wanted) {
                assert_eq!(got.key, want.key);
                assert_eq!(got.value, want.value);
                assert_eq!(got.offset_delta, want.offset_delta);
                assert_eq!(got.timestamp_delta, want.timestamp_delta);
                assert_eq!(got.headers().collect::<Vec<_>>(), want.headers.to_vec());
            }
        }
    }

    #[test]
    fn matches_the_key_value_builder() {
        let built = crate::batch::build_keyed_batch(42, &[(Some(b"k"), Some(b"v")), (None, None)]);
        let records_built = [
            NewRecord {
                key: Some(b"k"),
                value: Some(b"v"),
                ..Default::default()
            },
            NewRecord {
                offset_delta: 1,
                ..Default::default()
            },
        ];
        assert_eq!(build(Compression::None, &records_built, 42), built.to_vec());
    }

    #[test]
    fn exact_timestamp_inside_compressed_batches() {
        let records_in: Vec<NewRecord<'_>> = (0..10)
            .map(|index| NewRecord {
                offset_delta: index,
                timestamp_delta: i64::from(index) * 10,
                value: Some(b"x"),
                ..Default::default()
            })
            .collect();
        for codec in Compression::ALL {
            let batch = build(codec, &records_in, 1_000);
            assert_eq!(
                first_record_at_or_after(&batch, 0, 1 << 16),
                Ok(Some((0, 1_000)))
            );
            assert_eq!(
                first_record_at_or_after(&batch, 1_031, 1 << 16),
                Ok(Some((4, 1_040)))
            );
            assert_eq!(
                first_record_at_or_after(&batch, 1_090, 1 << 16),
                Ok(Some((9, 1_090)))
            );
            assert_eq!(first_record_at_or_after(&batch, 1_091, 1 << 16), Ok(None));
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let big = vec![0u8; 1 << 20];
        let batch = build(
            Compression::Zstd,
            &[NewRecord {
                value: Some(&big),
                ..Default::default()
            }],
            0,
        );
        assert!(matches!(
            first_record_at_or_after(&batch, 0, 1 << 16),
            Err(RecordError::Compression(CompressionError::TooLarge { .. }))
        ));
    }

    #[test]
    fn varint_lengths() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            8191,
            -8193,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut buffer = Vec::new();
            push_varint(&mut buffer, value);
            assert_eq!(buffer.len(), varint_len(value), "{value}");
            let mut cursor = buffer.as_slice();
            assert_eq!(read_varint(&mut cursor), Some(value));
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_sections_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), count in -2i32..50) {
            for record in records(&bytes, count).flatten() {
                let _ = record.headers().count();
            }
        }
    }
}
