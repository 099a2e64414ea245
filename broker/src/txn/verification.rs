//! KIP-890 part 1 on the partition leader: before a transaction's first
//! batch lands in a partition, the leader asks the transaction coordinator
//! whether the partition is in the producer's ongoing transaction (Kafka's
//! `AddPartitionsToTxnManager.verifyTransaction` and the error translation
//! of `ReplicaManager.appendRecords`). A producer that skipped
//! AddPartitionsToTxn, or a late write after its transaction was aborted,
//! then gets `INVALID_TXN_STATE` instead of opening a transaction here that
//! no coordinator will ever end (a hanging transaction that pins the last
//! stable offset).
//!
//! The coordinator is the leader of the id's `__transaction_state`
//! partition. On this node the question goes to the coordinator's shard
//! ([`super::runtime::verify_partitions`]); on another node it travels as
//! an AddPartitionsToTxn v4 with `verify_only` over the node links
//! ([`super::verify_frames`]). The node links rather than a Kafka client
//! connection to the coordinator's listener: they are already connected,
//! reconnected and bounded between every pair of members, they route an
//! answer back to the asking shard by request id (as the markers do), and
//! they need neither the client listener's address nor its SASL/TLS.
//!
//! The per-partition memory that makes only a transaction's first batch pay
//! for the question is [`crate::producer::verification`].

use std::rc::Rc;
use std::time::Duration;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafki_net::kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ProducerId, TopicName, TransactionalId,
};

use super::runtime::{txn_partition_for, TXN_TOPIC};
use super::{ProducerIdAndEpoch, TopicPartition};
use crate::metadata::nodes::Leader;
use crate::shard::Shard;

/// How long a leader waits for another node's coordinator to answer; no
/// answer is NETWORK_EXCEPTION (retriable: the client produces again).
pub const REMOTE_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The coordinator's verdict per partition, as Kafka's
/// `AddPartitionsToTxnManager` hands it to the produce path: 0 when the
/// partition is in the ongoing transaction, else the error code (before
/// [`produce_error`] translates it for the client). `Err` is one code for
/// every partition (the coordinator could not be asked or refused the
/// producer).
pub type Verdicts = Result<Vec<(TopicPartition, i16)>, i16>;

/// Asks the coordinator of `transactional_id`, wherever it is, whether
/// `partitions` are in `producer`'s ongoing transaction.
pub async fn ask_coordinator(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer: ProducerIdAndEpoch,
    partitions: Vec<TopicPartition>,
) -> Verdicts {
    let metadata = shard.metadata();
    // No transaction state at all: no transaction is ongoing anywhere yet
    // (Kafka answers COORDINATOR_NOT_AVAILABLE; the topic is not created
    // from a produce).
    if metadata.topic(TXN_TOPIC).is_none() {
        return Err(ResponseError::CoordinatorNotAvailable.code());
    }
    let log_partition = txn_partition_for(shard, transactional_id);
    let me = shard.config.node_id;
    match metadata.leader(TXN_TOPIC, log_partition) {
        Leader::ThisNode => ask_here(shard, transactional_id, producer, partitions).await,
        Leader::Node(node) if node == me => {
            ask_here(shard, transactional_id, producer, partitions).await
        }
        Leader::Node(node) => ask_node(shard, node, transactional_id, producer, partitions).await,
        Leader::Offline => Err(ResponseError::CoordinatorNotAvailable.code()),
    }
}

async fn ask_here(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer: ProducerIdAndEpoch,
    partitions: Vec<TopicPartition>,
) -> Verdicts {
    match super::runtime::verify_partitions(shard, transactional_id, producer, partitions).await {
        Ok(verified) => Ok(verified
            .into_iter()
            .map(|(partition, error)| (partition, error.map_or(0, |error| error.code())))
            .collect()),
        Err(error) => Err(coordinator_code(error.code())),
    }
}

async fn ask_node(
    shard: &Rc<Shard>,
    node: i32,
    transactional_id: &str,
    producer: ProducerIdAndEpoch,
    partitions: Vec<TopicPartition>,
) -> Verdicts {
    let Some(links) = shard.replica_links() else {
        tracing::debug!(
            node,
            "no node links to ask the transaction coordinator over"
        );
        return Err(ResponseError::NetworkException.code());
    };
    let request = verify_request(transactional_id, producer, &partitions);
    match links.ask_verification(node, request).await {
        Some(response) => verdicts_of(&response, partitions),
        None => {
            tracing::debug!(
                node,
                transactional_id,
                "transaction coordinator did not answer a verification"
            );
            Err(ResponseError::NetworkException.code())
        }
    }
}

/// The AddPartitionsToTxn v4 a leader sends: one transaction, verify only.
pub fn verify_request(
    transactional_id: &str,
    producer: ProducerIdAndEpoch,
    partitions: &[TopicPartition],
) -> AddPartitionsToTxnRequest {
    let mut topics: Vec<AddPartitionsToTxnTopic> = Vec::new();
    for partition in partitions {
        match topics
            .iter_mut()
            .find(|topic| topic.name.as_str() == partition.topic)
        {
            Some(topic) => topic.partitions.push(partition.partition),
            None => topics.push(
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(crate::handlers::str_bytes(&partition.topic)))
                    .with_partitions(vec![partition.partition]),
            ),
        }
    }
    AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(crate::handlers::str_bytes(
                transactional_id,
            )))
            .with_producer_id(ProducerId(producer.producer_id))
            .with_producer_epoch(producer.epoch)
            .with_verify_only(true)
            .with_topics(topics),
    ])
}

/// The verdicts in a coordinator's AddPartitionsToTxn answer. A partition
/// the answer leaves out counts as not verified yet (NETWORK_EXCEPTION,
/// retriable), never as confirmed.
pub fn verdicts_of(
    response: &AddPartitionsToTxnResponse,
    partitions: Vec<TopicPartition>,
) -> Verdicts {
    if response.error_code != 0 {
        // Kafka: the client must not see CLUSTER_AUTHORIZATION_FAILED.
        return Err(
            if response.error_code == ResponseError::ClusterAuthorizationFailed.code() {
                ResponseError::InvalidTxnState.code()
            } else {
                response.error_code
            },
        );
    }
    let answered = |partition: &TopicPartition| {
        response.results_by_transaction.iter().find_map(|result| {
            result
                .topic_results
                .iter()
                .filter(|topic| topic.name.as_str() == partition.topic)
                .flat_map(|topic| topic.results_by_partition.iter())
                .find(|result| result.partition_index == partition.partition)
                .map(|result| result.partition_error_code)
        })
    };
    Ok(partitions
        .into_iter()
        .map(|partition| {
            let code = answered(&partition)
                .map_or(ResponseError::NetworkException.code(), coordinator_code);
            (partition, code)
        })
        .collect())
}

/// What the produce path makes of a coordinator's code (Kafka's
/// `AddPartitionsToTxnManager`): producers expect INVALID_PRODUCER_EPOCH
/// for a fenced epoch here.
pub fn coordinator_code(code: i16) -> i16 {
    if code == ResponseError::ProducerFenced.code() {
        ResponseError::InvalidProducerEpoch.code()
    } else {
        code
    }
}

/// The code and message a produce answers for a verification that failed
/// with `code` (Kafka's `ReplicaManager.appendRecords`, transaction version
/// 1): not in the transaction is INVALID_TXN_STATE; a coordinator that
/// could not answer now is NOT_ENOUGH_REPLICAS, which every client retries
/// without refreshing its metadata (older clients do not retry the
/// coordinator's own codes on a produce); anything else as it is.
pub fn produce_error(code: i16) -> (i16, Option<String>) {
    const RETRIABLE: [ResponseError; 5] = [
        ResponseError::NetworkException,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::NotCoordinator,
        ResponseError::ConcurrentTransactions,
    ];
    if code == ResponseError::InvalidTxnState.code() {
        return (
            code,
            Some(crate::partition::append::NOT_IN_TRANSACTION.to_string()),
        );
    }
    match RETRIABLE.iter().find(|error| error.code() == code) {
        Some(underlying) => (
            ResponseError::NotEnoughReplicas.code(),
            Some(format!(
                "Unable to verify the partition has been added to the transaction. Underlying error: {}",
                error_name(*underlying)
            )),
        ),
        None => (code, None),
    }
}

/// Kafka's name of a retriable verification error (its `Errors.toString`).
fn error_name(error: ResponseError) -> &'static str {
    match error {
        ResponseError::NetworkException => "NETWORK_EXCEPTION",
        ResponseError::CoordinatorLoadInProgress => "COORDINATOR_LOAD_IN_PROGRESS",
        ResponseError::CoordinatorNotAvailable => "COORDINATOR_NOT_AVAILABLE",
        ResponseError::NotCoordinator => "NOT_COORDINATOR",
        ResponseError::ConcurrentTransactions => "CONCURRENT_TRANSACTIONS",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    };

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic.to_string(), partition)
    }

    #[test]
    fn errors_are_translated_as_kafka_translates_them() {
        let invalid = ResponseError::InvalidTxnState.code();
        assert_eq!(
            produce_error(invalid),
            (
                invalid,
                Some("Partition was not added to the transaction".into())
            )
        );
        for retriable in [
            ResponseError::NetworkException,
            ResponseError::CoordinatorLoadInProgress,
            ResponseError::CoordinatorNotAvailable,
            ResponseError::NotCoordinator,
            ResponseError::ConcurrentTransactions,
        ] {
            let (code, message) = produce_error(retriable.code());
            assert_eq!(code, ResponseError::NotEnoughReplicas.code());
            let message = message.expect("a message");
            assert!(message.ends_with(error_name(retriable)), "{message}");
        }
        let mapping = ResponseError::InvalidProducerIdMapping.code();
        assert_eq!(produce_error(mapping), (mapping, None));
        assert_eq!(
            coordinator_code(ResponseError::ProducerFenced.code()),
            ResponseError::InvalidProducerEpoch.code()
        );
    }

    #[test]
    fn a_request_groups_partitions_by_topic_and_only_verifies() {
        let producer = ProducerIdAndEpoch {
            producer_id: 9,
            epoch: 2,
        };
        let request = verify_request("tx", producer, &[tp("a", 0), tp("b", 1), tp("a", 3)]);
        assert_eq!(request.transactions.len(), 1);
        let transaction = &request.transactions[0];
        assert!(transaction.verify_only);
        assert_eq!(
            (transaction.producer_id.0, transaction.producer_epoch),
            (9, 2)
        );
        let topics: Vec<(&str, Vec<i32>)> = transaction
            .topics
            .iter()
            .map(|topic| (topic.name.as_str(), topic.partitions.clone()))
            .collect();
        assert_eq!(topics, vec![("a", vec![0, 3]), ("b", vec![1])]);
    }

    #[test]
    fn answers_become_verdicts_and_missing_partitions_are_not_confirmed() {
        let answer = AddPartitionsToTxnResponse::default().with_results_by_transaction(vec![
            AddPartitionsToTxnResult::default().with_topic_results(vec![
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(crate::handlers::str_bytes("a")))
                    .with_results_by_partition(vec![
                        AddPartitionsToTxnPartitionResult::default().with_partition_index(0),
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(1)
                            .with_partition_error_code(ResponseError::ProducerFenced.code()),
                    ]),
            ]),
        ]);
        assert_eq!(
            verdicts_of(&answer, vec![tp("a", 0), tp("a", 1), tp("a", 2)]),
            Ok(vec![
                (tp("a", 0), 0),
                (tp("a", 1), ResponseError::InvalidProducerEpoch.code()),
                (tp("a", 2), ResponseError::NetworkException.code()),
            ])
        );
        let refused = AddPartitionsToTxnResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
        assert_eq!(
            verdicts_of(&refused, vec![tp("a", 0)]),
            Err(ResponseError::InvalidTxnState.code())
        );
    }
}
