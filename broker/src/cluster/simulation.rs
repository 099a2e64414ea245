//! A deterministic, seeded simulation of the cluster's metadata layer (tests
//! only): N raft-rs `RawNode<MetadataLog>` nodes driven as `quorum.rs`
//! drives them (same `raft::Config`, same order of `Ready` handling, the log
//! persisted through a real [`LogFile`] in a temp dir, snapshots by
//! [`MetadataLog::compact`] + [`LogFile::write_snapshot`]), each applying the
//! committed commands to its own [`ClusterMetadata`], over a seeded network
//! that delays, drops, duplicates and reorders messages, splits the nodes
//! into partitions and heals them, while nodes crash (in-memory state gone,
//! sometimes halfway through a `Ready`) and restart from their files.
//!
//! The checker: (1) safety: every node applies the same entry at the same
//! index, the same image at the same log offset (also a node rebuilt from
//! its snapshot), entries in order, one leader per term; (2) nothing
//! committed is lost: after healing and restarting every node, all converge
//! to one image whose offset covers every entry any node ever applied, and
//! folding the applied entries from an empty image gives the same images;
//! (3) liveness: after healing, a leader is elected and a new proposal
//! commits within a bounded number of ticks.
//!
//! Found so far: a follower the leader sent a snapshot to stayed behind for
//! good when the snapshot was lost or ignored (raft-rs keeps it in the
//! Snapshot state until `report_snapshot`); `quorum.rs` now reports each
//! snapshot send, and so does this driver.
//!
//! Simulated time is ticks; randomness comes from one seeded generator
//! (raft-rs draws its election timeouts from `thread_rng`: every timeout it
//! draws is replaced by one from the seed). Fixed seeds run in `cargo test`;
//! `KAFKI_SIM_SEEDS` (count), `KAFKI_SIM_STEPS` and `KAFKI_SIM_SEED` (just
//! that one) run more:
//! `KAFKI_SIM_SEEDS=200 KAFKI_SIM_STEPS=5000 cargo test -p kafki-broker --release --lib cluster::simulation`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::simulation_support::{run_seeds, seed_plan, Rng};

use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};

use super::log_store::{LogFile, MetadataLog, PersistBatch};
use super::quorum::{node_of, raft_config, raft_id};
use crate::metadata::command::{MetadataCommand, ProposalId, Verdict};
use crate::metadata::{ClusterMetadata, MetadataRecord, NodeRegistration, NodeState, TopicMeta};

/// Bytes of applied commands after which a node snapshots (small, so that
/// snapshots, and snapshot transfers to lagging nodes, happen often).
const SNAPSHOT_BYTES: u64 = 1500;
/// `quorum.rs` proposes again after 1.5 s (15 ticks) without an answer,
/// and gives up after 10 s.
const RETRY_TICKS: u64 = 15;
const GIVE_UP_TICKS: u64 = 100;
/// raft-rs draws election timeouts in `[election_tick, 2 * election_tick)`.
const ELECTION_TICKS: u64 = 10;
/// Trace lines kept for a failure report.
const TRACE_LINES: usize = 80;
/// Bounds of the final phase, in ticks.
const LEADER_BOUND: u64 = 200;
const COMMIT_BOUND: u64 = 300;
const CONVERGE_BOUND: u64 = 600;

/// How hostile one seed's world is.
#[derive(Debug, Clone, Copy)]
struct Params {
    nodes: usize,
    drop_pm: u64,
    /// The transport refuses a message (a full queue): the sender knows.
    refuse_pm: u64,
    dup_pm: u64,
    /// Messages take 0..=max_delay ticks.
    max_delay: u64,
    crash_pm: u64,
    /// Of the crashes, how many (per mille) happen halfway through a Ready.
    mid_ready_pm: u64,
    partition_pm: u64,
    propose_pm: u64,
}

impl Params {
    fn for_seed(seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x5EED_F00D_C1A5_7E25);
        Params {
            nodes: if seed.is_multiple_of(3) { 5 } else { 3 },
            drop_pm: rng.range(0, 100),
            refuse_pm: rng.range(0, 20),
            dup_pm: rng.range(0, 40),
            max_delay: rng.range(1, 6),
            crash_pm: rng.range(1, 8),
            mid_ready_pm: 400,
            partition_pm: rng.range(1, 8),
            propose_pm: rng.range(100, 400),
        }
    }
}

/// Where a crash scheduled inside `process_ready` strikes: after this step
/// of the first Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// The leader's messages went out, nothing persisted.
    Messages,
    /// A received snapshot is installed and on disk, the rest not.
    Snapshot,
    /// The batch is on disk, its persisted messages not sent.
    Persist,
}

/// One node's process: what a crash throws away.
struct SimNode {
    raw: RawNode<MetadataLog>,
    log: MetadataLog,
    file: LogFile,
    image: ClusterMetadata,
    bytes_since_snapshot: u64,
    /// The election timeout set from the seed, and the (term, role,
    /// leader) it was set for.
    timeout: usize,
    timeout_key: (u64, StateRole, u64),
    crash_at: Option<CrashPoint>,
}

enum Slot {
    Up(Box<SimNode>),
    Down { restart_at: u64 },
}

struct Packet {
    due: u64,
    msg: Message,
}

/// A client's command waiting for its proposer to apply it (`quorum.rs`'s
/// `waiting`), proposed again every `RETRY_TICKS`.
struct Pending {
    node: usize,
    command: MetadataCommand,
    next_try: u64,
    give_up: u64,
}

#[derive(Debug, Default)]
struct Stats {
    proposals: u64,
    applied: u64,
    conflicts: u64,
    snapshots_made: u64,
    snapshots_installed: u64,
    snapshots_sent: u64,
    crashes: u64,
    mid_ready_crashes: u64,
    partitions: u64,
    dropped: u64,
    max_term: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.proposals += other.proposals;
        self.applied += other.applied;
        self.conflicts += other.conflicts;
        self.snapshots_made += other.snapshots_made;
        self.snapshots_installed += other.snapshots_installed;
        self.snapshots_sent += other.snapshots_sent;
        self.crashes += other.crashes;
        self.mid_ready_crashes += other.mid_ready_crashes;
        self.partitions += other.partitions;
        self.dropped += other.dropped;
        self.max_term = self.max_term.max(other.max_term);
    }
}

/// What every node applied, as first seen: the reference the others are
/// compared with.
#[derive(Default)]
struct Checker {
    /// Index → (term, data, first node that applied it).
    entries: BTreeMap<u64, (u64, Vec<u8>, usize)>,
    /// Log offset → (image JSON, first node that reached it).
    images: BTreeMap<u64, (String, usize)>,
    /// Term → its leader.
    leaders: BTreeMap<u64, u64>,
    max_applied: u64,
}

impl Checker {
    fn entry(&mut self, node: usize, entry: &Entry) -> Result<(), String> {
        let (term, data, first) = self
            .entries
            .entry(entry.index)
            .or_insert_with(|| (entry.term, entry.data.to_vec(), node));
        if *term != entry.term || data.as_slice() != &entry.data[..] {
            return Err(format!(
                "safety: n{node} applied entry {} (term {}, {} bytes) but n{first} applied (term {term}, {} bytes) there",
                entry.index,
                entry.term,
                entry.data.len(),
                data.len()
            ));
        }
        self.max_applied = self.max_applied.max(entry.index);
        Ok(())
    }

    fn image(&mut self, node: usize, image: &ClusterMetadata) -> Result<(), String> {
        let json = serde_json::to_string(image).map_err(|e| e.to_string())?;
        let (seen, first) = self
            .images
            .entry(image.log_offset)
            .or_insert_with(|| (json.clone(), node));
        if *seen != json {
            return Err(format!(
                "safety: n{node}'s image at offset {} differs from n{first}'s:\n  n{node}: {json}\n  n{first}: {seen}",
                image.log_offset
            ));
        }
        Ok(())
    }
}

/// Everything but the nodes: network, clients, checker, trace.
struct World {
    rng: Rng,
    params: Params,
    now: u64,
    net: Vec<Packet>,
    /// Partition group of each node (all 0: healed).
    groups: Vec<u8>,
    heal_at: Option<u64>,
    /// Faults on (off in the final phase).
    faults: bool,
    pending: Vec<Pending>,
    sequence: u64,
    check: Checker,
    stats: Stats,
    trace: VecDeque<String>,
}

impl World {
    fn trace(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t{:>5} {line}", self.now));
    }

    /// Hands one message to the network: refused (a full queue: `false`,
    /// the sender knows), or taken, then maybe dropped (the sender does not
    /// know), delayed, duplicated.
    fn transmit(&mut self, msg: Message) -> bool {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.stats.snapshots_sent += 1;
            let line = format!(
                "n{} sends a snapshot at {} to n{}",
                node_of(msg.from),
                msg.get_snapshot().get_metadata().index,
                node_of(msg.to)
            );
            self.trace(line);
        }
        if self.faults && self.rng.chance(self.params.refuse_pm) {
            self.stats.dropped += 1;
            return false;
        }
        if self.faults && self.rng.chance(self.params.drop_pm) {
            self.stats.dropped += 1;
            return true;
        }
        if self.faults && self.rng.chance(self.params.dup_pm) {
            let due = self.now + self.rng.range(0, self.params.max_delay + 1);
            self.net.push(Packet {
                due,
                msg: msg.clone(),
            });
        }
        let due = self.now + self.rng.range(0, self.params.max_delay + 1);
        self.net.push(Packet { due, msg });
        true
    }
}

/// `Quorum::send_messages`: a snapshot's send is reported to raft-rs.
fn send_messages(node: &mut SimNode, w: &mut World, messages: Vec<Message>) {
    for msg in messages {
        let (to, snapshot) = (msg.to, msg.get_msg_type() == MessageType::MsgSnapshot);
        let sent = w.transmit(msg);
        if snapshot {
            let status = if sent {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            node.raw.report_snapshot(to, status);
        }
    }
}

/// raft-rs takes its election timeouts from `thread_rng`; replace each new
/// one with one from the seed so a run is a function of its seed.
fn fix_timeout(node: &mut SimNode, rng: &mut Rng) {
    let raft = &node.raw.raft;
    let key = (raft.term, raft.state, raft.leader_id);
    if key != node.timeout_key || raft.randomized_election_timeout() != node.timeout {
        let timeout = rng.range(ELECTION_TICKS, 2 * ELECTION_TICKS) as usize;
        node.raw.raft.set_randomized_election_timeout(timeout);
        node.timeout = timeout;
        node.timeout_key = key;
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Starts node `me` from its files, as `Quorum::start` does: the log, the
/// image from the snapshot, applied = the snapshot's index, the bootstrap
/// conf state persisted on a first start.
fn start(me: usize, nodes: usize, dir: &Path, w: &mut World) -> Result<SimNode, String> {
    let (mut file, recovered) =
        LogFile::open(dir).map_err(|e| format!("n{me}: opening the log: {e:#}"))?;
    let voters: Vec<u64> = (0..nodes).map(|id| raft_id(id as i32)).collect();
    let (log, bootstrap) = MetadataLog::from_recovered(recovered, &voters);
    let snapshot = log.snapshot_metadata();
    let mut image = ClusterMetadata::default();
    if snapshot.index > 0 {
        let data = Storage::snapshot(&log, snapshot.index, 0)
            .map(|snapshot| snapshot.get_data().to_vec())
            .unwrap_or_default();
        image = serde_json::from_slice(&data)
            .map_err(|e| format!("n{me}: the snapshot's image is damaged: {e}"))?;
        if image.log_offset != snapshot.index {
            return Err(format!(
                "n{me}: snapshot at {} holds an image at offset {}",
                snapshot.index, image.log_offset
            ));
        }
        w.check.image(me, &image)?;
    }
    let config = raft_config(me as i32, snapshot.index);
    config.validate().map_err(|e| e.to_string())?;
    let raw = RawNode::new(&config, log.clone(), &logger())
        .map_err(|e| format!("n{me}: starting raft: {e}"))?;
    if let Some(conf_state) = bootstrap {
        file.persist(&PersistBatch {
            conf_state: Some(conf_state),
            ..Default::default()
        })
        .map_err(|e| format!("n{me}: persisting the bootstrap conf state: {e}"))?;
    }
    let hard_state = log.hard_state();
    w.trace(format!(
        "n{me} starts: snapshot {}, last {}, term {}, commit {}",
        snapshot.index,
        raft::Storage::last_index(&log).unwrap_or(0),
        hard_state.term,
        hard_state.commit
    ));
    let mut node = SimNode {
        raw,
        log,
        file,
        image,
        bytes_since_snapshot: 0,
        timeout: 0,
        timeout_key: (u64::MAX, StateRole::Follower, 0),
        crash_at: None,
    };
    fix_timeout(&mut node, &mut w.rng);
    Ok(node)
}

enum Outcome {
    Done,
    Crashed,
}

/// `Quorum::process_ready`, synchronously, with crash points.
fn process_ready(me: usize, node: &mut SimNode, w: &mut World) -> Result<Outcome, String> {
    let before = node.image.log_offset;
    let crash_at = node.crash_at.take();
    while node.raw.has_ready() {
        let mut ready = node.raw.ready();
        send_messages(node, w, ready.take_messages());
        if crash_at == Some(CrashPoint::Messages) {
            return Ok(Outcome::Crashed);
        }
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let image: ClusterMetadata = serde_json::from_slice(snapshot.get_data())
                .map_err(|e| format!("n{me}: a snapshot from the leader is damaged: {e}"))?;
            let index = snapshot.get_metadata().index;
            node.log
                .apply_snapshot(snapshot)
                .map_err(|e| format!("n{me}: installing snapshot {index}: {e}"))?;
            let (snapshot, remaining) = node.log.durable_image();
            node.file
                .write_snapshot(&snapshot, &remaining)
                .map_err(|e| format!("n{me}: persisting snapshot {index}: {e}"))?;
            if image.log_offset != index {
                return Err(format!(
                    "n{me}: snapshot at {index} holds an image at offset {}",
                    image.log_offset
                ));
            }
            w.check.image(me, &image)?;
            w.stats.snapshots_installed += 1;
            w.trace(format!("n{me} installs a snapshot at {index}"));
            node.image = image;
            if crash_at == Some(CrashPoint::Snapshot) {
                return Ok(Outcome::Crashed);
            }
        }
        apply_entries(me, node, ready.take_committed_entries(), w)?;
        let mut batch = PersistBatch::default();
        if !ready.entries().is_empty() {
            batch.truncate_from = node
                .log
                .append(ready.entries())
                .map_err(|e| format!("n{me}: appending: {e}"))?;
            batch.entries = ready.entries().to_vec();
        }
        if let Some(hard_state) = ready.hs() {
            node.log.set_hard_state(hard_state.clone());
            batch.hard_state = Some(hard_state.clone());
        }
        if !batch.is_empty() {
            node.file
                .persist(&batch)
                .map_err(|e| format!("n{me}: persisting: {e}"))?;
        }
        if crash_at == Some(CrashPoint::Persist) {
            return Ok(Outcome::Crashed);
        }
        send_messages(node, w, ready.take_persisted_messages());
        let mut light = node.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            node.log.set_commit(commit);
        }
        send_messages(node, w, light.take_messages());
        apply_entries(me, node, light.take_committed_entries(), w)?;
        node.raw.advance_apply();
    }
    if node.image.log_offset != before {
        maybe_snapshot(me, node, w)?;
    }
    fix_timeout(node, &mut w.rng);
    Ok(if crash_at.is_some() {
        // The crash point was not reached: crash after the Ready instead.
        Outcome::Crashed
    } else {
        Outcome::Done
    })
}

/// `Quorum::apply_entries`, checking each entry and image on the way.
fn apply_entries(
    me: usize,
    node: &mut SimNode,
    entries: Vec<Entry>,
    w: &mut World,
) -> Result<(), String> {
    for entry in entries {
        if entry.index != node.image.log_offset + 1 {
            return Err(format!(
                "n{me}: entry {} applied to an image at offset {}",
                entry.index, node.image.log_offset
            ));
        }
        w.check.entry(me, &entry)?;
        node.image = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => node.image.skip_entry(entry.index),
            EntryType::EntryNormal => match MetadataCommand::decode(&entry.data) {
                Ok(command) => {
                    node.bytes_since_snapshot += entry.data.len() as u64;
                    let (next, verdict) = node.image.apply_command(entry.index, &command);
                    if command.proposal.node == me as i32 {
                        // The proposer learns its verdict (`waiting`).
                        w.pending
                            .retain(|p| !(p.node == me && p.command.proposal == command.proposal));
                        match verdict {
                            Verdict::Applied => w.stats.applied += 1,
                            Verdict::Conflict | Verdict::Refused(_) => w.stats.conflicts += 1,
                        }
                    }
                    next
                }
                Err(error) => {
                    return Err(format!(
                        "n{me}: entry {} does not decode: {error}",
                        entry.index
                    ))
                }
            },
            other => {
                return Err(format!(
                    "n{me}: unexpected {other:?} entry at {}",
                    entry.index
                ))
            }
        };
        w.check.image(me, &node.image)?;
    }
    Ok(())
}

/// `Quorum::maybe_snapshot`.
fn maybe_snapshot(me: usize, node: &mut SimNode, w: &mut World) -> Result<(), String> {
    if node.bytes_since_snapshot < SNAPSHOT_BYTES {
        return Ok(());
    }
    let index = node.image.log_offset;
    let data = serde_json::to_vec(&node.image).map_err(|e| e.to_string())?;
    if node
        .log
        .compact(index, data)
        .map_err(|e| format!("n{me}: compacting to {index}: {e}"))?
    {
        let (snapshot, remaining) = node.log.durable_image();
        node.file
            .write_snapshot(&snapshot, &remaining)
            .map_err(|e| format!("n{me}: writing snapshot {index}: {e}"))?;
        w.stats.snapshots_made += 1;
        w.trace(format!("n{me} snapshots at {index}"));
    }
    node.bytes_since_snapshot = 0;
    Ok(())
}

struct Sim {
    seed: u64,
    root: PathBuf,
    nodes: Vec<Slot>,
    w: World,
}

impl Sim {
    fn new(seed: u64, root: &Path) -> Result<Self, String> {
        let params = Params::for_seed(seed);
        let mut w = World {
            rng: Rng(seed),
            params,
            now: 0,
            net: Vec::new(),
            groups: vec![0; params.nodes],
            heal_at: None,
            faults: true,
            pending: Vec::new(),
            sequence: 0,
            check: Checker::default(),
            stats: Stats::default(),
            trace: VecDeque::new(),
        };
        w.trace(format!("seed {seed}: {params:?}"));
        let mut nodes = Vec::new();
        for me in 0..params.nodes {
            let node = start(me, params.nodes, &root.join(format!("n{me}")), &mut w)?;
            nodes.push(Slot::Up(Box::new(node)));
        }
        Ok(Sim {
            seed,
            root: root.to_path_buf(),
            nodes,
            w,
        })
    }

    fn node(&self, me: usize) -> Option<&SimNode> {
        match &self.nodes[me] {
            Slot::Up(node) => Some(node),
            Slot::Down { .. } => None,
        }
    }

    fn crash(&mut self, me: usize, restart_at: u64) {
        self.nodes[me] = Slot::Down { restart_at };
        self.w.pending.retain(|p| p.node != me);
        self.w.stats.crashes += 1;
        self.w
            .trace(format!("n{me} crashes (back at t{restart_at})"));
    }

    fn restart(&mut self, me: usize) -> Result<(), String> {
        let dir = self.root.join(format!("n{me}"));
        let node = start(me, self.w.params.nodes, &dir, &mut self.w)?;
        self.nodes[me] = Slot::Up(Box::new(node));
        Ok(())
    }

    /// Runs `process_ready` on `me` (if up); a scheduled crash takes it down.
    fn drive(&mut self, me: usize) -> Result<(), String> {
        let Slot::Up(node) = &mut self.nodes[me] else {
            return Ok(());
        };
        let role = (node.raw.raft.state, node.raw.raft.term);
        let outcome = process_ready(me, node, &mut self.w)?;
        let now_role = (node.raw.raft.state, node.raw.raft.term);
        if now_role != role && now_role.0 == StateRole::Leader {
            self.w.trace(format!("n{me} leads term {}", now_role.1));
        }
        if let Outcome::Crashed = outcome {
            self.w.stats.mid_ready_crashes += 1;
            let restart_at = self.w.now + self.w.rng.range(1, 60);
            self.crash(me, restart_at);
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.w.now += 1;
        let now = self.w.now;
        let n = self.nodes.len();
        for me in 0..n {
            if matches!(self.nodes[me], Slot::Down { restart_at } if restart_at <= now) {
                self.restart(me)?;
            }
        }
        if self.w.heal_at.is_some_and(|at| at <= now) {
            self.w.heal_at = None;
            self.w.groups = vec![0; n];
            self.w.trace("partition healed".to_string());
        }

        // Deliver what is due, in random order.
        let (mut due, rest): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.w.net)
            .into_iter()
            .partition(|p| p.due <= now);
        self.w.net = rest;
        self.w.rng.shuffle(&mut due);
        for packet in due {
            let from = node_of(packet.msg.from) as usize;
            let to = node_of(packet.msg.to) as usize;
            if self.w.groups[from] != self.w.groups[to] {
                continue;
            }
            let Slot::Up(node) = &mut self.nodes[to] else {
                continue;
            };
            // Refused messages are only logged by quorum.rs.
            let _ = node.raw.step(packet.msg);
            fix_timeout(node, &mut self.w.rng);
            // Sometimes a Ready per message, sometimes one for several.
            if self.w.rng.chance(500) {
                self.drive(to)?;
            }
        }
        for me in 0..n {
            self.drive(me)?;
        }

        // Ticks (rarely one is late: ticks are dropped when the queue is full).
        for me in 0..n {
            if let Slot::Up(node) = &mut self.nodes[me] {
                if !self.w.rng.chance(20) {
                    node.raw.tick();
                    fix_timeout(node, &mut self.w.rng);
                }
            }
            self.drive(me)?;
        }

        // Clients.
        if self.w.faults && self.w.rng.chance(self.w.params.propose_pm) {
            let me = self.w.rng.below(n as u64) as usize;
            if self.node(me).is_some() {
                self.new_proposal(me);
            }
        }
        self.retry_proposals()?;

        // Faults.
        if self.w.faults {
            if self.w.rng.chance(self.w.params.crash_pm) {
                let me = self.w.rng.below(n as u64) as usize;
                if let Slot::Up(node) = &mut self.nodes[me] {
                    if self.w.rng.chance(self.w.params.mid_ready_pm) {
                        let phase = match self.w.rng.below(3) {
                            0 => CrashPoint::Messages,
                            1 => CrashPoint::Snapshot,
                            _ => CrashPoint::Persist,
                        };
                        node.crash_at = Some(phase);
                        self.w
                            .trace(format!("n{me} will crash in its next Ready ({phase:?})"));
                    } else {
                        let restart_at = now + self.w.rng.range(1, 80);
                        self.crash(me, restart_at);
                    }
                }
            }
            if self.w.heal_at.is_none() && self.w.rng.chance(self.w.params.partition_pm) {
                let groups: Vec<u8> = (0..n).map(|_| self.w.rng.below(2) as u8).collect();
                let heal_at = now + self.w.rng.range(10, 200);
                self.w
                    .trace(format!("partition {groups:?} until t{heal_at}"));
                self.w.groups = groups;
                self.w.heal_at = Some(heal_at);
                self.w.stats.partitions += 1;
            }
        }
        self.check_leaders()
    }

    /// At most one leader per term, ever.
    fn check_leaders(&mut self) -> Result<(), String> {
        for (me, slot) in self.nodes.iter().enumerate() {
            let Slot::Up(node) = slot else { continue };
            let raft = &node.raw.raft;
            self.w.stats.max_term = self.w.stats.max_term.max(raft.term);
            if raft.state == StateRole::Leader {
                let leader = *self.w.check.leaders.entry(raft.term).or_insert(raft.id);
                if leader != raft.id {
                    return Err(format!(
                        "safety: n{me} and n{} both lead term {}",
                        node_of(leader),
                        raft.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// A client's command at node `me`, validated against its image (so
    /// concurrent ones conflict), proposed as `Quorum::propose` does.
    fn new_proposal(&mut self, me: usize) {
        let Some(node) = self.node(me) else { return };
        let image = node.image.clone();
        let n = self.nodes.len();
        let rng = &mut self.w.rng;
        let topics: Vec<&TopicMeta> = image.topics.values().collect();
        let offset = image.log_offset;
        let (records, expected_offset) = match rng.below(100) {
            0..=39 => {
                let name = format!("t{}", rng.below(16));
                if let Some(topic) = image.topics.get(&name) {
                    let name = topic.name.clone();
                    (vec![MetadataRecord::TopicRemoved { name }], Some(offset))
                } else {
                    let partitions = rng.range(1, 4) as i32;
                    let topic = TopicMeta {
                        name,
                        id: uuid::Uuid::from_u128(u128::from(rng.next()) << 64 | 1),
                        partitions,
                        configs: BTreeMap::new(),
                        internal: false,
                        replicas: image
                            .place_partitions(partitions as usize, 1)
                            .unwrap_or_default(),
                    };
                    let mut records = vec![MetadataRecord::Topic(topic.clone())];
                    // Replication state too, so every node must agree on it.
                    records.extend(crate::metadata::partitions::initial_partition_records(
                        &topic, 0,
                    ));
                    if rng.chance(200) {
                        records.push(MetadataRecord::LeaderChange {
                            topic: topic.name,
                            partition: 0,
                        });
                    }
                    (records, Some(offset))
                }
            }
            40..=54 if !topics.is_empty() => {
                let topic = topics[rng.below(topics.len() as u64) as usize];
                let expected = rng.chance(500).then_some(offset);
                (
                    vec![MetadataRecord::TopicRemoved {
                        name: topic.name.clone(),
                    }],
                    expected,
                )
            }
            55..=69 if !topics.is_empty() => {
                let topic = topics[rng.below(topics.len() as u64) as usize];
                let partition = rng.below(topic.partitions as u64) as i32;
                let expected = rng.chance(500).then_some(offset);
                (
                    vec![MetadataRecord::LeaderChange {
                        topic: topic.name.clone(),
                        partition,
                    }],
                    expected,
                )
            }
            70..=84 => {
                let id = rng.below(n as u64) as i32;
                let registration = NodeRegistration {
                    id,
                    epoch: 0,
                    host: format!("node{id}"),
                    port: 9092,
                    cluster_listen: format!("127.0.0.1:{}", 9100 + id),
                    rack: None,
                    shards: 1,
                    incarnation: 0,
                    state: NodeState::Alive,
                };
                (vec![MetadataRecord::NodeRegistered(registration)], None)
            }
            85..=94 if !image.nodes.is_empty() => {
                let nodes: Vec<&NodeRegistration> = image.nodes.values().collect();
                let node = nodes[rng.below(nodes.len() as u64) as usize];
                let state = match rng.below(3) {
                    0 => NodeState::Alive,
                    1 => NodeState::Fenced,
                    _ => NodeState::ShuttingDown,
                };
                (
                    vec![MetadataRecord::NodeStateChanged {
                        node: node.id,
                        epoch: node.epoch,
                        state,
                    }],
                    None,
                )
            }
            _ => (
                vec![MetadataRecord::ClusterId(format!(
                    "cluster-{}",
                    rng.below(1000)
                ))],
                None,
            ),
        };
        self.w.sequence += 1;
        let command = MetadataCommand {
            proposal: ProposalId {
                node: me as i32,
                sequence: self.w.sequence,
            },
            expected_offset,
            records,
        };
        self.w.stats.proposals += 1;
        self.w.trace(format!(
            "n{me} proposes #{} (expected {:?}): {:?}",
            command.proposal.sequence,
            command.expected_offset,
            command.records.first().map(record_kind)
        ));
        let now = self.w.now;
        self.w.pending.push(Pending {
            node: me,
            command,
            next_try: now,
            give_up: now + GIVE_UP_TICKS,
        });
    }

    /// Proposes every pending command whose time came (the first try too).
    fn retry_proposals(&mut self) -> Result<(), String> {
        let now = self.w.now;
        self.w.pending.retain(|p| p.give_up > now);
        let mut due = Vec::new();
        for pending in &mut self.w.pending {
            if pending.next_try <= now {
                pending.next_try = now + RETRY_TICKS;
                due.push((pending.node, pending.command.encode()));
            }
        }
        for (me, data) in due {
            if let Slot::Up(node) = &mut self.nodes[me] {
                // Dropped without a leader: proposed again later.
                let _ = node.raw.propose(Vec::new(), data);
                fix_timeout(node, &mut self.w.rng);
                self.drive(me)?;
            }
        }
        Ok(())
    }

    /// Steps until `done` holds, at most `bound` steps; the steps it took.
    fn run_until(
        &mut self,
        bound: u64,
        what: &str,
        done: impl Fn(&Sim) -> bool,
    ) -> Result<u64, String> {
        for steps in 0..bound {
            if done(self) {
                return Ok(steps);
            }
            self.step()?;
        }
        if done(self) {
            return Ok(bound);
        }
        Err(format!("liveness: {what} not within {bound} ticks"))
    }

    /// The leader every up node follows, if all are up and agree.
    fn agreed_leader(&self) -> Option<usize> {
        let mut leader = None;
        for slot in &self.nodes {
            let Slot::Up(node) = slot else { return None };
            let id = node.raw.raft.leader_id;
            if id == raft::INVALID_ID || leader.is_some_and(|l| l != id) {
                return None;
            }
            leader = Some(id);
        }
        let leader = node_of(leader?) as usize;
        (self.node(leader)?.raw.raft.state == StateRole::Leader).then_some(leader)
    }

    /// Every node applied everything the leader has.
    fn quiet(&self) -> bool {
        let Some(leader) = self.agreed_leader() else {
            return false;
        };
        let Some(raft) = self.node(leader).map(|n| &n.raw.raft) else {
            return false;
        };
        let last = raft.raft_log.last_index();
        raft.raft_log.committed == last
            && self.nodes.iter().all(|slot| match slot {
                Slot::Up(node) => node.image.log_offset == last,
                Slot::Down { .. } => false,
            })
    }

    /// Heal and restart the nodes that are down: a leader comes, a new
    /// command commits everywhere, all nodes converge, without any leader
    /// change forced. Then the same after restarting every node from disk.
    /// Each time, the converged image covers every entry ever applied.
    fn finish(&mut self) -> Result<(), String> {
        self.w.faults = false;
        self.w.heal_at = None;
        self.w.groups = vec![0; self.nodes.len()];
        self.w.pending.clear();
        self.w
            .trace("final phase: healed, restarting the nodes down".to_string());
        for me in 0..self.nodes.len() {
            if self.node(me).is_none() {
                self.restart(me)?;
            }
        }
        self.settle("healed")?;
        self.w
            .trace("final phase: restarting every node from disk".to_string());
        for me in 0..self.nodes.len() {
            self.nodes[me] = Slot::Down { restart_at: 0 };
            self.restart(me)?;
        }
        self.settle("restarted")
    }

    /// Liveness and convergence in a healed world.
    fn settle(&mut self, when: &str) -> Result<(), String> {
        let took = self.run_until(
            LEADER_BOUND,
            &format!("{when}: a leader all nodes follow"),
            |sim| sim.agreed_leader().is_some(),
        )?;
        self.w
            .trace(format!("{when}: leader agreed after {took} ticks"));
        // A new command, at a random node (forwarded by a follower).
        let me = self.w.rng.below(self.nodes.len() as u64) as usize;
        self.w.sequence += 1;
        let proposal = ProposalId {
            node: me as i32,
            sequence: self.w.sequence,
        };
        let command = MetadataCommand {
            proposal,
            expected_offset: None,
            records: vec![MetadataRecord::ClusterId(format!("final-{when}"))],
        };
        let now = self.w.now;
        self.w.pending.push(Pending {
            node: me,
            command,
            next_try: now,
            give_up: u64::MAX,
        });
        self.w
            .trace(format!("{when}: proposal #{} at n{me}", proposal.sequence));
        let took = self.run_until(
            COMMIT_BOUND,
            &format!("{when}: a new proposal applied"),
            |sim| sim.w.pending.is_empty(),
        )?;
        self.w
            .trace(format!("{when}: proposal applied after {took} ticks"));
        self.run_until(
            CONVERGE_BOUND,
            &format!("{when}: every node applying the whole log"),
            |sim| sim.quiet(),
        )?;
        self.check_converged()
    }

    fn check_converged(&self) -> Result<(), String> {
        let images: Vec<&ClusterMetadata> = (0..self.nodes.len())
            .filter_map(|me| self.node(me).map(|n| &n.image))
            .collect();
        let first = images[0];
        for (me, image) in images.iter().enumerate() {
            if *image != first {
                return Err(format!(
                    "convergence: n{me} at {} differs from n0 at {}",
                    image.log_offset, first.log_offset
                ));
            }
        }
        if first.log_offset < self.w.check.max_applied {
            return Err(format!(
                "lost: entry {} was applied once, the converged image is at {}",
                self.w.check.max_applied, first.log_offset
            ));
        }
        // Fold every applied entry from an empty image: the same images.
        let mut image = ClusterMetadata::default();
        for index in 1..=first.log_offset {
            let Some((_, data, _)) = self.w.check.entries.get(&index) else {
                return Err(format!("no node applied entry {index} by itself"));
            };
            image = if data.is_empty() {
                image.skip_entry(index)
            } else {
                let command = MetadataCommand::decode(data).map_err(|e| e.to_string())?;
                image.apply_command(index, &command).0
            };
            let json = serde_json::to_string(&image).map_err(|e| e.to_string())?;
            if self.w.check.images.get(&index).map(|(j, _)| j) != Some(&json) {
                return Err(format!(
                    "the image at {index} is not the fold of the entries up to it"
                ));
            }
        }
        if image != *first {
            return Err("the converged image is not the fold of the log".to_string());
        }
        Ok(())
    }

    fn report(&self, error: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "simulation seed {} failed at t{}: {error}\nreproduce: KAFKI_SIM_SEED={} cargo test -p kafki-broker --lib cluster::simulation -- --nocapture\nstats: {:?}\nlast events:",
            self.seed, self.w.now, self.seed, self.w.stats
        );
        for line in &self.w.trace {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "nodes:");
        for (me, slot) in self.nodes.iter().enumerate() {
            let Slot::Up(node) = slot else {
                let _ = writeln!(out, "  n{me} down");
                continue;
            };
            let raft = &node.raw.raft;
            let _ = writeln!(
                out,
                "  n{me} {:?} term {} leader {} commit {} last {} applied {} snapshot {}",
                raft.state,
                raft.term,
                raft.leader_id,
                raft.raft_log.committed,
                raft.raft_log.last_index(),
                node.image.log_offset,
                node.log.snapshot_metadata().index
            );
            if raft.state == StateRole::Leader {
                let mut progress: Vec<_> = raft.prs().iter().collect();
                progress.sort_by_key(|(id, _)| **id);
                for (id, pr) in progress {
                    let _ = writeln!(
                        out,
                        "    n{}: {:?} matched {} next {} pending snapshot {} paused {}",
                        node_of(*id),
                        pr.state,
                        pr.matched,
                        pr.next_idx,
                        pr.pending_snapshot,
                        pr.paused
                    );
                }
            }
        }
        out
    }
}

fn record_kind(record: &MetadataRecord) -> String {
    match record {
        MetadataRecord::Topic(topic) => format!("Topic({})", topic.name),
        MetadataRecord::TopicRemoved { name } => format!("TopicRemoved({name})"),
        MetadataRecord::LeaderChange { topic, partition } => {
            format!("LeaderChange({topic}-{partition})")
        }
        MetadataRecord::NodeRegistered(node) => format!("NodeRegistered({})", node.id),
        MetadataRecord::NodeStateChanged { node, state, .. } => {
            format!("NodeStateChanged({node}, {state:?})")
        }
        other => format!("{other:?}"),
    }
}

/// Runs one seed for `steps` steps and the final phase; the stats, or the
/// failure report.
fn run_seed(seed: u64, steps: u64) -> Result<Stats, String> {
    let root = sim_tempdir();
    let mut sim = Sim::new(seed, root.path()).map_err(|e| format!("seed {seed}: {e}"))?;
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for _ in 0..steps {
            sim.step()?;
        }
        sim.finish()
    }));
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error),
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
        Ok(()) => Ok(std::mem::take(&mut sim.w.stats)),
        Err(error) => Err(sim.report(&error)),
    }
}

/// A temp dir for one run, in memory when `/dev/shm` exists (thousands of
/// fsyncs per seed), removed when dropped.
fn sim_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("kafki-sim").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("a temp dir")
}

#[test]
fn metadata_quorum_survives_faults() {
    let (seeds, steps) = seed_plan("KAFKI_SIM", 16, 2500);
    let total = run_seeds(&seeds, steps, 500, usize::MAX, run_seed, Stats::add);
    if seeds.len() >= 8 {
        // The faults reach what they are meant to reach.
        assert!(total.snapshots_made > 0 && total.snapshots_installed > 0);
        assert!(total.crashes > 0 && total.conflicts > 0 && total.applied > 0);
    }
}
