//! Tests of the group coordinator: whole join/sync/heartbeat cycles, rebalances,
//! expiry, offsets, persistence, and randomized operation sequences that check the
//! invariants of `state.rs` after every step.

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafki_net::kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafki_net::kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafki_net::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafki_net::kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafki_net::kafka_protocol::messages::*;
use kafki_net::kafka_protocol::protocol::StrBytes;

use super::*;

const GROUP: &str = "g";
const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

fn coordinator() -> GroupCoordinator {
    GroupCoordinator::new(GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    })
}

fn join_request(member_id: &str, metadata: &'static [u8]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(REBALANCE_MS)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(metadata)),
            JoinGroupRequestProtocol::default()
                .with_name(s("roundrobin"))
                .with_metadata(Bytes::from_static(metadata)),
        ])
}

/// JoinGroup v5 with an empty id: MEMBER_ID_REQUIRED, then the real join.
fn first_join(
    c: &mut GroupCoordinator,
    now: u64,
    client: &str,
) -> (String, Outcome<JoinGroupResponse>) {
    let first = c.join(now, 5, &join_request("", b"m"), client, "/127.0.0.1");
    let Outcome::Ready(response) = first else {
        panic!("expected MEMBER_ID_REQUIRED")
    };
    assert_eq!(response.error_code, ResponseError::MemberIdRequired.code());
    let member_id = response.member_id.to_string();
    assert!(member_id.starts_with(&format!("{client}-")));
    let outcome = c.join(
        now,
        5,
        &join_request(&member_id, b"m"),
        client,
        "/127.0.0.1",
    );
    (member_id, outcome)
}

fn ready<T: std::fmt::Debug>(outcome: Outcome<T>) -> T {
    match outcome {
        Outcome::Ready(value) => value,
        Outcome::Pending(ticket) => panic!("expected Ready, got Pending({ticket:?})"),
    }
}

fn pending<T: std::fmt::Debug>(outcome: Outcome<T>) -> Ticket {
    match outcome {
        Outcome::Pending(ticket) => ticket,
        Outcome::Ready(value) => panic!("expected Pending, got {value:?}"),
    }
}

fn completed_join(c: &mut GroupCoordinator, ticket: Ticket) -> JoinGroupResponse {
    let completions = c.take_completed();
    for completion in completions {
        if completion.ticket == ticket {
            if let CompletedResponse::Join(response) = completion.response {
                return response;
            }
        }
    }
    panic!("join {ticket:?} not completed")
}

fn sync_request(
    member_id: &str,
    generation: i32,
    assignments: &[(&str, &'static [u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(generation)
        .with_member_id(s(member_id))
        .with_assignments(
            assignments
                .iter()
                .map(|(member, bytes)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(member))
                        .with_assignment(Bytes::from_static(bytes))
                })
                .collect(),
        )
}

fn heartbeat(c: &mut GroupCoordinator, now: u64, member_id: &str, generation: i32) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(generation)
        .with_member_id(s(member_id));
    c.heartbeat(now, 4, &request).error_code
}

/// One member joins, syncs, heartbeats: Stable with generation 1.
fn single_member_group(c: &mut GroupCoordinator) -> String {
    let (member_id, outcome) = first_join(c, 0, "client");
    let response = ready(outcome);
    assert_eq!(response.error_code, 0);
    assert_eq!(response.generation_id, 1);
    assert_eq!(response.leader.to_string(), member_id);
    assert_eq!(response.protocol_name.as_deref(), Some("range"));
    assert_eq!(response.members.len(), 1);
    let sync = ready(c.sync(0, 5, &sync_request(&member_id, 1, &[(&member_id, b"a1")])));
    assert_eq!(sync.error_code, 0);
    assert_eq!(&sync.assignment[..], b"a1");
    assert_eq!(c.group_state(GROUP), Some(GroupState::Stable));
    c.check_invariants();
    member_id
}

#[test]
fn one_member_cycle() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    assert_eq!(heartbeat(&mut c, 1000, &member, 1), 0);
    assert_eq!(
        heartbeat(&mut c, 1000, &member, 2),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&mut c, 1000, "nobody", 1),
        ResponseError::UnknownMemberId.code()
    );
    // the stable group's metadata record was produced at sync
    let records = c.take_records();
    assert!(records.iter().any(|r| matches!(
        records::decode(&r.key, r.value.as_deref()),
        Ok((records::RecordKey::Group { .. }, Some(_)))
    )));
}

#[test]
fn join_v3_gets_a_member_id_directly_and_v0_works() {
    let mut c = coordinator();
    let response = ready(c.join(0, 3, &join_request("", b"m"), "old", "h"));
    assert_eq!(response.error_code, 0);
    assert!(response.member_id.starts_with("old-"));
    let mut c = coordinator();
    let response = ready(c.join(
        0,
        0,
        &join_request("", b"m").with_rebalance_timeout_ms(-1),
        "v0",
        "h",
    ));
    assert_eq!(response.error_code, 0);
    assert_eq!(response.protocol_name.as_deref(), Some("range"));
}

#[test]
fn join_errors() {
    let mut c = coordinator();
    let unknown = ready(c.join(0, 5, &join_request("ghost", b"m"), "c", "h"));
    assert_eq!(unknown.error_code, ResponseError::UnknownMemberId.code());
    let bad_session = ready(c.join(
        0,
        5,
        &join_request("", b"m").with_session_timeout_ms(1),
        "c",
        "h",
    ));
    assert_eq!(
        bad_session.error_code,
        ResponseError::InvalidSessionTimeout.code()
    );
    let _member = single_member_group(&mut c);
    let other_type = join_request("", b"m").with_protocol_type(s("connect"));
    let response = ready(c.join(0, 3, &other_type, "c", "h"));
    assert_eq!(
        response.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let no_common = join_request("", b"m")
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("sticky"))
            .with_metadata(Bytes::new())]);
    let response = ready(c.join(0, 3, &no_common, "c", "h"));
    assert_eq!(
        response.error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let absurd = join_request("", b"m").with_protocols(
        (0..1000)
            .map(|i| JoinGroupRequestProtocol::default().with_name(s(&format!("p{i}"))))
            .collect(),
    );
    let response = ready(c.join(0, 5, &absurd, "c", "h"));
    assert_eq!(response.error_code, ResponseError::InvalidRequest.code());
}

#[test]
fn two_members_rebalance_completes_when_both_rejoin() {
    let mut c = coordinator();
    let first = single_member_group(&mut c);
    // second member joins a Stable group: the group prepares a rebalance
    let (second, outcome) = first_join(&mut c, 100, "client2");
    let second_ticket = pending(outcome);
    assert_eq!(c.group_state(GROUP), Some(GroupState::PreparingRebalance));
    // the first learns about it through its heartbeat
    assert_eq!(
        heartbeat(&mut c, 200, &first, 1),
        ResponseError::RebalanceInProgress.code()
    );
    // and rejoins: the join phase completes at once, not after the rebalance timeout
    let leader_response = ready(c.join(300, 5, &join_request(&first, b"m"), "client", "h"));
    assert_eq!(leader_response.error_code, 0);
    assert_eq!(leader_response.generation_id, 2);
    let follower_response = completed_join(&mut c, second_ticket);
    assert_eq!(follower_response.generation_id, 2);
    assert_eq!(follower_response.leader, leader_response.leader);
    let (leader, follower) = if leader_response.leader.to_string() == first {
        (first.clone(), second.clone())
    } else {
        (second.clone(), first.clone())
    };
    let (leader_view, follower_view) = if leader == first {
        (&leader_response, &follower_response)
    } else {
        (&follower_response, &leader_response)
    };
    assert_eq!(leader_view.members.len(), 2);
    assert!(follower_view.members.is_empty());
    // follower syncs first and waits; the leader's sync answers both
    let follower_ticket = pending(c.sync(400, 5, &sync_request(&follower, 2, &[])));
    let leader_sync = ready(c.sync(
        500,
        5,
        &sync_request(&leader, 2, &[(&leader, b"L"), (&follower, b"F")]),
    ));
    assert_eq!(&leader_sync.assignment[..], b"L");
    let completions = c.take_completed();
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].ticket, follower_ticket);
    match &completions[0].response {
        CompletedResponse::Sync(response) => {
            assert_eq!(response.error_code, 0);
            assert_eq!(&response.assignment[..], b"F");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.group_state(GROUP), Some(GroupState::Stable));
    // stale generation sync
    let stale = ready(c.sync(600, 5, &sync_request(&leader, 1, &[])));
    assert_eq!(stale.error_code, ResponseError::IllegalGeneration.code());
    c.check_invariants();
}

#[test]
fn silent_member_is_expelled_and_the_other_continues() {
    let mut c = coordinator();
    let first = single_member_group(&mut c);
    let (second, outcome) = first_join(&mut c, 0, "client2");
    let second_ticket = pending(outcome);
    let _ = ready(c.join(0, 5, &join_request(&first, b"m"), "client", "h"));
    let _ = completed_join(&mut c, second_ticket);
    let leader = c.groups[GROUP].leader.clone().expect("leader");
    let follower = if leader == first {
        second.clone()
    } else {
        first.clone()
    };
    let _ = pending(c.sync(0, 5, &sync_request(&follower, 2, &[])));
    let _ = ready(c.sync(0, 5, &sync_request(&leader, 2, &[])));
    c.take_completed();
    // only the leader heartbeats
    let mut now = 0;
    while now < 20_000 {
        now += 3000;
        c.tick(now);
        let generation = c.group_generation(GROUP).unwrap_or(-1);
        let code = heartbeat(&mut c, now, &leader, generation);
        if code == ResponseError::RebalanceInProgress.code() {
            let response = ready(c.join(now, 5, &join_request(&leader, b"m"), "client", "h"));
            assert_eq!(response.error_code, 0);
            let generation = response.generation_id;
            let _ = ready(c.sync(now, 5, &sync_request(&leader, generation, &[])));
        }
        c.check_invariants();
    }
    assert_eq!(c.group_members(GROUP), vec![leader.clone()]);
    assert_eq!(c.group_state(GROUP), Some(GroupState::Stable));
    assert_eq!(c.group_generation(GROUP), Some(3));
    assert_eq!(
        heartbeat(&mut c, now, &follower, 3),
        ResponseError::UnknownMemberId.code()
    );
}

#[test]
fn leave_triggers_rebalance_and_last_leave_empties() {
    let mut c = coordinator();
    let first = single_member_group(&mut c);
    let (second, outcome) = first_join(&mut c, 0, "client2");
    let second_ticket = pending(outcome);
    let _ = ready(c.join(0, 5, &join_request(&first, b"m"), "client", "h"));
    let _ = completed_join(&mut c, second_ticket);
    // v0 leave of `second` while CompletingRebalance
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s(&second));
    assert_eq!(c.leave(0, 0, &leave).error_code, 0);
    assert_eq!(c.group_state(GROUP), Some(GroupState::PreparingRebalance));
    let response = ready(c.join(0, 5, &join_request(&first, b"m"), "client", "h"));
    assert_eq!(response.generation_id, 3);
    assert_eq!(response.members.len(), 1);
    // v3 batch leave, with one unknown member
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_members(vec![
            MemberIdentity::default().with_member_id(s(&first)),
            MemberIdentity::default().with_member_id(s("ghost")),
        ]);
    let response = c.leave(0, 3, &leave);
    assert_eq!(response.members.len(), 2);
    assert_eq!(response.members[0].error_code, 0);
    assert_eq!(
        response.members[1].error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(c.group_state(GROUP), Some(GroupState::Empty));
    assert_eq!(c.group_generation(GROUP), Some(4));
    c.check_invariants();
}

#[test]
fn concurrent_joins_never_get_unknown_member_id() {
    let mut c = coordinator();
    let mut tickets = Vec::new();
    let mut ids = Vec::new();
    // five members arrive one after the other while the group rebalances
    for i in 0..5 {
        let (member_id, outcome) = first_join(&mut c, i * 10, &format!("c{i}"));
        ids.push(member_id);
        match outcome {
            Outcome::Pending(ticket) => tickets.push(ticket),
            Outcome::Ready(response) => assert_eq!(response.error_code, 0),
        }
        // members that already had an answer rejoin, as clients do on REBALANCE_IN_PROGRESS
        for completion in c.take_completed() {
            if let CompletedResponse::Join(response) = completion.response {
                assert_ne!(response.error_code, ResponseError::UnknownMemberId.code());
            }
        }
    }
    // everyone rejoins; all answers are successes for the same generation
    let mut answers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match c.join(100, 5, &join_request(id, b"m"), &format!("c{i}"), "h") {
            Outcome::Ready(response) => answers.push(response),
            Outcome::Pending(_) => {}
        }
    }
    for completion in c.take_completed() {
        if let CompletedResponse::Join(response) = completion.response {
            answers.push(response);
        }
    }
    let successes: Vec<_> = answers.iter().filter(|r| r.error_code == 0).collect();
    assert!(answers
        .iter()
        .all(|r| r.error_code != ResponseError::UnknownMemberId.code()));
    let generation = c.group_generation(GROUP).expect("group");
    let answered: std::collections::BTreeSet<String> = successes
        .iter()
        .filter(|r| r.generation_id == generation)
        .map(|r| r.member_id.to_string())
        .collect();
    assert_eq!(answered.len(), 5);
    assert_eq!(c.group_members(GROUP).len(), 5);
    c.check_invariants();
}

#[test]
fn initial_rebalance_delay_is_waited_then_completes() {
    let mut c = GroupCoordinator::new(GroupConfig::default());
    let (_, outcome) = first_join(&mut c, 0, "c");
    let ticket = pending(outcome);
    assert_eq!(c.next_deadline(), Some(3000));
    c.tick(2999);
    assert!(c.take_completed().is_empty());
    c.tick(3000);
    let response = completed_join(&mut c, ticket);
    assert_eq!(response.error_code, 0);
    assert_eq!(response.generation_id, 1);
}

#[test]
fn pending_member_id_expires() {
    let mut c = coordinator();
    let response = ready(c.join(0, 5, &join_request("", b"m"), "c", "h"));
    let member_id = response.member_id.to_string();
    c.tick(SESSION_MS as u64 + 1);
    let late = ready(c.join(
        SESSION_MS as u64 + 2,
        5,
        &join_request(&member_id, b"m"),
        "c",
        "h",
    ));
    assert_eq!(late.error_code, ResponseError::UnknownMemberId.code());
}

fn commit_request(member_id: &str, generation: i32, metadata: Option<&str>) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(42)
                .with_committed_leader_epoch(3)
                .with_committed_metadata(metadata.map(s))])])
}

fn fetch_v7(c: &GroupCoordinator, partitions: Vec<i32>) -> OffsetFetchResponse {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(partitions)]));
    c.fetch_offsets(7, &request)
}

/// OffsetCommit followed by what the runtime does once the records are
/// stored: the commits become visible.
fn commit_stored(
    c: &mut GroupCoordinator,
    now_ms: u64,
    version: i16,
    request: &OffsetCommitRequest,
) -> OffsetCommitResponse {
    let response = c.commit_offsets(now_ms, version, request);
    let pending = c.take_pending_commits();
    c.apply_commits(pending);
    response
}

#[test]
fn a_commit_is_visible_only_once_stored() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    let _ = c.take_records();
    let response = c.commit_offsets(5, 8, &commit_request(&member, 1, Some("m")));
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
    // Not stored yet: OffsetFetch does not show it.
    assert_eq!(
        fetch_v7(&c, vec![0]).topics[0].partitions[0].committed_offset,
        -1
    );
    let pending = c.take_pending_commits();
    assert_eq!(pending.len(), 1);
    assert_eq!(c.take_records().len(), 1);
    // The append failed: the runtime drops the commit, nothing is kept.
    drop(pending);
    assert_eq!(
        fetch_v7(&c, vec![0]).topics[0].partitions[0].committed_offset,
        -1
    );
    assert!(c.take_pending_commits().is_empty());
    // Committed again and stored: visible.
    let _ = c.commit_offsets(6, 8, &commit_request(&member, 1, Some("m")));
    let pending = c.take_pending_commits();
    c.apply_commits(pending);
    assert_eq!(
        fetch_v7(&c, vec![0]).topics[0].partitions[0].committed_offset,
        42
    );
}

#[test]
fn commit_and_fetch_round_trip_metadata() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    for metadata in [Some("hello ✓"), Some(""), None] {
        let response = commit_stored(&mut c, 5, 8, &commit_request(&member, 1, metadata));
        assert_eq!(response.topics[0].partitions[0].error_code, 0);
        let fetched = fetch_v7(&c, vec![0, 1]);
        let partition = &fetched.topics[0].partitions[0];
        assert_eq!(partition.committed_offset, 42);
        assert_eq!(partition.committed_leader_epoch, 3);
        // Kafka stores a null commit metadata as "" (OffsetAndMetadata.fromRequest).
        assert_eq!(partition.metadata.as_deref(), Some(metadata.unwrap_or("")));
        assert_eq!(fetched.topics[0].partitions[1].committed_offset, -1);
    }
    // stale generation and unknown members are refused
    let stale = commit_stored(&mut c, 6, 8, &commit_request(&member, 0, Some("x")));
    assert_eq!(
        stale.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
    let unknown = commit_stored(&mut c, 6, 8, &commit_request("ghost", 1, Some("x")));
    assert_eq!(
        unknown.topics[0].partitions[0].error_code,
        ResponseError::UnknownMemberId.code()
    );
    // simple commits are refused while the group has members
    let simple = commit_stored(&mut c, 6, 8, &commit_request("", -1, Some("x")));
    assert_eq!(
        simple.topics[0].partitions[0].error_code,
        ResponseError::UnknownMemberId.code()
    );
    // too much metadata
    let big = "x".repeat(4097);
    let response = commit_stored(&mut c, 6, 8, &commit_request(&member, 1, Some(&big)));
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        ResponseError::OffsetMetadataTooLarge.code()
    );
    // v8 fetch, all topics
    let request = OffsetFetchRequest::default().with_groups(vec![
        kafki_net::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_topics(None),
    ]);
    let fetched = c.fetch_offsets(8, &request);
    assert_eq!(
        fetched.groups[0].topics[0].partitions[0].committed_offset,
        42
    );
}

#[test]
fn simple_commit_creates_a_group_and_unknown_group_fetch_is_minus_one() {
    let mut c = coordinator();
    let fetched = fetch_v7(&c, vec![0]);
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, -1);
    assert_eq!(fetched.topics[0].partitions[0].error_code, 0);
    let refused = commit_stored(&mut c, 0, 9, &commit_request("m", 3, None));
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    let refused = commit_stored(&mut c, 0, 8, &commit_request("m", 3, None));
    assert_eq!(
        refused.topics[0].partitions[0].error_code,
        ResponseError::IllegalGeneration.code()
    );
    let simple = commit_stored(&mut c, 0, 8, &commit_request("", -1, Some("s")));
    assert_eq!(simple.topics[0].partitions[0].error_code, 0);
    assert_eq!(c.group_state(GROUP), Some(GroupState::Empty));
    let list = c.list(
        4,
        &ListGroupsRequest::default().with_states_filter(vec![s("empty")]),
    );
    assert_eq!(list.groups.len(), 1);
    let list = c.list(
        4,
        &ListGroupsRequest::default().with_states_filter(vec![s("Stable")]),
    );
    assert!(list.groups.is_empty());
}

#[test]
fn persistence_round_trip_restores_offsets_and_groups() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    let _ = commit_stored(&mut c, 5, 8, &commit_request(&member, 1, Some("meta")));
    let _ = commit_stored(&mut c, 6, 8, &commit_request(&member, 1, None));
    let records = c.take_records();
    let mut restored = coordinator();
    let stats = restored.load(0, records.iter().map(|r| (&r.key[..], r.value.as_deref())));
    assert_eq!(stats.malformed, 0);
    assert_eq!(stats.offsets, 1);
    assert_eq!(restored.group_state(GROUP), Some(GroupState::Empty));
    assert_eq!(restored.group_generation(GROUP), Some(1));
    let offset = restored
        .committed_offset(GROUP, "t", 0)
        .expect("restored offset");
    assert_eq!(offset.offset, 42);
    assert_eq!(offset.metadata, "");
    assert_eq!(offset.commit_timestamp_ms, 6);
    // after a restart the old member rejoins and the generation keeps growing
    let response = ready(restored.join(10, 5, &join_request(&member, b"m"), "client", "h"));
    assert_eq!(response.error_code, ResponseError::UnknownMemberId.code());
    let (_, outcome) = first_join(&mut restored, 10, "client");
    assert_eq!(ready(outcome).generation_id, 2);
}

#[test]
fn delete_only_empty_groups_and_tombstones() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    let _ = commit_stored(&mut c, 5, 8, &commit_request(&member, 1, Some("m")));
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(s(GROUP)), GroupId(s("nope"))]);
    let response = c.delete(0, 2, &request);
    assert_eq!(
        response.results[0].error_code,
        ResponseError::NonEmptyGroup.code()
    );
    assert_eq!(
        response.results[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s(&member));
    assert_eq!(c.leave(0, 1, &leave).error_code, 0);
    assert_eq!(c.group_state(GROUP), Some(GroupState::Empty));
    c.take_records();
    let response = c.delete(0, 2, &request);
    assert_eq!(response.results[0].error_code, 0);
    assert_eq!(c.group_state(GROUP), None);
    let records = c.take_records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.value.is_none()));
    // replaying everything ends with no group
    let mut restored = coordinator();
    restored.load(0, records.iter().map(|r| (&r.key[..], r.value.as_deref())));
    assert_eq!(restored.group_count(), 0);
}

#[test]
fn describe_groups() {
    let mut c = coordinator();
    let member = single_member_group(&mut c);
    let request =
        DescribeGroupsRequest::default().with_groups(vec![GroupId(s(GROUP)), GroupId(s("none"))]);
    let response = c.describe(5, &request);
    let group = &response.groups[0];
    assert_eq!(group.group_state.as_str(), "Stable");
    assert_eq!(group.protocol_type.as_str(), "consumer");
    assert_eq!(group.protocol_data.as_str(), "range");
    assert_eq!(group.members[0].member_id.to_string(), member);
    assert_eq!(&group.members[0].member_assignment[..], b"a1");
    assert_eq!(response.groups[1].group_state.as_str(), "Dead");
    assert_eq!(response.groups[1].error_code, 0);
    let response = c.describe(6, &request);
    assert_eq!(
        response.groups[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );
}

#[test]
fn group_max_size_is_enforced() {
    let mut c = GroupCoordinator::new(GroupConfig {
        initial_rebalance_delay_ms: 0,
        max_members_per_group: 2,
        ..GroupConfig::default()
    });
    let first = single_member_group(&mut c);
    let (_, outcome) = first_join(&mut c, 0, "two");
    let _ = pending(outcome);
    // Kafka counts members awaiting a join while preparing: a third is let in until
    // both members rejoined.
    let _ = ready(c.join(0, 5, &join_request(&first, b"m"), "client", "h"));
    let response = ready(c.join(0, 3, &join_request("", b"m"), "three", "h"));
    assert_eq!(
        response.error_code,
        ResponseError::GroupMaxSizeReached.code()
    );
}

/// Randomized clients: join, sync, heartbeat, leave, commit and time passing, in any
/// order. Nothing panics; invariants hold; generations never go down; a member that
/// is in the group never gets UNKNOWN_MEMBER_ID from a join answer.
#[test]
fn randomized_operations_keep_invariants() {
    let mut seed = 0x1234_5678_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..40 {
        let mut c = GroupCoordinator::new(GroupConfig {
            initial_rebalance_delay_ms: (round % 3) * 100,
            member_id_seed: round,
            max_members_per_group: 4,
            ..GroupConfig::default()
        });
        let mut now = 0u64;
        let mut known: Vec<String> = Vec::new();
        let mut last_generation = 0;
        for _ in 0..400 {
            let pick = next();
            let member = if known.is_empty() || pick % 5 == 0 {
                String::new()
            } else {
                known[(pick as usize / 7) % known.len()].clone()
            };
            let generation = c.group_generation(GROUP).unwrap_or(0) - (pick % 11 == 0) as i32;
            match pick % 8 {
                0 | 1 => {
                    let version = [0i16, 3, 5, 9][(pick as usize >> 8) % 4];
                    if let Outcome::Ready(response) =
                        c.join(now, version, &join_request(&member, b"m"), "c", "h")
                    {
                        if !response.member_id.is_empty()
                            && !known.contains(&response.member_id.to_string())
                        {
                            known.push(response.member_id.to_string());
                        }
                    }
                }
                2 => {
                    let _ = c.sync(
                        now,
                        5,
                        &sync_request(&member, generation, &[(&member, b"x")]),
                    );
                }
                3 => {
                    let _ = heartbeat(&mut c, now, &member, generation);
                }
                4 => {
                    let leave = LeaveGroupRequest::default()
                        .with_group_id(GroupId(s(GROUP)))
                        .with_members(vec![MemberIdentity::default().with_member_id(s(&member))]);
                    let _ = c.leave(now, 3, &leave);
                }
                5 => {
                    let _ = commit_stored(
                        &mut c,
                        now,
                        8,
                        &commit_request(&member, generation, Some("m")),
                    );
                }
                _ => {
                    now += next() % 8000;
                    c.tick(now);
                }
            }
            for completion in c.take_completed() {
                if let CompletedResponse::Join(response) = completion.response {
                    if response.error_code == ResponseError::UnknownMemberId.code() {
                        // only members that are gone may be told so
                        assert!(!c
                            .group_members(GROUP)
                            .contains(&response.member_id.to_string()));
                    }
                }
            }
            c.check_invariants();
            let generation = c.group_generation(GROUP).unwrap_or(0);
            assert!(generation >= last_generation, "generation went down");
            last_generation = generation;
            if let Some(deadline) = c.next_deadline() {
                assert!(deadline >= now || c.group_count() > 0);
            }
            let _ = c.take_records();
        }
    }
}
