//! Reading the records section of a Fetch answer, pure: it holds whole v2 batches and
//! possibly a *partial* last one (a broker cuts its answer at the byte budget; Kafka's
//! consumers ignore the cut batch and fetch it again from its offset).
//!
//! Invariants: [`RecordBatches`] yields only whole batches whose shape (and, unless
//! disabled, CRC32C) checked out, stops at the first damaged one with an error, and never
//! reads past the bytes it was given; decompression is bounded by the caller's limit.

use std::borrow::Cow;

use kafki_records::batch::{
    validate_stored_batch, BatchHeader, ATTRIBUTE_LOG_APPEND_TIME, LENGTH_FIELD_END,
};
use kafki_records::records::{batch_records, records, Record, RecordError};
use kafki_records::BatchError;

/// One whole batch of a fetch answer.
#[derive(Debug, Clone, Copy)]
pub struct FetchedBatch<'a> {
    pub header: BatchHeader,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
}

impl<'a> FetchedBatch<'a> {
    /// A transaction marker, not data: consumers skip its records.
    pub fn is_control(&self) -> bool {
        self.header.is_control()
    }

    pub fn base_offset(&self) -> i64 {
        self.header.base_offset
    }

    /// The offset after the batch: where the next fetch continues.
    pub fn next_offset(&self) -> i64 {
        self.header.last_offset().saturating_add(1)
    }

    /// A record's timestamp (ms since the epoch): the batch's append time when the topic
    /// uses `LogAppendTime`, else the producer's create time.
    pub fn record_timestamp(&self, record: &Record<'_>) -> i64 {
        if self.header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            self.header.max_timestamp
        } else {
            self.header
                .base_timestamp
                .saturating_add(record.timestamp_delta)
        }
    }

    /// The uncompressed records section (borrowed when not compressed), refusing to
    /// decompress more than `limit` bytes.
    pub fn records_section(&self, limit: usize) -> Result<Cow<'a, [u8]>, RecordError> {
        batch_records(self.bytes, limit)
    }

    /// Calls `visit(offset, record)` for every record at or after `from_offset` (a fetch
    /// inside a batch returns the whole batch: the records before it were read already);
    /// returns how many it visited.
    pub fn for_each_record(
        &self,
        from_offset: i64,
        limit: usize,
        mut visit: impl FnMut(i64, &Record<'_>),
    ) -> Result<u64, RecordError> {
        if self.is_control() || self.next_offset() <= from_offset {
            return Ok(0);
        }
        let section = self.records_section(limit)?;
        let mut visited = 0;
        for record in records(&section, self.header.records_count) {
            let record = record?;
            let offset = self
                .header
                .base_offset
                .saturating_add(i64::from(record.offset_delta));
            if offset >= from_offset {
                visit(offset, &record);
                visited += 1;
            }
        }
        Ok(visited)
    }
}

/// The whole batches of a records section.
#[derive(Debug, Clone)]
pub struct RecordBatches<'a> {
    rest: &'a [u8],
    verify_crc: bool,
    failed: bool,
}

impl<'a> RecordBatches<'a> {
    /// Batches of `section`, each CRC-checked.
    pub fn new(section: &'a [u8]) -> Self {
        Self {
            rest: section,
            verify_crc: true,
            failed: false,
        }
    }

    /// Batches of `section`, shape-checked only (for callers that trust the source).
    pub fn without_crc_check(section: &'a [u8]) -> Self {
        Self {
            verify_crc: false,
            ..Self::new(section)
        }
    }

    /// Bytes left after the last whole batch: a partial batch cut by the byte budget
    /// (meaningful once the iterator returned `None`).
    pub fn partial_trailing_bytes(&self) -> usize {
        self.rest.len()
    }
}

impl<'a> Iterator for RecordBatches<'a> {
    type Item = Result<FetchedBatch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let length_field = self.rest.get(8..LENGTH_FIELD_END)?;
        let batch_length = i32::from_be_bytes([
            length_field[0],
            length_field[1],
            length_field[2],
            length_field[3],
        ]);
        let Ok(batch_length) = usize::try_from(batch_length) else {
            self.failed = true;
            return Some(Err(BatchError::BadLength(batch_length)));
        };
        let total = batch_length.saturating_add(LENGTH_FIELD_END);
        if total > self.rest.len() {
            // Partial trailing batch: not an error.
            return None;
        }
        let (whole, rest) = self.rest.split_at(total);
        let checked = if self.verify_crc {
            validate_stored_batch(whole)
        } else {
            BatchHeader::parse(whole)
                .and_then(|header| header.check_shape(whole.len()).map(|()| header))
        };
        match checked {
            Ok(header) => {
                self.rest = rest;
                Some(Ok(FetchedBatch {
                    header,
                    bytes: whole,
                }))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_records::compression::Compression;
    use kafki_records::records::{assemble_batch, encode_record, BatchFields, NewRecord};

    fn batch(base_offset: i64, values: &[&[u8]], codec: Compression) -> Vec<u8> {
        let mut section = Vec::new();
        for (index, value) in values.iter().enumerate() {
            encode_record(
                &mut section,
                &NewRecord {
                    offset_delta: index as i32,
                    value: Some(value),
                    ..NewRecord::default()
                },
            );
        }
        let fields = BatchFields {
            base_offset,
            last_offset_delta: values.len() as i32 - 1,
            records_count: values.len() as i32,
            ..BatchFields::default()
        };
        let mut bytes = Vec::new();
        assemble_batch(&mut bytes, &fields, codec, &section);
        bytes
    }

    #[test]
    fn whole_batches_then_a_partial_one() {
        let mut section = batch(0, &[b"a", b"b"], Compression::None);
        section.extend(batch(2, &[b"c"], Compression::Zstd));
        let third = batch(3, &[b"d"], Compression::None);
        let whole_bytes = section.len();
        for cut in 0..third.len() {
            let mut with_partial = section.clone();
            with_partial.extend_from_slice(&third[..cut]);
            let mut batches = RecordBatches::new(&with_partial);
            let offsets: Vec<i64> = batches
                .by_ref()
                .map(|batch| batch.expect("whole batches are valid").base_offset())
                .collect();
            assert_eq!(offsets, vec![0, 2], "cut at {cut}");
            assert_eq!(batches.partial_trailing_bytes(), cut);
        }
        assert_eq!(RecordBatches::new(&section[..whole_bytes]).count(), 2);
    }

    #[test]
    fn records_before_the_fetch_offset_are_skipped() {
        let bytes = batch(10, &[b"a", b"b", b"c"], Compression::Lz4);
        let batch = RecordBatches::new(&bytes)
            .next()
            .expect("one")
            .expect("valid");
        let mut seen = Vec::new();
        let visited = batch
            .for_each_record(11, 1 << 20, |offset, record| {
                seen.push((offset, record.value.map(<[u8]>::to_vec)))
            })
            .expect("decodes");
        assert_eq!(visited, 2);
        assert_eq!(
            seen,
            vec![(11, Some(b"b".to_vec())), (12, Some(b"c".to_vec()))]
        );
        assert_eq!(batch.next_offset(), 13);
        let mut timestamps = Vec::new();
        batch
            .for_each_record(10, 1 << 20, |_, record| {
                timestamps.push(batch.record_timestamp(record))
            })
            .expect("decodes");
        assert_eq!(timestamps, vec![0, 0, 0], "create time: base + delta");
        assert_eq!(batch.for_each_record(13, 1 << 20, |_, _| {}), Ok(0));
    }

    #[test]
    fn damaged_batches_stop_the_iteration() {
        let mut bytes = batch(0, &[b"abc"], Compression::None);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let mut batches = RecordBatches::new(&bytes);
        assert!(matches!(
            batches.next(),
            Some(Err(BatchError::CrcMismatch { .. }))
        ));
        assert!(batches.next().is_none());
        // Without the CRC check the same bytes pass the shape check.
        assert!(RecordBatches::without_crc_check(&bytes)
            .next()
            .is_some_and(|batch| batch.is_ok()));
        let mut negative = batch(0, &[b"abc"], Compression::None);
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            RecordBatches::new(&negative).next(),
            Some(Err(BatchError::BadLength(-5)))
        ));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut batches = RecordBatches::new(&bytes);
            for batch in batches.by_ref().flatten() {
                let _ = batch.for_each_record(0, 1 << 16, |_, _| {});
            }
            proptest::prop_assert!(batches.partial_trailing_bytes() <= bytes.len());
        }
    }
}
