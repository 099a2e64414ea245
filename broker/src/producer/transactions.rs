//! The transactional half of a partition's producer state: the Kafka rules
//! a leader applies to transactional batches and COMMIT/ABORT markers, on
//! top of the pure [`PartitionTxnIndex`] that [`ProducerStates`] holds, and
//! the control batches themselves (built for a marker, read back by a
//! replay or a follower).
//!
//! Rules (Kafka's `ProducerAppendInfo`, transaction version 1):
//! - clients never write control batches (`INVALID_RECORD`);
//! - a transactional batch needs a producer id (`INVALID_RECORD`) and an
//!   epoch no older than the partition saw (`INVALID_PRODUCER_EPOCH`); it
//!   opens the producer's transaction at its first offset;
//! - with verification on (KIP-890, `transaction.partition.verification.enable`),
//!   a transactional batch of a producer with no transaction open here at
//!   its epoch needs a current, confirmed guard
//!   ([`crate::producer::verification`]), else `INVALID_TXN_STATE`; the
//!   guard goes when the transaction opens or a marker ends it;
//! - a non-transactional batch of a producer whose transaction is open here
//!   is refused (`INVALID_TXN_STATE`);
//! - a marker is refused when its coordinator epoch is older than the
//!   producer's last marker's (`TRANSACTION_COORDINATOR_FENCED`) or its
//!   producer epoch older (`INVALID_PRODUCER_EPOCH`); a marker for a
//!   producer with nothing open here is written anyway (a retry, or a
//!   partition the producer never wrote to), as Kafka does.
//!
//! Like the sequences, everything here changes only in the append paths
//! (check, append, record with no await between) and the replay.

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::batch::BatchHeader;
use kafki_storage::compression::Compression;
use kafki_storage::records::{assemble_batch, batch_records, encode_record, records};
use kafki_storage::records::{BatchFields, NewRecord};

use crate::producer::state::ProducerStates;
use crate::producer::verification::{VerificationGuard, VerificationGuards};
use crate::txn::partition_index::{
    decode_control_key, IndexRefusal, CONTROL_ATTRIBUTE, TRANSACTIONAL_ATTRIBUTE,
};
use crate::txn::{AbortedTxn, ControlType, EndTxnMarker, PartitionTxnIndex};

/// A control batch holds one tiny record; more than this decompressed is
/// not a marker.
const CONTROL_BATCH_BYTES_MAX: usize = 64 << 10;

/// The Kafka error code of an index refusal.
pub fn refusal_code(refusal: IndexRefusal) -> i16 {
    match refusal {
        IndexRefusal::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
        IndexRefusal::CoordinatorFenced { .. } => {
            ResponseError::TransactionCoordinatorFenced.code()
        }
        // Offsets are the log's to give: a regression is the broker's bug.
        IndexRefusal::OffsetNotAfterEnd { .. } => ResponseError::UnknownServerError.code(),
    }
}

impl ProducerStates {
    /// The partition's transactions.
    pub fn transactions(&self) -> &PartitionTxnIndex {
        &self.transactions
    }

    /// The index a snapshot file held (at load, before the replay).
    pub fn load_transactions(&mut self, index: PartitionTxnIndex) {
        self.transactions = index;
    }

    /// Retention or DeleteRecords moved the log start: aborted entries
    /// whose marker lies below it go.
    pub fn drop_transactions_before(&mut self, log_start_offset: u64) {
        let before = self.transactions.aborted_len();
        self.transactions
            .drop_before(i64::try_from(log_start_offset).unwrap_or(i64::MAX));
        if self.transactions.aborted_len() != before {
            self.note_change();
        }
    }

    /// The cleaner found no data left of the aborted transactions whose
    /// markers are at `marker_offsets`: their entries go (see
    /// [`PartitionTxnIndex::drop_aborted_at`]). Returns how many went.
    pub fn drop_aborted_without_data(&mut self, marker_offsets: &[u64]) -> usize {
        let markers: std::collections::HashSet<i64> = marker_offsets
            .iter()
            .filter_map(|offset| i64::try_from(*offset).ok())
            .collect();
        let dropped = self.transactions.drop_aborted_at(&markers);
        if dropped > 0 {
            self.note_change();
            self.aborts_dropped_at = self.changes();
        }
        dropped
    }

    /// What a cleaning pass must know of the transactions (see
    /// `kafki_storage::TxnFacts`): the aborted ones, the last stable offset
    /// at `high_watermark`, and below which markers may go: those the
    /// producer-state snapshot on disk covers (`snapshot_offset`, taken at
    /// `snapshot_changes`), so that neither a replay after it misses a
    /// marker that closes a transaction the file holds open, nor the file
    /// brings back an aborted entry whose marker is gone (a consumer told
    /// of it would skip that producer's later transactions, waiting for
    /// the marker).
    pub fn cleaner_facts(
        &self,
        high_watermark: u64,
        snapshot_offset: Option<u64>,
        snapshot_changes: u64,
    ) -> kafki_storage::TxnFacts {
        let aborted = self
            .transactions
            .aborted_overlapping(0, i64::MAX)
            .iter()
            .map(|entry| kafki_storage::AbortedRange {
                producer_id: entry.producer_id,
                first_offset: entry.first_offset.max(0) as u64,
                marker_offset: entry.last_offset.max(0) as u64,
            })
            .collect();
        let markers_removable_below = match snapshot_offset {
            Some(offset) if snapshot_changes >= self.aborts_dropped_at => offset,
            _ => 0,
        };
        kafki_storage::TxnFacts {
            aborted,
            stable_end: self.last_stable_offset(high_watermark),
            markers_removable_below,
        }
    }

    /// How far a `read_committed` consumer may read: below the oldest open
    /// transaction, never beyond `high_watermark`.
    pub fn last_stable_offset(&self, high_watermark: u64) -> u64 {
        let high_watermark = i64::try_from(high_watermark).unwrap_or(i64::MAX);
        self.transactions.last_stable_offset(high_watermark).max(0) as u64
    }

    /// Checks a client's batch against the transaction rules (the module
    /// docs); `Err` is the Kafka error code.
    pub fn check_transactions(&self, header: &BatchHeader) -> Result<(), i16> {
        if header.is_control() {
            return Err(ResponseError::InvalidRecord.code());
        }
        if header.is_transactional() {
            if header.producer_id < 0 {
                return Err(ResponseError::InvalidRecord.code());
            }
            return self
                .transactions
                .check_transactional_batch(header.producer_id, header.producer_epoch)
                .map_err(refusal_code);
        }
        if header.producer_id >= 0 && self.transactions.has_open_transaction(header.producer_id) {
            return Err(ResponseError::InvalidTxnState.code());
        }
        Ok(())
    }

    /// Whether `header` is a transactional batch that would open its
    /// producer's transaction here (none open at its epoch): with
    /// verification on, the coordinator must confirm it first.
    pub fn needs_verification(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && header.producer_id >= 0
            && !self
                .transactions
                .has_open_transaction_at(header.producer_id, header.producer_epoch)
    }

    /// The verification guards (the produce path begins, confirms and
    /// refuses through them).
    pub fn verification_mut(&mut self) -> &mut VerificationGuards {
        &mut self.verification
    }

    /// With verification on: a batch that would open its producer's
    /// transaction here is taken only with `guard` current and confirmed
    /// (`INVALID_TXN_STATE` otherwise: the partition was not added to the
    /// transaction, or the transaction it was confirmed for has ended).
    pub fn check_verified(
        &self,
        header: &BatchHeader,
        guard: Option<VerificationGuard>,
    ) -> Result<(), i16> {
        if !self.needs_verification(header) {
            return Ok(());
        }
        match guard {
            Some(guard)
                if self
                    .verification
                    .admits(header.producer_id, header.producer_epoch, guard) =>
            {
                Ok(())
            }
            _ => Err(ResponseError::InvalidTxnState.code()),
        }
    }

    /// A data batch was appended at `base_offset`: a transactional one
    /// opens (or extends) its producer's transaction.
    pub fn record_transactional_data(&mut self, header: &BatchHeader, base_offset: u64) {
        if !header.is_transactional() || header.is_control() || header.producer_id < 0 {
            return;
        }
        let first = base_offset as i64;
        let last = first + i64::from(header.last_offset_delta);
        match self.transactions.record_transactional_batch(
            header.producer_id,
            header.producer_epoch,
            first,
            last,
        ) {
            Ok(()) => {
                // Open now: later batches need no guard.
                self.verification.clear(header.producer_id);
                self.note_change();
            }
            Err(refusal) => {
                tracing::debug!(partition = %self.label(), producer_id = header.producer_id, ?refusal, offset = first, "transactional batch not indexed")
            }
        }
    }

    /// Checks a marker for `producer_id` at `producer_epoch`; `Err` is the
    /// Kafka error code.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<(), i16> {
        self.transactions
            .check_marker(producer_id, producer_epoch, marker)
            .map_err(refusal_code)
    }

    /// The partition's high watermark is at least `high_watermark` (the
    /// leader tells before each marker it writes, so ended transactions
    /// stop holding the LSO without a reader asking).
    pub fn note_high_watermark(&self, high_watermark: u64) {
        self.transactions
            .note_high_watermark(i64::try_from(high_watermark).unwrap_or(i64::MAX));
    }

    /// A marker was appended at `offset`: closes the producer's open
    /// transaction here, if any. Returns the aborted entry an ABORT leaves.
    pub fn record_marker(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
        offset: u64,
    ) -> Result<Option<AbortedTxn>, i16> {
        let recorded = self
            .transactions
            .record_marker(producer_id, producer_epoch, marker, offset as i64)
            .map_err(refusal_code)?;
        // The transaction any guard was confirmed for has ended.
        self.verification.clear(producer_id);
        self.note_change();
        Ok(recorded)
    }

    /// Records a batch as stored in the log (a replay, or a follower's
    /// append of its leader's batch): its sequence, and for a transactional
    /// or control batch the transaction it opens or the marker it holds
    /// (read from the batch's only record).
    pub fn record_stored_batch(
        &mut self,
        header: &BatchHeader,
        batch: &[u8],
        base_offset: u64,
        timestamp_ms: i64,
    ) {
        self.record(header, base_offset, timestamp_ms);
        if !header.is_control() {
            self.record_transactional_data(header, base_offset);
            return;
        }
        if header.producer_id < 0 {
            return;
        }
        match decode_marker(batch) {
            Ok(Some(marker)) => {
                if let Err(code) = self.record_marker(
                    header.producer_id,
                    header.producer_epoch,
                    marker,
                    base_offset,
                ) {
                    tracing::debug!(partition = %self.label(), producer_id = header.producer_id, code, offset = base_offset, "stored marker not indexed (fenced when written?)");
                }
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(partition = %self.label(), offset = base_offset, %reason, "unreadable control batch skipped by the transaction index")
            }
        }
    }
}

/// The COMMIT/ABORT marker of a control batch (a whole batch, header
/// included); `Ok(None)` for another control record type.
pub fn decode_marker(batch: &[u8]) -> Result<Option<EndTxnMarker>, String> {
    let header = BatchHeader::parse(batch).map_err(|error| error.to_string())?;
    let section =
        batch_records(batch, CONTROL_BATCH_BYTES_MAX).map_err(|error| error.to_string())?;
    let Some(first) = records(&section, header.records_count).next() else {
        return Err("control batch without a record".into());
    };
    let record = first.map_err(|error| error.to_string())?;
    let key = record.key.unwrap_or_default();
    match decode_control_key(key).map_err(|error| error.to_string())? {
        0 | 1 => EndTxnMarker::decode(key, record.value.unwrap_or_default())
            .map(Some)
            .map_err(|error| error.to_string()),
        _ => Ok(None),
    }
}

/// The control batch of `marker` for `producer_id` at `producer_epoch`:
/// transactional and control attributes, base sequence -1, one record
/// whose key and value are the marker's Kafka bytes.
pub fn build_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: EndTxnMarker,
    timestamp_ms: i64,
) -> Bytes {
    let key = marker.encode_key();
    let value = marker.encode_value();
    let mut section = Vec::with_capacity(32);
    encode_record(
        &mut section,
        &NewRecord {
            key: Some(&key),
            value: Some(&value),
            ..NewRecord::default()
        },
    );
    let fields = BatchFields {
        attributes: TRANSACTIONAL_ATTRIBUTE | CONTROL_ATTRIBUTE,
        base_timestamp: timestamp_ms,
        max_timestamp: timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence: -1,
        records_count: 1,
        ..BatchFields::default()
    };
    let mut batch = Vec::with_capacity(96);
    assemble_batch(&mut batch, &fields, Compression::None, &section);
    Bytes::from(batch)
}

/// The marker a coordinator's decision writes.
pub fn marker_of(control_type: ControlType, coordinator_epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        control_type,
        coordinator_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::state::test_header;

    const ABORT: EndTxnMarker = EndTxnMarker {
        control_type: ControlType::Abort,
        coordinator_epoch: 3,
    };

    fn transactional(producer_id: i64, epoch: i16, first: i32, count: i32) -> BatchHeader {
        let mut header = test_header(producer_id, epoch, first, count);
        header.attributes = TRANSACTIONAL_ATTRIBUTE;
        header
    }

    #[test]
    fn a_marker_batch_reads_back_as_its_marker() {
        let batch = build_marker_batch(7, 2, ABORT, 1_000);
        let header = kafki_storage::batch::validate_producer_batch(&batch).expect("valid");
        assert!(header.is_control() && header.is_transactional());
        assert_eq!((header.producer_id, header.producer_epoch), (7, 2));
        assert_eq!(header.base_sequence, -1);
        assert_eq!(decode_marker(&batch), Ok(Some(ABORT)));
        let data = kafki_storage::batch::build_batch(1, &[b"x".as_slice()]);
        assert!(decode_marker(&data).is_err());
    }

    #[test]
    fn only_a_transactions_first_batch_here_needs_the_coordinator() {
        use crate::producer::verification::VerificationStep;
        let mut states = ProducerStates::default();
        let first = transactional(7, 1, 0, 2);
        assert!(states.needs_verification(&first));
        assert!(!states.needs_verification(&test_header(7, 1, 0, 1)));
        assert_eq!(
            states.check_verified(&first, None),
            Err(ResponseError::InvalidTxnState.code())
        );
        let VerificationStep::Ask(guard) = states.verification_mut().begin(7, 1, 0) else {
            panic!("the first batch asks");
        };
        assert_eq!(
            states.check_verified(&first, Some(guard)),
            Err(ResponseError::InvalidTxnState.code()),
            "not confirmed yet"
        );
        states.verification_mut().confirm(7, guard);
        assert_eq!(states.check_verified(&first, Some(guard)), Ok(()));
        states.record(&first, 10, 0);
        states.record_transactional_data(&first, 10);
        // Open here now: the next batch needs no guard, and none is kept.
        let second = transactional(7, 1, 2, 1);
        assert!(!states.needs_verification(&second));
        assert_eq!(states.check_verified(&second, None), Ok(()));
        assert!(states.verification.is_empty());
        // A newer epoch starts a transaction of its own.
        assert!(states.needs_verification(&transactional(7, 2, 0, 1)));
        // The marker ends it: the next transaction asks again, and a guard
        // confirmed before the marker no longer admits.
        let VerificationStep::Ask(stale) = states.verification_mut().begin(7, 2, 0) else {
            panic!("asks");
        };
        states.verification_mut().confirm(7, stale);
        let marker = build_marker_batch(7, 1, ABORT, 0);
        let header = BatchHeader::parse(&marker).expect("header");
        states.record_stored_batch(&header, &marker, 12, 0);
        assert!(states.needs_verification(&transactional(7, 1, 3, 1)));
        assert_eq!(
            states.check_verified(&transactional(7, 2, 0, 1), Some(stale)),
            Err(ResponseError::InvalidTxnState.code())
        );
    }

    #[test]
    fn client_batches_follow_the_transaction_rules() {
        let mut states = ProducerStates::default();
        let mut control = transactional(7, 0, 0, 1);
        control.attributes |= CONTROL_ATTRIBUTE;
        assert_eq!(
            states.check_transactions(&control),
            Err(ResponseError::InvalidRecord.code())
        );
        assert_eq!(
            states.check_transactions(&transactional(-1, -1, -1, 1)),
            Err(ResponseError::InvalidRecord.code())
        );
        assert_eq!(
            states.check_transactions(&transactional(7, 1, 0, 2)),
            Ok(())
        );
        states.record(&transactional(7, 1, 0, 2), 10, 0);
        states.record_transactional_data(&transactional(7, 1, 0, 2), 10);
        assert_eq!(states.last_stable_offset(100), 10);
        // Plain idempotent data while its transaction is open.
        assert_eq!(
            states.check_transactions(&test_header(7, 1, 2, 1)),
            Err(ResponseError::InvalidTxnState.code())
        );
        assert_eq!(
            states.check_transactions(&transactional(7, 0, 2, 1)),
            Err(ResponseError::InvalidProducerEpoch.code())
        );
        let marker = build_marker_batch(7, 1, ABORT, 0);
        let header = BatchHeader::parse(&marker).expect("header");
        states.record_stored_batch(&header, &marker, 12, 0);
        assert_eq!(states.last_stable_offset(100), 100);
        let aborted = states.transactions().aborted_overlapping(0, 100);
        assert_eq!(aborted.len(), 1);
        assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (7, 10));
        assert_eq!(
            states.check_marker(
                7,
                1,
                EndTxnMarker {
                    coordinator_epoch: 2,
                    ..ABORT
                }
            ),
            Err(ResponseError::TransactionCoordinatorFenced.code())
        );
    }
}
