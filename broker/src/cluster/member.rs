//! A shard's side of cluster membership: shard 0 starts the quorum driver
//! and installs each committed image on every shard in order; metadata
//! changes become proposals; every shard asks the write lease before it
//! appends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use glommio::channels::local_channel;
use kafki_net::kafka_protocol::error::ResponseError;

use super::liveness::monotonic_ms;
use super::log_store::{LogFile, Recovered};
use super::quorum::{Quorum, QuorumShared};
use crate::errors::KafkaError;
use crate::metadata::command::Verdict;
use crate::metadata::{ClusterMetadata, MetadataRecord, NodeRegistration, NodeState};
use crate::shard::Shard;

/// How long an admin change waits for the quorum to commit it. Kafka's
/// admin clients wait 30 s (request.timeout.ms) per try, then retry.
const CHANGE_WAIT: Duration = Duration::from_secs(15);
/// Conflicting changes (another node's change applied first) are validated
/// and proposed again this many times.
const CHANGE_ATTEMPTS: usize = 16;
/// How long a committed change waits to be installed on every shard here.
const INSTALL_WAIT: Duration = Duration::from_secs(5);

/// What the main thread recovered from the metadata log, for shard 0.
pub struct OpenedLog {
    pub file: LogFile,
    pub recovered: Recovered,
}

impl Shard {
    /// Returns once this process's registration is in this shard's image
    /// (or the node is stopping). Until then the image is what the local
    /// metadata log held at start, possibly far behind the quorum: a node
    /// restarted after being fenced would name itself the leader of
    /// partitions that moved while it was down, and list brokers without
    /// itself, and a client caching that answer is stuck with it. Kafka's
    /// brokers likewise open their listeners only once caught up.
    pub async fn wait_until_registered(&self, stop: &std::sync::atomic::AtomicBool) {
        const NOTE_EVERY: Duration = Duration::from_secs(10);
        let started = std::time::Instant::now();
        let mut next_note = NOTE_EVERY;
        loop {
            let epoch = self
                .shared
                .cluster
                .get()
                .and_then(|quorum| quorum.status.lock().ok().and_then(|s| s.node_epoch));
            if epoch.is_some_and(|epoch| self.metadata().log_offset >= epoch)
                || stop.load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            if started.elapsed() >= next_note {
                tracing::info!(
                    shard = self.id,
                    waited_s = started.elapsed().as_secs(),
                    "not registered with the cluster yet (no quorum reachable?): Kafka connections wait"
                );
                next_note += NOTE_EVERY;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Shard 0 of a cluster member: starts the metadata quorum. Images it
    /// applies are installed on every shard, newest last.
    pub fn start_quorum(self: &Rc<Self>, opened: OpenedLog) -> anyhow::Result<()> {
        let Some(cluster) = self.config.cluster.clone() else {
            return Ok(());
        };
        let shared = Arc::new(QuorumShared::default());
        let _ = self.shared.cluster.set(shared.clone());
        let registration = NodeRegistration {
            id: self.config.node_id,
            epoch: 0,
            host: self.config.advertise_host.clone(),
            port: self.config.advertise_port,
            cluster_listen: cluster.advertised.clone(),
            rack: cluster.rack.clone(),
            shards: self.count,
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0,
            state: NodeState::Alive,
        };
        // The newest image waiting to be installed, and a wake-up for the
        // installer (one pending wake-up is enough: it installs the newest).
        let latest: Rc<RefCell<Option<Arc<ClusterMetadata>>>> = Rc::new(RefCell::new(None));
        let (wake, woken) = local_channel::new_bounded::<()>(1);
        let pending = latest.clone();
        let on_image = Box::new(move |image: Arc<ClusterMetadata>| {
            pending.replace(Some(image));
            let _ = wake.try_send(());
        });
        let quorum = Quorum::start(
            self.config.node_id,
            cluster,
            registration,
            opened.file,
            opened.recovered,
            shared,
            on_image,
        )?;
        let router = Rc::downgrade(self);
        quorum.set_replica_frames(Box::new(move |frame| {
            if let Some(shard) = router.upgrade() {
                glommio::spawn_local(crate::replication::links::route_inbound(shard, frame))
                    .detach();
            }
        }));
        self.quorum.replace(Some(quorum));
        let shard = self.clone();
        glommio::spawn_local(async move {
            let mut woken = woken.stream();
            while woken.next().await.is_some() {
                let Some(image) = latest.borrow_mut().take() else {
                    continue;
                };
                let offset = image.log_offset;
                shard.broadcast_metadata(image).await;
                shard.installed_offset.set(offset);
            }
        })
        .detach();
        Ok(())
    }

    pub fn quorum(&self) -> Option<Rc<Quorum>> {
        self.quorum.borrow().clone()
    }

    /// Whether this node may append to the partitions it leads now: always
    /// on a single node; in a cluster, while its write lease holds.
    pub fn may_write(&self) -> bool {
        if self.config.cluster.is_none() {
            return true;
        }
        let session_ms = self
            .config
            .cluster
            .as_ref()
            .map(|cluster| cluster.session_timeout.as_millis() as u64)
            .unwrap_or(0);
        self.shared
            .cluster
            .get()
            .is_some_and(|shared| shared.lease.may_write(monotonic_ms(), session_ms))
    }

    /// [`Shard::controller_change`] on a cluster member: the records are
    /// validated against the newest image, proposed with its offset, and
    /// validated again if another change committed first (or a partition
    /// change among them turned out stale). Each proposal waits up to
    /// [`CHANGE_WAIT`], and none past `deadline`.
    pub(crate) async fn cluster_change(
        self: &Rc<Self>,
        quorum: &Rc<Quorum>,
        change: &mut dyn FnMut(&ClusterMetadata) -> Result<Vec<MetadataRecord>, KafkaError>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Arc<ClusterMetadata>, KafkaError> {
        for _ in 0..CHANGE_ATTEMPTS {
            let current = quorum.image();
            let records = change(&current)?;
            if records.is_empty() {
                return Ok(current);
            }
            let wait = deadline.map_or(CHANGE_WAIT, |deadline| {
                deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .min(CHANGE_WAIT)
            });
            if wait.is_zero() {
                return Err(KafkaError::new(
                    ResponseError::RequestTimedOut,
                    "the request's timeout passed before the change committed".to_string(),
                ));
            }
            match quorum
                .propose(records, Some(current.log_offset), wait)
                .await
            {
                Ok((Verdict::Applied, offset)) => {
                    self.wait_installed(offset).await;
                    return Ok(self.metadata());
                }
                Ok((Verdict::Conflict, _)) => continue,
                // Validated at the offset it applied at, a partition change
                // is not stale; decided again all the same should it be.
                Ok((Verdict::Refused(refusal), _)) if refusal.is_stale() => continue,
                // Only partition changes are refused at apply time: a new
                // topic's first states, an election that broke a rule.
                Ok((Verdict::Refused(refusal), _)) => {
                    return Err(KafkaError::new(
                        ResponseError::InvalidRequest,
                        format!("partition change refused: {refusal:?}"),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "metadata change not committed");
                    return Err(KafkaError::new(
                        ResponseError::RequestTimedOut,
                        error.to_string(),
                    ));
                }
            }
        }
        Err(KafkaError::new(
            ResponseError::RequestTimedOut,
            "the metadata changed under this request too many times; retry".to_string(),
        ))
    }

    /// Waits (bounded) until every shard of this node has the image at
    /// `offset` or later, so the request's answer and the client's next
    /// request see the change.
    async fn wait_installed(&self, offset: u64) {
        let started = std::time::Instant::now();
        while self.installed_offset.get() < offset && started.elapsed() < INSTALL_WAIT {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Opens the metadata log of a cluster member (main thread, before the
/// shards start): a damaged snapshot stops the start with its reason; a torn
/// or damaged log tail is cut off and logged.
pub fn open_log(data_dir: &std::path::Path) -> anyhow::Result<OpenedLog> {
    let (file, recovered) = LogFile::open(&data_dir.join(super::quorum::LOG_DIR))?;
    Ok(OpenedLog { file, recovered })
}
