//! The leader's side of replication: what each follower has (validated
//! against this log, durable), the high watermark computed from it, the
//! parked fetches, and the ISR changes to propose.
//!
//! Rules kept here:
//! - **High watermark** = the minimum durable offset over the *maximal* ISR
//!   (committed ISR ∪ members of a pending proposal), the leader's own
//!   durable offset included; it waits until every member has reported in
//!   this epoch, never passes the leader's log end and never decreases. A
//!   replica whose removal is pending still counts (KIP-841): it leaves the
//!   count only when the quorum committed its removal.
//! - A follower's offsets count only from a fetch that matched this log
//!   (its last fetched epoch ends at or after its fetch offset here), so
//!   they name records this log holds at the same offsets.
//! - **Shrink**: a committed ISR member whose last caught-up time is older
//!   than `replica_lag_time_max_ms`. Caught up at time T means its durable
//!   offset reached the leader's log end as of a fetch at T (Kafka's
//!   `lastCaughtUpTimeMs`, with durable instead of fetch offsets so that a
//!   follower whose fsyncs stall is also removed).
//! - **Expand**: a replica outside the ISR whose durable offset reached both
//!   the high watermark and the start of this leader's epoch (Kafka's rule,
//!   durable): it then holds every committed record on disk. It must also
//!   be caught up by the shrink rule's measure, or it would leave again
//!   (which, measured within this epoch, already implies the epoch start).
//! - One proposal in flight; re-sent after `isr_retry_ms` without answer;
//!   dropped when a newer partition epoch commits or it is rejected.

use std::collections::{BTreeMap, VecDeque};

use super::log::{NodeId, Offset, PartitionEpoch, NO_EPOCH};
use super::machine::{Core, Effect, ProduceOutcome};
use super::messages::{
    FetchBody, FetchRefusal, FetchRequest, FetchResponse, IsrProposal, PartitionRecord,
};

/// Fetch samples kept per follower for the caught-up rule (bounded; when
/// full the oldest goes, which only makes the follower look later).
const CAUGHT_UP_SAMPLES_MAX: usize = 8;

#[derive(Debug)]
pub(super) struct LeaderState {
    /// The log end when this replica became leader: the first offset of
    /// its epoch.
    pub epoch_start_offset: Offset,
    pub replicas: Vec<NodeId>,
    /// The committed ISR (this leader among them).
    pub isr: Vec<NodeId>,
    pending: Option<PendingIsr>,
    /// No new proposal before this (set by a rejection).
    propose_not_before_ms: u64,
    followers: BTreeMap<NodeId, FollowerProgress>,
}

#[derive(Debug)]
struct PendingIsr {
    proposal: IsrProposal,
    sent_at_ms: u64,
}

/// What the leader knows of one follower, from its matched fetches in this
/// epoch.
#[derive(Debug)]
struct FollowerProgress {
    fetch_offset: Option<Offset>,
    durable_offset: Option<Offset>,
    last_caught_up_ms: u64,
    /// `(fetch time, leader log end then)` of recent fetches.
    samples: VecDeque<(u64, Offset)>,
    parked: Option<ParkedFetch>,
}

#[derive(Debug)]
struct ParkedFetch {
    request: FetchRequest,
    since_ms: u64,
}

impl FollowerProgress {
    /// An ISR member counts as caught up when the epoch starts (Kafka's
    /// reset on becoming leader); any other replica must prove it.
    fn new(now_ms: u64, leader_end: Offset, in_isr: bool) -> Self {
        Self {
            fetch_offset: None,
            durable_offset: None,
            last_caught_up_ms: if in_isr { now_ms } else { 0 },
            samples: VecDeque::from([(now_ms, leader_end)]),
            parked: None,
        }
    }

    /// A matched fetch. Offsets only rise: a fetch reordered behind a newer
    /// one reports less than the follower has, never more.
    fn record(&mut self, now_ms: u64, fetch_offset: Offset, durable: Offset, leader_end: Offset) {
        self.fetch_offset = Some(
            self.fetch_offset
                .map_or(fetch_offset, |o| o.max(fetch_offset)),
        );
        self.durable_offset = Some(self.durable_offset.map_or(durable, |o| o.max(durable)));
        let durable = self.durable_offset.unwrap_or(durable);
        if durable >= leader_end {
            self.last_caught_up_ms = now_ms;
            self.samples.clear();
        } else if let Some(index) = self.samples.iter().rposition(|(_, end)| *end <= durable) {
            self.last_caught_up_ms = self.last_caught_up_ms.max(self.samples[index].0);
            self.samples.drain(..=index);
        }
        if self.samples.len() == CAUGHT_UP_SAMPLES_MAX {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, leader_end));
    }
}

impl LeaderState {
    pub fn new(core: &Core, record: &PartitionRecord) -> Self {
        let end = core.log.end_offset();
        let followers = record
            .replicas
            .iter()
            .filter(|node| **node != core.me)
            .map(|node| {
                let in_isr = record.isr.contains(node);
                (*node, FollowerProgress::new(core.now_ms, end, in_isr))
            })
            .collect();
        Self {
            epoch_start_offset: end,
            replicas: record.replicas.clone(),
            isr: record.isr.clone(),
            pending: None,
            propose_not_before_ms: 0,
            followers,
        }
    }

    /// After becoming leader or an ISR change: the high watermark may move
    /// (a smaller ISR), a proposal may be due.
    pub fn after_change(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        self.advance_high_watermark(core, out);
        self.maybe_propose(core, out);
    }

    /// Committed ISR ∪ the pending proposal's members.
    pub fn maximal_isr(&self) -> Vec<NodeId> {
        let mut members = self.isr.clone();
        if let Some(pending) = &self.pending {
            for node in &pending.proposal.isr {
                if !members.contains(node) {
                    members.push(*node);
                }
            }
        }
        members
    }

    fn advance_high_watermark(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        let mut candidate = core.log.durable_offset();
        let members = self.maximal_isr();
        for node in members.iter().filter(|n| **n != core.me) {
            match self.followers.get(node).and_then(|p| p.durable_offset) {
                Some(durable) => candidate = candidate.min(durable),
                None => return, // not heard from in this epoch yet
            }
        }
        if core.raise_high_watermark(candidate, out) {
            let outcome = if members.len() >= core.config.min_insync_replicas {
                ProduceOutcome::Acknowledged
            } else {
                ProduceOutcome::NotEnoughReplicasAfterAppend
            };
            out.push(Effect::CompleteProduces {
                upto: core.high_watermark,
                outcome,
            });
        }
    }

    pub fn on_fetch(&mut self, core: &mut Core, request: FetchRequest, out: &mut Vec<Effect>) {
        if let Some(refusal) = self.refusal(core, &request) {
            out.push(answer(core, &request, FetchBody::Refused(refusal)));
            return;
        }
        let leader_end = core.log.end_offset();
        // A follower with no epoch has no record to disagree about: an
        // empty log, or one reset to start at this log's start (Kafka skips
        // the check for an empty epoch cache too). Only a position past
        // this log's end is wrong for it.
        let (epoch, end_offset) = if request.last_fetched_epoch == NO_EPOCH {
            (NO_EPOCH, leader_end)
        } else {
            core.log.end_of_epoch(request.last_fetched_epoch)
        };
        if epoch != request.last_fetched_epoch || end_offset < request.fetch_offset {
            out.push(answer(
                core,
                &request,
                FetchBody::Diverging { epoch, end_offset },
            ));
            return;
        }
        let Some(progress) = self.followers.get_mut(&request.replica) else {
            return; // refusal() checked it is a follower
        };
        let durable = request.durable_offset.min(request.fetch_offset);
        progress.record(core.now_ms, request.fetch_offset, durable, leader_end);
        // A newer fetch replaces a parked one: the follower waits only for
        // the answer to its latest.
        progress.parked = None;
        self.advance_high_watermark(core, out);
        self.maybe_propose(core, out);
        if request.fetch_offset < leader_end {
            out.push(records_answer(core, &request));
        } else if let Some(progress) = self.followers.get_mut(&request.replica) {
            progress.parked = Some(ParkedFetch {
                request,
                since_ms: core.now_ms,
            });
        }
    }

    fn refusal(&self, core: &Core, request: &FetchRequest) -> Option<FetchRefusal> {
        if request.leader_epoch < core.leader_epoch {
            Some(FetchRefusal::FencedLeaderEpoch)
        } else if request.leader_epoch > core.leader_epoch {
            Some(FetchRefusal::UnknownLeaderEpoch)
        } else if !self.followers.contains_key(&request.replica) {
            Some(FetchRefusal::NotAReplica)
        } else if request.fetch_offset < 0 || request.durable_offset < 0 {
            Some(FetchRefusal::Malformed)
        } else {
            None
        }
    }

    /// New records: every parked fetch gets them now.
    pub fn on_appended(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        for progress in self.followers.values_mut() {
            if let Some(parked) = progress.parked.take() {
                out.push(records_answer(core, &parked.request));
            }
        }
    }

    pub fn on_durable(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        self.advance_high_watermark(core, out);
    }

    pub fn on_tick(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        let now = core.now_ms;
        for progress in self.followers.values_mut() {
            let expired = progress
                .parked
                .as_ref()
                .is_some_and(|p| now.saturating_sub(p.since_ms) >= core.config.fetch_max_wait_ms);
            if expired {
                if let Some(parked) = progress.parked.take() {
                    out.push(records_answer(core, &parked.request));
                }
            }
        }
        if let Some(pending) = &mut self.pending {
            if now.saturating_sub(pending.sent_at_ms) >= core.config.isr_retry_ms {
                pending.sent_at_ms = now;
                out.push(Effect::ProposeIsr(pending.proposal.clone()));
            }
        }
        self.maybe_propose(core, out);
    }

    pub fn on_isr_committed(
        &mut self,
        core: &mut Core,
        record: &PartitionRecord,
        out: &mut Vec<Effect>,
    ) {
        if record.replicas != self.replicas {
            let end = core.log.end_offset();
            self.followers
                .retain(|node, _| record.replicas.contains(node));
            for node in record.replicas.iter().filter(|n| **n != core.me) {
                self.followers
                    .entry(*node)
                    .or_insert_with(|| FollowerProgress::new(core.now_ms, end, false));
            }
            self.replicas = record.replicas.clone();
        }
        self.isr = record.isr.clone();
        let resolved = self
            .pending
            .as_ref()
            .is_some_and(|p| p.proposal.partition_epoch < record.partition_epoch);
        if resolved {
            self.pending = None;
        }
        self.after_change(core, out);
    }

    pub fn on_isr_rejected(&mut self, core: &mut Core, partition_epoch: PartitionEpoch) {
        let ours = self
            .pending
            .as_ref()
            .is_some_and(|p| p.proposal.partition_epoch == partition_epoch);
        if ours {
            self.pending = None;
            self.propose_not_before_ms = core.now_ms + core.config.isr_retry_ms;
        }
    }

    /// Proposes the ISR the rules want, if it differs and nothing is in
    /// flight.
    fn maybe_propose(&mut self, core: &mut Core, out: &mut Vec<Effect>) {
        if self.pending.is_some() || core.now_ms < self.propose_not_before_ms {
            return;
        }
        let now = core.now_ms;
        let lag_max = core.config.replica_lag_time_max_ms;
        let join_at = core.high_watermark.max(self.epoch_start_offset);
        let wanted: Vec<NodeId> = self
            .replicas
            .iter()
            .copied()
            .filter(|node| {
                if *node == core.me {
                    return true;
                }
                let Some(progress) = self.followers.get(node) else {
                    return false;
                };
                let caught_up = now.saturating_sub(progress.last_caught_up_ms) <= lag_max;
                if self.isr.contains(node) {
                    caught_up
                } else {
                    // Not one that would be shrunk again at once.
                    caught_up && progress.durable_offset.is_some_and(|d| d >= join_at)
                }
            })
            .collect();
        let mut current = self.isr.clone();
        let mut sorted_wanted = wanted.clone();
        current.sort_unstable();
        sorted_wanted.sort_unstable();
        if sorted_wanted == current {
            return;
        }
        let proposal = IsrProposal {
            leader: core.me,
            leader_epoch: core.leader_epoch,
            partition_epoch: core.partition_epoch,
            isr: wanted,
        };
        out.push(Effect::ProposeIsr(proposal.clone()));
        self.pending = Some(PendingIsr {
            proposal,
            sent_at_ms: now,
        });
    }
}

/// The leader's answer to `request` with `body`.
pub(super) fn answer(core: &Core, request: &FetchRequest, body: FetchBody) -> Effect {
    Effect::AnswerFetch {
        to: request.replica,
        response: FetchResponse {
            fetch_id: request.fetch_id,
            leader: core.me,
            leader_epoch: core.leader_epoch,
            fetch_offset: request.fetch_offset,
            last_fetched_epoch: request.last_fetched_epoch,
            high_watermark: core.high_watermark,
            body,
        },
    }
}

/// The leader's records from the (matched) fetch offset, up to the answer
/// limit.
fn records_answer(core: &Core, request: &FetchRequest) -> Effect {
    let to = request
        .fetch_offset
        .saturating_add(core.config.fetch_max_records.max(1));
    let ranges = core.log.ranges(request.fetch_offset, to);
    answer(core, request, FetchBody::Records(ranges))
}
