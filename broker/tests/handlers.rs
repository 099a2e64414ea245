//! Handler logic tested in-process (`common::InProcessBroker`): Fetch byte
//! budgets counted in record bytes, an OffsetCommit that could not be
//! stored answered with an error and not applied, leader epochs (stamped,
//! reported, checked), and the configured node id.

mod common;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{run, InProcessBroker};
use kafki_broker::group::runtime::{offsets_partition_for, OFFSETS_TOPIC};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafki_net::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafki_net::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafki_net::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kafki_net::kafka_protocol::messages::*;
use kafki_net::kafka_protocol::protocol::StrBytes;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

async fn produce(broker: &InProcessBroker, topic: &str, partition: i32, value: &[u8]) -> i64 {
    let batch = kafki_storage::batch::build_batch(1, &[value]);
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let response: ProduceResponse = broker
        .call(RequestKind::Produce(request), 9)
        .await
        .expect("acks=all is answered");
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, 0, "{answer:?}");
    answer.base_offset
}

fn fetch_request(
    topic: &str,
    partitions: i32,
    max_bytes: i32,
    min_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(
                (0..partitions)
                    .map(|index| {
                        FetchPartition::default()
                            .with_partition(index)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            )])
}

/// Record bytes per partition of a fetch response.
fn record_bytes(response: &FetchResponse) -> Vec<usize> {
    response.responses[0]
        .partitions
        .iter()
        .map(|partition| {
            assert_eq!(partition.error_code, 0, "{partition:?}");
            partition.records.as_ref().map_or(0, Bytes::len)
        })
        .collect()
}

const VALUE_BYTES: usize = 3000;

#[test]
fn fetch_max_bytes_bounds_the_response_across_partitions() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("budget", 20).await;
        for partition in 0..20 {
            produce(&broker, "budget", partition, &[7u8; VALUE_BYTES]).await;
        }
        // Room for a batch and a half: the first goes whole (KIP-74), the
        // next does not fit.
        let request = fetch_request("budget", 20, (VALUE_BYTES * 3 / 2) as i32, 1, 100);
        let response: FetchResponse = broker
            .call(RequestKind::Fetch(request), 4)
            .await
            .expect("answer");
        let sizes = record_bytes(&response);
        assert_eq!(
            sizes.iter().filter(|size| **size > 0).count(),
            1,
            "{sizes:?}"
        );
        // With room for all of them, every partition carries its batch.
        let request = fetch_request("budget", 20, 10 << 20, 1, 100);
        let response: FetchResponse = broker
            .call(RequestKind::Fetch(request), 4)
            .await
            .expect("answer");
        assert!(record_bytes(&response)
            .iter()
            .all(|size| *size > VALUE_BYTES));
    });
}

#[test]
fn fetch_min_bytes_is_answered_as_soon_as_the_bytes_exist() {
    run(|| async {
        let broker = Rc::new(InProcessBroker::start(&[]).await);
        broker.create_topic("waiting", 1).await;
        let producer = broker.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(300)).await;
            produce(&producer, "waiting", 0, &[1u8; VALUE_BYTES]).await;
        })
        .detach();
        let started = Instant::now();
        let request = fetch_request("waiting", 1, 1 << 20, 1000, 8_000);
        let response: FetchResponse = broker
            .call(RequestKind::Fetch(request), 4)
            .await
            .expect("answer");
        let waited = started.elapsed();
        assert!(record_bytes(&response)[0] > VALUE_BYTES);
        assert!(
            waited < Duration::from_secs(4),
            "answered after {waited:?}, not when the record was committed"
        );
    });
}

fn commit_request(group: &str, topic: &str, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])])
}

async fn committed(broker: &InProcessBroker, group: &str, topic: &str) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(name(topic))
            .with_partition_indexes(vec![0])]));
    let response: OffsetFetchResponse = broker
        .call(RequestKind::OffsetFetch(request), 7)
        .await
        .expect("answer");
    response.topics[0].partitions[0].committed_offset
}

#[test]
fn an_offset_commit_that_is_not_stored_is_refused_and_not_applied() {
    run(|| async {
        let broker = InProcessBroker::start(&[("offsets.topic.num.partitions", "4")]).await;
        broker.create_topic("t", 1).await;
        let commit = |offset| commit_request("g", "t", offset);
        let response: OffsetCommitResponse = broker
            .call(RequestKind::OffsetCommit(commit(5)), 8)
            .await
            .expect("answer");
        assert_eq!(response.topics[0].partitions[0].error_code, 0);
        assert_eq!(committed(&broker, "g", "t").await, 5);

        // The group's offsets partition cannot take the record (it is being
        // handed over): the commit is answered with an error, not applied.
        let offsets_partition = offsets_partition_for("g", 4);
        let before = broker.shard.metadata();
        let moving = before.with_moving(Some((OFFSETS_TOPIC.to_string(), offsets_partition)));
        broker.shard.install_metadata(Arc::new(moving)).await;
        let response: OffsetCommitResponse = broker
            .call(RequestKind::OffsetCommit(commit(9)), 8)
            .await
            .expect("answer");
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            ResponseError::CoordinatorNotAvailable.code()
        );
        assert_eq!(committed(&broker, "g", "t").await, 5);

        // Back in service: commits are stored and visible again.
        let mut restored = (*before).clone();
        restored.version += 2;
        broker.shard.install_metadata(Arc::new(restored)).await;
        let response: OffsetCommitResponse = broker
            .call(RequestKind::OffsetCommit(commit(11)), 8)
            .await
            .expect("answer");
        assert_eq!(response.topics[0].partitions[0].error_code, 0);
        assert_eq!(committed(&broker, "g", "t").await, 11);
    });
}

fn fetch_at_epoch(topic: &str, offset: i64, current_leader_epoch: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(current_leader_epoch)
                .with_partition_max_bytes(1 << 20)])])
}

async fn fetch_at(broker: &InProcessBroker, offset: i64, epoch: i32) -> (i16, Option<Bytes>) {
    let response: FetchResponse = broker
        .call(RequestKind::Fetch(fetch_at_epoch("e", offset, epoch)), 12)
        .await
        .expect("answer");
    let partition = &response.responses[0].partitions[0];
    (partition.error_code, partition.records.clone())
}

async fn metadata_epoch(broker: &InProcessBroker) -> i32 {
    let request = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(name("e"))),
    ]));
    let response: MetadataResponse = broker
        .call(RequestKind::Metadata(request), 12)
        .await
        .expect("answer");
    response.topics[0].partitions[0].leader_epoch
}

/// ListOffsets for `timestamp` (-1 latest, -2 earliest): (error, offset,
/// leader epoch).
async fn list_offset(broker: &InProcessBroker, timestamp: i64, epoch: i32) -> (i16, i64, i32) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(name("e"))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(epoch)
                    .with_timestamp(timestamp),
            ])]);
    let response: ListOffsetsResponse = broker
        .call(RequestKind::ListOffsets(request), 7)
        .await
        .expect("answer");
    let partition = &response.topics[0].partitions[0];
    (
        partition.error_code,
        partition.offset,
        partition.leader_epoch,
    )
}

/// OffsetForLeaderEpoch: (error, epoch, end offset).
async fn epoch_end(broker: &InProcessBroker, current: i32, wanted: i32) -> (i16, i32, i64) {
    let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
            .with_topic(name("e"))
            .with_partitions(vec![
                offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(wanted),
            ]),
    ]);
    let response: OffsetForLeaderEpochResponse = broker
        .call(RequestKind::OffsetForLeaderEpoch(request), 4)
        .await
        .expect("answer");
    let partition = &response.topics[0].partitions[0];
    (
        partition.error_code,
        partition.leader_epoch,
        partition.end_offset,
    )
}

#[test]
fn leader_epochs_are_real_and_requests_naming_another_are_refused() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("e", 1).await;
        assert_eq!(produce(&broker, "e", 0, b"before").await, 0);
        assert_eq!(metadata_epoch(&broker).await, 0);
        assert_eq!(fetch_at(&broker, 0, 0).await.0, 0);
        assert_eq!(fetch_at(&broker, 0, -1).await.0, 0);
        assert_eq!(
            fetch_at(&broker, 0, 1).await.0,
            ResponseError::UnknownLeaderEpoch.code(),
            "an epoch this broker has not reached"
        );

        // A change of leader (here a reassignment, the single node's one)
        // starts epoch 1; the open partition is fenced to it.
        let before = broker.shard.metadata();
        let moved = before.apply(&kafki_broker::metadata::MetadataRecord::LeaderChange {
            topic: "e".into(),
            partition: 0,
        });
        broker.shard.install_metadata(Arc::new(moved)).await;
        assert_eq!(metadata_epoch(&broker).await, 1);
        assert_eq!(
            fetch_at(&broker, 0, 0).await.0,
            ResponseError::FencedLeaderEpoch.code(),
            "a client with stale metadata"
        );
        assert_eq!(
            list_offset(&broker, -1, 0).await.0,
            ResponseError::FencedLeaderEpoch.code()
        );
        assert_eq!(
            epoch_end(&broker, 0, 0).await.0,
            ResponseError::FencedLeaderEpoch.code()
        );

        // Appends in the new epoch are stamped with it.
        assert_eq!(produce(&broker, "e", 0, b"after").await, 1);
        let (code, records) = fetch_at(&broker, 1, 1).await;
        assert_eq!(code, 0);
        let records = records.expect("records");
        let header = kafki_storage::batch::BatchHeader::parse(&records).expect("header");
        assert_eq!(header.base_offset, 1);
        assert_eq!(header.partition_leader_epoch, 1);

        // ListOffsets names the epoch of what it points at.
        assert_eq!(list_offset(&broker, -1, 1).await, (0, 2, 1));
        assert_eq!(list_offset(&broker, -2, 1).await, (0, 0, 0));
        // OffsetForLeaderEpoch: epoch 0 ended where epoch 1 began.
        assert_eq!(epoch_end(&broker, 1, 0).await, (0, 0, 1));
        assert_eq!(epoch_end(&broker, 1, 1).await, (0, 1, 2));
    });
}

#[test]
fn the_node_id_is_the_one_configured() {
    run(|| async {
        let broker = InProcessBroker::start(&[("node.id", "7")]).await;
        broker.create_topic("n", 1).await;
        let request = MetadataRequest::default().with_topics(None);
        let response: MetadataResponse = broker
            .call(RequestKind::Metadata(request), 12)
            .await
            .expect("answer");
        assert_eq!(response.brokers.len(), 1);
        assert_eq!(response.brokers[0].node_id, BrokerId(7));
        assert_eq!(response.controller_id, BrokerId(7));
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.leader_id, BrokerId(7));
        assert_eq!(partition.replica_nodes, vec![BrokerId(7)]);
        let request = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![StrBytes::from_static_str("g")]);
        let response: FindCoordinatorResponse = broker
            .call(RequestKind::FindCoordinator(request), 4)
            .await
            .expect("answer");
        assert_eq!(response.coordinators[0].error_code, 0);
        assert_eq!(response.coordinators[0].node_id, BrokerId(7));
    });
}
