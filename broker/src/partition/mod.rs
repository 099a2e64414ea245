//! The partition layer: what handlers and the group runtime see of a
//! partition this shard leads. [`Partition`] appends (with `acks` and a
//! timeout, [`append`]), reads up to the high watermark, answers offset
//! and timestamp lookups, checks and fences leader epochs ([`epoch`]),
//! writes transaction markers ([`marker`]), and holds its idempotent and
//! transactional producers' state; its log and the files beneath are
//! private to this module. How records become committed is
//! [`replication::Replication`]: today the single node's local commit,
//! later the cluster's replicated partition behind the same calls.
//!
//! A partition lives in its shard's map; requests and maintenance hold it
//! through [`PartitionRef`] handles, whose drop opens the gate a hand-over
//! waits at ([`wait_for_holders`]).

pub mod append;
pub mod epoch;
pub mod marker;
mod ops;
pub mod replication;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::{LogResult, PartitionLog};

use crate::producer::PartitionProducers;
pub use append::{Acks, AppendError, Appended, TxnAdmission};
pub use replication::{CommitStage, Replication};

/// A partition's offsets as clients see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub log_start_offset: u64,
    /// Committed below it; consumers read up to it.
    pub high_watermark: u64,
    /// The next offset to append (Kafka's log end offset).
    pub log_end_offset: u64,
}

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

/// A partition this shard leads: its log, how it commits, its leader
/// epoch, its producers' state, and the gates of a hand-over.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// Reached only through this module: handlers append, read and wait
    /// through the partition, never on the log itself.
    log: PartitionLog,
    replication: Replication,
    /// The epoch this node leads it in; batches appended are stamped with
    /// it, requests naming another are refused ([`epoch`]).
    leader_epoch: Cell<i32>,
    /// Idempotent producers' sequence state and its snapshot bookkeeping.
    producers: PartitionProducers,
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
    /// Its segment files' share of the descriptor budget, given back when
    /// the partition is dropped.
    descriptors: Option<crate::descriptors::DescriptorCharge>,
    /// Tasks waiting for holders to let go ([`wait_for_holders`]), woken
    /// whenever a [`PartitionRef`] is dropped.
    holder_waiters: RefCell<Vec<Waker>>,
    /// When a request last looked it up: a spent descriptor budget closes
    /// the partitions idle longest first.
    last_used: Cell<std::time::Instant>,
}

/// A holder's handle on an open partition: what [`Shard::partition`] and
/// the shard's own maintenance hand out. Dropping one wakes whoever waits
/// for the partition's holders to let go (a hand-over, a reconfiguration),
/// so they wait on a gate instead of polling the reference count.
pub struct PartitionRef(Rc<Partition>);

impl PartitionRef {
    pub fn new(partition: &Rc<Partition>) -> Self {
        Self(partition.clone())
    }
}

impl std::ops::Deref for PartitionRef {
    type Target = Partition;

    fn deref(&self) -> &Partition {
        &self.0
    }
}

impl Clone for PartitionRef {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Drop for PartitionRef {
    fn drop(&mut self) {
        // The count still includes this handle; the woken task looks again
        // once it runs, after this drop has finished.
        let waiters = std::mem::take(&mut *self.0.holder_waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Waits until at most `keep` references to `partition` remain (the map's
/// and the caller's), or `max` passes. Returns whether they did.
pub async fn wait_for_holders(partition: &Rc<Partition>, keep: usize, max: Duration) -> bool {
    let gate = std::future::poll_fn(|context| {
        if Rc::strong_count(partition) <= keep {
            return Poll::Ready(());
        }
        let mut waiters = partition.holder_waiters.borrow_mut();
        if !waiters.iter().any(|known| known.will_wake(context.waker())) {
            waiters.push(context.waker().clone());
        }
        Poll::Pending
    });
    futures::future::select(Box::pin(gate), Box::pin(glommio::timer::sleep(max))).await;
    Rc::strong_count(partition) <= keep
}

impl Partition {
    /// A partition around an opened log and its loaded producer state.
    pub fn new(
        topic: String,
        index: i32,
        log: PartitionLog,
        replication: Replication,
        leader_epoch: i32,
        loaded: crate::producer::snapshot::Loaded,
    ) -> Self {
        Self {
            topic,
            index,
            log,
            replication,
            leader_epoch: Cell::new(leader_epoch),
            producers: PartitionProducers::new(loaded),
            released: Cell::new(false),
            release_waiters: RefCell::new(HashMap::new()),
            next_release_waiter: Cell::new(0),
            moved_in_at: Cell::new(None),
            reported_stats: Cell::new(kafki_storage::LogStats::default()),
            descriptors: None,
            holder_waiters: RefCell::new(Vec::new()),
            last_used: Cell::new(std::time::Instant::now()),
        }
    }

    /// Notes a use (a request looked it up).
    pub fn touch(&self, now: std::time::Instant) {
        self.last_used.set(now);
    }

    /// When it was last used.
    pub fn last_used(&self) -> std::time::Instant {
        self.last_used.get()
    }

    /// Descriptors its segment files are counted for.
    pub fn descriptors_held(&self) -> u64 {
        self.descriptors
            .as_ref()
            .map_or(0, crate::descriptors::DescriptorCharge::amount)
    }

    /// Hands the partition its share of the descriptor budget.
    pub fn with_descriptors(mut self, charge: crate::descriptors::DescriptorCharge) -> Self {
        self.descriptors = Some(charge);
        self
    }

    /// Notes that a hand-over from another shard opened it here now.
    pub fn note_moved_in(&self, at: std::time::Instant) {
        self.moved_in_at.set(Some(at));
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
            fsync_micros: now.fsync_micros.saturating_sub(before.fsync_micros),
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
    pub fn release(&self) {
        self.released.set(true);
        let waiters = std::mem::take(&mut *self.release_waiters.borrow_mut());
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Undoes [`Partition::release`] (an aborted hand-over).
    pub fn unrelease(&self) {
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

    /// The high watermark: the offset below which every record is
    /// committed ([`Replication`]); consumers read up to it.
    pub fn high_watermark(&self) -> u64 {
        self.replication.high_watermark(&self.log.offsets())
    }

    /// The base sequence `producer_id`'s next batch at `epoch` must carry
    /// here (0 for a producer not seen, or at a newer epoch). The group
    /// coordinator stamps it on the transactional offsets batches it
    /// writes for a producer (TxnOffsetCommit).
    pub fn next_sequence_of(&self, producer_id: i64, epoch: i16) -> i32 {
        let states = self.producers.states.borrow();
        match states.get(producer_id) {
            Some(entry) if entry.epoch == epoch => entry
                .batches
                .back()
                .map_or(0, |last| last.last_sequence.checked_add(1).unwrap_or(0)),
            _ => 0,
        }
    }

    /// Its producers as DescribeProducers reports them
    /// ([`crate::producer::active`]).
    pub fn active_producers(&self) -> Vec<crate::producer::ActiveProducer> {
        self.producers.states.borrow().active_producers()
    }

    /// The offsets a fetch or a lookup reports, taken together.
    pub fn offsets(&self) -> PartitionOffsets {
        let offsets = self.log.offsets();
        PartitionOffsets {
            log_start_offset: offsets.log_start_offset,
            high_watermark: self.replication.high_watermark(&offsets),
            log_end_offset: offsets.next_offset,
        }
    }

    /// Waits until the commit stage covers every offset below `end_offset`.
    pub async fn wait_committed(&self, end_offset: u64) -> LogResult<()> {
        self.replication.wait_committed(&self.log, end_offset).await
    }
}
