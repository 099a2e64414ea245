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
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::{LogOffsets, PartitionLog, SyncPolicy};

use crate::config::{log_config_for, BrokerConfig};
use crate::metadata::{ClusterMetadata, TopicMeta};

/// How long a reconfiguration waits for requests to release a partition.
const REOPEN_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often a shard waiting for requests to let go of a partition looks.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// A unit of work sent to another shard.
pub type ShardTask = Box<dyn FnOnce(Rc<Shard>) -> LocalBoxFuture<'static, ()> + Send>;

/// The future of [`Partition::wait_released`]. Its waker is registered
/// under its own key and removed when it is dropped: a registry that only
/// grew (every long poll adding a waker, none leaving until a hand-over)
/// cost a scan per poll that grew with every fetch ever parked.
pub struct ReleaseWait<'a> {
    partition: &'a Partition,
    key: Option<u64>,
}

impl std::future::Future for ReleaseWait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, context: &mut std::task::Context<'_>) -> Poll<()> {
        let partition = self.partition;
        if partition.released.get() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = partition.next_release_waiter.get();
                partition.next_release_waiter.set(key.wrapping_add(1));
                self.key = Some(key);
                key
            }
        };
        let mut waiters = partition.release_waiters.borrow_mut();
        match waiters.get_mut(&key) {
            Some(known) if known.will_wake(context.waker()) => {}
            Some(known) => *known = context.waker().clone(),
            None => {
                waiters.insert(key, context.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for ReleaseWait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.partition.release_waiters.borrow_mut().remove(&key);
        }
    }
}

/// How long after a hand-over an out-of-sequence batch is taken for one
/// sent before the client saw its predecessor refused by the move.
const MOVE_IN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A partition owned by this shard.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub log: PartitionLog,
    /// Whether the topic's commit stage is *durable* (fsync per append) or
    /// *written* (relaxed flush policy). `acks=all` waits for this stage,
    /// and consumers see data up to it (the high watermark).
    pub commit_durable: bool,
    pub leader_epoch: i32,
    /// Idempotent producers' sequence state.
    pub producers: RefCell<crate::handlers::producer::ProducerStates>,
    /// What its snapshot file on disk covers (`crate::producer_snapshot`).
    pub snapshot: crate::producer_snapshot::SnapshotSlot,
    /// Set when the shard gave the partition up (a hand-over to another
    /// shard): requests still holding it must not append any more, and
    /// long polls parked on it must let go.
    released: Cell<bool>,
    /// Tasks waiting for `released` (fetch long polls), by waiter key; a
    /// wait removes its entry when it ends, so the map holds only the
    /// long polls parked right now.
    release_waiters: RefCell<HashMap<u64, Waker>>,
    next_release_waiter: Cell<u64>,
    /// When a hand-over from another shard opened it here (see
    /// [`Partition::out_of_sequence_code`]).
    moved_in_at: Cell<Option<std::time::Instant>>,
    /// The log's counters as last added to the shard's metrics.
    reported_stats: Cell<kafki_storage::LogStats>,
}

impl Partition {
    /// A partition around an opened log and its loaded producer state.
    pub fn new(
        topic: String,
        index: i32,
        log: PartitionLog,
        commit_durable: bool,
        loaded: crate::producer_snapshot::Loaded,
    ) -> Self {
        Self {
            topic,
            index,
            log,
            commit_durable,
            leader_epoch: 0,
            producers: RefCell::new(loaded.states),
            snapshot: crate::producer_snapshot::SnapshotSlot::new(loaded.mark),
            released: Cell::new(false),
            release_waiters: RefCell::new(HashMap::new()),
            next_release_waiter: Cell::new(0),
            moved_in_at: Cell::new(None),
            reported_stats: Cell::new(kafki_storage::LogStats::default()),
        }
    }

    /// What the log counted since the last call (for the shard's metrics).
    pub fn take_stats_delta(&self) -> kafki_storage::LogStats {
        let now = self.log.stats();
        let before = self.reported_stats.replace(now);
        kafki_storage::LogStats {
            appended_batches: now.appended_batches.saturating_sub(before.appended_batches),
            appended_bytes: now.appended_bytes.saturating_sub(before.appended_bytes),
            writes: now.writes.saturating_sub(before.writes),
            written_bytes: now.written_bytes.saturating_sub(before.written_bytes),
            zero_filled_bytes: now
                .zero_filled_bytes
                .saturating_sub(before.zero_filled_bytes),
            fsyncs: now.fsyncs.saturating_sub(before.fsyncs),
            segments: now.segments,
        }
    }

    /// The error for a producer batch whose sequence does not follow the
    /// producer's last one. Normally `OUT_OF_ORDER_SEQUENCE_NUMBER`. Shortly
    /// after a hand-over it is `NOT_LEADER_OR_FOLLOWER`: a client pipelining
    /// produce requests had batch *k* refused while the partition moved and
    /// batch *k+1*, sent before it saw that answer, arrives once the move is
    /// done. With Kafka the old leader would refuse *k+1* the same way as *k*
    /// and the client would resend both in order; out-of-sequence instead
    /// makes librdkafka bump its epoch (and reset its sequences) for what was
    /// only a move. Retriable, so the batch comes back after *k*.
    pub fn out_of_sequence_code(&self) -> i16 {
        match self.moved_in_at.get() {
            Some(at) if at.elapsed() < MOVE_IN_GRACE => ResponseError::NotLeaderOrFollower.code(),
            _ => ResponseError::OutOfOrderSequenceNumber.code(),
        }
    }

    /// Whether the shard gave this partition up: appends must be refused
    /// (`NOT_LEADER_OR_FOLLOWER`) and waits on it should end.
    pub fn is_released(&self) -> bool {
        self.released.get()
    }

    /// Marks the partition as given up and wakes every task parked in
    /// [`Partition::wait_released`].
    fn release(&self) {
        self.released.set(true);
        let waiters = std::mem::take(&mut *self.release_waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Undoes [`Partition::release`] (an aborted hand-over).
    fn unrelease(&self) {
        self.released.set(false);
    }

    /// Returns once the partition is released. Fetch long polls race this
    /// against log progress so a hand-over does not wait for their timeout.
    pub fn wait_released(&self) -> ReleaseWait<'_> {
        ReleaseWait {
            partition: self,
            key: None,
        }
    }

    /// The high watermark: on one node, the offset up to which the commit
    /// stage is reached.
    pub fn high_watermark(&self) -> u64 {
        let offsets = self.log.offsets();
        self.high_watermark_of(&offsets)
    }

    pub fn high_watermark_of(&self, offsets: &LogOffsets) -> u64 {
        if self.commit_durable {
            offsets.durable_offset
        } else {
            offsets.written_offset
        }
    }

    /// Waits until the commit stage covers every offset below `end_offset`.
    pub async fn wait_committed(&self, end_offset: u64) -> kafki_storage::LogResult<()> {
        if self.commit_durable {
            self.log.wait_durable(end_offset).await
        } else {
            self.log.wait_written(end_offset).await
        }
    }
}

/// Per-core broker state.
pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Arc<BrokerConfig>,
    senders: Senders<ShardTask>,
    metadata: RefCell<Arc<ClusterMetadata>>,
    partitions: RefCell<HashMap<(String, i32), Rc<Partition>>>,
    /// Serialises opening and closing partitions on this shard.
    open_lock: Semaphore,
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
    pub groups: crate::handlers::groups::GroupShard,
    /// Producer ids (used on the controller shard only).
    pub producer_ids: crate::handlers::producer::ProducerIdAllocator,
    /// Incremental fetch sessions of connections served here.
    pub fetch_sessions: RefCell<crate::handlers::fetch_session::FetchSessions>,
    /// This shard's metric handles (created on this shard's thread).
    pub metrics: crate::metrics::ShardMetrics,
    /// State shared with the other shards and the admin thread.
    pub shared: Arc<SharedState>,
}

/// Broker-wide state that crosses threads: connection count (the
/// `max.connections` limit is broker-wide, as in Kafka), and the layout the
/// admin listener reports. Touched on connect/close and metadata changes,
/// never per request.
#[derive(Debug, Default)]
pub struct SharedState {
    pub connections: std::sync::atomic::AtomicUsize,
    pub shards_ready: std::sync::atomic::AtomicUsize,
    /// Shard id → (CPU, owned partitions as `topic-partition`).
    pub layout: std::sync::Mutex<BTreeMap<usize, (usize, Vec<String>)>>,
}

/// What [`Shard::release_partition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// False when the partition was not open on the old owner.
    pub was_open: bool,
    /// Whether its log closed cleanly (else the new owner recovers it).
    pub clean: bool,
}

/// Wall-clock milliseconds since the epoch (producer expiry's clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
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
        let groups = crate::handlers::groups::GroupShard::new(&config, id);
        Rc::new(Self {
            id,
            groups,
            producer_ids: Default::default(),
            metrics: crate::metrics::ShardMetrics::new(id),
            fetch_sessions: RefCell::new(Default::default()),
            shared,
            count: senders.nr_consumers(),
            config,
            senders,
            metadata: RefCell::new(metadata),
            partitions: RefCell::new(HashMap::new()),
            open_lock: Semaphore::new(1),
            moved_in: RefCell::new(HashMap::new()),
            controller_lock: Semaphore::new(1),
            move_running: Cell::new(false),
            shutting_down: Cell::new(false),
        })
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
    pub async fn partition(&self, topic: &str, index: i32) -> Result<Rc<Partition>, i16> {
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
        if let Some(found) = self.partitions.borrow().get(&(topic.to_string(), index)) {
            return Ok(found.clone());
        }
        self.check_serves(topic, index)?;
        let _permit = self
            .open_lock
            .acquire_permit(1)
            .await
            .map_err(|_| ResponseError::KafkaStorageError.code())?;
        if let Some(found) = self.partitions.borrow().get(&(topic.to_string(), index)) {
            return Ok(found.clone());
        }
        // Again under the lock: while we waited for it, a hand-over may have
        // given the partition to another shard, which may have opened it.
        let meta = self.check_serves(topic, index)?;
        let log_config = log_config_for(&meta.configs, &self.config.kafka);
        let commit_durable = log_config.sync_policy == SyncPolicy::EveryAppend;
        let dir = self.partition_dir(topic, index);
        let log = PartitionLog::open(&dir, log_config).await.map_err(|error| {
            tracing::error!(shard = self.id, dir = %dir.display(), %error, "cannot open partition log");
            crate::errors::code_for_log_error(&error)
        })?;
        let loaded = crate::producer_snapshot::load(
            &log,
            format!("{topic}-{index}"),
            crate::config::producer_limits_for(&meta.configs, &self.config.kafka),
            now_ms(),
        )
        .await;
        let partition = Rc::new(Partition::new(
            topic.to_string(),
            index,
            log,
            commit_durable,
            loaded,
        ));
        let key = (topic.to_string(), index);
        if let Some(at) = self.moved_in.borrow_mut().remove(&key) {
            partition.moved_in_at.set(Some(at));
        }
        self.partitions
            .borrow_mut()
            .insert((topic.to_string(), index), partition.clone());
        self.publish_partitions();
        Ok(partition)
    }

    /// Opens every partition this shard owns (recovering their logs).
    pub async fn open_owned_partitions(&self) {
        let metadata = self.metadata();
        for topic in metadata.topics.values() {
            for index in 0..topic.partitions {
                let owned = metadata.owner_of(&topic.name, index, self.count) == self.id;
                if owned && !metadata.is_moving(&topic.name, index) {
                    if let Err(code) = self.partition(&topic.name, index).await {
                        tracing::error!(shard = self.id, topic = %topic.name, partition = index, code, "partition unavailable");
                    }
                }
            }
        }
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
                        if let Err(error) = partition.log.close().await {
                            tracing::warn!(dir = %dir.display(), %error, "closing a deleted partition");
                        }
                    }
                    Err(_) => {
                        tracing::debug!(dir = %dir.display(), "deleted partition still in use; its files go now")
                    }
                }
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), %error, "removing a deleted partition");
                }
            }
        }
        self.publish_partitions();
        self.reopen_reconfigured(&previous, &next).await;
        self.open_owned_partitions().await;
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
        let Ok(_permit) = self.open_lock.acquire_permit(1).await else {
            return;
        };
        for key in changed {
            let Some(partition) = self.partitions.borrow().get(&key).cloned() else {
                continue;
            };
            let mut waited = Duration::ZERO;
            while Rc::strong_count(&partition) > 2 && waited < REOPEN_WAIT_MAX {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                waited += Duration::from_millis(20);
            }
            if Rc::strong_count(&partition) > 2 {
                tracing::warn!(topic = %key.0, partition = key.1, "partition busy; new settings apply at the next restart");
                continue;
            }
            drop(partition);
            let Some(partition) = self.partitions.borrow_mut().remove(&key) else {
                continue;
            };
            if let Ok(partition) = Rc::try_unwrap(partition) {
                if let Err(error) = self.close_partition(partition).await {
                    tracing::error!(topic = %key.0, partition = key.1, %error, "closing for reconfiguration");
                }
            }
        }
    }

    /// Controller only: applies a metadata change, stores it, and installs it
    /// on every shard before returning.
    pub async fn controller_change(
        self: &Rc<Self>,
        change: impl FnOnce(&ClusterMetadata) -> Result<Option<ClusterMetadata>, (i16, String)>,
    ) -> Result<Arc<ClusterMetadata>, (i16, String)> {
        let _permit = self.controller_permit().await.map_err(|_| {
            (
                ResponseError::UnknownServerError.code(),
                "shutting down".to_string(),
            )
        })?;
        let current = self.metadata();
        let Some(next) = change(&current)? else {
            return Ok(current);
        };
        next.store(&self.config.data_dir).map_err(|error| {
            tracing::error!(%error, "cannot store cluster metadata");
            (ResponseError::KafkaStorageError.code(), error.to_string())
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
            .acquire_permit(1)
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
        let started = Instant::now();
        while Rc::strong_count(&partition) > 1 && started.elapsed() < wait_max {
            glommio::timer::sleep(RELEASE_POLL).await;
        }
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
        let clean = match self.close_partition(partition).await {
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
    pub async fn create_topic(
        self: &Rc<Self>,
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicMeta, (i16, String)> {
        let outcome = self
            .invoke_on(0, move |controller| async move {
                let mut created = None;
                let result = controller
                    .controller_change(|current| {
                        let topic = crate::handlers::topics::validate_new_topic(
                            current,
                            &controller.config,
                            &name,
                            partitions,
                            &configs,
                        )?;
                        created = Some(topic.clone());
                        Ok((!validate_only).then(|| current.with_topic(topic)))
                    })
                    .await;
                result.and_then(|_| {
                    created.ok_or((ResponseError::UnknownServerError.code(), String::new()))
                })
            })
            .await;
        outcome.unwrap_or_else(|error| {
            Err((ResponseError::UnknownServerError.code(), error.to_string()))
        })
    }

    /// Closes every partition cleanly (flush, clean-shutdown marker).
    pub async fn close_partitions(&self) {
        let partitions: Vec<_> = self.partitions.borrow_mut().drain().collect();
        self.publish_partitions();
        for ((topic, index), partition) in partitions {
            match Rc::try_unwrap(partition) {
                Ok(partition) => {
                    if let Err(error) = self.close_partition(partition).await {
                        tracing::error!(shard = self.id, topic, partition = index, %error, "unclean close");
                    }
                }
                Err(partition) => {
                    // A request still holds it: make its data durable anyway
                    // (the snapshot waits for that), with its producer state.
                    if let Err(error) =
                        crate::producer_snapshot::write_unless_current(&partition).await
                    {
                        tracing::warn!(shard = self.id, topic, partition = index, %error, "producer-state snapshot at shutdown failed");
                    }
                    if let Err(error) = partition.log.flush().await {
                        tracing::error!(shard = self.id, topic, partition = index, %error, "flush at shutdown failed");
                    }
                }
            }
        }
    }

    /// Closes a partition this shard gives up (shutdown, hand-over,
    /// reconfiguration): first its producer-state snapshot (which waits for
    /// the log to commit everything appended), then the log, cleanly. A
    /// failed snapshot is logged, not fatal: the next open rebuilds from
    /// the log.
    async fn close_partition(&self, partition: Partition) -> kafki_storage::LogResult<()> {
        match crate::producer_snapshot::write_unless_current(&partition).await {
            Ok(Some(offset)) => {
                tracing::debug!(shard = self.id, topic = %partition.topic, partition = partition.index, offset, "producer-state snapshot written at close")
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(shard = self.id, topic = %partition.topic, partition = partition.index, %error, "producer-state snapshot at close failed; the next open rebuilds it from the log")
            }
        }
        partition.log.close().await
    }

    /// The shard's producer-state maintenance, run every
    /// [`crate::producer_snapshot::SNAPSHOT_CHECK_INTERVAL`]: forgets
    /// expired producers when `expire` is set, and writes the snapshots
    /// that are due. Holds one partition at a time, so a hand-over waits
    /// for at most one snapshot write.
    pub async fn maintain_producer_states(&self, expire: bool) {
        let keys: Vec<(String, i32)> = self.partitions.borrow().keys().cloned().collect();
        for key in keys {
            let Some(partition) = self.partitions.borrow().get(&key).cloned() else {
                continue;
            };
            if partition.is_released() || !partition.log.is_healthy() {
                continue;
            }
            if expire {
                let expired = partition.producers.borrow_mut().expire(now_ms());
                if expired > 0 {
                    tracing::info!(shard = self.id, topic = %key.0, partition = key.1, expired, "expired idle producers (producer.id.expiration.ms)");
                }
            }
            if crate::producer_snapshot::is_due(&partition, Instant::now()) {
                if let Err(error) = crate::producer_snapshot::write(&partition).await {
                    tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, %error, "producer-state snapshot failed; retrying at the next check");
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
        let partitions: Vec<Rc<Partition>> = self
            .partitions
            .borrow()
            .values()
            .filter(|partition| partition.log.config().compaction.is_some())
            .cloned()
            .collect();
        for partition in partitions {
            if self.shutting_down.get() {
                return;
            }
            // Each idempotent producer's last batch stays (see `compact_retaining`).
            let retain = partition.producers.borrow().last_batch_offsets();
            match partition
                .log
                .compact_retaining(now_ms, limits, &retain)
                .await
            {
                Ok(report) => self.metrics.record_clean(&report),
                Err(error) => {
                    tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "log cleaning failed")
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Adds what every open log wrote and synced since the last call to the
    /// shard's storage counters (called once a second).
    pub fn report_storage_stats(&self) {
        let partitions: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for partition in partitions {
            self.metrics.add_storage(&partition.take_stats_delta());
        }
    }

    /// Applies retention to every owned partition.
    pub async fn enforce_retention(&self, now_ms: i64) {
        let partitions: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for partition in partitions {
            if let Err(error) = partition.log.enforce_retention(now_ms).await {
                tracing::warn!(topic = %partition.topic, partition = partition.index, %error, "retention failed");
            }
        }
    }
}
