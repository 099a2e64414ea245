//! Transactions through the Kafka handlers, in-process
//! (`common::InProcessBroker`): a transactional produce, the last stable
//! offset cutting `read_committed` fetches and ListOffsets, WriteTxnMarkers
//! ending the transaction, and the aborted list a fetch then carries.

mod common;

use bytes::Bytes;
use common::{run, InProcessBroker};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::create_topics_request::CreatableTopic;
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

async fn create_topic(broker: &InProcessBroker) {
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(name(TOPIC))
            .with_num_partitions(1)
            .with_replication_factor(1)])
        .with_timeout_ms(10_000);
    let response: CreateTopicsResponse = broker
        .call(RequestKind::CreateTopics(request), 5)
        .await
        .expect("answer");
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
}

/// A transactional batch of producer 7 (epoch 0) from `sequence`.
fn transactional_batch(sequence: i32) -> Bytes {
    let mut bytes = build_batch(1, &[b"in a transaction".as_slice()]).to_vec();
    bytes[21..23].copy_from_slice(&(1i16 << 4).to_be_bytes());
    bytes[43..51].copy_from_slice(&PRODUCER.to_be_bytes());
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
        create_topic(&broker).await;
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
