//! Transactions through the Kafka handlers, in-process
//! (`common::InProcessBroker`): a transactional produce, the last stable
//! offset cutting `read_committed` fetches and ListOffsets, WriteTxnMarkers
//! ending the transaction, and the aborted list a fetch then carries;
//! DescribeProducers listing a partition's producers and the admin's abort
//! (`kafka-transactions.sh abort`) built from its answer.

mod common;

use bytes::Bytes;
use common::{run, InProcessBroker};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafki_net::kafka_protocol::messages::describe_producers_response::PartitionResponse;
use kafki_net::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafki_net::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kafki_net::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kafki_net::kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafki_net::kafka_protocol::messages::*;
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_storage::batch::{build_batch, compute_crc};

const TOPIC: &str = "txn";
const PRODUCER: i64 = 7;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

/// A transactional batch of producer 7 (epoch 0) from `sequence`.
fn transactional_batch(sequence: i32) -> Bytes {
    producer_batch(PRODUCER, sequence, &[b"in a transaction"], true)
}

/// A batch of `values` from `producer_id` (epoch 0) starting at `sequence`,
/// transactional or only idempotent.
fn producer_batch(producer_id: i64, sequence: i32, values: &[&[u8]], transactional: bool) -> Bytes {
    let mut bytes = build_batch(1, values).to_vec();
    let attributes: i16 = if transactional { 1 << 4 } else { 0 };
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&0i16.to_be_bytes());
    bytes[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

async fn produce(broker: &InProcessBroker, batch: Bytes, transactional_id: Option<&str>) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_transactional_id(
            transactional_id.map(|id| TransactionalId(StrBytes::from_string(id.to_string()))),
        )
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(TOPIC))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response: ProduceResponse = broker
        .call(RequestKind::Produce(request), 9)
        .await
        .expect("answered");
    response.responses[0].partition_responses[0].error_code
}

async fn fetch(broker: &InProcessBroker, isolation_level: i8) -> fetch_response::PartitionData {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(TOPIC))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = broker
        .call(RequestKind::Fetch(request), 11)
        .await
        .expect("answer");
    let partition = response.responses[0].partitions[0].clone();
    assert_eq!(partition.error_code, 0, "{partition:?}");
    partition
}

async fn latest(broker: &InProcessBroker, isolation_level: i8) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(TOPIC))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let response: ListOffsetsResponse = broker
        .call(RequestKind::ListOffsets(request), 7)
        .await
        .expect("answer");
    response.topics[0].partitions[0].offset
}

fn records_len(partition: &fetch_response::PartitionData) -> usize {
    partition.records.as_ref().map_or(0, Bytes::len)
}

#[test]
fn read_committed_stops_at_the_open_transaction_until_its_marker() {
    run(|| async {
        // No coordinator runs this transaction (WriteTxnMarkers ends it):
        // the leader must not ask one (KIP-890's verification is
        // `txn_verification.rs`).
        let broker =
            InProcessBroker::start(&[("transaction.partition.verification.enable", "false")]).await;
        broker.create_topic(TOPIC, 1).await;
        // Transactional batches need a transactional id (Kafka's
        // authorization subject).
        assert_eq!(
            produce(&broker, transactional_batch(0), None).await,
            ResponseError::TransactionalIdAuthorizationFailed.code()
        );
        assert_eq!(
            produce(&broker, transactional_batch(0), Some("tx")).await,
            0
        );
        assert_eq!(
            produce(&broker, build_batch(1, &[b"plain".as_slice()]), None).await,
            0
        );

        let uncommitted = fetch(&broker, 0).await;
        assert_eq!(uncommitted.high_watermark, 2);
        assert_eq!(uncommitted.last_stable_offset, 0);
        assert!(records_len(&uncommitted) > 0);
        assert_eq!(uncommitted.aborted_transactions, None);
        let committed = fetch(&broker, 1).await;
        assert_eq!(committed.high_watermark, 2);
        assert_eq!(committed.last_stable_offset, 0);
        assert_eq!(records_len(&committed), 0, "nothing below the LSO yet");
        assert_eq!(latest(&broker, 1).await, 0);
        assert_eq!(latest(&broker, 0).await, 2);

        let request =
            WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
                .with_producer_id(ProducerId(PRODUCER))
                .with_producer_epoch(0)
                .with_transaction_result(false)
                .with_coordinator_epoch(0)
                .with_topics(vec![WritableTxnMarkerTopic::default()
                    .with_name(name(TOPIC))
                    .with_partition_indexes(vec![0, 5])])]);
        let response: WriteTxnMarkersResponse = broker
            .call(RequestKind::WriteTxnMarkers(request), 1)
            .await
            .expect("answer");
        let results = &response.markers[0].topics[0].partitions;
        assert_eq!(results[0].partition_index, 0);
        assert_eq!(results[0].error_code, 0, "{response:?}");
        assert_eq!(
            results[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );

        let committed = fetch(&broker, 1).await;
        assert_eq!(committed.high_watermark, 3);
        assert_eq!(committed.last_stable_offset, 3);
        assert!(records_len(&committed) > 0);
        let aborted: Vec<(i64, i64)> = committed
            .aborted_transactions
            .expect("read_committed gets the list")
            .iter()
            .map(|entry| (entry.producer_id.0, entry.first_offset))
            .collect();
        assert_eq!(aborted, vec![(PRODUCER, 0)]);
        assert_eq!(latest(&broker, 1).await, 3);
    });
}

/// DescribeProducers for partitions `indexes` of `topic`.
async fn describe_producers(
    broker: &InProcessBroker,
    topic: &str,
    indexes: Vec<i32>,
) -> Vec<PartitionResponse> {
    let request = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(name(topic))
        .with_partition_indexes(indexes)]);
    let response: DescribeProducersResponse = broker
        .call(RequestKind::DescribeProducers(request), 0)
        .await
        .expect("answer");
    assert_eq!(response.topics.len(), 1, "{response:?}");
    assert_eq!(response.topics[0].name, name(topic));
    response.topics[0].partitions.clone()
}

/// WriteTxnMarkers as Admin.abortTransaction sends it: one ABORT for
/// `producer_id` to partition 0, under `coordinator_epoch`.
async fn abort_as_admin(broker: &InProcessBroker, producer_id: i64, coordinator_epoch: i32) -> i16 {
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0)
            .with_transaction_result(false)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(vec![WritableTxnMarkerTopic::default()
                .with_name(name(TOPIC))
                .with_partition_indexes(vec![0])])]);
    let response: WriteTxnMarkersResponse = broker
        .call(RequestKind::WriteTxnMarkers(request), 1)
        .await
        .expect("answer");
    response.markers[0].topics[0].partitions[0].error_code
}

#[test]
fn describe_producers_lists_sequences_and_open_transactions_for_the_admin_abort() {
    run(|| async {
        // Raw transactional batches with no coordinator behind them, as in
        // the test above: no KIP-890 verification.
        let broker =
            InProcessBroker::start(&[("transaction.partition.verification.enable", "false")]).await;
        broker.create_topic(TOPIC, 1).await;
        let idempotent = 3;
        let values: [&[u8]; 2] = [b"one", b"two"];
        assert_eq!(
            produce(&broker, producer_batch(idempotent, 0, &values, false), None).await,
            0
        );
        // Producer 7's transaction opens at offset 2.
        assert_eq!(
            produce(&broker, transactional_batch(0), Some("tx")).await,
            0
        );

        let partitions = describe_producers(&broker, TOPIC, vec![0, 5]).await;
        assert_eq!(partitions[0].partition_index, 0);
        assert_eq!(partitions[0].error_code, 0, "{partitions:?}");
        let producers = &partitions[0].active_producers;
        assert_eq!(producers.len(), 2, "{producers:?}");
        let (plain, open) = (&producers[0], &producers[1]);
        assert_eq!(plain.producer_id, ProducerId(idempotent));
        assert_eq!((plain.producer_epoch, plain.last_sequence), (0, 1));
        assert_eq!(plain.current_txn_start_offset, -1);
        assert_eq!(plain.coordinator_epoch, -1);
        assert!(plain.last_timestamp > 0, "{plain:?}");
        assert_eq!(open.producer_id, ProducerId(PRODUCER));
        assert_eq!((open.producer_epoch, open.last_sequence), (0, 0));
        assert_eq!(open.current_txn_start_offset, 2);
        assert_eq!(open.coordinator_epoch, -1, "no marker yet");
        assert_eq!(partitions[1].partition_index, 5);
        assert_eq!(
            partitions[1].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        let unknown = describe_producers(&broker, "no-such-topic", vec![0]).await;
        assert_eq!(
            unknown[0].error_code,
            ResponseError::UnknownTopicOrPartition.code()
        );
        assert_eq!(
            latest(&broker, 1).await,
            2,
            "the open transaction holds the LSO"
        );

        // kafka-transactions.sh abort: the coordinator epoch described, 0
        // when there was none (TransactionsCommand's `orElse(0)`).
        assert_eq!(
            abort_as_admin(&broker, PRODUCER, open.coordinator_epoch.max(0)).await,
            0
        );
        assert_eq!(latest(&broker, 1).await, 4, "LSO past the ABORT marker");
        let after = describe_producers(&broker, TOPIC, vec![0]).await;
        let aborted = &after[0].active_producers[1];
        assert_eq!(aborted.current_txn_start_offset, -1);
        assert_eq!(aborted.coordinator_epoch, 0);
        let committed = fetch(&broker, 1).await;
        let aborted_list: Vec<(i64, i64)> = committed
            .aborted_transactions
            .expect("read_committed gets the list")
            .iter()
            .map(|entry| (entry.producer_id.0, entry.first_offset))
            .collect();
        assert_eq!(aborted_list, vec![(PRODUCER, 2)]);

        // A later coordinator epoch's marker (a retry, nothing open) is
        // written; after it, one of an older coordinator epoch is fenced
        // (Kafka's ProducerAppendInfo).
        assert_eq!(abort_as_admin(&broker, PRODUCER, 2).await, 0);
        assert_eq!(
            abort_as_admin(&broker, PRODUCER, 1).await,
            ResponseError::TransactionCoordinatorFenced.code()
        );
        let fenced = describe_producers(&broker, TOPIC, vec![0]).await;
        assert_eq!(fenced[0].active_producers[1].coordinator_epoch, 2);
    });
}
