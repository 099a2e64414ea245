//! WriteTxnMarkers (API 27, v1 as Kafka 4.x): a coordinator (or
//! `kafka-transactions.sh abort`, through Admin.abortTransaction) asks this
//! node to write COMMIT/ABORT markers. Each marker's partitions are written
//! where this node leads them ([`crate::txn::markers::write_local_markers`]);
//! any other partition answers `NOT_LEADER_OR_FOLLOWER`, as Kafka does, and
//! the sender retries on the leader.

use std::rc::Rc;

use kafki_net::kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafki_net::kafka_protocol::messages::{
    TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};

use crate::shard::Shard;
use crate::txn::markers::{write_local_markers, MarkerWrite};
use crate::txn::{ControlType, EndTxnMarker, TopicPartition};

pub async fn write_txn_markers(
    shard: &Rc<Shard>,
    request: WriteTxnMarkersRequest,
    _version: i16,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::with_capacity(request.markers.len());
    // One marker after the other: two markers of one producer (a retry
    // beside a newer decision) land in the order they were sent.
    for marker in request.markers {
        let write = MarkerWrite {
            producer_id: marker.producer_id.0,
            producer_epoch: marker.producer_epoch,
            marker: EndTxnMarker {
                control_type: if marker.transaction_result {
                    ControlType::Commit
                } else {
                    ControlType::Abort
                },
                coordinator_epoch: marker.coordinator_epoch,
            },
        };
        let partitions: Vec<TopicPartition> = marker
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partition_indexes
                    .iter()
                    .map(|index| TopicPartition::new(topic.name.to_string(), *index))
            })
            .collect();
        let answers = write_local_markers(shard, write, partitions).await;
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(group_by_topic(answers)),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

/// Per-partition answers grouped by topic, keeping the request's order.
fn group_by_topic(answers: Vec<(TopicPartition, i16)>) -> Vec<WritableTxnMarkerTopicResult> {
    let mut topics: Vec<WritableTxnMarkerTopicResult> = Vec::new();
    for (partition, error_code) in answers {
        let result = WritableTxnMarkerPartitionResult::default()
            .with_partition_index(partition.partition)
            .with_error_code(error_code);
        match topics
            .iter_mut()
            .find(|topic| topic.name.as_str() == partition.topic)
        {
            Some(topic) => topic.partitions.push(result),
            None => topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(TopicName(super::str_bytes(&partition.topic)))
                    .with_partitions(vec![result]),
            ),
        }
    }
    topics
}
