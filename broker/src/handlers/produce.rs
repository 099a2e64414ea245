//! Produce: refuse what no partition may take (transactional batches
//! without a `transactional_id`, internal topics, unknown `acks`), split the request by owning shard, split each
//! partition's records into batches, hand them to the partition
//! ([`crate::partition::Partition::append`]: validation, sequences, the
//! wait `acks` asks for within `timeout_ms`), and gather the answers in
//! request order. `acks=0` sends no response.
//!
//! Transactions (Kafka's transaction version 1): a request carrying
//! transactional batches needs a `transactional_id` (else every partition
//! gets `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`, as Kafka without one); the
//! partition applies the transaction rules
//! ([`crate::producer::transactions`]). With
//! `transaction.partition.verification.enable` (the default), a batch that
//! would open its producer's transaction in a partition is taken only once
//! the coordinator confirms the partition is in that transaction (KIP-890,
//! [`crate::txn::verification`]): else `INVALID_TXN_STATE`, or
//! `NOT_ENOUGH_REPLICAS` (retriable) when the coordinator cannot answer now.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafki_net::kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafki_storage::batch::{BatchHeader, LENGTH_FIELD_END};

use super::str_bytes;
use crate::metadata::ClusterMetadata;
use crate::partition::{Acks, PartitionRef, TxnAdmission};
use crate::producer::verification::{VerificationStep, ASK_ABANDONED_MS};
use crate::shard::Shard;
use crate::txn::{verification, ProducerIdAndEpoch, TopicPartition};

/// One partition's share of a produce request, sent to its owner.
struct PartitionWrite {
    slot: usize,
    topic: String,
    partition: i32,
    records: Option<Bytes>,
}

/// The owner's answer for one partition.
#[derive(Debug, Clone)]
struct PartitionOutcome {
    slot: usize,
    error_code: i16,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    /// A more precise message than the error code's (Produce v8+).
    error_message: Option<String>,
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

/// Kafka's message for a client's produce to an internal topic.
const INTERNAL_TOPIC: &str = "Cannot append to internal topic";

pub async fn produce(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let wire_acks = request.acks;
    let acks = Acks::from_wire(wire_acks);
    // Kafka bounds the wait for acks by the request's `timeout_ms`; a
    // client sending 0 or less gets no bound rather than an instant
    // timeout (the single node's commit is an fsync, never instant).
    let timeout = u64::try_from(request.timeout_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let mut layout: Vec<(TopicName, Vec<i32>)> = Vec::new();
    let mut by_shard: BTreeMap<usize, Vec<PartitionWrite>> = BTreeMap::new();
    let mut outcomes: Vec<Option<PartitionOutcome>> = Vec::new();
    // Kafka refuses the whole request when a batch is transactional and no
    // transactional id (the authorization subject) is given.
    let refuse_transactional = request.transactional_id.is_none()
        && request.topic_data.iter().any(|topic| {
            topic
                .partition_data
                .iter()
                .any(|data| data.records.as_ref().is_some_and(has_transactional_batch))
        });
    for topic in request.topic_data {
        let name = topic.name.to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let slot = outcomes.len();
            partitions.push(data.index);
            if refuse_transactional {
                outcomes.push(Some(PartitionOutcome::failed(
                    slot,
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                )));
                continue;
            }
            if ClusterMetadata::is_internal_topic(&name) {
                tracing::debug!(topic = %name, "refusing a client's produce to an internal topic");
                outcomes.push(Some(PartitionOutcome {
                    error_message: Some(INTERNAL_TOPIC.to_string()),
                    ..PartitionOutcome::failed(slot, ResponseError::InvalidTopicException.code())
                }));
                continue;
            }
            if acks.is_none() {
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
    let transactional_id = request.transactional_id.as_ref().map(|id| id.to_string());
    let calls = by_shard.into_iter().map(|(owner, writes)| {
        let fallback: Vec<usize> = writes.iter().map(|write| write.slot).collect();
        let transactional_id = transactional_id.clone();
        async move {
            match shard
                .invoke_on(owner, move |owner| async move {
                    let settings = RequestSettings {
                        acks: acks.unwrap_or(Acks::All),
                        timeout,
                        transactional_id,
                    };
                    append_on_owner(owner, writes, settings).await
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
    if wire_acks == 0 {
        return None;
    }
    let mut slot = 0;
    let responses = layout
        .into_iter()
        .map(|(name, partitions)| {
            let partition_responses = partitions
                .into_iter()
                .map(|index| {
                    let outcome = outcomes.get_mut(slot).and_then(Option::take).unwrap_or(
                        PartitionOutcome::failed(slot, ResponseError::UnknownServerError.code()),
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
                            Some(message) => message,
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

/// Whether the first batch of a records field is transactional (Kafka
/// looks at the first: a produce carries one batch per partition).
fn has_transactional_batch(records: &Bytes) -> bool {
    const ATTRIBUTES_AT: usize = 21;
    records
        .get(ATTRIBUTES_AT..ATTRIBUTES_AT + 2)
        .is_some_and(|bytes| i16::from_be_bytes([bytes[0], bytes[1]]) & (1 << 4) != 0)
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

/// What every partition of one request is appended with.
struct RequestSettings {
    acks: Acks,
    timeout: Option<Duration>,
    /// The request's `transactional_id` (the coordinator to ask, KIP-890).
    transactional_id: Option<String>,
}

/// Runs on the owning shard: appends each partition's batches, then waits
/// for the stage `acks` requires. All partitions wait together, so their
/// syncs are shared.
async fn append_on_owner(
    shard: Rc<Shard>,
    writes: Vec<PartitionWrite>,
    settings: RequestSettings,
) -> Vec<PartitionOutcome> {
    let settings = &settings;
    let appends = writes.into_iter().map(|write| {
        let shard = shard.clone();
        async move { append_partition(&shard, write, settings).await }
    });
    futures::future::join_all(appends).await
}

async fn append_partition(
    shard: &Rc<Shard>,
    write: PartitionWrite,
    settings: &RequestSettings,
) -> PartitionOutcome {
    let slot = write.slot;
    // A cluster member whose write lease lapsed (paused, cut off from the
    // controller past its session) may have been fenced: it writes nothing
    // until the controller answers again; clients retry after a refresh.
    if !shard.may_write() {
        return PartitionOutcome::failed(slot, ResponseError::NotLeaderOrFollower.code());
    }
    let partition = match shard.partition(&write.topic, write.partition).await {
        Ok(partition) => partition,
        Err(code) => return PartitionOutcome::failed(slot, code),
    };
    let Some(records) = write.records.clone() else {
        return PartitionOutcome::failed(slot, ResponseError::CorruptMessage.code());
    };
    let batches = match split_batches(&records) {
        Ok(batches) => batches,
        Err(code) => return PartitionOutcome::failed(slot, code),
    };
    let (partition, admission) = match settings.transactional_id.as_deref() {
        Some(transactional_id) if shard.config.settings.transaction_partition_verification => {
            match verify_first_batch(shard, partition, &write, &batches, transactional_id).await {
                Ok(admitted) => admitted,
                Err((code, error_message)) => {
                    return PartitionOutcome {
                        error_message,
                        ..PartitionOutcome::failed(slot, code)
                    }
                }
            }
        }
        _ => (partition, TxnAdmission::Unverified),
    };
    // A transaction's batches are made durable by its commit instead
    // (`transaction.durable.at.commit`, handlers/txn.rs).
    let acks = if settings.acks == Acks::All
        && crate::txn::runtime::durable_at_commit(&shard.config)
        && all_transactional(&batches)
    {
        Acks::Leader
    } else {
        settings.acks
    };
    match partition
        .append_admitted(batches, acks, settings.timeout, admission)
        .await
    {
        Ok(appended) => PartitionOutcome {
            slot,
            error_code: 0,
            base_offset: appended.base_offset as i64,
            log_append_time_ms: appended.log_append_time_ms.unwrap_or(-1),
            log_start_offset: appended.log_start_offset as i64,
            error_message: None,
            record_index: None,
        },
        Err(refused) => PartitionOutcome {
            error_message: refused.error.message,
            record_index: refused.record_index,
            ..PartitionOutcome::failed(slot, refused.error.code)
        },
    }
}

/// Whether every batch is transactional (a producer's request holds one
/// producer's batches; a mixed one is not trusted to be).
fn all_transactional(batches: &[Bytes]) -> bool {
    batches
        .iter()
        .all(|batch| BatchHeader::parse(batch).is_ok_and(|header| header.is_transactional()))
}

/// Times a request waits for another's verification of the same producer
/// before it answers a retriable error (each wait ends with an answer, a
/// refusal or the guard gone, so this is only reached when other requests
/// keep taking the question over).
const VERIFICATION_WAITS_MAX: usize = 8;

/// KIP-890: the admission of a partition's batches when verification is
/// on. A batch that would open its producer's transaction here (Kafka looks
/// at the first: a produce carries one batch per partition) needs the
/// coordinator's confirmation, unless a request before it already got it at
/// this epoch; while one is asking, later requests wait for its answer so
/// that they append after it, in order. The partition is let go while the
/// coordinator is asked (a hand-over need not wait for it) and looked up
/// again after. `Err` is the code and message to answer.
async fn verify_first_batch(
    shard: &Rc<Shard>,
    mut partition: PartitionRef,
    write: &PartitionWrite,
    batches: &[Bytes],
    transactional_id: &str,
) -> Result<(PartitionRef, TxnAdmission), (i16, Option<String>)> {
    let header = batches
        .first()
        .and_then(|batch| BatchHeader::parse(batch).ok());
    let Some(header) = header else {
        // The append refuses it as corrupt; nothing to verify.
        return Ok((partition, TxnAdmission::Verified(None)));
    };
    let mut waits = 0;
    let guard = loop {
        match partition.begin_txn_verification(&header) {
            None => return Ok((partition, TxnAdmission::Verified(None))),
            Some(VerificationStep::Confirmed(guard)) => {
                return Ok((partition, TxnAdmission::Verified(Some(guard))))
            }
            Some(VerificationStep::Ask(guard)) => break guard,
            Some(VerificationStep::Wait(answered)) => {
                waits += 1;
                if waits > VERIFICATION_WAITS_MAX {
                    return Err(verification::produce_error(
                        ResponseError::ConcurrentTransactions.code(),
                    ));
                }
                drop(partition);
                // Woken by the answer, or by the guard going (a dropped
                // sender); or the question was abandoned, which the next
                // look finds out: either way, look again.
                let abandoned = std::pin::pin!(glommio::timer::sleep(Duration::from_millis(
                    ASK_ABANDONED_MS
                )));
                let _ = futures::future::select(answered, abandoned).await;
                partition = shard
                    .partition(&write.topic, write.partition)
                    .await
                    .map_err(|code| (code, None))?;
            }
        }
    };
    drop(partition);
    let producer = ProducerIdAndEpoch {
        producer_id: header.producer_id,
        epoch: header.producer_epoch,
    };
    let asked = TopicPartition::new(write.topic.clone(), write.partition);
    let verdicts =
        verification::ask_coordinator(shard, transactional_id, producer, vec![asked.clone()]).await;
    let code = match verdicts {
        Ok(verdicts) => verdicts
            .into_iter()
            .find(|(partition, _)| *partition == asked)
            .map_or(ResponseError::NetworkException.code(), |(_, code)| code),
        Err(code) => code,
    };
    let partition = shard
        .partition(&write.topic, write.partition)
        .await
        .map_err(|code| (code, None))?;
    partition.finish_txn_verification(header.producer_id, guard, code == 0);
    if code != 0 {
        tracing::debug!(
            topic = %write.topic,
            partition = write.partition,
            transactional_id,
            producer_id = header.producer_id,
            producer_epoch = header.producer_epoch,
            code,
            "transaction verification failed"
        );
        return Err(verification::produce_error(code));
    }
    Ok((partition, TxnAdmission::Verified(Some(guard))))
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
