//! KIP-890 part 1 through the Kafka handlers, in-process
//! (`common::InProcessBroker`): a transactional Produce to a partition the
//! producer never added to its transaction is refused with
//! INVALID_TXN_STATE and nothing is appended; one to an added partition is
//! taken, and so are the transaction's later batches there; a late batch
//! after the transaction was aborted does not open a new, hanging
//! transaction; with `transaction.partition.verification.enable=false` the
//! leader takes the batch without asking.
//!
//! What was appended is read as ListOffsets' latest offset, the high
//! watermark, so these tests run with `transaction.durable.at.commit=false`
//! (every batch durable before its answer): with the default a
//! transaction's batch is answered once written and the high watermark
//! follows with the next sync. The last test checks the default: once the
//! commit is answered, the transaction's data is durable.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{run, InProcessBroker};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafki_net::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kafki_net::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kafki_net::kafka_protocol::messages::*;
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_storage::batch::{build_batch, compute_crc};

const TOPIC: &str = "verified";
/// Each batch durable before its answer (see the module docs).
const DURABLE_PER_BATCH: (&str, &str) = ("transaction.durable.at.commit", "false");
const ID: &str = "tx-verified";

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// InitProducerId for [`ID`], retried while the coordinator loads.
async fn init(broker: &InProcessBroker) -> (ProducerId, i16) {
    for _ in 0..100 {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text(ID))))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response: InitProducerIdResponse = broker
            .call(RequestKind::InitProducerId(request), 4)
            .await
            .expect("answer");
        if response.error_code == 0 {
            return (response.producer_id, response.producer_epoch);
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    panic!("InitProducerId kept failing");
}

async fn add_partition(broker: &InProcessBroker, producer: (ProducerId, i16), partition: i32) {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(text(ID)))
        .with_v3_and_below_producer_id(producer.0)
        .with_v3_and_below_producer_epoch(producer.1)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partitions(vec![partition])]);
    let response: AddPartitionsToTxnResponse = broker
        .call(RequestKind::AddPartitionsToTxn(request), 3)
        .await
        .expect("answer");
    let code =
        response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code;
    assert_eq!(code, 0, "{response:?}");
}

async fn end_txn(broker: &InProcessBroker, producer: (ProducerId, i16), commit: bool) {
    let request = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text(ID)))
        .with_producer_id(producer.0)
        .with_producer_epoch(producer.1)
        .with_committed(commit);
    let response: EndTxnResponse = broker
        .call(RequestKind::EndTxn(request), 3)
        .await
        .expect("answer");
    assert_eq!(response.error_code, 0, "{response:?}");
}

/// A transactional batch of `producer` from `sequence`.
fn transactional_batch(producer: (ProducerId, i16), sequence: i32) -> Bytes {
    let mut bytes = build_batch(1, &[b"in a transaction".as_slice()]).to_vec();
    bytes[21..23].copy_from_slice(&(1i16 << 4).to_be_bytes());
    bytes[43..51].copy_from_slice(&producer.0 .0.to_be_bytes());
    bytes[51..53].copy_from_slice(&producer.1.to_be_bytes());
    bytes[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// Produces `batch` to `partition` under [`ID`]; the code and message.
async fn produce(broker: &InProcessBroker, partition: i32, batch: Bytes) -> (i16, Option<String>) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_transactional_id(Some(TransactionalId(text(ID))))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let response: ProduceResponse = broker
        .call(RequestKind::Produce(request), 9)
        .await
        .expect("answered");
    let answer = &response.responses[0].partition_responses[0];
    (
        answer.error_code,
        answer
            .error_message
            .as_ref()
            .map(|message| message.to_string()),
    )
}

/// The log end offset of `partition` (read_uncommitted's latest offset).
async fn log_end(broker: &InProcessBroker, partition: i32) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(text(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(-1)])]);
    let response: ListOffsetsResponse = broker
        .call(RequestKind::ListOffsets(request), 7)
        .await
        .expect("answer");
    let answer = &response.topics[0].partitions[0];
    assert_eq!(answer.error_code, 0, "{response:?}");
    answer.offset
}

#[test]
fn only_partitions_added_to_the_transaction_take_its_batches() {
    run(|| async {
        let broker = InProcessBroker::start(&[DURABLE_PER_BATCH]).await;
        broker.create_topic(TOPIC, 2).await;
        let producer = init(&broker).await;
        add_partition(&broker, producer, 0).await;

        // Partition 1 was never added: refused, as Kafka refuses it.
        let (code, message) = produce(&broker, 1, transactional_batch(producer, 0)).await;
        assert_eq!(code, ResponseError::InvalidTxnState.code());
        assert_eq!(
            message.as_deref(),
            Some("Partition was not added to the transaction")
        );
        assert_eq!(log_end(&broker, 1).await, 0, "nothing appended");

        // Partition 0 was added: its first batch is confirmed, the next
        // is taken on the transaction now open there.
        assert_eq!(
            produce(&broker, 0, transactional_batch(producer, 0))
                .await
                .0,
            0
        );
        assert_eq!(
            produce(&broker, 0, transactional_batch(producer, 1))
                .await
                .0,
            0
        );
        assert_eq!(log_end(&broker, 0).await, 2);

        // Aborted: the marker lands on partition 0 and the transaction is
        // over. A late batch of it must not open a new transaction there.
        end_txn(&broker, producer, false).await;
        let end_after_marker = 3;
        for _ in 0..200 {
            if log_end(&broker, 0).await == end_after_marker {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(log_end(&broker, 0).await, end_after_marker);
        let late = loop {
            let (code, _) = produce(&broker, 0, transactional_batch(producer, 2)).await;
            // Retriable while the coordinator completes the abort.
            if code != ResponseError::NotEnoughReplicas.code() {
                break code;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(late, ResponseError::InvalidTxnState.code());
        assert_eq!(log_end(&broker, 0).await, end_after_marker);

        // The next transaction adds partition 1 and writes there.
        add_partition(&broker, producer, 1).await;
        assert_eq!(
            produce(&broker, 1, transactional_batch(producer, 0))
                .await
                .0,
            0
        );
        assert_eq!(log_end(&broker, 1).await, 1);
    });
}

#[test]
fn a_producer_the_coordinator_does_not_know_is_refused() {
    run(|| async {
        let broker = InProcessBroker::start(&[DURABLE_PER_BATCH]).await;
        broker.create_topic(TOPIC, 2).await;
        let producer = init(&broker).await;
        add_partition(&broker, producer, 0).await;
        // Another producer id under the same transactional id.
        let stranger = (ProducerId(producer.0 .0 + 1000), 0);
        let (code, _) = produce(&broker, 0, transactional_batch(stranger, 0)).await;
        assert_eq!(code, ResponseError::InvalidProducerIdMapping.code());
        assert_eq!(log_end(&broker, 0).await, 0);
        // A new instance fences the old epoch (its open transaction is
        // aborted); a batch of the old epoch is refused as Kafka maps
        // PRODUCER_FENCED for a produce.
        let producer = init(&broker).await;
        add_partition(&broker, producer, 0).await;
        let end_before = log_end(&broker, 0).await;
        let old = (producer.0, producer.1 - 1);
        let (code, _) = produce(&broker, 0, transactional_batch(old, 0)).await;
        assert_eq!(code, ResponseError::InvalidProducerEpoch.code());
        assert_eq!(log_end(&broker, 0).await, end_before);
    });
}

#[test]
fn without_verification_the_leader_takes_the_batch_unasked() {
    run(|| async {
        let broker = InProcessBroker::start(&[
            ("transaction.partition.verification.enable", "false"),
            DURABLE_PER_BATCH,
        ])
        .await;
        broker.create_topic(TOPIC, 2).await;
        let producer = init(&broker).await;
        assert_eq!(
            produce(&broker, 1, transactional_batch(producer, 0))
                .await
                .0,
            0
        );
        assert_eq!(log_end(&broker, 1).await, 1);
    });
}

#[test]
fn pipelined_first_batches_are_verified_once_and_appended_in_order() {
    run(|| async {
        let broker = InProcessBroker::start(&[DURABLE_PER_BATCH]).await;
        broker.create_topic(TOPIC, 2).await;
        let producer = init(&broker).await;
        add_partition(&broker, producer, 0).await;
        // Both arrive before either is appended (max.in.flight > 1): the
        // second waits for the first's answer and appends after it.
        let (first, second) = futures::join!(
            produce(&broker, 0, transactional_batch(producer, 0)),
            produce(&broker, 0, transactional_batch(producer, 1)),
        );
        assert_eq!((first.0, second.0), (0, 0), "{first:?} {second:?}");
        assert_eq!(log_end(&broker, 0).await, 2);
    });
}

#[test]
fn by_default_a_committed_transactions_data_is_durable_once_the_commit_is_answered() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic(TOPIC, 2).await;
        let producer = init(&broker).await;
        add_partition(&broker, producer, 0).await;
        for sequence in 0..3 {
            let (code, _) = produce(&broker, 0, transactional_batch(producer, sequence)).await;
            assert_eq!(code, 0);
        }
        end_txn(&broker, producer, true).await;
        // EndTxn(commit) waited for the data to be durable: the high
        // watermark covers all three batches now (the marker follows).
        assert!(log_end(&broker, 0).await >= 3);
    });
}
