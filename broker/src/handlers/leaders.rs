//! ElectLeaders (API key 43, v0–v2), what `kafka-leader-election.sh` and
//! `Admin.electLeaders` send: a preferred (0) or unclean (1) election for
//! the partitions named, or for every partition when none are (null).
//!
//! Any node takes it: shard 0 decides the elections on its newest image
//! ([`elections_for`], pure), proposes the partition changes through the
//! metadata quorum as other admin changes are
//! ([`Shard::controller_change_by`]), deciding again on the newer image
//! when another change came first, and answers once they are committed, or
//! with `REQUEST_TIMED_OUT` when the request's `timeout_ms` passes first
//! (the change may still commit). A single node answers as Kafka does for
//! one-replica partitions that are led: no election needed.
//!
//! As Kafka's controller does, an election over every partition leaves out
//! the partitions that needed none (each topic is still listed); named
//! partitions are each answered. [`response`] and [`refused`] are pure.

use std::rc::Rc;
use std::time::{Duration, Instant};

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::elect_leaders_response::{
    PartitionResult, ReplicaElectionResult,
};
use kafki_net::kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use super::str_bytes;
use crate::errors::KafkaError;
use crate::metadata::leadership::{elections_for, ElectionOutcome, ElectionType};
use crate::shard::Shard;

/// Each topic asked for (or every topic) with its partitions' outcomes.
type Decided = Vec<(String, Vec<(i32, ElectionOutcome)>)>;

pub async fn elect_leaders(
    shard: &Rc<Shard>,
    request: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let election = match request.election_type {
        0 => ElectionType::Preferred,
        1 => ElectionType::Unclean,
        other => {
            let error = KafkaError::new(
                ResponseError::InvalidRequest,
                format!("Unknown election type {other}"),
            );
            return refused(&request, version, &error);
        }
    };
    let targets: Option<Vec<(String, Vec<i32>)>> =
        request.topic_partitions.as_ref().map(|topics| {
            topics
                .iter()
                .map(|topic| (topic.topic.to_string(), topic.partitions.clone()))
                .collect()
        });
    let wait = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    let deadline = Instant::now() + wait;
    let decided = shard
        .invoke_on(0, move |controller| async move {
            elect_on_controller(&controller, election, targets, deadline).await
        })
        .await
        .unwrap_or_else(|error| {
            Err(KafkaError::new(
                ResponseError::UnknownServerError,
                error.to_string(),
            ))
        });
    match decided {
        Ok(decided) => response(request.topic_partitions.is_none(), &decided),
        Err(error) => refused(&request, version, &error),
    }
}

/// Shard 0: decides and commits the elections, by `deadline`.
async fn elect_on_controller(
    controller: &Rc<Shard>,
    election: ElectionType,
    targets: Option<Vec<(String, Vec<i32>)>>,
    deadline: Instant,
) -> Result<Decided, KafkaError> {
    let mut decided = Vec::new();
    let mut elected = 0;
    controller
        .controller_change_by(Some(deadline), |current| {
            let plan = elections_for(current, election, targets.as_deref());
            decided = plan.topics;
            elected = plan.records.len();
            Ok(plan.records)
        })
        .await?;
    if elected > 0 {
        tracing::info!(
            ?election,
            partitions = elected,
            "leaders elected on request"
        );
    }
    Ok(decided)
}

/// The answer to a request whose elections were decided (and committed):
/// each partition's outcome as Kafka's error code; with `every_partition`,
/// partitions that needed no election are left out.
/// (The fields are the same in every version.)
pub fn response(every_partition: bool, decided: &Decided) -> ElectLeadersResponse {
    let results = decided
        .iter()
        .map(|(topic, outcomes)| {
            let partitions = outcomes
                .iter()
                .filter(|(_, outcome)| !(every_partition && *outcome == ElectionOutcome::NotNeeded))
                .map(|(partition, outcome)| {
                    let result = PartitionResult::default().with_partition_id(*partition);
                    match error_of(topic, *partition, *outcome) {
                        // Null, as Kafka's (the default is an empty string).
                        None => result.with_error_message(None),
                        Some(error) => with_error(result, &error),
                    }
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partition_result(partitions)
        })
        .collect();
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// The answer to a request refused as a whole (Kafka's error response):
/// the error at the top (v1+) and for every partition named.
pub fn refused(
    request: &ElectLeadersRequest,
    version: i16,
    error: &KafkaError,
) -> ElectLeadersResponse {
    let results = request
        .topic_partitions
        .iter()
        .flatten()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    with_error(
                        PartitionResult::default().with_partition_id(*partition),
                        error,
                    )
                })
                .collect();
            ReplicaElectionResult::default()
                .with_topic(topic.topic.clone())
                .with_partition_result(partitions)
        })
        .collect();
    let top = if version >= 1 { error.code } else { 0 };
    ElectLeadersResponse::default()
        .with_error_code(top)
        .with_replica_election_results(results)
}

fn with_error(result: PartitionResult, error: &KafkaError) -> PartitionResult {
    result
        .with_error_code(error.code)
        .with_error_message(error.message.as_deref().map(str_bytes))
}

/// Kafka's error for an outcome (`None`: elected).
fn error_of(topic: &str, partition: i32, outcome: ElectionOutcome) -> Option<KafkaError> {
    let (error, message) = match outcome {
        ElectionOutcome::Elected(_) => return None,
        ElectionOutcome::NotNeeded => (
            ResponseError::ElectionNotNeeded,
            format!("Leader election not needed for {topic}-{partition}."),
        ),
        ElectionOutcome::PreferredNotAvailable => (
            ResponseError::PreferredLeaderNotAvailable,
            format!("The preferred replica of {topic}-{partition} is not alive or not in the ISR."),
        ),
        ElectionOutcome::NoEligibleLeader => (
            ResponseError::EligibleLeadersNotAvailable,
            format!("No replica of {topic}-{partition} is alive."),
        ),
        ElectionOutcome::UnknownPartition => (
            ResponseError::UnknownTopicOrPartition,
            format!("No such topic or partition: {topic}-{partition}."),
        ),
    };
    Some(KafkaError::new(error, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafki_net::kafka_protocol::protocol::Encodable;

    fn decided() -> Decided {
        vec![
            (
                "t".to_string(),
                vec![
                    (0, ElectionOutcome::Elected(1)),
                    (1, ElectionOutcome::NotNeeded),
                    (2, ElectionOutcome::PreferredNotAvailable),
                ],
            ),
            ("quiet".to_string(), vec![(0, ElectionOutcome::NotNeeded)]),
            (
                "gone".to_string(),
                vec![(0, ElectionOutcome::UnknownPartition)],
            ),
        ]
    }

    fn codes(response: &ElectLeadersResponse) -> Vec<(String, Vec<(i32, i16)>)> {
        response
            .replica_election_results
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partition_result
                    .iter()
                    .map(|result| (result.partition_id, result.error_code))
                    .collect();
                (topic.topic.to_string(), partitions)
            })
            .collect()
    }

    #[test]
    fn named_partitions_are_each_answered_with_kafkas_codes() {
        let answer = response(false, &decided());
        assert_eq!(answer.error_code, 0);
        assert_eq!(
            codes(&answer),
            vec![
                ("t".to_string(), vec![(0, 0), (1, 84), (2, 80)]),
                ("quiet".to_string(), vec![(0, 84)]),
                ("gone".to_string(), vec![(0, 3)]),
            ]
        );
        let elected = &answer.replica_election_results[0].partition_result[0];
        assert!(elected.error_message.is_none());
        for version in 0..=2 {
            assert!(answer.compute_size(version).is_ok(), "v{version} encodes");
        }
        let unclean = response(
            false,
            &vec![("t".into(), vec![(0, ElectionOutcome::NoEligibleLeader)])],
        );
        assert_eq!(codes(&unclean), vec![("t".to_string(), vec![(0, 83)])]);
    }

    #[test]
    fn an_election_over_every_partition_leaves_out_those_that_needed_none() {
        let answer = response(true, &decided());
        assert_eq!(
            codes(&answer),
            vec![
                ("t".to_string(), vec![(0, 0), (2, 80)]),
                ("quiet".to_string(), vec![]),
                ("gone".to_string(), vec![(0, 3)]),
            ]
        );
    }

    #[test]
    fn a_refused_request_carries_its_error_at_the_top_from_v1_and_per_partition() {
        let request = ElectLeadersRequest::default()
            .with_election_type(7)
            .with_topic_partitions(Some(vec![TopicPartitions::default()
                .with_topic(TopicName(str_bytes("t")))
                .with_partitions(vec![0, 1])]));
        let error = KafkaError::new(ResponseError::RequestTimedOut, "late");
        let answer = refused(&request, 1, &error);
        assert_eq!(answer.error_code, 7);
        assert_eq!(
            codes(&answer),
            vec![("t".to_string(), vec![(0, 7), (1, 7)])]
        );
        // v0 has no top-level error code: only the partitions carry it.
        let v0 = refused(&request, 0, &error);
        assert_eq!(v0.error_code, 0);
        assert!(v0.compute_size(0).is_ok());
        // Every partition asked for: nothing to list.
        let all = refused(&request.clone().with_topic_partitions(None), 2, &error);
        assert!(all.replica_election_results.is_empty());
        assert_eq!(all.error_code, 7);
    }
}
