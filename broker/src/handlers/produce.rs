//! Produce: split the request by owning shard, append on each owner, wait
//! for the stage `acks` asks for, gather the answers in request order.
//!
//! * `acks=0`: appended (ordered), no response is sent.
//! * `acks=1`: answered once the batches are *written* (`O_DIRECT` write
//!   completed): a process crash loses nothing acknowledged.
//! * `acks=-1` (all): answered at the topic's commit stage: *durable*
//!   (`fdatasync`, group-committed) unless the topic has a relaxed flush
//!   policy (`flush.messages` > 1 or `flush.ms`), then *written*.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, TopicProduceResponse,
};
use kafki_net::kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafki_storage::batch::{BatchHeader, LENGTH_FIELD_END};

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
}

impl PartitionOutcome {
    fn failed(slot: usize, error_code: i16) -> Self {
        Self {
            slot,
            error_code,
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

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
                            let message = ResponseError::try_from_code(outcome.error_code)
                                .map(|error| error.to_string())
                                .unwrap_or_default();
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
            SequenceCheck::Refuse(code) => return PartitionOutcome::failed(slot, code),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
