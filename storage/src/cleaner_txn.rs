//! The transactional half of the log cleaner's rules (Kafka's `LogCleaner`
//! with KIP-98 and KIP-534), free of any log state: what the caller tells a
//! pass about the log's transactions ([`CleanerInput`]), the per-pass walk
//! that decides the fate of transactional batches and markers
//! ([`TxnWalk`]), and the rewrite of a marker with its delete horizon.
//!
//! The storage engine does not know which transactions aborted: the broker
//! does (its aborted-transaction index, rebuilt from the markers at every
//! open). So the caller passes the aborted transactions, the last stable
//! offset, and how far markers may go ([`TxnFacts`]); see
//! `log/compaction.rs` for the rules a pass applies with them.

use std::collections::{BTreeMap, HashSet};

use crate::batch::{validate_stored_batch, BatchHeader, ATTRIBUTE_DELETE_HORIZON};
use crate::compression::Compression;
use crate::records::{self, assemble_batch, encode_record, BatchFields, NewRecord, RecordError};

/// The control record type of a COMMIT marker (an ABORT is 0).
const CONTROL_TYPE_COMMIT: i16 = 1;
const CONTROL_TYPE_ABORT: i16 = 0;
/// The only control record key version Kafka defines.
const CONTROL_KEY_VERSION: i16 = 0;

/// What the caller knows of the log that a cleaning pass must respect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanerInput {
    /// Base offsets of batches never dropped: one whose records all go is
    /// kept as an empty batch with its header fields. The broker passes each
    /// idempotent producer's last batch, so that replaying the log after a
    /// restart restores every producer's sequence (Kafka's cleaner keeps
    /// them too).
    pub retain: HashSet<u64>,
    /// `None`: the caller knows nothing of transactions, and transactional
    /// and control batches pass through whole, their keys unused (an
    /// aborted record must never supersede a committed one).
    pub transactions: Option<TxnFacts>,
}

/// One aborted transaction: its producer's data batches in
/// `[first_offset, marker_offset]` belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedRange {
    pub producer_id: i64,
    pub first_offset: u64,
    /// The ABORT marker's offset.
    pub marker_offset: u64,
}

/// The log's transactions as the broker knows them when a pass starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnFacts {
    /// Every aborted transaction the broker still serves to
    /// `read_committed` fetches, at least those with data below
    /// `stable_end` (entries for data already removed are harmless).
    pub aborted: Vec<AbortedRange>,
    /// The last stable offset (never above the high watermark): the first
    /// offset of the oldest open transaction. Nothing at or after it is
    /// cleaned or enters the key map, so below it every transactional batch
    /// is decided: aborted when `aborted` names it, committed otherwise.
    pub stable_end: u64,
    /// Markers at or after this offset are never removed: the broker's
    /// producer-state snapshot does not cover them yet, and its replay at
    /// the next open needs them to close the transactions they end.
    pub markers_removable_below: u64,
}

/// What happens to a transactional data batch below the cleanable end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnDataFate {
    /// Its transaction committed: its records compact as any other.
    Committed,
    /// Its transaction aborted: every record goes.
    Aborted,
}

/// What happens to a control batch below the cleanable end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerFate {
    /// Its transaction still has data in the log (or it is not a marker).
    Keep,
    /// No data left: this is the batch with its delete horizon set.
    SetHorizon(Vec<u8>),
    /// No data left, horizon set and passed: waits for the broker (its
    /// snapshot or its aborted index still needs the marker).
    KeepForBroker,
    /// No data left and the horizon passed: the marker goes.
    Remove,
}

/// The transactions as one pass walks the log in offset order, from the
/// log start: which producers have data batches since their last marker
/// (Kafka's `CleanedTransactionMetadata`), and the aborted ranges.
#[derive(Debug)]
pub struct TxnWalk {
    /// (producer id, first offset) → marker offset.
    aborted: BTreeMap<(i64, u64), u64>,
    /// Markers of aborted transactions the broker still serves.
    aborted_markers: HashSet<u64>,
    /// Producers with a data batch walked since their last marker.
    with_data: HashSet<i64>,
    markers_removable_below: u64,
}

impl TxnWalk {
    pub fn new(facts: &TxnFacts) -> Self {
        Self {
            aborted: facts
                .aborted
                .iter()
                .map(|range| ((range.producer_id, range.first_offset), range.marker_offset))
                .collect(),
            aborted_markers: facts
                .aborted
                .iter()
                .map(|range| range.marker_offset)
                .collect(),
            with_data: HashSet::new(),
            markers_removable_below: facts.markers_removable_below,
        }
    }

    /// Whether the data batch of `producer_id` at `offset` belongs to an
    /// aborted transaction (a producer has one transaction at a time, so
    /// the aborted range starting last at or before `offset` is the only
    /// candidate).
    pub fn is_aborted(&self, producer_id: i64, offset: u64) -> bool {
        self.aborted
            .range(..=(producer_id, offset))
            .next_back()
            .is_some_and(|((producer, _), marker)| *producer == producer_id && offset <= *marker)
    }

    /// The fate of a transactional data batch (decided below the stable
    /// end); notes that its producer has data before its next marker.
    pub fn on_data(&mut self, header: &BatchHeader) -> TxnDataFate {
        self.with_data.insert(header.producer_id);
        if self.is_aborted(header.producer_id, header.base_offset as u64) {
            TxnDataFate::Aborted
        } else {
            TxnDataFate::Committed
        }
    }

    /// A control batch below the cleanable end: Kafka's rule. A marker stays
    /// while the pass walked data of its transaction (removed now or not);
    /// once a pass finds none, it gets a delete horizon `delete_retention_ms`
    /// from now, so that a consumer that read the data before it went still
    /// reads the marker; a later pass past the horizon removes it.
    /// `aborts_without_data` gets the offset of every ABORT marker whose
    /// transaction has no data left.
    pub fn on_control(
        &mut self,
        header: &BatchHeader,
        batch: &[u8],
        now_ms: i64,
        delete_retention_ms: i64,
        aborts_without_data: &mut Vec<u64>,
    ) -> MarkerFate {
        let had_data = self.with_data.remove(&header.producer_id);
        if had_data || header.producer_id < 0 {
            return MarkerFate::Keep;
        }
        // Other control records (none Kafka writes to a data partition
        // today) are not ours to judge; an undecodable one stays as it is.
        let offset = header.base_offset as u64;
        match marker_type(batch) {
            Ok(Some(true)) => {}
            Ok(Some(false)) => aborts_without_data.push(offset),
            Ok(None) | Err(_) => return MarkerFate::Keep,
        }
        let Some(horizon_ms) = header.delete_horizon_ms() else {
            let horizon_ms = now_ms.saturating_add(delete_retention_ms);
            return match with_delete_horizon(batch, horizon_ms) {
                Ok(rewritten) => MarkerFate::SetHorizon(rewritten),
                Err(_) => MarkerFate::Keep,
            };
        };
        if horizon_ms > now_ms {
            return MarkerFate::Keep;
        }
        if offset >= self.markers_removable_below || self.aborted_markers.contains(&offset) {
            // A `read_committed` consumer told of the aborted transaction
            // skips its producer's batches until it reads this marker.
            return MarkerFate::KeepForBroker;
        }
        MarkerFate::Remove
    }
}

/// The control type of a COMMIT/ABORT marker batch (`Some(true)` commit,
/// `Some(false)` abort); `None` for any other control record.
pub fn marker_type(batch: &[u8]) -> Result<Option<bool>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    // A marker is one tiny record.
    let section = records::batch_records(&batch[..header.total_bytes()], 64 << 10)?;
    let Some(first) = records::records(&section, header.records_count).next() else {
        return Ok(None);
    };
    let record = first?;
    let key = record.key.unwrap_or_default();
    if key.len() < 4 || i16::from_be_bytes([key[0], key[1]]) != CONTROL_KEY_VERSION {
        return Ok(None);
    }
    Ok(match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_COMMIT => Some(true),
        CONTROL_TYPE_ABORT => Some(false),
        _ => None,
    })
}

/// The batch at the start of `batch` with the delete-horizon attribute set
/// and `horizon_ms` as its base timestamp (KIP-534). The records keep their
/// timestamps (their deltas are rebased), bytes and order; the max
/// timestamp stays, so the time index does not move.
pub fn with_delete_horizon(batch: &[u8], horizon_ms: i64) -> Result<Vec<u8>, RecordError> {
    let header = BatchHeader::parse(batch)?;
    header.check_shape(batch.len())?;
    let whole = &batch[..header.total_bytes()];
    let codec = Compression::from_attributes(header.attributes)?;
    let section = records::batch_records(whole, 64 << 10)?;
    let decoded =
        records::records(&section, header.records_count).collect::<Result<Vec<_>, _>>()?;
    let mut rebuilt = Vec::with_capacity(section.len() + 16);
    for record in &decoded {
        let headers: Vec<(&[u8], Option<&[u8]>)> = record.headers().collect();
        let timestamp_ms = header.base_timestamp.saturating_add(record.timestamp_delta);
        encode_record(
            &mut rebuilt,
            &NewRecord {
                timestamp_delta: timestamp_ms.saturating_sub(horizon_ms),
                offset_delta: record.offset_delta,
                key: record.key,
                value: record.value,
                headers: &headers,
            },
        );
    }
    let fields = BatchFields {
        attributes: header.attributes | ATTRIBUTE_DELETE_HORIZON,
        base_timestamp: horizon_ms,
        ..BatchFields::from(&header)
    };
    let mut out = Vec::with_capacity(whole.len() + 16);
    assemble_batch(&mut out, &fields, codec, &rebuilt);
    // It replaces durable data: check it as recovery will.
    let check = validate_stored_batch(&out);
    assert!(
        check.is_ok_and(|new| new.base_offset == header.base_offset
            && new.last_offset_delta == header.last_offset_delta
            && new.records_count == header.records_count
            && new.delete_horizon_ms() == Some(horizon_ms)),
        "marker at offset {} with its delete horizon does not validate",
        header.base_offset
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker_batch(producer_id: i64, base_offset: i64, control_type: i16) -> Vec<u8> {
        let mut key = Vec::new();
        key.extend_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        key.extend_from_slice(&control_type.to_be_bytes());
        let value = [0u8, 0, 0, 0, 0, 5];
        let mut section = Vec::new();
        encode_record(
            &mut section,
            &NewRecord {
                timestamp_delta: 7,
                key: Some(&key),
                value: Some(&value),
                ..NewRecord::default()
            },
        );
        let fields = BatchFields {
            base_offset,
            attributes: crate::batch::ATTRIBUTE_TRANSACTIONAL | crate::batch::ATTRIBUTE_CONTROL,
            base_timestamp: 1_000,
            max_timestamp: 1_007,
            producer_id,
            producer_epoch: 2,
            records_count: 1,
            ..BatchFields::default()
        };
        let mut batch = Vec::new();
        assemble_batch(&mut batch, &fields, Compression::None, &section);
        batch
    }

    fn header(producer_id: i64, base_offset: i64, control: bool) -> BatchHeader {
        let batch = if control {
            marker_batch(producer_id, base_offset, CONTROL_TYPE_COMMIT)
        } else {
            let mut batch = marker_batch(producer_id, base_offset, CONTROL_TYPE_COMMIT);
            batch[21..23].copy_from_slice(&crate::batch::ATTRIBUTE_TRANSACTIONAL.to_be_bytes());
            batch
        };
        BatchHeader::parse(&batch).expect("header")
    }

    #[test]
    fn the_horizon_rebases_the_record_timestamps() {
        let batch = marker_batch(9, 40, CONTROL_TYPE_ABORT);
        let rewritten = with_delete_horizon(&batch, 50_000).expect("rewrites");
        let header = validate_stored_batch(&rewritten).expect("valid");
        assert_eq!(header.delete_horizon_ms(), Some(50_000));
        assert!(header.is_control() && header.is_transactional());
        assert_eq!(
            (header.base_offset, header.max_timestamp, header.producer_id),
            (40, 1_007, 9)
        );
        let section = records::batch_records(&rewritten, 1 << 20).expect("section");
        let record = records::records(&section, 1)
            .next()
            .expect("one record")
            .expect("decodes");
        assert_eq!(
            header.base_timestamp + record.timestamp_delta,
            1_007,
            "the record keeps its timestamp"
        );
        assert_eq!(marker_type(&rewritten), Ok(Some(false)));
        assert_eq!(marker_type(&batch), Ok(Some(false)));
        assert_eq!(
            marker_type(&marker_batch(9, 40, CONTROL_TYPE_COMMIT)),
            Ok(Some(true))
        );
        assert_eq!(marker_type(&marker_batch(9, 40, 5)), Ok(None));
    }

    #[test]
    fn a_marker_goes_only_after_its_data_then_its_horizon_then_the_broker() {
        let facts = TxnFacts {
            aborted: vec![AbortedRange {
                producer_id: 7,
                first_offset: 10,
                marker_offset: 20,
            }],
            stable_end: 100,
            markers_removable_below: 100,
        };
        let mut walk = TxnWalk::new(&facts);
        assert!(walk.is_aborted(7, 10) && walk.is_aborted(7, 20));
        assert!(!walk.is_aborted(7, 9) && !walk.is_aborted(7, 21));
        assert!(!walk.is_aborted(8, 15), "another producer's batch");
        assert_eq!(walk.on_data(&header(7, 12, false)), TxnDataFate::Aborted);
        assert_eq!(walk.on_data(&header(8, 13, false)), TxnDataFate::Committed);
        let abort = marker_batch(7, 20, CONTROL_TYPE_ABORT);
        let abort_header = BatchHeader::parse(&abort).expect("header");
        let mut without_data = Vec::new();
        // Data walked: the marker stays as it is.
        assert_eq!(
            walk.on_control(&abort_header, &abort, 5_000, 1_000, &mut without_data),
            MarkerFate::Keep
        );
        assert!(without_data.is_empty());
        // The next pass finds no data: the horizon is set.
        let MarkerFate::SetHorizon(horizoned) =
            walk.on_control(&abort_header, &abort, 5_000, 1_000, &mut without_data)
        else {
            panic!("expected the horizon to be set");
        };
        assert_eq!(without_data, vec![20]);
        let horizoned_header = BatchHeader::parse(&horizoned).expect("header");
        assert_eq!(horizoned_header.delete_horizon_ms(), Some(6_000));
        assert_eq!(
            walk.on_control(
                &horizoned_header,
                &horizoned,
                5_999,
                1_000,
                &mut without_data
            ),
            MarkerFate::Keep,
            "before the horizon"
        );
        // Past it, but the broker still serves the aborted entry.
        assert_eq!(
            walk.on_control(
                &horizoned_header,
                &horizoned,
                6_000,
                1_000,
                &mut without_data
            ),
            MarkerFate::KeepForBroker
        );
        let dropped = TxnFacts {
            aborted: Vec::new(),
            ..facts.clone()
        };
        assert_eq!(
            TxnWalk::new(&dropped).on_control(
                &horizoned_header,
                &horizoned,
                6_000,
                1_000,
                &mut without_data
            ),
            MarkerFate::Remove
        );
        let unsnapshotted = TxnFacts {
            markers_removable_below: 20,
            ..dropped
        };
        assert_eq!(
            TxnWalk::new(&unsnapshotted).on_control(
                &horizoned_header,
                &horizoned,
                6_000,
                1_000,
                &mut without_data
            ),
            MarkerFate::KeepForBroker
        );
    }
}
