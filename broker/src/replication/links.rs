//! The replication driver's per-shard half: what a shard sends to other
//! nodes and what it receives from them for the partitions it owns.
//!
//! - **Out**: every shard of a member has its own outgoing connection per
//!   peer node ([`Transport`], the cluster transport's framing). Fetches and
//!   answers queued while a shard runs are sent together when it yields,
//!   one `ReplicaFetch` and one `ReplicaFetchAnswer` frame per peer
//!   ([`super::wire`]): a node with many partitions on a peer sends one
//!   frame a round, not one per partition.
//! - **In**: a node's cluster listener runs on shard 0 (with the metadata
//!   quorum). It decodes replication frames there and hands each
//!   partition's part to the shard that owns it ([`route_inbound`]).
//! - **Time**: one ticker per shard ticks every replicated partition it
//!   owns ([`run_ticker`]).
//! - **ISR changes** go to the quorum on shard 0 as `AlterPartition`.
//! - **Transaction markers** for partitions another node leads
//!   ([`crate::txn::markers`]): a `TxnMarkers` frame to that node, whose
//!   shard 0 writes them where they are owned and answers with a
//!   `TxnMarkersAnswer` routed back to the asking shard.
//! - **Transaction verification** (KIP-890, [`crate::txn::verification`]):
//!   a `TxnVerify` frame to the node coordinating the transaction, whose
//!   shard 0 answers it with the AddPartitionsToTxn handler and sends a
//!   `TxnVerifyAnswer` routed back to the asking shard.
//! - **Repairs** of damaged batches ([`super::repair`]): the ticker starts
//!   them; their requests and answers travel as their own frames, one
//!   partition each (rare).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;

use super::driver::{ReplicaOutlet, ThrottleSide};
use super::messages::{FetchBody, FetchRefusal, FetchResponse, IsrProposal};
use super::wire::{
    decode_repair_answer, decode_repair_request, decode_replica_fetch, decode_replica_fetch_answer,
    decode_spliced_answer, encode_repair_answer_header, encode_repair_request,
    encode_replica_fetch, encode_replica_fetch_answer, encode_spliced_answer, PartitionAnswer,
    PartitionFetch, RepairAnswer, RepairRequest, ReplicaFetch, ReplicaFetchAnswer,
    ReplicaPartition, WireLimits,
};
use super::NodeId;
use crate::cluster::liveness::monotonic_ms;
use crate::cluster::transport::{FrameKind, Inbound, Transport};
use crate::metadata::command::Verdict;
use crate::metadata::{ClusterMetadata, MetadataRecord};
use crate::metrics::FetchPath;
use crate::shard::Shard;
use crate::txn::marker_frames::{
    decode_answer as decode_markers_answer, decode_request as decode_markers_request,
    encode_answer as encode_markers_answer, encode_request as encode_markers_request,
    MarkerPartition, MarkersAnswer, MarkersRequest,
};
use crate::txn::markers::MarkerWrite;
use crate::txn::verify_frames::{
    decode_answer as decode_verify_answer, decode_request as decode_verify_request,
    encode_answer as encode_verify_answer, encode_request as encode_verify_request, VerifyAnswer,
    VerifyRequest, ADD_PARTITIONS_VERSION,
};
use crate::txn::TopicPartition;
use crate::zerocopy::WirePart;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

/// How much longer than a marker's own commit wait a forwarded write is
/// waited for (the frames' round trip).
const MARKER_ANSWER_SLACK: Duration = Duration::from_secs(5);

/// How often each shard ticks its replicated partitions (their timers are
/// hundreds of milliseconds and up).
pub const TICK: Duration = Duration::from_millis(50);
/// Record bytes a follower asks for in one frame.
const FETCH_BYTES_MAX: u32 = 16 << 20;
/// How long an ISR proposal waits for the quorum.
const PROPOSE_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Pending {
    fetches: Vec<PartitionFetch>,
    answers: Vec<PartitionAnswer<WirePart>>,
}

/// One shard's replication traffic to other nodes.
pub struct ReplicaLinks {
    me: NodeId,
    shard: Weak<Shard>,
    transport: Rc<Transport>,
    pending: RefCell<HashMap<NodeId, Pending>>,
    flush_scheduled: Cell<bool>,
    request_id: Cell<u64>,
    /// The newest image (throttled replicas, this node's throttle rate).
    image: RefCell<Arc<ClusterMetadata>>,
    /// This shard's share of `leader.replication.throttled.rate` and of
    /// `follower.replication.throttled.rate`.
    leader_throttle: RefCell<TokenBucket>,
    follower_throttle: RefCell<TokenBucket>,
    /// Per damaged partition: whether a repair runs, and when the next may.
    repairs: RefCell<HashMap<ReplicaPartition, RepairSlot>>,
    /// Repair requests sent, by request id: where the copy goes.
    asked_repairs: RefCell<HashMap<u64, oneshot::Sender<Option<Bytes>>>>,
    /// Marker writes forwarded to other nodes, by request id.
    asked_markers: RefCell<HashMap<u64, oneshot::Sender<MarkersAnswer>>>,
    /// Transaction verifications asked of other nodes, by request id.
    asked_verifications: RefCell<HashMap<u64, oneshot::Sender<AddPartitionsToTxnResponse>>>,
}

#[derive(Debug, Default)]
struct RepairSlot {
    running: bool,
    next_at_ms: u64,
}

/// This shard's share of one of the node's replication throttle rates:
/// record bytes sent to (or fetched by) throttled replicas are charged
/// here, and the next answer (or fetch) waits while the bucket is in debt.
#[derive(Debug)]
struct TokenBucket {
    /// Bytes per millisecond; `None`: unthrottled.
    rate: Option<f64>,
    tokens: f64,
    updated: std::time::Instant,
}

impl TokenBucket {
    fn unthrottled() -> Self {
        Self {
            rate: None,
            tokens: 0.0,
            updated: std::time::Instant::now(),
        }
    }

    /// A new rate in bytes per millisecond (`None`: unthrottled).
    fn set_rate(&mut self, rate: Option<f64>, me: NodeId, setting: &str) {
        self.refill();
        if self.rate != rate {
            tracing::info!(
                node = me,
                setting,
                bytes_per_second_per_shard = rate.map(|r| (r * 1000.0) as u64),
                "replication throttle"
            );
            self.rate = rate;
            self.tokens = self.tokens.min(rate.map_or(0.0, |r| r * 1000.0));
        }
    }

    fn refill(&mut self) {
        let now = std::time::Instant::now();
        if let Some(rate) = self.rate {
            let elapsed = now.duration_since(self.updated).as_secs_f64() * 1000.0;
            // At most one second's worth saved up.
            self.tokens = (self.tokens + elapsed * rate).min(rate * 1000.0);
        }
        self.updated = now;
    }
}

/// Whether `partition`'s replica on `node` is listed in a
/// `*.replication.throttled.replicas` value (`*` or `partition:node,...`).
/// As in Kafka, a leader throttles a partition when *it* is listed in
/// `leader.replication.throttled.replicas`, and only toward followers
/// outside the ISR; a follower when it is listed in
/// `follower.replication.throttled.replicas` and outside the ISR (the
/// driver checks the ISR).
pub fn throttled_replica(list: &str, partition: i32, node: NodeId) -> bool {
    let list = list.trim();
    list == "*"
        || list.split(',').any(|entry| {
            entry.trim().split_once(':').is_some_and(|(p, n)| {
                p.trim().parse() == Ok(partition) && n.trim().parse() == Ok(node)
            })
        })
}

impl ReplicaLinks {
    pub fn new(shard: &Rc<Shard>, me: NodeId, configured: HashMap<NodeId, String>) -> Rc<Self> {
        Rc::new(Self {
            me,
            shard: Rc::downgrade(shard),
            transport: Transport::new(me, configured),
            pending: RefCell::new(HashMap::new()),
            flush_scheduled: Cell::new(false),
            request_id: Cell::new(0),
            image: RefCell::new(shard.metadata()),
            leader_throttle: RefCell::new(TokenBucket::unthrottled()),
            follower_throttle: RefCell::new(TokenBucket::unthrottled()),
            repairs: RefCell::new(HashMap::new()),
            asked_repairs: RefCell::new(HashMap::new()),
            asked_markers: RefCell::new(HashMap::new()),
            asked_verifications: RefCell::new(HashMap::new()),
        })
    }

    /// Whether a repair of `partition` may start now (then it is marked
    /// running until [`ReplicaLinks::finish_repair`]).
    pub fn claim_repair(&self, partition: ReplicaPartition, now_ms: u64) -> bool {
        let mut repairs = self.repairs.borrow_mut();
        let slot = repairs.entry(partition).or_default();
        if slot.running || now_ms < slot.next_at_ms {
            return false;
        }
        slot.running = true;
        true
    }

    pub fn finish_repair(&self, partition: ReplicaPartition, repaired: bool, now_ms: u64) {
        let mut repairs = self.repairs.borrow_mut();
        if repaired {
            repairs.remove(&partition);
        } else if let Some(slot) = repairs.get_mut(&partition) {
            slot.running = false;
            slot.next_at_ms = now_ms + super::repair::RETRY.as_millis() as u64;
        }
    }

    /// Asks `peer` for its copy of a batch; `None` if it has none or does
    /// not answer within `wait`.
    pub async fn ask_repair(
        &self,
        peer: NodeId,
        mut request: RepairRequest,
        wait: Duration,
    ) -> Option<Bytes> {
        let request_id = self.request_id.get().wrapping_add(1);
        self.request_id.set(request_id);
        request.request_id = request_id;
        let (sender, receiver) = oneshot::channel();
        self.asked_repairs.borrow_mut().insert(request_id, sender);
        self.transport.send(
            peer,
            FrameKind::ReplicaRepair,
            &encode_repair_request(&request),
        );
        let answered =
            glommio::timer::timeout(wait, async { Ok(receiver.await.ok().flatten()) }).await;
        self.asked_repairs.borrow_mut().remove(&request_id);
        answered.ok().flatten()
    }

    /// Asks `node` to write `write`'s marker to `partitions` (which it
    /// leads) and waits for its answer: one code per partition, `None`
    /// when it did not answer in time. A topic this node does not know
    /// answers `UNKNOWN_TOPIC_OR_PARTITION` without asking.
    pub async fn ask_markers(
        &self,
        node: NodeId,
        write: MarkerWrite,
        partitions: Vec<TopicPartition>,
    ) -> Option<Vec<(TopicPartition, i16)>> {
        let shard = self.shard.upgrade()?;
        let image = self.image.borrow().clone();
        let mut answers = Vec::new();
        let mut named: HashMap<MarkerPartition, TopicPartition> = HashMap::new();
        for partition in partitions {
            match image.topic(&partition.topic) {
                Some(meta) => {
                    let id = MarkerPartition {
                        topic_id: meta.id,
                        partition_index: partition.partition,
                    };
                    named.insert(id, partition);
                }
                None => answers.push((partition, ResponseError::UnknownTopicOrPartition.code())),
            }
        }
        if named.is_empty() {
            return Some(answers);
        }
        let request_id = self.request_id.get().wrapping_add(1);
        self.request_id.set(request_id);
        let request = MarkersRequest {
            request_id,
            asking_shard: shard.id as u32,
            producer_id: write.producer_id,
            producer_epoch: write.producer_epoch,
            marker: write.marker,
            partitions: named.keys().copied().collect(),
        };
        let (sender, receiver) = oneshot::channel();
        self.asked_markers.borrow_mut().insert(request_id, sender);
        self.transport.send(
            node,
            FrameKind::TxnMarkers,
            &encode_markers_request(&request),
        );
        let wait = crate::partition::marker::MARKER_COMMIT_WAIT + MARKER_ANSWER_SLACK;
        let answered = glommio::timer::timeout(wait, async { Ok(receiver.await.ok()) }).await;
        self.asked_markers.borrow_mut().remove(&request_id);
        let answer = answered.ok().flatten()?;
        for (id, code) in answer.partitions {
            if let Some(partition) = named.remove(&id) {
                answers.push((partition, code));
            }
        }
        // Partitions the answer left out: retriable.
        answers.extend(
            named
                .into_values()
                .map(|partition| (partition, ResponseError::NotLeaderOrFollower.code())),
        );
        Some(answers)
    }

    /// Asks `node` (the transaction coordinator) the verify-only
    /// AddPartitionsToTxn `request` and waits for its answer; `None` when
    /// it cannot be sent or is not answered within
    /// [`crate::txn::verification::REMOTE_ANSWER_WAIT`].
    pub async fn ask_verification(
        &self,
        node: NodeId,
        request: AddPartitionsToTxnRequest,
    ) -> Option<AddPartitionsToTxnResponse> {
        let shard = self.shard.upgrade()?;
        let request_id = self.request_id.get().wrapping_add(1);
        self.request_id.set(request_id);
        let frame = match encode_verify_request(&VerifyRequest {
            request_id,
            asking_shard: shard.id as u32,
            body: request,
        }) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(node, %error, "cannot encode a transaction verification");
                return None;
            }
        };
        let (sender, receiver) = oneshot::channel();
        self.asked_verifications
            .borrow_mut()
            .insert(request_id, sender);
        if !self.transport.send(node, FrameKind::TxnVerify, &frame) {
            self.asked_verifications.borrow_mut().remove(&request_id);
            return None;
        }
        let answered =
            glommio::timer::timeout(crate::txn::verification::REMOTE_ANSWER_WAIT, async {
                Ok(receiver.await.ok())
            })
            .await;
        self.asked_verifications.borrow_mut().remove(&request_id);
        answered.ok().flatten()
    }

    /// Another node's answer to a transaction verification.
    fn deliver_verification(&self, answer: VerifyAnswer) {
        if let Some(sender) = self
            .asked_verifications
            .borrow_mut()
            .remove(&answer.request_id)
        {
            let _ = sender.send(answer.body);
        }
    }

    /// Another node's answer to a forwarded marker write.
    fn deliver_markers(&self, answer: MarkersAnswer) {
        if let Some(sender) = self.asked_markers.borrow_mut().remove(&answer.request_id) {
            let _ = sender.send(answer);
        }
    }

    /// A copy (or none) from another replica, to the repair that asked.
    fn deliver_repair(&self, answer: RepairAnswer) {
        if let Some(sender) = self.asked_repairs.borrow_mut().remove(&answer.request_id) {
            let _ = sender.send(answer.batch);
        }
    }

    fn send_repair_answer(&self, to: NodeId, answer: &RepairAnswer) {
        let mut parts = vec![encode_repair_answer_header(answer)];
        if let Some(batch) = &answer.batch {
            parts.push(batch.clone());
        }
        self.transport
            .send_parts(to, FrameKind::ReplicaRepairAnswer, parts);
    }

    /// A new image: the cluster addresses of registered nodes (a configured
    /// voter address is kept: it may be a proxy only this node knows) and
    /// this node's replication throttle.
    pub fn on_image(&self, image: &Arc<ClusterMetadata>, shards: usize) {
        for node in image.nodes.values() {
            self.transport
                .learn_address(node.id, &node.cluster_listen, false);
        }
        for (bucket, setting) in [
            (&self.leader_throttle, "leader.replication.throttled.rate"),
            (
                &self.follower_throttle,
                "follower.replication.throttled.rate",
            ),
        ] {
            let rate = image
                .dynamic_broker_config(self.me, setting)
                .and_then(|value| value.trim().parse::<u64>().ok())
                .filter(|rate| *rate < i64::MAX as u64)
                .map(|rate| rate as f64 / 1000.0 / shards.max(1) as f64);
            bucket.borrow_mut().set_rate(rate, self.me, setting);
        }
        self.image.replace(image.clone());
    }

    /// Sends an answer as one frame: spliced when some of its record bytes
    /// are segment file regions (they go file → socket, outside the frame
    /// CRC), else with every byte under the frame CRC.
    fn send_answer(
        &self,
        peer: NodeId,
        answer: &ReplicaFetchAnswer<WirePart>,
        limits: &WireLimits,
    ) {
        if answer.has_file_regions() {
            match encode_spliced_answer(answer, limits) {
                Ok(body) => {
                    self.transport.send_spliced(
                        peer,
                        FrameKind::ReplicaFetchAnswerSpliced,
                        body.covered,
                        body.records,
                    );
                }
                Err(error) => tracing::warn!(peer, %error, "cannot encode a replica answer"),
            }
            return;
        }
        match encode_replica_fetch_answer(answer, limits) {
            Ok(body) => {
                let parts = body
                    .segments
                    .into_iter()
                    .filter_map(|segment| match segment {
                        WirePart::Bytes(bytes) => Some(bytes),
                        // Not in an answer without file regions.
                        WirePart::File { .. } => None,
                    })
                    .collect();
                self.transport
                    .send_parts(peer, FrameKind::ReplicaFetchAnswer, parts);
            }
            Err(error) => tracing::warn!(peer, %error, "cannot encode a replica answer"),
        }
    }

    fn schedule_flush(self: &Rc<Self>) {
        if self.flush_scheduled.replace(true) {
            return;
        }
        let links = self.clone();
        glommio::spawn_local(async move {
            // Everything queued in this turn of the shard goes in one frame.
            crate::shard::yield_once().await;
            links.flush_scheduled.set(false);
            links.flush();
        })
        .detach();
    }

    fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let limits = WireLimits::DEFAULT;
        for (peer, Pending { fetches, answers }) in pending {
            if !fetches.is_empty() {
                let request_id = self.request_id.get().wrapping_add(1);
                self.request_id.set(request_id);
                let fetch = ReplicaFetch {
                    fetching_node: self.me,
                    request_id,
                    max_bytes: FETCH_BYTES_MAX,
                    max_wait_ms: 500,
                    partitions: fetches,
                };
                match encode_replica_fetch(&fetch, &limits) {
                    Ok(body) => {
                        self.transport.send(peer, FrameKind::ReplicaFetch, &body);
                    }
                    Err(error) => tracing::warn!(peer, %error, "cannot encode a replica fetch"),
                }
            }
            if !answers.is_empty() {
                let answer = ReplicaFetchAnswer {
                    request_id: 0,
                    partitions: answers,
                };
                self.send_answer(peer, &answer, &limits);
            }
        }
    }
}

impl ReplicaOutlet for Rc<ReplicaLinks> {
    fn throttle_delay(&self, side: ThrottleSide, topic: &str, partition: i32) -> Option<Duration> {
        let (mut bucket, replicas) = match side {
            ThrottleSide::Leader => (
                self.leader_throttle.borrow_mut(),
                "leader.replication.throttled.replicas",
            ),
            ThrottleSide::Follower => (
                self.follower_throttle.borrow_mut(),
                "follower.replication.throttled.replicas",
            ),
        };
        let rate = bucket.rate?;
        let image = self.image.borrow();
        let listed = image
            .topic(topic)
            .and_then(|meta| meta.configs.get(replicas))
            .is_some_and(|list| throttled_replica(list, partition, self.me));
        if !listed {
            return None;
        }
        bucket.refill();
        if bucket.tokens >= 0.0 || rate <= 0.0 {
            return Some(Duration::ZERO);
        }
        Some(Duration::from_secs_f64(
            (-bucket.tokens / rate / 1000.0).min(1.0),
        ))
    }

    fn throttle_charge(&self, side: ThrottleSide, bytes: usize) {
        let mut bucket = match side {
            ThrottleSide::Leader => self.leader_throttle.borrow_mut(),
            ThrottleSide::Follower => self.follower_throttle.borrow_mut(),
        };
        if bucket.rate.is_some() {
            bucket.refill();
            bucket.tokens -= bytes as f64;
        }
    }

    fn queue_fetch(&self, to: NodeId, fetch: PartitionFetch) {
        self.pending
            .borrow_mut()
            .entry(to)
            .or_default()
            .fetches
            .push(fetch);
        self.schedule_flush();
    }

    fn count_answer_bytes(&self, path: FetchPath, bytes: u64) {
        if let Some(shard) = self.shard.upgrade() {
            shard.metrics.add_replica_answer_bytes(path, bytes);
        }
    }

    fn queue_answer(&self, to: NodeId, answer: PartitionAnswer<WirePart>) {
        self.pending
            .borrow_mut()
            .entry(to)
            .or_default()
            .answers
            .push(answer);
        self.schedule_flush();
    }

    fn propose_isr(
        &self,
        topic: &str,
        partition: i32,
        proposal: IsrProposal,
        on_refused: Box<dyn FnOnce()>,
    ) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let record = MetadataRecord::AlterPartition {
            topic: topic.to_string(),
            partition,
            proposal,
        };
        glommio::spawn_local(async move {
            let verdict = shard
                .invoke_on(0, move |shard| async move {
                    let quorum = shard.quorum()?;
                    match quorum.propose(vec![record], None, PROPOSE_WAIT).await {
                        Ok((verdict, _)) => Some(verdict),
                        Err(error) => {
                            tracing::debug!(%error, "ISR proposal not committed; the leader proposes again");
                            None
                        }
                    }
                })
                .await;
            if let Ok(Some(Verdict::Refused(refusal))) = verdict {
                tracing::info!(?refusal, "ISR proposal refused");
                on_refused();
            }
        })
        .detach();
    }
}

/// Shard 0: a replication frame from node `frame.from`, decoded and handed
/// to the shards owning its partitions. A frame that does not decode is
/// dropped with a log line (the sender retries on its timeout).
pub async fn route_inbound(shard: Rc<Shard>, frame: Inbound) {
    let limits = WireLimits::DEFAULT;
    let image = shard.metadata();
    match frame.kind {
        FrameKind::ReplicaFetch => {
            let fetch = match decode_replica_fetch(&frame.body, &limits) {
                Ok(fetch) if fetch.fetching_node == frame.from => fetch,
                Ok(fetch) => {
                    tracing::warn!(
                        connection = frame.from,
                        claimed = fetch.fetching_node,
                        "dropping a replica fetch whose node is not the connection's"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable replica fetch");
                    return;
                }
            };
            let by_shard = by_owner(&image, &shard, fetch.partitions, |part| &part.partition);
            for (owner, parts) in by_shard {
                let from = frame.from;
                let _ = shard
                    .invoke_on(owner, move |shard| async move {
                        shard.on_replica_fetches(from, parts);
                    })
                    .await;
            }
        }
        FrameKind::ReplicaFetchAnswer | FrameKind::ReplicaFetchAnswerSpliced => {
            let body = Bytes::from(frame.body);
            let decoded = if frame.kind == FrameKind::ReplicaFetchAnswerSpliced {
                decode_spliced_answer(&body, &limits)
            } else {
                decode_replica_fetch_answer(&body, &limits)
            };
            let answer = match decoded {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable replica answer");
                    return;
                }
            };
            let by_shard = by_owner(&image, &shard, answer.partitions, |part| &part.partition);
            for (owner, parts) in by_shard {
                let from = frame.from;
                let _ = shard
                    .invoke_on(owner, move |shard| async move {
                        shard.on_replica_answers(from, parts);
                    })
                    .await;
            }
        }
        FrameKind::ReplicaRepair => {
            let request = match decode_repair_request(&frame.body) {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable repair request");
                    return;
                }
            };
            let owner = owner_of(&image, &shard, &request.partition);
            let from = frame.from;
            let _ = shard
                .invoke_on(owner, move |shard| async move {
                    let answer = super::repair::answer(&shard, request).await;
                    if let Some(links) = shard.replica_links() {
                        links.send_repair_answer(from, &answer);
                    }
                })
                .await;
        }
        FrameKind::ReplicaRepairAnswer => {
            let body = Bytes::from(frame.body);
            let answer = match decode_repair_answer(&body, &limits) {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable repair answer");
                    return;
                }
            };
            let owner = owner_of(&image, &shard, &answer.partition);
            let _ = shard
                .invoke_on(owner, move |shard| async move {
                    if let Some(links) = shard.replica_links() {
                        links.deliver_repair(answer);
                    }
                })
                .await;
        }
        FrameKind::TxnMarkers => {
            let request = match decode_markers_request(&frame.body) {
                Ok(request) => request,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable markers request");
                    return;
                }
            };
            let answer = crate::txn::markers::answer_forwarded(&shard, &image, request).await;
            if let Some(links) = shard.replica_links() {
                links.transport.send(
                    frame.from,
                    FrameKind::TxnMarkersAnswer,
                    &encode_markers_answer(&answer),
                );
            }
        }
        FrameKind::TxnMarkersAnswer => {
            let answer = match decode_markers_answer(&frame.body) {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable markers answer");
                    return;
                }
            };
            let asking = answer.asking_shard;
            to_asking_shard(&shard, frame.from, asking, "markers", move |links| {
                links.deliver_markers(answer)
            })
            .await;
        }
        FrameKind::TxnVerify => answer_verification(&shard, frame).await,
        FrameKind::TxnVerifyAnswer => {
            let answer = match decode_verify_answer(&frame.body) {
                Ok(answer) => answer,
                Err(error) => {
                    tracing::warn!(from = frame.from, %error, "dropping an undecodable verification answer");
                    return;
                }
            };
            let asking = answer.asking_shard;
            to_asking_shard(&shard, frame.from, asking, "verification", move |links| {
                links.deliver_verification(answer)
            })
            .await;
        }
        _ => {}
    }
}

/// Shard 0, for another node's partition leader: answers its verify-only
/// AddPartitionsToTxn as a Kafka coordinator would (the handler routes it
/// to the coordinator's shard). Only verification travels this way: a
/// request that would add partitions is answered INVALID_REQUEST.
/// Hands an answer that arrived on shard 0 to the shard that asked
/// (`asking`, named by the answer itself: checked, a peer sent it).
async fn to_asking_shard(
    shard: &Rc<Shard>,
    from: NodeId,
    asking: u32,
    what: &'static str,
    deliver: impl FnOnce(&ReplicaLinks) + Send + 'static,
) {
    let asking = asking as usize;
    if asking >= shard.count {
        tracing::warn!(
            from,
            asking,
            what,
            "dropping an answer for a shard this node does not have"
        );
        return;
    }
    let _ = shard
        .invoke_on(asking, move |shard| async move {
            if let Some(links) = shard.replica_links() {
                deliver(&links);
            }
        })
        .await;
}

async fn answer_verification(shard: &Rc<Shard>, frame: Inbound) {
    let request = match decode_verify_request(&frame.body) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(from = frame.from, %error, "dropping an undecodable verification");
            return;
        }
    };
    let verify_only = request
        .body
        .transactions
        .iter()
        .all(|transaction| transaction.verify_only);
    let body = if verify_only {
        crate::handlers::txn::add_partitions_to_txn(shard, request.body, ADD_PARTITIONS_VERSION)
            .await
    } else {
        tracing::warn!(
            from = frame.from,
            "refusing a node-link AddPartitionsToTxn that is not verify-only"
        );
        AddPartitionsToTxnResponse::default().with_error_code(ResponseError::InvalidRequest.code())
    };
    let answer = VerifyAnswer {
        request_id: request.request_id,
        asking_shard: request.asking_shard,
        body,
    };
    match encode_verify_answer(&answer) {
        Ok(bytes) => {
            if let Some(links) = shard.replica_links() {
                links
                    .transport
                    .send(frame.from, FrameKind::TxnVerifyAnswer, &bytes);
            }
        }
        Err(error) => {
            tracing::warn!(from = frame.from, %error, "cannot encode a verification answer")
        }
    }
}

/// `parts` grouped by the shard owning each one's partition here.
fn by_owner<T>(
    image: &ClusterMetadata,
    shard: &Shard,
    parts: Vec<T>,
    partition: impl Fn(&T) -> &super::wire::ReplicaPartition,
) -> HashMap<usize, Vec<T>> {
    let mut by_shard: HashMap<usize, Vec<T>> = HashMap::new();
    for part in parts {
        let owner = owner_of(image, shard, partition(&part));
        by_shard.entry(owner).or_default().push(part);
    }
    by_shard
}

fn owner_of(
    image: &ClusterMetadata,
    shard: &Shard,
    partition: &super::wire::ReplicaPartition,
) -> usize {
    image.topic_by_id(partition.topic_id).map_or(0, |topic| {
        image.owner_of(&topic.name, partition.partition_index, shard.count)
    })
}

impl Shard {
    /// Fetches from node `from` for partitions this shard owns.
    pub fn on_replica_fetches(&self, from: NodeId, fetches: Vec<PartitionFetch>) {
        let now = monotonic_ms();
        for part in fetches {
            match self.replicated_by_id(&part.partition) {
                Some(replicated) => replicated.on_follower_fetch(part.request, now),
                None => {
                    // Not a replica here (yet): say so, so the follower backs
                    // off briefly instead of waiting out its fetch timeout.
                    let Some(links) = self.replica_links() else {
                        continue;
                    };
                    let response = FetchResponse {
                        fetch_id: part.request.fetch_id,
                        leader: self.config.node_id,
                        leader_epoch: part.request.leader_epoch,
                        fetch_offset: part.request.fetch_offset,
                        last_fetched_epoch: part.request.last_fetched_epoch,
                        high_watermark: 0,
                        body: FetchBody::Refused(FetchRefusal::NotLeader),
                    };
                    links.queue_answer(
                        from,
                        PartitionAnswer {
                            partition: part.partition,
                            response,
                            leader_log_start: 0,
                            record_batches: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// Answers from node `from` to this shard's followers.
    pub fn on_replica_answers(&self, from: NodeId, answers: Vec<PartitionAnswer>) {
        let now = monotonic_ms();
        for part in answers {
            if part.response.leader != from {
                tracing::debug!(
                    from,
                    leader = part.response.leader,
                    "dropping a replica answer naming another leader"
                );
                continue;
            }
            if let Some(replicated) = self.replicated_by_id(&part.partition) {
                replicated.on_fetch_answer(
                    part.response,
                    part.record_batches,
                    part.leader_log_start,
                    now,
                );
            }
        }
    }
}

/// Ticks every replicated partition of `shard` until it stops, and about
/// once a second starts repairs of damaged ones.
pub async fn run_ticker(shard: Weak<Shard>) {
    const TICKS_PER_REPAIR_LOOK: u32 = 20;
    let mut ticks = 0u32;
    loop {
        glommio::timer::sleep(TICK).await;
        let Some(shard) = shard.upgrade() else {
            return;
        };
        if shard.shutting_down.get() {
            return;
        }
        let now = monotonic_ms();
        for replicated in shard.replicated_partitions() {
            replicated.tick(now);
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(TICKS_PER_REPAIR_LOOK) {
            if let Some(links) = shard.replica_links() {
                super::repair::start_repairs(&shard, &links);
            }
        }
    }
}
