//! Building and reading the broker's *own* record batches (internal topics
//! such as `__consumer_offsets`): uncompressed v2 batches of keyed records,
//! values possibly null (tombstones). Producer batches are never rebuilt.

use bytes::Bytes;
use kafki_storage::batch::{read_varint, BatchHeader, BATCH_HEADER_BYTES};

pub use kafki_storage::batch::KeyValueRef;
/// Most bytes the broker decompresses of one batch (a timestamp lookup, the
/// key check of a compacted topic): a hostile batch can expand
/// a thousandfold; Kafka's own default `message.max.bytes` is 1 MiB.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;

/// A record's key and value as read back.
pub type KeyValue = (Option<Bytes>, Option<Bytes>);

/// One uncompressed batch of `(key, value)` records, all stamped `timestamp_ms`.
pub fn build_keyed_batch(records: &[KeyValueRef<'_>], timestamp_ms: i64) -> Bytes {
    kafki_storage::batch::build_keyed_batch(timestamp_ms, records)
}

/// The whole batches at the start of `bytes`, each with its parsed header;
/// stops at the first header that does not parse or a batch cut short (a
/// read ends on a batch boundary, so that is the end of what was read).
pub fn whole_batches(bytes: &Bytes) -> impl Iterator<Item = (BatchHeader, Bytes)> + '_ {
    let mut position = 0usize;
    std::iter::from_fn(move || {
        if position + BATCH_HEADER_BYTES > bytes.len() {
            return None;
        }
        let header = BatchHeader::parse(&bytes[position..]).ok()?;
        let total = header.total_bytes();
        if header.batch_length < 0 || position + total > bytes.len() {
            return None;
        }
        let batch = bytes.slice(position..position + total);
        position += total;
        Some((header, batch))
    })
}

/// The `(key, value)` records of every uncompressed batch in `bytes`.
/// Compressed or malformed batches are skipped (and counted).
pub fn read_keyed_records(bytes: &Bytes) -> (Vec<KeyValue>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (header, batch) in whole_batches(bytes) {
        if header.attributes & 0x07 != 0 || header.is_control() {
            skipped += 1;
            continue;
        }
        match parse_records(&batch, header.records_count) {
            Some(records) => out.extend(records),
            None => skipped += 1,
        }
    }
    (out, skipped)
}

fn parse_records(batch: &Bytes, count: i32) -> Option<Vec<KeyValue>> {
    let mut records = Vec::new();
    let mut cursor: &[u8] = &batch[BATCH_HEADER_BYTES..];
    for _ in 0..count.max(0) {
        let length = usize::try_from(read_varint(&mut cursor)?).ok()?;
        if length > cursor.len() {
            return None;
        }
        let (record, rest) = cursor.split_at(length);
        cursor = rest;
        let mut fields = record.get(1..)?;
        read_varint(&mut fields)?;
        read_varint(&mut fields)?;
        let take = |fields: &mut &[u8]| -> Option<Option<Bytes>> {
            let length = read_varint(fields)?;
            if length < 0 {
                return Some(None);
            }
            let length = usize::try_from(length).ok()?;
            if length > fields.len() {
                return None;
            }
            // `fields` borrows from `batch`: slice the same bytes without copying.
            let start = fields.as_ptr() as usize - batch.as_ptr() as usize;
            let value = batch.slice(start..start + length);
            *fields = &fields[length..];
            Some(Some(value))
        };
        let key = take(&mut fields)?;
        let value = take(&mut fields)?;
        records.push((key, value));
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_batches_round_trip_and_validate() {
        let batch = build_keyed_batch(
            &[
                (Some(b"k1"), Some(b"v1")),
                (Some(b"k2"), None),
                (None, Some(b"")),
            ],
            5,
        );
        kafki_storage::batch::validate_producer_batch(&batch).expect("valid batch");
        let mut two = batch.to_vec();
        two.extend_from_slice(&batch);
        let (records, skipped) = read_keyed_records(&Bytes::from(two));
        assert_eq!(skipped, 0);
        assert_eq!(records.len(), 6);
        assert_eq!(
            records[0],
            (
                Some(Bytes::from_static(b"k1")),
                Some(Bytes::from_static(b"v1"))
            )
        );
        assert_eq!(records[1], (Some(Bytes::from_static(b"k2")), None));
        assert_eq!(records[2], (None, Some(Bytes::new())));
    }

    #[test]
    fn damaged_input_never_panics() {
        let batch = build_keyed_batch(&[(Some(b"key"), Some(b"value"))], 1);
        for cut in 0..batch.len() {
            let _ = read_keyed_records(&batch.slice(..cut));
        }
        let mut lying = batch.to_vec();
        lying[BATCH_HEADER_BYTES] = 0x7e;
        let _ = read_keyed_records(&Bytes::from(lying));
    }
}
