//! The metadata quorum as Kafka's DescribeQuorum (API key 55) reports it:
//! leader, epoch (the Raft term), high watermark (the commit index) and,
//! per voter and observer (Raft learner), how far its log reaches and when
//! the leader last heard from it. Pure: the driver ([`super::quorum`])
//! gathers what raft-rs and its own clocks know into a [`LeaderView`], and
//! [`leader_report`] turns it into a [`QuorumReport`] that crosses shards
//! and nodes (a non-leader forwards the question to the leader as a
//! `Control` message and relays the report).
//!
//! Offsets: Raft indexes start at 1 and Kafka offsets at 0, so entry `i` is
//! offset `i - 1`; a log end offset (the next offset) is then the last
//! index, and the high watermark (exclusive) is the commit index. Times are
//! the leader's wall clock, ms since the Unix epoch; `-1` is "unknown", as
//! in Kafka.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `-1`: Kafka's "unknown" for offsets and timestamps.
pub const UNKNOWN: i64 = -1;

/// One replica of the metadata log as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    pub node: i32,
    /// The offset after the last entry known to be in its log (`-1`: the
    /// leader has not heard from it since it became leader).
    pub log_end_offset: i64,
    /// When the leader last received a message from it.
    pub last_fetch_ms: i64,
    /// When it last had every entry the leader had.
    pub last_caught_up_ms: i64,
}

/// The quorum as its leader describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumReport {
    pub leader: i32,
    /// The Raft term.
    pub epoch: u64,
    pub high_watermark: u64,
    /// Sorted by node id; the leader is one of them.
    pub voters: Vec<ReplicaProgress>,
    /// Raft learners (nodes outside `--voters`), sorted by node id.
    pub observers: Vec<ReplicaProgress>,
}

/// Why no report could be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    /// No leader is known, or the node asked says it is not the leader
    /// (an election is under way): worth asking again.
    #[error("the metadata quorum has no leader this node knows of")]
    NoLeader,
    /// The leader did not answer in time.
    #[error("the metadata quorum's leader did not answer in time")]
    LeaderSilent,
    /// Too many questions to the leader already wait for an answer.
    #[error("too many DescribeQuorum requests are waiting for the leader")]
    Busy,
}

/// What the leader's driver knows, gathered for [`leader_report`].
#[derive(Debug)]
pub struct LeaderView<'a> {
    pub me: i32,
    pub term: u64,
    pub commit_index: u64,
    /// The leader's last index (its own log end offset).
    pub last_index: u64,
    /// Raft membership as node ids: voters and learners.
    pub voters: &'a [i32],
    pub learners: &'a [i32],
    /// Raft's matched index per peer (0: not heard since this node led).
    pub matched: &'a HashMap<i32, u64>,
    /// When the last message from each peer arrived (wall clock ms).
    pub last_contact_ms: &'a HashMap<i32, i64>,
    /// When each peer last answered with every entry the leader had.
    pub caught_up_ms: &'a HashMap<i32, i64>,
    pub now_ms: i64,
}

/// The report the leader gives. The leader itself is always caught up and
/// "fetching" now, as Kafka reports it.
pub fn leader_report(view: &LeaderView<'_>) -> QuorumReport {
    let replica = |node: i32| {
        if node == view.me {
            return ReplicaProgress {
                node,
                log_end_offset: offset(view.last_index),
                last_fetch_ms: view.now_ms,
                last_caught_up_ms: view.now_ms,
            };
        }
        let matched = view.matched.get(&node).copied().unwrap_or(0);
        ReplicaProgress {
            node,
            log_end_offset: if matched == 0 {
                UNKNOWN
            } else {
                offset(matched)
            },
            last_fetch_ms: view.last_contact_ms.get(&node).copied().unwrap_or(UNKNOWN),
            last_caught_up_ms: view.caught_up_ms.get(&node).copied().unwrap_or(UNKNOWN),
        }
    };
    let sorted = |nodes: &[i32]| {
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.into_iter().map(replica).collect::<Vec<_>>()
    };
    let report = QuorumReport {
        leader: view.me,
        epoch: view.term,
        high_watermark: view.commit_index,
        voters: sorted(view.voters),
        observers: sorted(view.learners),
    };
    debug_assert!(
        report.voters.iter().any(|voter| voter.node == view.me),
        "only a voter leads"
    );
    report
}

/// A single node (no `--voters`): its own quorum of one, never elected
/// (epoch 0), everything it has applied committed.
pub fn single_node_report(me: i32, log_offset: u64, now_ms: i64) -> QuorumReport {
    QuorumReport {
        leader: me,
        epoch: 0,
        high_watermark: log_offset,
        voters: vec![ReplicaProgress {
            node: me,
            log_end_offset: offset(log_offset),
            last_fetch_ms: now_ms,
            last_caught_up_ms: now_ms,
        }],
        observers: Vec::new(),
    }
}

fn offset(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_reports_every_member_with_what_it_knows() {
        let matched = HashMap::from([(2, 40), (3, 0), (4, 41)]);
        let contact = HashMap::from([(2, 1_000), (4, 1_500)]);
        let caught_up = HashMap::from([(4, 1_400)]);
        let report = leader_report(&LeaderView {
            me: 1,
            term: 7,
            commit_index: 40,
            last_index: 41,
            voters: &[3, 1, 2],
            learners: &[4],
            matched: &matched,
            last_contact_ms: &contact,
            caught_up_ms: &caught_up,
            now_ms: 2_000,
        });
        assert_eq!(
            (report.leader, report.epoch, report.high_watermark),
            (1, 7, 40)
        );
        let progress = |node, end, fetch, caught| ReplicaProgress {
            node,
            log_end_offset: end,
            last_fetch_ms: fetch,
            last_caught_up_ms: caught,
        };
        assert_eq!(
            report.voters,
            vec![
                progress(1, 41, 2_000, 2_000),
                progress(2, 40, 1_000, UNKNOWN),
                // Not heard from since this node led: unknown, not 0.
                progress(3, UNKNOWN, UNKNOWN, UNKNOWN),
            ]
        );
        assert_eq!(report.observers, vec![progress(4, 41, 1_500, 1_400)]);
    }

    #[test]
    fn a_single_node_is_its_own_quorum() {
        let report = single_node_report(0, 12, 5);
        assert_eq!(report.leader, 0);
        assert_eq!(report.high_watermark, 12);
        assert_eq!(report.voters.len(), 1);
        assert_eq!(report.voters[0].log_end_offset, 12);
        assert!(report.observers.is_empty());
    }

    #[test]
    fn a_report_survives_the_control_encoding() {
        let report = single_node_report(3, 9, 77);
        let text = serde_json::to_vec(&report).expect("encode");
        let back: QuorumReport = serde_json::from_slice(&text).expect("decode");
        assert_eq!(back, report);
    }
}
