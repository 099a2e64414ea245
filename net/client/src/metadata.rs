//! The client's view of the cluster, pure: brokers, topics, partition leaders, built from
//! Metadata responses.
//!
//! Invariant: a snapshot is immutable once published (the client swaps whole
//! `Arc<ClusterMetadata>` values), so a reader never sees half an update; partitions of a
//! topic are sorted by index.

use std::collections::{BTreeMap, HashMap};

use kafki_net::kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

use crate::error::KafkaCode;

/// Where a broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerAddress {
    /// `host:port`, as `TcpStream::connect` takes it (IPv6 hosts bracketed).
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// `None` while the partition has no leader.
    pub leader_id: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub in_sync_replicas: Vec<i32>,
    pub error: Option<KafkaCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    /// Nil before Metadata v10.
    pub topic_id: Uuid,
    pub is_internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    pub fn partition(&self, partition: i32) -> Option<&PartitionMetadata> {
        // Sorted and usually dense: try the direct index first.
        match usize::try_from(partition)
            .ok()
            .and_then(|index| self.partitions.get(index))
        {
            Some(found) if found.partition == partition => Some(found),
            _ => self.partitions.iter().find(|p| p.partition == partition),
        }
    }

    /// Whether every partition has a leader.
    pub fn all_partitions_led(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.iter().all(|p| p.leader_id.is_some())
    }
}

/// A snapshot of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub controller_id: Option<i32>,
    pub brokers: BTreeMap<i32, BrokerAddress>,
    pub topics: HashMap<String, TopicMetadata>,
    /// Per topic, the error of the last answer that had one (e.g. `UNKNOWN_TOPIC_OR_PARTITION`).
    pub topic_errors: HashMap<String, KafkaCode>,
}

impl ClusterMetadata {
    /// A new snapshot: this one with the brokers replaced and the topics the response
    /// mentions replaced (a topic answered with an error is removed and its error kept).
    pub fn merged(&self, response: &MetadataResponse) -> Self {
        let mut next = self.clone();
        next.brokers = response
            .brokers
            .iter()
            .map(|broker| {
                let address = BrokerAddress {
                    node_id: broker.node_id.0,
                    host: broker.host.to_string(),
                    port: broker.port,
                    rack: broker.rack.as_ref().map(|rack| rack.to_string()),
                };
                (broker.node_id.0, address)
            })
            .collect();
        next.cluster_id = response.cluster_id.as_ref().map(|id| id.to_string());
        next.controller_id = (response.controller_id.0 >= 0).then_some(response.controller_id.0);
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|name| name.to_string()) else {
                continue;
            };
            if let Some(code) = KafkaCode::from_code(topic.error_code) {
                next.topics.remove(&name);
                next.topic_errors.insert(name, code);
                continue;
            }
            let mut partitions: Vec<PartitionMetadata> = topic
                .partitions
                .iter()
                .map(|partition| PartitionMetadata {
                    partition: partition.partition_index,
                    leader_id: (partition.leader_id.0 >= 0).then_some(partition.leader_id.0),
                    leader_epoch: partition.leader_epoch,
                    replicas: partition.replica_nodes.iter().map(|id| id.0).collect(),
                    in_sync_replicas: partition.isr_nodes.iter().map(|id| id.0).collect(),
                    error: KafkaCode::from_code(partition.error_code),
                })
                .collect();
            partitions.sort_by_key(|partition| partition.partition);
            next.topic_errors.remove(&name);
            next.topics.insert(
                name.clone(),
                TopicMetadata {
                    name,
                    topic_id: topic.topic_id,
                    is_internal: topic.is_internal,
                    partitions,
                },
            );
        }
        next
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.topics.get(name)
    }

    /// The topic with this id (Fetch and Produce from v13 name topics by id only).
    pub fn topic_by_id(&self, topic_id: Uuid) -> Option<&TopicMetadata> {
        if topic_id.is_nil() {
            return None;
        }
        self.topics
            .values()
            .find(|topic| topic.topic_id == topic_id)
    }

    /// The leader of a partition, if known.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.topic(topic)?.partition(partition)?.leader_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafki_net::kafka_protocol::messages::{BrokerId, TopicName};
    use kafki_net::kafka_protocol::protocol::StrBytes;

    fn topic(name: &'static str, leaders: &[i32], error_code: i16) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(name))))
            .with_error_code(error_code)
            .with_topic_id(Uuid::from_u128(7))
            .with_partitions(
                leaders
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(index, leader)| {
                        MetadataResponsePartition::default()
                            .with_partition_index(index as i32)
                            .with_leader_id(BrokerId(*leader))
                    })
                    .collect(),
            )
    }

    fn response(topics: Vec<MetadataResponseTopic>) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092)])
            .with_controller_id(BrokerId(1))
            .with_topics(topics)
    }

    #[test]
    fn merges_brokers_topics_and_leaders() {
        let metadata = ClusterMetadata::default().merged(&response(vec![topic("a", &[1, -1], 0)]));
        assert_eq!(metadata.brokers[&1].address(), "127.0.0.1:9092");
        assert_eq!(metadata.controller_id, Some(1));
        let a = metadata.topic("a").expect("topic a");
        assert_eq!(
            a.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![0, 1],
            "sorted"
        );
        assert_eq!(metadata.leader("a", 0), Some(1));
        assert_eq!(metadata.leader("a", 1), None, "leader -1 is no leader");
        assert!(!a.all_partitions_led());
        assert_eq!(
            metadata
                .topic_by_id(Uuid::from_u128(7))
                .map(|t| t.name.as_str()),
            Some("a")
        );
        assert!(metadata.topic_by_id(Uuid::nil()).is_none());
    }

    #[test]
    fn later_answers_replace_topics_and_errors_remove_them() {
        let first = ClusterMetadata::default()
            .merged(&response(vec![topic("a", &[1], 0), topic("b", &[1], 0)]));
        let second = first.merged(&response(vec![topic("a", &[], 3)]));
        assert!(second.topic("a").is_none());
        assert_eq!(second.topic_errors.get("a"), Some(&KafkaCode(3)));
        assert!(second.topic("b").is_some(), "topics not mentioned stay");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let broker = BrokerAddress {
            node_id: 0,
            host: "::1".into(),
            port: 9092,
            rack: None,
        };
        assert_eq!(broker.address(), "[::1]:9092");
    }
}
