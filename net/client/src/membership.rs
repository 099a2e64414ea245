//! A member of a consumer group on Kafka's classic protocol: JoinGroup (with the
//! `MEMBER_ID_REQUIRED` round trip of v4+), the leader's assignment with a
//! [`crate::assignor::Assignor`], SyncGroup, heartbeats on a timer, OffsetCommit as a member
//! of the current generation, and LeaveGroup.
//!
//! Shape: [`GroupMember`] is driven by its owner (a consume loop). A background task sends
//! a Heartbeat every `heartbeat_interval` while the member is stable; when the coordinator
//! answers that the group is rebalancing (or no longer knows the member) the task raises
//! [`GroupMember::rebalance_needed`], and the owner commits what it processed and calls
//! [`GroupMember::rejoin`] between two polls. Heartbeats never wait for the owner's poll, so
//! a slow batch does not cost the membership (up to the session timeout).
//!
//! Invariants: the heartbeat task only reads the generation the owner published after a
//! completed SyncGroup, and stops when the member leaves or is dropped; the member's lock is
//! never held across an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kafki_net::kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafki_net::kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafki_net::kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafki_net::kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    SyncGroupRequest,
};
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_net::kafka_protocol::ResponseError;
use tokio::time::Instant;

use crate::assignor::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, Assignor,
    MemberAssignment, Subscription, CONSUMER_PROTOCOL_TYPE,
};
use crate::client::{duration_ms_i32, Client};
use crate::error::{ClientError, ClientResult, KafkaCode};
use crate::group::{coordinator_moved, CommitIdentity, CommittedOffset, TopicPartition};

/// Settings of a group member (Kafka's consumer names in brackets).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// [`group.id`]
    pub group_id: String,
    /// Without a heartbeat for this long the coordinator drops the member
    /// [`session.timeout.ms`]; brokers accept 6 s to 5 min by default.
    pub session_timeout: Duration,
    /// How long the coordinator waits for every member to rejoin a rebalance
    /// [`max.poll.interval.ms`, sent as the rebalance timeout]. JoinGroup may be held this
    /// long, so it is sent with this (plus 5 s) as its request timeout.
    pub rebalance_timeout: Duration,
    /// [`heartbeat.interval.ms`]
    pub heartbeat_interval: Duration,
    /// Offered in order of preference [`partition.assignment.strategy`].
    pub assignors: Vec<Assignor>,
    /// A static member's id [`group.instance.id`].
    pub group_instance_id: Option<String>,
}

impl GroupConfig {
    /// Defaults for `group_id`: 10 s session, 3 s heartbeats, 60 s rebalance timeout,
    /// `range` then `roundrobin`.
    pub fn new(group_id: &str) -> Self {
        Self {
            group_id: group_id.to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            assignors: vec![Assignor::Range, Assignor::RoundRobin],
            group_instance_id: None,
        }
    }
}

/// The member's place in the group, as of the last completed join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation_id: i32,
    pub member_id: String,
    pub leader_id: String,
    /// The assignor the group chose.
    pub protocol: String,
}

impl Generation {
    pub fn is_leader(&self) -> bool {
        !self.member_id.is_empty() && self.member_id == self.leader_id
    }
}

/// What the member and its heartbeat task share.
struct Shared {
    state: Mutex<MemberState>,
    rebalance_needed: AtomicBool,
}

struct MemberState {
    /// `None` while it has to be looked up.
    coordinator: Option<i32>,
    /// Heartbeats run only while `Some`: between a completed SyncGroup and the next join.
    stable: Option<Generation>,
    /// Kept across rejoins; emptied when the coordinator no longer knows it.
    member_id: String,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, MemberState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A consumer-group member (see the module docs for how it is driven).
pub struct GroupMember {
    client: Client,
    config: GroupConfig,
    topics: Vec<String>,
    shared: Arc<Shared>,
    generation: Generation,
    assignment: MemberAssignment,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// What one JoinGroup + SyncGroup round ended with.
enum Round {
    Joined(Generation, MemberAssignment),
    /// Try again (after the backoff, unless `at_once`).
    Retry {
        at_once: bool,
    },
}

const JOIN_BACKOFF: Duration = Duration::from_millis(100);

impl GroupMember {
    /// Joins `config.group_id` subscribed to `topics` and waits for the first assignment.
    pub async fn join(client: Client, config: GroupConfig, topics: &[&str]) -> ClientResult<Self> {
        if config.assignors.is_empty() {
            return Err(ClientError::Invalid(
                "a group member needs an assignor".into(),
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(MemberState {
                coordinator: None,
                stable: None,
                member_id: String::new(),
            }),
            rebalance_needed: AtomicBool::new(false),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            config.clone(),
            shared.clone(),
        ));
        let mut member = Self {
            client,
            config,
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            shared,
            generation: Generation {
                generation_id: -1,
                member_id: String::new(),
                leader_id: String::new(),
                protocol: String::new(),
            },
            assignment: MemberAssignment::default(),
            heartbeat,
        };
        member.rejoin().await?;
        Ok(member)
    }

    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    /// The partitions this member owns in the current generation.
    pub fn assignment(&self) -> &MemberAssignment {
        &self.assignment
    }

    pub fn group_id(&self) -> &str {
        &self.config.group_id
    }

    /// Whether the coordinator asked for a rejoin (a rebalance started, or the member was
    /// dropped): commit what was processed, then [`GroupMember::rejoin`].
    pub fn rebalance_needed(&self) -> bool {
        self.shared.rebalance_needed.load(Ordering::Acquire)
    }

    /// Joins again and returns the new assignment. Gives up after twice the rebalance
    /// timeout of failed attempts.
    pub async fn rejoin(&mut self) -> ClientResult<&MemberAssignment> {
        self.shared.state().stable = None;
        self.shared.rebalance_needed.store(false, Ordering::Release);
        let deadline = Instant::now() + self.config.rebalance_timeout * 2;
        loop {
            match self.join_round().await {
                Ok(Round::Joined(generation, assignment)) => {
                    tracing::debug!(
                        group = %self.config.group_id,
                        generation = generation.generation_id,
                        member = %generation.member_id,
                        leader = generation.is_leader(),
                        assignment = %assignment.describe(),
                        "joined group"
                    );
                    self.shared.state().stable = Some(generation.clone());
                    self.generation = generation;
                    self.assignment = assignment;
                    return Ok(&self.assignment);
                }
                Ok(Round::Retry { at_once: true }) => {}
                Ok(Round::Retry { at_once: false }) => tokio::time::sleep(JOIN_BACKOFF).await,
                Err(error) if coordinator_moved(&error) && Instant::now() < deadline => {
                    tracing::debug!(group = %self.config.group_id, %error, "join failed; retrying");
                    self.shared.state().coordinator = None;
                    tokio::time::sleep(JOIN_BACKOFF).await;
                }
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Invalid(format!(
                    "could not join group {} within {:?}",
                    self.config.group_id,
                    self.config.rebalance_timeout * 2
                )));
            }
        }
    }

    async fn coordinator(&self) -> ClientResult<i32> {
        if let Some(coordinator) = self.shared.state().coordinator {
            return Ok(coordinator);
        }
        let coordinator = self.client.find_coordinator(&self.config.group_id).await?;
        self.shared.state().coordinator = Some(coordinator);
        Ok(coordinator)
    }

    /// One JoinGroup, and unless it must be repeated, the SyncGroup after it.
    async fn join_round(&self) -> ClientResult<Round> {
        let coordinator = self.coordinator().await?;
        let member_id = self.shared.state().member_id.clone();
        let join = self.send_join(coordinator, &member_id).await?;
        let join_context = || format!("joining group {}", self.config.group_id);
        if let Some(code) = KafkaCode::from_code(join.error_code) {
            return self.retry_or_fail(code, &join.member_id, join_context());
        }
        let generation = Generation {
            generation_id: join.generation_id,
            member_id: join.member_id.to_string(),
            leader_id: join.leader.to_string(),
            protocol: join
                .protocol_name
                .as_ref()
                .map(|name| name.to_string())
                .unwrap_or_default(),
        };
        self.shared.state().member_id = generation.member_id.clone();
        let assignments = if generation.is_leader() {
            self.lead(&generation, &join).await?
        } else {
            Vec::new()
        };
        let sync = self
            .client
            .connection(coordinator)
            .await?
            .send_built_within(
                |version| self.sync_request(version, &generation, assignments.clone()),
                self.config.rebalance_timeout + Duration::from_secs(5),
            )
            .await?;
        if let Some(code) = KafkaCode::from_code(sync.error_code) {
            let sync_context = format!("syncing group {}", self.config.group_id);
            return self.retry_or_fail(code, &join.member_id, sync_context);
        }
        let assignment =
            decode_assignment(&sync.assignment).map_err(|reason| ClientError::Protocol {
                address: format!("coordinator {coordinator}"),
                reason: format!("assignment of group {}: {reason}", self.config.group_id),
            })?;
        Ok(Round::Joined(generation, assignment))
    }

    /// What a JoinGroup or SyncGroup error means for the next attempt.
    fn retry_or_fail(
        &self,
        code: KafkaCode,
        answered_member_id: &StrBytes,
        context: String,
    ) -> ClientResult<Round> {
        let mut state = self.shared.state();
        if code.is(ResponseError::MemberIdRequired) {
            // v4+: the coordinator hands out the id first; join again with it at once.
            state.member_id = answered_member_id.to_string();
            return Ok(Round::Retry { at_once: true });
        }
        if code.is(ResponseError::UnknownMemberId) {
            state.member_id.clear();
            return Ok(Round::Retry { at_once: true });
        }
        if code.is(ResponseError::RebalanceInProgress) || code.is(ResponseError::IllegalGeneration)
        {
            return Ok(Round::Retry { at_once: true });
        }
        if code.is(ResponseError::NotCoordinator) || code.is(ResponseError::CoordinatorNotAvailable)
        {
            state.coordinator = None;
            return Ok(Round::Retry { at_once: false });
        }
        if code.is(ResponseError::CoordinatorLoadInProgress) {
            return Ok(Round::Retry { at_once: false });
        }
        Err(ClientError::kafka(code, context))
    }

    async fn send_join(
        &self,
        coordinator: i32,
        member_id: &str,
    ) -> ClientResult<JoinGroupResponse> {
        let subscription = Subscription {
            topics: self.topics.clone(),
            user_data: None,
        };
        let metadata =
            encode_subscription(&subscription).map_err(|reason| ClientError::Encode {
                api_key: kafki_net::kafka_protocol::messages::ApiKey::JoinGroup,
                reason,
            })?;
        let protocols: Vec<JoinGroupRequestProtocol> = self
            .config
            .assignors
            .iter()
            .map(|assignor| {
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(assignor.name()))
                    .with_metadata(metadata.clone())
            })
            .collect();
        let config = &self.config;
        let build = |version: i16| {
            let mut request = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(config.group_id.clone())))
                .with_session_timeout_ms(duration_ms_i32(config.session_timeout))
                .with_member_id(StrBytes::from_string(member_id.to_string()))
                .with_protocol_type(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE))
                .with_protocols(protocols.clone());
            // v0 has no rebalance timeout (the session timeout serves as one).
            if version >= 1 {
                request =
                    request.with_rebalance_timeout_ms(duration_ms_i32(config.rebalance_timeout));
            }
            if version >= 5 {
                request = request.with_group_instance_id(
                    config
                        .group_instance_id
                        .as_ref()
                        .map(|id| StrBytes::from_string(id.clone())),
                );
            }
            request
        };
        self.client
            .connection(coordinator)
            .await?
            .send_built_within(build, config.rebalance_timeout + Duration::from_secs(5))
            .await
    }

    /// The leader's part: every member's assignment, by the assignor the group chose.
    async fn lead(
        &self,
        generation: &Generation,
        join: &JoinGroupResponse,
    ) -> ClientResult<Vec<(String, Bytes)>> {
        let assignor = Assignor::parse(&generation.protocol).ok_or_else(|| {
            ClientError::Invalid(format!(
                "group {} chose assignor {:?}, which this client does not have",
                self.config.group_id, generation.protocol
            ))
        })?;
        let mut members: BTreeMap<String, Subscription> = BTreeMap::new();
        for member in &join.members {
            let subscription =
                decode_subscription(&member.metadata).map_err(|reason| ClientError::Protocol {
                    address: format!("group {}", self.config.group_id),
                    reason: format!("metadata of member {}: {reason}", member.member_id.as_str()),
                })?;
            members.insert(member.member_id.to_string(), subscription);
        }
        let mut topics: Vec<&str> = members
            .values()
            .flat_map(|subscription| subscription.topics.iter().map(String::as_str))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let metadata = self.client.refresh_metadata(&topics).await?;
        let partition_counts: BTreeMap<String, i32> = topics
            .iter()
            .filter_map(|&topic| {
                let count = metadata.topic(topic)?.partitions.len();
                Some((topic.to_string(), i32::try_from(count).ok()?))
            })
            .collect();
        let assigned = assignor.assign(&members, &partition_counts);
        tracing::debug!(group = %self.config.group_id, assignor = assignor.name(), ?assigned, "assigned partitions as leader");
        assigned
            .iter()
            .map(|(member, assignment)| {
                encode_assignment(assignment)
                    .map(|bytes| (member.clone(), bytes))
                    .map_err(|reason| ClientError::Encode {
                        api_key: kafki_net::kafka_protocol::messages::ApiKey::SyncGroup,
                        reason,
                    })
            })
            .collect()
    }

    fn sync_request(
        &self,
        version: i16,
        generation: &Generation,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncGroupRequest {
        let mut request = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group_id.clone())))
            .with_generation_id(generation.generation_id)
            .with_member_id(StrBytes::from_string(generation.member_id.clone()))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(member, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(member))
                            .with_assignment(assignment)
                    })
                    .collect(),
            );
        if version >= 3 {
            request = request.with_group_instance_id(self.instance_id());
        }
        if version >= 5 {
            request = request
                .with_protocol_type(Some(StrBytes::from_static_str(CONSUMER_PROTOCOL_TYPE)))
                .with_protocol_name(Some(StrBytes::from_string(generation.protocol.clone())));
        }
        request
    }

    fn instance_id(&self) -> Option<StrBytes> {
        self.config
            .group_instance_id
            .as_ref()
            .map(|id| StrBytes::from_string(id.clone()))
    }

    fn identity(&self) -> CommitIdentity {
        CommitIdentity {
            generation_id: self.generation.generation_id,
            member_id: self.generation.member_id.clone(),
            group_instance_id: self.config.group_instance_id.clone(),
        }
    }

    /// Commits `offsets` (next record to read) as a member of the current generation.
    /// A commit refused because the group moved on raises [`GroupMember::rebalance_needed`].
    pub async fn commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> ClientResult<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let coordinator = self.coordinator().await?;
        let outcome = self
            .client
            .commit_offsets_at(
                coordinator,
                &self.config.group_id,
                &self.identity(),
                offsets,
            )
            .await;
        if let Err(error) = &outcome {
            let rebalanced = [
                ResponseError::RebalanceInProgress,
                ResponseError::IllegalGeneration,
                ResponseError::UnknownMemberId,
            ]
            .iter()
            .any(|expected| error.kafka_code().is_some_and(|code| code.is(*expected)));
            if rebalanced {
                self.shared.rebalance_needed.store(true, Ordering::Release);
            }
            if coordinator_moved(error) {
                self.shared.state().coordinator = None;
            }
        }
        outcome
    }

    /// The group's committed offsets for this member's assignment.
    pub async fn committed(&self) -> ClientResult<BTreeMap<TopicPartition, CommittedOffset>> {
        if self.assignment.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.client
            .committed_offsets(&self.config.group_id, Some(&self.assignment.partitions))
            .await
    }

    /// Leaves the group (its partitions go to the other members at once instead of after
    /// the session timeout) and stops the heartbeats.
    pub async fn leave(self) -> ClientResult<()> {
        self.heartbeat.abort();
        let coordinator = self.coordinator().await?;
        let member_id = StrBytes::from_string(self.generation.member_id.clone());
        let group_id = GroupId(StrBytes::from_string(self.config.group_id.clone()));
        let instance_id = self.instance_id();
        let response = self
            .client
            .send_built(coordinator, |version| {
                let request = LeaveGroupRequest::default().with_group_id(group_id.clone());
                // v3 leaves by member identities (batched); before it one member id.
                if version >= 3 {
                    request.with_members(vec![MemberIdentity::default()
                        .with_member_id(member_id.clone())
                        .with_group_instance_id(instance_id.clone())])
                } else {
                    request.with_member_id(member_id.clone())
                }
            })
            .await?;
        let context = || format!("leaving group {}", self.config.group_id);
        ClientError::check(response.error_code, None, context)?;
        for member in &response.members {
            ClientError::check(member.error_code, None, context)?;
        }
        Ok(())
    }
}

/// Sends a Heartbeat every interval while the member is stable; raises the rejoin flag on
/// the answers that call for one, and when no heartbeat got through for a session timeout.
async fn heartbeat_loop(client: Client, config: GroupConfig, shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = Instant::now();
    loop {
        ticker.tick().await;
        let (coordinator, generation) = {
            let state = shared.state();
            (state.coordinator, state.stable.clone())
        };
        let (Some(coordinator), Some(generation)) = (coordinator, generation) else {
            last_answer = Instant::now();
            continue;
        };
        if shared.rebalance_needed.load(Ordering::Acquire) {
            continue;
        }
        let outcome = client
            .send_built(coordinator, |version| {
                let request = HeartbeatRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(config.group_id.clone())))
                    .with_generation_id(generation.generation_id)
                    .with_member_id(StrBytes::from_string(generation.member_id.clone()));
                if version >= 3 {
                    request.with_group_instance_id(
                        config
                            .group_instance_id
                            .as_ref()
                            .map(|id| StrBytes::from_string(id.clone())),
                    )
                } else {
                    request
                }
            })
            .await;
        let code = match outcome {
            Ok(response) => {
                last_answer = Instant::now();
                KafkaCode::from_code(response.error_code)
            }
            Err(error) => {
                tracing::debug!(group = %config.group_id, %error, "heartbeat failed");
                if last_answer.elapsed() > config.session_timeout {
                    // The coordinator has dropped us by now.
                    shared.rebalance_needed.store(true, Ordering::Release);
                }
                continue;
            }
        };
        let Some(code) = code else {
            continue;
        };
        tracing::debug!(group = %config.group_id, %code, "heartbeat asks for a rejoin");
        if code.is(ResponseError::NotCoordinator) || code.is(ResponseError::CoordinatorNotAvailable)
        {
            shared.state().coordinator = None;
        }
        if code.is(ResponseError::UnknownMemberId) {
            shared.state().member_id.clear();
        }
        shared.rebalance_needed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_kafkas_bounds() {
        let config = GroupConfig::new("g");
        // group.min.session.timeout.ms is 6 s on Kafka brokers.
        assert!(config.session_timeout >= Duration::from_secs(6));
        assert!(config.heartbeat_interval * 3 <= config.session_timeout);
        assert_eq!(
            config.assignors,
            vec![Assignor::Range, Assignor::RoundRobin]
        );
        let generation = Generation {
            generation_id: 1,
            member_id: "m".into(),
            leader_id: "m".into(),
            protocol: "range".into(),
        };
        assert!(generation.is_leader());
        assert!(!Generation {
            member_id: String::new(),
            leader_id: String::new(),
            ..generation
        }
        .is_leader());
    }
}
