//! A deterministic, seeded randomized test of the transaction coordinator
//! (tests only), checked against issue 12's rule: a `read_committed`
//! consumer sees each committed transaction's records all together and no
//! aborted record ever.
//!
//! The world: two coordinator nodes, each a [`TxnCoordinator`], sharing two
//! `__transaction_state` partitions (each led by one node, with a
//! coordinator epoch bumped at every change of leader or restart); three
//! data partitions, each a model log of data and marker entries with a
//! [`PartitionTxnIndex`] and a high watermark that lags; four
//! transactional ids, each driven by one producer *session* at a time
//! (InitProducerId → AddPartitions/AddOffsets → writes → EndTxn, commit or
//! abort, retrying retriable errors and timed-out requests). Faults, all
//! from one seed: a node crashes (everything not durable in its log
//! partitions is lost, with its in-memory state, its marker work and the
//! answers it owed) and restarts, replaying its durable log; a log
//! partition fails over to the other node (keeping some of the undurable
//! tail, whose requests were answered NOT_COORDINATOR: in doubt), while
//! the old node may go on sending markers for a while (a deposed
//! coordinator); a session hangs past its transaction timeout (the
//! coordinator aborts it), abandons its transaction, or recovers with
//! KIP-360; a session that learns it is fenced leaves a *zombie* that keeps
//! writing to its partitions with its old epoch. Partition writes follow
//! KIP-890: a producer's first write of a transaction to a partition is
//! verified with the coordinator. Producer ids come in blocks from a
//! counter that survives everything (the metadata quorum).
//!
//! The checker: (1) driver contract: every append lands at the offset the
//! coordinator named; (2) at every read (every 25 steps, and at the end),
//! per data partition, what a `read_committed` reader keeps of `[0, LSO)`
//! with the index's aborted list (Kafka's client algorithm) equals the
//! oracle (each data record decided by the next marker of its producer
//! id: commit → visible), no record below the LSO is undecided, and
//! nothing once visible disappears; (3) at the end, after healing and
//! letting every timeout fire: no transaction is open anywhere, every
//! record is decided, all records of one transaction have the same fate
//! on every partition, a transaction whose commit was acknowledged is
//! committed, and one that never asked to commit is not.
//!
//! Fixed seeds run in `cargo test`; `KAFKI_TXN_SEEDS` (count),
//! `KAFKI_TXN_STEPS` and `KAFKI_TXN_SEED` (just that one) run more:
//! `KAFKI_TXN_SEEDS=500 KAFKI_TXN_STEPS=20000 cargo test -p kafki-broker --release --lib txn::simulation -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::simulation_support::{run_seeds, seed_plan, Rng};

use super::coordinator::log_partition_for;
use super::partition_index::ControlType;
use super::*;

const STEP_MS: i64 = 10;
const NODES: usize = 2;
const LOG_PARTITIONS: i32 = 2;
const DATA_PARTITIONS: i32 = 3;
const TRANSACTIONAL_IDS: usize = 4;
const TOPIC: &str = "data";
const REQUEST_TIMEOUT_MS: i64 = 300;
const READ_EVERY_STEPS: u64 = 25;
/// Steps the final phase may take to settle.
const FINAL_BOUND_STEPS: u64 = 3_000;
const ZOMBIES_KEPT: usize = 8;

/// How hostile one seed's world is (per mille per step unless named).
#[derive(Debug, Clone, Copy)]
struct Params {
    crash_pm: u64,
    failover_pm: u64,
    durable_pm: u64,
    marker_pm: u64,
    high_watermark_pm: u64,
    /// A deposed coordinator's marker work survives its unload.
    stale_markers_pm: u64,
    act_pm: u64,
    hang_pm: u64,
    abandon_pm: u64,
    recover_pm: u64,
    zombie_write_pm: u64,
    commit_pm: u64,
    timeout_ms: i32,
}

impl Params {
    fn for_seed(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x7A11_5EED_0BAD_CAFE);
        Params {
            crash_pm: rng.range(1, 8),
            failover_pm: rng.range(1, 8),
            durable_pm: rng.range(200, 900),
            marker_pm: rng.range(200, 900),
            high_watermark_pm: rng.range(200, 900),
            stale_markers_pm: rng.range(0, 1000),
            act_pm: rng.range(300, 900),
            hang_pm: rng.range(0, 6),
            abandon_pm: rng.range(0, 6),
            recover_pm: rng.range(0, 6),
            zombie_write_pm: rng.range(0, 100),
            commit_pm: rng.range(500, 950),
            timeout_ms: rng.range(300, 2_000) as i32,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    commits_acknowledged: u64,
    aborts_acknowledged: u64,
    records_written: u64,
    records_visible: u64,
    writes_refused: u64,
    zombie_writes_refused: u64,
    markers_refused: u64,
    crashes: u64,
    failovers: u64,
    fenced_sessions: u64,
}

fn add_stats(total: &mut Stats, one: &Stats) {
    total.commits_acknowledged += one.commits_acknowledged;
    total.aborts_acknowledged += one.aborts_acknowledged;
    total.records_written += one.records_written;
    total.records_visible += one.records_visible;
    total.writes_refused += one.writes_refused;
    total.zombie_writes_refused += one.zombie_writes_refused;
    total.markers_refused += one.markers_refused;
    total.crashes += one.crashes;
    total.failovers += one.failovers;
    total.fenced_sessions += one.fenced_sessions;
}

struct LogPartition {
    records: Vec<records::TxnLogRecord>,
    durable: usize,
    leader: usize,
    coordinator_epoch: i32,
}

struct Node {
    coordinator: Option<TxnCoordinator>,
    incarnation: u64,
    restart_at_ms: i64,
}

struct MarkerJob {
    node: usize,
    incarnation: u64,
    request: MarkerRequest,
    remaining: VecDeque<TopicPartition>,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Data {
        producer_id: i64,
        record: u64,
    },
    Marker {
        producer_id: i64,
        control: ControlType,
    },
}

#[derive(Default)]
struct DataPartition {
    entries: Vec<Entry>,
    index: PartitionTxnIndex,
    high_watermark: i64,
    /// Records a reader has been shown (never taken back).
    seen_visible: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct Attempt {
    records: Vec<(i32, u64)>,
    commit_sent: bool,
    commit_acknowledged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initing,
    Ready,
    Adding,
    InTxn,
    Ending,
}

#[derive(Debug)]
struct Outstanding {
    request: RequestId,
    input: Input,
    sent_ms: i64,
    /// Resend at this time (after a retriable error).
    retry_at_ms: Option<i64>,
}

struct Session {
    producer: Option<ProducerIdAndEpoch>,
    phase: Phase,
    attempt: Option<usize>,
    added: BTreeSet<i32>,
    adding: Vec<i32>,
    outstanding: Option<Outstanding>,
    hung_until_ms: i64,
}

struct Zombie {
    transactional_id: usize,
    producer: ProducerIdAndEpoch,
    attempt: usize,
    partitions: Vec<i32>,
}

struct World {
    rng: Rng,
    params: Params,
    now_ms: i64,
    step: u64,
    settling: bool,
    nodes: Vec<Node>,
    logs: Vec<LogPartition>,
    data: Vec<DataPartition>,
    sessions: Vec<Session>,
    zombies: Vec<Zombie>,
    attempts: Vec<Attempt>,
    record_attempt: HashMap<u64, usize>,
    next_record: u64,
    next_request: RequestId,
    /// Requests a coordinator holds: request → transactional id index.
    request_owner: HashMap<RequestId, usize>,
    inbox: VecDeque<(RequestId, Response)>,
    marker_jobs: Vec<MarkerJob>,
    /// (deliver at, node, incarnation).
    id_blocks_due: Vec<(i64, usize, u64)>,
    next_producer_id: i64,
    stats: Stats,
    trace: VecDeque<String>,
}

fn transactional_id(index: usize) -> String {
    format!("txn-{index}")
}

fn config() -> TxnConfig {
    TxnConfig {
        log_partitions: LOG_PARTITIONS,
        producer_ids_low_water: 3,
        ..TxnConfig::default()
    }
}

fn new_session() -> Session {
    Session {
        producer: None,
        phase: Phase::Initing,
        attempt: None,
        added: BTreeSet::new(),
        adding: Vec::new(),
        outstanding: None,
        hung_until_ms: 0,
    }
}

impl World {
    fn new(seed: u64) -> Result<Self, String> {
        let params = Params::for_seed(seed);
        let mut world = World {
            rng: Rng(seed),
            params,
            now_ms: 1_000_000,
            step: 0,
            settling: false,
            nodes: (0..NODES)
                .map(|_| Node {
                    coordinator: None,
                    incarnation: 0,
                    restart_at_ms: 0,
                })
                .collect(),
            logs: (0..LOG_PARTITIONS)
                .map(|partition| LogPartition {
                    records: Vec::new(),
                    durable: 0,
                    leader: partition as usize % NODES,
                    coordinator_epoch: 0,
                })
                .collect(),
            data: (0..DATA_PARTITIONS)
                .map(|_| DataPartition::default())
                .collect(),
            sessions: (0..TRANSACTIONAL_IDS).map(|_| new_session()).collect(),
            zombies: Vec::new(),
            attempts: Vec::new(),
            record_attempt: HashMap::new(),
            next_record: 0,
            next_request: 1,
            request_owner: HashMap::new(),
            inbox: VecDeque::new(),
            marker_jobs: Vec::new(),
            id_blocks_due: Vec::new(),
            next_producer_id: 1_000,
            stats: Stats::default(),
            trace: VecDeque::new(),
        };
        for node in 0..NODES {
            world.start_node(node)?;
        }
        Ok(world)
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == 200 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} {}ms] {line}", self.step, self.now_ms));
    }

    // ------------------------------------------------------------ nodes

    fn start_node(&mut self, node: usize) -> Result<(), String> {
        self.nodes[node].incarnation += 1;
        self.nodes[node].coordinator = Some(TxnCoordinator::new(config(), self.now_ms));
        for partition in 0..LOG_PARTITIONS {
            if self.logs[partition as usize].leader == node {
                self.load(node, partition)?;
            }
        }
        Ok(())
    }

    fn load(&mut self, node: usize, partition: i32) -> Result<(), String> {
        let log = &mut self.logs[partition as usize];
        log.coordinator_epoch += 1;
        let records = log
            .records
            .iter()
            .enumerate()
            .map(|(offset, record)| StoredRecord {
                offset: offset as i64,
                key: record.key.clone(),
                value: record.value.clone(),
            })
            .collect();
        let input = Input::Load {
            log_partition: partition,
            coordinator_epoch: log.coordinator_epoch,
            records,
            end_offset: log.records.len() as i64,
            lost_writes: None,
        };
        let epoch = log.coordinator_epoch;
        self.note(format!(
            "node {node} loads log {partition} at epoch {epoch}"
        ));
        self.deliver(node, input)
    }

    fn crash(&mut self, node: usize) {
        self.stats.crashes += 1;
        self.note(format!("node {node} crashes"));
        self.nodes[node].coordinator = None;
        self.nodes[node].restart_at_ms = self.now_ms + self.rng.range(50, 1_500) as i64;
        for log in &mut self.logs {
            if log.leader == node {
                log.records.truncate(log.durable);
            }
        }
        self.marker_jobs.retain(|job| job.node != node);
    }

    fn failover(&mut self, partition: i32) -> Result<(), String> {
        let from = self.logs[partition as usize].leader;
        let to = (from + 1) % NODES;
        if self.nodes[to].coordinator.is_none() {
            return Ok(());
        }
        self.stats.failovers += 1;
        // The new leader holds the durable prefix and maybe more.
        let log = &mut self.logs[partition as usize];
        let extra = self.rng.below((log.records.len() - log.durable) as u64 + 1) as usize;
        log.records.truncate(log.durable + extra);
        log.durable = log.records.len();
        log.leader = to;
        self.note(format!(
            "log {partition} fails over {from} -> {to}, {extra} in-doubt records kept"
        ));
        if self.nodes[from].coordinator.is_some() {
            self.deliver(
                from,
                Input::Unload {
                    log_partition: partition,
                },
            )?;
            if !self.rng.chance(self.params.stale_markers_pm) {
                // Only this log's marker work goes (as the driver drops it:
                // by the id's log partition); the node's other logs keep
                // theirs, even at the same coordinator epoch.
                let epoch = self.logs[partition as usize].coordinator_epoch;
                self.marker_jobs.retain(|job| {
                    let log = log_partition_for(&job.request.transactional_id, LOG_PARTITIONS);
                    !(job.node == from
                        && log == partition
                        && job.request.coordinator_epoch == epoch)
                });
            }
        }
        self.load(to, partition)
    }

    /// Gives `input` to `node`'s coordinator and carries out its effects.
    fn deliver(&mut self, node: usize, input: Input) -> Result<(), String> {
        let Some(coordinator) = self.nodes[node].coordinator.as_mut() else {
            return Ok(());
        };
        let mut effects = Vec::new();
        coordinator
            .handle(input, &mut effects)
            .map_err(|error| format!("node {node} refused an input: {error}"))?;
        for effect in effects {
            self.carry_out(node, effect)?;
        }
        Ok(())
    }

    fn carry_out(&mut self, node: usize, effect: Effect) -> Result<(), String> {
        match effect {
            Effect::Append {
                log_partition,
                offset,
                record,
            } => {
                let log = &mut self.logs[log_partition as usize];
                if log.leader != node || offset != log.records.len() as i64 {
                    return Err(format!(
                        "node {node} appends at {offset} to log {log_partition} (leader {}, end {})",
                        log.leader,
                        log.records.len()
                    ));
                }
                log.records.push(record);
            }
            Effect::SendMarkers(request) => {
                self.note(format!("node {node} sends markers {request:?}"));
                self.marker_jobs.push(MarkerJob {
                    node,
                    incarnation: self.nodes[node].incarnation,
                    remaining: request.partitions.iter().cloned().collect(),
                    request,
                });
            }
            Effect::Answer { request, response } => self.inbox.push_back((request, response)),
            Effect::RequestProducerIds => {
                let at = self.now_ms + self.rng.range(0, 100) as i64;
                self.id_blocks_due
                    .push((at, node, self.nodes[node].incarnation));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ the world's steps

    fn step_world(&mut self) -> Result<(), String> {
        self.step += 1;
        self.now_ms += STEP_MS;
        for node in 0..NODES {
            if self.nodes[node].coordinator.is_none() {
                if self.now_ms >= self.nodes[node].restart_at_ms {
                    self.note(format!("node {node} restarts"));
                    self.start_node(node)?;
                }
                continue;
            }
            self.deliver(
                node,
                Input::Tick {
                    now_ms: self.now_ms,
                },
            )?;
        }
        if !self.settling {
            if self.rng.chance(self.params.crash_pm) {
                let node = self.rng.below(NODES as u64) as usize;
                if self.nodes[node].coordinator.is_some() {
                    self.crash(node);
                }
            }
            if self.rng.chance(self.params.failover_pm) {
                let partition = self.rng.below(LOG_PARTITIONS as u64) as i32;
                self.failover(partition)?;
            }
        }
        self.advance_durability()?;
        self.deliver_producer_ids()?;
        self.write_markers()?;
        for partition in &mut self.data {
            if self.rng.chance(self.params.high_watermark_pm) {
                partition.high_watermark = partition.entries.len() as i64;
            }
        }
        self.handle_answers()?;
        for index in 0..TRANSACTIONAL_IDS {
            self.act(index)?;
        }
        if !self.settling {
            self.zombies_write()?;
        }
        if self.step.is_multiple_of(READ_EVERY_STEPS) {
            self.check_reads()?;
        }
        Ok(())
    }

    fn advance_durability(&mut self) -> Result<(), String> {
        for partition in 0..LOG_PARTITIONS {
            let log = &mut self.logs[partition as usize];
            let leader = log.leader;
            if self.nodes[leader].coordinator.is_none()
                || log.durable == log.records.len()
                || !self.rng.chance(self.params.durable_pm)
            {
                continue;
            }
            // Sometimes only part of the tail (group commit in progress).
            let end = self
                .rng
                .range(log.durable as u64 + 1, log.records.len() as u64 + 1);
            log.durable = end as usize;
            let input = Input::LogDurable {
                log_partition: partition,
                below_offset: end as i64,
            };
            self.deliver(leader, input)?;
        }
        Ok(())
    }

    fn deliver_producer_ids(&mut self) -> Result<(), String> {
        let now = self.now_ms;
        let (due, later): (Vec<_>, Vec<_>) = self
            .id_blocks_due
            .drain(..)
            .partition(|(at, _, _)| *at <= now);
        self.id_blocks_due = later;
        for (_, node, incarnation) in due {
            if self.nodes[node].incarnation != incarnation {
                continue; // the request died with the process
            }
            let first = self.next_producer_id;
            self.next_producer_id += 5;
            self.deliver(node, Input::ProducerIds { first, count: 5 })?;
        }
        Ok(())
    }

    fn write_markers(&mut self) -> Result<(), String> {
        let mut index = 0;
        while index < self.marker_jobs.len() {
            let job = &self.marker_jobs[index];
            let alive = self.nodes[job.node].incarnation == job.incarnation
                && self.nodes[job.node].coordinator.is_some();
            if !alive {
                self.marker_jobs.swap_remove(index);
                continue;
            }
            if !self.rng.chance(self.params.marker_pm) {
                index += 1;
                continue;
            }
            let job = &mut self.marker_jobs[index];
            if let Some(partition) = job.remaining.pop_front() {
                let request = job.request.clone();
                self.write_marker(&request, partition.partition);
                index += 1;
                continue;
            }
            let job = self.marker_jobs.swap_remove(index);
            let input = Input::MarkersWritten {
                transactional_id: job.request.transactional_id.clone(),
                producer: job.request.producer,
                coordinator_epoch: job.request.coordinator_epoch,
            };
            self.deliver(job.node, input)?;
        }
        Ok(())
    }

    fn write_marker(&mut self, request: &MarkerRequest, partition: i32) {
        let data = &mut self.data[partition as usize];
        let marker = EndTxnMarker {
            control_type: request.result,
            coordinator_epoch: request.coordinator_epoch,
        };
        let offset = data.entries.len() as i64;
        let producer = request.producer;
        match data
            .index
            .record_marker(producer.producer_id, producer.epoch, marker, offset)
        {
            Ok(_) => data.entries.push(Entry::Marker {
                producer_id: producer.producer_id,
                control: request.result,
            }),
            Err(refusal) => {
                self.stats.markers_refused += 1;
                let line = format!("marker {request:?} refused at {partition}: {refusal:?}");
                self.note(line);
            }
        }
    }

    /// A transactional write of one record; false when refused.
    fn write_record(
        &mut self,
        transactional_index: usize,
        producer: ProducerIdAndEpoch,
        partition: i32,
        attempt: usize,
    ) -> Result<bool, String> {
        let has_open = self.data[partition as usize]
            .index
            .has_open_transaction(producer.producer_id);
        if !has_open && !self.verify(transactional_index, producer, partition)? {
            self.stats.writes_refused += 1;
            return Ok(false);
        }
        let data = &mut self.data[partition as usize];
        let offset = data.entries.len() as i64;
        if data
            .index
            .record_transactional_batch(producer.producer_id, producer.epoch, offset, offset)
            .is_err()
        {
            self.stats.writes_refused += 1;
            return Ok(false);
        }
        let record = self.next_record;
        self.next_record += 1;
        data.entries.push(Entry::Data {
            producer_id: producer.producer_id,
            record,
        });
        self.attempts[attempt].records.push((partition, record));
        self.record_attempt.insert(record, attempt);
        self.stats.records_written += 1;
        Ok(true)
    }

    /// KIP-890: the partition leader asks the coordinator before a
    /// transaction's first write here.
    fn verify(
        &mut self,
        transactional_index: usize,
        producer: ProducerIdAndEpoch,
        partition: i32,
    ) -> Result<bool, String> {
        let id = transactional_id(transactional_index);
        let leader = self.logs[log_partition_for(&id, LOG_PARTITIONS) as usize].leader;
        let Some(coordinator) = self.nodes[leader].coordinator.as_mut() else {
            return Ok(false);
        };
        let request = self.next_request;
        self.next_request += 1;
        let mut effects = Vec::new();
        let input = Input::VerifyPartitions {
            request,
            transactional_id: id,
            producer,
            partitions: vec![TopicPartition::new(TOPIC, partition)],
        };
        coordinator
            .handle(input, &mut effects)
            .map_err(|error| format!("verify refused: {error}"))?;
        let verified = effects.iter().any(|effect| {
            matches!(effect, Effect::Answer { response: Response::VerifyPartitions(Ok(partitions)), .. }
                if partitions.iter().all(|(_, error)| error.is_none()))
        });
        Ok(verified)
    }

    // ------------------------------------------------------------ producers

    fn send(&mut self, index: usize, input: Input) -> Result<(), String> {
        let request = self.next_request;
        self.next_request += 1;
        let input = with_request(input, request);
        self.sessions[index].outstanding = Some(Outstanding {
            request,
            input: input.clone(),
            sent_ms: self.now_ms,
            retry_at_ms: None,
        });
        let id = transactional_id(index);
        let leader = self.logs[log_partition_for(&id, LOG_PARTITIONS) as usize].leader;
        if self.nodes[leader].coordinator.is_none() {
            let error = Err(TxnError::NotCoordinator);
            self.inbox.push_back((request, response_for(&input, error)));
            return Ok(());
        }
        self.request_owner.insert(request, index);
        self.deliver(leader, input)
    }

    fn handle_answers(&mut self) -> Result<(), String> {
        while let Some((request, response)) = self.inbox.pop_front() {
            let owner = match self.request_owner.remove(&request) {
                Some(owner) => owner,
                None => match self
                    .sessions
                    .iter()
                    .position(|s| s.outstanding.as_ref().is_some_and(|o| o.request == request))
                {
                    Some(owner) => owner,
                    None => continue,
                },
            };
            let session = &self.sessions[owner];
            if session.outstanding.as_ref().map(|o| o.request) != Some(request) {
                continue; // an answer to a request given up on
            }
            self.on_answer(owner, response)?;
        }
        Ok(())
    }

    fn on_answer(&mut self, index: usize, response: Response) -> Result<(), String> {
        let error = match &response {
            Response::InitProducerId(Err(error))
            | Response::AddPartitions(Err(error))
            | Response::AddOffsets(Err(error))
            | Response::EndTxn(Err(error))
            | Response::VerifyPartitions(Err(error)) => Some(*error),
            _ => None,
        };
        if let Some(error) = error {
            return self.on_error(index, error);
        }
        let session = &mut self.sessions[index];
        session.outstanding = None;
        match (session.phase, response) {
            (Phase::Initing, Response::InitProducerId(Ok(producer))) => {
                session.producer = Some(producer);
                session.phase = Phase::Ready;
                session.attempt = None;
                session.added.clear();
            }
            (Phase::Adding, Response::AddPartitions(Ok(())) | Response::AddOffsets(Ok(()))) => {
                let adding = std::mem::take(&mut session.adding);
                session.added.extend(adding);
                session.phase = Phase::InTxn;
            }
            (Phase::Ending, Response::EndTxn(Ok(()))) => {
                if let Some(attempt) = session.attempt.take() {
                    let attempt = &mut self.attempts[attempt];
                    if attempt.commit_sent {
                        attempt.commit_acknowledged = true;
                        self.stats.commits_acknowledged += 1;
                    } else {
                        self.stats.aborts_acknowledged += 1;
                    }
                }
                let session = &mut self.sessions[index];
                session.added.clear();
                session.phase = Phase::Ready;
            }
            (phase, response) => {
                return Err(format!("session {index} in {phase:?} got {response:?}"));
            }
        }
        Ok(())
    }

    fn on_error(&mut self, index: usize, error: TxnError) -> Result<(), String> {
        match error {
            TxnError::ConcurrentTransactions
            | TxnError::CoordinatorLoadInProgress
            | TxnError::NotCoordinator
            | TxnError::CoordinatorNotAvailable => {
                let backoff = self.rng.range(10, 100) as i64;
                if let Some(outstanding) = self.sessions[index].outstanding.as_mut() {
                    outstanding.retry_at_ms = Some(self.now_ms + backoff);
                }
                Ok(())
            }
            TxnError::ProducerFenced
            | TxnError::InvalidProducerIdMapping
            | TxnError::InvalidTxnState => {
                self.stats.fenced_sessions += 1;
                self.note(format!("session {index} fenced: {error:?}"));
                self.replace_session(index)
            }
            TxnError::InvalidRequest | TxnError::InvalidTransactionTimeout => {
                Err(format!("session {index} sent a bad request: {error:?}"))
            }
        }
    }

    /// The session gives up; what it wrote stays behind as a zombie that
    /// may go on writing; a new session initialises the id.
    fn replace_session(&mut self, index: usize) -> Result<(), String> {
        let old = std::mem::replace(&mut self.sessions[index], new_session());
        if let (Some(producer), Some(attempt)) = (old.producer, old.attempt) {
            if !old.added.is_empty() {
                self.zombies.push(Zombie {
                    transactional_id: index,
                    producer,
                    attempt,
                    partitions: old.added.into_iter().collect(),
                });
                if self.zombies.len() > ZOMBIES_KEPT {
                    self.zombies.remove(0);
                }
            }
        }
        self.send_init(index, None)
    }

    fn send_init(
        &mut self,
        index: usize,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Result<(), String> {
        self.sessions[index].phase = Phase::Initing;
        let input = Input::InitProducerId {
            request: 0,
            transactional_id: Some(transactional_id(index)),
            timeout_ms: self.params.timeout_ms,
            expected,
        };
        self.send(index, input)
    }

    fn resend(&mut self, index: usize) -> Result<(), String> {
        let Some(outstanding) = self.sessions[index].outstanding.take() else {
            return Ok(());
        };
        self.send(index, outstanding.input)
    }

    fn act(&mut self, index: usize) -> Result<(), String> {
        let now = self.now_ms;
        let session = &self.sessions[index];
        if session.hung_until_ms > now {
            return Ok(());
        }
        if let Some(outstanding) = &session.outstanding {
            let retry_due = outstanding.retry_at_ms.is_some_and(|at| at <= now);
            let timed_out =
                outstanding.retry_at_ms.is_none() && now - outstanding.sent_ms > REQUEST_TIMEOUT_MS;
            if retry_due || timed_out {
                self.resend(index)?;
            }
            return Ok(());
        }
        if session.phase == Phase::Initing && session.producer.is_none() {
            return self.send_init(index, None);
        }
        if self.settling || !self.rng.chance(self.params.act_pm) {
            return Ok(());
        }
        let Some(producer) = session.producer else {
            return Ok(());
        };
        match session.phase {
            Phase::Ready => self.begin(index, producer),
            Phase::InTxn => self.in_transaction(index, producer),
            _ => Ok(()),
        }
    }

    fn begin(&mut self, index: usize, producer: ProducerIdAndEpoch) -> Result<(), String> {
        self.attempts.push(Attempt::default());
        let attempt = self.attempts.len() - 1;
        let partition = self.rng.below(DATA_PARTITIONS as u64) as i32;
        let session = &mut self.sessions[index];
        session.attempt = Some(attempt);
        session.phase = Phase::Adding;
        session.adding = vec![partition];
        self.send(index, add_partitions(index, producer, partition))
    }

    fn in_transaction(&mut self, index: usize, producer: ProducerIdAndEpoch) -> Result<(), String> {
        let Some(attempt) = self.sessions[index].attempt else {
            return Err(format!(
                "session {index} in a transaction without an attempt"
            ));
        };
        let roll = self.rng.below(1000);
        let params = self.params;
        if roll < params.hang_pm {
            let hang = i64::from(params.timeout_ms) + self.rng.range(0, 2_000) as i64;
            self.note(format!("session {index} hangs {hang}ms"));
            self.sessions[index].hung_until_ms = self.now_ms + hang;
        } else if roll < params.hang_pm + params.abandon_pm {
            self.note(format!("session {index} abandons its transaction"));
            self.replace_session(index)?;
        } else if roll < params.hang_pm + params.abandon_pm + params.recover_pm {
            // KIP-360: the producer recovers with its own id and epoch;
            // its open transaction is aborted.
            self.note(format!("session {index} recovers"));
            self.send_init(index, Some(producer))?;
        } else if roll < 600 {
            let added: Vec<i32> = self.sessions[index].added.iter().copied().collect();
            let partition = added[self.rng.below(added.len() as u64) as usize];
            self.write_record(index, producer, partition, attempt)?;
        } else if roll < 700 {
            let partition = self.rng.below(DATA_PARTITIONS as u64) as i32;
            let session = &mut self.sessions[index];
            session.phase = Phase::Adding;
            if self.rng.chance(200) {
                // Consumer offsets join the transaction (no data written there).
                session.adding = Vec::new();
                let input = Input::AddOffsets {
                    request: 0,
                    transactional_id: transactional_id(index),
                    producer,
                    offsets_partition: 0,
                };
                self.send(index, input)?;
            } else {
                session.adding = vec![partition];
                self.send(index, add_partitions(index, producer, partition))?;
            }
        } else if roll < 760 {
            let commit = self.rng.chance(params.commit_pm);
            self.attempts[attempt].commit_sent |= commit;
            self.sessions[index].phase = Phase::Ending;
            let input = Input::EndTxn {
                request: 0,
                transactional_id: transactional_id(index),
                producer,
                commit,
            };
            self.send(index, input)?;
        }
        Ok(())
    }

    fn zombies_write(&mut self) -> Result<(), String> {
        for zombie_index in 0..self.zombies.len() {
            if !self.rng.chance(self.params.zombie_write_pm) {
                continue;
            }
            let zombie = &self.zombies[zombie_index];
            let partition =
                zombie.partitions[self.rng.below(zombie.partitions.len() as u64) as usize];
            let (id, producer, attempt) =
                (zombie.transactional_id, zombie.producer, zombie.attempt);
            if !self.write_record(id, producer, partition, attempt)? {
                self.stats.writes_refused -= 1;
                self.stats.zombie_writes_refused += 1;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ the checker

    /// What a `read_committed` reader keeps of `[0, LSO)` (Kafka's client
    /// algorithm over the aborted list) against the oracle.
    fn check_reads(&mut self) -> Result<(), String> {
        for partition in 0..DATA_PARTITIONS {
            let data = &mut self.data[partition as usize];
            let last_stable = data.index.last_stable_offset(data.high_watermark);
            let entries = &data.entries[..last_stable as usize];
            let aborted = data.index.aborted_overlapping(0, last_stable);
            let read = read_committed(entries, &aborted);
            let decided = decisions(&data.entries);
            let mut expected = Vec::new();
            for (offset, entry) in entries.iter().enumerate() {
                if let Entry::Data { record, .. } = entry {
                    match decided[offset] {
                        None => {
                            return Err(format!(
                                "partition {partition}: record {record} at {offset} is below the LSO {last_stable} but undecided"
                            ))
                        }
                        Some(ControlType::Commit) => expected.push(*record),
                        Some(ControlType::Abort) => {}
                    }
                }
            }
            if read != expected {
                return Err(format!(
                    "partition {partition}: read_committed below {last_stable} read {read:?}, expected {expected:?}"
                ));
            }
            let now_visible: BTreeSet<u64> = read.iter().copied().collect();
            if let Some(lost) = data.seen_visible.difference(&now_visible).next() {
                return Err(format!(
                    "partition {partition}: record {lost} was visible and is no more"
                ));
            }
            for record in &read {
                let attempt = self.record_attempt.get(record).copied();
                if attempt.is_none_or(|a| !self.attempts[a].commit_sent) {
                    return Err(format!(
                        "partition {partition}: record {record} of a transaction that never asked to commit is visible"
                    ));
                }
            }
            data.seen_visible = now_visible;
        }
        Ok(())
    }

    /// After settling: everything decided, each transaction one fate.
    fn check_final(&mut self) -> Result<(), String> {
        self.check_reads()?;
        let mut fates: BTreeMap<usize, BTreeSet<(ControlType, i32)>> = BTreeMap::new();
        for partition in 0..DATA_PARTITIONS {
            let data = &self.data[partition as usize];
            if data.index.open_transactions() != 0 {
                return Err(format!(
                    "partition {partition}: transactions still open after settling"
                ));
            }
            let decided = decisions(&data.entries);
            for (offset, entry) in data.entries.iter().enumerate() {
                let Entry::Data { record, .. } = entry else {
                    continue;
                };
                let fate = decided[offset].ok_or_else(|| {
                    format!("partition {partition}: record {record} never decided")
                })?;
                if let Some(&attempt) = self.record_attempt.get(record) {
                    fates.entry(attempt).or_default().insert((fate, partition));
                }
            }
            self.stats.records_visible += data.seen_visible.len() as u64;
        }
        for (attempt, fate) in fates {
            let kinds: BTreeSet<ControlType> = fate.iter().map(|(kind, _)| *kind).collect();
            let info = &self.attempts[attempt];
            if kinds.len() > 1 {
                return Err(format!(
                    "transaction {attempt} partly committed, partly aborted: {fate:?} ({info:?})"
                ));
            }
            let committed = kinds.contains(&ControlType::Commit);
            if info.commit_acknowledged && !committed {
                return Err(format!(
                    "transaction {attempt}: commit acknowledged, records aborted"
                ));
            }
            if !info.commit_sent && committed {
                return Err(format!(
                    "transaction {attempt}: never asked to commit, committed"
                ));
            }
        }
        Ok(())
    }

    /// What keeps [`Self::settled`] false (for the failure report).
    fn unsettled(&self) -> String {
        let mut what = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            match &node.coordinator {
                None => what.push(format!("node {index} down")),
                Some(coordinator) => {
                    for (id, metadata) in coordinator.transactions() {
                        if metadata.state == TxnState::Ongoing || metadata.state.is_preparing() {
                            what.push(format!("node {index}: {id} {metadata:?}"));
                        }
                    }
                }
            }
        }
        if !self.marker_jobs.is_empty() {
            what.push(format!("{} marker jobs", self.marker_jobs.len()));
        }
        for (index, log) in self.logs.iter().enumerate() {
            if log.durable != log.records.len() {
                what.push(format!(
                    "log {index}: {} of {} durable",
                    log.durable,
                    log.records.len()
                ));
            }
        }
        for (index, data) in self.data.iter().enumerate() {
            if data.index.open_transactions() != 0 {
                what.push(format!(
                    "data {index}: {} open",
                    data.index.open_transactions()
                ));
            }
            if data.high_watermark != data.entries.len() as i64 {
                what.push(format!(
                    "data {index}: hw {} of {}",
                    data.high_watermark,
                    data.entries.len()
                ));
            }
        }
        what.join("; ")
    }

    /// Heals everything and lets every timeout fire; true once nothing is
    /// open anywhere.
    fn settled(&self) -> bool {
        self.nodes.iter().all(|node| node.coordinator.is_some())
            && self.marker_jobs.is_empty()
            && self.logs.iter().all(|log| log.durable == log.records.len())
            && self.data.iter().all(|data| {
                data.index.open_transactions() == 0
                    && data.high_watermark == data.entries.len() as i64
            })
            && self
                .nodes
                .iter()
                .filter_map(|node| node.coordinator.as_ref())
                .all(|c| {
                    c.transactions().all(|(_, metadata)| {
                        !matches!(metadata.state, TxnState::Ongoing)
                            && !metadata.state.is_preparing()
                    })
                })
    }

    fn run(&mut self, steps: u64) -> Result<(), String> {
        for _ in 0..steps {
            self.step_world()?;
        }
        self.settling = true;
        self.params.durable_pm = 1000;
        self.params.marker_pm = 1000;
        self.params.high_watermark_pm = 1000;
        for session in &mut self.sessions {
            session.hung_until_ms = 0;
        }
        for _ in 0..FINAL_BOUND_STEPS {
            self.step_world()?;
            if self.settled() {
                return self.check_final();
            }
        }
        Err(format!(
            "did not settle: a transaction stays open ({})",
            self.unsettled()
        ))
    }
}

fn add_partitions(index: usize, producer: ProducerIdAndEpoch, partition: i32) -> Input {
    Input::AddPartitions {
        request: 0,
        transactional_id: transactional_id(index),
        producer,
        partitions: vec![TopicPartition::new(TOPIC, partition)],
    }
}

fn with_request(input: Input, id: RequestId) -> Input {
    match input {
        Input::InitProducerId {
            transactional_id,
            timeout_ms,
            expected,
            ..
        } => Input::InitProducerId {
            request: id,
            transactional_id,
            timeout_ms,
            expected,
        },
        Input::AddPartitions {
            transactional_id,
            producer,
            partitions,
            ..
        } => Input::AddPartitions {
            request: id,
            transactional_id,
            producer,
            partitions,
        },
        Input::AddOffsets {
            transactional_id,
            producer,
            offsets_partition,
            ..
        } => Input::AddOffsets {
            request: id,
            transactional_id,
            producer,
            offsets_partition,
        },
        Input::EndTxn {
            transactional_id,
            producer,
            commit,
            ..
        } => Input::EndTxn {
            request: id,
            transactional_id,
            producer,
            commit,
        },
        other => other,
    }
}

fn response_for(input: &Input, result: Result<(), TxnError>) -> Response {
    match input {
        Input::InitProducerId { .. } => {
            Response::InitProducerId(result.map(|()| ProducerIdAndEpoch {
                producer_id: -1,
                epoch: -1,
            }))
        }
        Input::AddOffsets { .. } => Response::AddOffsets(result),
        Input::EndTxn { .. } => Response::EndTxn(result),
        _ => Response::AddPartitions(result),
    }
}

/// For each entry, the fate of a data entry: the type of the next marker
/// of its producer id after it (`None`: not decided yet).
fn decisions(entries: &[Entry]) -> Vec<Option<ControlType>> {
    let mut next_marker: HashMap<i64, ControlType> = HashMap::new();
    let mut decided = vec![None; entries.len()];
    for (offset, entry) in entries.iter().enumerate().rev() {
        match entry {
            Entry::Marker {
                producer_id,
                control,
            } => {
                next_marker.insert(*producer_id, *control);
            }
            Entry::Data { producer_id, .. } => {
                decided[offset] = next_marker.get(producer_id).copied();
            }
        }
    }
    decided
}

/// Kafka's consumer in `read_committed`: aborted transactions enter the
/// aborted set when the read reaches their first offset and leave it at
/// their ABORT marker; data of a producer in the set is dropped.
fn read_committed(entries: &[Entry], aborted: &[AbortedTxn]) -> Vec<u64> {
    let mut pending: Vec<AbortedTxn> = aborted.to_vec();
    pending.sort_by_key(|txn| std::cmp::Reverse(txn.first_offset));
    let mut aborted_producers: BTreeSet<i64> = BTreeSet::new();
    let mut read = Vec::new();
    for (offset, entry) in entries.iter().enumerate() {
        while pending
            .last()
            .is_some_and(|txn| txn.first_offset <= offset as i64)
        {
            if let Some(txn) = pending.pop() {
                aborted_producers.insert(txn.producer_id);
            }
        }
        match entry {
            Entry::Marker {
                producer_id,
                control: ControlType::Abort,
            } => {
                aborted_producers.remove(producer_id);
            }
            Entry::Marker { .. } => {}
            Entry::Data {
                producer_id,
                record,
            } => {
                if !aborted_producers.contains(producer_id) {
                    read.push(*record);
                }
            }
        }
    }
    read
}

fn run_one(seed: u64, steps: u64) -> Result<Stats, String> {
    let mut world = World::new(seed)?;
    match world.run(steps) {
        Ok(()) => Ok(world.stats),
        Err(problem) => {
            let mut report = format!(
                "seed {seed} failed at step {}: {problem}\nparams: {:?}\nlast events:\n",
                world.step, world.params
            );
            for line in &world.trace {
                report.push_str(line);
                report.push('\n');
            }
            Err(report)
        }
    }
}

#[test]
fn read_committed_sees_whole_committed_transactions_and_nothing_aborted() {
    let (seeds, steps) = seed_plan("KAFKI_TXN", 16, 1_500);
    let total = run_seeds(&seeds, steps, 300, 20, run_one, add_stats);
    // The run must have exercised what it checks.
    assert!(total.commits_acknowledged > 0 && total.aborts_acknowledged > 0);
    assert!(total.records_visible > 0 && total.crashes > 0 && total.failovers > 0);
}
