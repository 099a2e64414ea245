//! Transaction requests: InitProducerId with a `transactional.id`,
//! AddPartitionsToTxn (v4+: batched, `verify_only`), AddOffsetsToTxn,
//! EndTxn, DescribeTransactions and ListTransactions. Each is translated
//! into an input of the pure coordinator ([`crate::txn::coordinator`]) run
//! on the id's coordinator shard by the runtime ([`crate::txn::runtime`]),
//! and its answer into the response; the error codes come from
//! [`TxnError`] (the legacy ones for clients older than PRODUCER_FENCED).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafki_net::kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafki_net::kafka_protocol::messages::{
    describe_transactions_response, list_transactions_response, AddOffsetsToTxnRequest,
    AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};

use super::str_bytes;
use crate::shard::Shard;
use crate::txn::runtime::{
    inspect_txn_coordinator, on_txn_coordinator, on_txn_coordinator_when_settled,
};
use crate::txn::{Input, ProducerIdAndEpoch, Response, TopicPartition, TxnError, TxnMetadata};

/// Partitions one AddPartitionsToTxn may name (the coordinator's own
/// limit per transaction is checked there); more is INVALID_REQUEST,
/// before anything is allocated per partition.
const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;

/// Transactions one batched (v4+) AddPartitionsToTxn may carry.
const TRANSACTIONS_PER_REQUEST_MAX: usize = 1_000;

/// Ids one DescribeTransactions may name (each is a call to its
/// coordinator shard); the rest are answered INVALID_REQUEST.
const DESCRIBED_IDS_MAX: usize = 10_000;

/// The code for `error` at `version`, given the first version that knows
/// PRODUCER_FENCED.
fn code_at(error: TxnError, version: i16, fenced_since: i16) -> i16 {
    if version < fenced_since {
        error.code_for_legacy_client()
    } else {
        error.code()
    }
}

/// InitProducerId for a transactional producer (the idempotent path stays
/// in [`super::producer`]).
pub async fn init_transactional_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    version: i16,
    transactional_id: String,
) -> InitProducerIdResponse {
    let expected =
        (request.producer_id.0 >= 0 && request.producer_epoch >= 0).then_some(ProducerIdAndEpoch {
            producer_id: request.producer_id.0,
            epoch: request.producer_epoch,
        });
    let timeout_ms = request.transaction_timeout_ms;
    let answer = on_txn_coordinator(shard, &transactional_id.clone(), move |request| {
        Input::InitProducerId {
            request,
            transactional_id: Some(transactional_id),
            timeout_ms,
            expected,
        }
    })
    .await;
    let result = match answer {
        Ok(Response::InitProducerId(result)) => result,
        Ok(_) => Err(TxnError::CoordinatorNotAvailable),
        Err(error) => Err(error),
    };
    match result {
        Ok(producer) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer.producer_id))
            .with_producer_epoch(producer.epoch),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(code_at(error, version, 4))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

/// One transaction of an AddPartitionsToTxn, in either form.
struct AddPartitionsCall {
    transactional_id: String,
    producer: ProducerIdAndEpoch,
    verify_only: bool,
    topics: Vec<AddPartitionsToTxnTopic>,
}

pub async fn add_partitions_to_txn(
    shard: &Rc<Shard>,
    request: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    if version < 4 {
        let call = AddPartitionsCall {
            transactional_id: request.v3_and_below_transactional_id.to_string(),
            producer: ProducerIdAndEpoch {
                producer_id: request.v3_and_below_producer_id.0,
                epoch: request.v3_and_below_producer_epoch,
            },
            verify_only: false,
            topics: request.v3_and_below_topics,
        };
        let results = add_partitions(shard, call, version).await;
        return AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results);
    }
    if request.transactions.len() > TRANSACTIONS_PER_REQUEST_MAX {
        return AddPartitionsToTxnResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    let mut results = Vec::with_capacity(request.transactions.len());
    for transaction in request.transactions {
        let transactional_id = transaction.transactional_id.to_string();
        let call = AddPartitionsCall {
            transactional_id: transactional_id.clone(),
            producer: ProducerIdAndEpoch {
                producer_id: transaction.producer_id.0,
                epoch: transaction.producer_epoch,
            },
            verify_only: transaction.verify_only,
            topics: transaction.topics,
        };
        let topic_results = add_partitions(shard, call, version).await;
        results.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(TransactionalId(str_bytes(&transactional_id)))
                .with_topic_results(topic_results),
        );
    }
    AddPartitionsToTxnResponse::default().with_results_by_transaction(results)
}

/// One transaction's partitions added (or verified): a code per partition.
async fn add_partitions(
    shard: &Rc<Shard>,
    call: AddPartitionsCall,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let requested: usize = call.topics.iter().map(|topic| topic.partitions.len()).sum();
    if requested > PARTITIONS_PER_REQUEST_MAX {
        return topic_results(&call.topics, |_| ResponseError::InvalidRequest.code());
    }
    // Kafka refuses the whole request when a partition does not exist:
    // UNKNOWN_TOPIC_OR_PARTITION for it, OPERATION_NOT_ATTEMPTED for the rest.
    let metadata = shard.metadata();
    let exists = |topic: &str, index: i32| {
        metadata
            .topic(topic)
            .is_some_and(|meta| index >= 0 && index < meta.partitions)
    };
    let any_unknown = call.topics.iter().any(|topic| {
        topic
            .partitions
            .iter()
            .any(|index| !exists(&topic.name, *index))
    });
    if any_unknown {
        return topic_results(&call.topics, |(topic, index)| {
            if exists(topic, index) {
                ResponseError::OperationNotAttempted.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            }
        });
    }
    let partitions: Vec<TopicPartition> = call
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|index| TopicPartition::new(topic.name.to_string(), *index))
        })
        .collect();
    let transactional_id = call.transactional_id.clone();
    let producer = call.producer;
    let answer = if call.verify_only {
        on_txn_coordinator_when_settled(shard, &call.transactional_id, move |request| {
            Input::VerifyPartitions {
                request,
                transactional_id: transactional_id.clone(),
                producer,
                partitions: partitions.clone(),
            }
        })
        .await
    } else {
        on_txn_coordinator_when_settled(shard, &call.transactional_id, move |request| {
            Input::AddPartitions {
                request,
                transactional_id: transactional_id.clone(),
                producer,
                partitions: partitions.clone(),
            }
        })
        .await
    };
    let code = |error: TxnError| code_at(error, version, 2);
    match answer {
        Ok(Response::AddPartitions(Ok(()))) => topic_results(&call.topics, |_| 0),
        Ok(Response::VerifyPartitions(Ok(verified))) => {
            let codes: BTreeMap<(String, i32), i16> = verified
                .into_iter()
                .map(|(partition, error)| {
                    (
                        (partition.topic, partition.partition),
                        error.map_or(0, code),
                    )
                })
                .collect();
            topic_results(&call.topics, |(topic, index)| {
                codes
                    .get(&(topic.to_string(), index))
                    .copied()
                    .unwrap_or(ResponseError::InvalidTxnState.code())
            })
        }
        Ok(Response::AddPartitions(Err(error)))
        | Ok(Response::VerifyPartitions(Err(error)))
        | Err(error) => topic_results(&call.topics, |_| code(error)),
        Ok(_) => topic_results(&call.topics, |_| {
            ResponseError::CoordinatorNotAvailable.code()
        }),
    }
}

/// A result per requested partition, its code from `code_of((topic, index))`.
fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    code_of: impl Fn((&str, i32)) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|topic| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic.name.clone())
                .with_results_by_partition(
                    topic
                        .partitions
                        .iter()
                        .map(|index| {
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*index)
                                .with_partition_error_code(code_of((&topic.name, *index)))
                        })
                        .collect(),
                )
        })
        .collect()
}

pub async fn add_offsets_to_txn(
    shard: &Rc<Shard>,
    request: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let group = request.group_id.to_string();
    if group.is_empty() {
        return AddOffsetsToTxnResponse::default()
            .with_error_code(ResponseError::InvalidGroupId.code());
    }
    // The offsets commit later goes to the group's offsets partition: the
    // topic must exist for the marker to land.
    if let Err(code) = crate::group::runtime::ensure_offsets_topic(shard).await {
        return AddOffsetsToTxnResponse::default().with_error_code(code);
    }
    let offsets_partition = crate::group::runtime::offsets_partition_for(
        &group,
        crate::group::runtime::offsets_partitions(shard),
    );
    let transactional_id = request.transactional_id.to_string();
    let producer = ProducerIdAndEpoch {
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
    };
    let answer =
        on_txn_coordinator_when_settled(shard, &transactional_id.clone(), move |request| {
            Input::AddOffsets {
                request,
                transactional_id: transactional_id.clone(),
                producer,
                offsets_partition,
            }
        })
        .await;
    let code = match answer {
        Ok(Response::AddOffsets(Ok(()))) => 0,
        Ok(Response::AddOffsets(Err(error))) | Err(error) => code_at(error, version, 2),
        Ok(_) => ResponseError::CoordinatorNotAvailable.code(),
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn end_txn(shard: &Rc<Shard>, request: EndTxnRequest, version: i16) -> EndTxnResponse {
    let transactional_id = request.transactional_id.to_string();
    let producer = ProducerIdAndEpoch {
        producer_id: request.producer_id.0,
        epoch: request.producer_epoch,
    };
    let commit = request.committed;
    // The transaction's batches were answered once written: durable first.
    if commit && crate::txn::runtime::durable_at_commit(&shard.config) {
        if let Err(error) =
            crate::txn::runtime::make_txn_data_durable(shard, &transactional_id, producer).await
        {
            return EndTxnResponse::default().with_error_code(code_at(error, version, 2));
        }
    }
    let answer = on_txn_coordinator(shard, &transactional_id.clone(), move |request| {
        Input::EndTxn {
            request,
            transactional_id,
            producer,
            commit,
        }
    })
    .await;
    let code = match answer {
        Ok(Response::EndTxn(Ok(()))) => 0,
        Ok(Response::EndTxn(Err(error))) | Err(error) => code_at(error, version, 2),
        Ok(_) => ResponseError::CoordinatorNotAvailable.code(),
    };
    EndTxnResponse::default().with_error_code(code)
}

pub async fn describe_transactions(
    shard: &Rc<Shard>,
    request: DescribeTransactionsRequest,
    _version: i16,
) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(request.transactional_ids.len().min(DESCRIBED_IDS_MAX));
    for (index, transactional_id) in request.transactional_ids.into_iter().enumerate() {
        if index >= DESCRIBED_IDS_MAX {
            states.push(
                describe_transactions_response::TransactionState::default()
                    .with_transactional_id(transactional_id)
                    .with_error_code(ResponseError::InvalidRequest.code()),
            );
            continue;
        }
        let id = transactional_id.to_string();
        let looked_up = {
            let id = id.clone();
            inspect_txn_coordinator(shard, &id.clone(), move |coordinator| {
                coordinator.metadata(&id).cloned()
            })
            .await
        };
        let state = describe_transactions_response::TransactionState::default()
            .with_transactional_id(transactional_id)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1);
        states.push(match looked_up {
            Ok(Some(metadata)) => describe(state, &metadata),
            Ok(None) => state.with_error_code(ResponseError::TransactionalIdNotFound.code()),
            Err(error) => state.with_error_code(error.code()),
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

fn describe(
    state: describe_transactions_response::TransactionState,
    metadata: &TxnMetadata,
) -> describe_transactions_response::TransactionState {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for partition in &metadata.partitions {
        by_topic
            .entry(partition.topic.as_str())
            .or_default()
            .push(partition.partition);
    }
    let topics = by_topic
        .into_iter()
        .map(|(topic, partitions)| {
            describe_transactions_response::TopicData::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(partitions)
        })
        .collect();
    state
        .with_transaction_state(str_bytes(metadata.state.name()))
        .with_transaction_timeout_ms(metadata.timeout_ms)
        .with_transaction_start_time_ms(metadata.start_timestamp_ms)
        .with_producer_id(ProducerId(metadata.producer_id))
        .with_producer_epoch(metadata.producer_epoch)
        .with_topics(topics)
}

/// One listed transaction, as it crosses shards.
#[derive(Debug, Clone)]
struct Listed {
    transactional_id: String,
    producer_id: i64,
    state: crate::txn::TxnState,
    start_timestamp_ms: i64,
}

/// The state names Kafka's ListTransactions filters by.
const STATE_NAMES: [&str; 6] = [
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
];

/// ListTransactions: the transactions every shard of this node coordinates
/// (clients ask every broker), filtered by state, producer id and (v1)
/// how long they have been running.
pub async fn list_transactions(
    shard: &Rc<Shard>,
    request: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut unknown_states = Vec::new();
    let mut wanted_states = std::collections::BTreeSet::new();
    for name in &request.state_filters {
        match STATE_NAMES.iter().position(|known| *known == name.as_str()) {
            Some(_) => {
                wanted_states.insert(name.to_string());
            }
            None => unknown_states.push(name.clone()),
        }
    }
    let wanted_producers: std::collections::HashSet<i64> =
        request.producer_id_filters.iter().map(|id| id.0).collect();
    let duration_filter_ms = if version >= 1 {
        request.duration_filter
    } else {
        -1
    };
    let now_ms = crate::clock::now_ms();
    let mut listed = Vec::new();
    for target in 0..shard.count {
        let gathered = shard
            .invoke_on(target, |owner| async move {
                owner.txn.with_coordinator(|coordinator| {
                    coordinator
                        .transactions()
                        .map(|(id, metadata)| Listed {
                            transactional_id: id.to_string(),
                            producer_id: metadata.producer_id,
                            state: metadata.state,
                            start_timestamp_ms: metadata.start_timestamp_ms,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await;
        match gathered {
            Ok(transactions) => listed.extend(transactions),
            Err(error) => {
                tracing::error!(%error, "ListTransactions: a shard did not answer");
                return ListTransactionsResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code());
            }
        }
    }
    let states = listed
        .into_iter()
        .filter(|listed| wanted_states.is_empty() || wanted_states.contains(listed.state.name()))
        .filter(|listed| {
            wanted_producers.is_empty() || wanted_producers.contains(&listed.producer_id)
        })
        .filter(|listed| {
            // Kafka: only transactions running at least this long; one
            // that has not started (start -1) never qualifies.
            duration_filter_ms < 0
                || (listed.start_timestamp_ms >= 0
                    && now_ms.saturating_sub(listed.start_timestamp_ms) >= duration_filter_ms)
        })
        .map(|listed| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(&listed.transactional_id)))
                .with_producer_id(ProducerId(listed.producer_id))
                .with_transaction_state(str_bytes(listed.state.name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown_states)
        .with_transaction_states(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_clients_get_invalid_producer_epoch_for_a_fence() {
        let fenced = TxnError::ProducerFenced;
        assert_eq!(
            code_at(fenced, 1, 2),
            ResponseError::InvalidProducerEpoch.code()
        );
        assert_eq!(code_at(fenced, 2, 2), ResponseError::ProducerFenced.code());
        assert_eq!(
            code_at(TxnError::ConcurrentTransactions, 0, 2),
            ResponseError::ConcurrentTransactions.code()
        );
    }

    #[test]
    fn every_result_names_its_partition() {
        let topics = vec![AddPartitionsToTxnTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partitions(vec![0, 3])];
        let results = topic_results(&topics, |(_, index)| index as i16);
        let codes: Vec<(i32, i16)> = results[0]
            .results_by_partition
            .iter()
            .map(|result| (result.partition_index, result.partition_error_code))
            .collect();
        assert_eq!(codes, vec![(0, 0), (3, 3)]);
    }
}
