//! A deterministic, seeded simulation of partition replication (tests
//! only): three replicas (nodes 1, 2, 3), each a [`PartitionReplica`] over a
//! simulated disk, and a tiny controller (endpoint 0) standing in for the
//! metadata quorum: it commits ISR proposals by compare-and-set on the
//! partition epoch (rejecting the addition of a fenced node, KIP-841), fences
//! nodes whose heartbeats stop, elects leaders with [`elect_leader`] /
//! [`fence_replica`] (never unclean), and bumps the leader epoch when its
//! leader comes back as a new process (a restarted node must not lead its
//! old epoch). Every message, the controller's included, crosses a seeded
//! network that drops, delays (so reorders) and duplicates them, and splits
//! the endpoints into two sides for a while. Nodes crash (a crash keeps the
//! fsync'd records and a random prefix of the rest: a torn tail) and restart
//! from their disk. Clients produce with `acks=all` at whichever node
//! admits them.
//!
//! The checker: (1) after every step each machine's picture of its log is
//! its disk's; (2) consumers' view: every high watermark a leader shows a
//! consumer covers records equal to every other shown (one committed
//! prefix), and across epochs it never goes back (the highest shown in an
//! epoch is at most the lowest shown in any later one); (3) at the end,
//! after healing and restarting everyone: a leader with all three replicas
//! in the ISR, a final produce acknowledged, every acknowledged record
//! (offset, epoch, payload) at its offset on every ISR member and on the
//! leader, the ISR members' logs equal up to the high watermark, and the
//! committed prefix a prefix of the leader's log.
//!
//! Simulated time moves 5 ms a step; randomness comes from one seeded
//! generator. Fixed seeds run in `cargo test`; `KAFKI_REPL_SEEDS` (count),
//! `KAFKI_REPL_STEPS` and `KAFKI_REPL_SEED` (just that one) run more:
//! `KAFKI_REPL_SEEDS=500 KAFKI_REPL_STEPS=20000 cargo test -p kafki-broker --release --lib replication::simulation -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::simulation_support::{run_seeds, seed_plan, Rng};

use super::election::{elect_leader, fence_replica};
use super::*;

const NODES: [NodeId; 3] = [1, 2, 3];
const CONTROLLER: NodeId = 0;
const STEP_MS: u64 = 5;
const HEARTBEAT_MS: u64 = 50;
const SESSION_MS: u64 = 400;
const BROADCAST_MS: u64 = 200;
const TRACE_LINES: usize = 150;
/// Steps the final phase may take to converge and acknowledge.
const FINAL_BOUND_STEPS: u64 = 4_000;

/// How hostile one seed's world is.
#[derive(Debug, Clone, Copy)]
struct Params {
    drop_pm: u64,
    dup_pm: u64,
    /// Messages take 0..=max_delay steps.
    max_delay_steps: u64,
    /// Per step, of some up node crashing.
    crash_pm: u64,
    partition_pm: u64,
    produce_pm: u64,
    /// Per step and node, of an fsync (group commit) completing.
    fsync_pm: u64,
    min_insync_replicas: usize,
}

impl Params {
    fn for_seed(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x4E91_1CA7_10C0_FFEE);
        Params {
            drop_pm: rng.range(0, 80),
            dup_pm: rng.range(0, 40),
            max_delay_steps: rng.range(1, 8),
            crash_pm: rng.range(1, 6),
            partition_pm: rng.range(1, 5),
            produce_pm: rng.range(100, 500),
            fsync_pm: rng.range(100, 700),
            min_insync_replicas: 1 + (seed % 3) as usize,
        }
    }

    fn config(&self) -> ReplicationConfig {
        ReplicationConfig {
            min_insync_replicas: self.min_insync_replicas,
            replica_lag_time_max_ms: 500,
            fetch_max_wait_ms: 100,
            fetch_timeout_ms: 250,
            fetch_backoff_ms: 20,
            isr_retry_ms: 200,
            fetch_max_records: 40,
        }
    }
}

/// One record on a simulated disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    epoch: LeaderEpoch,
    payload: u64,
}

/// What survives a crash: the records, of which the first `synced` were
/// fsync'd.
#[derive(Debug, Default)]
struct Disk {
    records: Vec<Rec>,
    synced: usize,
}

impl Disk {
    fn epochs(&self) -> Vec<(LeaderEpoch, Offset)> {
        let mut epochs: Vec<(LeaderEpoch, Offset)> = Vec::new();
        for (offset, rec) in self.records.iter().enumerate() {
            if epochs.last().is_none_or(|(epoch, _)| *epoch != rec.epoch) {
                epochs.push((rec.epoch, offset as Offset));
            }
        }
        epochs
    }

    fn picture(&self) -> Result<LocalLog, String> {
        let end = self.records.len() as Offset;
        LocalLog::new(self.epochs(), end, self.synced as Offset).map_err(|e| format!("disk: {e}"))
    }
}

/// A running process of a node: what a crash throws away.
struct Process {
    machine: PartitionReplica,
    incarnation: u64,
    /// The controller answered this incarnation's registration.
    registered: bool,
    next_heartbeat_ms: u64,
    /// `acks=all` produces appended here: (end offset, records by offset).
    waiting: Vec<(Offset, Vec<(Offset, Rec)>)>,
}

struct Node {
    id: NodeId,
    disk: Disk,
    process: Option<Process>,
    restart_at_ms: u64,
    incarnations: u64,
}

#[derive(Debug, Clone)]
enum Msg {
    Fetch(FetchRequest),
    Answer(FetchResponse, Vec<Rec>),
    Propose(IsrProposal),
    Rejected {
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
    },
    Metadata {
        record: PartitionRecord,
        incarnation: u64,
    },
    Heartbeat {
        incarnation: u64,
    },
}

struct Packet {
    due_ms: u64,
    from: NodeId,
    to: NodeId,
    msg: Msg,
}

/// The metadata quorum, reduced to what replication needs.
struct Controller {
    record: PartitionRecord,
    last_heard_ms: BTreeMap<NodeId, u64>,
    incarnation: BTreeMap<NodeId, u64>,
    fenced: BTreeSet<NodeId>,
    next_broadcast_ms: u64,
}

#[derive(Debug, Default)]
struct Stats {
    produced: u64,
    acknowledged: u64,
    after_append_refusals: u64,
    not_enough_replicas: u64,
    failed_on_step_down: u64,
    crashes: u64,
    torn_records: u64,
    partitions: u64,
    elections: u64,
    isr_commits: u64,
    isr_rejections: u64,
    truncations: u64,
    dropped: u64,
    max_epoch: LeaderEpoch,
    final_log_end: Offset,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.produced += other.produced;
        self.acknowledged += other.acknowledged;
        self.after_append_refusals += other.after_append_refusals;
        self.not_enough_replicas += other.not_enough_replicas;
        self.failed_on_step_down += other.failed_on_step_down;
        self.crashes += other.crashes;
        self.torn_records += other.torn_records;
        self.partitions += other.partitions;
        self.elections += other.elections;
        self.isr_commits += other.isr_commits;
        self.isr_rejections += other.isr_rejections;
        self.truncations += other.truncations;
        self.dropped += other.dropped;
        self.max_epoch = self.max_epoch.max(other.max_epoch);
        self.final_log_end += other.final_log_end;
    }
}

/// What the checker remembers across the run.
#[derive(Default)]
struct Check {
    acknowledged: BTreeMap<Offset, Rec>,
    /// Leader epoch → (lowest, highest) high watermark shown to consumers.
    shown: BTreeMap<LeaderEpoch, (Offset, Offset)>,
    /// The records below the highest high watermark ever shown.
    committed: Vec<Rec>,
    /// (node, incarnation, epoch, high watermark) last checked per node.
    last_shown: BTreeMap<NodeId, (u64, LeaderEpoch, Offset)>,
}

struct Sim {
    seed: u64,
    params: Params,
    rng: Rng,
    now_ms: u64,
    nodes: Vec<Node>,
    controller: Controller,
    packets: Vec<Packet>,
    /// Endpoint → side, while the network is split.
    split: Option<(BTreeMap<NodeId, u8>, u64)>,
    faults: bool,
    next_payload: u64,
    check: Check,
    stats: Stats,
    trace: VecDeque<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let params = Params::for_seed(seed);
        let record = PartitionRecord {
            replicas: NODES.to_vec(),
            isr: NODES.to_vec(),
            leader: Some(NODES[0]),
            leader_epoch: 0,
            partition_epoch: 0,
        };
        let mut sim = Sim {
            seed,
            params,
            rng: Rng(seed),
            now_ms: 0,
            nodes: NODES
                .iter()
                .map(|id| Node {
                    id: *id,
                    disk: Disk::default(),
                    process: None,
                    restart_at_ms: 0,
                    incarnations: 0,
                })
                .collect(),
            controller: Controller {
                record,
                last_heard_ms: NODES.iter().map(|n| (*n, 0)).collect(),
                incarnation: BTreeMap::new(),
                fenced: BTreeSet::new(),
                next_broadcast_ms: 0,
            },
            packets: Vec::new(),
            split: None,
            faults: true,
            next_payload: 1,
            check: Check::default(),
            stats: Stats::default(),
            trace: VecDeque::new(),
        };
        for id in NODES {
            sim.start(id);
        }
        sim
    }

    fn trace(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t{} {line}", self.now_ms));
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    // ---- the network ----

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        if self.faults && self.rng.chance(self.params.drop_pm) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.faults && self.rng.chance(self.params.dup_pm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.below(self.params.max_delay_steps + 1) * STEP_MS;
            self.packets.push(Packet {
                due_ms: self.now_ms + delay,
                from,
                to,
                msg: msg.clone(),
            });
        }
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.split
            .as_ref()
            .is_some_and(|(side, _)| side.get(&a) != side.get(&b))
    }

    fn deliver_due(&mut self) -> Result<(), String> {
        let now = self.now_ms;
        let (due, later): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.packets)
            .into_iter()
            .partition(|p| p.due_ms <= now);
        self.packets = later;
        for packet in due {
            if self.cut(packet.from, packet.to) {
                self.stats.dropped += 1;
                continue;
            }
            if packet.to == CONTROLLER {
                self.controller_receive(packet.from, packet.msg);
            } else {
                self.node_receive(packet.to, packet.msg)?;
            }
        }
        Ok(())
    }

    // ---- the controller ----

    fn alive(&self, node: NodeId) -> bool {
        !self.controller.fenced.contains(&node) && self.controller.incarnation.contains_key(&node)
    }

    fn commit(&mut self, record: PartitionRecord, why: &str) {
        if record.leader != self.controller.record.leader
            || record.leader_epoch != self.controller.record.leader_epoch
        {
            self.stats.elections += 1;
        } else {
            self.stats.isr_commits += 1;
        }
        self.stats.max_epoch = self.stats.max_epoch.max(record.leader_epoch);
        self.trace(format!(
            "controller commits ({why}): leader {:?} epoch {} isr {:?} partition epoch {}",
            record.leader, record.leader_epoch, record.isr, record.partition_epoch
        ));
        self.controller.record = record;
        self.broadcast();
    }

    fn broadcast(&mut self) {
        let targets: Vec<(NodeId, u64)> = self
            .controller
            .incarnation
            .iter()
            .map(|(n, i)| (*n, *i))
            .collect();
        for (node, incarnation) in targets {
            let record = self.controller.record.clone();
            self.send(
                CONTROLLER,
                node,
                Msg::Metadata {
                    record,
                    incarnation,
                },
            );
        }
        self.controller.next_broadcast_ms = self.now_ms + BROADCAST_MS;
    }

    fn controller_receive(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Heartbeat { incarnation } => self.heartbeat(from, incarnation),
            Msg::Propose(proposal) => self.propose(from, proposal),
            _ => {}
        }
    }

    fn heartbeat(&mut self, from: NodeId, incarnation: u64) {
        let known = self.controller.incarnation.get(&from).copied();
        if known.is_some_and(|k| k > incarnation) {
            return; // from a process that since restarted
        }
        self.controller.last_heard_ms.insert(from, self.now_ms);
        if known != Some(incarnation) {
            self.controller.incarnation.insert(from, incarnation);
            self.controller.fenced.remove(&from);
            self.trace(format!(
                "controller: n{from} registers incarnation {incarnation}"
            ));
            if known.is_some() && self.controller.record.leader == Some(from) {
                // Its old epoch must not be led again by the new process.
                let alive = |n: NodeId| self.alive(n);
                let elected = elect_leader(&self.controller.record, alive, false);
                if let Some(election) = elected {
                    self.commit(election.record, "leader restarted");
                }
            }
        } else if self.controller.fenced.remove(&from) {
            self.trace(format!("controller: n{from} unfenced"));
        }
        self.elect_if_offline();
        let record = self.controller.record.clone();
        self.send(
            CONTROLLER,
            from,
            Msg::Metadata {
                record,
                incarnation,
            },
        );
    }

    fn elect_if_offline(&mut self) {
        if self.controller.record.leader.is_some() {
            return;
        }
        let alive = |n: NodeId| self.alive(n);
        if let Some(election) = elect_leader(&self.controller.record, alive, false) {
            self.commit(election.record, "offline partition");
        }
    }

    fn propose(&mut self, from: NodeId, proposal: IsrProposal) {
        let current = self.controller.record.clone();
        let mut wanted = proposal.isr.clone();
        let mut have = current.isr.clone();
        wanted.sort_unstable();
        have.sort_unstable();
        let from_leader = proposal.leader == from
            && current.leader == Some(from)
            && proposal.leader_epoch == current.leader_epoch;
        let fenced_added = proposal
            .isr
            .iter()
            .any(|n| !current.isr.contains(n) && !self.alive(*n));
        let well_formed = proposal.isr.contains(&from)
            && proposal.isr.iter().all(|n| current.replicas.contains(n));
        if from_leader && proposal.partition_epoch != current.partition_epoch && wanted == have {
            // A retry of what already committed: answer with the state.
            let record = current.clone();
            let incarnation = self.controller.incarnation.get(&from).copied().unwrap_or(0);
            self.send(
                CONTROLLER,
                from,
                Msg::Metadata {
                    record,
                    incarnation,
                },
            );
        } else if from_leader
            && proposal.partition_epoch == current.partition_epoch
            && !fenced_added
            && well_formed
        {
            let record = PartitionRecord {
                isr: proposal.isr,
                partition_epoch: current.partition_epoch + 1,
                ..current
            };
            self.commit(record, &format!("n{from}'s proposal"));
        } else {
            self.stats.isr_rejections += 1;
            self.trace(format!("controller rejects n{from}'s {proposal:?}"));
            let rejected = Msg::Rejected {
                leader_epoch: proposal.leader_epoch,
                partition_epoch: proposal.partition_epoch,
            };
            self.send(CONTROLLER, from, rejected);
            let record = current.clone();
            let incarnation = self.controller.incarnation.get(&from).copied().unwrap_or(0);
            self.send(
                CONTROLLER,
                from,
                Msg::Metadata {
                    record,
                    incarnation,
                },
            );
        }
    }

    fn controller_tick(&mut self) {
        let now = self.now_ms;
        let silent: Vec<NodeId> = self
            .controller
            .last_heard_ms
            .iter()
            .filter(|(n, heard)| {
                now.saturating_sub(**heard) > SESSION_MS && !self.controller.fenced.contains(n)
            })
            .map(|(n, _)| *n)
            .collect();
        for node in silent {
            self.controller.fenced.insert(node);
            self.trace(format!("controller fences n{node}"));
            let alive = |n: NodeId| self.alive(n);
            if let Some(record) = fence_replica(&self.controller.record, node, alive, false) {
                self.commit(record, &format!("n{node} fenced"));
            }
        }
        self.elect_if_offline();
        if now >= self.controller.next_broadcast_ms {
            self.broadcast();
        }
    }

    // ---- the nodes ----

    fn start(&mut self, id: NodeId) {
        let now = self.now_ms;
        let config = self.params.config();
        let node = self.node(id);
        node.incarnations += 1;
        let incarnation = node.incarnations;
        let log = match node.disk.picture() {
            Ok(log) => log,
            Err(_) => LocalLog::empty(),
        };
        node.process = Some(Process {
            machine: PartitionReplica::new(id, config, log, 0, now),
            incarnation,
            registered: false,
            next_heartbeat_ms: now,
            waiting: Vec::new(),
        });
        self.trace(format!("n{id} starts (incarnation {incarnation})"));
    }

    fn crash(&mut self, id: NodeId) {
        let keep_extra = {
            let disk = &self.node(id).disk;
            (disk.records.len() - disk.synced) as u64
        };
        let keep_extra = self.rng.below(keep_extra + 1) as usize;
        let down_ms = self.rng.range(20, 1_500);
        let now = self.now_ms;
        let node = self.node(id);
        let lost = node.disk.records.len() - node.disk.synced - keep_extra;
        node.disk.records.truncate(node.disk.synced + keep_extra);
        // Recovery fsyncs what it kept.
        node.disk.synced = node.disk.records.len();
        node.process = None;
        node.restart_at_ms = now + down_ms;
        self.stats.crashes += 1;
        self.stats.torn_records += lost as u64;
        self.trace(format!(
            "n{id} crashes: {lost} unsynced records lost, {keep_extra} kept; down {down_ms} ms"
        ));
    }

    /// Feeds `input` to node `id`'s machine and carries out the effects;
    /// `incoming` holds the record payloads of a fetch answer.
    fn drive(
        &mut self,
        id: NodeId,
        input: Input,
        incoming: Option<(Offset, Vec<Rec>)>,
    ) -> Result<(), String> {
        let mut effects = Vec::new();
        let Some(process) = self.node(id).process.as_mut() else {
            return Ok(());
        };
        let described = format!("{input:?}");
        process
            .machine
            .handle(input, &mut effects)
            .map_err(|e| format!("n{id} refused {described}: {e}"))?;
        for effect in effects {
            self.carry_out(id, effect, incoming.as_ref())?;
        }
        Ok(())
    }

    fn carry_out(
        &mut self,
        id: NodeId,
        effect: Effect,
        incoming: Option<&(Offset, Vec<Rec>)>,
    ) -> Result<(), String> {
        match effect {
            Effect::AnswerFetch { to, response } => {
                let mut records = Vec::new();
                if let FetchBody::Records(ranges) = &response.body {
                    let disk = &self.node(id).disk;
                    for range in ranges {
                        for offset in range.start..range.end {
                            let rec = disk.records.get(offset as usize).copied();
                            match rec {
                                Some(rec) if rec.epoch == range.epoch => records.push(rec),
                                _ => {
                                    return Err(format!(
                                        "n{id} answers {range:?} its disk does not hold"
                                    ))
                                }
                            }
                        }
                    }
                }
                self.send(id, to, Msg::Answer(response, records));
            }
            Effect::SendFetch { to, request } => self.send(id, to, Msg::Fetch(request)),
            Effect::Append { ranges } => {
                let Some((from, records)) = incoming else {
                    return Err(format!("n{id} appends without an answer"));
                };
                let disk = &mut self.node(id).disk;
                for range in ranges {
                    if range.start != disk.records.len() as Offset {
                        return Err(format!("n{id} appends {range:?} at {}", disk.records.len()));
                    }
                    for offset in range.start..range.end {
                        let rec = records.get((offset - from) as usize).copied();
                        match rec {
                            Some(rec) if rec.epoch == range.epoch => disk.records.push(rec),
                            _ => return Err(format!("n{id}: answer lacks {offset} of {range:?}")),
                        }
                    }
                }
            }
            Effect::TruncateTo { offset } => {
                let disk = &mut self.node(id).disk;
                let had = disk.records.len();
                disk.records.truncate(offset as usize);
                disk.synced = disk.synced.min(offset as usize);
                self.stats.truncations += 1;
                self.trace(format!("n{id} truncates {had} -> {offset}"));
            }
            Effect::ResetTo { offset } => {
                // The simulated leaders never delete records, so never
                // answer out of range.
                return Err(format!("n{id}: reset to {offset} without a log start"));
            }
            Effect::HighWatermarkAdvanced { .. } => {}
            Effect::CompleteProduces { upto, outcome } => self.complete(id, upto, outcome)?,
            Effect::FailProduces { .. } => {
                if let Some(process) = self.node(id).process.as_mut() {
                    let failed = process.waiting.len() as u64;
                    process.waiting.clear();
                    self.stats.failed_on_step_down += failed;
                }
            }
            Effect::ProposeIsr(proposal) => {
                self.trace(format!(
                    "n{id} proposes isr {:?} from partition epoch {}",
                    proposal.isr, proposal.partition_epoch
                ));
                self.send(id, CONTROLLER, Msg::Propose(proposal));
            }
        }
        Ok(())
    }

    fn complete(
        &mut self,
        id: NodeId,
        upto: Offset,
        outcome: ProduceOutcome,
    ) -> Result<(), String> {
        let Some(process) = self.node(id).process.as_mut() else {
            return Ok(());
        };
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut process.waiting)
            .into_iter()
            .partition(|(end, _)| *end <= upto);
        process.waiting = still;
        for (_, records) in done {
            if outcome != ProduceOutcome::Acknowledged {
                self.stats.after_append_refusals += 1;
                continue;
            }
            self.stats.acknowledged += records.len() as u64;
            for (offset, rec) in records {
                if let Some(previous) = self.check.acknowledged.insert(offset, rec) {
                    if previous != rec {
                        return Err(format!(
                            "offset {offset} acknowledged twice: {previous:?} then {rec:?} (by n{id})"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn node_receive(&mut self, id: NodeId, msg: Msg) -> Result<(), String> {
        let Some(process) = self.node(id).process.as_mut() else {
            return Ok(());
        };
        match msg {
            Msg::Metadata {
                record,
                incarnation,
            } => {
                if incarnation != process.incarnation {
                    return Ok(()); // meant for an earlier process of this node
                }
                process.registered = true;
                let before = (
                    process.machine.is_leader(),
                    process.machine.following(),
                    process.machine.leader_epoch(),
                );
                self.drive(id, Input::Metadata(record), None)?;
                if let Some(process) = self.node(id).process.as_ref() {
                    let after = (
                        process.machine.is_leader(),
                        process.machine.following(),
                        process.machine.leader_epoch(),
                    );
                    if after != before {
                        self.trace(format!(
                            "n{id} role: leader {} following {:?} epoch {}",
                            after.0, after.1, after.2
                        ));
                    }
                }
                Ok(())
            }
            _ if !process.registered => Ok(()),
            Msg::Fetch(request) => self.drive(id, Input::FollowerFetch(request), None),
            Msg::Answer(response, records) => {
                let from = response.fetch_offset;
                self.drive(id, Input::FetchAnswer(response), Some((from, records)))
            }
            Msg::Rejected {
                leader_epoch,
                partition_epoch,
            } => self.drive(
                id,
                Input::IsrRejected {
                    leader_epoch,
                    partition_epoch,
                },
                None,
            ),
            Msg::Propose(_) | Msg::Heartbeat { .. } => Ok(()),
        }
    }

    fn node_step(&mut self, id: NodeId) -> Result<(), String> {
        let now = self.now_ms;
        let Some(process) = self.node(id).process.as_mut() else {
            if self.node(id).restart_at_ms <= now {
                self.start(id);
            }
            return Ok(());
        };
        if process.next_heartbeat_ms <= now {
            process.next_heartbeat_ms = now + HEARTBEAT_MS;
            let incarnation = process.incarnation;
            self.send(id, CONTROLLER, Msg::Heartbeat { incarnation });
        }
        self.drive(id, Input::Tick { now_ms: now }, None)?;
        if self.rng.chance(self.params.fsync_pm) {
            let disk = &mut self.node(id).disk;
            if disk.synced < disk.records.len() {
                disk.synced = disk.records.len();
                let offset = disk.synced as Offset;
                self.drive(id, Input::LocalDurable { offset }, None)?;
            }
        }
        Ok(())
    }

    /// A client's `acks=all` produce of 1..=3 records at node `id`.
    fn produce(&mut self, id: NodeId) -> Result<bool, String> {
        let count = self.rng.range(1, 4);
        let Some(process) = self.node(id).process.as_ref() else {
            return Ok(false);
        };
        if !process.registered {
            return Ok(false);
        }
        let epoch = match process.machine.admit_produce(Acks::All) {
            Ok(epoch) => epoch,
            Err(ProduceRefusal::NotEnoughReplicas) => {
                self.stats.not_enough_replicas += 1;
                return Ok(false);
            }
            Err(ProduceRefusal::NotLeaderOrFollower) => return Ok(false),
        };
        let first_payload = self.next_payload;
        self.next_payload += count;
        let node = self.node(id);
        let mut records = Vec::new();
        for payload in first_payload..first_payload + count {
            let rec = Rec { epoch, payload };
            records.push((node.disk.records.len() as Offset, rec));
            node.disk.records.push(rec);
        }
        let end_offset = node.disk.records.len() as Offset;
        if let Some(process) = node.process.as_mut() {
            process.waiting.push((end_offset, records));
        }
        self.stats.produced += count;
        self.drive(id, Input::LocalAppended { end_offset, epoch }, None)?;
        Ok(true)
    }

    fn faults_step(&mut self) {
        if self.rng.chance(self.params.crash_pm) {
            let id = NODES[self.rng.below(NODES.len() as u64) as usize];
            if self.node(id).process.is_some() {
                self.crash(id);
            }
        }
        match &self.split {
            Some((_, heal_at)) if *heal_at <= self.now_ms => {
                self.split = None;
                self.trace("network heals".to_string());
            }
            None if self.rng.chance(self.params.partition_pm) => {
                let mut side = BTreeMap::new();
                for endpoint in [CONTROLLER, 1, 2, 3] {
                    side.insert(endpoint, self.rng.below(2) as u8);
                }
                let heal_at = self.now_ms + self.rng.range(100, 2_500);
                self.trace(format!("network splits: {side:?} until t{heal_at}"));
                self.split = Some((side, heal_at));
                self.stats.partitions += 1;
            }
            _ => {}
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.now_ms += STEP_MS;
        if self.faults {
            self.faults_step();
        }
        self.deliver_due()?;
        self.controller_tick();
        for id in NODES {
            self.node_step(id)?;
        }
        if self.rng.chance(self.params.produce_pm) {
            let id = NODES[self.rng.below(NODES.len() as u64) as usize];
            self.produce(id)?;
        }
        self.check_step()
    }

    // ---- the checker ----

    fn check_step(&mut self) -> Result<(), String> {
        for index in 0..self.nodes.len() {
            let node = &self.nodes[index];
            let Some(process) = &node.process else {
                continue;
            };
            let log = process.machine.log();
            let id = node.id;
            if log.end_offset() != node.disk.records.len() as Offset
                || log.epochs() != node.disk.epochs()
            {
                return Err(format!(
                    "n{id}'s machine sees end {} epochs {:?}, its disk has {} records, epochs {:?}",
                    log.end_offset(),
                    log.epochs(),
                    node.disk.records.len(),
                    node.disk.epochs()
                ));
            }
            if log.durable_offset() > node.disk.synced as Offset {
                return Err(format!(
                    "n{id} believes {} durable, disk synced {}",
                    log.durable_offset(),
                    node.disk.synced
                ));
            }
            let Some(shown) = process.machine.consumer_high_watermark() else {
                continue;
            };
            let key = (process.incarnation, process.machine.leader_epoch(), shown);
            if self.check.last_shown.get(&id) == Some(&key) {
                continue;
            }
            let epoch = key.1;
            self.check.last_shown.insert(id, key);
            let entry = self.check.shown.entry(epoch).or_insert((shown, shown));
            entry.0 = entry.0.min(shown);
            entry.1 = entry.1.max(shown);
            let records = &self.nodes[index].disk.records;
            let common = (shown as usize).min(self.check.committed.len());
            if let Some(offset) = (0..common).find(|o| records[*o] != self.check.committed[*o]) {
                return Err(format!(
                    "n{id} (epoch {epoch}) shows high watermark {shown} but its record at {offset} is {:?}, \
                     {:?} was shown committed before",
                    records[offset], self.check.committed[offset]
                ));
            }
            if shown as usize > self.check.committed.len() {
                self.check
                    .committed
                    .extend_from_slice(&records[common..shown as usize]);
            }
        }
        Ok(())
    }

    fn check_consumer_order(&self) -> Result<(), String> {
        let mut highest_before: Option<(LeaderEpoch, Offset)> = None;
        for (epoch, (lowest, highest)) in &self.check.shown {
            if let Some((earlier, high)) = highest_before {
                if *lowest < high {
                    return Err(format!(
                        "consumers saw high watermark {high} in epoch {earlier}, then {lowest} in epoch {epoch}"
                    ));
                }
            }
            let top = highest_before.map_or(*highest, |(_, h)| h.max(*highest));
            highest_before = Some((*epoch, top));
        }
        Ok(())
    }

    fn leader(&self) -> Option<&Node> {
        let leader = self.controller.record.leader?;
        let node = &self.nodes[(leader - 1) as usize];
        let process = node.process.as_ref()?;
        (process.machine.is_leader()
            && process.machine.leader_epoch() == self.controller.record.leader_epoch)
            .then_some(node)
    }

    /// Everyone up, the whole ISR at the leader's end and high watermark.
    fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(process) = &leader.process else {
            return false;
        };
        let end = process.machine.log().end_offset();
        self.controller.record.isr.len() == NODES.len()
            && process
                .machine
                .isr()
                .is_some_and(|isr| isr.len() == NODES.len())
            && process.machine.high_watermark() == end
            && process.waiting.is_empty()
            && self.nodes.iter().all(|n| {
                n.process.as_ref().is_some_and(|p| {
                    p.machine.log().end_offset() == end && p.machine.log().durable_offset() == end
                })
            })
    }

    /// Heals everything, restarts everyone, and checks the end state.
    fn finish(&mut self) -> Result<(), String> {
        self.faults = false;
        self.split = None;
        self.trace("final phase: no more faults".to_string());
        for id in NODES {
            self.node(id).restart_at_ms = 0;
        }
        let mut produced_final = false;
        let acknowledged_before = self.stats.acknowledged;
        for _ in 0..FINAL_BOUND_STEPS {
            self.now_ms += STEP_MS;
            self.deliver_due()?;
            self.controller_tick();
            for id in NODES {
                self.node_step(id)?;
            }
            self.check_step()?;
            // Until one is acknowledged (one may end NOT_ENOUGH_REPLICAS_
            // AFTER_APPEND while the ISR regrows, or fail on a step down).
            let acknowledged = self.stats.acknowledged > acknowledged_before;
            if let (false, Some(leader)) = (acknowledged, self.controller.record.leader) {
                let idle = self.nodes[(leader - 1) as usize]
                    .process
                    .as_ref()
                    .is_some_and(|p| p.waiting.is_empty());
                if idle {
                    produced_final |= self.produce(leader)?;
                }
            }
            if acknowledged && self.converged() {
                return self.check_end();
            }
        }
        Err(format!(
            "no convergence within {FINAL_BOUND_STEPS} steps (final produce appended: {produced_final}, \
             acknowledged since: {})",
            self.stats.acknowledged - acknowledged_before
        ))
    }

    fn check_end(&mut self) -> Result<(), String> {
        self.check_consumer_order()?;
        let leader = self.leader().ok_or("no leader at the end")?;
        let leader_records = leader.disk.records.clone();
        let leader_id = leader.id;
        let high_watermark = leader
            .process
            .as_ref()
            .map_or(0, |p| p.machine.high_watermark());
        self.stats.final_log_end = leader_records.len() as Offset;
        let mut holders: BTreeSet<NodeId> = self.controller.record.isr.iter().copied().collect();
        holders.insert(leader_id);
        for id in holders {
            let records = &self.nodes[(id - 1) as usize].disk.records;
            for (offset, rec) in &self.check.acknowledged {
                if records.get(*offset as usize) != Some(rec) {
                    return Err(format!(
                        "acknowledged {rec:?} at {offset} lost on n{id}: it has {:?}",
                        records.get(*offset as usize)
                    ));
                }
            }
            let upto = high_watermark as usize;
            if records.get(..upto) != leader_records.get(..upto) {
                return Err(format!(
                    "n{id} and leader n{leader_id} differ below the high watermark {upto}"
                ));
            }
        }
        if leader_records.get(..self.check.committed.len()) != Some(&self.check.committed[..]) {
            return Err("the records once shown committed are not the leader's prefix".to_string());
        }
        Ok(())
    }

    fn report(&self, error: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replication simulation seed {} failed at t{}: {error}\nreproduce: KAFKI_REPL_SEED={} cargo test -p kafki-broker --lib replication::simulation -- --nocapture\nparams: {:?}\nstats: {:?}\ncontroller: {:?} fenced {:?}\nlast events:",
            self.seed, self.now_ms, self.seed, self.params, self.stats, self.controller.record, self.controller.fenced
        );
        for line in &self.trace {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "nodes:");
        for node in &self.nodes {
            let epochs = node.disk.epochs();
            let _ = match &node.process {
                None => writeln!(out, "  n{} down; disk {} records ({} synced) epochs {epochs:?}", node.id, node.disk.records.len(), node.disk.synced),
                Some(p) => writeln!(
                    out,
                    "  n{} incarnation {} leader {} following {:?} epoch {} hw {} isr {:?}; disk {} records ({} synced) epochs {epochs:?}",
                    node.id,
                    p.incarnation,
                    p.machine.is_leader(),
                    p.machine.following(),
                    p.machine.leader_epoch(),
                    p.machine.high_watermark(),
                    p.machine.isr(),
                    node.disk.records.len(),
                    node.disk.synced
                ),
            };
        }
        out
    }
}

/// Runs one seed for `steps` steps and the final phase; the stats, or the
/// failure report.
fn run_seed(seed: u64, steps: u64) -> Result<Stats, String> {
    let mut sim = Sim::new(seed);
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for _ in 0..steps {
            sim.step()?;
        }
        sim.finish()
    }));
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(panic) => Err(format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    match outcome {
        Ok(()) => Ok(std::mem::take(&mut sim.stats)),
        Err(error) => Err(sim.report(&error)),
    }
}

#[test]
fn no_acknowledged_write_is_lost() {
    let (seeds, steps) = seed_plan("KAFKI_REPL", 24, 3_000);
    let total = run_seeds(&seeds, steps, 800, 50, run_seed, Stats::add);
    if seeds.len() >= 8 {
        // The faults reach what they are meant to reach.
        assert!(total.crashes > 0 && total.torn_records > 0 && total.partitions > 0);
        assert!(total.elections > 0 && total.isr_commits > 0 && total.truncations > 0);
        assert!(
            total.acknowledged > 0 && total.after_append_refusals + total.not_enough_replicas > 0
        );
    }
}
