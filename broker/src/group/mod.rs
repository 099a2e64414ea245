//! The classic consumer-group coordinator (JoinGroup/SyncGroup/Heartbeat/LeaveGroup,
//! OffsetCommit/OffsetFetch, DescribeGroups/ListGroups/DeleteGroups) as a pure,
//! synchronous state machine: no I/O, no executor, no clock. Time comes in as
//! `now_ms`; requests that must wait for a rebalance return [`Outcome::Pending`] and
//! are answered later through [`GroupCoordinator::take_completed`]; everything to
//! persist comes out of [`GroupCoordinator::take_records`] as `__consumer_offsets`
//! records in Kafka's format ([`records`]); [`GroupCoordinator::next_deadline`] says
//! when to call [`GroupCoordinator::tick`]. A committed offset becomes visible only
//! once its record is stored: OffsetCommit leaves it pending
//! ([`GroupCoordinator::take_pending_commits`]) and the runtime applies it with
//! [`GroupCoordinator::apply_commits`] after the append reached its commit stage, or
//! drops it and answers an error.
//!
//! The behaviour follows Apache Kafka's `GroupMetadataManager` (classic-group part),
//! `ClassicGroup` and `OffsetMetadataManager` (Kafka 4.x): see `rebalance.rs` for the
//! state transitions. Lives on whichever core owns the coordinator; not `Sync`-shared.
//!
//! Everything is bounded by [`GroupConfig`]: groups, members per group, pending member
//! ids, protocols and metadata per member, identifier lengths, committed offsets per
//! group, offset metadata size.

mod ops;
mod rebalance;
pub mod records;
pub mod runtime;
mod state;
#[cfg(test)]
mod tests;
pub mod txn_hook;

use std::collections::BTreeMap;

use kafki_net::kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};

pub use records::{OffsetsRecord, RecordError};
pub use state::{CommittedOffset, GroupState};

use state::Group;

/// The wire error code: 0 for `None`.
pub(crate) fn wire(error: Option<kafki_net::kafka_protocol::error::ResponseError>) -> i16 {
    error.map_or(0, |error| error.code())
}

/// Limits and timings; defaults are Kafka's where Kafka has one.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// How long a new member's JoinGroup may stay parked (Kafka: 5 minutes).
    pub new_member_join_timeout_ms: u64,
    /// `group.max.size` (Kafka's default is unlimited; we cap it).
    pub max_members_per_group: usize,
    /// Groups this coordinator holds at most.
    pub max_groups: usize,
    /// `offset.metadata.max.bytes` (counted as Kafka does: UTF-16 units of the string).
    pub offset_metadata_max_bytes: usize,
    /// Committed offsets one group may hold.
    pub max_offsets_per_group: usize,
    /// Protocols one member may list in a JoinGroup.
    pub max_protocols_per_member: usize,
    /// Sum of one member's protocol metadata bytes.
    pub max_member_metadata_bytes: usize,
    /// Longest group id, member id, instance id, client id/host, protocol or topic name.
    pub max_identifier_bytes: usize,
    /// Seed for generated member ids (`<client_id>-<uuid>`); the runtime passes entropy.
    pub member_id_seed: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            new_member_join_timeout_ms: 300_000,
            max_members_per_group: 1000,
            max_groups: 100_000,
            offset_metadata_max_bytes: 4096,
            max_offsets_per_group: 100_000,
            max_protocols_per_member: 64,
            max_member_metadata_bytes: 1 << 20,
            max_identifier_bytes: 1024,
            member_id_seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Identifies a parked JoinGroup or SyncGroup until its [`Completion`] comes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// The answer to a request that may have to wait for a rebalance.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<T> {
    Ready(T),
    Pending(Ticket),
}

/// The late answer to a parked request.
#[derive(Debug, Clone, PartialEq)]
pub enum CompletedResponse {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub ticket: Ticket,
    pub response: CompletedResponse,
}

/// What `load` made of a `__consumer_offsets` replay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadStats {
    pub offsets: usize,
    pub groups: usize,
    /// Records that did not decode (skipped).
    pub malformed: usize,
}

/// Outputs produced while handling a call, drained by the runtime.
#[derive(Debug, Default)]
struct Effects {
    completed: Vec<Completion>,
    records: Vec<OffsetsRecord>,
    commits: Vec<PendingCommit>,
}

/// An accepted offset commit whose record is not stored yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCommit {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: CommittedOffset,
}

/// The coordinator for every classic group it owns.
#[derive(Debug)]
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: BTreeMap<String, Group>,
    effects: Effects,
    next_ticket: u64,
    random_state: u64,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        let random_state = config.member_id_seed;
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            effects: Effects::default(),
            next_ticket: 1,
            random_state,
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Parked requests answered since the last call (by any call, including `tick`).
    pub fn take_completed(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.effects.completed)
    }

    /// Records to append to `__consumer_offsets` since the last call, in order.
    pub fn take_records(&mut self) -> Vec<OffsetsRecord> {
        std::mem::take(&mut self.effects.records)
    }

    /// Offset commits accepted since the last call, whose records are among
    /// those of [`GroupCoordinator::take_records`].
    pub fn take_pending_commits(&mut self) -> Vec<PendingCommit> {
        std::mem::take(&mut self.effects.commits)
    }

    /// Makes stored commits visible, in the order their records were
    /// appended. A commit for a group deleted meanwhile is dropped (its
    /// tombstone came after it in the log).
    pub fn apply_commits(&mut self, commits: Vec<PendingCommit>) {
        for commit in commits {
            if let Some(group) = self.groups.get_mut(&commit.group) {
                group
                    .offsets
                    .entry(commit.topic)
                    .or_default()
                    .insert(commit.partition, commit.committed);
            }
        }
    }

    /// State of a group, if it exists (for tests and admin tools).
    pub fn group_state(&self, group_id: &str) -> Option<GroupState> {
        self.groups.get(group_id).map(|group| group.state)
    }

    /// Generation of a group, if it exists.
    pub fn group_generation(&self, group_id: &str) -> Option<i32> {
        self.groups.get(group_id).map(|group| group.generation)
    }

    /// Member ids of a group (sorted), empty when it does not exist.
    pub fn group_members(&self, group_id: &str) -> Vec<String> {
        self.groups
            .get(group_id)
            .map(|group| group.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Committed offset of one partition.
    pub fn committed_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Option<&CommittedOffset> {
        self.groups
            .get(group_id)?
            .offsets
            .get(topic)?
            .get(&partition)
    }

    /// Removes every group `unload` picks (their partition is led by
    /// another node now); how many went.
    pub fn unload_groups(&mut self, unload: impl Fn(&str) -> bool) -> usize {
        let before = self.groups.len();
        self.groups.retain(|name, _| !unload(name));
        before - self.groups.len()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The earliest time `tick` has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .values()
            .filter_map(rebalance::next_deadline)
            .min()
    }

    /// Fires every timer due at `now_ms`: expired sessions, pending member ids,
    /// the initial rebalance delay, rebalance and sync timeouts.
    pub fn tick(&mut self, now_ms: u64) {
        let due: Vec<String> = self
            .groups
            .values()
            .filter(|group| rebalance::next_deadline(group).is_some_and(|d| d <= now_ms))
            .map(|group| group.id.clone())
            .collect();
        for group_id in due {
            self.run_timers(&group_id, now_ms);
        }
    }

    fn run_timers(&mut self, group_id: &str, now_ms: u64) {
        if let Some(group) = self.groups.get_mut(group_id) {
            let mut context = rebalance::Context {
                config: &self.config,
                effects: &mut self.effects,
                now_ms,
            };
            rebalance::run_due_timers(&mut context, group);
        }
    }

    fn issue_ticket(&mut self) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        ticket
    }

    /// `<prefix>-<uuid v4 layout>` from a splitmix64 stream (deterministic per seed).
    fn generate_member_id(&mut self, prefix: &str) -> String {
        let high = self.next_random();
        let low = self.next_random();
        let high = (high & !0xf000) | 0x4000; // version 4
        let low = (low & !(0xc000 << 48)) | (0x8000 << 48); // RFC 4122 variant
        format!(
            "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    }

    fn next_random(&mut self) -> u64 {
        self.random_state = self.random_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Makes room for a new group: true when under the cap (possibly after dropping a
    /// group that holds nothing).
    fn has_room_for_group(&mut self) -> bool {
        if self.groups.len() < self.config.max_groups {
            return true;
        }
        let disposable = self
            .groups
            .values()
            .find(|group| group.is_disposable())
            .map(|group| group.id.clone());
        match disposable {
            Some(group_id) => {
                self.groups.remove(&group_id);
                true
            }
            None => false,
        }
    }

    /// If `ticket` was answered during this call, take its response out of the queue.
    fn take_own_completion(&mut self, ticket: Ticket) -> Option<CompletedResponse> {
        let position = self
            .effects
            .completed
            .iter()
            .position(|completion| completion.ticket == ticket)?;
        Some(self.effects.completed.remove(position).response)
    }
}
