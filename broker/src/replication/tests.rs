//! Unit tests of the replication core, one rule at a time: the log
//! picture, the high watermark, ISR shrink and expand, produce admission
//! and completion, the follower's checks, divergence (KIP-101, KIP-279
//! scenarios), and the controller's election.

use super::election::{elect_leader, fence_replica, offline};
use super::*;

const NOW: u64 = 10_000;

fn config() -> ReplicationConfig {
    ReplicationConfig {
        min_insync_replicas: 2,
        replica_lag_time_max_ms: 1_000,
        fetch_max_wait_ms: 100,
        fetch_timeout_ms: 500,
        fetch_backoff_ms: 50,
        isr_retry_ms: 300,
        fetch_max_records: 1_000,
    }
}

fn record(
    leader: Option<NodeId>,
    leader_epoch: LeaderEpoch,
    isr: &[NodeId],
    partition_epoch: PartitionEpoch,
) -> PartitionRecord {
    PartitionRecord {
        replicas: vec![1, 2, 3],
        isr: isr.to_vec(),
        leader,
        leader_epoch,
        partition_epoch,
    }
}

fn log(epochs: &[(LeaderEpoch, Offset)], end: Offset, durable: Offset) -> LocalLog {
    LocalLog::new(epochs.to_vec(), end, durable).expect("a valid log picture")
}

fn step(replica: &mut PartitionReplica, input: Input) -> Vec<Effect> {
    let mut out = Vec::new();
    replica
        .handle(input.clone(), &mut out)
        .unwrap_or_else(|e| panic!("{input:?} refused: {e}"));
    out
}

fn tick(replica: &mut PartitionReplica, now_ms: u64) -> Vec<Effect> {
    step(replica, Input::Tick { now_ms })
}

/// Node 1 leading epoch 5 over `log` with `isr`, its high watermark `hw`.
fn leader(log: LocalLog, hw: Offset, isr: &[NodeId]) -> PartitionReplica {
    let mut replica = PartitionReplica::new(1, config(), log, hw, NOW);
    step(&mut replica, Input::Metadata(record(Some(1), 5, isr, 10)));
    assert!(replica.is_leader());
    replica
}

fn fetch(
    replica: NodeId,
    fetch_offset: Offset,
    last_fetched_epoch: LeaderEpoch,
    durable_offset: Offset,
) -> Input {
    Input::FollowerFetch(FetchRequest {
        fetch_id: 0,
        replica,
        leader_epoch: 5,
        fetch_offset,
        last_fetched_epoch,
        durable_offset,
    })
}

fn proposals(effects: &[Effect]) -> Vec<Vec<NodeId>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ProposeIsr(p) => Some(p.isr.clone()),
            _ => None,
        })
        .collect()
}

fn answers(effects: &[Effect]) -> Vec<(NodeId, FetchBody)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AnswerFetch { to, response } => Some((*to, response.body.clone())),
            _ => None,
        })
        .collect()
}

fn high_watermarks(effects: &[Effect]) -> Vec<Offset> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::HighWatermarkAdvanced { high_watermark } => Some(*high_watermark),
            _ => None,
        })
        .collect()
}

// ---- the log picture ----

#[test]
fn end_of_epoch_answers_like_offset_for_leader_epoch() {
    let log = log(&[(1, 0), (3, 5), (4, 9)], 12, 12);
    assert_eq!(log.end_of_epoch(1), (1, 5));
    assert_eq!(log.end_of_epoch(2), (1, 5), "the largest epoch <= 2 is 1");
    assert_eq!(log.end_of_epoch(3), (3, 9));
    assert_eq!(
        log.end_of_epoch(4),
        (4, 12),
        "the last epoch ends at the log end"
    );
    assert_eq!(log.end_of_epoch(9), (4, 12));
    assert_eq!(log.end_of_epoch(0), (NO_EPOCH, 0), "older than every epoch");
    assert_eq!(LocalLog::empty().end_of_epoch(3), (NO_EPOCH, 0));
    assert_eq!(LocalLog::empty().last_epoch(), NO_EPOCH);
}

#[test]
fn the_log_picture_is_validated() {
    assert!(
        LocalLog::new(vec![(2, 0), (1, 3)], 5, 5).is_err(),
        "epochs must increase"
    );
    assert!(
        LocalLog::new(vec![(1, 0), (2, 0)], 5, 5).is_err(),
        "starts must increase"
    );
    assert!(
        LocalLog::new(vec![(1, 5)], 5, 5).is_err(),
        "an epoch needs a record"
    );
    assert!(
        LocalLog::new(vec![(1, 0)], 5, 6).is_err(),
        "durable beyond end"
    );
    assert!(LocalLog::new(vec![], -1, 0).is_err());
}

#[test]
fn ranges_cut_at_epoch_boundaries_and_truncation_drops_epochs() {
    let mut log = log(&[(1, 0), (3, 5), (4, 9)], 12, 10);
    assert_eq!(
        log.ranges(3, 10),
        vec![
            RecordRange {
                epoch: 1,
                start: 3,
                end: 5
            },
            RecordRange {
                epoch: 3,
                start: 5,
                end: 9
            },
            RecordRange {
                epoch: 4,
                start: 9,
                end: 10
            },
        ]
    );
    assert_eq!(log.ranges(12, 20), vec![]);
    log.truncate_to(9);
    assert_eq!(log.epochs(), &[(1, 0), (3, 5)]);
    assert_eq!((log.end_offset(), log.durable_offset()), (9, 9));
    log.truncate_to(6);
    assert_eq!(log.epochs(), &[(1, 0), (3, 5)]);
    assert!(
        log.append(RecordRange {
            epoch: 2,
            start: 6,
            end: 7
        })
        .is_err(),
        "older epoch"
    );
    assert!(
        log.append(RecordRange {
            epoch: 3,
            start: 7,
            end: 8
        })
        .is_err(),
        "a gap"
    );
    assert!(
        log.append(RecordRange {
            epoch: 6,
            start: 6,
            end: 6
        })
        .is_err(),
        "empty"
    );
    log.append(RecordRange {
        epoch: 6,
        start: 6,
        end: 8,
    })
    .expect("fits");
    assert_eq!(log.epochs(), &[(1, 0), (3, 5), (6, 6)]);
}

// ---- the high watermark ----

#[test]
fn high_watermark_is_the_minimum_durable_offset_over_the_isr() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2, 3]);
    assert_eq!(l.high_watermark(), 0);
    let effects = step(&mut l, fetch(2, 10, 4, 10));
    assert!(
        high_watermarks(&effects).is_empty(),
        "node 3 has not reported yet"
    );
    let effects = step(&mut l, fetch(3, 10, 4, 6));
    assert_eq!(
        high_watermarks(&effects),
        vec![6],
        "node 3 has 10 but fsync'd only 6"
    );
    assert!(effects.contains(&Effect::CompleteProduces {
        upto: 6,
        outcome: ProduceOutcome::Acknowledged
    }));
    step(&mut l, fetch(3, 10, 4, 10));
    assert_eq!(l.high_watermark(), 10);
}

#[test]
fn the_leaders_own_durable_offset_counts_and_caps() {
    let mut l = leader(log(&[(4, 0)], 10, 4), 0, &[1, 2, 3]);
    step(&mut l, fetch(2, 10, 4, 10));
    step(&mut l, fetch(3, 10, 4, 10));
    assert_eq!(l.high_watermark(), 4, "the leader fsync'd only 4");
    let effects = step(&mut l, Input::LocalDurable { offset: 10 });
    assert_eq!(high_watermarks(&effects), vec![10]);
}

#[test]
fn high_watermark_never_goes_backwards() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    step(&mut l, fetch(2, 10, 4, 10));
    assert_eq!(l.high_watermark(), 10);
    // A fetch reordered behind the newer one reports less.
    let effects = step(&mut l, fetch(2, 7, 4, 7));
    assert!(high_watermarks(&effects).is_empty());
    assert_eq!(l.high_watermark(), 10);
}

#[test]
fn a_new_leader_hides_its_high_watermark_until_its_epoch_start() {
    // Became leader with a checkpointed high watermark of 3 at log end 10.
    let mut l = leader(log(&[(4, 0)], 10, 10), 3, &[1, 2, 3]);
    assert_eq!(l.high_watermark(), 3);
    assert_eq!(l.consumer_high_watermark(), None);
    step(&mut l, fetch(2, 10, 4, 10));
    step(&mut l, fetch(3, 8, 4, 8));
    assert_eq!(l.high_watermark(), 8);
    assert_eq!(
        l.consumer_high_watermark(),
        None,
        "8 is below the epoch start 10"
    );
    step(&mut l, fetch(3, 10, 4, 10));
    assert_eq!(l.consumer_high_watermark(), Some(10));
}

#[test]
fn a_diverging_follower_does_not_count() {
    let mut l = leader(log(&[(2, 0), (4, 6)], 10, 10), 0, &[1, 2]);
    // Node 2 claims epoch 3 up to 9: the leader has no epoch 3; epoch 2 ends at 6.
    let effects = step(&mut l, fetch(2, 9, 3, 9));
    assert_eq!(
        answers(&effects),
        vec![(
            2,
            FetchBody::Diverging {
                epoch: 2,
                end_offset: 6
            }
        )]
    );
    assert_eq!(l.high_watermark(), 0, "its offsets name other records");
}

// ---- parked fetches ----

#[test]
fn a_caught_up_fetch_is_parked_until_records_or_its_time() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    let effects = step(&mut l, fetch(2, 10, 4, 10));
    assert!(answers(&effects).is_empty(), "parked");
    let effects = step(
        &mut l,
        Input::LocalAppended {
            end_offset: 13,
            epoch: 5,
        },
    );
    assert_eq!(
        answers(&effects),
        vec![(
            2,
            FetchBody::Records(vec![RecordRange {
                epoch: 5,
                start: 10,
                end: 13
            }])
        )]
    );
    step(&mut l, fetch(2, 13, 5, 13));
    assert!(answers(&tick(&mut l, NOW + 50)).is_empty());
    assert_eq!(
        answers(&tick(&mut l, NOW + 100)),
        vec![(2, FetchBody::Records(vec![]))]
    );
}

#[test]
fn a_newer_fetch_replaces_the_parked_one() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    step(&mut l, fetch(2, 10, 4, 8));
    let Input::FollowerFetch(mut newer) = fetch(2, 10, 4, 10) else {
        unreachable!()
    };
    newer.fetch_id = 7;
    step(&mut l, Input::FollowerFetch(newer));
    let effects = step(
        &mut l,
        Input::LocalAppended {
            end_offset: 11,
            epoch: 5,
        },
    );
    let ids: Vec<u64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::AnswerFetch { response, .. } => Some(response.fetch_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![7], "only the latest fetch is answered");
}

#[test]
fn fetches_from_other_epochs_or_nodes_are_refused() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    let with = |epoch: LeaderEpoch, replica: NodeId| {
        Input::FollowerFetch(FetchRequest {
            fetch_id: 0,
            replica,
            leader_epoch: epoch,
            fetch_offset: 0,
            last_fetched_epoch: NO_EPOCH,
            durable_offset: 0,
        })
    };
    let refusal = |effects: Vec<Effect>| answers(&effects).pop().map(|(_, body)| body);
    assert_eq!(
        refusal(step(&mut l, with(4, 2))),
        Some(FetchBody::Refused(FetchRefusal::FencedLeaderEpoch))
    );
    assert_eq!(
        refusal(step(&mut l, with(6, 2))),
        Some(FetchBody::Refused(FetchRefusal::UnknownLeaderEpoch))
    );
    assert_eq!(
        refusal(step(&mut l, with(5, 9))),
        Some(FetchBody::Refused(FetchRefusal::NotAReplica))
    );
    let mut f = PartitionReplica::new(2, config(), LocalLog::empty(), 0, NOW);
    step(&mut f, Input::Metadata(record(Some(1), 5, &[1, 2], 10)));
    assert_eq!(
        refusal(step(&mut f, with(5, 3))),
        Some(FetchBody::Refused(FetchRefusal::NotLeader))
    );
}

// ---- ISR shrink ----

#[test]
fn a_follower_lagging_longer_than_the_lag_time_is_proposed_out() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2, 3]);
    for now in (NOW..=NOW + 1_000).step_by(100) {
        tick(&mut l, now);
        step(&mut l, fetch(2, 10, 4, 10)); // node 2 keeps up, node 3 is silent
        assert!(proposals(&tick(&mut l, now)).is_empty(), "not yet at {now}");
    }
    let effects = tick(&mut l, NOW + 1_001);
    assert_eq!(proposals(&effects), vec![vec![1, 2]]);
    let Some(Effect::ProposeIsr(proposal)) =
        effects.iter().find(|e| matches!(e, Effect::ProposeIsr(_)))
    else {
        unreachable!()
    };
    assert_eq!(
        (
            proposal.leader,
            proposal.leader_epoch,
            proposal.partition_epoch
        ),
        (1, 5, 10)
    );
}

#[test]
fn a_follower_keeping_up_under_load_stays_in() {
    // Every fetch reports durable what the leader had two fetches earlier:
    // never equal to the leader's end, yet caught up.
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    let mut ends = vec![10, 10];
    for round in 1..=40u64 {
        let now = NOW + round * 100;
        tick(&mut l, now);
        let end = 10 + round as i64 * 5;
        step(
            &mut l,
            Input::LocalAppended {
                end_offset: end,
                epoch: 5,
            },
        );
        step(&mut l, Input::LocalDurable { offset: end });
        let durable = ends[ends.len() - 2];
        let effects = step(
            &mut l,
            fetch(
                2,
                ends[ends.len() - 1],
                if round == 1 { 4 } else { 5 },
                durable,
            ),
        );
        assert!(proposals(&effects).is_empty(), "round {round}");
        assert!(proposals(&tick(&mut l, now)).is_empty(), "round {round}");
        ends.push(end);
    }
}

#[test]
fn a_follower_whose_fsyncs_stall_is_proposed_out() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2]);
    let mut proposed = Vec::new();
    for round in 1..=12u64 {
        let now = NOW + round * 100;
        let mut effects = tick(&mut l, now);
        let end = 10 + round as i64;
        step(
            &mut l,
            Input::LocalAppended {
                end_offset: end,
                epoch: 5,
            },
        );
        // Fetching everything, durable stuck at 10.
        effects.extend(step(
            &mut l,
            fetch(2, end - 1, if round == 1 { 4 } else { 5 }, 10),
        ));
        for isr in proposals(&effects) {
            proposed.push((round, isr));
        }
    }
    assert_eq!(proposed, vec![(11, vec![1])], "out once 1000 ms passed");
}

#[test]
fn a_removal_counts_for_the_high_watermark_only_once_committed() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 0, &[1, 2, 3]);
    step(&mut l, fetch(2, 10, 4, 10));
    step(&mut l, fetch(3, 5, 4, 5));
    assert_eq!(l.high_watermark(), 5);
    for now in (NOW..=NOW + 1_000).step_by(100) {
        tick(&mut l, now);
        step(&mut l, fetch(2, 10, 4, 10));
    }
    assert_eq!(proposals(&tick(&mut l, NOW + 1_001)), vec![vec![1, 2]]);
    step(&mut l, fetch(2, 10, 4, 10));
    assert_eq!(
        l.high_watermark(),
        5,
        "node 3 is still in the committed ISR"
    );
    let effects = step(&mut l, Input::Metadata(record(Some(1), 5, &[1, 2], 11)));
    assert_eq!(high_watermarks(&effects), vec![10]);
    assert_eq!(l.isr(), Some(&[1, 2][..]));
}

// ---- ISR expand ----

#[test]
fn a_replica_joins_once_durable_past_the_high_watermark_and_epoch_start() {
    // Epoch 5 starts at 10; the committed offset is 8.
    let mut l = leader(log(&[(4, 0)], 10, 10), 8, &[1, 2]);
    step(
        &mut l,
        Input::LocalAppended {
            end_offset: 14,
            epoch: 5,
        },
    );
    step(&mut l, Input::LocalDurable { offset: 14 });
    step(&mut l, fetch(2, 12, 5, 12));
    assert_eq!(l.high_watermark(), 12);
    let effects = step(&mut l, fetch(3, 12, 5, 11));
    assert!(
        proposals(&effects).is_empty(),
        "durable 11 < high watermark 12"
    );
    let effects = step(&mut l, fetch(3, 14, 5, 12));
    assert_eq!(proposals(&effects), vec![vec![1, 2, 3]]);

    let mut l = leader(log(&[(4, 0)], 10, 10), 8, &[1, 2]);
    let effects = step(&mut l, fetch(3, 9, 4, 9));
    assert!(
        proposals(&effects).is_empty(),
        "below the epoch start 10, though past 8"
    );
    let effects = step(&mut l, fetch(3, 10, 4, 10));
    assert_eq!(proposals(&effects), vec![vec![1, 2, 3]]);
}

#[test]
fn a_pending_addition_counts_for_the_high_watermark() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    step(&mut l, fetch(2, 10, 4, 10));
    step(&mut l, fetch(3, 10, 4, 10));
    assert_eq!(l.high_watermark(), 10);
    step(
        &mut l,
        Input::LocalAppended {
            end_offset: 20,
            epoch: 5,
        },
    );
    step(&mut l, Input::LocalDurable { offset: 20 });
    step(&mut l, fetch(2, 20, 5, 20));
    assert_eq!(l.high_watermark(), 10, "node 3 is being added and has 10");
    step(&mut l, fetch(3, 20, 5, 20));
    assert_eq!(l.high_watermark(), 20);
}

#[test]
fn one_proposal_at_a_time_retried_and_dropped_on_rejection() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    assert_eq!(
        proposals(&step(&mut l, fetch(3, 10, 4, 10))),
        vec![vec![1, 2, 3]]
    );
    tick(&mut l, NOW + 1_100); // node 2 now lags too, but one is in flight
    let effects = tick(&mut l, NOW + 1_100);
    assert!(proposals(&effects).is_empty());
    // No answer for isr_retry_ms: sent again, unchanged.
    let effects = tick(&mut l, NOW + 1_100 + 300);
    assert_eq!(proposals(&effects), vec![vec![1, 2, 3]]);
    // Rejected: dropped; recomputed only after the backoff.
    step(
        &mut l,
        Input::IsrRejected {
            leader_epoch: 5,
            partition_epoch: 10,
        },
    );
    assert!(proposals(&tick(&mut l, NOW + 1_500)).is_empty());
    let effects = tick(&mut l, NOW + 1_700);
    assert_eq!(
        proposals(&effects),
        vec![vec![1]],
        "both followers silent for too long"
    );
}

#[test]
fn a_commit_resolves_the_pending_proposal() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    assert_eq!(
        proposals(&step(&mut l, fetch(3, 10, 4, 10))),
        vec![vec![1, 2, 3]]
    );
    step(&mut l, Input::Metadata(record(Some(1), 5, &[1, 2, 3], 11)));
    assert_eq!(l.isr(), Some(&[1, 2, 3][..]));
    // A duplicate or older record changes nothing.
    step(&mut l, Input::Metadata(record(Some(1), 5, &[1, 2], 10)));
    assert_eq!(l.isr(), Some(&[1, 2, 3][..]));
}

// ---- produces ----

#[test]
fn acks_all_is_refused_before_appending_when_the_isr_is_too_small() {
    let l = leader(log(&[(4, 0)], 10, 10), 10, &[1]);
    assert_eq!(
        l.admit_produce(Acks::All),
        Err(ProduceRefusal::NotEnoughReplicas)
    );
    assert_eq!(l.admit_produce(Acks::Leader), Ok(5));
    let l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    assert_eq!(l.admit_produce(Acks::All), Ok(5));
    let f = PartitionReplica::new(2, config(), LocalLog::empty(), 0, NOW);
    assert_eq!(
        f.admit_produce(Acks::Leader),
        Err(ProduceRefusal::NotLeaderOrFollower)
    );
}

#[test]
fn acks_all_completes_at_the_high_watermark_or_fails_after_a_shrink() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    step(&mut l, fetch(2, 10, 4, 10));
    step(
        &mut l,
        Input::LocalAppended {
            end_offset: 15,
            epoch: 5,
        },
    );
    step(&mut l, Input::LocalDurable { offset: 15 });
    let effects = step(&mut l, fetch(2, 15, 5, 15));
    assert!(effects.contains(&Effect::CompleteProduces {
        upto: 15,
        outcome: ProduceOutcome::Acknowledged
    }));
    // The next produce waits; node 2 falls out; committing makes it pass
    // the high watermark with an ISR of 1 < 2.
    step(
        &mut l,
        Input::LocalAppended {
            end_offset: 18,
            epoch: 5,
        },
    );
    step(&mut l, Input::LocalDurable { offset: 18 });
    let effects = tick(&mut l, NOW + 1_100);
    assert_eq!(proposals(&effects), vec![vec![1]]);
    let effects = step(&mut l, Input::Metadata(record(Some(1), 5, &[1], 11)));
    assert!(effects.contains(&Effect::CompleteProduces {
        upto: 18,
        outcome: ProduceOutcome::NotEnoughReplicasAfterAppend
    }));
}

#[test]
fn a_leader_that_steps_down_fails_its_waiting_produces() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    let effects = step(&mut l, Input::Metadata(record(Some(2), 6, &[2], 11)));
    assert_eq!(
        effects[0],
        Effect::FailProduces {
            error: ProduceRefusal::NotLeaderOrFollower
        }
    );
    assert_eq!(l.following(), Some(2));
    assert!(matches!(effects[1], Effect::SendFetch { to: 2, .. }));
}

// ---- metadata ----

#[test]
fn stale_bad_or_reused_metadata_is_not_taken() {
    let mut l = leader(log(&[(4, 0)], 10, 10), 10, &[1, 2]);
    assert!(step(&mut l, Input::Metadata(record(Some(2), 4, &[2], 20))).is_empty());
    assert!(l.is_leader());
    let mut out = Vec::new();
    let bad = record(Some(3), 6, &[1, 2], 11);
    assert_eq!(
        l.handle(Input::Metadata(bad), &mut out),
        Err(InputError::MalformedRecord)
    );
    // A restarted node told to lead an epoch its log already has.
    let mut r = PartitionReplica::new(1, config(), log(&[(4, 0), (5, 8)], 10, 10), 0, NOW);
    assert!(matches!(
        r.handle(Input::Metadata(record(Some(1), 5, &[1, 2], 10)), &mut out),
        Err(InputError::EpochNotNew {
            epoch: 5,
            last_epoch: 5
        })
    ));
    assert!(!r.is_leader());
    // The same process reopening the log it led in epoch 5 may lead it
    // again; only that epoch, and only once.
    let mut reopened = PartitionReplica::new(1, config(), log(&[(4, 0), (5, 8)], 10, 10), 0, NOW);
    reopened.resume_leadership_of(5);
    assert!(reopened
        .handle(Input::Metadata(record(Some(1), 5, &[1, 2], 10)), &mut out)
        .is_ok());
    assert!(reopened.is_leader());
    let mut other = PartitionReplica::new(1, config(), log(&[(4, 0), (5, 8)], 10, 10), 0, NOW);
    other.resume_leadership_of(4);
    assert!(other
        .handle(Input::Metadata(record(Some(1), 5, &[1, 2], 10)), &mut out)
        .is_err());
    // Taken out of the replicas: idle.
    let mut moved = record(Some(2), 6, &[2], 11);
    moved.replicas = vec![2, 3];
    step(&mut l, Input::Metadata(moved));
    assert!(!l.is_leader() && l.following().is_none());
}

// ---- the follower ----

fn follower(log: LocalLog) -> (PartitionReplica, FetchRequest) {
    let mut f = PartitionReplica::new(2, config(), log, 0, NOW);
    let effects = step(&mut f, Input::Metadata(record(Some(1), 5, &[1, 2], 10)));
    let [Effect::SendFetch { to: 1, request }] = &effects[..] else {
        panic!("a follower fetches at once: {effects:?}")
    };
    (f, request.clone())
}

fn answer_to(request: &FetchRequest, body: FetchBody, high_watermark: Offset) -> FetchResponse {
    FetchResponse {
        fetch_id: request.fetch_id,
        leader: 1,
        leader_epoch: 5,
        fetch_offset: request.fetch_offset,
        last_fetched_epoch: request.last_fetched_epoch,
        high_watermark,
        body,
    }
}

#[test]
fn a_follower_appends_the_answer_and_fetches_again() {
    let (mut f, request) = follower(log(&[(4, 0)], 10, 10));
    assert_eq!(
        (
            request.fetch_offset,
            request.last_fetched_epoch,
            request.durable_offset,
            request.leader_epoch
        ),
        (10, 4, 10, 5)
    );
    let ranges = vec![RecordRange {
        epoch: 5,
        start: 10,
        end: 12,
    }];
    let effects = step(
        &mut f,
        Input::FetchAnswer(answer_to(&request, FetchBody::Records(ranges.clone()), 11)),
    );
    assert_eq!(effects[0], Effect::Append { ranges });
    assert_eq!(
        effects[1],
        Effect::HighWatermarkAdvanced { high_watermark: 11 }
    );
    let Effect::SendFetch { request: next, .. } = &effects[2] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (
            next.fetch_offset,
            next.last_fetched_epoch,
            next.durable_offset
        ),
        (12, 5, 10)
    );
    // The fsync completes: reported at once, by a new fetch.
    let effects = step(&mut f, Input::LocalDurable { offset: 12 });
    let [Effect::SendFetch {
        request: durable, ..
    }] = &effects[..]
    else {
        panic!("{effects:?}")
    };
    assert_eq!(durable.durable_offset, 12);
    assert_ne!(durable.fetch_id, next.fetch_id);
}

#[test]
fn a_follower_ignores_stale_foreign_and_superseded_answers() {
    let (mut f, request) = follower(log(&[(4, 0)], 10, 10));
    let records = FetchBody::Records(vec![RecordRange {
        epoch: 4,
        start: 10,
        end: 11,
    }]);
    let mut stale = answer_to(&request, records.clone(), 10);
    stale.leader_epoch = 4;
    assert!(
        step(&mut f, Input::FetchAnswer(stale)).is_empty(),
        "a stale epoch"
    );
    let mut foreign = answer_to(&request, records.clone(), 10);
    foreign.leader = 3;
    assert!(
        step(&mut f, Input::FetchAnswer(foreign)).is_empty(),
        "not the leader"
    );
    let mut other = answer_to(&request, records.clone(), 10);
    other.fetch_id += 100;
    assert!(
        step(&mut f, Input::FetchAnswer(other)).is_empty(),
        "not the awaited fetch"
    );
    // An answer from a newer epoch than the follower knows.
    let mut newer = answer_to(&request, records, 10);
    newer.leader_epoch = 6;
    assert!(step(&mut f, Input::FetchAnswer(newer)).is_empty());
    assert_eq!(f.log().end_offset(), 10);
}

#[test]
fn a_follower_refuses_records_that_do_not_continue_its_log() {
    let (mut f, request) = follower(log(&[(4, 0)], 10, 10));
    let mut out = Vec::new();
    let gap = FetchBody::Records(vec![RecordRange {
        epoch: 5,
        start: 11,
        end: 12,
    }]);
    assert_eq!(
        f.handle(Input::FetchAnswer(answer_to(&request, gap, 10)), &mut out),
        Err(InputError::MalformedAnswer)
    );
    let (mut f, request) = follower(log(&[(4, 0)], 10, 10));
    let future = FetchBody::Records(vec![RecordRange {
        epoch: 6,
        start: 10,
        end: 12,
    }]);
    assert_eq!(
        f.handle(
            Input::FetchAnswer(answer_to(&request, future, 10)),
            &mut out
        ),
        Err(InputError::MalformedAnswer),
        "records from an epoch after the one followed"
    );
    assert_eq!(f.log().end_offset(), 10);
    // It retries after the backoff.
    assert!(tick(&mut f, NOW + 10).is_empty());
    assert!(matches!(
        tick(&mut f, NOW + 50)[..],
        [Effect::SendFetch { .. }]
    ));
}

#[test]
fn a_follower_refetches_after_a_timeout_or_a_refusal() {
    let (mut f, request) = follower(LocalLog::empty());
    assert!(tick(&mut f, NOW + 499).is_empty());
    let effects = tick(&mut f, NOW + 500);
    let [Effect::SendFetch { request: again, .. }] = &effects[..] else {
        panic!("{effects:?}")
    };
    assert_ne!(again.fetch_id, request.fetch_id);
    let refused = answer_to(again, FetchBody::Refused(FetchRefusal::NotLeader), 0);
    assert!(step(&mut f, Input::FetchAnswer(refused)).is_empty());
    assert!(tick(&mut f, NOW + 520).is_empty());
    assert_eq!(tick(&mut f, NOW + 550).len(), 1);
}

#[test]
fn a_divergence_answer_truncates_the_follower() {
    let (mut f, request) = follower(log(&[(2, 0), (3, 6)], 12, 12));
    let effects = step(
        &mut f,
        Input::FetchAnswer(answer_to(
            &request,
            FetchBody::Diverging {
                epoch: 2,
                end_offset: 8,
            },
            5,
        )),
    );
    // Its epoch 2 ends at 6, the leader's at 8: truncate to 6.
    assert_eq!(effects[0], Effect::TruncateTo { offset: 6 });
    let Effect::SendFetch { request: next, .. } = &effects[1] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (
            next.fetch_offset,
            next.last_fetched_epoch,
            next.durable_offset
        ),
        (6, 2, 6)
    );
    assert_eq!(f.log().epochs(), &[(2, 0)]);
}

#[test]
fn a_divergence_that_would_not_shorten_the_log_is_refused() {
    let (mut f, request) = follower(log(&[(2, 0)], 6, 6));
    let mut out = Vec::new();
    let useless = FetchBody::Diverging {
        epoch: 2,
        end_offset: 9,
    };
    assert!(matches!(
        f.handle(
            Input::FetchAnswer(answer_to(&request, useless, 0)),
            &mut out
        ),
        Err(InputError::UselessDivergence { .. })
    ));
    assert_eq!(f.log().end_offset(), 6);
}

// ---- divergence end to end: a leader and a follower pumped to quiet ----

/// Runs leader node 1 and follower node 2 (replicas 1, 2; epoch 5 for
/// both) until no message is left; the follower's appends become durable
/// at once. Returns the truncations the follower made.
fn pump(
    leader_log: LocalLog,
    follower_log: LocalLog,
) -> (PartitionReplica, PartitionReplica, Vec<Offset>) {
    let two = |leader| PartitionRecord {
        replicas: vec![1, 2],
        isr: vec![1, 2],
        leader: Some(leader),
        leader_epoch: 5,
        partition_epoch: 1,
    };
    let mut l = PartitionReplica::new(1, config(), leader_log, 0, NOW);
    let mut f = PartitionReplica::new(2, config(), follower_log, 0, NOW);
    step(&mut l, Input::Metadata(two(1)));
    let mut to_follower = Vec::new();
    let mut to_leader: Vec<Input> = step(&mut f, Input::Metadata(two(1)))
        .into_iter()
        .filter_map(|e| match e {
            Effect::SendFetch { request, .. } => Some(Input::FollowerFetch(request)),
            _ => None,
        })
        .collect();
    let mut truncations = Vec::new();
    for _ in 0..100 {
        for input in to_leader.drain(..) {
            for effect in step(&mut l, input) {
                if let Effect::AnswerFetch { response, .. } = effect {
                    to_follower.push(Input::FetchAnswer(response));
                }
            }
        }
        let mut effects = Vec::new();
        for input in to_follower.drain(..) {
            effects.extend(step(&mut f, input));
        }
        while let Some(effect) = effects.pop() {
            match effect {
                Effect::SendFetch { request, .. } => to_leader.push(Input::FollowerFetch(request)),
                Effect::TruncateTo { offset } => truncations.push(offset),
                Effect::Append { .. } => {
                    let end = f.log().end_offset();
                    effects.extend(step(&mut f, Input::LocalDurable { offset: end }));
                }
                _ => {}
            }
        }
        if to_leader.is_empty() && to_follower.is_empty() {
            break;
        }
    }
    (l, f, truncations)
}

#[test]
fn kip_101_a_matching_log_is_not_truncated() {
    // Scenario 1: the follower restarted with both records; truncating to
    // its old high watermark would have lost m2, asking by epoch does not.
    let (l, f, truncations) = pump(log(&[(0, 0)], 2, 2), log(&[(0, 0)], 2, 2));
    assert!(truncations.is_empty());
    assert_eq!(f.log().end_offset(), 2);
    assert_eq!(l.high_watermark(), 2);
}

#[test]
fn kip_101_divergent_logs_converge_on_the_leaders() {
    // Scenario 2: A had m1 m2 in epoch 0, B only m1; B led epoch 1 and
    // wrote m3 at offset 1. A, now following B, must drop its m2.
    let leader_b = log(&[(0, 0), (1, 1)], 2, 2);
    let follower_a = log(&[(0, 0)], 2, 2);
    let (l, f, truncations) = pump(leader_b, follower_a);
    assert_eq!(truncations, vec![1]);
    assert_eq!(f.log().epochs(), l.log().epochs());
    assert_eq!(f.log().end_offset(), 2);
}

#[test]
fn kip_279_a_follower_with_an_epoch_the_leader_never_saw() {
    // The follower has epoch 2 (a leader that lost it quickly), the
    // leader went from epoch 1 to 3: one round trip finds offset 1.
    let leader_log = log(&[(1, 0), (3, 2)], 4, 4);
    let follower_log = log(&[(1, 0), (2, 1)], 3, 3);
    let (l, f, truncations) = pump(leader_log, follower_log);
    assert_eq!(truncations, vec![1]);
    assert_eq!(f.log().epochs(), &[(1, 0), (3, 2)]);
    assert_eq!(f.log().end_offset(), 4);
    assert_eq!(l.high_watermark(), 4);
}

#[test]
fn divergence_several_epochs_deep_and_before_every_leader_epoch() {
    // The follower's epochs 2 and 3 are unknown to the leader: its epoch 1
    // ends at 3 there, at 2 here.
    let leader_log = log(&[(1, 0), (4, 3)], 8, 8);
    let follower_log = log(&[(1, 0), (2, 2), (3, 5)], 9, 9);
    let (_, f, truncations) = pump(leader_log.clone(), follower_log);
    assert_eq!(truncations, vec![2]);
    assert_eq!(
        (f.log().epochs(), f.log().end_offset()),
        (leader_log.epochs(), 8)
    );
    // The leader has no epoch as old as the follower's: start over.
    let leader_log = log(&[(4, 0)], 3, 3);
    let (_, f, truncations) = pump(leader_log, log(&[(2, 0)], 6, 6));
    assert_eq!(truncations, vec![0]);
    assert_eq!((f.log().epochs(), f.log().end_offset()), (&[(4, 0)][..], 3));
    // An empty follower just copies.
    let (_, f, truncations) = pump(log(&[(1, 0), (2, 4)], 7, 7), LocalLog::empty());
    assert!(truncations.is_empty());
    assert_eq!(f.log().end_offset(), 7);
}

// ---- the controller's election ----

#[test]
fn election_prefers_replica_order_within_the_live_isr() {
    let current = PartitionRecord {
        replicas: vec![3, 1, 2],
        isr: vec![1, 2, 3],
        leader: Some(1),
        leader_epoch: 7,
        partition_epoch: 20,
    };
    let all = elect_leader(&current, |_| true, false).expect("a leader");
    assert_eq!(all.record.leader, Some(3), "the preferred replica first");
    assert_eq!(
        (all.record.leader_epoch, all.record.partition_epoch),
        (8, 21)
    );
    assert!(!all.unclean);
    let without_3 = elect_leader(&current, |n| n != 3, false).expect("a leader");
    assert_eq!(without_3.record.leader, Some(1));
    assert_eq!(
        without_3.record.isr,
        vec![1, 2],
        "dead members leave the ISR"
    );
}

#[test]
fn election_stays_clean_unless_allowed() {
    let current = PartitionRecord {
        replicas: vec![1, 2, 3],
        isr: vec![1],
        leader: Some(1),
        leader_epoch: 7,
        partition_epoch: 20,
    };
    assert_eq!(elect_leader(&current, |n| n != 1, false), None);
    let unclean = elect_leader(&current, |n| n != 1, true).expect("unclean");
    assert!(unclean.unclean);
    assert_eq!(
        (unclean.record.leader, unclean.record.isr.clone()),
        (Some(2), vec![2])
    );
    assert_eq!(
        elect_leader(&current, |_| false, true),
        None,
        "no one alive"
    );
}

#[test]
fn fencing_moves_leadership_shrinks_the_isr_or_takes_the_partition_offline() {
    let current = record(Some(1), 7, &[1, 2], 20);
    let moved = fence_replica(&current, 1, |_| true, false).expect("a change");
    assert_eq!(
        (moved.leader, moved.isr.clone(), moved.leader_epoch),
        (Some(2), vec![2], 8)
    );
    let shrunk = fence_replica(&current, 2, |_| true, false).expect("a change");
    assert_eq!(
        (shrunk.leader, shrunk.isr.clone(), shrunk.leader_epoch),
        (Some(1), vec![1], 7)
    );
    assert_eq!(
        fence_replica(&current, 3, |_| true, false),
        None,
        "not in the ISR"
    );
    // The last ISR member fenced: offline, the ISR kept for its return.
    let alone = record(Some(1), 7, &[1], 20);
    let down = fence_replica(&alone, 1, |_| true, false).expect("a change");
    assert_eq!(down, offline(&alone));
    assert_eq!(
        (down.leader, down.isr.clone(), down.leader_epoch),
        (None, vec![1], 8)
    );
    // Back, it is elected again from the kept ISR.
    let back = elect_leader(&down, |_| true, false).expect("a leader");
    assert_eq!(back.record.leader, Some(1));
    assert_eq!(
        fence_replica(&record(None, 8, &[1, 2], 21), 2, |_| true, false),
        None
    );
}

// ---- a follower below the leader's log start ----

#[test]
fn a_follower_below_the_leaders_log_start_starts_again_there() {
    let (mut f, request) = follower(log(&[(2, 0)], 6, 6));
    let effects = step(
        &mut f,
        Input::FetchAnswer(answer_to(
            &request,
            FetchBody::OutOfRange { log_start: 20 },
            30,
        )),
    );
    assert_eq!(effects[0], Effect::ResetTo { offset: 20 });
    let Effect::SendFetch { request: next, .. } = &effects[1] else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (
            next.fetch_offset,
            next.last_fetched_epoch,
            next.durable_offset
        ),
        (20, NO_EPOCH, 20)
    );
    assert!(f.log().epochs().is_empty());
    assert_eq!(f.log().end_offset(), 20);
}

#[test]
fn an_out_of_range_answer_the_log_already_reaches_changes_nothing() {
    let (mut f, request) = follower(log(&[(2, 0)], 6, 6));
    let mut out = Vec::new();
    let answer = answer_to(&request, FetchBody::OutOfRange { log_start: 6 }, 6);
    assert!(matches!(
        f.handle(Input::FetchAnswer(answer), &mut out),
        Err(InputError::UselessLogStart { .. })
    ));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(f.log().end_offset(), 6);
}

#[test]
fn a_leader_serves_a_fetch_without_epoch_anywhere_up_to_its_end() {
    let mut l = leader(log(&[(3, 0), (4, 30)], 50, 50), 0, &[1, 2]);
    // A follower reset to start at 20 (this log's start, say).
    let effects = step(&mut l, fetch(2, 20, NO_EPOCH, 20));
    let answered = answers(&effects);
    let [(2, FetchBody::Records(ranges))] = &answered[..] else {
        panic!("{answered:?}")
    };
    assert_eq!(ranges[0].start, 20);
    // Past the end it has nothing to agree with: truncate to the end.
    let effects = step(&mut l, fetch(2, 60, NO_EPOCH, 60));
    assert_eq!(
        answers(&effects),
        vec![(
            2,
            FetchBody::Diverging {
                epoch: NO_EPOCH,
                end_offset: 50
            }
        )]
    );
}

#[test]
fn a_reset_follower_past_the_leaders_end_starts_again_at_the_end() {
    let (mut f, request) = follower(LocalLog::starting_at(60));
    assert_eq!(
        (request.fetch_offset, request.last_fetched_epoch),
        (60, NO_EPOCH)
    );
    let effects = step(
        &mut f,
        Input::FetchAnswer(answer_to(
            &request,
            FetchBody::Diverging {
                epoch: NO_EPOCH,
                end_offset: 50,
            },
            50,
        )),
    );
    assert_eq!(effects[0], Effect::ResetTo { offset: 50 });
    assert_eq!(f.log().end_offset(), 50);
}
