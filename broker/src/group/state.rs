//! The data of one classic consumer group: its state, members, generation and
//! committed offsets, with the small operations Kafka's `ClassicGroup.java` has
//! (add/remove a member, protocol vote, next generation).
//!
//! Invariants kept here (checked by `check_invariants` in tests):
//! - a group with members has a leader, and the leader is a member; no members, no leader;
//! - `awaiting_join_count()` counts members with a parked JoinGroup;
//! - `static_members` maps each group instance id to the member carrying it;
//! - `pending_sync` only names members.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::Ticket;

/// The classic group states (Kafka's `ClassicGroupState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka puts on the wire (DescribeGroups, ListGroups).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A request parked until the rebalance moves on, with the version to answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parked {
    pub ticket: Ticket,
    pub api_version: i16,
}

/// One member of a classic group.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub awaiting_join: Option<Parked>,
    pub awaiting_sync: Option<Parked>,
    /// Joined but not yet part of a generation: its JoinGroup may time out.
    pub is_new: bool,
    /// When the member is expelled unless it heartbeats (or is parked in a rebalance).
    pub heartbeat_deadline_ms: u64,
}

impl Member {
    /// Metadata for `protocol`, empty when the member does not list it.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    /// Same protocols with the same metadata, in the same order (Kafka's `matches`).
    pub fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    /// The first protocol in the member's preference that every member supports.
    fn vote(&self, candidates: &BTreeSet<&str>) -> Option<&str> {
        self.protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .find(|name| candidates.contains(name))
    }

    /// Kafka's `hasSatisfiedHeartbeat` once the deadline passed: members parked in a
    /// rebalance are not expelled (their deadline is reset when the rebalance moves on).
    pub fn is_exempt_from_expiry(&self) -> bool {
        !self.is_new && (self.awaiting_join.is_some() || self.awaiting_sync.is_some())
    }
}

/// A committed offset as stored and returned by OffsetFetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Offset in `__consumer_offsets` of the batch that stored it (-1
    /// until stored). Of a transactional and a plain commit of the same
    /// partition, the one stored later wins when the transaction commits
    /// (Kafka's `completePendingTxnOffsetCommit`): a plain commit made
    /// while the transaction was open is not undone by its marker.
    pub stored_at: i64,
}

/// What the join timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinTimerKind {
    /// `group.initial.rebalance.delay.ms` for a group rebalancing out of Empty.
    InitialDelay { delay_ms: u64, remaining_ms: u64 },
    /// The rebalance timeout: members that did not rejoin are removed.
    Rebalance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinTimer {
    pub deadline_ms: u64,
    pub kind: JoinTimerKind,
}

/// Members that got their JoinGroup answer must SyncGroup before this deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncTimer {
    pub deadline_ms: u64,
    pub generation: i32,
}

/// One classic group.
#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub previous_state: GroupState,
    pub state_timestamp_ms: i64,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry deadline.
    pub pending_members: BTreeMap<String, u64>,
    /// Members that got a JoinGroup answer for this generation but have not synced yet.
    pub pending_sync: BTreeSet<String>,
    /// group instance id → member id.
    pub static_members: BTreeMap<String, String>,
    /// A member joined during the initial rebalance delay: extend the delay.
    pub new_member_added: bool,
    pub join_timer: Option<JoinTimer>,
    pub sync_timer: Option<SyncTimer>,
    /// topic → partition → committed offset.
    pub offsets: BTreeMap<String, BTreeMap<i32, CommittedOffset>>,
}

impl Group {
    pub fn new(id: String, now_ms: u64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            previous_state: GroupState::Empty,
            state_timestamp_ms: now_ms as i64,
            protocol_type: None,
            protocol_name: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            static_members: BTreeMap::new(),
            new_member_added: false,
            join_timer: None,
            sync_timer: None,
            offsets: BTreeMap::new(),
        }
    }

    pub fn transition(&mut self, state: GroupState, now_ms: u64) {
        self.previous_state = self.state;
        self.state = state;
        self.state_timestamp_ms = now_ms as i64;
    }

    /// PreparingRebalance may be entered from these states (Kafka's `canRebalance`).
    pub fn can_rebalance(&self) -> bool {
        matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        )
    }

    pub fn awaiting_join_count(&self) -> usize {
        self.members
            .values()
            .filter(|member| member.awaiting_join.is_some())
            .count()
    }

    /// Every member has a parked JoinGroup and no MEMBER_ID_REQUIRED id is outstanding.
    pub fn has_all_members_joined(&self) -> bool {
        self.members.len() == self.awaiting_join_count() && self.pending_members.is_empty()
    }

    /// The longest rebalance timeout of the members (Kafka's `rebalanceTimeoutMs`).
    pub fn rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|member| member.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    pub fn is_leader(&self, member_id: &str) -> bool {
        self.leader.as_deref() == Some(member_id)
    }

    /// Kafka's `supportsProtocols`: an Empty group takes any non-empty protocol list;
    /// otherwise the type must match and one protocol must be supported by every member.
    pub fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.state == GroupState::Empty {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == name))
            })
    }

    pub fn add_member(&mut self, member: Member) {
        if let Some(instance_id) = &member.instance_id {
            self.static_members
                .insert(instance_id.clone(), member.id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        self.pending_members.remove(&member.id);
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        self.members.insert(member.id.clone(), member);
    }

    /// Removes a member (or pending member id); a removed leader is replaced by any member.
    pub fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let removed = self.members.remove(member_id);
        if let Some(member) = &removed {
            if let Some(instance_id) = &member.instance_id {
                if self.static_members.get(instance_id).map(String::as_str) == Some(member_id) {
                    self.static_members.remove(instance_id);
                }
            }
        }
        if self.is_leader(member_id) {
            self.leader = self.members.keys().next().cloned();
        }
        self.pending_members.remove(member_id);
        self.pending_sync.remove(member_id);
        removed
    }

    /// Kafka's `maybeElectNewJoinedLeader`: keep a leader that rejoined, else pick a
    /// member that did; false when nobody rejoined.
    pub fn maybe_elect_new_joined_leader(&mut self) -> bool {
        let Some(leader) = self.leader.clone() else {
            return false;
        };
        let leader_rejoined = self
            .members
            .get(&leader)
            .is_some_and(|member| member.awaiting_join.is_some());
        if leader_rejoined {
            return true;
        }
        match self
            .members
            .values()
            .find(|member| member.awaiting_join.is_some())
        {
            Some(member) => {
                self.leader = Some(member.id.clone());
                true
            }
            None => false,
        }
    }

    /// Kafka's `selectProtocol`: each member votes for its most preferred protocol among
    /// those every member supports; most votes wins. Ties go to the protocol the leader
    /// prefers (Kafka breaks ties by hash order; this is deterministic).
    pub fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: BTreeSet<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|member| member.protocols.iter().any(|(other, _)| other == name))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(choice) = member.vote(&candidates) {
                *votes.entry(choice).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        let leader_order: Vec<&str> = self
            .leader
            .as_deref()
            .and_then(|leader| self.members.get(leader))
            .map(|leader| leader.protocols.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default();
        let mut winners: Vec<&str> = votes
            .iter()
            .filter(|(_, count)| **count == most)
            .map(|(name, _)| *name)
            .collect();
        winners.sort_by_key(|name| {
            leader_order
                .iter()
                .position(|other| other == name)
                .unwrap_or(usize::MAX)
        });
        winners.first().map(|name| (*name).to_owned())
    }

    /// Kafka's `initNextGeneration`.
    pub fn init_next_generation(&mut self, now_ms: u64) {
        self.generation = self.generation.saturating_add(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.transition(GroupState::Empty, now_ms);
        } else {
            self.protocol_name = self.select_protocol();
            self.transition(GroupState::CompletingRebalance, now_ms);
        }
        self.pending_sync.clear();
    }

    pub fn offset_count(&self) -> usize {
        self.offsets.values().map(BTreeMap::len).sum()
    }

    /// Nothing to keep: no members, no pending joins, no offsets.
    pub fn is_disposable(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending_members.is_empty()
            && self.offsets.is_empty()
    }

    /// Panics when an invariant from the module doc is broken (tests, randomized runs).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        match &self.leader {
            Some(leader) => assert!(
                self.members.contains_key(leader),
                "leader {leader} is not a member of {}",
                self.id
            ),
            None => assert!(self.members.is_empty(), "members but no leader"),
        }
        if self.state == GroupState::Stable || self.state == GroupState::CompletingRebalance {
            assert!(
                !self.members.is_empty(),
                "{:?} group without members",
                self.state
            );
            assert!(self.protocol_name.is_some());
        }
        for (instance_id, member_id) in &self.static_members {
            let member = self.members.get(member_id).expect("static member exists");
            assert_eq!(member.instance_id.as_deref(), Some(instance_id.as_str()));
        }
        for member_id in &self.pending_sync {
            assert!(self.members.contains_key(member_id));
        }
        if self.state != GroupState::PreparingRebalance {
            assert_eq!(
                self.awaiting_join_count(),
                0,
                "parked joins outside a rebalance"
            );
        }
        if self.state != GroupState::CompletingRebalance {
            assert!(self
                .members
                .values()
                .all(|member| member.awaiting_sync.is_none()));
        }
    }
}
