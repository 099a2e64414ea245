//! The metadata quorum's driver, on shard 0 of every cluster member: owns
//! the raft-rs `RawNode`, feeds it ticks, node messages and proposals, and
//! handles each `Ready` (send, persist on a blocking thread, apply committed
//! commands to the image, snapshot). The Raft leader is the active
//! controller: it answers heartbeats and fences silent nodes. Every node
//! registers itself and heartbeats to the controller; the answers keep its
//! write lease ([`super::liveness::Lease`]).
//!
//! Nodes outside `--voters` are observers: they register through the
//! voters (they cannot propose before they know the leader), the
//! controller adds them as Raft learners, and from then on they receive
//! the log like any member but never vote.
//!
//! Raft ids are node ids + 1 (raft-rs reserves 0; Kafka node ids start at 0).
//!
//! Kafka's DescribeQuorum is answered here too ([`Quorum::describe`]): the
//! leader from raft-rs's progress and the contact times the driver keeps
//! per peer; any other node asks the leader over the transport and relays
//! its answer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, StreamExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use super::describe::{leader_report, DescribeError, LeaderView, QuorumReport};
use super::liveness::{monotonic_ms, Lease, Liveness};
use super::log_store::{LogFile, MetadataLog, PersistBatch};
use super::transport::{Control, FrameKind, Inbound, Transport};
use super::ClusterConfig;
use crate::metadata::command::{MetadataCommand, ProposalId, Verdict};
use crate::metadata::{ClusterMetadata, MetadataRecord, NodeRegistration, NodeState};

/// One Raft tick. Elections start after 10–20 ticks without a leader
/// (1–2 s); the leader heartbeats every 2 ticks.
pub const TICK: Duration = Duration::from_millis(100);
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 2;
/// A proposal not seen committed within this is proposed again (a
/// follower's forward can be lost with a leader change).
const PROPOSAL_RETRY: Duration = Duration::from_millis(1500);
/// The folder of the metadata log in the data directory (Kafka's name).
pub const LOG_DIR: &str = "__cluster_metadata-0";
/// How long a non-leader waits for the leader's DescribeQuorum report.
const DESCRIBE_WAIT: Duration = Duration::from_secs(5);
/// DescribeQuorum questions to the leader waiting at once; more are
/// refused (the client retries) rather than queued.
const DESCRIBES_WAITING_MAX: usize = 64;

/// The quorum's voters as node ids, sorted.
fn voter_ids(log: &MetadataLog) -> Vec<i32> {
    let mut voters: Vec<i32> = log
        .conf_state()
        .voters
        .iter()
        .map(|id| node_of(*id))
        .collect();
    voters.sort_unstable();
    voters
}

pub fn raft_id(node: i32) -> u64 {
    node as u64 + 1
}

pub fn node_of(raft_id: u64) -> i32 {
    raft_id.saturating_sub(1) as i32
}

/// raft-rs's configuration for node `me`, started with everything up to
/// `applied` (the snapshot's index) already in its image. Shared with the
/// simulation (`simulation.rs`), so both drive raft-rs alike.
pub(crate) fn raft_config(me: i32, applied: u64) -> raft::Config {
    raft::Config {
        id: raft_id(me),
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    }
}

enum Event {
    Inbound(Inbound),
    Tick,
    Propose(MetadataCommand),
    /// Something changed the RawNode outside the loop (a membership change
    /// proposed): handle its Ready now.
    Wake,
}

/// Why a metadata change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("the metadata quorum did not commit the change within {waited_ms} ms ({state})")]
    Unavailable { waited_ms: u64, state: String },
}

/// Why a voter was not replaced.
#[derive(Debug, thiserror::Error)]
pub enum VoterChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotCommitted(String),
}

/// The quorum's state as `/v1/cluster` and `kafki cluster` show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QuorumStatus {
    pub leader_id: Option<i32>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<i32>,
    pub role: String,
    /// This node's epoch (its registration's offset), once registered.
    pub node_epoch: Option<u64>,
    pub write_lease: bool,
}

/// What the driver shares with the rest of the node (any thread).
#[derive(Debug, Default)]
pub struct QuorumShared {
    pub lease: Lease,
    pub status: Mutex<QuorumStatus>,
    /// The newest applied image (for the admin thread).
    pub image: Mutex<Arc<ClusterMetadata>>,
}

/// A DescribeQuorum question sent to the leader: the node asked and where
/// its answer goes (`None`: it is not the leader).
type DescribeWaiter = (i32, oneshot::Sender<Option<QuorumReport>>);

pub struct Quorum {
    me: i32,
    config: ClusterConfig,
    /// This node's registration as it proposes it.
    registration: NodeRegistration,
    raw: RefCell<RawNode<MetadataLog>>,
    log: MetadataLog,
    file: Arc<Mutex<LogFile>>,
    transport: Rc<Transport>,
    events: Rc<LocalSender<Event>>,
    image: RefCell<Arc<ClusterMetadata>>,
    /// Called with each new image, in order (installs it on every shard).
    on_image: Box<dyn Fn(Arc<ClusterMetadata>)>,
    waiting: RefCell<HashMap<ProposalId, oneshot::Sender<(Verdict, u64)>>>,
    sequence: Cell<u64>,
    liveness: RefCell<Liveness>,
    shared: Arc<QuorumShared>,
    was_leader: Cell<bool>,
    ticks: Cell<u64>,
    /// The epoch this process registered with, once its registration applied.
    my_epoch: Cell<Option<u64>>,
    registering: Cell<bool>,
    cluster_id_proposed: Cell<bool>,
    bytes_since_snapshot: Cell<u64>,
    stopping: Cell<bool>,
    /// Whether this node is one of `--voters` (else an observer: a Raft
    /// learner once the controller added it).
    is_voter: bool,
    /// Controller: registrations asked for by observers, not yet committed
    /// (node, incarnation), and learners being added.
    registering_for: RefCell<std::collections::HashSet<(i32, u64)>>,
    /// The learner being added and the tick its change was proposed at.
    adding_learner: Cell<Option<(i32, u64)>>,
    /// A membership change applied and not yet written to the log file.
    pending_conf: RefCell<Option<raft::eraftpb::ConfState>>,
    /// Per Raft member: when its last frame arrived (wall clock ms).
    last_contact_ms: RefCell<HashMap<i32, i64>>,
    /// Leader: per member, when it last answered with every entry the
    /// leader had (wall clock ms). Cleared when this node becomes leader.
    caught_up_ms: RefCell<HashMap<i32, i64>>,
    /// DescribeQuorum questions sent to the leader: request id -> (the
    /// leader asked, where its answer goes). At most
    /// [`DESCRIBES_WAITING_MAX`].
    describing: RefCell<HashMap<u64, DescribeWaiter>>,
    describe_sequence: Cell<u64>,
    /// Where partition replication frames go (the shard's router).
    replica_frames: RefCell<Option<ReplicaFrameRoute>>,
    /// Controller: the image offset its leadership checks last ran on, and
    /// the tick they last ran at.
    leadership_checked: Cell<(u64, u64)>,
    /// Controller: a leadership change proposed and not answered yet.
    leadership_proposing: Rc<Cell<bool>>,
    /// Controller: reassignment completions proposed and not answered yet.
    reassignments_proposing: Rc<Cell<bool>>,
}

/// Where a node's partition replication frames go.
pub type ReplicaFrameRoute = Box<dyn Fn(Inbound)>;

impl Quorum {
    /// Opens the metadata log under `data_dir`, starts the driver, the
    /// ticker and the node listener. `on_image` gets the recovered image
    /// first, then every change.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: i32,
        config: ClusterConfig,
        registration: NodeRegistration,
        log_file: LogFile,
        recovered: super::log_store::Recovered,
        shared: Arc<QuorumShared>,
        on_image: Box<dyn Fn(Arc<ClusterMetadata>)>,
    ) -> anyhow::Result<Rc<Self>> {
        let voters: Vec<u64> = config
            .voters
            .iter()
            .map(|voter| raft_id(voter.id))
            .collect();
        let (log, bootstrap) = MetadataLog::from_recovered(recovered, &voters);
        let snapshot = log.snapshot_metadata();
        let mut image = ClusterMetadata::default();
        if snapshot.index > 0 {
            let data = raft::Storage::snapshot(&log, snapshot.index, 0)
                .map(|snapshot| snapshot.get_data().to_vec())
                .unwrap_or_default();
            image = serde_json::from_slice(&data).map_err(|error| {
                anyhow::anyhow!("the metadata snapshot's image is damaged: {error}")
            })?;
        }
        let raft_config = raft_config(me, snapshot.index);
        raft_config
            .validate()
            .map_err(|error| anyhow::anyhow!("raft configuration: {error}"))?;
        let raw = RawNode::new(
            &raft_config,
            log.clone(),
            &super::raft_log::tracing_logger(),
        )
        .map_err(|error| anyhow::anyhow!("starting the metadata quorum: {error}"))?;
        let mut file = log_file;
        if let Some(conf_state) = bootstrap {
            // The first start: the voters are the configuration; stored
            // before any vote (plain blocking write: the shard serves
            // nothing yet).
            file.persist(&PersistBatch {
                conf_state: Some(conf_state),
                ..Default::default()
            })?;
        }
        let addresses = config
            .voters
            .iter()
            .filter(|voter| voter.id != me)
            .map(|voter| (voter.id, voter.address.clone()))
            .collect();
        let transport = Transport::new(me, addresses);
        let listener = glommio::net::TcpListener::bind(config.listen).map_err(|error| {
            anyhow::anyhow!("listening on {} (--cluster-listen): {error}", config.listen)
        })?;
        let (events, receiver) = local_channel::new_bounded(8192);
        let (inbound, inbound_receiver) = local_channel::new_bounded(8192);
        let liveness = Liveness::new(config.session_timeout.as_millis() as u64);
        let quorum = Rc::new(Self {
            me,
            registration,
            raw: RefCell::new(raw),
            log,
            file: Arc::new(Mutex::new(file)),
            transport,
            events: Rc::new(events),
            image: RefCell::new(Arc::new(image)),
            on_image,
            waiting: RefCell::new(HashMap::new()),
            sequence: Cell::new(monotonic_start_sequence()),
            liveness: RefCell::new(liveness),
            shared,
            was_leader: Cell::new(false),
            ticks: Cell::new(0),
            my_epoch: Cell::new(None),
            registering: Cell::new(false),
            cluster_id_proposed: Cell::new(false),
            bytes_since_snapshot: Cell::new(0),
            stopping: Cell::new(false),
            is_voter: config.is_voter(me),
            registering_for: RefCell::new(Default::default()),
            adding_learner: Cell::new(None),
            pending_conf: RefCell::new(None),
            last_contact_ms: RefCell::new(HashMap::new()),
            caught_up_ms: RefCell::new(HashMap::new()),
            describing: RefCell::new(HashMap::new()),
            describe_sequence: Cell::new(0),
            replica_frames: RefCell::new(None),
            leadership_checked: Cell::new((u64::MAX, 0)),
            leadership_proposing: Rc::new(Cell::new(false)),
            reassignments_proposing: Rc::new(Cell::new(false)),
            config,
        });
        (quorum.on_image)(quorum.image());
        tracing::info!(node = me, listen = %quorum.config.listen, voters = ?quorum.config.voters.iter().map(|v| v.id).collect::<Vec<_>>(), snapshot_index = snapshot.index, "metadata quorum starting");
        glommio::spawn_local(super::transport::accept_loop(listener, inbound)).detach();
        let forward = quorum.events.clone();
        glommio::spawn_local(async move {
            let mut inbound = inbound_receiver.stream();
            while let Some(frame) = inbound.next().await {
                if forward.send(Event::Inbound(frame)).await.is_err() {
                    break;
                }
            }
        })
        .detach();
        let ticker = quorum.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(TICK).await;
                if ticker.stopping.get() {
                    break;
                }
                // Dropped when the queue is full: the next tick comes.
                let _ = ticker.events.try_send(Event::Tick);
            }
        })
        .detach();
        let driver = quorum.clone();
        glommio::spawn_local(async move { driver.run(receiver).await }).detach();
        Ok(quorum)
    }

    pub fn image(&self) -> Arc<ClusterMetadata> {
        self.image.borrow().clone()
    }

    /// Where partition replication frames received by this node go.
    pub fn set_replica_frames(&self, route: ReplicaFrameRoute) {
        self.replica_frames.replace(Some(route));
    }

    pub fn shared(&self) -> &Arc<QuorumShared> {
        &self.shared
    }

    fn leader(&self) -> Option<i32> {
        let leader = self.raw.borrow().raft.leader_id;
        (leader != raft::INVALID_ID).then(|| node_of(leader))
    }

    fn status_line(&self) -> String {
        let raw = self.raw.borrow();
        format!(
            "role {:?}, term {}, leader {}",
            raw.raft.state,
            raw.raft.term,
            match raw.raft.leader_id {
                raft::INVALID_ID => "none known".to_string(),
                id => format!("node {}", node_of(id)),
            }
        )
    }

    /// Proposes `records` and waits until they are committed and applied
    /// here. With `expected_offset`, they apply only if the image is still
    /// at that offset (else [`Verdict::Conflict`]). Fails when no quorum
    /// commits them within `wait`.
    pub async fn propose(
        self: &Rc<Self>,
        records: Vec<MetadataRecord>,
        expected_offset: Option<u64>,
        wait: Duration,
    ) -> Result<(Verdict, u64), QuorumError> {
        let sequence = self.sequence.get() + 1;
        self.sequence.set(sequence);
        let command = MetadataCommand {
            proposal: ProposalId {
                node: self.me,
                sequence,
            },
            expected_offset,
            records,
        };
        let (reply, mut answer) = oneshot::channel();
        self.waiting.borrow_mut().insert(command.proposal, reply);
        let started = std::time::Instant::now();
        loop {
            let _ = self.events.try_send(Event::Propose(command.clone()));
            let remaining = wait.saturating_sub(started.elapsed());
            let pause = glommio::timer::sleep(PROPOSAL_RETRY.min(remaining)).fuse();
            futures::pin_mut!(pause);
            futures::select! {
                verdict = answer => match verdict {
                    Ok(verdict) => return Ok(verdict),
                    Err(_) => break,
                },
                _ = pause => {}
            }
            if started.elapsed() >= wait {
                break;
            }
        }
        self.waiting.borrow_mut().remove(&command.proposal);
        Err(QuorumError::Unavailable {
            waited_ms: started.elapsed().as_millis() as u64,
            state: self.status_line(),
        })
    }

    /// Makes observer `add` a voter in place of voter `remove`: first adds
    /// it (so the quorum never shrinks meanwhile), then removes the other,
    /// each as one membership change committed by the quorum. The removed
    /// node stays a member of the cluster, as an observer. Returns the new
    /// voters.
    pub async fn replace_voter(
        self: &Rc<Self>,
        remove: i32,
        add: i32,
    ) -> Result<Vec<i32>, VoterChangeError> {
        let current = voter_ids(&self.log);
        if remove == add {
            return Err(VoterChangeError::Invalid(
                "the node to add and the node to remove are the same".into(),
            ));
        }
        if !current.contains(&remove) && !current.contains(&add) {
            return Err(VoterChangeError::Invalid(format!(
                "node {remove} is not a voter (voters: {current:?})"
            )));
        }
        let image = self.image();
        if !image.live_nodes().any(|node| node.id == add) {
            return Err(VoterChangeError::Invalid(format!(
                "node {add} is not a live member of the cluster: start it as an observer first"
            )));
        }
        use raft::eraftpb::ConfChangeType;
        for (change_type, node, wanted) in [
            (ConfChangeType::AddNode, add, true),
            (ConfChangeType::RemoveNode, remove, false),
        ] {
            let started = std::time::Instant::now();
            let mut proposed_at: Option<std::time::Instant> = None;
            while voter_ids(&self.log).contains(&node) != wanted {
                if started.elapsed() > Duration::from_secs(20) {
                    return Err(VoterChangeError::NotCommitted(format!(
                        "the quorum did not commit {change_type:?} of node {node} within 20 s ({})",
                        self.status_line()
                    )));
                }
                if proposed_at.is_none_or(|at| at.elapsed() > Duration::from_secs(3)) {
                    let mut change = ConfChange::default();
                    change.set_change_type(change_type);
                    change.node_id = raft_id(node);
                    if let Err(error) = self
                        .raw
                        .borrow_mut()
                        .propose_conf_change(Vec::new(), change)
                    {
                        tracing::debug!(%error, "membership change not proposed yet; retried");
                    } else {
                        proposed_at = Some(std::time::Instant::now());
                    }
                    // Wake the driver so the proposal goes out now.
                    let _ = self.events.try_send(Event::Wake);
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(node, ?change_type, "metadata quorum voters changed");
        }
        Ok(voter_ids(&self.log))
    }

    /// Tells the controller this node is stopping (best effort, bounded),
    /// so it is not fenced as dead meanwhile and gets no new partitions.
    /// As Kafka's controlled shutdown does, the same command hands the
    /// replicated partitions it leads to other in-sync replicas and takes
    /// it out of the ISRs (what a fence would do, without waiting out the
    /// session timeout): a stopped node no longer holds them unavailable.
    pub async fn announce_shutdown(self: &Rc<Self>) {
        if let Some(epoch) = self.my_epoch.get() {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            loop {
                let mut records = vec![MetadataRecord::NodeStateChanged {
                    node: self.me,
                    epoch,
                    state: NodeState::ShuttingDown,
                }];
                // Never unclean: a stopping node has no reason to lose data.
                records.extend(crate::metadata::leadership::on_node_fenced(
                    &self.image(),
                    self.me,
                    false,
                ));
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.propose(records, None, left).await {
                    Ok((Verdict::Refused(refusal), _)) if !left.is_zero() => {
                        // A partition moved meanwhile: computed again.
                        tracing::debug!(?refusal, "shutdown hand-over refused as stale; again");
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "could not tell the controller this node is stopping");
                        break;
                    }
                }
            }
        }
        self.stopping.set(true);
        self.shared.lease.revoke();
    }

    /// The quorum as the leader reports it: this node's own report when it
    /// leads, else the leader's, asked over the transport (waits up to
    /// [`DESCRIBE_WAIT`]).
    pub async fn describe(self: &Rc<Self>) -> Result<QuorumReport, DescribeError> {
        if let Some(report) = self.leader_report() {
            return Ok(report);
        }
        let Some(leader) = self.leader().filter(|leader| *leader != self.me) else {
            return Err(DescribeError::NoLeader);
        };
        if self.describing.borrow().len() >= DESCRIBES_WAITING_MAX {
            return Err(DescribeError::Busy);
        }
        let request = self.describe_sequence.get() + 1;
        self.describe_sequence.set(request);
        let (reply, answer) = oneshot::channel();
        self.describing
            .borrow_mut()
            .insert(request, (leader, reply));
        let asked = self
            .transport
            .send_control(leader, &Control::DescribeQuorum { request });
        let outcome = if asked {
            let pause = glommio::timer::sleep(DESCRIBE_WAIT).fuse();
            let answer = answer.fuse();
            futures::pin_mut!(pause, answer);
            futures::select! {
                report = answer => match report {
                    Ok(Some(report)) => Ok(report),
                    // Not the leader any more, or the driver stopped.
                    Ok(None) | Err(_) => Err(DescribeError::NoLeader),
                },
                _ = pause => Err(DescribeError::LeaderSilent),
            }
        } else {
            Err(DescribeError::LeaderSilent)
        };
        self.describing.borrow_mut().remove(&request);
        if let Err(error) = &outcome {
            tracing::debug!(%error, leader, "DescribeQuorum not answered by the leader");
        }
        outcome
    }

    /// This node's report, if it leads.
    fn leader_report(&self) -> Option<QuorumReport> {
        let raw = self.raw.borrow();
        if raw.raft.state != StateRole::Leader {
            return None;
        }
        let conf = self.log.conf_state();
        let nodes = |ids: &[u64]| ids.iter().map(|id| node_of(*id)).collect::<Vec<_>>();
        let matched = raw
            .raft
            .prs()
            .iter()
            .map(|(id, progress)| (node_of(*id), progress.matched))
            .collect();
        Some(leader_report(&LeaderView {
            me: self.me,
            term: raw.raft.term,
            commit_index: raw.raft.raft_log.committed,
            last_index: raw.raft.raft_log.last_index(),
            voters: &nodes(&conf.voters),
            learners: &nodes(&conf.learners),
            matched: &matched,
            last_contact_ms: &self.last_contact_ms.borrow(),
            caught_up_ms: &self.caught_up_ms.borrow(),
            now_ms: crate::clock::now_ms(),
        }))
    }

    /// Notes a frame from Raft member `from` (others are not tracked, so a
    /// stranger's connection cannot grow the maps), and on the leader
    /// whether `from` now has every entry.
    fn note_contact(&self, from: i32) {
        let raw = self.raw.borrow();
        let Some(progress) = raw.raft.prs().get(raft_id(from)) else {
            return;
        };
        let now = crate::clock::now_ms();
        self.last_contact_ms.borrow_mut().insert(from, now);
        if raw.raft.state == StateRole::Leader && progress.matched >= raw.raft.raft_log.last_index()
        {
            self.caught_up_ms.borrow_mut().insert(from, now);
        }
    }

    async fn run(self: Rc<Self>, receiver: LocalReceiver<Event>) {
        let mut events = receiver.stream();
        while let Some(event) = events.next().await {
            self.handle(event);
            // Everything already queued goes into the same Ready.
            for _ in 0..1024 {
                match events.next().now_or_never() {
                    Some(Some(event)) => self.handle(event),
                    _ => break,
                }
            }
            if let Err(error) = self.process_ready().await {
                tracing::error!(%error, "metadata quorum: cannot persist the log; this node stops taking part until restarted");
                self.stopping.set(true);
                self.shared.lease.revoke();
                return;
            }
            self.publish_status();
        }
    }

    fn handle(self: &Rc<Self>, event: Event) {
        match event {
            Event::Tick => self.on_tick(),
            Event::Wake => {}
            Event::Propose(command) => {
                let data = command.encode();
                if let Err(error) = self.raw.borrow_mut().propose(Vec::new(), data) {
                    tracing::debug!(%error, "proposal dropped (no leader yet); retried");
                }
            }
            Event::Inbound(frame) => {
                let from = frame.from;
                self.on_frame(frame);
                self.note_contact(from);
            }
        }
    }

    fn on_frame(self: &Rc<Self>, frame: Inbound) {
        if matches!(
            frame.kind,
            FrameKind::ReplicaFetch
                | FrameKind::ReplicaFetchAnswer
                | FrameKind::ReplicaFetchAnswerSpliced
                | FrameKind::ReplicaRepair
                | FrameKind::ReplicaRepairAnswer
                | FrameKind::TxnMarkers
                | FrameKind::TxnMarkersAnswer
                | FrameKind::TxnVerify
                | FrameKind::TxnVerifyAnswer
        ) {
            if let Some(route) = &*self.replica_frames.borrow() {
                route(frame);
            }
            return;
        }
        match frame.kind {
            FrameKind::Raft => match Message::parse_from_bytes(&frame.body) {
                Ok(message) if message.from == raft_id(frame.from) => {
                    if let Err(error) = self.raw.borrow_mut().step(message) {
                        tracing::debug!(%error, from = frame.from, "raft message refused");
                    }
                }
                Ok(message) => tracing::warn!(
                    connection = frame.from,
                    claimed = node_of(message.from),
                    "dropping a raft message whose sender is not the connection's node"
                ),
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable raft message")
                }
            },
            FrameKind::Control => match serde_json::from_slice::<Control>(&frame.body) {
                Ok(control) => self.on_control(frame.from, control),
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable control message")
                }
            },
            FrameKind::Hello
            | FrameKind::ReplicaFetch
            | FrameKind::ReplicaFetchAnswer
            | FrameKind::ReplicaFetchAnswerSpliced
            | FrameKind::ReplicaRepair
            | FrameKind::ReplicaRepairAnswer
            | FrameKind::TxnMarkers
            | FrameKind::TxnMarkersAnswer
            | FrameKind::TxnVerify
            | FrameKind::TxnVerifyAnswer => {}
        }
    }

    fn on_tick(self: &Rc<Self>) {
        self.raw.borrow_mut().tick();
        let ticks = self.ticks.get() + 1;
        self.ticks.set(ticks);
        let now = monotonic_ms();
        let leader = self.raw.borrow().raft.state == StateRole::Leader;
        let session_ms = self.config.session_timeout.as_millis() as u64;
        let was_orphaned = self.shared.lease.orphaned(now, session_ms);
        self.shared.lease.note_contact(now, false);
        if self.shared.lease.orphaned(now, session_ms) && !was_orphaned {
            tracing::warn!(node = self.me, ?session_ms, "no controller reachable for a whole session (quorum lost?): serving the partitions this node leads; metadata changes fail until a quorum is back");
        }
        if leader && !self.was_leader.get() {
            tracing::info!(
                node = self.me,
                term = self.raw.borrow().raft.term,
                "this node is now the active controller"
            );
            self.liveness.borrow_mut().became_controller(now);
            // Caught up with an earlier leader's log says nothing now.
            self.caught_up_ms.borrow_mut().clear();
        }
        self.was_leader.set(leader);
        if leader {
            self.controller_duties(now);
        }
        let heartbeat_ticks =
            (self.config.heartbeat_interval.as_millis() / TICK.as_millis()).max(1) as u64;
        // Registration is tried every tick until it holds; heartbeats go
        // once per interval.
        let registered = self.my_epoch.get().is_some_and(|epoch| {
            self.image()
                .nodes
                .get(&self.me)
                .is_some_and(|node| node.epoch == epoch && node.state == NodeState::Alive)
        });
        if (!registered || ticks.is_multiple_of(heartbeat_ticks)) && !self.stopping.get() {
            self.node_duties(now);
        }
    }

    /// The active controller: a cluster id once, fences for silent nodes.
    fn controller_duties(self: &Rc<Self>, now: u64) {
        let image = self.image();
        if image.cluster_id.is_empty() && !self.cluster_id_proposed.get() {
            self.cluster_id_proposed.set(true);
            self.spawn_proposal(
                vec![MetadataRecord::ClusterId(crate::metadata::new_cluster_id())],
                "setting the cluster id",
            );
        }
        self.add_learners(&image);
        let fences = self.liveness.borrow_mut().to_fence(&image, now);
        for (node, epoch) in fences {
            tracing::warn!(node, epoch, timeout_ms = self.config.session_timeout.as_millis() as u64, "fencing a node: no heartbeat within the session timeout; replicated partitions it led get new leaders, single-replica ones are offline until it registers again");
            self.spawn_fence(node, epoch);
        }
        self.leadership_duties(&image);
        self.reassignment_duties(&image);
    }

    /// The controller: reassignments whose new replicas are all in sync
    /// complete (one proposal at a time; a stale one is recomputed).
    fn reassignment_duties(self: &Rc<Self>, image: &ClusterMetadata) {
        if image.reassignments.is_empty() || self.reassignments_proposing.get() {
            return;
        }
        let records = crate::metadata::reassignment::completions(image);
        if records.is_empty() {
            return;
        }
        tracing::info!(
            partitions = records.len() / 2,
            "completing partition reassignments (new replicas in sync)"
        );
        self.reassignments_proposing.set(true);
        let quorum = self.clone();
        let proposing = self.reassignments_proposing.clone();
        glommio::spawn_local(async move {
            if let Err(error) = quorum.propose(records, None, Duration::from_secs(10)).await {
                tracing::warn!(%error, "reassignment completion not committed; retried");
            }
            proposing.set(false);
        })
        .detach();
    }

    /// Fences `node` at `epoch`; its partitions get new leaders from their
    /// ISRs in the same command, so no partition is left led by a fenced
    /// node. A command refused because a partition moved meanwhile is
    /// computed again from the newer image.
    fn spawn_fence(self: &Rc<Self>, node: i32, epoch: u64) {
        let quorum = self.clone();
        glommio::spawn_local(async move {
            for _ in 0..16 {
                let image = quorum.image();
                if image
                    .nodes
                    .get(&node)
                    .is_none_or(|known| known.epoch != epoch || known.state != NodeState::Alive)
                {
                    return; // re-registered, removed or fenced already
                }
                let mut records = vec![MetadataRecord::NodeStateChanged {
                    node,
                    epoch,
                    state: NodeState::Fenced,
                }];
                records.extend(crate::metadata::leadership::on_node_fenced(
                    &image,
                    node,
                    quorum.config.unclean_leader_election,
                ));
                match quorum.propose(records, None, Duration::from_secs(10)).await {
                    Ok((Verdict::Refused(refusal), _)) => {
                        tracing::info!(
                            node,
                            ?refusal,
                            "fence refused (a partition moved); computing it again"
                        );
                    }
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(node, %error, "fence not committed; retrying");
                    }
                }
                if quorum.raw.borrow().raft.state != StateRole::Leader {
                    return;
                }
            }
        })
        .detach();
    }

    /// The controller, after each image change and every second: partitions
    /// without a leader whose ISR has a live node get one, those whose ISR
    /// has none get an out-of-sync live replica where the topic (or the
    /// broker default) allows unclean election, and preferred replicas lead
    /// again once back in the ISR (unless `auto.leader.rebalance.enable` is
    /// off). One proposal at a time; a
    /// stale one is refused and recomputed from the newer image.
    fn leadership_duties(self: &Rc<Self>, image: &ClusterMetadata) {
        let ticks = self.ticks.get();
        let (offset, at) = self.leadership_checked.get();
        let due = offset != image.log_offset || ticks.saturating_sub(at) >= 10;
        if !due || self.leadership_proposing.get() {
            return;
        }
        self.leadership_checked.set((image.log_offset, ticks));
        let mut records = Vec::new();
        let rebalance = self.config.auto_leader_rebalance;
        for node in image.live_nodes() {
            records.extend(crate::metadata::leadership::on_node_registered(
                image, node.id, rebalance,
            ));
        }
        let unclean = crate::metadata::leadership::unclean_elections(
            image,
            self.config.unclean_leader_election,
        );
        for record in &unclean {
            if let MetadataRecord::PartitionChange {
                topic,
                partition,
                state,
            } = record
            {
                tracing::warn!(
                    topic,
                    partition,
                    leader = ?state.leader,
                    leader_epoch = state.leader_epoch,
                    "unclean leader election: no in-sync replica is alive and the topic allows \
                     electing an out-of-sync one; records it lacks are lost"
                );
            }
        }
        records.extend(unclean);
        if records.is_empty() {
            return;
        }
        // Two live nodes may pick the same partition: keep its first change.
        let mut seen = std::collections::HashSet::new();
        records.retain(|record| match record {
            MetadataRecord::PartitionChange {
                topic, partition, ..
            } => seen.insert((topic.clone(), *partition)),
            _ => true,
        });
        tracing::info!(
            changes = records.len(),
            "electing leaders (offline partitions, preferred replicas)"
        );
        self.leadership_proposing.set(true);
        let quorum = self.clone();
        let proposing = self.leadership_proposing.clone();
        glommio::spawn_local(async move {
            if let Err(error) = quorum.propose(records, None, Duration::from_secs(10)).await {
                tracing::warn!(%error, "leader elections not committed; retried");
            }
            proposing.set(false);
        })
        .detach();
    }

    /// Every node: register (once per start, and again after a fence), then
    /// heartbeat to the controller.
    fn node_duties(self: &Rc<Self>, now: u64) {
        let image = self.image();
        let current = image.nodes.get(&self.me);
        let registered = match (self.my_epoch.get(), current) {
            (Some(epoch), Some(node)) => node.epoch == epoch && node.state == NodeState::Alive,
            _ => false,
        };
        if !registered {
            if !self.is_voter {
                // Through the voters, every few ticks until it holds.
                if self.ticks.get().is_multiple_of(5) {
                    for voter in &self.config.voters {
                        self.transport.send_control(
                            voter.id,
                            &Control::Register {
                                registration: self.registration.clone(),
                            },
                        );
                    }
                }
                return;
            }
            if !self.registering.get() && self.leader().is_some() {
                self.registering.set(true);
                let quorum = self.clone();
                glommio::spawn_local(async move {
                    let record = MetadataRecord::NodeRegistered(quorum.registration.clone());
                    match quorum
                        .propose(vec![record], None, Duration::from_secs(10))
                        .await
                    {
                        Ok((_, offset)) => {
                            quorum.my_epoch.set(Some(offset));
                            tracing::info!(
                                node = quorum.me,
                                epoch = offset,
                                "registered with the cluster"
                            );
                            // Heartbeat at once: the write lease comes with
                            // the answer, not one interval later.
                            quorum.node_duties(monotonic_ms());
                        }
                        Err(error) => {
                            tracing::warn!(%error, "registering with the cluster; retrying")
                        }
                    }
                    quorum.registering.set(false);
                })
                .detach();
            }
            return;
        }
        let Some(epoch) = self.my_epoch.get() else {
            return;
        };
        match self.leader() {
            Some(leader) if leader == self.me => {
                self.liveness.borrow_mut().heard(self.me, now);
                self.shared
                    .lease
                    .grant(now, self.config.session_timeout.as_millis() as u64);
            }
            Some(leader) => {
                self.transport.send_control(
                    leader,
                    &Control::Heartbeat {
                        node: self.me,
                        epoch,
                        sent_ms: now,
                    },
                );
            }
            None => {}
        }
    }

    fn on_control(self: &Rc<Self>, from: i32, control: Control) {
        match control {
            Control::Heartbeat {
                node,
                epoch,
                sent_ms,
            } => {
                if node != from || self.raw.borrow().raft.state != StateRole::Leader {
                    return;
                }
                let image = self.image();
                let known = image.nodes.get(&node);
                if let Some(registration) = known {
                    self.transport
                        .learn_address(node, &registration.cluster_listen, false);
                    if registration.epoch == epoch {
                        self.liveness.borrow_mut().heard(node, monotonic_ms());
                    }
                }
                self.transport.send_control(
                    node,
                    &Control::HeartbeatReply {
                        controller: self.me,
                        epoch: known.map(|n| n.epoch).unwrap_or(0),
                        state: known
                            .map(|n| n.state.as_str())
                            .unwrap_or("unknown")
                            .to_string(),
                        sent_ms,
                    },
                );
            }
            Control::Register { registration } => {
                if registration.id != from
                    || self.raw.borrow().raft.state != StateRole::Leader
                    || self.config.is_voter(registration.id)
                {
                    return;
                }
                let image = self.image();
                let done = image.nodes.get(&from).is_some_and(|node| {
                    node.incarnation == registration.incarnation && node.state == NodeState::Alive
                });
                let key = (from, registration.incarnation);
                if done || !self.registering_for.borrow_mut().insert(key) {
                    return;
                }
                self.transport
                    .learn_address(from, &registration.cluster_listen, false);
                tracing::info!(node = from, "registering an observer");
                let quorum = self.clone();
                glommio::spawn_local(async move {
                    let record = MetadataRecord::NodeRegistered(registration);
                    if let Err(error) = quorum
                        .propose(vec![record], None, Duration::from_secs(10))
                        .await
                    {
                        tracing::warn!(%error, node = from, "registering an observer");
                    }
                    quorum.registering_for.borrow_mut().remove(&key);
                })
                .detach();
            }
            Control::DescribeQuorum { request } => {
                let report = self.leader_report();
                self.transport
                    .send_control(from, &Control::DescribeQuorumAnswer { request, report });
            }
            Control::DescribeQuorumAnswer { request, report } => {
                let mut describing = self.describing.borrow_mut();
                if describing
                    .get(&request)
                    .is_some_and(|(asked, _)| *asked == from)
                {
                    if let Some((_, reply)) = describing.remove(&request) {
                        let _ = reply.send(report);
                    }
                }
            }
            Control::HeartbeatReply {
                controller,
                epoch,
                state,
                sent_ms,
            } => {
                if controller != from {
                    return;
                }
                if Some(epoch) == self.my_epoch.get() && state == "alive" {
                    self.shared
                        .lease
                        .grant(sent_ms, self.config.session_timeout.as_millis() as u64);
                    self.shared.lease.note_contact(monotonic_ms(), true);
                } else if state != "alive" {
                    self.shared.lease.revoke();
                    // A controller answered: not orphaned, just fenced.
                    self.shared.lease.note_contact(monotonic_ms(), true);
                }
            }
        }
    }

    fn spawn_proposal(self: &Rc<Self>, records: Vec<MetadataRecord>, what: &'static str) {
        let quorum = self.clone();
        glommio::spawn_local(async move {
            if let Err(error) = quorum.propose(records, None, Duration::from_secs(10)).await {
                tracing::warn!(%error, what, "controller proposal not committed");
            }
        })
        .detach();
    }

    /// The controller: every registered node that is not in the Raft
    /// configuration becomes a learner (it then receives the log), one
    /// membership change at a time.
    fn add_learners(&self, image: &ClusterMetadata) {
        // One at a time; a change lost with a leader change is retried.
        if let Some((_, at)) = self.adding_learner.get() {
            if self.ticks.get().saturating_sub(at) < 50 {
                return;
            }
        }
        let conf = self.log.conf_state();
        let member = |id: u64| conf.voters.contains(&id) || conf.learners.contains(&id);
        let Some(node) = image
            .live_nodes()
            .map(|node| node.id)
            .find(|node| !member(raft_id(*node)))
        else {
            return;
        };
        let mut change = ConfChange::default();
        change.set_change_type(raft::eraftpb::ConfChangeType::AddLearnerNode);
        change.node_id = raft_id(node);
        match self
            .raw
            .borrow_mut()
            .propose_conf_change(Vec::new(), change)
        {
            Ok(()) => {
                tracing::info!(
                    node,
                    "adding an observer to the metadata quorum as a learner"
                );
                self.adding_learner.set(Some((node, self.ticks.get())));
            }
            Err(error) => tracing::debug!(%error, node, "adding a learner; retried"),
        }
    }

    fn send_messages(&self, messages: Vec<Message>) {
        for message in messages {
            let to = node_of(message.to);
            let sent = match message.write_to_bytes() {
                Ok(body) => self.transport.send(to, FrameKind::Raft, &body),
                Err(error) => {
                    tracing::error!(%error, "encoding a raft message");
                    false
                }
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // raft-rs keeps a follower it sent a snapshot to in the
                // Snapshot state (no appends, no other snapshot) until told
                // how the send went, or until an answer moves its match
                // index; a lost snapshot, or one the follower ignores
                // (already committed that far), left it behind for good.
                // Queued counts as done: frames to a peer go in order, and
                // if this one is lost, probing finds out and sends another.
                let status = if sent {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.borrow_mut().report_snapshot(message.to, status);
            }
        }
    }

    async fn persist(&self, batch: PersistBatch) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let file = self.file.clone();
        kafki_storage::checkpoint::off_executor(move || -> anyhow::Result<()> {
            let mut file = file
                .lock()
                .map_err(|_| anyhow::anyhow!("metadata log writer poisoned"))?;
            file.persist(&batch)?;
            Ok(())
        })
        .await
    }

    async fn persist_snapshot(&self) -> anyhow::Result<()> {
        let (snapshot, remaining) = self.log.durable_image();
        let file = self.file.clone();
        kafki_storage::checkpoint::off_executor(move || -> anyhow::Result<()> {
            let mut file = file
                .lock()
                .map_err(|_| anyhow::anyhow!("metadata log writer poisoned"))?;
            file.write_snapshot(&snapshot, &remaining)?;
            Ok(())
        })
        .await
    }

    async fn process_ready(self: &Rc<Self>) -> anyhow::Result<()> {
        let before = self.image().log_offset;
        while self.raw.borrow().has_ready() {
            let mut ready = self.raw.borrow_mut().ready();
            self.send_messages(ready.take_messages());
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                let image: ClusterMetadata =
                    serde_json::from_slice(snapshot.get_data()).map_err(|error| {
                        anyhow::anyhow!("a snapshot from the leader is damaged: {error}")
                    })?;
                self.log.apply_snapshot(snapshot)?;
                self.persist_snapshot().await?;
                tracing::info!(
                    index = image.log_offset,
                    "installed a metadata snapshot from the controller"
                );
                self.set_image(image);
            }
            self.apply_entries(ready.take_committed_entries());
            let mut batch = PersistBatch {
                conf_state: self.pending_conf.borrow_mut().take(),
                ..Default::default()
            };
            if !ready.entries().is_empty() {
                batch.truncate_from = self.log.append(ready.entries())?;
                batch.entries = ready.entries().to_vec();
            }
            if let Some(hard_state) = ready.hs() {
                self.log.set_hard_state(hard_state.clone());
                batch.hard_state = Some(hard_state.clone());
            }
            self.persist(batch).await?;
            self.send_messages(ready.take_persisted_messages());
            let mut light = self.raw.borrow_mut().advance(ready);
            if let Some(commit) = light.commit_index() {
                // Stored with the next batch: a lost commit index is
                // learned again from the leader.
                self.log.set_commit(commit);
            }
            self.send_messages(light.take_messages());
            self.apply_entries(light.take_committed_entries());
            self.raw.borrow_mut().advance_apply();
        }
        if self.image().log_offset != before {
            self.maybe_snapshot().await?;
        }
        Ok(())
    }

    fn apply_entries(self: &Rc<Self>, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut image = (*self.image()).clone();
        let mut verdicts = Vec::new();
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    image = image.skip_entry(entry.index);
                }
                EntryType::EntryNormal => match MetadataCommand::decode(&entry.data) {
                    Ok(command) => {
                        self.bytes_since_snapshot
                            .set(self.bytes_since_snapshot.get() + entry.data.len() as u64);
                        let (next, verdict) = image.apply_command(entry.index, &command);
                        image = next;
                        if command.proposal.node == self.me {
                            verdicts.push((command.proposal, verdict, entry.index));
                        }
                    }
                    Err(error) => {
                        tracing::error!(index = entry.index, %error, "skipping an undecodable metadata command");
                        image = image.skip_entry(entry.index);
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let applied = if entry.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&entry.data)
                            .map_err(|e| e.to_string())
                            .and_then(|change| {
                                self.raw
                                    .borrow_mut()
                                    .apply_conf_change(&change)
                                    .map_err(|e| e.to_string())
                            })
                    } else {
                        ConfChangeV2::parse_from_bytes(&entry.data)
                            .map_err(|e| e.to_string())
                            .and_then(|change| {
                                self.raw
                                    .borrow_mut()
                                    .apply_conf_change(&change)
                                    .map_err(|e| e.to_string())
                            })
                    };
                    match applied {
                        Ok(conf_state) => {
                            tracing::info!(?conf_state, "metadata quorum membership changed");
                            self.log.set_conf_state(conf_state.clone());
                            self.pending_conf.replace(Some(conf_state));
                            self.adding_learner.set(None);
                        }
                        Err(error) => tracing::error!(%error, "a membership change did not apply"),
                    }
                    image = image.skip_entry(entry.index);
                }
            }
        }
        self.set_image(image);
        for (proposal, verdict, offset) in verdicts {
            if let Some(reply) = self.waiting.borrow_mut().remove(&proposal) {
                let _ = reply.send((verdict, offset));
            }
        }
    }

    fn set_image(&self, image: ClusterMetadata) {
        // Nodes the controller must reach (observers are not in --voters).
        for node in image.nodes.values() {
            self.transport
                .learn_address(node.id, &node.cluster_listen, false);
        }
        let mine = image.nodes.get(&self.me);
        if let Some(node) = mine {
            if node.incarnation == self.registration.incarnation
                && node.state == NodeState::Alive
                && self.my_epoch.get() != Some(node.epoch)
            {
                self.my_epoch.set(Some(node.epoch));
                if !self.is_voter {
                    tracing::info!(
                        node = self.me,
                        epoch = node.epoch,
                        "registered with the cluster as an observer"
                    );
                }
            }
        }
        if !mine
            .is_some_and(|n| Some(n.epoch) == self.my_epoch.get() && n.state == NodeState::Alive)
        {
            self.shared.lease.revoke();
        }
        let image = Arc::new(image);
        self.image.replace(image.clone());
        if let Ok(mut shared) = self.shared.image.lock() {
            *shared = image.clone();
        }
        (self.on_image)(image);
    }

    async fn maybe_snapshot(&self) -> anyhow::Result<()> {
        if self.bytes_since_snapshot.get() < self.config.snapshot_bytes {
            return Ok(());
        }
        let image = self.image();
        let data = serde_json::to_vec(&*image)?;
        if self.log.compact(image.log_offset, data)? {
            self.persist_snapshot().await?;
            tracing::info!(
                index = image.log_offset,
                "metadata log snapshotted and truncated"
            );
        }
        self.bytes_since_snapshot.set(0);
        Ok(())
    }

    fn publish_status(&self) {
        let raw = self.raw.borrow();
        let status = QuorumStatus {
            leader_id: (raw.raft.leader_id != raft::INVALID_ID)
                .then(|| node_of(raw.raft.leader_id)),
            term: raw.raft.term,
            commit_index: raw.raft.raft_log.committed,
            applied_index: self.image.borrow().log_offset,
            snapshot_index: self.log.snapshot_metadata().index,
            voters: voter_ids(&self.log),
            role: match raw.raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre_candidate",
            }
            .to_string(),
            node_epoch: self.my_epoch.get(),
            write_lease: self.shared.lease.valid_at(monotonic_ms()),
        };
        if let Ok(mut shared) = self.shared.status.lock() {
            *shared = status;
        }
    }
}

/// Proposal sequences start from the wall clock in microseconds, so a
/// restarted node never reuses one of its earlier process's ids.
fn monotonic_start_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}
