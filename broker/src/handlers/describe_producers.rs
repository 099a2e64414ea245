//! DescribeProducers (API 61, v0 as Kafka 4.x, KIP-664): the producers a
//! partition keeps state for — id, epoch, last sequence and timestamp, the
//! coordinator epoch of the last marker, the start offset of the open
//! transaction ([`crate::producer::active`]). What
//! `kafka-transactions.sh describe-producers`, `find-hanging` and
//! `abort --start-offset` read (the last then writes the ABORT through
//! WriteTxnMarkers, [`super::txn_markers`]).
//!
//! Each partition is read on its owner shard, from any replica this node
//! holds that serves reads: the leader, or a follower that knows a high
//! watermark. Kafka answers on followers too, and `find-hanging
//! --broker-id` asks one broker about every partition it holds a replica
//! of. Errors per partition, as Kafka: `UNKNOWN_TOPIC_OR_PARTITION` for a
//! topic or index that does not exist, `NOT_LEADER_OR_FOLLOWER` where this
//! node serves no replica (Admin then asks the leader again).

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafki_net::kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId,
};

use crate::producer::ActiveProducer;
use crate::shard::Shard;

/// One partition asked about: its place in the answer, topic and index.
struct Wanted {
    slot: usize,
    topic: String,
    partition: i32,
}

/// A partition's producers, or its Kafka error code.
type Answer = Result<Vec<ActiveProducer>, i16>;

pub async fn describe_producers(
    shard: &Rc<Shard>,
    request: DescribeProducersRequest,
    _version: i16,
) -> DescribeProducersResponse {
    let mut by_shard: BTreeMap<usize, Vec<Wanted>> = BTreeMap::new();
    let mut slots = 0usize;
    for topic in &request.topics {
        let name = topic.name.to_string();
        for partition in &topic.partition_indexes {
            by_shard
                .entry(shard.owner_of(&name, *partition))
                .or_default()
                .push(Wanted {
                    slot: slots,
                    topic: name.clone(),
                    partition: *partition,
                });
            slots += 1;
        }
    }
    let mut answers: Vec<Answer> = vec![Err(ResponseError::UnknownServerError.code()); slots];
    let calls = by_shard.into_iter().map(|(owner, wanted)| async move {
        shard
            .invoke_on(owner, move |owner| async move {
                let mut found = Vec::with_capacity(wanted.len());
                for partition in wanted {
                    let answer = describe_on_owner(&owner, &partition.topic, partition.partition);
                    found.push((partition.slot, answer.await));
                }
                found
            })
            .await
    });
    for called in futures::future::join_all(calls).await {
        match called {
            Ok(found) => {
                for (slot, answer) in found {
                    if let Some(entry) = answers.get_mut(slot) {
                        *entry = answer;
                    }
                }
            }
            // Its partitions keep UNKNOWN_SERVER_ERROR.
            Err(error) => tracing::error!(%error, "DescribeProducers: owner shard unreachable"),
        }
    }
    let mut answers = answers.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|index| {
                    let answer = answers
                        .next()
                        .unwrap_or(Err(ResponseError::UnknownServerError.code()));
                    partition_response(*index, answer)
                })
                .collect();
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// On the partition's owner shard: its producers, if a replica here serves
/// reads.
async fn describe_on_owner(shard: &Shard, topic: &str, partition: i32) -> Answer {
    // The leader, or a follower that knows a high watermark: the role does
    // not matter here, a follower replays the leader's batches into the
    // same producer state.
    let (replica, _role) = shard.partition_for_consumer_fetch(topic, partition).await?;
    Ok(replica.active_producers())
}

fn partition_response(index: i32, answer: Answer) -> PartitionResponse {
    let response = PartitionResponse::default().with_partition_index(index);
    match answer {
        Ok(producers) => {
            response.with_active_producers(producers.iter().map(producer_state).collect())
        }
        Err(code) => response.with_error_code(code),
    }
}

fn producer_state(producer: &ActiveProducer) -> ProducerState {
    ProducerState::default()
        .with_producer_id(ProducerId(producer.producer_id))
        .with_producer_epoch(i32::from(producer.producer_epoch))
        .with_last_sequence(producer.last_sequence)
        .with_last_timestamp(producer.last_timestamp_ms)
        .with_coordinator_epoch(producer.coordinator_epoch)
        .with_current_txn_start_offset(producer.current_txn_start_offset)
}
