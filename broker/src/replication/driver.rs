//! The replication driver's per-partition half: a [`Replicated`] wraps one
//! [`PartitionReplica`] (the pure machine) on the shard that owns the
//! partition, feeds it inputs and carries out its effects. Effects that
//! need no I/O (the high watermark, completing `acks=all` produces) happen
//! at once, inside [`Replicated::handle`]; the others (answering and
//! sending fetches, appending a leader's records, truncating, proposing an
//! ISR change) are queued in order and carried out by the partition's
//! *pump* task ([`run_pump`]), which is the only writer of a follower's log.
//!
//! The pump reports the log's durable offset to the machine only while its
//! queue is empty: then storage holds exactly what the machine counts
//! (a queued append or truncation would make storage's offset describe
//! other records).
//!
//! Consumers read a leader up to its consumer high watermark and a follower
//! (KIP-392) up to the high watermark it learned from the leader
//! ([`ReadableHighWatermarks`]); fetch long polls wait for either to move.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures::channel::oneshot;
use kafki_net::kafka_protocol::error::ResponseError;
use uuid::Uuid;

use super::machine::{Effect, Input, ProduceOutcome, ProduceRefusal};
use super::messages::{FetchBody, FetchRequest, FetchResponse, IsrProposal, PartitionRecord};
use super::wire::{PartitionAnswer, PartitionFetch, ReplicaPartition};
use super::{Acks, LeaderEpoch, LocalLog, NodeId, Offset, PartitionReplica, ReplicationConfig};
use crate::metrics::FetchPath;
use crate::partition::Partition;
use crate::zerocopy::WirePart;

/// Record bytes one partition's answer carries at most (the first batch
/// goes whole even when larger, as in Kafka).
const ANSWER_BYTES_MAX: u64 = 1 << 20;

/// Work the pump carries out, in order.
enum Work {
    SendFetch {
        to: NodeId,
        request: FetchRequest,
    },
    AnswerFetch {
        to: NodeId,
        response: FetchResponse,
    },
    Append {
        batches: Vec<Bytes>,
    },
    Truncate {
        offset: Offset,
    },
    Reset {
        offset: Offset,
    },
    /// The leader's log start rose to `offset`: move this follower's start
    /// up to it (bounded by what it has and knows committed).
    FollowLogStart {
        offset: Offset,
    },
    ProposeIsr(IsrProposal),
}

/// Where the pump sends what leaves the node, and how it proposes ISR
/// changes (the shard's links and quorum; a trait so the pump can be tested
/// without either).
pub trait ReplicaOutlet {
    /// For an answer to a follower outside the ISR (`Leader`), or a fetch
    /// of this node while it is outside the ISR (`Follower`): `None` if
    /// this node does not throttle the partition on that side, else how
    /// long to wait before sending (zero: now).
    fn throttle_delay(
        &self,
        side: ThrottleSide,
        topic: &str,
        partition: i32,
    ) -> Option<std::time::Duration>;
    /// Record bytes sent (`Leader`) or received (`Follower`) under a
    /// throttle.
    fn throttle_charge(&self, side: ThrottleSide, bytes: usize);
    fn queue_fetch(&self, to: NodeId, fetch: PartitionFetch);
    fn queue_answer(&self, to: NodeId, answer: PartitionAnswer<WirePart>);
    /// Record bytes read for a follower, by how they will reach the socket.
    fn count_answer_bytes(&self, path: FetchPath, bytes: u64);
    /// Proposes `proposal` to the metadata quorum; `on_refused` runs if the
    /// quorum refused it as stale.
    fn propose_isr(
        &self,
        topic: &str,
        partition: i32,
        proposal: IsrProposal,
        on_refused: Box<dyn FnOnce()>,
    );
}

/// Which of Kafka's two replication throttles: `leader.replication.*`
/// (what a leader sends) or `follower.replication.*` (what a follower
/// fetches). Both apply only to replicas outside the ISR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleSide {
    Leader,
    Follower,
}

/// How far consumers may read this replica, by role: at most one is set.
/// A change of either (a role change included) wakes fetch long polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadableHighWatermarks {
    /// Leading, with a high watermark that can be shown.
    pub leader: Option<Offset>,
    /// Following: the high watermark learned from the leader's answers.
    pub follower: Option<Offset>,
}

/// Where an `acks=all` produce's outcome goes (a Kafka error code).
type AckSender = oneshot::Sender<Result<(), i16>>;

/// One replicated partition's machine and the state around it.
pub struct Replicated {
    pub topic: String,
    pub index: i32,
    pub topic_id: Uuid,
    me: NodeId,
    config: ReplicationConfig,
    machine: RefCell<PartitionReplica>,
    /// What consumers may read up to (`None`: not leading, or a new
    /// leader's high watermark still below its epoch start).
    consumer_high_watermark: Cell<Option<Offset>>,
    /// What consumers may read up to on this replica while it follows
    /// (KIP-392; `None` while not following).
    follower_high_watermark: Cell<Option<Offset>>,
    /// `acks=all` produces waiting: (end offset, arrival) → where the
    /// outcome goes (a Kafka error code).
    waiting_acks: RefCell<BTreeMap<(Offset, u64), AckSender>>,
    next_waiter: Cell<u64>,
    work: RefCell<VecDeque<Work>>,
    pump_waker: RefCell<Option<Waker>>,
    /// Fetch long polls waiting for the high watermark to move.
    watchers: RefCell<Vec<Waker>>,
    /// Set when the partition closes: the pump ends.
    stopped: Cell<bool>,
    /// The newest committed record fed in (replayed into a rebuilt machine).
    record: RefCell<Option<PartitionRecord>>,
    /// The highest leader log start this follower has moved its own start
    /// to (or queued that move for).
    leader_log_start_seen: Cell<Offset>,
}

thread_local! {
    /// Per shard thread: the epoch each partition was led in when this
    /// process closed it while leading, so a reopen resumes that leadership
    /// (see `PartitionReplica::resume_leadership_of`).
    static CLOSED_WHILE_LEADING: RefCell<std::collections::HashMap<(String, i32), LeaderEpoch>> =
        RefCell::new(std::collections::HashMap::new());
}

impl Replicated {
    pub fn new(
        topic: String,
        index: i32,
        topic_id: Uuid,
        me: NodeId,
        config: ReplicationConfig,
        log: LocalLog,
        now_ms: u64,
    ) -> Self {
        let mut machine = PartitionReplica::new(me, config.clone(), log, 0, now_ms);
        let resumable =
            CLOSED_WHILE_LEADING.with(|closed| closed.borrow_mut().remove(&(topic.clone(), index)));
        if let Some(epoch) = resumable {
            machine.resume_leadership_of(epoch);
        }
        Self {
            topic,
            index,
            topic_id,
            me,
            machine: RefCell::new(machine),
            config,
            consumer_high_watermark: Cell::new(None),
            follower_high_watermark: Cell::new(None),
            waiting_acks: RefCell::new(BTreeMap::new()),
            next_waiter: Cell::new(0),
            work: RefCell::new(VecDeque::new()),
            pump_waker: RefCell::new(None),
            watchers: RefCell::new(Vec::new()),
            stopped: Cell::new(false),
            record: RefCell::new(None),
            leader_log_start_seen: Cell::new(0),
        }
    }

    pub fn wire_partition(&self) -> ReplicaPartition {
        ReplicaPartition {
            topic_id: self.topic_id,
            partition_index: self.index,
        }
    }

    /// Whether clients may produce to and fetch from it here: it leads and
    /// its high watermark can be shown.
    pub fn serves_clients(&self) -> bool {
        self.consumer_high_watermark.get().is_some()
    }

    /// Whether this replica is outside the ISR the quorum committed (a
    /// follower's machine knows no ISR: the leader's does).
    pub fn outside_committed_isr(&self) -> bool {
        self.record
            .borrow()
            .as_ref()
            .is_some_and(|record| !record.isr.contains(&self.me))
    }

    /// The other replicas of the partition, in-sync ones first (whom to
    /// ask for a copy of a damaged batch).
    pub fn peers_in_sync_first(&self) -> Vec<NodeId> {
        let record = self.record.borrow();
        let Some(record) = record.as_ref() else {
            return Vec::new();
        };
        // The ISR is a subset of the replicas: each node comes once.
        record
            .isr
            .iter()
            .chain(record.replicas.iter().filter(|n| !record.isr.contains(n)))
            .copied()
            .filter(|node| *node != self.me)
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        self.machine.borrow().is_leader()
    }

    /// The high watermark consumers see (the machine's own when it cannot
    /// be shown yet; requests are refused then, see `serves_clients`).
    pub fn high_watermark(&self) -> Offset {
        self.consumer_high_watermark
            .get()
            .unwrap_or_else(|| self.machine.borrow().high_watermark())
    }

    /// The leader epoch to stamp a produce with, or the Kafka error that
    /// refuses it before anything is appended.
    pub fn admit_produce(&self, acks: super::Acks) -> Result<LeaderEpoch, i16> {
        self.machine
            .borrow()
            .admit_produce(acks)
            .map_err(refusal_code)
    }

    /// The leader's own append reached the log, ending at `end_offset`.
    pub fn local_appended(&self, end_offset: Offset, epoch: LeaderEpoch, now_ms: u64) {
        self.handle(Input::Tick { now_ms }, Vec::new());
        self.handle(Input::LocalAppended { end_offset, epoch }, Vec::new());
    }

    /// Waits until the records below `end_offset` are committed (or the
    /// outcome says why not, as a Kafka error code).
    pub async fn wait_acknowledged(&self, end_offset: Offset) -> Result<(), i16> {
        if !self.machine.borrow().is_leader() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        if self.machine.borrow().high_watermark() >= end_offset {
            return Ok(());
        }
        let (sender, receiver) = oneshot::channel();
        let key = (end_offset, self.next_waiter.get());
        self.next_waiter.set(key.1.wrapping_add(1));
        self.waiting_acks.borrow_mut().insert(key, sender);
        receiver
            .await
            .unwrap_or(Err(ResponseError::NotLeaderOrFollower.code()))
    }

    /// Returns once what consumers may read differs from `seen`, or the
    /// partition stops.
    pub async fn wait_high_watermark_change(&self, seen: ReadableHighWatermarks) {
        std::future::poll_fn(|context| {
            if self.readable_high_watermarks() != seen || self.stopped.get() {
                return Poll::Ready(());
            }
            let mut watchers = self.watchers.borrow_mut();
            if !watchers
                .iter()
                .any(|known| known.will_wake(context.waker()))
            {
                watchers.push(context.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    pub fn consumer_high_watermark(&self) -> Option<Offset> {
        self.consumer_high_watermark.get()
    }

    /// While this replica follows: the high watermark the leader's answers
    /// brought, what a consumer may read here (KIP-392). It may run ahead
    /// of the local log while appends are queued; readers cap it there.
    pub fn follower_high_watermark(&self) -> Option<Offset> {
        self.follower_high_watermark.get()
    }

    pub fn readable_high_watermarks(&self) -> ReadableHighWatermarks {
        ReadableHighWatermarks {
            leader: self.consumer_high_watermark.get(),
            follower: self.follower_high_watermark.get(),
        }
    }

    /// A committed partition state from the metadata quorum.
    pub fn on_record(&self, record: &PartitionRecord, now_ms: u64) {
        let newer = self.record.borrow().as_ref().is_none_or(|known| {
            (record.leader_epoch, record.partition_epoch)
                > (known.leader_epoch, known.partition_epoch)
        });
        if !newer {
            return;
        }
        self.record.replace(Some(record.clone()));
        self.handle(Input::Tick { now_ms }, Vec::new());
        self.handle(Input::Metadata(record.clone()), Vec::new());
    }

    /// The clock moved.
    pub fn tick(&self, now_ms: u64) {
        self.handle(Input::Tick { now_ms }, Vec::new());
    }

    /// A follower's fetch arrived.
    pub fn on_follower_fetch(&self, request: FetchRequest, now_ms: u64) {
        self.handle(Input::Tick { now_ms }, Vec::new());
        self.handle(Input::FollowerFetch(request), Vec::new());
    }

    /// The leader's answer to this follower's fetch, with its batches and
    /// the leader's log start.
    pub fn on_fetch_answer(
        &self,
        response: FetchResponse,
        batches: Vec<Bytes>,
        leader_log_start: i64,
        now_ms: u64,
    ) {
        let records = matches!(response.body, FetchBody::Records(_));
        self.handle(Input::Tick { now_ms }, Vec::new());
        self.handle(Input::FetchAnswer(response), batches);
        // Once per rise of the leader's start, not per answer: the pump
        // moves this replica's start after the appends queued before it.
        if records && leader_log_start > self.leader_log_start_seen.get() {
            self.leader_log_start_seen.set(leader_log_start);
            self.work.borrow_mut().push_back(Work::FollowLogStart {
                offset: leader_log_start,
            });
            self.wake_pump();
        }
    }

    /// Stops the pump and fails waiting produces (the partition closes).
    pub fn stop(&self) {
        if !self.stopped.get() && self.machine.borrow().is_leader() {
            let epoch = self.machine.borrow().leader_epoch();
            CLOSED_WHILE_LEADING.with(|closed| {
                closed
                    .borrow_mut()
                    .insert((self.topic.clone(), self.index), epoch)
            });
        }
        self.stopped.set(true);
        self.fail_waiting(ResponseError::NotLeaderOrFollower.code());
        self.wake_pump();
        for waker in self.watchers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Replaces the machine by one built from the log as storage holds it
    /// now, after an I/O step failed or storage did something else than the
    /// machine counted; queued work is dropped and the committed state fed
    /// in again.
    fn rebuild(&self, log: LocalLog, now_ms: u64) {
        tracing::warn!(topic = %self.topic, partition = self.index, "replication state rebuilt from the log");
        let high_watermark = self.machine.borrow().high_watermark();
        self.work.borrow_mut().clear();
        // A dropped log-start move is asked for again by the next answer.
        self.leader_log_start_seen.set(0);
        self.fail_waiting(ResponseError::NotLeaderOrFollower.code());
        self.machine.replace(PartitionReplica::new(
            self.me,
            self.config.clone(),
            log,
            high_watermark,
            now_ms,
        ));
        let record = self.record.borrow().clone();
        if let Some(record) = record {
            self.handle(Input::Metadata(record), Vec::new());
        }
    }

    fn handle(&self, input: Input, mut batches: Vec<Bytes>) {
        let mut effects = Vec::new();
        let handled = self.machine.borrow_mut().handle(input, &mut effects);
        if let Err(error) = handled {
            tracing::debug!(topic = %self.topic, partition = self.index, %error, "replication input refused");
        }
        let mut queued = false;
        for effect in effects {
            match effect {
                Effect::HighWatermarkAdvanced { .. } => {}
                Effect::CompleteProduces { upto, outcome } => {
                    let result = match outcome {
                        ProduceOutcome::Acknowledged => Ok(()),
                        ProduceOutcome::NotEnoughReplicasAfterAppend => {
                            Err(ResponseError::NotEnoughReplicasAfterAppend.code())
                        }
                    };
                    self.complete_waiting(upto, result);
                }
                Effect::FailProduces { error } => self.fail_waiting(refusal_code(error)),
                Effect::SendFetch { to, request } => {
                    self.work
                        .borrow_mut()
                        .push_back(Work::SendFetch { to, request });
                    queued = true;
                }
                Effect::AnswerFetch { to, response } => {
                    self.work
                        .borrow_mut()
                        .push_back(Work::AnswerFetch { to, response });
                    queued = true;
                }
                Effect::Append { .. } => {
                    let batches = std::mem::take(&mut batches);
                    self.work.borrow_mut().push_back(Work::Append { batches });
                    queued = true;
                }
                Effect::TruncateTo { offset } => {
                    self.work.borrow_mut().push_back(Work::Truncate { offset });
                    queued = true;
                }
                Effect::ResetTo { offset } => {
                    self.work.borrow_mut().push_back(Work::Reset { offset });
                    queued = true;
                }
                Effect::ProposeIsr(proposal) => {
                    self.work.borrow_mut().push_back(Work::ProposeIsr(proposal));
                    queued = true;
                }
            }
        }
        let (shown, following) = {
            let machine = self.machine.borrow();
            let following = machine
                .following()
                .is_some()
                .then(|| machine.high_watermark());
            (machine.consumer_high_watermark(), following)
        };
        let leader_moved = shown != self.consumer_high_watermark.replace(shown);
        let follower_moved = following != self.follower_high_watermark.replace(following);
        if leader_moved || follower_moved {
            for waker in self.watchers.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        if queued {
            self.wake_pump();
        }
    }

    fn complete_waiting(&self, upto: Offset, result: Result<(), i16>) {
        let mut waiting = self.waiting_acks.borrow_mut();
        let rest = waiting.split_off(&(upto.saturating_add(1), 0));
        let done = std::mem::replace(&mut *waiting, rest);
        drop(waiting);
        for (_, sender) in done {
            let _ = sender.send(result);
        }
    }

    fn fail_waiting(&self, code: i16) {
        let waiting = std::mem::take(&mut *self.waiting_acks.borrow_mut());
        for (_, sender) in waiting {
            let _ = sender.send(Err(code));
        }
    }

    fn wake_pump(&self) {
        if let Some(waker) = self.pump_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits until there is work or the pump must stop.
    async fn work_ready(&self) {
        std::future::poll_fn(|context| {
            if !self.work.borrow().is_empty() || self.stopped.get() {
                return Poll::Ready(());
            }
            self.pump_waker.replace(Some(context.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

fn refusal_code(refusal: ProduceRefusal) -> i16 {
    match refusal {
        ProduceRefusal::NotLeaderOrFollower => ResponseError::NotLeaderOrFollower.code(),
        ProduceRefusal::NotEnoughReplicas => ResponseError::NotEnoughReplicas.code(),
    }
}

/// A topic's replication settings: `min.insync.replicas` (topic, then
/// broker), `replica.lag.time.max.ms` (broker). Answers are cut by bytes
/// ([`ANSWER_BYTES_MAX`]), not by a record count.
pub fn config_for(
    overrides: &std::collections::BTreeMap<String, String>,
    broker: &crate::config::BrokerConfig,
) -> ReplicationConfig {
    let min_insync_replicas = crate::config::find_setting("min.insync.replicas")
        .and_then(|setting| {
            crate::config::resolve_topic_setting(setting, overrides, &broker.kafka)
                .0
                .and_then(|value| value.parse::<usize>().ok())
        })
        .unwrap_or(1)
        .max(1);
    let replica_lag_time_max_ms = broker
        .kafka
        .get_i64("replica.lag.time.max.ms")
        .unwrap_or(30_000)
        .max(100) as u64;
    ReplicationConfig {
        min_insync_replicas,
        replica_lag_time_max_ms,
        // Parked fetches prove an idle follower caught up well within the
        // lag time.
        fetch_max_wait_ms: (replica_lag_time_max_ms / 4).clamp(50, 500),
        fetch_max_records: i64::MAX / 4,
        ..ReplicationConfig::default()
    }
}

/// The machine's `Acks` for a produce's.
pub fn machine_acks(acks: crate::partition::Acks) -> Acks {
    match acks {
        crate::partition::Acks::All => Acks::All,
        _ => Acks::Leader,
    }
}

/// Carries out one partition's queued work until the partition closes.
/// Holds the partition only while it works, so a close is never kept
/// waiting by a parked pump.
pub async fn run_pump(
    weak_partition: Weak<Partition>,
    replicated: Rc<Replicated>,
    watcher: kafki_storage::ProgressWatcher,
    outlet: Rc<dyn ReplicaOutlet>,
) {
    let mut reported_durable = -1;
    loop {
        if replicated.stopped.get() {
            return;
        }
        // A closed (or failed) log makes no progress: waiting on it would
        // return at once, forever. The partition is gone or going.
        if watcher.is_finished() || weak_partition.strong_count() == 0 {
            return;
        }
        let next = replicated.work.borrow_mut().pop_front();
        let Some(work) = next else {
            // Storage holds what the machine counts: its durable offset
            // describes the machine's records.
            let offsets = watcher.offsets();
            let durable = offsets.durable_offset as Offset;
            if durable != reported_durable {
                reported_durable = durable;
                replicated.handle(Input::LocalDurable { offset: durable }, Vec::new());
                continue;
            }
            let work = std::pin::pin!(replicated.work_ready());
            let progress = std::pin::pin!(watcher.wait_for_progress(offsets));
            futures::future::select(work, progress).await;
            continue;
        };
        let Some(mut partition) = weak_partition.upgrade() else {
            return;
        };
        match work {
            Work::SendFetch { to, request } => {
                // A follower outside the ISR listed in the topic's
                // `follower.replication.throttled.replicas` fetches at its
                // share of the node's `follower.replication.throttled.rate`.
                let out_of_sync = replicated.outside_committed_isr();
                let throttled = out_of_sync
                    && outlet
                        .throttle_delay(ThrottleSide::Follower, &replicated.topic, replicated.index)
                        .is_some();
                if throttled {
                    drop(partition);
                    if !wait_for_throttle(&outlet, ThrottleSide::Follower, &replicated).await {
                        return;
                    }
                }
                outlet.queue_fetch(
                    to,
                    PartitionFetch {
                        partition: replicated.wire_partition(),
                        request,
                    },
                );
            }
            Work::AnswerFetch { to, mut response } => {
                let has_records =
                    matches!(&response.body, FetchBody::Records(ranges) if !ranges.is_empty());
                // In-sync followers are never throttled (Kafka's rule): a
                // reassignment's new replicas are, until they catch up.
                let out_of_sync = replicated
                    .machine
                    .borrow()
                    .isr()
                    .is_some_and(|isr| !isr.contains(&to));
                let throttled = has_records
                    && out_of_sync
                    && outlet
                        .throttle_delay(ThrottleSide::Leader, &replicated.topic, replicated.index)
                        .is_some();
                if throttled {
                    // A throttled follower waits for its share of the
                    // node's rate; the partition is not held meanwhile.
                    drop(partition);
                    if !wait_for_throttle(&outlet, ThrottleSide::Leader, &replicated).await {
                        return;
                    }
                    let Some(again) = weak_partition.upgrade() else {
                        return;
                    };
                    partition = again;
                }
                let batches = match &mut response.body {
                    FetchBody::Records(ranges) if !ranges.is_empty() => {
                        match read_ranges(&partition, ranges, &outlet).await {
                            Ok(batches) => {
                                if throttled {
                                    outlet.throttle_charge(
                                        ThrottleSide::Leader,
                                        batches.iter().map(|part| part.len() as usize).sum(),
                                    );
                                }
                                batches
                            }
                            Err(error) => {
                                let log_start = partition.offsets().log_start_offset;
                                let below_start = ranges
                                    .first()
                                    .is_some_and(|first| first.start < log_start as Offset);
                                if below_start {
                                    // Retention or DeleteRecords removed what
                                    // the follower needs next: it starts
                                    // again at this log's start.
                                    tracing::info!(topic = %replicated.topic, partition = replicated.index, follower = to, fetch_offset = response.fetch_offset, log_start, "follower is below the log start; telling it to start there");
                                    response.body = FetchBody::OutOfRange {
                                        log_start: log_start as Offset,
                                    };
                                    Vec::new()
                                } else {
                                    // No answer: the follower asks again
                                    // after its fetch timeout, not in a
                                    // tight loop.
                                    tracing::warn!(topic = %replicated.topic, partition = replicated.index, follower = to, %error, "cannot read records for a follower; it retries after its fetch timeout");
                                    continue;
                                }
                            }
                        }
                    }
                    _ => Vec::new(),
                };
                outlet.queue_answer(
                    to,
                    PartitionAnswer {
                        partition: replicated.wire_partition(),
                        leader_log_start: partition.offsets().log_start_offset as i64,
                        response,
                        record_batches: batches,
                    },
                );
            }
            Work::Append { batches } => {
                let out_of_sync = replicated.outside_committed_isr();
                if out_of_sync
                    && outlet
                        .throttle_delay(ThrottleSide::Follower, &replicated.topic, replicated.index)
                        .is_some()
                {
                    outlet.throttle_charge(
                        ThrottleSide::Follower,
                        batches.iter().map(Bytes::len).sum(),
                    );
                }
                for batch in batches {
                    if let Err(error) = partition.append_from_leader(batch).await {
                        tracing::warn!(topic = %replicated.topic, partition = replicated.index, %error, "appending a leader's records");
                        replicated.rebuild(
                            partition.replica_log_view(),
                            crate::cluster::liveness::monotonic_ms(),
                        );
                        reported_durable = -1;
                        break;
                    }
                }
            }
            Work::Truncate { offset } => {
                let truncated = partition.truncate_for_replica(offset).await;
                if let Err(error) = truncated {
                    tracing::warn!(topic = %replicated.topic, partition = replicated.index, offset, %error, "truncating a diverged suffix");
                    replicated.rebuild(
                        partition.replica_log_view(),
                        crate::cluster::liveness::monotonic_ms(),
                    );
                } else {
                    tracing::info!(topic = %replicated.topic, partition = replicated.index, offset, "truncated a diverged suffix");
                }
                reported_durable = -1;
            }
            Work::FollowLogStart { offset } => {
                // The leader's start never passes its high watermark, but
                // this replica's copy of both may lag behind it.
                let high_watermark = replicated.machine.borrow().high_watermark();
                let offsets = partition.offsets();
                let target = offset
                    .min(high_watermark)
                    .min(offsets.log_end_offset as Offset);
                if target > offsets.log_start_offset as Offset {
                    match partition.delete_records_before(target as u64).await {
                        Ok(log_start) => {
                            tracing::debug!(topic = %replicated.topic, partition = replicated.index, log_start, "log start follows the leader's")
                        }
                        Err(error) => {
                            tracing::warn!(topic = %replicated.topic, partition = replicated.index, target, %error, "cannot move the log start to the leader's")
                        }
                    }
                }
                if target < offset {
                    // Not all of it yet: a later answer asks again.
                    replicated.leader_log_start_seen.set(target);
                }
            }
            Work::Reset { offset } => {
                if let Err(error) = partition.reset_for_replica(offset).await {
                    tracing::warn!(topic = %replicated.topic, partition = replicated.index, offset, %error, "starting the log again at the leader's log start");
                } else {
                    tracing::info!(topic = %replicated.topic, partition = replicated.index, offset, "log started again at the leader's log start");
                }
                replicated.rebuild(
                    partition.replica_log_view(),
                    crate::cluster::liveness::monotonic_ms(),
                );
                reported_durable = -1;
            }
            Work::ProposeIsr(proposal) => {
                let weak = Rc::downgrade(&replicated);
                let (leader_epoch, partition_epoch) =
                    (proposal.leader_epoch, proposal.partition_epoch);
                tracing::info!(topic = %replicated.topic, partition = replicated.index, isr = ?proposal.isr, "proposing an ISR change");
                outlet.propose_isr(
                    &replicated.topic,
                    replicated.index,
                    proposal,
                    Box::new(move || {
                        if let Some(replicated) = weak.upgrade() {
                            replicated.handle(
                                Input::IsrRejected {
                                    leader_epoch,
                                    partition_epoch,
                                },
                                Vec::new(),
                            );
                        }
                    }),
                );
            }
        }
    }
}

/// Sleeps while `side`'s throttle is in debt. False if the partition
/// closed meanwhile (the pump ends).
async fn wait_for_throttle(
    outlet: &Rc<dyn ReplicaOutlet>,
    side: ThrottleSide,
    replicated: &Replicated,
) -> bool {
    while let Some(delay) = outlet.throttle_delay(side, &replicated.topic, replicated.index) {
        if delay.is_zero() {
            break;
        }
        if replicated.stopped.get() {
            return false;
        }
        glommio::timer::sleep(delay).await;
    }
    !replicated.stopped.get()
}

/// Reads the records of `ranges` (contiguous) and cuts the ranges to what
/// was read: whole batches, at most [`ANSWER_BYTES_MAX`] (at least one).
async fn read_ranges(
    partition: &Partition,
    ranges: &mut Vec<super::RecordRange>,
    outlet: &Rc<dyn ReplicaOutlet>,
) -> anyhow::Result<Vec<WirePart>> {
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return Ok(Vec::new());
    };
    let (from, to) = (first.start, last.end);
    let (parts, next_offset) = partition
        .read_for_replica(from as u64, to as u64, ANSWER_BYTES_MAX)
        .await?;
    let batches = parts
        .into_iter()
        .map(|(part, path)| {
            outlet.count_answer_bytes(path, part.len());
            part
        })
        .collect();
    let next_offset = next_offset as Offset;
    ranges.retain(|range| range.start < next_offset);
    if let Some(last) = ranges.last_mut() {
        last.end = last.end.min(next_offset);
    }
    Ok(batches)
}
