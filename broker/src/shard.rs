//! One shard: the per-core state of the broker. A `Shard` exists once per
//! executor thread and is never shared across threads (`Rc`, `RefCell`).
//!
//! It owns the partition logs that the cluster metadata assigns to it (an
//! explicit assignment, else [`crate::placement::shard_for`]), holds its
//! copy of the cluster-metadata snapshot, and talks to the
//! other shards through a bounded glommio channel mesh: a cross-shard call
//! is a `Send` closure run on the target shard ([`Shard::invoke_on`]), whose
//! result comes back over a oneshot channel. Shard 0 is the controller: it
//! alone changes cluster metadata.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::PartitionLog;

use crate::config::{log_config_for, BrokerConfig};
use crate::errors::KafkaError;
use crate::metadata::{ClusterMetadata, MetadataRecord, TopicMeta};
use crate::partition::{wait_for_holders, CommitStage, Partition, PartitionRef, Replication};

/// How long a reconfiguration waits for requests to release a partition.
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(5);
/// Partition logs a shard opens (or closes) at once. One at a time, a start
/// with 20 000 partitions waited for each log's small reads and syncs in
/// turn (64 s); in flight together they overlap. Each open holds a few
/// descriptors and a scan buffer while it runs, so this bounds both.
const OPEN_CONCURRENCY: usize = 64;

/// A unit of work sent to another shard.
pub type ShardTask = Box<dyn FnOnce(Rc<Shard>) -> LocalBoxFuture<'static, ()> + Send>;

/// Which replica of a partition answers a consumer's fetch here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingRole {
    Leader,
    /// A follower replica (KIP-392), reading up to its own high watermark.
    Follower,
}

/// Per-core broker state.
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    senders: Senders<ShardTask>,
    metadata: RefCell<Arc<ClusterMetadata>>,
    partitions: RefCell<HashMap<(String, i32), Rc<Partition>>>,
    /// Opens take one of its [`OPEN_CONCURRENCY`] permits; hand-overs and
    /// reconfigurations take them all, so no open is half done meanwhile.
    open_lock: Semaphore,
    /// Partitions an open is running for (one open per partition at once).
    opening: OpeningGates,
    /// Partitions a hand-over just gave this shard, with when, until their
    /// log is opened here (see [`Partition::out_of_sequence_code`]).
    moved_in: RefCell<HashMap<(String, i32), std::time::Instant>>,
    /// Controller only: serialises metadata changes.
    controller_lock: Semaphore,
    /// Controller only: a partition move is running (a second one is
    /// refused rather than queued behind it).
    pub move_running: Cell<bool>,
    pub shutting_down: Cell<bool>,
    /// Consumer groups coordinated on this shard.
    pub groups: crate::group::runtime::GroupShard,
    /// Transactions coordinated on this shard.
    pub txn: crate::txn::runtime::TxnShard,
    /// Producer ids (used on the controller shard only).
    pub producer_ids: crate::producer::ProducerIdAllocator,
    /// Incremental fetch sessions of connections served here.
    pub fetch_sessions: RefCell<crate::fetch_session::FetchSessions>,
    /// This shard's metric handles (created on this shard's thread).
    pub metrics: crate::metrics::ShardMetrics,
    /// State shared with the other shards and the admin thread.
    pub shared: Arc<SharedState>,
    /// Shard 0 of a cluster member: the metadata quorum's driver.
    pub quorum: RefCell<Option<Rc<crate::cluster::quorum::Quorum>>>,
    /// Shard 0 of a cluster member: the metadata-log offset of the newest
    /// image installed on every shard of this node.
    pub installed_offset: Cell<u64>,
    /// A cluster member's replication traffic from this shard.
    replica_links: RefCell<Option<Rc<crate::replication::links::ReplicaLinks>>>,
}

/// Broker-wide state that crosses threads: connection count (the
/// `max.connections` limit is broker-wide, as in Kafka), and the layout the
/// admin listener reports. Touched on connect/close and metadata changes,
/// never per request.
#[derive(Debug, Default)]
pub struct SharedState {
    pub connections: std::sync::atomic::AtomicUsize,
    pub shards_ready: std::sync::atomic::AtomicUsize,
    /// Shards that closed their partitions at shutdown (see
    /// `server::outlive_blocking_work`).
    pub shards_stopped: std::sync::atomic::AtomicUsize,
    /// Shard id → (CPU, owned partitions as `topic-partition`).
    pub layout: std::sync::Mutex<BTreeMap<usize, (usize, Vec<String>)>>,
    /// Shard id → its logs that refuse writes now (for `/health`),
    /// refreshed once a second.
    pub unwritable: std::sync::Mutex<BTreeMap<usize, Vec<UnwritableLog>>>,
    /// The descriptors partition logs may hold (`crate::descriptors`).
    pub descriptors: Arc<crate::descriptors::DescriptorBudget>,
    /// A cluster member's quorum state and write lease (set by shard 0).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::quorum::QuorumShared>>,
    /// What the last stop may have lost of transactions whose data is made
    /// durable at commit (set at start, single node only).
    pub lost_writes: std::sync::OnceLock<crate::txn::LostWrites>,
}

/// A partition log that refuses writes, as `/health` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnwritableLog {
    pub partition: String,
    /// `paused` (resumes by itself once there is room) or `failed`.
    pub state: &'static str,
    pub reason: String,
}

/// What [`Shard::release_partition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// False when the partition was not open on the old owner.
    pub was_open: bool,
    /// Whether its log closed cleanly (else the new owner recovers it).
    pub clean: bool,
}

pub use crate::clock::now_ms;

/// Partitions being opened, each with the gate its other requests wait at.
type OpeningGates = RefCell<HashMap<(String, i32), Rc<Semaphore>>>;

/// Why a partition is opened: a client asked for it (a spent descriptor
/// budget may close idle partitions to make room), or the shard opens
/// everything it owns (never at another partition's expense).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    OnDemand,
    Owned,
}

/// Takes a partition out of [`Shard`]'s `opening` map when its open ends,
/// however it ends (an error, or the task dropped mid-way), and wakes the
/// requests waiting for it, in the order they came: a request that arrives
/// later finds the partition open and runs after them, so appends of
/// pipelined requests keep their order across a first open.
struct OpeningGuard<'a> {
    opening: &'a OpeningGates,
    key: &'a (String, i32),
}

impl Drop for OpeningGuard<'_> {
    fn drop(&mut self) {
        if let Some(gate) = self.opening.borrow_mut().remove(self.key) {
            gate.close();
        }
    }
}

/// Why a partition is not available here, as a Kafka error.
pub fn unknown_partition() -> i16 {
    ResponseError::UnknownTopicOrPartition.code()
}

impl Shard {
    pub fn new(
        config: Arc<BrokerConfig>,
        senders: Senders<ShardTask>,
        metadata: Arc<ClusterMetadata>,
        shared: Arc<SharedState>,
    ) -> Rc<Self> {
        let id = senders.peer_id();
        let groups = crate::group::runtime::GroupShard::new(&config, id);
        Rc::new(Self {
            id,
            groups,
            txn: crate::txn::runtime::TxnShard::new(&config),
            producer_ids: Default::default(),
            metrics: crate::metrics::ShardMetrics::new(id),
            fetch_sessions: RefCell::new(Default::default()),
            shared,
            count: senders.nr_consumers(),
            config,
            senders,
            metadata: RefCell::new(metadata),
            partitions: RefCell::new(HashMap::new()),
            open_lock: Semaphore::new(OPEN_CONCURRENCY as u64),
            opening: RefCell::new(HashMap::new()),
            moved_in: RefCell::new(HashMap::new()),
            controller_lock: Semaphore::new(1),
            move_running: Cell::new(false),
            shutting_down: Cell::new(false),
            quorum: RefCell::new(None),
            installed_offset: Cell::new(0),
            replica_links: RefCell::new(None),
        })
    }

    /// A cluster member's shard: its replication links and ticker.
    pub fn start_replication(self: &Rc<Self>) {
        let Some(cluster) = &self.config.cluster else {
            return;
        };
        let configured = cluster
            .voters
            .iter()
            .filter(|voter| voter.id != self.config.node_id)
            .map(|voter| (voter.id, voter.address.clone()))
            .collect();
        let links =
            crate::replication::links::ReplicaLinks::new(self, self.config.node_id, configured);
        links.on_image(&self.metadata(), self.count);
        self.replica_links.replace(Some(links));
        glommio::spawn_local(crate::replication::links::run_ticker(Rc::downgrade(self))).detach();
    }

    pub fn replica_links(&self) -> Option<Rc<crate::replication::links::ReplicaLinks>> {
        self.replica_links.borrow().clone()
    }

    /// The replicated partition this shard has open for a wire name.
    pub fn replicated_by_id(
        &self,
        partition: &crate::replication::wire::ReplicaPartition,
    ) -> Option<Rc<crate::replication::driver::Replicated>> {
        self.replica_partition_by_id(partition)?
            .replicated()
            .cloned()
    }

    /// [`Shard::replicated_by_id`], the partition itself.
    pub fn replica_partition_by_id(
        &self,
        partition: &crate::replication::wire::ReplicaPartition,
    ) -> Option<Rc<Partition>> {
        let metadata = self.metadata.borrow();
        let topic = metadata.topic_by_id(partition.topic_id)?;
        let key = (topic.name.clone(), partition.partition_index);
        let open = self.partitions.borrow();
        let found = open.get(&key)?;
        let replicated = found.replicated()?;
        (replicated.topic_id == partition.topic_id).then(|| found.clone())
    }

    /// The open replicated partitions in which a read found damage.
    pub fn damaged_replicated_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .filter(|partition| partition.replicated().is_some() && partition.has_damage())
            .cloned()
            .collect()
    }

    /// Every replicated partition this shard has open.
    pub fn replicated_partitions(&self) -> Vec<Rc<crate::replication::driver::Replicated>> {
        self.partitions
            .borrow()
            .values()
            .filter_map(|partition| partition.replicated().cloned())
            .collect()
    }

    /// Feeds each open replicated partition its committed state from
    /// `image` (the machine ignores what it has seen).
    fn feed_partition_records(&self, image: &Arc<ClusterMetadata>) {
        if let Some(links) = self.replica_links() {
            links.on_image(image, self.count);
        }
        let now = crate::cluster::liveness::monotonic_ms();
        for replicated in self.replicated_partitions() {
            if let Some(record) = image.partition_record(&replicated.topic, replicated.index) {
                replicated.on_record(record, now);
            }
        }
    }

    /// Runs tasks that other shards send here, each as its own local task so
    /// a long poll never blocks the inbox.
    pub fn start_inbox(self: &Rc<Self>, mut receivers: Receivers<ShardTask>) {
        for (_, mut stream) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(task) = stream.next().await {
                    glommio::spawn_local(task(shard.clone())).detach();
                }
            })
            .detach();
        }
    }

    /// Runs `work` on shard `target` and returns its result. Captures only
    /// what the closure captures; the result crosses threads, so it is `Send`.
    pub async fn invoke_on<R, F, Fut>(self: &Rc<Self>, target: usize, work: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        if target == self.id {
            return Ok(work(self.clone()).await);
        }
        let (reply, answer) = futures::channel::oneshot::channel();
        let task: ShardTask = Box::new(move |shard| {
            Box::pin(async move {
                let _ = reply.send(work(shard).await);
            })
        });
        self.senders
            .send_to(target, task)
            .await
            .map_err(|_| anyhow!("shard {target} is not accepting work"))?;
        answer
            .await
            .map_err(|_| anyhow!("shard {target} dropped a call"))
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    /// The shard owning `topic`/`partition` in this shard's snapshot: the
    /// explicit assignment if it names an existing shard, else the pure
    /// placement function.
    pub fn owner_of(&self, topic: &str, partition: i32) -> usize {
        self.metadata
            .borrow()
            .owner_of(topic, partition, self.count)
    }

    /// Whether this shard may open `topic`/`index` now: the topic exists,
    /// the index is in range, this shard owns it and it is not being handed
    /// over. Errors are Kafka codes.
    fn check_serves(&self, topic: &str, index: i32) -> Result<TopicMeta, i16> {
        let metadata = self.metadata.borrow();
        let Some(meta) = metadata.topic(topic) else {
            return Err(unknown_partition());
        };
        if index < 0 || index >= meta.partitions {
            return Err(unknown_partition());
        }
        if metadata.is_moving(topic, index)
            || !metadata.hosts_replica(topic, index, self.config.node_id)
            || metadata.owner_of(topic, index, self.count) != self.id
        {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        Ok(meta.clone())
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.config.data_dir.join(format!("{topic}-{partition}"))
    }

    /// The local partition, opening its log on first use. Errors are Kafka
    /// codes: unknown topic/partition, not owned here, or a storage error.
    pub async fn partition(&self, topic: &str, index: i32) -> Result<PartitionRef, i16> {
        let partition = self.open_for_request(topic, index).await?;
        // A follower replica (or a new leader whose high watermark cannot
        // be shown yet) is not for clients.
        if !partition.serves_clients() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        partition.touch(Instant::now());
        Ok(PartitionRef::new(&partition))
    }

    /// [`Shard::partition`] for a consumer's Fetch that may read a follower
    /// (KIP-392: Fetch v11+ from a consumer): also answers with a follower
    /// replica that knows a high watermark, saying which role serves.
    pub async fn partition_for_consumer_fetch(
        &self,
        topic: &str,
        index: i32,
    ) -> Result<(PartitionRef, ServingRole), i16> {
        let partition = self.open_for_request(topic, index).await?;
        let role = if partition.serves_clients() {
            ServingRole::Leader
        } else if partition.serves_follower_reads() {
            ServingRole::Follower
        } else {
            return Err(ResponseError::NotLeaderOrFollower.code());
        };
        partition.touch(Instant::now());
        Ok((PartitionRef::new(&partition), role))
    }

    /// The local partition for a client request, whatever its role,
    /// publishing the layout if this opened it.
    async fn open_for_request(&self, topic: &str, index: i32) -> Result<Rc<Partition>, i16> {
        let opened = self.open_partition(topic, index, Open::OnDemand).await;
        if opened.as_ref().is_ok_and(|(_, new)| *new) {
            self.publish_partitions();
        }
        opened.map(|(partition, _)| partition)
    }

    /// [`Shard::partition`] without publishing the layout, and whether this
    /// call opened the log.
    async fn open_partition(
        &self,
        topic: &str,
        index: i32,
        open: Open,
    ) -> Result<(Rc<Partition>, bool), i16> {
        // From the moment a hand-over's first snapshot is installed here, the
        // partition is served by nobody, even while its log is still open.
        if self.metadata.borrow().is_moving(topic, index) {
            tracing::debug!(
                shard = self.id,
                topic,
                partition = index,
                "not serving a partition being handed over"
            );
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        let key = (topic.to_string(), index);
        if let Some(found) = self.partitions.borrow().get(&key) {
            return Ok((found.clone(), false));
        }
        // A stopping shard opens nothing: its partitions are being closed
        // for the last time, and a request still running must not open one
        // again behind the final close (appends nobody closes, a second
        // snapshot writer). Clients retry elsewhere or after the restart.
        if self.shutting_down.get() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        self.check_serves(topic, index)?;
        let _permit = self
            .open_lock
            .acquire_permit(1)
            .await
            .map_err(|_| ResponseError::KafkaStorageError.code())?;
        // Opens of different partitions run side by side; of one, in turn.
        loop {
            let gate = self.opening.borrow().get(&key).cloned();
            let Some(gate) = gate else { break };
            // Returns when the open ends (the gate is closed, never signalled).
            let _ = gate.acquire(1).await;
        }
        if let Some(found) = self.partitions.borrow().get(&key) {
            return Ok((found.clone(), false));
        }
        if self.shutting_down.get() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        // Again under the lock: while we waited for it, a hand-over may have
        // given the partition to another shard, which may have opened it.
        let meta = self.check_serves(topic, index)?;
        self.opening
            .borrow_mut()
            .insert(key.clone(), Rc::new(Semaphore::new(0)));
        let _opening = OpeningGuard {
            opening: &self.opening,
            key: &key,
        };
        let log_config = log_config_for(&meta.configs, &self.config.kafka);
        let stage = CommitStage::for_policy(log_config.sync_policy);
        let dir = self.partition_dir(topic, index);
        // A folder left by an earlier topic of this name (its removal was
        // cut short) is never opened as this one.
        let (stale_dir, topic_id) = (dir.clone(), meta.id);
        crate::partition_dirs::off_shard(move || {
            if crate::partition_dirs::read_stamp(&stale_dir).is_some_and(|id| id != topic_id) {
                tracing::warn!(dir = %stale_dir.display(), "removing a folder of an earlier topic of the same name");
                return crate::partition_dirs::remove_folder(&stale_dir);
            }
            Ok(())
        })
        .await
        .map_err(|error| {
            tracing::error!(dir = %dir.display(), %error, "cannot remove an earlier topic's folder");
            ResponseError::KafkaStorageError.code()
        })?;
        let budget = &self.shared.descriptors;
        let expected = crate::descriptors::segment_files_in(&dir);
        let mut charged = expected.and_then(|expected| budget.charge(expected));
        if let (None, Some(segments), Open::OnDemand) = (&charged, expected, open) {
            // A client wants it now: partitions idle longest make room.
            let needed = segments * crate::descriptors::DESCRIPTORS_PER_SEGMENT;
            if self.close_idle_partitions(needed).await > 0 {
                charged = budget.charge(segments);
            }
        }
        let (Some(expected), Some(mut charge)) = (expected, charged) else {
            return Err(self.refuse_for_descriptors(topic, index, None).await);
        };
        let log = PartitionLog::open(&dir, log_config).await.map_err(|error| {
            tracing::error!(shard = self.id, dir = %dir.display(), %error, "cannot open partition log");
            crate::errors::code_for_log_error(&error)
        })?;
        let (stamp_dir, topic_id) = (dir.clone(), meta.id);
        let stamped = crate::partition_dirs::off_shard(move || {
            crate::partition_dirs::ensure_stamp(&stamp_dir, topic_id)
        })
        .await;
        if let Err(error) = stamped {
            tracing::warn!(dir = %dir.display(), %error, "cannot stamp the partition folder with its topic id; it is stamped at the next open");
        }
        let opened = log.open_segment_files();
        if opened > expected {
            match budget.charge(opened - expected) {
                Some(more) => charge.absorb(more),
                None => return Err(self.refuse_for_descriptors(topic, index, Some(log)).await),
            }
        }
        let loaded = crate::producer::snapshot::load(
            &log,
            format!("{topic}-{index}"),
            crate::config::producer_limits_for(&meta.configs, &self.config.kafka),
            now_ms(),
        )
        .await;
        let leader_epoch = self.metadata.borrow().leader_epoch(topic, index);
        let record = self
            .metadata
            .borrow()
            .partition_record(topic, index)
            .filter(|record| record.replicas.len() > 1)
            .cloned();
        let replicated = record.as_ref().map(|_| {
            Rc::new(crate::replication::driver::Replicated::new(
                topic.to_string(),
                index,
                meta.id,
                self.config.node_id,
                crate::replication::driver::config_for(&meta.configs, &self.config),
                crate::partition::replication::log_view(&log),
                crate::cluster::liveness::monotonic_ms(),
            ))
        });
        let replication = match &replicated {
            Some(replicated) => Replication::Replicated(replicated.clone()),
            None => Replication::Local { stage },
        };
        let partition = Partition::new(
            topic.to_string(),
            index,
            log,
            replication,
            leader_epoch,
            loaded,
        )
        .with_descriptors(charge);
        let partition = Rc::new(partition);
        if let (Some(replicated), Some(record), Some(links)) =
            (replicated, record, self.replica_links())
        {
            let outlet: Rc<dyn crate::replication::driver::ReplicaOutlet> = Rc::new(links);
            glommio::spawn_local(crate::replication::driver::run_pump(
                Rc::downgrade(&partition),
                replicated.clone(),
                partition.progress_watcher(),
                outlet,
            ))
            .detach();
            let current = self
                .metadata
                .borrow()
                .partition_record(topic, index)
                .cloned()
                .unwrap_or(record);
            replicated.on_record(&current, crate::cluster::liveness::monotonic_ms());
        }
        if let Some(at) = self.moved_in.borrow_mut().remove(&key) {
            partition.note_moved_in(at);
        }
        self.partitions
            .borrow_mut()
            .insert(key.clone(), partition.clone());
        Ok((partition, true))
    }

    /// Makes room in a spent descriptor budget for an open on demand: closes
    /// (cleanly) this shard's partitions that no request holds and none
    /// used for `log.idle.partition.close.ms`, least recently used first,
    /// until `needed` descriptors are free. A closed one opens again on its
    /// next use. Returns the descriptors given back. Other shards' idle
    /// partitions are theirs to close.
    async fn close_idle_partitions(&self, needed: u64) -> u64 {
        let idle_after = self.config.settings.idle_partition_close;
        let now = Instant::now();
        let mut idle: Vec<((String, i32), Instant, u64)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(_, partition)| {
                Rc::strong_count(partition) == 1
                    && partition.descriptors_held() > 0
                    && now.saturating_duration_since(partition.last_used()) >= idle_after
            })
            .map(|(key, partition)| {
                (
                    key.clone(),
                    partition.last_used(),
                    partition.descriptors_held(),
                )
            })
            .collect();
        idle.sort_by_key(|(_, used, _)| *used);
        let mut freed = 0;
        let mut closing = Vec::new();
        for (key, _, held) in idle {
            if freed >= needed {
                break;
            }
            let Some(partition) = self.partitions.borrow_mut().remove(&key) else {
                continue;
            };
            // Opens of it wait until its close is done (one log per folder).
            self.opening
                .borrow_mut()
                .insert(key.clone(), Rc::new(Semaphore::new(0)));
            freed += held;
            closing.push((key, partition));
        }
        if closing.is_empty() {
            return 0;
        }
        self.publish_partitions();
        let count = closing.len();
        futures::stream::iter(closing)
            .for_each_concurrent(OPEN_CONCURRENCY, |(key, partition)| async move {
                let _gate = OpeningGuard {
                    opening: &self.opening,
                    key: &key,
                };
                match Rc::try_unwrap(partition) {
                    Ok(partition) => {
                        if let Err(error) = partition.close().await {
                            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, %error, "closing an idle partition");
                        }
                    }
                    // Not reachable: only the map held it and nothing ran since.
                    Err(_) => tracing::debug!(shard = self.id, topic = %key.0, partition = key.1, "an idle partition was taken while closing"),
                }
            })
            .await;
        tracing::info!(
            shard = self.id,
            closed = count,
            descriptors_freed = freed,
            descriptors_in_use = self.shared.descriptors.used(),
            "descriptor budget spent: closed partitions idle longest (log.idle.partition.close.ms) to open one a client asked for"
        );
        freed
    }

    /// Closes a log whose segment files do not fit the descriptor budget
    /// again, so the partitions that fit keep working; says so once.
    async fn refuse_for_descriptors(
        &self,
        topic: &str,
        index: i32,
        log: Option<PartitionLog>,
    ) -> i16 {
        let budget = &self.shared.descriptors;
        if budget.first_warning() {
            tracing::warn!(
                shard = self.id,
                topic,
                partition = index,
                descriptors_in_use = budget.used(),
                "descriptor limit (RLIMIT_NOFILE) too low for the partitions held: partitions that do not fit answer KAFKA_STORAGE_ERROR (retriable) until it is raised (see `ulimit -Hn`)"
            );
        }
        tracing::debug!(
            shard = self.id,
            topic,
            partition = index,
            "partition not opened: descriptor budget spent"
        );
        if let Some(log) = log {
            if let Err(error) = log.close().await {
                tracing::warn!(shard = self.id, topic, partition = index, %error, "closing a log that did not fit the descriptor budget");
            }
        }
        ResponseError::KafkaStorageError.code()
    }

    /// Opens every partition this shard owns (recovering their logs),
    /// [`OPEN_CONCURRENCY`] at a time, and publishes the layout once.
    pub async fn open_owned_partitions(&self) {
        let metadata = self.metadata();
        let wanted: Vec<(String, i32)> = {
            let open = self.partitions.borrow();
            metadata
                .topics
                .values()
                .flat_map(|topic| (0..topic.partitions).map(move |index| (topic, index)))
                .filter(|(topic, index)| {
                    metadata.owner_of(&topic.name, *index, self.count) == self.id
                        && metadata.hosts_replica(&topic.name, *index, self.config.node_id)
                        && !metadata.is_moving(&topic.name, *index)
                        && !open.contains_key(&(topic.name.clone(), *index))
                })
                .map(|(topic, index)| (topic.name.clone(), index))
                .collect()
        };
        let Some((first, rest)) = wanted.split_first() else {
            return;
        };
        let started = Instant::now();
        // The first open alone: it primes the device for direct I/O on this
        // thread (`kafki_storage::dma::prime_device`) before any other.
        let mut unavailable = usize::from(
            self.open_partition(&first.0, first.1, Open::Owned)
                .await
                .is_err(),
        );
        let mut opens = futures::stream::iter(rest)
            .map(|(topic, index)| self.open_partition(topic, *index, Open::Owned))
            .buffer_unordered(OPEN_CONCURRENCY);
        while let Some(opened) = opens.next().await {
            unavailable += usize::from(opened.is_err());
        }
        drop(opens);
        self.publish_partitions();
        tracing::info!(
            shard = self.id,
            partitions = wanted.len(),
            unavailable,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened owned partitions"
        );
    }

    /// Installs a new metadata snapshot; closes and deletes the logs of
    /// topics that disappeared (or whose id changed).
    pub async fn install_metadata(&self, next: Arc<ClusterMetadata>) {
        let previous = self.metadata.replace(next.clone());
        // Noted before any await, so no request sees the partition here
        // without it: the move's final snapshot gives it to this shard.
        if let Some((topic, index)) = &previous.moving {
            if next.moving.is_none()
                && next.owner_of(topic, *index, self.count) == self.id
                && previous.owner_of(topic, *index, self.count) != self.id
            {
                self.moved_in
                    .borrow_mut()
                    .insert((topic.clone(), *index), std::time::Instant::now());
            }
        }
        let doomed: Vec<(String, i32)> = self
            .partitions
            .borrow()
            .keys()
            .filter(
                |(topic, _)| match (next.topic(topic), previous.topic(topic)) {
                    (Some(now), Some(before)) => now.id != before.id,
                    (None, _) => true,
                    _ => false,
                },
            )
            .cloned()
            .collect();
        for key in doomed {
            let removed = self.partitions.borrow_mut().remove(&key);
            if let Some(partition) = removed {
                let dir = self.partition_dir(&key.0, key.1);
                match Rc::try_unwrap(partition) {
                    Ok(partition) => {
                        if let Err(error) = partition.close_deleted().await {
                            tracing::warn!(dir = %dir.display(), %error, "closing a deleted partition");
                        }
                    }
                    Err(_) => {
                        tracing::debug!(dir = %dir.display(), "deleted partition still in use; its files go now")
                    }
                }
            }
        }
        // Every folder of a deleted topic goes, open or not: marked first,
        // so a crash mid-removal never leaves one a new topic of the same
        // name would open; the start-up sweep finishes what a crash cut short.
        self.remove_deleted_folders(&previous, &next).await;
        self.fence_to(&next);
        self.feed_partition_records(&next);
        crate::group::runtime::unload_moved_groups(self);
        crate::txn::runtime::unload_moved_txn_partitions(self);
        self.drop_moved_replicas(&previous, &next).await;
        self.publish_partitions();
        self.reopen_reconfigured(&previous, &next).await;
        self.open_owned_partitions().await;
    }

    /// Drops this shard's copy of every partition a reassignment took off
    /// this node (`previous` listed it among the replicas, `next` does not):
    /// the log closes and its folder goes. A copy whose change was missed
    /// (the node was down) stays on disk until the topic is deleted.
    async fn drop_moved_replicas(&self, previous: &ClusterMetadata, next: &ClusterMetadata) {
        let me = self.config.node_id;
        let moved: Vec<(String, i32)> = next
            .partition_records_iter()
            .filter(|(topic, partition, record)| {
                !record.replicas.contains(&me)
                    && previous
                        .partition_record(topic, *partition)
                        .is_some_and(|before| before.replicas.contains(&me))
                    && next.owner_of(topic, *partition, self.count) == self.id
            })
            .map(|(topic, partition, _)| (topic.to_string(), partition))
            .collect();
        if moved.is_empty() {
            return;
        }
        let mut doomed = Vec::new();
        for key in moved {
            let dir = self.partition_dir(&key.0, key.1);
            let removed = self.partitions.borrow_mut().remove(&key);
            if let Some(partition) = removed {
                if let Some(replicated) = partition.replicated() {
                    replicated.stop();
                }
                match Rc::try_unwrap(partition) {
                    Ok(partition) => {
                        if let Err(error) = partition.close_deleted().await {
                            tracing::warn!(dir = %dir.display(), %error, "closing a replica moved off this node");
                        }
                    }
                    Err(_) => {
                        tracing::debug!(dir = %dir.display(), "moved replica still in use; its files go now")
                    }
                }
            }
            tracing::info!(topic = %key.0, partition = key.1, "replica moved off this node: its copy is removed");
            doomed.push(dir);
        }
        self.publish_partitions();
        crate::partition_dirs::remove_folders_off_shard(doomed).await;
    }

    /// Moves every open partition whose leader epoch `next` raised to that
    /// epoch (a leader change the partition lived through).
    fn fence_to(&self, next: &ClusterMetadata) {
        for ((topic, index), partition) in self.partitions.borrow().iter() {
            let epoch = next.leader_epoch(topic, *index);
            if partition.fence(epoch) {
                tracing::info!(
                    shard = self.id,
                    topic,
                    partition = index,
                    epoch,
                    "new leader epoch"
                );
            }
        }
    }

    /// Removes the folders of every partition this shard owned of topics
    /// that `next` deleted (or re-created under a new id), open or not: a
    /// partition never opened since the start still has its folder.
    async fn remove_deleted_folders(&self, previous: &ClusterMetadata, next: &ClusterMetadata) {
        let mut doomed = Vec::new();
        for topic in previous.topics.values() {
            let kept = next
                .topic(&topic.name)
                .is_some_and(|now| now.id == topic.id);
            if kept {
                continue;
            }
            for index in 0..topic.partitions {
                if previous.owner_of(&topic.name, index, self.count) != self.id {
                    continue;
                }
                doomed.push(self.partition_dir(&topic.name, index));
            }
        }
        // `remove_folder` skips folders that are not there.
        crate::partition_dirs::remove_folders_off_shard(doomed).await;
    }

    /// Reopens partitions whose topic settings changed, so the new log
    /// settings apply. Waits (bounded) for requests still holding the old
    /// log; if they do not let go, the change applies at the next restart.
    async fn reopen_reconfigured(&self, previous: &ClusterMetadata, next: &ClusterMetadata) {
        let changed: Vec<(String, i32)> = self
            .partitions
            .borrow()
            .keys()
            .filter(
                |(topic, _)| match (previous.topic(topic), next.topic(topic)) {
                    (Some(before), Some(now)) => {
                        before.id == now.id && before.configs != now.configs
                    }
                    _ => false,
                },
            )
            .cloned()
            .collect();
        if changed.is_empty() {
            return;
        }
        let Ok(_permit) = self.open_lock.acquire_permit(OPEN_CONCURRENCY as u64).await else {
            return;
        };
        for key in changed {
            let Some(partition) = self.partitions.borrow().get(&key).cloned() else {
                continue;
            };
            // The map's reference and this one.
            if !wait_for_holders(&partition, 2, REOPEN_WAIT_MAX).await {
                tracing::warn!(topic = %key.0, partition = key.1, "partition busy; new settings apply at the next restart");
                continue;
            }
            drop(partition);
            let Some(partition) = self.partitions.borrow_mut().remove(&key) else {
                continue;
            };
            if let Ok(partition) = Rc::try_unwrap(partition) {
                if let Err(error) = partition.close().await {
                    tracing::error!(topic = %key.0, partition = key.1, %error, "closing for reconfiguration");
                }
            }
        }
    }

    /// Controller only: `change` validates against the current image and
    /// says what changes as records (none: nothing to do); the records are
    /// applied, the image stored, and installed on every shard before this
    /// returns.
    pub async fn controller_change(
        self: &Rc<Self>,
        change: impl FnMut(&ClusterMetadata) -> Result<Vec<MetadataRecord>, KafkaError>,
    ) -> Result<Arc<ClusterMetadata>, KafkaError> {
        self.controller_change_by(None, change).await
    }

    /// [`Shard::controller_change`] that gives up at `deadline` (if any)
    /// with `REQUEST_TIMED_OUT`, whether it still waits for the permit or
    /// for the quorum to commit (the change may still commit later).
    pub async fn controller_change_by(
        self: &Rc<Self>,
        deadline: Option<Instant>,
        mut change: impl FnMut(&ClusterMetadata) -> Result<Vec<MetadataRecord>, KafkaError>,
    ) -> Result<Arc<ClusterMetadata>, KafkaError> {
        let permit = match deadline {
            None => self.controller_permit().await,
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                glommio::timer::timeout(wait, async { Ok(self.controller_permit().await) })
                    .await
                    .map_err(|_| {
                        KafkaError::new(
                            ResponseError::RequestTimedOut,
                            "other metadata changes held the controller until the deadline"
                                .to_string(),
                        )
                    })?
            }
        };
        let _permit = permit.map_err(|_| {
            KafkaError::new(
                ResponseError::UnknownServerError,
                "shutting down".to_string(),
            )
        })?;
        let quorum = self.quorum.borrow().clone();
        if let Some(quorum) = quorum {
            return self.cluster_change(&quorum, &mut change, deadline).await;
        }
        let current = self.metadata();
        let records = change(&current)?;
        if records.is_empty() {
            return Ok(current);
        }
        let next = current.apply_all(&records);
        next.store_off_shard(&self.config.data_dir)
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot store cluster metadata");
                KafkaError::new(ResponseError::KafkaStorageError, error.to_string())
            })?;
        let next = Arc::new(next);
        self.broadcast_metadata(next.clone()).await;
        Ok(next)
    }

    /// Controller only: the permit every metadata change holds, so changes
    /// (topic admin, configs, partition moves) apply one at a time.
    pub async fn controller_permit(&self) -> anyhow::Result<glommio::sync::Permit<'_>> {
        debug_assert_eq!(self.id, 0, "metadata changes run on the controller shard");
        self.controller_lock
            .acquire_permit(1)
            .await
            .map_err(|_| anyhow!("the controller is shutting down"))
    }

    /// Controller only: installs `next` on every shard, one after the
    /// other, returning when all did (or could not be reached, logged).
    pub async fn broadcast_metadata(self: &Rc<Self>, next: Arc<ClusterMetadata>) {
        for target in 0..self.count {
            let snapshot = next.clone();
            let installed = self
                .invoke_on(target, move |shard| async move {
                    shard.install_metadata(snapshot).await
                })
                .await;
            if let Err(error) = installed {
                tracing::error!(target, %error, "metadata not installed on a shard");
            }
        }
    }

    /// The old owner's half of a hand-over, run once every shard has the
    /// snapshot marking `topic`/`index` as moving (so nothing hands out new
    /// references to it): takes the partition out of this shard, makes the
    /// requests still holding it stop appending and waiting, waits up to
    /// `wait_max` for them to let go, then closes the log cleanly (flushed,
    /// synced, clean-shutdown marker) so the new owner opens it without a
    /// rescan. If they do not let go in time, the partition is put back
    /// untouched and an error says why: the log was never closed, so the
    /// move can be undone by restoring the old snapshot.
    pub async fn release_partition(
        &self,
        topic: &str,
        index: i32,
        wait_max: Duration,
    ) -> Result<Released, String> {
        debug_assert!(self.metadata.borrow().is_moving(topic, index));
        // Holding the open lock means no open of this partition is half done
        // (one that started before the moving snapshot arrived has finished
        // and inserted it; later ones see the snapshot and refuse).
        let _permit = self
            .open_lock
            .acquire_permit(OPEN_CONCURRENCY as u64)
            .await
            .map_err(|_| "the shard is shutting down".to_string())?;
        let key = (topic.to_string(), index);
        let Some(partition) = self.partitions.borrow_mut().remove(&key) else {
            // Not open here (e.g. its open failed): nothing to close.
            return Ok(Released {
                was_open: false,
                clean: true,
            });
        };
        partition.release();
        self.publish_partitions();
        wait_for_holders(&partition, 1, wait_max).await;
        // No await from the count check to here, so nobody can clone it now.
        let partition = match Rc::try_unwrap(partition) {
            Ok(partition) => partition,
            Err(partition) => {
                // Put it back as it was: its log never stopped, so restoring
                // the old snapshot undoes the move without a reopen.
                let holders = Rc::strong_count(&partition) - 1;
                partition.unrelease();
                self.partitions.borrow_mut().insert(key, partition);
                self.publish_partitions();
                return Err(format!(
                    "{holders} request(s) still used {topic}-{index} after {} ms",
                    wait_max.as_millis()
                ));
            }
        };
        let clean = match partition.close().await {
            Ok(()) => true,
            Err(error) => {
                // What was acknowledged reached its commit stage already; the
                // new owner's open recovers the log as after a crash.
                tracing::warn!(shard = self.id, topic, partition = index, %error, "hand-over: unclean close; the new owner will recover the log");
                false
            }
        };
        Ok(Released {
            was_open: true,
            clean,
        })
    }

    /// Creates a topic through the controller. `Ok` carries the topic.
    /// `replication_factor` -1 takes `default.replication.factor`.
    pub async fn create_topic(
        self: &Rc<Self>,
        name: String,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, KafkaError> {
        let replication_factor = if replication_factor == -1 {
            self.config
                .kafka
                .get_i64("default.replication.factor")
                .unwrap_or(1)
        } else {
            i64::from(replication_factor)
        };
        let Some(replication_factor) = usize::try_from(replication_factor)
            .ok()
            .filter(|factor| *factor >= 1)
        else {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicationFactor,
                "Replication factor must be larger than 0.".to_string(),
            ));
        };
        let outcome = self
            .invoke_on(0, move |controller| async move {
                let mut created = None;
                let result = controller
                    .controller_change(|current| {
                        let topic = crate::metadata::validate_new_topic(
                            current,
                            &controller.config,
                            &name,
                            partitions,
                            replication_factor,
                            &configs,
                        )?;
                        created = Some(topic.clone());
                        if validate_only {
                            return Ok(Vec::new());
                        }
                        let mut records =
                            crate::metadata::partitions::initial_partition_records(&topic, 0);
                        records.insert(0, MetadataRecord::Topic(topic));
                        Ok(records)
                    })
                    .await;
                result.and_then(|_| {
                    created.ok_or(KafkaError::new(
                        ResponseError::UnknownServerError,
                        String::new(),
                    ))
                })
            })
            .await;
        outcome.unwrap_or_else(|error| {
            Err(KafkaError::new(
                ResponseError::UnknownServerError,
                error.to_string(),
            ))
        })
    }

    /// Closes every partition cleanly for a node stop, [`OPEN_CONCURRENCY`]
    /// at a time: each writes its files without syncing them, then one
    /// `syncfs` makes all of them durable before any is marked clean
    /// ([`kafki_storage::finish_stop`]). One after another, 20 000 logs took
    /// 58 s to stop; with a few syncs each, 8 000 written logs took 8–9 s.
    pub async fn close_partitions(&self) {
        let partitions: Vec<_> = self.partitions.borrow_mut().drain().collect();
        self.publish_partitions();
        let started = Instant::now();
        let count = partitions.len();
        let pending = RefCell::new(Vec::new());
        futures::stream::iter(partitions)
            .for_each_concurrent(OPEN_CONCURRENCY, |((topic, index), partition)| {
                let pending = &pending;
                async move {
                    if let Some(left) = self.close_at_shutdown(topic, index, partition).await {
                        pending.borrow_mut().push(left);
                    }
                }
            })
            .await;
        let closed_ms = started.elapsed().as_millis() as u64;
        let pending = pending.into_inner();
        let waiting = pending.len();
        let finished =
            kafki_storage::checkpoint::off_executor(move || kafki_storage::finish_stop(&pending))
                .await;
        if let Err(error) = finished {
            tracing::error!(shard = self.id, %error, logs = waiting, "syncing the file system at stop failed: those logs are recovered at the next start");
        }
        tracing::info!(
            shard = self.id,
            partitions = count,
            marked_after_sync = waiting,
            closed_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "closed partitions"
        );
    }

    /// Closes one partition at a node stop; returns what is left once the
    /// file system is synced.
    async fn close_at_shutdown(
        &self,
        topic: String,
        index: i32,
        partition: Rc<Partition>,
    ) -> Option<kafki_storage::PendingMarker> {
        match Rc::try_unwrap(partition) {
            Ok(partition) => match partition.close_for_stop().await {
                Ok(left) => left,
                Err(error) => {
                    tracing::error!(shard = self.id, topic, partition = index, %error, "unclean close");
                    None
                }
            },
            Err(partition) => {
                // A request still holds it: make its data durable anyway
                // (the snapshot waits for that), with its producer state.
                // Its replication ends now (waiting produces fail).
                if let Some(replicated) = partition.replicated() {
                    replicated.stop();
                }
                if let Err(error) = partition.snapshot_producers().await {
                    tracing::warn!(shard = self.id, topic, partition = index, %error, "producer-state snapshot at shutdown failed");
                }
                if let Err(error) = partition.flush().await {
                    tracing::error!(shard = self.id, topic, partition = index, %error, "flush at shutdown failed");
                }
                None
            }
        }
    }

    /// The shard's producer-state maintenance, run every
    /// [`crate::producer::snapshot::SNAPSHOT_CHECK_INTERVAL`]: forgets
    /// expired producers when `expire` is set, and writes the snapshots
    /// that are due. Holds one partition at a time, so a hand-over waits
    /// for at most one snapshot write.
    pub async fn maintain_producer_states(&self, expire: bool) {
        let keys: Vec<(String, i32)> = self.partitions.borrow().keys().cloned().collect();
        for key in keys {
            let Some(partition) = self.partitions.borrow().get(&key).map(PartitionRef::new) else {
                continue;
            };
            match partition.maintain_producers(expire, now_ms()).await {
                Ok(0) => {}
                Ok(expired) => {
                    tracing::info!(shard = self.id, topic = %key.0, partition = key.1, expired, "expired idle producers (producer.id.expiration.ms)")
                }
                Err(error) => {
                    tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, %error, "producer-state snapshot failed; retrying at the next check")
                }
            }
        }
    }

    /// Updates the partition gauge and the admin layout.
    pub fn publish_partitions(&self) {
        let owned = self.owned_partitions();
        self.metrics.set_partitions(owned.len() as i64);
        if let Ok(mut layout) = self.shared.layout.lock() {
            let entry = layout.entry(self.id).or_insert((usize::MAX, Vec::new()));
            entry.1 = owned
                .iter()
                .map(|(topic, index)| format!("{topic}-{index}"))
                .collect();
        }
    }

    /// Partitions this shard owns, for metrics and the admin API.
    pub fn owned_partitions(&self) -> Vec<(String, i32)> {
        let mut owned: Vec<_> = self.partitions.borrow().keys().cloned().collect();
        owned.sort();
        owned
    }

    /// Runs one cleaning pass on every owned compacted partition, one after
    /// another (each pass yields between batches), and counts what it did.
    pub async fn clean_partitions(&self, now_ms: i64, limits: &kafki_storage::CleanerLimits) {
        let partitions: Vec<PartitionRef> = self
            .partitions
            .borrow()
            .values()
            .filter(|partition| partition.is_compacted())
            .map(PartitionRef::new)
            .collect();
        for partition in partitions {
            if self.shutting_down.get() {
                return;
            }
            match partition.compact(now_ms, limits).await {
                Ok(report) => self.metrics.record_clean(&report),
                Err(error) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "log cleaning failed")
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// A handle on every open partition (for the shard's own maintenance).
    fn open_partitions(&self) -> Vec<PartitionRef> {
        self.partitions
            .borrow()
            .values()
            .map(PartitionRef::new)
            .collect()
    }

    /// Adds what every open log wrote and synced since the last call to the
    /// shard's storage counters, and publishes which logs refuse writes
    /// (called once a second).
    pub fn report_storage_stats(&self) {
        let partitions = self.open_partitions();
        let mut unwritable = Vec::new();
        for partition in partitions {
            self.metrics.add_storage(&partition.take_stats_delta());
            let (state, reason) = match partition.write_state() {
                kafki_storage::WriteState::Writable => continue,
                kafki_storage::WriteState::Paused(reason) => ("paused", reason),
                kafki_storage::WriteState::Failed(reason) => ("failed", reason),
            };
            unwritable.push(UnwritableLog {
                partition: format!("{}-{}", partition.topic, partition.index),
                state,
                reason,
            });
        }
        let paused = unwritable
            .iter()
            .filter(|log| log.state == "paused")
            .count();
        self.metrics
            .set_unwritable(paused, unwritable.len() - paused);
        if let Ok(mut shared) = self.shared.unwritable.lock() {
            shared.insert(self.id, unwritable);
        }
    }

    /// Applies retention to every owned partition.
    pub async fn enforce_retention(&self, now_ms: i64) {
        let partitions = self.open_partitions();
        for partition in partitions {
            if let Err(error) = partition.enforce_retention(now_ms).await {
                tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "retention failed");
            }
        }
    }
}

/// Gives way once: every task already runnable on this shard runs before
/// the caller goes on (to gather what they queue in this turn into one
/// frame or one write).
pub async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}
