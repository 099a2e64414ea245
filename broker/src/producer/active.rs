//! What DescribeProducers (KIP-664) reports of one partition's producers:
//! the sequence state ([`ProducerStates`]) and the transaction index
//! ([`crate::txn::PartitionTxnIndex`]) folded into one row per producer id,
//! as Kafka's `ProducerStateEntry` holds both in one place.
//!
//! Rules (Kafka's `ProducerStateEntry`):
//! - a producer known to either half is listed once, ordered by id;
//! - its epoch is the newer of the two halves' (a marker raises the
//!   transaction index's epoch without touching the sequences), and when a
//!   marker raised it the remembered batches belong to an older epoch, so
//!   its last sequence is -1, as Kafka clears the batches on a new epoch;
//! - `-1` stands for "none" in every other field too: no batch remembered
//!   (last sequence, last timestamp), no marker yet (coordinator epoch), no
//!   open transaction (its start offset).
//!
//! Pure: read on the partition's shard while nothing else runs there.

use std::collections::BTreeMap;

use crate::producer::state::ProducerStates;

/// One producer as DescribeProducers reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The last sequence of its last batch at `producer_epoch`, or -1.
    pub last_sequence: i32,
    /// When its last batch was appended (ms since the epoch), or -1.
    pub last_timestamp_ms: i64,
    /// The coordinator epoch of its last marker here, or -1.
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction here, or -1.
    pub current_txn_start_offset: i64,
}

impl ActiveProducer {
    fn unknown(producer_id: i64, producer_epoch: i16) -> Self {
        Self {
            producer_id,
            producer_epoch,
            last_sequence: -1,
            last_timestamp_ms: -1,
            coordinator_epoch: -1,
            current_txn_start_offset: -1,
        }
    }
}

impl ProducerStates {
    /// Every producer this partition keeps state for (the module docs).
    pub fn active_producers(&self) -> Vec<ActiveProducer> {
        let mut active: BTreeMap<i64, ActiveProducer> = BTreeMap::new();
        for (producer_id, entry) in self.iter_least_recent_first() {
            let mut row = ActiveProducer::unknown(producer_id, entry.epoch);
            if let Some(last) = entry.batches.back() {
                row.last_sequence = last.last_sequence;
                row.last_timestamp_ms = entry.last_timestamp_ms;
            }
            active.insert(producer_id, row);
        }
        for part in self.transactions().producers() {
            let row = active
                .entry(part.producer_id)
                .or_insert_with(|| ActiveProducer::unknown(part.producer_id, part.epoch));
            if part.epoch > row.producer_epoch {
                row.producer_epoch = part.epoch;
                row.last_sequence = -1;
            }
            row.coordinator_epoch = part.coordinator_epoch;
            row.current_txn_start_offset = part.open.map_or(-1, |(first, _)| first);
        }
        active.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::state::test_header;
    use crate::producer::transactions::build_marker_batch;
    use crate::txn::partition_index::TRANSACTIONAL_ATTRIBUTE;
    use crate::txn::{ControlType, EndTxnMarker};
    use kafki_storage::batch::BatchHeader;

    fn transactional(producer_id: i64, epoch: i16, first: i32, count: i32) -> BatchHeader {
        let mut header = test_header(producer_id, epoch, first, count);
        header.attributes = TRANSACTIONAL_ATTRIBUTE;
        header
    }

    fn append_transactional(states: &mut ProducerStates, header: &BatchHeader, offset: u64) {
        states.record(header, offset, 5_000);
        states.record_transactional_data(header, offset);
    }

    #[test]
    fn an_idempotent_producer_has_no_transaction() {
        let mut states = ProducerStates::default();
        states.record(&test_header(3, 1, 0, 4), 0, 1_000);
        states.record(&test_header(3, 1, 4, 2), 4, 2_000);
        assert_eq!(
            states.active_producers(),
            vec![ActiveProducer {
                producer_id: 3,
                producer_epoch: 1,
                last_sequence: 5,
                last_timestamp_ms: 2_000,
                coordinator_epoch: -1,
                current_txn_start_offset: -1,
            }]
        );
    }

    #[test]
    fn an_open_transaction_reports_its_first_offset_until_its_marker() {
        let mut states = ProducerStates::default();
        states.record(&test_header(2, 0, 0, 1), 0, 1_000);
        append_transactional(&mut states, &transactional(9, 4, 0, 2), 1);
        append_transactional(&mut states, &transactional(9, 4, 2, 1), 3);
        let rows = states.active_producers();
        assert_eq!(
            rows.iter().map(|row| row.producer_id).collect::<Vec<_>>(),
            vec![2, 9]
        );
        assert_eq!(rows[1].current_txn_start_offset, 1);
        assert_eq!((rows[1].producer_epoch, rows[1].last_sequence), (4, 2));
        assert_eq!(rows[1].coordinator_epoch, -1, "no marker yet");

        // An ABORT at a bumped producer epoch (a coordinator's timeout):
        // the batches remembered belong to the old epoch.
        let marker = EndTxnMarker {
            control_type: ControlType::Abort,
            coordinator_epoch: 6,
        };
        let batch = build_marker_batch(9, 5, marker, 0);
        let header = BatchHeader::parse(&batch).expect("marker header");
        states.record_stored_batch(&header, &batch, 4, 6_000);
        let after = states.active_producers()[1];
        assert_eq!(after.current_txn_start_offset, -1);
        assert_eq!(after.coordinator_epoch, 6);
        assert_eq!((after.producer_epoch, after.last_sequence), (5, -1));
    }
}
