//! DescribeQuorum (API key 55, v0–v2), what `kafka-metadata-quorum.sh
//! describe --status / --replication` sends: the metadata quorum's leader,
//! epoch, high watermark and each voter's and observer's progress, for
//! `__cluster_metadata` partition 0. Every node answers (admin clients are
//! told the node they ask is the controller): the question goes to shard 0,
//! whose quorum driver answers itself when it leads and asks the leader
//! otherwise ([`crate::cluster::quorum::Quorum::describe`]). A single node
//! is its own quorum of one. Any other topic or partition is
//! `UNKNOWN_TOPIC_OR_PARTITION`.
//!
//! [`response`] is pure: it turns a report (or why there is none) into the
//! wire message for the request's version.

use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafki_net::kafka_protocol::messages::{
    BrokerId, DescribeQuorumRequest, DescribeQuorumResponse, TopicName,
};

use super::str_bytes;
use crate::cluster::describe::{single_node_report, DescribeError, QuorumReport, ReplicaProgress};
use crate::errors::KafkaError;
use crate::shard::Shard;

/// The metadata log's topic and partition, as Kafka names them.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
pub const METADATA_PARTITION: i32 = 0;
/// The listener name given for each voter's Kafka address (v2).
const LISTENER_NAME: &str = "PLAINTEXT";

/// Where clients reach a node: host and port, if known.
pub type AddressOf<'a> = &'a dyn Fn(i32) -> Option<(String, u16)>;

pub async fn describe_quorum(
    shard: &Rc<Shard>,
    request: DescribeQuorumRequest,
    version: i16,
) -> DescribeQuorumResponse {
    let asks_for_metadata = request.topics.iter().any(|topic| {
        topic.topic_name.as_str() == METADATA_TOPIC
            && topic
                .partitions
                .iter()
                .any(|partition| partition.partition_index == METADATA_PARTITION)
    });
    let answer = if asks_for_metadata {
        report(shard).await
    } else {
        // Not read: every partition asked for is unknown.
        Err(DescribeError::NoLeader)
    };
    let metadata = shard.metadata();
    let address_of = |node: i32| {
        if metadata.nodes.is_empty() && node == shard.config.node_id {
            return Some((
                shard.config.advertise_host.clone(),
                shard.config.advertise_port,
            ));
        }
        metadata
            .nodes
            .get(&node)
            .map(|registration| (registration.host.clone(), registration.port))
    };
    response(&request, version, &answer, &address_of)
}

/// The quorum's report, from shard 0 (a single node: its own).
async fn report(shard: &Rc<Shard>) -> Result<QuorumReport, DescribeError> {
    if shard.config.cluster.is_none() {
        return Ok(single_node_report(
            shard.config.node_id,
            shard.metadata().log_offset,
            crate::clock::now_ms(),
        ));
    }
    let asked = shard
        .invoke_on(0, |controller_shard| async move {
            let quorum = controller_shard.quorum.borrow().clone();
            match quorum {
                Some(quorum) => quorum.describe().await,
                // Still starting: no quorum to ask yet.
                None => Err(DescribeError::NoLeader),
            }
        })
        .await;
    asked.unwrap_or_else(|error| {
        tracing::warn!(%error, "DescribeQuorum: shard 0 did not answer");
        Err(DescribeError::LeaderSilent)
    })
}

/// The response to `request` at `version`: the report (or the error) for
/// the metadata partition, `UNKNOWN_TOPIC_OR_PARTITION` for any other; in
/// v2, each voter's Kafka address.
pub fn response(
    request: &DescribeQuorumRequest,
    version: i16,
    answer: &Result<QuorumReport, DescribeError>,
    address_of: AddressOf<'_>,
) -> DescribeQuorumResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let is_metadata = topic.topic_name.as_str() == METADATA_TOPIC;
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let index = partition.partition_index;
                    if !is_metadata || index != METADATA_PARTITION {
                        let error = KafkaError::from(ResponseError::UnknownTopicOrPartition);
                        return failed(index, &error, version);
                    }
                    match answer {
                        Ok(report) => reported(report, version),
                        Err(error) => failed(index, &KafkaError::from(*error), version),
                    }
                })
                .collect();
            TopicData::default()
                .with_topic_name(TopicName(topic.topic_name.0.clone()))
                .with_partitions(partitions)
        })
        .collect();
    let mut response = DescribeQuorumResponse::default()
        .with_error_message(None)
        .with_topics(topics);
    if version >= 2 {
        if let Ok(report) = answer {
            response = response.with_nodes(nodes(report, address_of));
        }
    }
    response
}

fn reported(report: &QuorumReport, version: i16) -> PartitionData {
    let replicas = |replicas: &[ReplicaProgress]| {
        replicas
            .iter()
            .map(|replica| {
                let state = ReplicaState::default()
                    .with_replica_id(BrokerId(replica.node))
                    .with_log_end_offset(replica.log_end_offset);
                if version >= 1 {
                    state
                        .with_last_fetch_timestamp(replica.last_fetch_ms)
                        .with_last_caught_up_timestamp(replica.last_caught_up_ms)
                } else {
                    state
                }
            })
            .collect()
    };
    PartitionData::default()
        .with_partition_index(METADATA_PARTITION)
        .with_error_message(None)
        .with_leader_id(BrokerId(report.leader))
        .with_leader_epoch(i32::try_from(report.epoch).unwrap_or(i32::MAX))
        .with_high_watermark(i64::try_from(report.high_watermark).unwrap_or(i64::MAX))
        .with_current_voters(replicas(&report.voters))
        .with_observers(replicas(&report.observers))
}

fn failed(index: i32, error: &KafkaError, version: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(error.code)
        .with_error_message(
            error
                .message
                .as_deref()
                .filter(|_| version >= 2)
                .map(str_bytes),
        )
        .with_leader_id(BrokerId(-1))
        .with_leader_epoch(-1)
        .with_high_watermark(-1)
}

/// The voters' Kafka listeners (Kafka lists its controllers' listeners;
/// a Kafki node has one listener for both). A voter whose address is not
/// known is left out; the CLI then prints no endpoints for it.
fn nodes(report: &QuorumReport, address_of: AddressOf<'_>) -> Vec<Node> {
    report
        .voters
        .iter()
        .filter_map(|voter| {
            let (host, port) = address_of(voter.node)?;
            Some(
                Node::default()
                    .with_node_id(BrokerId(voter.node))
                    .with_listeners(vec![Listener::default()
                        .with_name(str_bytes(LISTENER_NAME))
                        .with_host(str_bytes(&host))
                        .with_port(port)]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::describe_quorum_request;
    use kafki_net::kafka_protocol::protocol::{Decodable, Encodable};

    fn request(topics: &[(&str, &[i32])]) -> DescribeQuorumRequest {
        DescribeQuorumRequest::default().with_topics(
            topics
                .iter()
                .map(|(name, partitions)| {
                    describe_quorum_request::TopicData::default()
                        .with_topic_name(TopicName(str_bytes(name)))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|index| {
                                    describe_quorum_request::PartitionData::default()
                                        .with_partition_index(*index)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    fn report() -> QuorumReport {
        let progress = |node, end, fetch| ReplicaProgress {
            node,
            log_end_offset: end,
            last_fetch_ms: fetch,
            last_caught_up_ms: fetch,
        };
        QuorumReport {
            leader: 2,
            epoch: 5,
            high_watermark: 30,
            voters: vec![
                progress(1, 29, 900),
                progress(2, 30, 1_000),
                progress(3, -1, -1),
            ],
            observers: vec![progress(4, 30, 950)],
        }
    }

    fn addresses(node: i32) -> Option<(String, u16)> {
        (node != 3).then(|| ("127.0.0.1".to_string(), 9090 + node as u16))
    }

    /// Encodes and decodes at `version`, as a client would read it.
    fn on_the_wire(response: &DescribeQuorumResponse, version: i16) -> DescribeQuorumResponse {
        let mut bytes = bytes::BytesMut::new();
        response.encode(&mut bytes, version).expect("encodes");
        DescribeQuorumResponse::decode(&mut bytes.freeze(), version).expect("decodes")
    }

    #[test]
    fn the_metadata_partition_gets_the_report_in_every_version() {
        let request = request(&[(METADATA_TOPIC, &[0])]);
        for version in 0..=2 {
            let built = response(&request, version, &Ok(report()), &addresses);
            let read = on_the_wire(&built, version);
            assert_eq!(read.error_code, 0);
            assert_eq!(read.topics.len(), 1);
            assert_eq!(read.topics[0].topic_name.as_str(), METADATA_TOPIC);
            let partition = &read.topics[0].partitions[0];
            assert_eq!(partition.error_code, 0);
            assert_eq!(partition.leader_id, BrokerId(2));
            assert_eq!(partition.leader_epoch, 5);
            assert_eq!(partition.high_watermark, 30);
            let voters: Vec<(i32, i64)> = partition
                .current_voters
                .iter()
                .map(|v| (v.replica_id.0, v.log_end_offset))
                .collect();
            assert_eq!(voters, vec![(1, 29), (2, 30), (3, -1)]);
            assert_eq!(partition.observers.len(), 1);
            assert_eq!(partition.observers[0].replica_id, BrokerId(4));
            let fetched = partition.current_voters[0].last_fetch_timestamp;
            assert_eq!(fetched, if version >= 1 { 900 } else { -1 });
            if version >= 2 {
                // Voters only, and only those with a known address.
                let nodes: Vec<(i32, u16)> = read
                    .nodes
                    .iter()
                    .map(|n| (n.node_id.0, n.listeners[0].port))
                    .collect();
                assert_eq!(nodes, vec![(1, 9091), (2, 9092)]);
                assert_eq!(read.nodes[0].listeners[0].name.as_str(), LISTENER_NAME);
                assert_eq!(partition.error_message, None);
            } else {
                assert!(read.nodes.is_empty());
            }
        }
    }

    #[test]
    fn other_partitions_are_unknown_and_the_metadata_one_carries_the_error() {
        let request = request(&[(METADATA_TOPIC, &[0, 1]), ("orders", &[0])]);
        for (error, code) in [
            (DescribeError::NoLeader, ResponseError::NotLeaderOrFollower),
            (DescribeError::LeaderSilent, ResponseError::RequestTimedOut),
            (DescribeError::Busy, ResponseError::RequestTimedOut),
        ] {
            for version in 0..=2 {
                let read = on_the_wire(
                    &response(&request, version, &Err(error), &addresses),
                    version,
                );
                let codes: Vec<Vec<i16>> = read
                    .topics
                    .iter()
                    .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
                    .collect();
                let unknown = ResponseError::UnknownTopicOrPartition.code();
                assert_eq!(codes, vec![vec![code.code(), unknown], vec![unknown]]);
                assert_eq!(read.topics[0].partitions[0].leader_id, BrokerId(-1));
                assert!(read.nodes.is_empty());
                if version >= 2 {
                    assert!(read.topics[0].partitions[0].error_message.is_some());
                }
            }
        }
    }
}
