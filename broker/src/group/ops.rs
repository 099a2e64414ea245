//! Request handlers of [`GroupCoordinator`]: validate a decoded request against the
//! group, apply it through `rebalance.rs`, build the response for the caller's API
//! version. Kafka's checks are copied in Kafka's order (`GroupMetadataManager`
//! `classicGroupJoin*`, `classicGroupSync`, `classicGroupHeartbeat`, `classicGroupLeave`,
//! `OffsetMetadataManager.commitOffset/fetchOffsets`, `describeGroups`, `listGroups`,
//! `deleteGroups`). Error codes are chosen here and nowhere else.

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafki_net::kafka_protocol::messages::describe_groups_response::{
    DescribedGroup, DescribedGroupMember,
};
use kafki_net::kafka_protocol::messages::leave_group_response::MemberResponse;
use kafki_net::kafka_protocol::messages::list_groups_response::ListedGroup;
use kafki_net::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafki_net::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafki_net::kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};

use super::rebalance::{self, join_error, str_bytes, sync_error, Context};
use super::records::{self, GroupValue, OffsetValue, RecordKey, RecordValue};
use super::state::{CommittedOffset, Group, GroupState, Member, Parked};
use super::{wire, CompletedResponse, GroupCoordinator, LoadStats, Outcome};

/// A JoinGroup after its shape was checked.
struct JoinArgs<'a> {
    api_version: i16,
    member_id: &'a str,
    instance_id: Option<&'a str>,
    client_id: &'a str,
    client_host: &'a str,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocol_type: &'a str,
    protocols: Vec<(String, Bytes)>,
}

/// The member check of a commit (transactional ones too).
pub(super) fn check_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    validate_member(group, member_id, instance_id)
}

fn validate_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    match instance_id {
        Some(instance_id) => match group.static_members.get(instance_id) {
            None => Err(ResponseError::UnknownMemberId),
            Some(existing) if existing != member_id => Err(ResponseError::FencedInstanceId),
            Some(_) => Ok(()),
        },
        None if group.members.contains_key(member_id) => Ok(()),
        None => Err(ResponseError::UnknownMemberId),
    }
}

fn is_protocol_inconsistent(requested: Option<&str>, actual: Option<&str>) -> bool {
    matches!((requested, actual), (Some(requested), Some(actual)) if requested != actual)
}

/// Kafka counts `offset.metadata.max.bytes` in Java string length (UTF-16 units).
fn java_length(text: &str) -> usize {
    text.encode_utf16().count()
}

impl GroupCoordinator {
    fn context(
        &mut self,
        now_ms: u64,
    ) -> (Context<'_>, &mut std::collections::BTreeMap<String, Group>) {
        (
            Context {
                config: &self.config,
                effects: &mut self.effects,
                now_ms,
            },
            &mut self.groups,
        )
    }

    fn identifier_too_long(&self, value: &str) -> bool {
        value.len() > self.config.max_identifier_bytes
    }

    // ------------------------------------------------------------ JoinGroup

    /// JoinGroup: `Ready` with an error or an immediate answer, or `Pending` until the
    /// join phase completes (answer through `take_completed`).
    pub fn join(
        &mut self,
        now_ms: u64,
        api_version: i16,
        request: &JoinGroupRequest,
        client_id: &str,
        client_host: &str,
    ) -> Outcome<JoinGroupResponse> {
        let group_id: &str = &request.group_id.0;
        let member_id: &str = &request.member_id;
        let error = |code| Outcome::Ready(join_error(api_version, member_id, code));
        if group_id.is_empty() || self.identifier_too_long(group_id) {
            return error(ResponseError::InvalidGroupId);
        }
        if request.session_timeout_ms < self.config.min_session_timeout_ms
            || request.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return error(ResponseError::InvalidSessionTimeout);
        }
        if self.identifier_too_long(member_id) {
            return error(ResponseError::UnknownMemberId);
        }
        let instance_id = request.group_instance_id.as_deref();
        let metadata_bytes: usize = request.protocols.iter().map(|p| p.metadata.len()).sum();
        if request.protocols.len() > self.config.max_protocols_per_member
            || metadata_bytes > self.config.max_member_metadata_bytes
            || self.identifier_too_long(client_id)
            || self.identifier_too_long(client_host)
            || self.identifier_too_long(&request.protocol_type)
            || instance_id.is_some_and(|id| id.is_empty() || self.identifier_too_long(id))
            || request
                .protocols
                .iter()
                .any(|p| self.identifier_too_long(&p.name))
        {
            return error(ResponseError::InvalidRequest);
        }
        let rebalance_timeout_ms = if api_version == 0 || request.rebalance_timeout_ms <= 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        };
        let args = JoinArgs {
            api_version,
            member_id,
            instance_id,
            client_id,
            client_host,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type: &request.protocol_type,
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        };
        let is_unknown = member_id.is_empty();
        if !self.groups.contains_key(group_id) {
            if !is_unknown {
                return error(ResponseError::UnknownMemberId);
            }
            if !self.has_room_for_group() {
                return error(ResponseError::CoordinatorNotAvailable);
            }
            self.groups
                .insert(group_id.to_owned(), Group::new(group_id.to_owned(), now_ms));
        }
        let outcome = if is_unknown {
            self.join_new_member(now_ms, group_id, &args)
        } else {
            self.join_existing_member(now_ms, group_id, &args)
        };
        self.run_timers(group_id, now_ms);
        match outcome {
            Outcome::Pending(ticket) => match self.take_own_completion(ticket) {
                Some(CompletedResponse::Join(response)) => Outcome::Ready(response),
                Some(CompletedResponse::Sync(_)) | None => Outcome::Pending(ticket),
            },
            ready => ready,
        }
    }

    /// Kafka's `acceptJoiningMember`.
    fn accept_joining_member(&self, group: &Group, member_id: &str) -> bool {
        let max = self.config.max_members_per_group;
        match group.state {
            GroupState::Empty | GroupState::Dead => true,
            GroupState::PreparingRebalance => {
                group
                    .members
                    .get(member_id)
                    .is_some_and(|member| member.awaiting_join.is_some())
                    || group.awaiting_join_count() < max
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                group.members.contains_key(member_id) || group.members.len() < max
            }
        }
    }

    fn join_new_member(
        &mut self,
        now_ms: u64,
        group_id: &str,
        args: &JoinArgs,
    ) -> Outcome<JoinGroupResponse> {
        let error = |code| Outcome::Ready(join_error(args.api_version, args.member_id, code));
        let Some(group) = self.groups.get(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if !self.accept_joining_member(group, "")
            || group.pending_members.len() >= self.config.max_members_per_group
        {
            return error(ResponseError::GroupMaxSizeReached);
        }
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports_protocols(args.protocol_type, &args.protocols) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        let prefix = args.instance_id.unwrap_or(args.client_id).to_owned();
        let new_member_id = self.generate_member_id(&prefix);
        let requires_known_member_id = args.api_version >= 4 && args.instance_id.is_none();
        let ticket = self.issue_ticket();
        let (mut context, groups) = self.context(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if requires_known_member_id {
            let deadline = now_ms.saturating_add(args.session_timeout_ms.max(0) as u64);
            group
                .pending_members
                .insert(new_member_id.clone(), deadline);
            return Outcome::Ready(rebalance::normalize_join(
                args.api_version,
                JoinGroupResponse::default()
                    .with_error_code(ResponseError::MemberIdRequired.code())
                    .with_member_id(str_bytes(&new_member_id)),
            ));
        }
        if let Some(instance_id) = args.instance_id {
            // A static member restarting with a new member id replaces the old one
            // (simplified: Kafka keeps the assignment when nothing changed; we rebalance).
            if let Some(old_member_id) = group.static_members.get(instance_id).cloned() {
                rebalance::evict_member(
                    &mut context,
                    group,
                    &old_member_id,
                    ResponseError::FencedInstanceId,
                );
            }
        }
        self.add_member_then_rebalance(now_ms, group_id, new_member_id, args, ticket)
    }

    /// Kafka's `addMemberThenRebalanceOrCompleteJoin`.
    fn add_member_then_rebalance(
        &mut self,
        now_ms: u64,
        group_id: &str,
        member_id: String,
        args: &JoinArgs,
        ticket: super::Ticket,
    ) -> Outcome<JoinGroupResponse> {
        let new_member_join_timeout_ms = self.config.new_member_join_timeout_ms;
        let (mut context, groups) = self.context(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return Outcome::Ready(join_error(
                args.api_version,
                args.member_id,
                ResponseError::UnknownMemberId,
            ));
        };
        if group.state == GroupState::PreparingRebalance
            && group.previous_state == GroupState::Empty
        {
            group.new_member_added = true;
        }
        group.add_member(Member {
            id: member_id,
            instance_id: args.instance_id.map(str::to_owned),
            client_id: args.client_id.to_owned(),
            client_host: args.client_host.to_owned(),
            rebalance_timeout_ms: args.rebalance_timeout_ms,
            session_timeout_ms: args.session_timeout_ms,
            protocol_type: args.protocol_type.to_owned(),
            protocols: args.protocols.clone(),
            assignment: Bytes::new(),
            awaiting_join: Some(Parked {
                ticket,
                api_version: args.api_version,
            }),
            awaiting_sync: None,
            is_new: true,
            heartbeat_deadline_ms: now_ms.saturating_add(new_member_join_timeout_ms),
        });
        rebalance::maybe_prepare_rebalance_or_complete_join(&mut context, group);
        Outcome::Pending(ticket)
    }

    fn join_existing_member(
        &mut self,
        now_ms: u64,
        group_id: &str,
        args: &JoinArgs,
    ) -> Outcome<JoinGroupResponse> {
        let error = |code| Outcome::Ready(join_error(args.api_version, args.member_id, code));
        let Some(group) = self.groups.get(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if !self.accept_joining_member(group, args.member_id) {
            // Kafka removes a member that cannot stay when the group is over capacity.
            let (mut context, groups) = self.context(now_ms);
            if let Some(group) = groups.get_mut(group_id) {
                rebalance::remove_member_and_update(&mut context, group, args.member_id);
            }
            return error(ResponseError::GroupMaxSizeReached);
        }
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports_protocols(args.protocol_type, &args.protocols) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        if group.pending_members.contains_key(args.member_id) {
            let ticket = self.issue_ticket();
            let member_id = args.member_id.to_owned();
            return self.add_member_then_rebalance(now_ms, group_id, member_id, args, ticket);
        }
        if let Err(code) = validate_member(group, args.member_id, args.instance_id) {
            return error(code);
        }
        let Some(member) = group.members.get(args.member_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        let same_metadata = member.matches(&args.protocols);
        match group.state {
            GroupState::PreparingRebalance => {
                self.update_member_then_rebalance(now_ms, group_id, args)
            }
            GroupState::CompletingRebalance if same_metadata => {
                // The member missed its JoinGroup answer: send it again.
                Outcome::Ready(rebalance::join_success(
                    group,
                    args.member_id,
                    args.api_version,
                ))
            }
            GroupState::Stable if same_metadata && !group.is_leader(args.member_id) => {
                Outcome::Ready(rebalance::join_success(
                    group,
                    args.member_id,
                    args.api_version,
                ))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_then_rebalance(now_ms, group_id, args)
            }
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
        }
    }

    /// Kafka's `updateMemberThenRebalanceOrCompleteJoin`. A JoinGroup already parked
    /// for this member is answered REBALANCE_IN_PROGRESS (Kafka drops it silently).
    fn update_member_then_rebalance(
        &mut self,
        now_ms: u64,
        group_id: &str,
        args: &JoinArgs,
    ) -> Outcome<JoinGroupResponse> {
        let ticket = self.issue_ticket();
        let (mut context, groups) = self.context(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return Outcome::Ready(join_error(
                args.api_version,
                args.member_id,
                ResponseError::UnknownMemberId,
            ));
        };
        let Some(member) = group.members.get_mut(args.member_id) else {
            return Outcome::Ready(join_error(
                args.api_version,
                args.member_id,
                ResponseError::UnknownMemberId,
            ));
        };
        member.protocols = args.protocols.clone();
        member.rebalance_timeout_ms = args.rebalance_timeout_ms;
        member.session_timeout_ms = args.session_timeout_ms;
        let previous = member.awaiting_join.replace(Parked {
            ticket,
            api_version: args.api_version,
        });
        if let Some(previous) = previous {
            rebalance::complete_join(
                context.effects,
                previous,
                join_error(
                    previous.api_version,
                    args.member_id,
                    ResponseError::RebalanceInProgress,
                ),
            );
        }
        rebalance::maybe_prepare_rebalance_or_complete_join(&mut context, group);
        Outcome::Pending(ticket)
    }

    // ------------------------------------------------------------ SyncGroup

    /// SyncGroup: the leader's assignment answers every parked SyncGroup; followers
    /// that come first wait (`Pending`).
    pub fn sync(
        &mut self,
        now_ms: u64,
        api_version: i16,
        request: &SyncGroupRequest,
    ) -> Outcome<SyncGroupResponse> {
        let group_id: &str = &request.group_id.0;
        let member_id: &str = &request.member_id;
        let error = |code| Outcome::Ready(sync_error(code));
        let Some(group) = self.groups.get(group_id) else {
            return error(ResponseError::UnknownMemberId);
        };
        if group.state == GroupState::Dead {
            return error(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(code) = validate_member(group, member_id, request.group_instance_id.as_deref()) {
            return error(code);
        }
        if request.generation_id != group.generation {
            return error(ResponseError::IllegalGeneration);
        }
        if is_protocol_inconsistent(
            request.protocol_type.as_deref(),
            group.protocol_type.as_deref(),
        ) || is_protocol_inconsistent(
            request.protocol_name.as_deref(),
            group.protocol_name.as_deref(),
        ) {
            return error(ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::PreparingRebalance => error(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let ticketless = SyncGroupResponse::default()
                    .with_protocol_type(group.protocol_type.as_deref().map(str_bytes))
                    .with_protocol_name(group.protocol_name.as_deref().map(str_bytes))
                    .with_assignment(
                        group
                            .members
                            .get(member_id)
                            .map(|m| m.assignment.clone())
                            .unwrap_or_default(),
                    );
                if let Some(group) = self.groups.get_mut(group_id) {
                    group.pending_sync.remove(member_id);
                    if group.pending_sync.is_empty() {
                        group.sync_timer = None;
                    }
                }
                Outcome::Ready(ticketless)
            }
            GroupState::CompletingRebalance => {
                let ticket = self.issue_ticket();
                self.sync_completing(now_ms, api_version, group_id, request, ticket);
                match self.take_own_completion(ticket) {
                    Some(CompletedResponse::Sync(response)) => Outcome::Ready(response),
                    Some(CompletedResponse::Join(_)) | None => Outcome::Pending(ticket),
                }
            }
            GroupState::Empty | GroupState::Dead => error(ResponseError::UnknownMemberId),
        }
    }

    fn sync_completing(
        &mut self,
        now_ms: u64,
        api_version: i16,
        group_id: &str,
        request: &SyncGroupRequest,
        ticket: super::Ticket,
    ) {
        let member_id: &str = &request.member_id;
        let (mut context, groups) = self.context(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return;
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return;
        };
        let previous = member.awaiting_sync.replace(Parked {
            ticket,
            api_version,
        });
        if let Some(previous) = previous {
            rebalance::complete_sync(
                context.effects,
                previous,
                sync_error(ResponseError::RebalanceInProgress),
            );
        }
        group.pending_sync.remove(member_id);
        if !group.is_leader(member_id) {
            return;
        }
        let assignments: std::collections::BTreeMap<&str, &Bytes> = request
            .assignments
            .iter()
            .map(|assignment| (&*assignment.member_id, &assignment.assignment))
            .collect();
        for member in group.members.values_mut() {
            member.assignment = assignments
                .get(member.id.as_str())
                .map(|bytes| (*bytes).clone())
                .unwrap_or_default();
        }
        // Kafka appends the record and then moves to Stable; our records are applied in
        // order by the runtime, so the transition happens now.
        let record =
            rebalance::group_metadata_record(group, |id| group_member_assignment(group, id));
        context.effects.records.push(record);
        rebalance::propagate_assignment(&mut context, group, None);
        group.transition(GroupState::Stable, now_ms);
        if group.pending_sync.is_empty() {
            group.sync_timer = None;
        }
    }

    // ------------------------------------------------------------ Heartbeat

    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        _api_version: i16,
        request: &HeartbeatRequest,
    ) -> HeartbeatResponse {
        let code = self.heartbeat_error(now_ms, request);
        HeartbeatResponse::default().with_error_code(wire(code.err()))
    }

    fn heartbeat_error(
        &mut self,
        now_ms: u64,
        request: &HeartbeatRequest,
    ) -> Result<(), ResponseError> {
        let member_id: &str = &request.member_id;
        let Some(group) = self.groups.get_mut(&*request.group_id.0) else {
            return Err(ResponseError::UnknownMemberId);
        };
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        validate_member(group, member_id, request.group_instance_id.as_deref())?;
        if request.generation_id != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        let state = group.state;
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        match state {
            GroupState::Empty | GroupState::Dead => Err(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                member.heartbeat_deadline_ms =
                    now_ms.saturating_add(member.session_timeout_ms.max(0) as u64);
                Err(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                member.heartbeat_deadline_ms =
                    now_ms.saturating_add(member.session_timeout_ms.max(0) as u64);
                Ok(())
            }
        }
    }

    // ------------------------------------------------------------ LeaveGroup

    /// LeaveGroup: v0–v2 name one member (errors at top level), v3+ a batch.
    pub fn leave(
        &mut self,
        now_ms: u64,
        api_version: i16,
        request: &LeaveGroupRequest,
    ) -> LeaveGroupResponse {
        let identities: Vec<(String, Option<String>)> = if api_version < 3 {
            vec![(request.member_id.to_string(), None)]
        } else {
            request
                .members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        };
        let (top_error, results) = self.leave_members(now_ms, &request.group_id.0, &identities);
        if api_version < 3 {
            let error = top_error.or_else(|| results.iter().find_map(|(_, _, e)| *e));
            return LeaveGroupResponse::default().with_error_code(wire(error));
        }
        LeaveGroupResponse::default()
            .with_error_code(wire(top_error))
            .with_members(
                results
                    .into_iter()
                    .map(|(member_id, instance_id, error)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(&member_id))
                            .with_group_instance_id(instance_id.as_deref().map(str_bytes))
                            .with_error_code(wire(error))
                    })
                    .collect(),
            )
    }

    #[allow(clippy::type_complexity)]
    fn leave_members(
        &mut self,
        now_ms: u64,
        group_id: &str,
        identities: &[(String, Option<String>)],
    ) -> (
        Option<ResponseError>,
        Vec<(String, Option<String>, Option<ResponseError>)>,
    ) {
        let (mut context, groups) = self.context(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return (Some(ResponseError::UnknownMemberId), Vec::new());
        };
        if group.state == GroupState::Dead {
            return (Some(ResponseError::CoordinatorNotAvailable), Vec::new());
        }
        let mut results = Vec::with_capacity(identities.len());
        let mut removed_any = false;
        for (member_id, instance_id) in identities {
            let outcome = if member_id.is_empty() {
                // Administrative removal by group instance id.
                match instance_id
                    .as_ref()
                    .and_then(|id| group.static_members.get(id))
                    .cloned()
                {
                    Some(static_member_id) => {
                        rebalance::evict_member(
                            &mut context,
                            group,
                            &static_member_id,
                            ResponseError::UnknownMemberId,
                        );
                        None
                    }
                    None => Some(ResponseError::UnknownMemberId),
                }
            } else if group.pending_members.contains_key(member_id) {
                group.pending_members.remove(member_id);
                None
            } else {
                match validate_member(group, member_id, instance_id.as_deref()) {
                    Ok(()) => {
                        rebalance::evict_member(
                            &mut context,
                            group,
                            member_id,
                            ResponseError::UnknownMemberId,
                        );
                        None
                    }
                    Err(code) => Some(code),
                }
            };
            removed_any |= outcome.is_none();
            results.push((member_id.clone(), instance_id.clone(), outcome));
        }
        if removed_any {
            match group.state {
                GroupState::Stable | GroupState::CompletingRebalance => {
                    rebalance::maybe_prepare_rebalance_or_complete_join(&mut context, group);
                }
                GroupState::PreparingRebalance => {
                    rebalance::maybe_complete_join_phase(&mut context, group)
                }
                GroupState::Empty | GroupState::Dead => {}
            }
        }
        (None, results)
    }

    // ------------------------------------------------------------ OffsetCommit

    /// OffsetCommit (v2+): member/generation checked as Kafka's classic groups do;
    /// per-partition errors; every accepted offset becomes a record.
    pub fn commit_offsets(
        &mut self,
        now_ms: u64,
        api_version: i16,
        request: &OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let group_id: &str = &request.group_id.0;
        let validation = self.validate_commit(now_ms, api_version, request);
        let metadata_max = self.config.offset_metadata_max_bytes;
        let identifier_max = self.config.max_identifier_bytes;
        let offsets_max = self.config.max_offsets_per_group;
        let mut topics = Vec::with_capacity(request.topics.len().min(1024));
        let group = self.groups.get_mut(group_id);
        let mut group = match (validation, group) {
            (Ok(()), Some(group)) => Some(group),
            _ => None,
        };
        let mut records_out = Vec::new();
        let mut pending_out = Vec::new();
        for topic in &request.topics {
            let topic_name: &str = &topic.name.0;
            let mut partitions = Vec::with_capacity(topic.partitions.len().min(1024));
            for partition in &topic.partitions {
                let code = match (&validation, group.as_deref_mut()) {
                    (Err(code), _) => Some(*code),
                    (Ok(()), None) => Some(ResponseError::UnknownMemberId),
                    (Ok(()), Some(group)) => {
                        let metadata = partition.committed_metadata.as_deref().unwrap_or("");
                        let known = group
                            .offsets
                            .get(topic_name)
                            .is_some_and(|p| p.contains_key(&partition.partition_index));
                        if java_length(metadata) > metadata_max {
                            Some(ResponseError::OffsetMetadataTooLarge)
                        } else if topic_name.is_empty()
                            || topic_name.len() > identifier_max
                            || metadata.len() > i16::MAX as usize
                        {
                            Some(ResponseError::InvalidTopicException)
                        } else if !known && group.offset_count() >= offsets_max {
                            Some(ResponseError::InvalidCommitOffsetSize)
                        } else {
                            let committed = CommittedOffset {
                                offset: partition.committed_offset,
                                leader_epoch: partition.committed_leader_epoch,
                                metadata: metadata.to_owned(),
                                commit_timestamp_ms: now_ms as i64,
                                stored_at: -1,
                            };
                            records_out.push(offset_record(
                                group_id,
                                topic_name,
                                partition.partition_index,
                                &committed,
                            ));
                            // Visible once stored (`apply_commits`).
                            pending_out.push(super::PendingCommit {
                                group: group_id.to_owned(),
                                topic: topic_name.to_owned(),
                                partition: partition.partition_index,
                                committed,
                            });
                            None
                        }
                    }
                };
                partitions.push(
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(wire(code)),
                );
            }
            topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_topic_id(topic.topic_id)
                    .with_partitions(partitions),
            );
        }
        self.effects.records.extend(records_out);
        self.effects.commits.extend(pending_out);
        OffsetCommitResponse::default().with_topics(topics)
    }

    /// Kafka's `OffsetMetadataManager.validateOffsetCommit` + `ClassicGroup.validateOffsetCommit`.
    fn validate_commit(
        &mut self,
        now_ms: u64,
        api_version: i16,
        request: &OffsetCommitRequest,
    ) -> Result<(), ResponseError> {
        let group_id: &str = &request.group_id.0;
        let generation = request.generation_id_or_member_epoch;
        let member_id: &str = &request.member_id;
        let instance_id = request.group_instance_id.as_deref();
        if group_id.is_empty() || self.identifier_too_long(group_id) {
            return Err(ResponseError::InvalidGroupId);
        }
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                return Err(if api_version >= 9 {
                    ResponseError::GroupIdNotFound
                } else {
                    ResponseError::IllegalGeneration
                });
            }
            // A "simple" group: offsets without group management.
            if !self.has_room_for_group() {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            self.groups
                .insert(group_id.to_owned(), Group::new(group_id.to_owned(), now_ms));
        }
        let group = self
            .groups
            .get(group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            validate_member(group, member_id, instance_id)?;
            if generation != group.generation {
                return Err(ResponseError::IllegalGeneration);
            }
        } else if group.state != GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }

    // ------------------------------------------------------------ OffsetFetch

    /// OffsetFetch: v0–v7 one group (`topics: None` = all), v8+ several groups.
    /// Unknown groups and partitions answer offset -1 without error, as Kafka does.
    pub fn fetch_offsets(
        &self,
        api_version: i16,
        request: &OffsetFetchRequest,
    ) -> OffsetFetchResponse {
        if api_version < 8 {
            let wanted: Option<Vec<(String, Vec<i32>)>> = request.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let group_id: &str = &request.group_id.0;
            let topics = self
                .fetch_group(group_id, wanted)
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(index, offset)| {
                            let answered =
                                OffsetFetchResponsePartition::default().with_partition_index(index);
                            match self.unstable(request.require_stable, group_id, &name, index) {
                                Some(code) => answered
                                    .with_committed_offset(-1)
                                    .with_committed_leader_epoch(-1)
                                    .with_error_code(code),
                                None => answered
                                    .with_committed_offset(offset.offset)
                                    .with_committed_leader_epoch(offset.leader_epoch)
                                    .with_metadata(Some(str_bytes(&offset.metadata))),
                            }
                        })
                        .collect();
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str_bytes(&name)))
                        .with_partitions(partitions)
                })
                .collect();
            return OffsetFetchResponse::default().with_topics(topics);
        }
        let groups = request
            .groups
            .iter()
            .map(|group| {
                let wanted = group.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let group_id: &str = &group.group_id.0;
                let topics = self
                    .fetch_group(group_id, wanted)
                    .into_iter()
                    .map(|(name, partitions)| {
                        let partitions = partitions
                            .into_iter()
                            .map(|(index, offset)| {
                                let answered = OffsetFetchResponsePartitions::default()
                                    .with_partition_index(index);
                                match self.unstable(request.require_stable, group_id, &name, index)
                                {
                                    Some(code) => answered
                                        .with_committed_offset(-1)
                                        .with_committed_leader_epoch(-1)
                                        .with_error_code(code),
                                    None => answered
                                        .with_committed_offset(offset.offset)
                                        .with_committed_leader_epoch(offset.leader_epoch)
                                        .with_metadata(Some(str_bytes(&offset.metadata))),
                                }
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(&name)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        OffsetFetchResponse::default().with_groups(groups)
    }

    /// Kafka: with `require_stable`, a partition whose group has
    /// transactional offsets pending answers UNSTABLE_OFFSET_COMMIT (the
    /// client retries until the transaction ends).
    fn unstable(&self, require_stable: bool, group: &str, topic: &str, index: i32) -> Option<i16> {
        (require_stable && self.has_pending_txn_offset(group, topic, index))
            .then(|| ResponseError::UnstableOffsetCommit.code())
    }

    /// (topic, [(partition, offset)]) for the wanted partitions, or all when `None`.
    fn fetch_group(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Vec<(String, Vec<(i32, CommittedOffset)>)> {
        let group = self.groups.get(group_id);
        let missing = || CommittedOffset {
            offset: -1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: -1,
            stored_at: -1,
        };
        match wanted {
            Some(topics) => topics
                .into_iter()
                .map(|(topic, partitions)| {
                    let stored = group.and_then(|g| g.offsets.get(&topic));
                    let partitions = partitions
                        .into_iter()
                        .map(|index| {
                            (
                                index,
                                stored
                                    .and_then(|s| s.get(&index))
                                    .cloned()
                                    .unwrap_or_else(missing),
                            )
                        })
                        .collect();
                    (topic, partitions)
                })
                .collect(),
            None => group
                .map(|group| {
                    group
                        .offsets
                        .iter()
                        .map(|(topic, partitions)| {
                            (
                                topic.clone(),
                                partitions
                                    .iter()
                                    .map(|(index, offset)| (*index, offset.clone()))
                                    .collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    // ------------------------------------------------------------ Describe/List/Delete

    pub fn describe(
        &self,
        api_version: i16,
        request: &DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let groups = request
            .groups
            .iter()
            .map(|group_id| match self.groups.get(&*group_id.0) {
                Some(group) => describe_group(group),
                None => {
                    let mut described = DescribedGroup::default()
                        .with_group_id(group_id.clone())
                        .with_group_state(str_bytes(GroupState::Dead.as_str()));
                    if api_version >= 6 {
                        described = described
                            .with_error_code(ResponseError::GroupIdNotFound.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "Group {} not found.",
                                &*group_id.0
                            ))));
                    }
                    described
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    pub fn list(&self, api_version: i16, request: &ListGroupsRequest) -> ListGroupsResponse {
        let states: Vec<String> = if api_version >= 4 {
            request
                .states_filter
                .iter()
                .map(|s| s.to_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if api_version >= 5 {
            request
                .types_filter
                .iter()
                .map(|s| s.to_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        if !types.is_empty() && !types.iter().any(|t| t == "classic") {
            return ListGroupsResponse::default();
        }
        let groups = self
            .groups
            .values()
            .filter(|group| {
                states.is_empty() || states.contains(&group.state.as_str().to_lowercase())
            })
            .map(|group| {
                let mut listed = ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&group.id)))
                    .with_protocol_type(str_bytes(group.protocol_type.as_deref().unwrap_or("")));
                if api_version >= 4 {
                    listed = listed.with_group_state(str_bytes(group.state.as_str()));
                }
                if api_version >= 5 {
                    listed = listed.with_group_type(str_bytes("classic"));
                }
                listed
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    /// DeleteGroups: only Empty groups; their offsets and metadata become tombstones.
    pub fn delete(
        &mut self,
        _now_ms: u64,
        _api_version: i16,
        request: &DeleteGroupsRequest,
    ) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(request.groups_names.len().min(1024));
        for group_id in &request.groups_names {
            let code = match self.groups.get(&*group_id.0) {
                None => Some(ResponseError::GroupIdNotFound),
                Some(group) if group.state == GroupState::Dead => {
                    Some(ResponseError::GroupIdNotFound)
                }
                Some(group) if group.state != GroupState::Empty => {
                    Some(ResponseError::NonEmptyGroup)
                }
                Some(_) => {
                    if let Some(mut group) = self.groups.remove(&*group_id.0) {
                        group.transition(GroupState::Dead, _now_ms);
                        for (topic, partitions) in &group.offsets {
                            for partition in partitions.keys() {
                                self.effects.records.push(records::encode(
                                    &RecordKey::Offset {
                                        group: group.id.clone(),
                                        topic: topic.clone(),
                                        partition: *partition,
                                    },
                                    None,
                                ));
                            }
                        }
                        self.effects.records.push(records::encode(
                            &RecordKey::Group {
                                group: group.id.clone(),
                            },
                            None,
                        ));
                    }
                    None
                }
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(wire(code)),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    // ------------------------------------------------------------ Persistence

    /// Replays `__consumer_offsets` (key, value-or-tombstone) in log order: rebuilds
    /// committed offsets and groups, which come back Empty with their generation and
    /// protocol type (members rejoin, as after a coordinator move without members).
    /// `stored_at` is the offset of the batch that holds `records`.
    pub fn load<'a>(
        &mut self,
        stored_at: i64,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> LoadStats {
        let mut stats = LoadStats::default();
        for (key, value) in records {
            match records::decode(key, value) {
                Err(_) => stats.malformed += 1,
                Ok((
                    RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    },
                    value,
                )) => {
                    self.load_offset(group, topic, partition, value, stored_at);
                }
                Ok((RecordKey::Group { group }, value)) => self.load_group(group, value),
            }
        }
        // Groups that ended up with nothing are not kept.
        self.groups.retain(|_, group| {
            !(group.is_disposable() && group.protocol_type.is_none() && group.generation == 0)
        });
        stats.groups = self.groups.len();
        stats.offsets = self.groups.values().map(Group::offset_count).sum();
        stats
    }

    fn load_offset(
        &mut self,
        group_id: String,
        topic: String,
        partition: i32,
        value: Option<RecordValue>,
        stored_at: i64,
    ) {
        match value {
            Some(RecordValue::Offset(OffsetValue {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp_ms,
            })) => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(group_id, 0));
                group.offsets.entry(topic).or_default().insert(
                    partition,
                    CommittedOffset {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp_ms,
                        stored_at,
                    },
                );
            }
            Some(RecordValue::Group(_)) => {}
            None => {
                if let Some(group) = self.groups.get_mut(&group_id) {
                    if let Some(partitions) = group.offsets.get_mut(&topic) {
                        partitions.remove(&partition);
                        if partitions.is_empty() {
                            group.offsets.remove(&topic);
                        }
                    }
                }
            }
        }
    }

    fn load_group(&mut self, group_id: String, value: Option<RecordValue>) {
        match value {
            Some(RecordValue::Group(GroupValue {
                protocol_type,
                generation,
                current_state_timestamp_ms,
                ..
            })) => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(group_id, 0));
                group.generation = generation;
                group.protocol_type = (!protocol_type.is_empty()).then_some(protocol_type);
                group.state_timestamp_ms = current_state_timestamp_ms;
            }
            Some(RecordValue::Offset(_)) => {}
            None => {
                if let Some(group) = self.groups.get_mut(&group_id) {
                    if group.offsets.is_empty() {
                        self.groups.remove(&group_id);
                    } else {
                        group.generation = 0;
                        group.protocol_type = None;
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for group in self.groups.values() {
            group.check_invariants();
        }
    }
}

fn group_member_assignment(group: &Group, member_id: &str) -> Bytes {
    group
        .members
        .get(member_id)
        .map(|m| m.assignment.clone())
        .unwrap_or_default()
}

/// The `__consumer_offsets` record of a committed offset (plain or
/// transactional: the batch around it tells them apart).
pub(super) fn offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    offset: &CommittedOffset,
) -> records::OffsetsRecord {
    records::encode(
        &RecordKey::Offset {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
        },
        Some(&RecordValue::Offset(OffsetValue {
            offset: offset.offset,
            leader_epoch: offset.leader_epoch,
            metadata: offset.metadata.clone(),
            commit_timestamp_ms: offset.commit_timestamp_ms,
        })),
    )
}

/// Kafka's `ClassicGroup.describe`: metadata and assignments only when Stable.
fn describe_group(group: &Group) -> DescribedGroup {
    let stable = group.state == GroupState::Stable;
    let protocol = group.protocol_name.as_deref().unwrap_or("");
    let members = group
        .members
        .values()
        .map(|member| {
            let described = DescribedGroupMember::default()
                .with_member_id(str_bytes(&member.id))
                .with_group_instance_id(member.instance_id.as_deref().map(str_bytes))
                .with_client_id(str_bytes(&member.client_id))
                .with_client_host(str_bytes(&member.client_host));
            if stable {
                described
                    .with_member_metadata(member.metadata(protocol))
                    .with_member_assignment(member.assignment.clone())
            } else {
                described
            }
        })
        .collect();
    DescribedGroup::default()
        .with_group_id(GroupId(str_bytes(&group.id)))
        .with_group_state(str_bytes(group.state.as_str()))
        .with_protocol_type(str_bytes(group.protocol_type.as_deref().unwrap_or("")))
        .with_protocol_data(str_bytes(if stable { protocol } else { "" }))
        .with_members(members)
}
