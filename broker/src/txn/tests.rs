//! Unit tests of the transaction coordinator, one rule at a time.

use super::coordinator::{log_partition_for, CONSUMER_OFFSETS_TOPIC};
use super::records;
use super::*;

const TXN: &str = "tx";

/// A coordinator leading the only log partition, with producer ids 100+.
struct Harness {
    coordinator: TxnCoordinator,
    next_request: RequestId,
    /// Appends not yet made durable: (partition, offset, record).
    log: Vec<(i32, i64, records::TxnLogRecord)>,
    durable_below: i64,
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn producer(producer_id: i64, epoch: i16) -> ProducerIdAndEpoch {
    ProducerIdAndEpoch { producer_id, epoch }
}

impl Harness {
    fn new() -> Self {
        let config = TxnConfig {
            log_partitions: 1,
            ..TxnConfig::default()
        };
        let mut harness = Self {
            coordinator: TxnCoordinator::new(config, 1_000),
            next_request: 1,
            log: Vec::new(),
            durable_below: 0,
        };
        harness.input(Input::Load {
            log_partition: 0,
            coordinator_epoch: 1,
            records: Vec::new(),
            end_offset: 0,
            lost_writes: None,
        });
        harness.input(Input::ProducerIds {
            first: 100,
            count: 1000,
        });
        harness
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        self.coordinator
            .handle(input, &mut out)
            .expect("input taken");
        for effect in &out {
            if let Effect::Append {
                log_partition,
                offset,
                record,
            } = effect
            {
                self.log.push((*log_partition, *offset, record.clone()));
            }
        }
        out
    }

    fn request(&mut self, make: impl FnOnce(RequestId) -> Input) -> (RequestId, Vec<Effect>) {
        let request = self.next_request;
        self.next_request += 1;
        (request, self.input(make(request)))
    }

    /// AddPartitionsToTxn for [`TXN`], not made durable.
    fn add_request(
        &mut self,
        who: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
    ) -> (RequestId, Vec<Effect>) {
        self.request(|request| Input::AddPartitions {
            request,
            transactional_id: TXN.into(),
            producer: who,
            partitions: partitions.to_vec(),
        })
    }

    /// Makes every append so far durable.
    fn durable(&mut self) -> Vec<Effect> {
        let below = self.log.last().map_or(0, |(_, offset, _)| offset + 1);
        self.durable_below = below;
        self.input(Input::LogDurable {
            log_partition: 0,
            below_offset: below,
        })
    }

    fn init(
        &mut self,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Result<ProducerIdAndEpoch, TxnError> {
        let (request, now) = self.request(|request| Input::InitProducerId {
            request,
            transactional_id: Some(TXN.into()),
            timeout_ms: 60_000,
            expected,
        });
        let mut effects = now;
        effects.extend(self.durable());
        match answer_of(&effects, request) {
            Some(Response::InitProducerId(result)) => result,
            other => panic!("no InitProducerId answer: {other:?} in {effects:?}"),
        }
    }

    fn add(
        &mut self,
        who: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
    ) -> Result<(), TxnError> {
        let (request, mut effects) = self.add_request(who, partitions);
        effects.extend(self.durable());
        match answer_of(&effects, request) {
            Some(Response::AddPartitions(result)) => result,
            other => panic!("no AddPartitions answer: {other:?}"),
        }
    }

    fn end(
        &mut self,
        who: ProducerIdAndEpoch,
        commit: bool,
    ) -> (Result<(), TxnError>, Vec<Effect>) {
        let (request, mut effects) = self.request(|request| Input::EndTxn {
            request,
            transactional_id: TXN.into(),
            producer: who,
            commit,
        });
        effects.extend(self.durable());
        match answer_of(&effects, request) {
            Some(Response::EndTxn(result)) => (result, effects),
            other => panic!("no EndTxn answer: {other:?}"),
        }
    }

    fn verify(&mut self, who: ProducerIdAndEpoch, partitions: &[TopicPartition]) -> Response {
        let (request, effects) = self.request(|request| Input::VerifyPartitions {
            request,
            transactional_id: TXN.into(),
            producer: who,
            partitions: partitions.to_vec(),
        });
        answer_of(&effects, request).expect("verify answers at once")
    }

    fn markers_written(&mut self, markers: &MarkerRequest) -> Vec<Effect> {
        let mut effects = self.input(Input::MarkersWritten {
            transactional_id: markers.transactional_id.clone(),
            producer: markers.producer,
            coordinator_epoch: markers.coordinator_epoch,
        });
        effects.extend(self.durable());
        effects
    }

    fn state(&self) -> TxnState {
        self.coordinator.metadata(TXN).expect("known").state
    }

    fn stored(&self) -> Vec<StoredRecord> {
        self.log
            .iter()
            .filter(|(_, offset, _)| *offset < self.durable_below)
            .map(|(_, offset, record)| StoredRecord {
                offset: *offset,
                key: record.key.clone(),
                value: record.value.clone(),
            })
            .collect()
    }
}

fn answer_of(effects: &[Effect], wanted: RequestId) -> Option<Response> {
    effects.iter().find_map(|effect| match effect {
        Effect::Answer { request, response } if *request == wanted => Some(response.clone()),
        _ => None,
    })
}

fn markers_of(effects: &[Effect]) -> Vec<MarkerRequest> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::SendMarkers(markers) => Some(markers.clone()),
            _ => None,
        })
        .collect()
}

fn appends_of(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|effect| matches!(effect, Effect::Append { .. }))
        .count()
}

/// A producer with an Ongoing transaction over `t-0`.
fn ongoing() -> (Harness, ProducerIdAndEpoch) {
    let mut harness = Harness::new();
    let me = harness.init(None).expect("init");
    harness.add(me, &[tp("t", 0)]).expect("add");
    (harness, me)
}

#[test]
fn a_new_id_gets_a_fresh_producer_id_at_epoch_0_once_durable() {
    let mut harness = Harness::new();
    let (request, effects) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: Some(TXN.into()),
        timeout_ms: 60_000,
        expected: None,
    });
    assert_eq!(appends_of(&effects), 1);
    assert_eq!(
        answer_of(&effects, request),
        None,
        "answered before durable"
    );
    let effects = harness.durable();
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Ok(producer(100, 0))))
    );
    assert_eq!(harness.state(), TxnState::Empty);
}

#[test]
fn a_state_change_is_invisible_until_durable() {
    let mut harness = Harness::new();
    let me = harness.init(None).expect("init");
    let (_, effects) = harness.add_request(me, &[tp("t", 0)]);
    assert_eq!(appends_of(&effects), 1);
    assert_eq!(harness.state(), TxnState::Empty);
    // Any request meanwhile waits.
    assert_eq!(
        harness.verify(me, &[tp("t", 0)]),
        Response::VerifyPartitions(Err(TxnError::ConcurrentTransactions))
    );
    harness.durable();
    assert_eq!(harness.state(), TxnState::Ongoing);
}

#[test]
fn without_producer_ids_init_answers_load_in_progress_and_asks_for_a_block() {
    let config = TxnConfig {
        log_partitions: 1,
        ..TxnConfig::default()
    };
    let mut coordinator = TxnCoordinator::new(config, 0);
    let mut out = Vec::new();
    let load = Input::Load {
        log_partition: 0,
        coordinator_epoch: 0,
        records: vec![],
        end_offset: 0,
        lost_writes: None,
    };
    coordinator.handle(load, &mut out).expect("load");
    let init = Input::InitProducerId {
        request: 1,
        transactional_id: Some(TXN.into()),
        timeout_ms: 1000,
        expected: None,
    };
    coordinator.handle(init, &mut out).expect("init");
    assert!(out.contains(&Effect::RequestProducerIds));
    assert_eq!(
        answer_of(&out, 1),
        Some(Response::InitProducerId(Err(
            TxnError::CoordinatorLoadInProgress
        )))
    );
}

#[test]
fn the_id_pool_asks_for_more_below_its_low_water_mark_once() {
    let mut harness = Harness::new();
    let effects = harness.input(Input::ProducerIds {
        first: 5000,
        count: 0,
    });
    assert!(!effects.contains(&Effect::RequestProducerIds));
    let mut asked = 0;
    for _ in 0..950 {
        let (_, effects) = harness.request(|request| Input::InitProducerId {
            request,
            transactional_id: None,
            timeout_ms: 1,
            expected: None,
        });
        asked += effects
            .iter()
            .filter(|e| **e == Effect::RequestProducerIds)
            .count();
    }
    assert_eq!(asked, 1, "one request per shortage");
}

#[test]
fn an_idempotent_producer_gets_a_fresh_id_and_nothing_is_stored() {
    let mut harness = Harness::new();
    let (request, effects) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: None,
        timeout_ms: 1,
        expected: None,
    });
    assert_eq!(appends_of(&effects), 0);
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Ok(producer(100, 0))))
    );
}

#[test]
fn a_timeout_above_the_maximum_is_refused() {
    let mut harness = Harness::new();
    let (request, effects) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: Some(TXN.into()),
        timeout_ms: 900_001,
        expected: None,
    });
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Err(
            TxnError::InvalidTransactionTimeout
        )))
    );
}

#[test]
fn an_id_of_a_partition_not_led_here_is_not_coordinator() {
    let mut harness = Harness::new();
    harness.input(Input::Unload { log_partition: 0 });
    assert_eq!(harness.init(None), Err(TxnError::NotCoordinator));
}

#[test]
fn init_at_rest_bumps_the_epoch() {
    let mut harness = Harness::new();
    assert_eq!(harness.init(None), Ok(producer(100, 0)));
    assert_eq!(harness.init(None), Ok(producer(100, 1)));
}

#[test]
fn init_while_ongoing_aborts_with_a_bumped_epoch_and_answers_concurrent() {
    let (mut harness, me) = ongoing();
    let (request, now) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: Some(TXN.into()),
        timeout_ms: 60_000,
        expected: None,
    });
    let mut effects = now;
    effects.extend(harness.durable());
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Err(
            TxnError::ConcurrentTransactions
        )))
    );
    let markers = markers_of(&effects);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].result, ControlType::Abort);
    assert_eq!(markers[0].producer, producer(me.producer_id, me.epoch + 1));
    assert_eq!(markers[0].partitions, vec![tp("t", 0)]);
    // The old producer is fenced from here on.
    assert_eq!(harness.end(me, true).0, Err(TxnError::ProducerFenced));
    // While the markers are written, the retry still waits.
    assert_eq!(harness.init(None), Err(TxnError::ConcurrentTransactions));
    harness.markers_written(&markers[0]);
    assert_eq!(harness.state(), TxnState::CompleteAbort);
    assert_eq!(
        harness.init(None),
        Ok(producer(me.producer_id, me.epoch + 2))
    );
}

#[test]
fn kip_360_the_producers_current_epoch_is_bumped_and_a_retry_gets_the_same_answer() {
    let mut harness = Harness::new();
    let first = harness.init(None).expect("init");
    let bumped = harness.init(Some(first)).expect("recover");
    assert_eq!(bumped, producer(first.producer_id, first.epoch + 1));
    // The answer was lost; the producer asks again with its old epoch.
    assert_eq!(harness.init(Some(first)), Ok(bumped));
}

#[test]
fn kip_360_a_stale_epoch_or_another_producer_id_is_fenced() {
    let mut harness = Harness::new();
    let first = harness.init(None).expect("init");
    let _second = harness.init(None).expect("another producer took over");
    assert_eq!(harness.init(Some(first)), Err(TxnError::ProducerFenced));
    assert_eq!(
        harness.init(Some(producer(999, 0))),
        Err(TxnError::ProducerFenced)
    );
}

/// A harness whose id was loaded at `epoch`.
fn loaded_at_epoch(epoch: i16) -> Harness {
    let mut harness = Harness::new();
    let mut metadata = TxnMetadata::fresh(7, 60_000, 0);
    metadata.producer_epoch = epoch;
    let record = records::encode(TXN, &metadata, 1);
    harness.input(Input::Load {
        log_partition: 0,
        coordinator_epoch: 2,
        records: vec![StoredRecord {
            offset: 0,
            key: record.key,
            value: record.value,
        }],
        end_offset: 1,
        lost_writes: None,
    });
    harness.durable_below = 1;
    harness.log.push((0, 0, records::encode(TXN, &metadata, 1)));
    harness
}

#[test]
fn an_exhausted_epoch_rotates_the_producer_id() {
    let mut harness = loaded_at_epoch(i16::MAX - 1);
    let rotated = harness.init(Some(producer(7, i16::MAX - 1))).expect("init");
    assert_eq!(rotated, producer(100, 0));
    assert_eq!(
        harness
            .coordinator
            .metadata(TXN)
            .map(|m| m.last_producer_id),
        Some(7)
    );
    // The retry of the rotation (old id, exhausted epoch) gets the same.
    assert_eq!(harness.init(Some(producer(7, i16::MAX - 1))), Ok(rotated));
}

#[test]
fn add_partitions_checks_id_then_epoch() {
    let (mut harness, me) = ongoing();
    let other = producer(me.producer_id + 1, me.epoch);
    assert_eq!(
        harness.add(other, &[tp("t", 1)]),
        Err(TxnError::InvalidProducerIdMapping)
    );
    let stale = producer(me.producer_id, me.epoch + 1);
    assert_eq!(
        harness.add(stale, &[tp("t", 1)]),
        Err(TxnError::ProducerFenced)
    );
    let mut unknown = Harness::new();
    assert_eq!(
        unknown.add(me, &[tp("t", 0)]),
        Err(TxnError::InvalidProducerIdMapping)
    );
}

#[test]
fn partitions_already_in_the_transaction_are_answered_without_a_record() {
    let (mut harness, me) = ongoing();
    let (request, effects) = harness.add_request(me, &[tp("t", 0)]);
    assert_eq!(appends_of(&effects), 0);
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::AddPartitions(Ok(())))
    );
}

#[test]
fn the_first_add_starts_the_transaction_clock_and_later_ones_keep_it() {
    let mut harness = Harness::new();
    let me = harness.init(None).expect("init");
    harness.input(Input::Tick { now_ms: 5_000 });
    harness.add(me, &[tp("t", 0)]).expect("add");
    harness.input(Input::Tick { now_ms: 6_000 });
    harness.add(me, &[tp("t", 1)]).expect("add");
    let metadata = harness.coordinator.metadata(TXN).expect("known");
    assert_eq!(metadata.start_timestamp_ms, 5_000);
    assert_eq!(metadata.partitions.len(), 2);
}

#[test]
fn add_offsets_adds_the_groups_offsets_partition() {
    let mut harness = Harness::new();
    let me = harness.init(None).expect("init");
    let (request, mut effects) = harness.request(|request| Input::AddOffsets {
        request,
        transactional_id: TXN.into(),
        producer: me,
        offsets_partition: 3,
    });
    effects.extend(harness.durable());
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::AddOffsets(Ok(())))
    );
    let metadata = harness.coordinator.metadata(TXN).expect("known");
    assert!(metadata.partitions.contains(&tp(CONSUMER_OFFSETS_TOPIC, 3)));
}

#[test]
fn verify_says_which_partitions_are_in_the_ongoing_transaction() {
    let (mut harness, me) = ongoing();
    assert_eq!(
        harness.verify(me, &[tp("t", 0), tp("t", 1)]),
        Response::VerifyPartitions(Ok(vec![
            (tp("t", 0), None),
            (tp("t", 1), Some(TxnError::InvalidTxnState)),
        ]))
    );
    let zombie = producer(me.producer_id, me.epoch - 1);
    assert_eq!(
        harness.verify(zombie, &[tp("t", 0)]),
        Response::VerifyPartitions(Err(TxnError::ProducerFenced))
    );
    assert_eq!(harness.log.len(), 2, "verification writes nothing");
}

#[test]
fn verify_after_the_end_refuses_a_late_write() {
    let (mut harness, me) = ongoing();
    let (_, effects) = harness.end(me, false);
    assert_eq!(
        harness.verify(me, &[tp("t", 0)]),
        Response::VerifyPartitions(Err(TxnError::ConcurrentTransactions))
    );
    harness.markers_written(&markers_of(&effects)[0]);
    assert_eq!(
        harness.verify(me, &[tp("t", 0)]),
        Response::VerifyPartitions(Ok(vec![(tp("t", 0), Some(TxnError::InvalidTxnState))]))
    );
}

#[test]
fn end_txn_commit_is_answered_once_durable_then_markers_then_complete() {
    let (mut harness, me) = ongoing();
    let (request, effects) = harness.request(|request| Input::EndTxn {
        request,
        transactional_id: TXN.into(),
        producer: me,
        commit: true,
    });
    assert_eq!(answer_of(&effects, request), None);
    assert!(
        markers_of(&effects).is_empty(),
        "markers before the decision is durable"
    );
    let effects = harness.durable();
    assert_eq!(answer_of(&effects, request), Some(Response::EndTxn(Ok(()))));
    let markers = markers_of(&effects);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].result, ControlType::Commit);
    assert_eq!(markers[0].coordinator_epoch, 1);
    assert_eq!(harness.state(), TxnState::PrepareCommit);
    // A retry while the markers are written waits.
    assert_eq!(
        harness.end(me, true).0,
        Err(TxnError::ConcurrentTransactions)
    );
    harness.markers_written(&markers[0]);
    assert_eq!(harness.state(), TxnState::CompleteCommit);
    let metadata = harness.coordinator.metadata(TXN).expect("known");
    assert!(metadata.partitions.is_empty());
    // A retry of the finished commit is answered NONE, an abort is not.
    assert_eq!(harness.end(me, true).0, Ok(()));
    assert_eq!(harness.end(me, false).0, Err(TxnError::InvalidTxnState));
}

/// A committed transaction whose CompleteCommit is appended, not durable.
fn completing() -> (Harness, ProducerIdAndEpoch) {
    let (mut harness, me) = ongoing();
    let (_, effects) = harness.end(me, true);
    let markers = markers_of(&effects);
    let effects = harness.input(Input::MarkersWritten {
        transactional_id: TXN.into(),
        producer: markers[0].producer,
        coordinator_epoch: markers[0].coordinator_epoch,
    });
    assert_eq!(appends_of(&effects), 1, "the CompleteCommit record");
    assert_eq!(harness.state(), TxnState::PrepareCommit);
    (harness, me)
}

#[test]
fn the_next_transaction_chains_behind_a_completion_in_flight() {
    let (mut harness, me) = completing();
    let complete_offset = harness.log.last().map(|(_, offset, _)| *offset);
    let (request, effects) = harness.add_request(me, &[tp("t", 1)]);
    // Appended at once, right behind the completion, answered later.
    assert_eq!(appends_of(&effects), 1);
    assert_eq!(
        harness.log.last().map(|(_, offset, _)| *offset),
        complete_offset.map(|offset| offset + 1)
    );
    assert_eq!(answer_of(&effects, request), None);
    // Anything else for the id still waits.
    let (end, effects) = harness.request(|request| Input::EndTxn {
        request,
        transactional_id: TXN.into(),
        producer: me,
        commit: true,
    });
    assert_eq!(
        answer_of(&effects, end),
        Some(Response::EndTxn(Err(TxnError::ConcurrentTransactions)))
    );
    let effects = harness.durable();
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::AddPartitions(Ok(())))
    );
    assert_eq!(harness.state(), TxnState::Ongoing);
    let metadata = harness.coordinator.metadata(TXN).expect("known");
    assert_eq!(metadata.partitions.len(), 1, "only the new transaction's");
    assert_eq!(harness.end(me, false).0, Ok(()));
}

#[test]
fn the_completion_alone_durable_keeps_the_chained_transaction_in_flight() {
    let (mut harness, me) = completing();
    let complete_below = harness.log.last().map_or(0, |(_, offset, _)| offset + 1);
    let (request, _) = harness.request(|request| Input::AddOffsets {
        request,
        transactional_id: TXN.into(),
        producer: me,
        offsets_partition: 3,
    });
    let effects = harness.input(Input::LogDurable {
        log_partition: 0,
        below_offset: complete_below,
    });
    assert_eq!(answer_of(&effects, request), None);
    assert_eq!(harness.state(), TxnState::CompleteCommit);
    // The chained record is still in flight: nothing chains behind it.
    let (second, effects) = harness.add_request(me, &[tp("t", 2)]);
    assert_eq!(appends_of(&effects), 0);
    assert_eq!(
        answer_of(&effects, second),
        Some(Response::AddPartitions(Err(
            TxnError::ConcurrentTransactions
        )))
    );
    let effects = harness.durable();
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::AddOffsets(Ok(())))
    );
    assert_eq!(harness.state(), TxnState::Ongoing);
}

#[test]
fn a_chained_transaction_lost_with_its_partition_is_answered_not_coordinator() {
    let (mut harness, me) = completing();
    let (request, _) = harness.add_request(me, &[tp("t", 1)]);
    let effects = harness.input(Input::AppendFailed {
        log_partition: 0,
        not_leader: true,
    });
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::AddPartitions(Err(TxnError::NotCoordinator)))
    );
}

#[test]
fn a_fenced_or_unknown_producer_does_not_chain() {
    let (mut harness, me) = completing();
    for (who, error) in [
        (
            producer(me.producer_id, me.epoch + 1),
            TxnError::ProducerFenced,
        ),
        (
            producer(me.producer_id + 1, me.epoch),
            TxnError::InvalidProducerIdMapping,
        ),
    ] {
        let (request, effects) = harness.add_request(who, &[tp("t", 1)]);
        assert_eq!(appends_of(&effects), 0);
        assert_eq!(
            answer_of(&effects, request),
            Some(Response::AddPartitions(Err(error)))
        );
    }
}

#[test]
fn end_txn_without_a_transaction_is_invalid_txn_state() {
    let mut harness = Harness::new();
    let me = harness.init(None).expect("init");
    assert_eq!(harness.end(me, true).0, Err(TxnError::InvalidTxnState));
    assert_eq!(harness.end(me, false).0, Err(TxnError::InvalidTxnState));
}

#[test]
fn end_txn_checks_id_then_epoch() {
    let (mut harness, me) = ongoing();
    assert_eq!(
        harness.end(producer(me.producer_id + 1, me.epoch), true).0,
        Err(TxnError::InvalidProducerIdMapping)
    );
    assert_eq!(
        harness.end(producer(me.producer_id, me.epoch + 1), true).0,
        Err(TxnError::ProducerFenced)
    );
}

#[test]
fn a_stale_or_duplicate_markers_report_changes_nothing() {
    let (mut harness, me) = ongoing();
    let (_, effects) = harness.end(me, true);
    let mut markers = markers_of(&effects)[0].clone();
    markers.coordinator_epoch -= 1;
    let effects = harness.markers_written(&markers);
    assert_eq!(appends_of(&effects), 0);
    assert_eq!(harness.state(), TxnState::PrepareCommit);
}

#[test]
fn a_timed_out_transaction_is_aborted_with_the_epoch_bumped() {
    let (mut harness, me) = ongoing();
    let start = harness
        .coordinator
        .metadata(TXN)
        .expect("known")
        .start_timestamp_ms;
    // Not yet: Kafka aborts once start + timeout < now.
    let effects = harness.input(Input::Tick {
        now_ms: start + 60_000,
    });
    assert_eq!(appends_of(&effects), 0);
    let mut effects = harness.input(Input::Tick {
        now_ms: start + 60_001,
    });
    effects.extend(harness.durable());
    let markers = markers_of(&effects);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].result, ControlType::Abort);
    assert_eq!(markers[0].producer.epoch, me.epoch + 1);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Answer { .. })));
    harness.markers_written(&markers[0]);
    assert_eq!(harness.end(me, true).0, Err(TxnError::ProducerFenced));
}

#[test]
fn the_deadline_names_the_timeout() {
    let (harness, _) = ongoing();
    let metadata = harness.coordinator.metadata(TXN).expect("known");
    assert_eq!(
        harness.coordinator.next_deadline_ms(),
        Some(metadata.start_timestamp_ms + 60_001)
    );
}

#[test]
fn an_unused_id_expires_with_a_tombstone() {
    let mut harness = Harness::new();
    harness.init(None).expect("init");
    let expiry = 1_000 + harness.coordinator.config().id_expiration_ms;
    assert_eq!(
        appends_of(&harness.input(Input::Tick { now_ms: expiry - 1 })),
        0
    );
    let effects = harness.input(Input::Tick { now_ms: expiry });
    let tombstone = effects.iter().find_map(|effect| match effect {
        Effect::Append { record, .. } => Some(record.clone()),
        _ => None,
    });
    assert_eq!(tombstone.map(|r| r.value), Some(None));
    assert!(
        harness.coordinator.metadata(TXN).is_some(),
        "gone only once durable"
    );
    harness.durable();
    assert!(harness.coordinator.metadata(TXN).is_none());
}

#[test]
fn a_load_sends_the_markers_of_every_prepared_transaction_again() {
    let (mut harness, me) = ongoing();
    assert_eq!(harness.end(me, false).0, Ok(()));
    let records = harness.stored();
    let end_offset = harness.durable_below;
    let mut fresh = Harness::new();
    let effects = fresh.input(Input::Load {
        log_partition: 0,
        coordinator_epoch: 7,
        records,
        end_offset,
        lost_writes: None,
    });
    let markers = markers_of(&effects);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].result, ControlType::Abort);
    assert_eq!(markers[0].coordinator_epoch, 7);
    assert_eq!(markers[0].producer, me);
    assert_eq!(fresh.state(), TxnState::PrepareAbort);
    assert_eq!(fresh.coordinator.last_load().markers_resent, 1);
}

#[test]
fn a_load_skips_records_that_do_not_decode() {
    let mut harness = Harness::new();
    harness.input(Input::Load {
        log_partition: 0,
        coordinator_epoch: 3,
        records: vec![StoredRecord {
            offset: 0,
            key: bytes::Bytes::from_static(&[0, 9]),
            value: None,
        }],
        end_offset: 1,
        lost_writes: None,
    });
    assert_eq!(harness.coordinator.last_load().malformed, 1);
    assert_eq!(harness.coordinator.last_load().transactional_ids, 0);
}

#[test]
fn a_load_keeps_an_ongoing_transaction_which_times_out_later() {
    let (harness, me) = ongoing();
    let records = harness.stored();
    let mut fresh = Harness::new();
    let effects = fresh.input(Input::Load {
        log_partition: 0,
        coordinator_epoch: 7,
        records,
        end_offset: harness.durable_below,
        lost_writes: None,
    });
    assert!(markers_of(&effects).is_empty());
    assert_eq!(fresh.state(), TxnState::Ongoing);
    assert_eq!(
        fresh.verify(me, &[tp("t", 0)]),
        Response::VerifyPartitions(Ok(vec![(tp("t", 0), None)]))
    );
}

#[test]
fn a_load_after_an_unclean_stop_aborts_the_transactions_whose_data_may_be_lost() {
    let (harness, me) = ongoing();
    let records = harness.stored();
    let load = |lost: &[TopicPartition], began_before_ms: i64| {
        let mut fresh = Harness::new();
        let effects = fresh.input(Input::Load {
            log_partition: 0,
            coordinator_epoch: 7,
            records: records.clone(),
            end_offset: harness.durable_below,
            lost_writes: Some(LostWrites {
                partitions: lost.iter().cloned().collect(),
                began_before_ms,
            }),
        });
        (fresh, effects)
    };
    // The transaction holds t-0, written since its last clean close, and
    // began before this start: aborted with the epoch bumped (the producer
    // is fenced), once the abort is durable the markers go out.
    let (mut fresh, effects) = load(&[tp("other", 3), tp("t", 0)], i64::MAX);
    assert_eq!(fresh.coordinator.last_load().aborted_lost, 1);
    assert!(markers_of(&effects).is_empty(), "not before it is durable");
    let effects = fresh.durable();
    let markers = markers_of(&effects);
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].result, ControlType::Abort);
    assert_eq!(markers[0].producer, producer(me.producer_id, me.epoch + 1));
    assert_eq!(fresh.state(), TxnState::PrepareAbort);
    assert_eq!(fresh.end(me, true).0, Err(TxnError::ProducerFenced));
    // Its partitions were all cleanly closed: it continues.
    let (mut fresh, _) = load(&[tp("t", 1)], i64::MAX);
    assert_eq!(fresh.coordinator.last_load().aborted_lost, 0);
    assert_eq!(fresh.state(), TxnState::Ongoing);
    assert_eq!(fresh.end(me, true).0, Ok(()));
    // Begun after the start (a reload later in the same run): continues.
    let (fresh, _) = load(&[tp("t", 0)], 0);
    assert_eq!(fresh.coordinator.last_load().aborted_lost, 0);
    assert_eq!(fresh.state(), TxnState::Ongoing);
}

#[test]
fn a_load_at_an_older_epoch_is_refused() {
    let mut harness = Harness::new();
    let mut out = Vec::new();
    let stale = Input::Load {
        log_partition: 0,
        coordinator_epoch: 0,
        records: vec![],
        end_offset: 0,
        lost_writes: None,
    };
    assert!(harness.coordinator.handle(stale, &mut out).is_err());
}

#[test]
fn losing_leadership_answers_what_waited_with_not_coordinator() {
    let mut harness = Harness::new();
    let (request, _) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: Some(TXN.into()),
        timeout_ms: 60_000,
        expected: None,
    });
    let effects = harness.input(Input::Unload { log_partition: 0 });
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Err(TxnError::NotCoordinator)))
    );
    assert!(harness.coordinator.metadata(TXN).is_none());
}

#[test]
fn a_failed_append_answers_coordinator_not_available() {
    let mut harness = Harness::new();
    let (request, _) = harness.request(|request| Input::InitProducerId {
        request,
        transactional_id: Some(TXN.into()),
        timeout_ms: 60_000,
        expected: None,
    });
    let effects = harness.input(Input::AppendFailed {
        log_partition: 0,
        not_leader: false,
    });
    assert_eq!(
        answer_of(&effects, request),
        Some(Response::InitProducerId(Err(
            TxnError::CoordinatorNotAvailable
        )))
    );
}

#[test]
fn durability_beyond_the_appends_is_a_driver_bug() {
    let mut harness = Harness::new();
    let mut out = Vec::new();
    let beyond = Input::LogDurable {
        log_partition: 0,
        below_offset: 1,
    };
    assert!(harness.coordinator.handle(beyond, &mut out).is_err());
}

#[test]
fn ids_map_to_partitions_as_kafka_maps_them() {
    // Java: "a".hashCode() == 97, "abc".hashCode() == 96354.
    assert_eq!(log_partition_for("a", 50), 97 % 50);
    assert_eq!(log_partition_for("abc", 50), 96354 % 50);
    // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka's abs gives 0.
    assert_eq!(log_partition_for("polygenelubricants", 50), 0);
    // Negative hashes are made positive: "zzzzzzz".hashCode() == -1549405958... check by value.
    let negative = "zzzzzzzz";
    let mut hash: i32 = 0;
    for unit in negative.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    assert!(hash < 0);
    assert_eq!(log_partition_for(negative, 50), hash.abs() % 50);
}

#[test]
fn error_codes_are_kafkas() {
    assert_eq!(TxnError::ConcurrentTransactions.code(), 51);
    assert_eq!(TxnError::ProducerFenced.code(), 90);
    assert_eq!(TxnError::ProducerFenced.code_for_legacy_client(), 47);
    assert_eq!(TxnError::InvalidTxnState.code(), 48);
    assert_eq!(TxnError::InvalidProducerIdMapping.code(), 49);
    assert_eq!(TxnError::InvalidTransactionTimeout.code(), 50);
    assert_eq!(TxnError::NotCoordinator.code(), 16);
    assert_eq!(TxnError::CoordinatorLoadInProgress.code(), 14);
}

#[test]
fn states_follow_kafkas_transition_table() {
    use TxnState::*;
    assert!(PrepareCommit.may_follow(Ongoing));
    assert!(!PrepareCommit.may_follow(Empty));
    assert!(PrepareAbort.may_follow(PrepareEpochFence));
    assert!(!CompleteCommit.may_follow(PrepareAbort));
    assert!(Ongoing.may_follow(CompleteAbort));
    assert!(!Empty.may_follow(Ongoing));
    for id in 0..8 {
        let state = TxnState::from_id(id).expect("known id");
        assert_eq!(state.id(), id);
    }
    assert_eq!(TxnState::from_id(8), None);
}
