//! The rebalance protocol of one classic group: entering PreparingRebalance,
//! completing the join phase, handing out assignments, and the timers (initial
//! delay, rebalance timeout, pending sync, sessions). Each function is the Rust
//! twin of the `GroupMetadataManager` method of the same name in Kafka 4.x
//! (`prepareRebalance`, `maybeCompleteJoinPhase`, `completeClassicGroupJoin`,
//! `expirePendingSync`, `removeMemberAndUpdateClassicGroup`, `propagateAssignment`...).
//!
//! Invariant kept: every parked request is answered exactly once, either here or when
//! it is superseded, so the runtime never holds a connection forever.

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafki_net::kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafki_net::kafka_protocol::protocol::StrBytes;

use super::records::{self, GroupValue, MemberValue, RecordKey, RecordValue};
use super::state::{Group, GroupState, JoinTimer, JoinTimerKind, Parked, SyncTimer};
use super::{CompletedResponse, Completion, Effects, GroupConfig};

/// What a rebalance step needs besides the group.
pub struct Context<'a> {
    pub config: &'a GroupConfig,
    pub effects: &'a mut Effects,
    pub now_ms: u64,
}

pub fn str_bytes(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn optional_str_bytes(value: Option<&str>) -> Option<StrBytes> {
    value.map(str_bytes)
}

/// A JoinGroup response carrying only an error (Kafka leaves generation at -1).
pub fn join_error(api_version: i16, member_id: &str, error: ResponseError) -> JoinGroupResponse {
    normalize_join(
        api_version,
        JoinGroupResponse::default()
            .with_error_code(error.code())
            .with_member_id(str_bytes(member_id)),
    )
}

/// Versions before 7 cannot carry a null protocol name (Kafka's `JoinGroupResponse` does
/// the same replacement).
pub fn normalize_join(api_version: i16, mut response: JoinGroupResponse) -> JoinGroupResponse {
    if api_version < 7 && response.protocol_name.is_none() {
        response.protocol_name = Some(StrBytes::default());
    }
    response
}

pub fn sync_error(error: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error.code())
}

/// The JoinGroup answer for the current generation; the leader also gets the members.
pub fn join_success(group: &Group, member_id: &str, api_version: i16) -> JoinGroupResponse {
    let protocol = group.protocol_name.as_deref().unwrap_or("");
    let members = if group.is_leader(member_id) {
        group
            .members
            .values()
            .map(|member| {
                JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(&member.id))
                    .with_group_instance_id(optional_str_bytes(member.instance_id.as_deref()))
                    .with_metadata(member.metadata(protocol))
            })
            .collect()
    } else {
        Vec::new()
    };
    normalize_join(
        api_version,
        JoinGroupResponse::default()
            .with_generation_id(group.generation)
            .with_protocol_type(optional_str_bytes(group.protocol_type.as_deref()))
            .with_protocol_name(optional_str_bytes(group.protocol_name.as_deref()))
            .with_leader(str_bytes(group.leader.as_deref().unwrap_or("")))
            .with_member_id(str_bytes(member_id))
            .with_members(members),
    )
}

pub fn complete_join(effects: &mut Effects, parked: Parked, response: JoinGroupResponse) {
    effects.completed.push(Completion {
        ticket: parked.ticket,
        response: CompletedResponse::Join(response),
    });
}

pub fn complete_sync(effects: &mut Effects, parked: Parked, response: SyncGroupResponse) {
    effects.completed.push(Completion {
        ticket: parked.ticket,
        response: CompletedResponse::Sync(response),
    });
}

/// The `__consumer_offsets` record describing the group now (Kafka's
/// `newGroupMetadataRecord`); `assignment` gives each member's assignment.
pub fn group_metadata_record(
    group: &Group,
    assignment: impl Fn(&str) -> Bytes,
) -> records::OffsetsRecord {
    let protocol = group.protocol_name.as_deref().unwrap_or("");
    let value = GroupValue {
        protocol_type: group.protocol_type.clone().unwrap_or_default(),
        generation: group.generation,
        protocol: group.protocol_name.clone(),
        leader: group.leader.clone(),
        current_state_timestamp_ms: group.state_timestamp_ms,
        members: group
            .members
            .values()
            .map(|member| MemberValue {
                member_id: member.id.clone(),
                group_instance_id: member.instance_id.clone(),
                client_id: member.client_id.clone(),
                client_host: member.client_host.clone(),
                rebalance_timeout_ms: member.rebalance_timeout_ms,
                session_timeout_ms: member.session_timeout_ms,
                subscription: member.metadata(protocol),
                assignment: assignment(&member.id),
            })
            .collect(),
    };
    records::encode(
        &RecordKey::Group {
            group: group.id.clone(),
        },
        Some(&RecordValue::Group(value)),
    )
}

fn reschedule_heartbeat(context: &Context, member: &mut super::state::Member) {
    member.heartbeat_deadline_ms = context
        .now_ms
        .saturating_add(member.session_timeout_ms.max(0) as u64);
}

/// Kafka's `maybePrepareRebalanceOrCompleteJoin`.
pub fn maybe_prepare_rebalance_or_complete_join(context: &mut Context, group: &mut Group) {
    if group.can_rebalance() {
        prepare_rebalance(context, group);
    } else {
        maybe_complete_join_phase(context, group);
    }
}

/// Kafka's `prepareRebalance`.
pub fn prepare_rebalance(context: &mut Context, group: &mut Group) {
    if group.state == GroupState::CompletingRebalance {
        reset_and_propagate_assignment_with_error(
            context,
            group,
            ResponseError::RebalanceInProgress,
        );
    }
    group.sync_timer = None;
    let is_initial = group.state == GroupState::Empty;
    if is_initial {
        let delay_ms = context.config.initial_rebalance_delay_ms;
        let remaining_ms = group.rebalance_timeout_ms().saturating_sub(delay_ms);
        group.new_member_added = false;
        group.join_timer = Some(JoinTimer {
            deadline_ms: context.now_ms.saturating_add(delay_ms),
            kind: JoinTimerKind::InitialDelay {
                delay_ms,
                remaining_ms,
            },
        });
    }
    group.transition(GroupState::PreparingRebalance, context.now_ms);
    if !is_initial {
        maybe_complete_join_else_schedule(context, group);
    }
}

/// Kafka's `maybeCompleteJoinElseSchedule`.
fn maybe_complete_join_else_schedule(context: &mut Context, group: &mut Group) {
    if group.state == GroupState::PreparingRebalance && group.has_all_members_joined() {
        complete_join_phase(context, group);
    } else {
        group.join_timer = Some(JoinTimer {
            deadline_ms: context.now_ms.saturating_add(group.rebalance_timeout_ms()),
            kind: JoinTimerKind::Rebalance,
        });
    }
}

/// Kafka's `maybeCompleteJoinPhase`: the join phase ends as soon as every member
/// rejoined, except during the initial delay of a group that was Empty.
pub fn maybe_complete_join_phase(context: &mut Context, group: &mut Group) {
    if group.state == GroupState::PreparingRebalance
        && group.previous_state != GroupState::Empty
        && group.has_all_members_joined()
    {
        complete_join_phase(context, group);
    }
}

/// Kafka's `completeClassicGroupJoin`.
pub fn complete_join_phase(context: &mut Context, group: &mut Group) {
    group.join_timer = None;
    // Dynamic members that did not rejoin in time leave the group.
    let not_rejoined: Vec<String> = group
        .members
        .values()
        .filter(|member| member.awaiting_join.is_none() && member.instance_id.is_none())
        .map(|member| member.id.clone())
        .collect();
    for member_id in not_rejoined {
        group.remove_member(&member_id);
    }
    if !group.members.is_empty() && !group.maybe_elect_new_joined_leader() {
        // Nobody rejoined: wait for sessions to expire the silent members.
        group.join_timer = Some(JoinTimer {
            deadline_ms: context.now_ms.saturating_add(group.rebalance_timeout_ms()),
            kind: JoinTimerKind::Rebalance,
        });
        return;
    }
    group.init_next_generation(context.now_ms);
    if group.state == GroupState::Empty {
        let record = group_metadata_record(group, |_| Bytes::new());
        context.effects.records.push(record);
        return;
    }
    let member_ids: Vec<String> = group.members.keys().cloned().collect();
    for member_id in member_ids {
        let parked = group
            .members
            .get(&member_id)
            .and_then(|member| member.awaiting_join);
        if let Some(parked) = parked {
            let response = join_success(group, &member_id, parked.api_version);
            complete_join(context.effects, parked, response);
        }
        if let Some(member) = group.members.get_mut(&member_id) {
            member.awaiting_join = None;
            member.is_new = false;
            reschedule_heartbeat(context, member);
        }
        group.pending_sync.insert(member_id);
    }
    group.sync_timer = Some(SyncTimer {
        deadline_ms: context.now_ms.saturating_add(group.rebalance_timeout_ms()),
        generation: group.generation,
    });
}

/// Kafka's `propagateAssignment`: answers every parked SyncGroup.
pub fn propagate_assignment(
    context: &mut Context,
    group: &mut Group,
    error: Option<ResponseError>,
) {
    let ok = error.is_none();
    let protocol_type = if ok {
        group.protocol_type.clone()
    } else {
        None
    };
    let protocol_name = if ok {
        group.protocol_name.clone()
    } else {
        None
    };
    for member in group.members.values_mut() {
        if let Some(parked) = member.awaiting_sync.take() {
            let response = SyncGroupResponse::default()
                .with_error_code(super::wire(error))
                .with_protocol_type(optional_str_bytes(protocol_type.as_deref()))
                .with_protocol_name(optional_str_bytes(protocol_name.as_deref()))
                .with_assignment(member.assignment.clone());
            complete_sync(context.effects, parked, response);
            reschedule_heartbeat(context, member);
        }
    }
}

/// Kafka's `resetAndPropagateAssignmentWithError`.
pub fn reset_and_propagate_assignment_with_error(
    context: &mut Context,
    group: &mut Group,
    error: ResponseError,
) {
    for member in group.members.values_mut() {
        member.assignment = Bytes::new();
    }
    propagate_assignment(context, group, Some(error));
}

/// Answers a member's parked requests with `error` and removes it (Kafka answers
/// UNKNOWN_MEMBER_ID so a live client rejoins).
pub fn evict_member(
    context: &mut Context,
    group: &mut Group,
    member_id: &str,
    error: ResponseError,
) {
    if let Some(member) = group.remove_member(member_id) {
        if let Some(parked) = member.awaiting_join {
            complete_join(
                context.effects,
                parked,
                join_error(parked.api_version, "", error),
            );
        }
        if let Some(parked) = member.awaiting_sync {
            complete_sync(context.effects, parked, sync_error(error));
        }
    }
}

/// Kafka's `removeMemberAndUpdateClassicGroup`.
pub fn remove_member_and_update(context: &mut Context, group: &mut Group, member_id: &str) {
    evict_member(context, group, member_id, ResponseError::UnknownMemberId);
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            maybe_prepare_rebalance_or_complete_join(context, group);
        }
        GroupState::PreparingRebalance if group.has_all_members_joined() => {
            complete_join_phase(context, group);
        }
        _ => {}
    }
}

/// Kafka's `expirePendingSync`.
fn expire_pending_sync(context: &mut Context, group: &mut Group, generation: i32) {
    if generation != group.generation {
        return;
    }
    if !matches!(
        group.state,
        GroupState::CompletingRebalance | GroupState::Stable
    ) || group.pending_sync.is_empty()
    {
        return;
    }
    let pending: Vec<String> = group.pending_sync.iter().cloned().collect();
    for member_id in pending {
        evict_member(context, group, &member_id, ResponseError::UnknownMemberId);
    }
    prepare_rebalance(context, group);
}

/// Kafka's `tryCompleteInitialRebalanceElseSchedule`.
fn initial_delay_elapsed(
    context: &mut Context,
    group: &mut Group,
    delay_ms: u64,
    remaining_ms: u64,
) {
    if group.new_member_added && remaining_ms != 0 {
        group.new_member_added = false;
        let new_delay_ms = context.config.initial_rebalance_delay_ms.min(remaining_ms);
        let new_remaining_ms = remaining_ms.saturating_sub(delay_ms);
        group.join_timer = Some(JoinTimer {
            deadline_ms: context.now_ms.saturating_add(new_delay_ms),
            kind: JoinTimerKind::InitialDelay {
                delay_ms: new_delay_ms,
                remaining_ms: new_remaining_ms,
            },
        });
    } else {
        complete_join_phase(context, group);
    }
}

/// The earliest deadline of the group's timers (None: nothing scheduled).
pub fn next_deadline(group: &Group) -> Option<u64> {
    let members = group
        .members
        .values()
        .filter(|member| !member.is_exempt_from_expiry())
        .map(|member| member.heartbeat_deadline_ms);
    let pending = group.pending_members.values().copied();
    let join = group.join_timer.map(|timer| timer.deadline_ms);
    let sync = group.sync_timer.map(|timer| timer.deadline_ms);
    members.chain(pending).chain(join).chain(sync).min()
}

/// Fires the group's due timers, a bounded number of rounds (a timer may schedule
/// another one that is already due when a timeout is zero).
pub fn run_due_timers(context: &mut Context, group: &mut Group) {
    const ROUNDS_MAX: usize = 8;
    for _ in 0..ROUNDS_MAX {
        let now_ms = context.now_ms;
        let mut fired = false;

        let expired_pending: Vec<String> = group
            .pending_members
            .iter()
            .filter(|(_, deadline)| **deadline <= now_ms)
            .map(|(member_id, _)| member_id.clone())
            .collect();
        if !expired_pending.is_empty() {
            fired = true;
            for member_id in expired_pending {
                group.pending_members.remove(&member_id);
            }
            maybe_complete_join_phase(context, group);
        }

        let expired_members: Vec<String> = group
            .members
            .values()
            .filter(|member| member.heartbeat_deadline_ms <= now_ms)
            .filter(|member| !member.is_exempt_from_expiry())
            .map(|member| member.id.clone())
            .collect();
        for member_id in expired_members {
            // An earlier removal may have rescheduled this member (join completed).
            let still_expired = group.members.get(&member_id).is_some_and(|member| {
                member.heartbeat_deadline_ms <= now_ms && !member.is_exempt_from_expiry()
            });
            if still_expired {
                fired = true;
                remove_member_and_update(context, group, &member_id);
            }
        }

        if let Some(timer) = group.join_timer.filter(|timer| timer.deadline_ms <= now_ms) {
            fired = true;
            group.join_timer = None;
            match timer.kind {
                JoinTimerKind::InitialDelay {
                    delay_ms,
                    remaining_ms,
                } => initial_delay_elapsed(context, group, delay_ms, remaining_ms),
                JoinTimerKind::Rebalance => {
                    if group.state == GroupState::PreparingRebalance {
                        complete_join_phase(context, group);
                    }
                }
            }
        }

        if let Some(timer) = group.sync_timer.filter(|timer| timer.deadline_ms <= now_ms) {
            fired = true;
            group.sync_timer = None;
            expire_pending_sync(context, group, timer.generation);
        }

        if !fired {
            return;
        }
    }
}
