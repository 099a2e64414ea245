//! Produce: split the request by owning shard, append on each owner, wait
//! for the stage `acks` asks for, gather the answers in request order.
//!
//! * `acks=0`: appended (ordered), no response is sent.
//! * `acks=1`: answered once the batches are *written* (`O_DIRECT` write
//!   completed): a process crash loses nothing acknowledged.
//! * `acks=-1` (all): answered at the topic's commit stage: *durable*
//!   (`fdatasync`, group-committed) unless the topic has a relaxed flush
//!   policy (`flush.messages` > 1 or `flush.ms`), then *written*.
//!
//! A compacted topic (`cleanup.policy` with `compact`) refuses a batch with
//! a record without a key, as Kafka does (`INVALID_RECORD`, nothing of the
//! request appended). Only those topics decode records to check it.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafki_net::kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafki_storage::batch::{BatchHeader, LENGTH_FIELD_END};

use super::offsets::DECOMPRESSED_BATCH_BYTES_MAX;
use super::producer::SequenceCheck;
use super::str_bytes;
use crate::errors::code_for_log_error;
use crate::shard::Shard;

/// One partition's share of a produce request, sent to its owner.
struct PartitionWrite {
    slot: usize,
    topic: String,
    partition: i32,
    records: Option<Bytes>,
}

/// The owner's answer for one partition.
#[derive(Debug, Clone, Copy)]
struct PartitionOutcome {
    slot: usize,
    error_code: i16,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    /// A more precise message than the error code's (Produce v8+).
    error_message: Option<&'static str>,
    /// The refused record's index in its batch (`record_errors`, v8+).
    record_index: Option<i32>,
}

impl PartitionOutcome {
    fn failed(slot: usize, error_code: i16) -> Self {
        Self {
            slot,
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            error_message: None,
            record_index: None,
        }
    }
}

/// Kafka's message for a record without a key in a compacted topic.
const KEYLESS_IN_COMPACTED: &str = "Compacted topic cannot accept message without key";

pub async fn produce(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let mut layout: Vec<(TopicName, Vec<i32>)> = Vec::new();
    let mut by_shard: BTreeMap<usize, Vec<PartitionWrite>> = BTreeMap::new();
    let mut outcomes: Vec<Option<PartitionOutcome>> = Vec::new();
    let transactional = request.transactional_id.is_some();
    for topic in request.topic_data {
        let name = topic.name.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let slot = outcomes.len();
            partitions.push(data.index);
            if transactional {
                outcomes.push(Some(PartitionOutcome::failed(
                    slot,
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                )));
                continue;
            }
            if acks != 0 && acks != 1 && acks != -1 {
                outcomes.push(Some(PartitionOutcome::failed(
                    slot,
                    ResponseError::InvalidRequiredAcks.code(),
                )));
                continue;
            }
            outcomes.push(None);
            let owner = shard.owner_of(&name, data.index);
            by_shard.entry(owner).or_default().push(PartitionWrite {
                slot,
                topic: name.clone(),
                partition: data.index,
                records: data.records,
            });
        }
        layout.push((topic.name, partitions));
    }
    let calls = by_shard.into_iter().map(|(owner, writes)| {
        let fallback: Vec<usize> = writes.iter().map(|write| write.slot).collect();
        async move {
            match shard
                .invoke_on(owner, move |owner| async move {
                    append_on_owner(owner, writes, acks).await
                })
                .await
            {
                Ok(results) => results,
                Err(error) => {
                    tracing::error!(%error, "produce: owner shard unreachable");
                    fallback
                        .into_iter()
                        .map(|slot| {
                            PartitionOutcome::failed(slot, ResponseError::UnknownServerError.code())
                        })
                        .collect()
                }
            }
        }
    });
    for results in futures::future::join_all(calls).await {
        for outcome in results {
            if let Some(entry) = outcomes.get_mut(outcome.slot) {
                *entry = Some(outcome);
            }
        }
    }
    if acks == 0 {
        return None;
    }
    let mut slot = 0;
    let responses = layout
        .into_iter()
        .map(|(name, partitions)| {
            let partition_responses =
                partitions
                    .into_iter()
                    .map(|index| {
                        let outcome = outcomes.get(slot).copied().flatten().unwrap_or(
                            PartitionOutcome::failed(
                                slot,
                                ResponseError::UnknownServerError.code(),
                            ),
                        );
                        slot += 1;
                        let mut response = PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(outcome.error_code)
                            .with_base_offset(outcome.base_offset)
                            .with_log_append_time_ms(outcome.log_append_time_ms)
                            .with_log_start_offset(outcome.log_start_offset);
                        if outcome.error_code != 0 && version >= 8 {
                            let message = match outcome.error_message {
                                Some(message) => message.to_string(),
                                None => ResponseError::try_from_code(outcome.error_code)
                                    .map(|error| error.to_string())
                                    .unwrap_or_default(),
                            };
                            if let Some(index) = outcome.record_index {
                                response = response.with_record_errors(vec![
                                    BatchIndexAndErrorMessage::default()
                                        .with_batch_index(index)
                                        .with_batch_index_error_message(Some(str_bytes(&message))),
                                ]);
                            }
                            response = response.with_error_message(Some(str_bytes(&message)));
                        }
                        response
                    })
                    .collect();
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partition_responses)
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}

/// Splits a records field into its batches by their length fields, without
/// trusting them beyond the bytes present.
fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, i16> {
    let mut batches = Vec::new();
    let mut position = 0usize;
    while position < records.len() {
        let rest = &records[position..];
        if rest.len() < LENGTH_FIELD_END {
            return Err(ResponseError::CorruptMessage.code());
        }
        let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let total = usize::try_from(length)
            .ok()
            .and_then(|length| length.checked_add(LENGTH_FIELD_END))
            .filter(|total| *total <= rest.len())
            .ok_or(ResponseError::CorruptMessage.code())?;
        batches.push(records.slice(position..position + total));
        position += total;
    }
    if batches.is_empty() {
        return Err(ResponseError::CorruptMessage.code());
    }
    Ok(batches)
}

/// Runs on the owning shard: appends each partition's batches, then waits
/// for the stage `acks` requires. All partitions wait together, so their
/// syncs are shared.
async fn append_on_owner(
    shard: Rc<Shard>,
    writes: Vec<PartitionWrite>,
    acks: i16,
) -> Vec<PartitionOutcome> {
    let appends = writes.into_iter().map(|write| {
        let shard = shard.clone();
        async move { append_partition(&shard, write, acks).await }
    });
    futures::future::join_all(appends).await
}

async fn append_partition(shard: &Shard, write: PartitionWrite, acks: i16) -> PartitionOutcome {
    let slot = write.slot;
    let partition = match shard.partition(&write.topic, write.partition).await {
        Ok(partition) => partition,
        Err(code) => return PartitionOutcome::failed(slot, code),
    };
    let Some(records) = write.records else {
        return PartitionOutcome::failed(slot, ResponseError::CorruptMessage.code());
    };
    let batches = match split_batches(&records) {
        Ok(batches) => batches,
        Err(code) => return PartitionOutcome::failed(slot, code),
    };
    // Validate every batch first: a request is appended whole or not at all.
    let compacted = partition.log.config().compaction.is_some();
    for batch in &batches {
        if batch.len() > partition.log.config().max_batch_bytes {
            return PartitionOutcome::failed(slot, ResponseError::MessageTooLarge.code());
        }
        if let Err(error) = kafki_storage::batch::validate_producer_batch(batch) {
            tracing::debug!(topic = %write.topic, partition = write.partition, %error, "refusing batch");
            return PartitionOutcome::failed(
                slot,
                code_for_log_error(&kafki_storage::LogError::InvalidBatch(error)),
            );
        }
        if compacted {
            if let Err(outcome) = check_keys(slot, batch) {
                tracing::debug!(topic = %write.topic, partition = write.partition, "refusing a record without a key for a compacted topic");
                return outcome;
            }
        }
    }
    let mut first: Option<(u64, Option<i64>)> = None;
    let mut last_offset = 0;
    for batch in batches {
        // Wait for room first, so the sequence check and the append happen
        // with no await between them (no other append can interleave).
        if let Err(error) = partition.log.wait_for_buffer_room().await {
            return PartitionOutcome::failed(slot, code_for_log_error(&error));
        }
        // A hand-over took the partition away while we waited: refuse, so it
        // need not wait for us, and the client retries on the new owner.
        if partition.is_released() {
            tracing::debug!(topic = %write.topic, partition = write.partition, "refusing an append: the partition was handed over");
            return PartitionOutcome::failed(slot, ResponseError::NotLeaderOrFollower.code());
        }
        let Ok(header) = BatchHeader::parse(&batch) else {
            return PartitionOutcome::failed(slot, ResponseError::CorruptMessage.code());
        };
        match partition.producers.borrow().check(&header) {
            SequenceCheck::Accept => {}
            SequenceCheck::Duplicate { base_offset } => {
                first.get_or_insert((base_offset, None));
                last_offset = base_offset + header.last_offset_delta as u64;
                continue;
            }
            SequenceCheck::Refuse(mut code) => {
                if code == ResponseError::OutOfOrderSequenceNumber.code() {
                    code = partition.out_of_sequence_code();
                }
                tracing::debug!(
                    topic = %write.topic,
                    partition = write.partition,
                    producer_id = header.producer_id,
                    producer_epoch = header.producer_epoch,
                    base_sequence = header.base_sequence,
                    code,
                    "refusing a producer batch"
                );
                return PartitionOutcome::failed(slot, code);
            }
        }
        match partition.log.append_now(batch, partition.leader_epoch) {
            Ok(info) => {
                partition.producers.borrow_mut().record(
                    &header,
                    info.base_offset,
                    crate::shard::now_ms(),
                );
                first.get_or_insert((info.base_offset, info.log_append_time_ms));
                last_offset = info.last_offset;
            }
            Err(error) => {
                tracing::warn!(topic = %write.topic, partition = write.partition, %error, "append failed");
                return PartitionOutcome::failed(slot, code_for_log_error(&error));
            }
        }
    }
    let Some((first_offset, log_append_time_ms)) = first else {
        return PartitionOutcome::failed(slot, ResponseError::CorruptMessage.code());
    };
    let waited = match acks {
        0 => Ok(()),
        1 => partition.log.wait_written(last_offset + 1).await,
        _ => partition.wait_committed(last_offset + 1).await,
    };
    if let Err(error) = waited {
        return PartitionOutcome::failed(slot, code_for_log_error(&error));
    }
    PartitionOutcome {
        slot,
        error_code: 0,
        base_offset: first_offset as i64,
        log_append_time_ms: log_append_time_ms.unwrap_or(-1),
        log_start_offset: partition.log.offsets().log_start_offset as i64,
        error_message: None,
        record_index: None,
    }
}

/// A compacted topic needs a key on every record (decompressing at most
/// [`DECOMPRESSED_BATCH_BYTES_MAX`]).
fn check_keys(slot: usize, batch: &[u8]) -> Result<(), PartitionOutcome> {
    use kafki_storage::compression::CompressionError;
    use kafki_storage::records::{first_keyless_record, RecordError};
    match first_keyless_record(batch, DECOMPRESSED_BATCH_BYTES_MAX) {
        Ok(None) => Ok(()),
        Ok(Some(index)) => Err(PartitionOutcome {
            error_message: Some(KEYLESS_IN_COMPACTED),
            record_index: i32::try_from(index).ok(),
            ..PartitionOutcome::failed(slot, ResponseError::InvalidRecord.code())
        }),
        Err(RecordError::Compression(CompressionError::TooLarge { .. })) => Err(PartitionOutcome {
            error_message: Some("batch decompresses beyond the broker's limit"),
            ..PartitionOutcome::failed(slot, ResponseError::InvalidRecord.code())
        }),
        Err(_) => Err(PartitionOutcome::failed(
            slot,
            ResponseError::CorruptMessage.code(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_topics_need_a_key_on_every_record() {
        let keyed = kafki_storage::batch::build_keyed_batch(1, &[(Some(b"k"), Some(b"v"))]);
        assert!(check_keys(0, &keyed).is_ok());
        let mixed = kafki_storage::batch::build_keyed_batch(
            1,
            &[
                (Some(b"k"), Some(b"v")),
                (None, Some(b"v")),
                (Some(b"k"), None),
            ],
        );
        let refused = check_keys(3, &mixed).expect_err("refused");
        assert_eq!(refused.error_code, ResponseError::InvalidRecord.code());
        assert_eq!(refused.error_code, 87);
        assert_eq!(refused.record_index, Some(1));
        assert_eq!(refused.slot, 3);
        let mut damaged = mixed.to_vec();
        damaged[kafki_storage::batch::BATCH_HEADER_BYTES] = 0x7f;
        assert_eq!(
            check_keys(0, &damaged).expect_err("refused").error_code,
            ResponseError::CorruptMessage.code()
        );
    }

    #[test]
    fn split_refuses_lengths_beyond_the_bytes() {
        let one = kafki_storage::batch::build_batch(1, &[b"a".as_slice()]);
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        assert_eq!(split_batches(&Bytes::from(two)).expect("two").len(), 2);
        let mut lying = one.to_vec();
        lying[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(split_batches(&Bytes::from(lying)).is_err());
        let mut negative = one.to_vec();
        negative[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(split_batches(&Bytes::from(negative)).is_err());
        assert!(split_batches(&Bytes::new()).is_err());
        assert!(split_batches(&one.slice(..5)).is_err());
    }
}
