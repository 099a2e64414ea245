//! Consumer-group calls on [`Client`] that need no membership: finding a group's
//! coordinator (FindCoordinator), committed offsets (OffsetFetch, OffsetCommit), and the
//! group admin APIs (ListGroups, DescribeGroups). The member side of the protocol is in
//! [`crate::membership`].
//!
//! Every group call goes to the group's coordinator; when the coordinator moved or is
//! still loading (`NOT_COORDINATOR`, `COORDINATOR_NOT_AVAILABLE`,
//! `COORDINATOR_LOAD_IN_PROGRESS`) it is looked up again and the call retried, a bounded
//! number of times.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kafki_net::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafki_net::kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafki_net::kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_net::kafka_protocol::ResponseError;

use crate::assignor::{decode_assignment, MemberAssignment, CONSUMER_PROTOCOL_TYPE};
use crate::client::Client;
use crate::error::{ClientError, ClientResult, KafkaCode};

/// Lookups of a coordinator that is not available yet (a new `__consumer_offsets`
/// partition being created or loaded) are retried this long.
const COORDINATOR_WAIT: Duration = Duration::from_secs(15);
/// Calls retried after the coordinator moved.
const COORDINATOR_RETRIES: u32 = 3;
const COORDINATOR_BACKOFF: Duration = Duration::from_millis(100);

/// A `(topic, partition)` pair, the key of per-partition group data.
pub type TopicPartition = (String, i32);

/// A committed offset: where the group continues (the next record to read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub metadata: Option<String>,
}

/// Who commits: a member of the current generation, or an admin tool outside the group
/// (generation -1, no member id), which a coordinator accepts only while the group has no
/// members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitIdentity {
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

impl CommitIdentity {
    /// An admin commit (Kafka's `kafka-consumer-groups --reset-offsets`).
    pub fn outside_the_group() -> Self {
        Self {
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// One group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupListing {
    pub group_id: String,
    /// `consumer` for consumer groups; empty for groups that only store offsets.
    pub protocol_type: String,
    /// From ListGroups v4 on (`Stable`, `Empty`, ...).
    pub state: Option<String>,
}

/// One group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
    pub state: String,
    pub protocol_type: String,
    /// The assignor the group chose (consumer groups), empty while not stable.
    pub protocol: String,
    pub members: Vec<GroupMemberDescription>,
    pub coordinator: i32,
}

impl GroupDescription {
    /// No group by this id (Kafka answers "Dead" with no error before DescribeGroups v6,
    /// `GROUP_ID_NOT_FOUND` from v6).
    pub fn is_dead(&self) -> bool {
        self.state == "Dead"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Decoded for consumer groups (`None` for other protocols or undecodable bytes).
    pub assignment: Option<MemberAssignment>,
}

/// Whether `error` says to look the coordinator up again and retry.
pub(crate) fn coordinator_moved(error: &ClientError) -> bool {
    match error.kafka_code() {
        Some(code) => {
            code.is(ResponseError::NotCoordinator)
                || code.is(ResponseError::CoordinatorNotAvailable)
                || code.is(ResponseError::CoordinatorLoadInProgress)
        }
        None => error.is_retriable(),
    }
}

impl Client {
    /// The broker id of `group_id`'s coordinator, waiting (up to 15 s) while the
    /// coordinator is not available yet.
    pub async fn find_coordinator(&self, group_id: &str) -> ClientResult<i32> {
        let deadline = tokio::time::Instant::now() + COORDINATOR_WAIT;
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.find_coordinator_once(group_id).await {
                Err(error)
                    if coordinator_moved(&error)
                        && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(group_id, %error, "coordinator not available yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                outcome => return outcome,
            }
        }
    }

    async fn find_coordinator_once(&self, group_id: &str) -> ClientResult<i32> {
        let key = StrBytes::from_string(group_id.to_string());
        let connection = self.any_connection().await?;
        let response = connection
            .send_built(|version| {
                // v4 batches keys; before it one key per request. Key type 0: a group.
                if version >= 4 {
                    FindCoordinatorRequest::default().with_coordinator_keys(vec![key.clone()])
                } else {
                    FindCoordinatorRequest::default().with_key(key.clone())
                }
            })
            .await?;
        let context = || format!("finding the coordinator of group {group_id}");
        let (node_id, code, message) = match response.coordinators.first() {
            Some(coordinator) => (
                coordinator.node_id.0,
                coordinator.error_code,
                coordinator.error_message.clone(),
            ),
            None => (
                response.node_id.0,
                response.error_code,
                response.error_message.clone(),
            ),
        };
        ClientError::check(code, message.as_deref(), context)?;
        if !self.metadata().brokers.contains_key(&node_id) {
            self.refresh_metadata(&[]).await?;
        }
        if !self.metadata().brokers.contains_key(&node_id) {
            return Err(ClientError::UnknownBroker { broker_id: node_id });
        }
        Ok(node_id)
    }

    /// Runs `call` against `group_id`'s coordinator, looking it up again and retrying
    /// when it moved.
    pub(crate) async fn with_coordinator<T, Call, Attempt>(
        &self,
        group_id: &str,
        mut call: Call,
    ) -> ClientResult<T>
    where
        Call: FnMut(i32) -> Attempt,
        Attempt: Future<Output = ClientResult<T>>,
    {
        let mut retries = 0;
        loop {
            let coordinator = self.find_coordinator(group_id).await?;
            match call(coordinator).await {
                Err(error) if retries < COORDINATOR_RETRIES && coordinator_moved(&error) => {
                    tracing::debug!(group_id, %error, "coordinator moved; retrying");
                    retries += 1;
                    tokio::time::sleep(COORDINATOR_BACKOFF).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// The offsets `group_id` committed: for `partitions` (topic → partitions), or for
    /// every partition it has offsets for (`None`). Partitions without a committed offset
    /// are absent.
    pub async fn committed_offsets(
        &self,
        group_id: &str,
        partitions: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> ClientResult<BTreeMap<TopicPartition, CommittedOffset>> {
        self.with_coordinator(group_id, |coordinator| {
            self.committed_offsets_at(coordinator, group_id, partitions)
        })
        .await
    }

    pub(crate) async fn committed_offsets_at(
        &self,
        coordinator: i32,
        group_id: &str,
        partitions: Option<&BTreeMap<String, Vec<i32>>>,
    ) -> ClientResult<BTreeMap<TopicPartition, CommittedOffset>> {
        let group = GroupId(StrBytes::from_string(group_id.to_string()));
        let response = self
            .send_built(coordinator, |version| {
                // v8 batches groups; before it one group per request.
                if version >= 8 {
                    let topics = partitions.map(|partitions| {
                        partitions
                            .iter()
                            .map(|(topic, indexes)| {
                                OffsetFetchRequestTopics::default()
                                    .with_name(topic_name(topic))
                                    .with_partition_indexes(indexes.clone())
                            })
                            .collect()
                    });
                    OffsetFetchRequest::default().with_groups(vec![
                        OffsetFetchRequestGroup::default()
                            .with_group_id(group.clone())
                            .with_topics(topics),
                    ])
                } else {
                    let topics = partitions.map(|partitions| {
                        partitions
                            .iter()
                            .map(|(topic, indexes)| {
                                OffsetFetchRequestTopic::default()
                                    .with_name(topic_name(topic))
                                    .with_partition_indexes(indexes.clone())
                            })
                            .collect()
                    });
                    OffsetFetchRequest::default()
                        .with_group_id(group.clone())
                        .with_topics(topics)
                }
            })
            .await?;
        let context = || format!("fetching the committed offsets of group {group_id}");
        // (topic, partition, offset, metadata, error code) from either response shape.
        let mut answered: Vec<(&TopicName, i32, i64, &Option<StrBytes>, i16)> = Vec::new();
        if let Some(group) = response.groups.first() {
            ClientError::check(group.error_code, None, context)?;
            for topic in &group.topics {
                answered.extend(topic.partitions.iter().map(|partition| {
                    let p = partition;
                    (
                        &topic.name,
                        p.partition_index,
                        p.committed_offset,
                        &p.metadata,
                        p.error_code,
                    )
                }));
            }
        } else {
            ClientError::check(response.error_code, None, context)?;
            for topic in &response.topics {
                answered.extend(topic.partitions.iter().map(|partition| {
                    let p = partition;
                    (
                        &topic.name,
                        p.partition_index,
                        p.committed_offset,
                        &p.metadata,
                        p.error_code,
                    )
                }));
            }
        }
        let mut offsets = BTreeMap::new();
        for (topic, partition, offset, metadata, code) in answered {
            ClientError::check(code, None, || {
                format!("{} for {}-{partition}", context(), topic.0)
            })?;
            // -1: nothing committed for this partition.
            if offset >= 0 {
                offsets.insert(
                    (topic.0.to_string(), partition),
                    CommittedOffset {
                        offset,
                        metadata: metadata.as_ref().map(|m| m.to_string()),
                    },
                );
            }
        }
        Ok(offsets)
    }

    /// Commits `offsets` (the next record to read, per partition) for `group_id` as
    /// `identity`; the first partition error fails the call.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        identity: &CommitIdentity,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> ClientResult<()> {
        self.with_coordinator(group_id, |coordinator| {
            self.commit_offsets_at(coordinator, group_id, identity, offsets)
        })
        .await
    }

    pub(crate) async fn commit_offsets_at(
        &self,
        coordinator: i32,
        group_id: &str,
        identity: &CommitIdentity,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> ClientResult<()> {
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), &offset) in offsets {
            by_topic.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(offset),
            );
        }
        let topics: Vec<OffsetCommitRequestTopic> = by_topic
            .into_iter()
            .map(|(topic, partitions)| {
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions)
            })
            .collect();
        let response = self
            .send_built(coordinator, |version| {
                let request = OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group_id.to_string())))
                    .with_generation_id_or_member_epoch(identity.generation_id)
                    .with_member_id(StrBytes::from_string(identity.member_id.clone()))
                    .with_topics(topics.clone());
                if version >= 7 {
                    request.with_group_instance_id(
                        identity
                            .group_instance_id
                            .as_ref()
                            .map(|id| StrBytes::from_string(id.clone())),
                    )
                } else {
                    request
                }
            })
            .await?;
        for topic in &response.topics {
            for partition in &topic.partitions {
                ClientError::check(partition.error_code, None, || {
                    format!(
                        "committing the offset of {}-{} for group {group_id}",
                        topic.name.0, partition.partition_index
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every group on every broker, sorted by id.
    pub async fn list_groups(&self) -> ClientResult<Vec<GroupListing>> {
        let metadata = self.refresh_metadata(&[]).await?;
        let answers = metadata.brokers.keys().map(|&broker| async move {
            self.send(broker, &ListGroupsRequest::default())
                .await
                .map(|response| (broker, response))
        });
        let mut groups = Vec::new();
        for answer in futures::future::join_all(answers).await {
            let (broker, response) = answer?;
            ClientError::check(response.error_code, None, || {
                format!("listing the groups of broker {broker}")
            })?;
            groups.extend(response.groups.into_iter().map(|group| GroupListing {
                group_id: group.group_id.0.to_string(),
                protocol_type: group.protocol_type.to_string(),
                state: (!group.group_state.is_empty()).then(|| group.group_state.to_string()),
            }));
        }
        groups.sort();
        groups.dedup_by(|a, b| a.group_id == b.group_id);
        Ok(groups)
    }

    /// One group's state, protocol and members, from its coordinator.
    pub async fn describe_group(&self, group_id: &str) -> ClientResult<GroupDescription> {
        self.with_coordinator(group_id, |coordinator| async move {
            let request = DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_string(group_id.to_string()))]);
            let response = self.send(coordinator, &request).await?;
            let Some(group) = response.groups.into_iter().next() else {
                return Err(ClientError::Protocol {
                    address: format!("broker {coordinator}"),
                    reason: format!("DescribeGroups answered nothing for group {group_id}"),
                });
            };
            ClientError::check(group.error_code, group.error_message.as_deref(), || {
                format!("describing group {group_id}")
            })?;
            let consumer = group.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
            Ok(GroupDescription {
                group_id: group.group_id.0.to_string(),
                state: group.group_state.to_string(),
                protocol_type: group.protocol_type.to_string(),
                protocol: group.protocol_data.to_string(),
                coordinator,
                members: group
                    .members
                    .into_iter()
                    .map(|member| GroupMemberDescription {
                        member_id: member.member_id.to_string(),
                        group_instance_id: member.group_instance_id.map(|id| id.to_string()),
                        client_id: member.client_id.to_string(),
                        client_host: member.client_host.to_string(),
                        assignment: consumer
                            .then(|| decode_assignment(&member.member_assignment).ok())
                            .flatten(),
                    })
                    .collect(),
            })
        })
        .await
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// The error a group API answered, for callers matching on it.
pub fn is_group_error(error: &ClientError, expected: ResponseError) -> bool {
    error
        .kafka_code()
        .is_some_and(|code: KafkaCode| code.is(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_errors_are_retried_and_others_are_not() {
        let kafka = |code: i16| ClientError::kafka(KafkaCode(code), "test");
        assert!(coordinator_moved(&kafka(14)));
        assert!(coordinator_moved(&kafka(15)));
        assert!(coordinator_moved(&kafka(16)));
        assert!(!coordinator_moved(&kafka(25)), "UNKNOWN_MEMBER_ID");
        assert!(!coordinator_moved(&kafka(69)), "GROUP_ID_NOT_FOUND");
        assert!(coordinator_moved(&ClientError::ConnectionClosed {
            address: "a".into(),
            reason: "b".into()
        }));
        assert!(is_group_error(&kafka(69), ResponseError::GroupIdNotFound));
        let admin = CommitIdentity::outside_the_group();
        assert_eq!((admin.generation_id, admin.member_id.as_str()), (-1, ""));
    }
}
