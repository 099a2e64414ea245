//! The idempotent producer: InitProducerId hands out producer ids (from a
//! block reserved durably on the controller shard, so a restart never
//! reuses one), and each partition checks the sequence numbers of every
//! batch of every (producer id, epoch) — Kafka's rules:
//!
//! * a batch equal to one of the producer's last five is a duplicate: it is
//!   acknowledged with its original offsets and not appended again;
//! * otherwise its first sequence must follow the last one (wrapping at
//!   `i32::MAX`), else `OUT_OF_ORDER_SEQUENCE_NUMBER`;
//! * an older epoch is fenced (`INVALID_PRODUCER_EPOCH`); a newer epoch must
//!   start at sequence 0.
//!
//! Producer state is rebuilt on restart by scanning the batch headers of the
//! last segment of each partition (producers idle for longer than a segment
//! are forgotten and restart their sequences at 0, as after Kafka's
//! producer-id expiry).

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use kafki_storage::batch::BatchHeader;

use crate::shard::Shard;

/// Batches remembered per producer for duplicate detection (Kafka: 5).
const REMEMBERED_BATCHES: usize = 5;
/// Producer ids reserved per durable write of the allocator file.
const ID_BLOCK: i64 = 1000;
const ALLOCATOR_FILE: &str = "producer-ids";

/// One remembered batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: u64,
}

/// What a partition knows of one producer.
#[derive(Debug, Clone, Default)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<SequencedBatch>,
}

/// The verdict on an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Accept,
    /// Already appended at this base offset: acknowledge, do not append.
    Duplicate { base_offset: u64 },
    /// Refuse with this Kafka error code.
    Refuse(i16),
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

fn last_sequence(header: &BatchHeader) -> i32 {
    let span = i64::from(header.base_sequence) + i64::from(header.last_offset_delta);
    (span % (i64::from(i32::MAX) + 1)) as i32
}

/// Per-partition producer state.
#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// Checks a producer batch (non-idempotent batches, producer id -1, are
    /// always accepted).
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        if header.producer_id < 0 {
            return SequenceCheck::Accept;
        }
        if header.base_sequence < 0 {
            return SequenceCheck::Refuse(ResponseError::InvalidRecord.code());
        }
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return if header.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            };
        };
        if header.producer_epoch < entry.epoch {
            return SequenceCheck::Refuse(ResponseError::InvalidProducerEpoch.code());
        }
        if header.producer_epoch > entry.epoch {
            return if header.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
            };
        }
        let last = last_sequence(header);
        if let Some(known) = entry.batches.iter().find(|known| {
            known.first_sequence == header.base_sequence && known.last_sequence == last
        }) {
            return SequenceCheck::Duplicate {
                base_offset: known.base_offset,
            };
        }
        let expected = entry
            .batches
            .back()
            .map_or(0, |known| next_sequence(known.last_sequence));
        if header.base_sequence == expected {
            SequenceCheck::Accept
        } else {
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        }
    }

    /// Records an appended batch (also used when replaying the log).
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64) {
        if header.producer_id < 0 {
            return;
        }
        let entry = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(SequencedBatch {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
        });
        while entry.batches.len() > REMEMBERED_BATCHES {
            entry.batches.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Rebuilds producer state from the batch headers of the log's last
/// segment (see the module comment for why only that much).
pub async fn rebuild(log: &kafki_storage::PartitionLog) -> ProducerStates {
    let mut states = ProducerStates::default();
    let offsets = log.offsets();
    let start = log
        .segment_bases()
        .last()
        .copied()
        .unwrap_or(0)
        .max(offsets.log_start_offset);
    let mut offset = start;
    while offset < offsets.next_offset {
        let Ok(read) = log.read(offset, 1 << 20, offsets.next_offset).await else {
            break;
        };
        if read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
        let Ok(bytes) = read.load().await else {
            break;
        };
        let mut position = 0usize;
        while let Ok(header) = BatchHeader::parse(&bytes[position..]) {
            if header.batch_length < 0 {
                break;
            }
            states.record(&header, header.base_offset as u64);
            position += header.total_bytes();
            if position >= bytes.len() {
                break;
            }
        }
    }
    states
}

/// Durable producer-id allocator, on the controller shard only.
#[derive(Debug, Default)]
pub struct ProducerIdAllocator {
    next: Cell<i64>,
    reserved_until: Cell<i64>,
}

impl ProducerIdAllocator {
    pub fn allocate(&self, data_dir: &Path) -> Result<i64, String> {
        if self.reserved_until.get() == 0 {
            let stored = std::fs::read_to_string(data_dir.join(ALLOCATOR_FILE))
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .unwrap_or(0);
            self.next.set(stored);
            self.reserved_until.set(stored);
        }
        if self.next.get() >= self.reserved_until.get() {
            let until = self.reserved_until.get() + ID_BLOCK;
            write_durably(data_dir, until)?;
            self.reserved_until.set(until);
        }
        let id = self.next.get();
        self.next.set(id + 1);
        Ok(id)
    }
}

fn write_durably(data_dir: &Path, until: i64) -> Result<(), String> {
    use std::io::Write;
    let temp = data_dir.join(format!("{ALLOCATOR_FILE}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(format!("{until}\n").as_bytes())?;
        file.sync_data()?;
        std::fs::rename(&temp, data_dir.join(ALLOCATOR_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    result.map_err(|error| format!("cannot reserve producer ids: {error}"))
}

/// InitProducerId for idempotent producers. Transactional ids are refused
/// (transactions are not implemented and not advertised).
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    if request.transactional_id.is_some() {
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // A producer that already has an id asks for an epoch bump (KIP-360).
    if request.producer_id.0 >= 0
        && request.producer_epoch >= 0
        && request.producer_epoch < i16::MAX - 1
    {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    let allocated = shard
        .invoke_on(0, |controller| async move {
            controller
                .producer_ids
                .allocate(&controller.config.data_dir)
        })
        .await;
    match allocated {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Ok(Err(message)) => {
            tracing::error!(%message, "InitProducerId failed");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
        Err(error) => {
            tracing::error!(%error, "InitProducerId: controller unreachable");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, epoch: i16, first: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first,
            records_count: count,
        }
    }

    #[test]
    fn sequences_duplicates_and_fencing() {
        let mut states = ProducerStates::default();
        assert_eq!(states.check(&header(-1, -1, -1, 3)), SequenceCheck::Accept);
        assert_eq!(
            states.check(&header(7, 0, 5, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(states.check(&header(7, 0, 0, 3)), SequenceCheck::Accept);
        states.record(&header(7, 0, 0, 3), 100);
        assert_eq!(
            states.check(&header(7, 0, 0, 3)),
            SequenceCheck::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            states.check(&header(7, 0, 4, 1)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        assert_eq!(states.check(&header(7, 0, 3, 2)), SequenceCheck::Accept);
        states.record(&header(7, 0, 3, 2), 103);
        // Only the last five batches are remembered.
        for (index, first) in (5..30).step_by(5).enumerate() {
            states.record(&header(7, 0, first, 5), 200 + index as u64);
        }
        assert_eq!(
            states.check(&header(7, 0, 0, 3)),
            SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
        );
        // A newer epoch starts again at 0; the old epoch is then fenced.
        assert_eq!(states.check(&header(7, 1, 0, 1)), SequenceCheck::Accept);
        states.record(&header(7, 1, 0, 1), 300);
        assert_eq!(
            states.check(&header(7, 0, 30, 1)),
            SequenceCheck::Refuse(ResponseError::InvalidProducerEpoch.code())
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut states = ProducerStates::default();
        states.record(&header(1, 0, 0, 1), 0);
        states.record(&header(1, 0, 1, 1), 1);
        let entry = states.producers.get_mut(&1).expect("entry");
        entry.batches.back_mut().expect("batch").last_sequence = i32::MAX;
        assert_eq!(
            states.check(&header(1, 0, 0, 1)),
            SequenceCheck::Duplicate { base_offset: 0 }
        );
        entry_after_wrap(&mut states);
    }

    fn entry_after_wrap(states: &mut ProducerStates) {
        // After i32::MAX the next expected sequence is 0 (a new batch 0..0
        // would collide with the remembered one, so test 0..1).
        assert_eq!(states.check(&header(1, 0, 0, 2)), SequenceCheck::Accept);
    }

    #[test]
    fn allocator_never_reuses_ids_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ProducerIdAllocator::default();
        let a = first.allocate(dir.path()).expect("id");
        let b = first.allocate(dir.path()).expect("id");
        assert_eq!(b, a + 1);
        let restarted = ProducerIdAllocator::default();
        let c = restarted.allocate(dir.path()).expect("id");
        assert!(c > b, "{c} after restart must exceed {b}");
    }
}
