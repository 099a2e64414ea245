//! CreatePartitions (through the controller), DeleteRecords and
//! OffsetForLeaderEpoch (on each partition's owner).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafki_net::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafki_net::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafki_net::kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, DeleteRecordsRequest, DeleteRecordsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::str_bytes;
use crate::errors::code_for_log_error;
use crate::errors::KafkaError;
use crate::metadata::PARTITIONS_MAX;
use crate::shard::Shard;

pub async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.to_string();
        let count = topic.count;
        let has_assignments = topic.assignments.is_some();
        let validate_only = request.validate_only;
        let outcome = shard
            .invoke_on(0, move |controller| async move {
                controller
                    .controller_change(|current| {
                        let Some(meta) = current.topic(&name) else {
                            return Err(KafkaError::new(ResponseError::UnknownTopicOrPartition, format!("Topic {name} does not exist")));
                        };
                        if has_assignments {
                            return Err(KafkaError::new(ResponseError::InvalidReplicaAssignment, "Manual replica assignment is not supported yet."));
                        }
                        if count <= meta.partitions || count > PARTITIONS_MAX {
                            return Err(KafkaError::new(ResponseError::InvalidPartitions, format!(
                                    "Topic {name} has {} partitions; the new count must be larger and at most {PARTITIONS_MAX}.",
                                    meta.partitions
                                )));
                        }
                        if validate_only {
                            return Ok(Vec::new());
                        }
                        let mut grown = meta.clone();
                        let mut records = Vec::new();
                        if !grown.replicas.is_empty() {
                            // New partitions get as many replicas as the first one has.
                            let replication_factor = current.replicas(&name, 0).map_or(1, <[i32]>::len);
                            let added = current
                                .place_partitions((count - meta.partitions) as usize, replication_factor)
                                .map_err(|error| error.to_kafka_error())?;
                            grown.replicas.extend(added);
                            // A topic from before replication state keeps the old rules for all its partitions.
                            if current.partition_record(&name, 0).is_some() {
                                records = crate::metadata::partitions::initial_partition_records(&grown, meta.partitions);
                            }
                        }
                        grown.partitions = count;
                        records.insert(0, crate::metadata::MetadataRecord::Topic(grown));
                        Ok(records)
                    })
                    .await
                    .map(|_| ())
            })
            .await
            .unwrap_or_else(|error| Err(KafkaError::new(ResponseError::UnknownServerError, error.to_string())));
        let mut result = CreatePartitionsTopicResult::default().with_name(topic.name);
        if let Err(KafkaError { code, message }) = outcome {
            result = result
                .with_error_code(code)
                .with_error_message(message.as_deref().map(str_bytes));
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DeleteRecords: moves each partition's log start (offset -1 = the high
/// watermark) and deletes whole segments below it.
pub async fn delete_records(
    shard: &Rc<Shard>,
    request: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.to_string();
        let mut by_owner: BTreeMap<usize, Vec<(i32, i64)>> = BTreeMap::new();
        for partition in &topic.partitions {
            by_owner
                .entry(shard.owner_of(&name, partition.partition_index))
                .or_default()
                .push((partition.partition_index, partition.offset));
        }
        let mut partitions = Vec::new();
        for (owner, wanted) in by_owner {
            let topic_name = name.clone();
            let fallback: Vec<i32> = wanted.iter().map(|(index, _)| *index).collect();
            let answers = shard
                .invoke_on(owner, move |owner| async move {
                    let mut answers = Vec::with_capacity(wanted.len());
                    for (index, offset) in wanted {
                        answers.push((
                            index,
                            delete_before(&owner, &topic_name, index, offset).await,
                        ));
                    }
                    answers
                })
                .await
                .unwrap_or_else(|_| {
                    fallback
                        .into_iter()
                        .map(|index| (index, Err(ResponseError::UnknownServerError.code())))
                        .collect()
                });
            for (index, answer) in answers {
                let result = DeleteRecordsPartitionResult::default().with_partition_index(index);
                partitions.push(match answer {
                    Ok(low_watermark) => result.with_low_watermark(low_watermark),
                    Err(code) => result.with_low_watermark(-1).with_error_code(code),
                });
            }
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

async fn delete_before(shard: &Shard, topic: &str, index: i32, offset: i64) -> Result<i64, i16> {
    // Kafka refuses this too (InvalidTopicException): the group coordinator
    // owns what is in there.
    if crate::metadata::ClusterMetadata::is_internal_topic(topic) {
        return Err(ResponseError::InvalidTopicException.code());
    }
    let partition = shard.partition(topic, index).await?;
    let high_watermark = partition.high_watermark() as i64;
    let target = if offset == -1 { high_watermark } else { offset };
    if target < 0 || target > high_watermark {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    partition
        .delete_records_before(target as u64)
        .await
        .map(|start| start as i64)
        .map_err(|error| code_for_log_error(&error))
}

/// OffsetForLeaderEpoch: the largest epoch ≤ the one asked and where it
/// ends (Kafka's answer; -1/-1 when the log knows no such epoch).
pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.topic.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in topic.partitions {
            let owner = shard.owner_of(&name, wanted.partition);
            let topic_name = name.clone();
            let answer = shard
                .invoke_on(owner, move |owner| async move {
                    let partition = owner.partition(&topic_name, wanted.partition).await?;
                    partition.check_leader_epoch(wanted.current_leader_epoch)?;
                    Ok::<_, i16>(
                        partition
                            .end_offset_for_epoch(wanted.leader_epoch)
                            .map(|(epoch, end)| (epoch, end as i64)),
                    )
                })
                .await
                .unwrap_or(Err(ResponseError::UnknownServerError.code()));
            let result = EpochEndOffset::default().with_partition(wanted.partition);
            partitions.push(match answer {
                Ok(Some((epoch, end))) => result.with_leader_epoch(epoch).with_end_offset(end),
                Ok(None) => result.with_leader_epoch(-1).with_end_offset(-1),
                Err(code) => result
                    .with_error_code(code)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
