//! AlterPartitionReassignments (v0–1) and ListPartitionReassignments (v0):
//! moving partition replicas between nodes, what `kafka-reassign-partitions`
//! sends. The rules are [`crate::metadata::reassignment`]'s; the changes
//! go through the controller like every admin change (any node takes the
//! request), and the controller completes each move once its new replicas
//! are in sync.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafki_net::kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafki_net::kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::str_bytes;
use crate::errors::KafkaError;
use crate::metadata::reassignment::{self, ReassignError};
use crate::shard::Shard;

/// One partition's wish: a new replica list, or `None` to cancel.
type Wish = (String, i32, Option<Vec<i32>>);

pub async fn alter_partition_reassignments(
    shard: &Rc<Shard>,
    request: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let allow_factor_change = version < 1 || request.allow_replication_factor_change;
    let wishes: Vec<Wish> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |partition| {
                (
                    topic.name.to_string(),
                    partition.partition_index,
                    partition
                        .replicas
                        .as_ref()
                        .map(|replicas| replicas.iter().map(|id| id.0).collect()),
                )
            })
        })
        .collect();
    let outcome = shard
        .invoke_on(0, move |controller| async move {
            let mut errors: BTreeMap<(String, i32), ReassignError> = BTreeMap::new();
            let changed = controller
                .controller_change(|image| {
                    errors.clear();
                    let mut records = Vec::new();
                    for (topic, partition, target) in &wishes {
                        let planned = match target {
                            Some(target) => {
                                let factor = image
                                    .partition_record(topic, *partition)
                                    .map(|record| {
                                        image
                                            .reassignment(topic, *partition)
                                            .map_or(record.replicas.len(), |r| r.original.len())
                                    });
                                if !allow_factor_change
                                    && factor.is_some_and(|factor| factor != target.len())
                                {
                                    Err(ReassignError::InvalidReplicaAssignment(
                                        "the request does not allow changing the replication factor".to_string(),
                                    ))
                                } else {
                                    reassignment::start(image, topic, *partition, target)
                                }
                            }
                            None => reassignment::cancel(image, topic, *partition),
                        };
                        match planned {
                            Ok(planned) => records.extend(planned),
                            Err(error) => {
                                errors.insert((topic.clone(), *partition), error);
                            }
                        }
                    }
                    Ok(records)
                })
                .await;
            match changed {
                Ok(_) => Ok(errors
                    .into_iter()
                    .map(|(key, error)| (key, (error.code(), error.message())))
                    .collect::<BTreeMap<_, _>>()),
                Err(error) => Err(error),
            }
        })
        .await
        .unwrap_or_else(|error| {
            Err(KafkaError::new(
                ResponseError::UnknownServerError,
                error.to_string(),
            ))
        });
    let mut response = AlterPartitionReassignmentsResponse::default();
    if version >= 1 {
        response = response.with_allow_replication_factor_change(allow_factor_change);
    }
    let partition_errors = match outcome {
        Ok(errors) => errors,
        Err(KafkaError { code, message }) => {
            return response
                .with_error_code(code)
                .with_error_message(message.as_deref().map(str_bytes));
        }
    };
    let responses = request
        .topics
        .iter()
        .map(|topic| {
            let name = topic.name.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    let result = ReassignablePartitionResponse::default()
                        .with_partition_index(partition.partition_index);
                    match partition_errors.get(&(name.clone(), partition.partition_index)) {
                        Some((code, message)) => result
                            .with_error_code(*code)
                            .with_error_message(Some(str_bytes(message))),
                        None => result,
                    }
                })
                .collect();
            ReassignableTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    response.with_responses(responses)
}

pub async fn list_partition_reassignments(
    shard: &Rc<Shard>,
    request: ListPartitionReassignmentsRequest,
    _version: i16,
) -> ListPartitionReassignmentsResponse {
    let image = shard.metadata();
    let wanted: Option<BTreeMap<String, Vec<i32>>> = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|topic| (topic.name.to_string(), topic.partition_indexes.clone()))
            .collect()
    });
    let mut by_topic: BTreeMap<&str, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    for (topic, partition, reassignment) in image.reassignments_iter() {
        let listed = wanted.as_ref().is_none_or(|wanted| {
            wanted
                .get(topic)
                .is_some_and(|partitions| partitions.contains(&partition))
        });
        if !listed {
            continue;
        }
        let replicas = image
            .partition_record(topic, partition)
            .map(|record| record.replicas.clone())
            .unwrap_or_default();
        let ids = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect::<Vec<_>>();
        by_topic.entry(topic).or_default().push(
            OngoingPartitionReassignment::default()
                .with_partition_index(partition)
                .with_replicas(ids(replicas))
                .with_adding_replicas(ids(reassignment.adding()))
                .with_removing_replicas(ids(reassignment.removing())),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(name, partitions)| {
            OngoingTopicReassignment::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
