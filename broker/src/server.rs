//! `kafki serve`: starts one pinned glommio executor (shard) per listed
//! core, joins them in a channel mesh, opens the owned partitions, and
//! accepts Kafka connections on every shard (one `SO_REUSEPORT` listener
//! each). SIGINT/SIGTERM stop accepting, close every log cleanly
//! (producer-state snapshot, flush, clean-shutdown marker) and exit.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;

use crate::config::BrokerConfig;
use crate::metadata::ClusterMetadata;
use crate::reassign::{AssignmentReceiver, AssignmentSender};
use crate::shard::{Shard, ShardTask, SharedState};

/// The admin listener's command queue, taken by whichever executor joins
/// the mesh as shard 0 (the controller); mesh ids are not spawn order.
type ControllerInbox = Arc<std::sync::Mutex<Option<AssignmentReceiver>>>;

/// Capacity of each cross-shard channel (calls queued to one peer).
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How often shards add their logs' write and sync counts to the metrics.
const STORAGE_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Threads per shard for blocking file work (`spawn_blocking`).
const BLOCKING_THREADS: usize = 8;
/// How often shards look for the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Runs the broker until SIGINT/SIGTERM (or `stop` is set).
pub fn run(mut config: BrokerConfig, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let reserve_bytes = config.settings.reserve_bytes;
    crate::disk::warn_if_full(&config.data_dir, reserve_bytes);
    crate::disk::ensure_reserve(&config.data_dir, reserve_bytes);
    let metadata_existed = config
        .data_dir
        .join(crate::metadata::METADATA_FILE)
        .exists();
    let descriptor_limit = crate::descriptors::raise_limit();
    // A cluster member's metadata comes from the quorum's log (shard 0
    // replays it); a single node's from its JSON file.
    let (metadata, opened_log) = if config.cluster.is_some() {
        let opened = crate::cluster::member::open_log(&config.data_dir)?;
        crate::partition_dirs::sweep_marked(&config.data_dir);
        (ClusterMetadata::default(), Some(opened))
    } else {
        let metadata = ClusterMetadata::load_or_create(&config.data_dir)?;
        if metadata_existed {
            crate::partition_dirs::sweep_strays(&config.data_dir, &metadata);
        }
        (metadata, None)
    };
    let opened_log = Arc::new(std::sync::Mutex::new(opened_log));
    config.cluster_id = metadata.cluster_id.clone();
    warn_stale_assignments(&metadata, config.cores.len());
    let config = Arc::new(config);
    let metadata = Arc::new(metadata);
    let mesh: MeshBuilder<ShardTask, _> =
        MeshBuilder::full(config.cores.len(), MESH_CHANNEL_CAPACITY);
    tracing::info!(
        listen = %config.listen,
        advertise = %format!("{}:{}", config.advertise_host, config.advertise_port),
        data_dir = %config.data_dir.display(),
        cores = ?config.cores,
        cluster_id = %config.cluster_id,
        "starting kafki"
    );
    let shared = Arc::new(SharedState::default());
    if crate::txn::runtime::durable_at_commit(&config) {
        let lost = lost_writes(&config.data_dir);
        if !lost.partitions.is_empty() {
            tracing::info!(
                partitions = lost.partitions.len(),
                "unclean stop: partitions written since their last clean close; open transactions holding them are aborted as their coordinators load"
            );
        }
        let _ = shared.lost_writes.set(lost);
    }
    if descriptor_limit > 0 {
        shared.descriptors.set_limit(descriptor_limit);
        check_descriptor_limit(&config, &metadata, descriptor_limit, &shared);
    }
    let (assignments, controller_inbox) = crate::reassign::command_channel();
    let controller_inbox: ControllerInbox = Arc::new(std::sync::Mutex::new(Some(controller_inbox)));
    let admin = start_admin(&config, &shared, assignments)?;
    let mut handles = Vec::with_capacity(config.cores.len());
    for (position, cpu) in config.cores.iter().copied().enumerate() {
        let config = config.clone();
        let shared = shared.clone();
        let metadata = metadata.clone();
        let mesh = mesh.clone();
        let stop = stop.clone();
        let inbox = controller_inbox.clone();
        let opened_log = opened_log.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("kafki-shard-{position}"))
            // Small-file writes and syncs (log checkpoints at close) run
            // here, several at once, so their syncs overlap.
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(BLOCKING_THREADS))
            .spawn(move || async move {
                shard_main(config, metadata, mesh, stop, cpu, shared, inbox, opened_log).await
            })
            .map_err(|error| anyhow::anyhow!("starting the shard on CPU {cpu}: {error}"))?;
        handles.push((cpu, handle));
    }
    let mut failure = None;
    for (cpu, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(cpu, %error, "shard failed");
                stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(error);
            }
            Err(error) => {
                stop.store(true, Ordering::SeqCst);
                failure.get_or_insert(anyhow::anyhow!("shard on CPU {cpu} panicked: {error}"));
            }
        }
    }
    admin.stop();
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("kafki stopped cleanly");
            Ok(())
        }
    }
}

/// The partitions an unclean stop may have cut a transaction's data short
/// in (`transaction.durable.at.commit`), for transactions begun before now.
/// Internal topics are not among them: their writes (transactional offset
/// commits included) are answered only once durable.
fn lost_writes(data_dir: &std::path::Path) -> crate::txn::LostWrites {
    crate::txn::LostWrites {
        partitions: crate::partition_dirs::unclean_partitions(data_dir)
            .into_iter()
            .filter(|(topic, _)| !ClusterMetadata::is_internal_topic(topic))
            .map(|(topic, partition)| crate::txn::TopicPartition { topic, partition })
            .collect(),
        began_before_ms: crate::clock::now_ms(),
    }
}

/// Warns once, before any partition opens, when the descriptor limit is
/// too low for the segment files on disk (each open segment holds
/// [`crate::descriptors::DESCRIPTORS_PER_SEGMENT`]): the partitions that fit
/// are served, the others answer `KAFKA_STORAGE_ERROR`.
fn check_descriptor_limit(
    config: &BrokerConfig,
    metadata: &ClusterMetadata,
    limit: u64,
    shared: &SharedState,
) {
    let segments = crate::descriptors::segment_files_on_disk(&config.data_dir);
    let needed = crate::descriptors::needed_for(segments);
    let partitions: i64 = metadata
        .topics
        .values()
        .map(|topic| i64::from(topic.partitions))
        .sum();
    if needed > limit && shared.descriptors.first_warning() {
        tracing::warn!(
            partitions,
            segments,
            needed,
            limit,
            "descriptor limit (RLIMIT_NOFILE) too low for the partitions held: raise the hard limit to {needed} (ulimit -Hn, LimitNOFILE=); partitions that do not fit answer KAFKA_STORAGE_ERROR"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn shard_main(
    config: Arc<BrokerConfig>,
    metadata: Arc<ClusterMetadata>,
    mesh: MeshBuilder<ShardTask, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    cpu: usize,
    shared: Arc<SharedState>,
    controller_inbox: ControllerInbox,
    opened_log: Arc<std::sync::Mutex<Option<crate::cluster::member::OpenedLog>>>,
) -> anyhow::Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|error| anyhow::anyhow!("joining the shard mesh: {error}"))?;
    let shard = Shard::new(config.clone(), senders, metadata, shared.clone());
    shard.start_inbox(receivers);
    shard.start_replication();
    tracing::info!(shard = shard.id, cpu, "shard pinned");
    if shard.id == 0 {
        let opened = opened_log.lock().ok().and_then(|mut opened| opened.take());
        if let Some(opened) = opened {
            shard.start_quorum(opened)?;
        }
    }
    if let Ok(mut layout) = shared.layout.lock() {
        layout.entry(shard.id).or_insert((cpu, Vec::new())).0 = cpu;
    }
    shard.open_owned_partitions().await;
    shard.publish_partitions();
    crate::group::runtime::load_groups(&shard).await;
    let group_timer = glommio::spawn_local(crate::group::runtime::run_group_timer(shard.clone()));
    let txn_timer = glommio::spawn_local(crate::txn::runtime::run_txn_timer(shard.clone()));
    if config.cluster.is_some() {
        shard.wait_until_registered(&stop).await;
    }
    let listener = TcpListener::bind(config.listen)
        .map_err(|error| anyhow::anyhow!("listening on {}: {error}", config.listen))?;
    tracing::info!(shard = shard.id, listen = %config.listen, "accepting Kafka connections");
    shared.shards_ready.fetch_add(1, Ordering::SeqCst);
    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener));
    let retention = glommio::spawn_local(retention_loop(shard.clone()));
    let cleaner = start_cleaner(&shard);
    let producer_state = glommio::spawn_local(producer_state_loop(shard.clone()));
    let commands = (shard.id == 0)
        .then(|| {
            controller_inbox
                .lock()
                .ok()
                .and_then(|mut inbox| inbox.take())
        })
        .flatten()
        .map(|inbox| glommio::spawn_local(crate::reassign::serve_commands(shard.clone(), inbox)));
    let mut last_stats = std::time::Instant::now();
    let mut stats_ticks = 0u64;
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
        if last_stats.elapsed() >= STORAGE_STATS_INTERVAL {
            shard.report_storage_stats();
            if shard.id == 0 {
                watch_data_dir(&config, stats_ticks);
            }
            stats_ticks += 1;
            last_stats = std::time::Instant::now();
        }
    }
    tracing::info!(shard = shard.id, "shutting down");
    if let Some(quorum) = shard.quorum() {
        quorum.announce_shutdown().await;
    }
    shard.shutting_down.set(true);
    accept.cancel().await;
    retention.cancel().await;
    if let Some(cleaner) = cleaner {
        // A pass dropped mid-way removes its unfinished output; the swap
        // itself never awaits, so it is not cut in half.
        cleaner.cancel().await;
    }
    // Before the partitions close, which write their final snapshots.
    producer_state.cancel().await;
    group_timer.cancel().await;
    txn_timer.cancel().await;
    if let Some(commands) = commands {
        // Drops the queue: the admin listener answers 503 from now on.
        commands.cancel().await;
    }
    shard.close_partitions().await;
    outlive_blocking_work(&shard).await;
    Ok(())
}

/// Keeps the shard's executor alive until file work on the blocking threads
/// is over. glommio's blocking thread panics when the executor that asked
/// for work is gone when the work ends, and a stopping broker still has
/// such work: tasks dropped mid-operation (a request opening a partition),
/// glommio's own truncates and renames, other shards' closes. So every
/// shard waits for all shards to have closed their partitions, then for the
/// counted work ([`kafki_storage::checkpoint::wait_blocking_idle`]), then a
/// short grace for glommio's uncounted operations. Bounded: a stop never
/// hangs here for more than about 20 s.
async fn outlive_blocking_work(shard: &Shard) {
    const WAIT_MAX: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_millis(100);
    shard.shared.shards_stopped.fetch_add(1, Ordering::SeqCst);
    let started = std::time::Instant::now();
    while shard.shared.shards_stopped.load(Ordering::SeqCst) < shard.count
        && started.elapsed() < WAIT_MAX
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    kafki_storage::checkpoint::wait_blocking_idle(WAIT_MAX).await;
    glommio::timer::sleep(GRACE).await;
}

/// Shard 0, once a second: the data directory's free space for `/metrics`,
/// and every [`RESERVE_CHECK_TICKS`] seconds the space reserve made again if
/// a full disk used it up and room came back. Both are a `statvfs` or two
/// (no device I/O) except when the reserve is actually made.
fn watch_data_dir(config: &BrokerConfig, tick: u64) {
    if let Ok(space) = crate::disk::Space::of(&config.data_dir) {
        crate::metrics::set_data_dir_space(space);
    }
    if tick.is_multiple_of(RESERVE_CHECK_TICKS) {
        crate::disk::ensure_reserve(&config.data_dir, config.settings.reserve_bytes);
    }
}

/// How often (in storage-stats ticks, one a second) the reserve is checked.
const RESERVE_CHECK_TICKS: u64 = 10;

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    // Broker-wide, as Kafka counts it: every shard shares one counter.
    let limit = shard.config.settings.max_connections;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(_) => continue,
        };
        let open = shard.shared.connections.fetch_add(1, Ordering::SeqCst);
        if open >= limit {
            shard.shared.connections.fetch_sub(1, Ordering::SeqCst);
            shard.metrics.connection_refused("connection_limit");
            tracing::warn!(shard = shard.id, %peer, limit, "connection limit reached; refusing connection");
            drop(stream);
            continue;
        }
        shard.metrics.connection_opened();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            crate::connection::serve(shard.clone(), stream, peer).await;
            shard.metrics.connection_closed();
            shard.shared.connections.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
}

/// The admin HTTP listener (its own thread): /metrics, /health, /v1/layout,
/// and the assignment routes, which reach the controller over `assignments`.
fn start_admin(
    config: &Arc<BrokerConfig>,
    shared: &Arc<SharedState>,
    assignments: AssignmentSender,
) -> anyhow::Result<crate::admin::AdminHandle> {
    let shards = config.cores.len();
    let health_state = shared.clone();
    let data_dir = config.data_dir.clone();
    let reserve_bytes = config.settings.reserve_bytes;
    let health: crate::admin::HealthFn = Arc::new(move || {
        let ready = health_state.shards_ready.load(Ordering::SeqCst);
        let unwritable: Vec<crate::shard::UnwritableLog> = health_state
            .unwritable
            .lock()
            .map(|by_shard| by_shard.values().flatten().cloned().collect())
            .unwrap_or_default();
        let paused = unwritable
            .iter()
            .filter(|log| log.state == "paused")
            .count();
        let failed = unwritable.len() - paused;
        let disk = match crate::disk::Space::of(&data_dir) {
            Ok(space) => serde_json::json!({
                "data_dir": data_dir.display().to_string(),
                "free_bytes": space.free_bytes,
                "total_bytes": space.total_bytes,
                "reserve_in_place": reserve_bytes == 0 || data_dir.join(crate::disk::RESERVE_FILE).exists(),
            }),
            Err(error) => {
                serde_json::json!({ "data_dir": data_dir.display().to_string(), "error": error.to_string() })
            }
        };
        // At most this many logs are named; the counts cover them all.
        const LISTED_MAX: usize = 20;
        crate::admin::HealthReport {
            ready: ready == shards,
            degraded: !unwritable.is_empty(),
            detail: serde_json::json!({
                "shards_ready": ready,
                "shards": shards,
                "disk": disk,
                "logs": {
                    "paused": paused,
                    "failed": failed,
                    "unwritable": unwritable.iter().take(LISTED_MAX).collect::<Vec<_>>(),
                },
            }),
        }
    });
    let layout_state = shared.clone();
    let layout: crate::admin::LayoutFn = Arc::new(move || {
        let layout = match layout_state.layout.lock() {
            Ok(layout) => layout.clone(),
            Err(_) => Default::default(),
        };
        let shards: Vec<_> = layout
            .into_iter()
            .map(|(shard, (cpu, partitions))| serde_json::json!({ "shard": shard, "cpu": cpu, "partitions": partitions }))
            .collect();
        serde_json::json!({ "shards": shards }).to_string()
    });
    let cluster_state = shared.clone();
    let node_id = config.node_id;
    let cluster: crate::admin::LayoutFn =
        Arc::new(move || crate::cluster::view::cluster_view(node_id, &cluster_state).to_string());
    let handle = crate::admin::spawn_admin_with_cluster(
        config.admin_listen,
        health,
        layout,
        Some(assignments),
        Some(cluster),
    )?;
    tracing::info!(admin = %handle.local_addr(), "admin listener: /metrics /health /v1/layout /v1/cluster /v1/assignments /v1/partitions/{{topic}}/{{partition}}/shard");
    Ok(handle)
}

/// Starts the shard's log cleaner (`log.cleaner.enable`) in a task queue
/// of its own with a small share of the CPU, so that under load appends
/// and fetches go first.
fn start_cleaner(shard: &Rc<Shard>) -> Option<glommio::Task<()>> {
    let settings = crate::config::CleanerSettings::from_kafka(&shard.config.kafka, shard.count);
    if !settings.enabled {
        tracing::info!(
            shard = shard.id,
            "log cleaner disabled (log.cleaner.enable=false)"
        );
        return None;
    }
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(CLEANER_SHARES),
        glommio::Latency::NotImportant,
        "log-cleaner",
    );
    match glommio::spawn_local_into(cleaner_loop(shard.clone(), settings), queue) {
        Ok(task) => Some(task),
        Err(error) => {
            tracing::error!(shard = shard.id, %error, "cannot start the log cleaner");
            None
        }
    }
}

/// CPU shares of the cleaner's task queue (glommio's default queue has 1000).
const CLEANER_SHARES: usize = 100;

async fn cleaner_loop(shard: Rc<Shard>, settings: crate::config::CleanerSettings) {
    loop {
        glommio::timer::sleep(settings.backoff).await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        shard.clean_partitions(now_ms, &settings.limits).await;
    }
}

/// One warning for every explicit assignment naming a shard this start
/// does not have (fewer `--cores` than when it was made): those partitions
/// follow the placement function until the shard exists again.
fn warn_stale_assignments(metadata: &ClusterMetadata, shards: usize) {
    let stale = metadata.stale_assignments(shards);
    if stale.is_empty() {
        return;
    }
    let listed: Vec<String> = stale
        .iter()
        .map(|(topic, partition, shard)| format!("{topic}-{partition}→{shard}"))
        .collect();
    tracing::warn!(
        shards,
        ignored = %listed.join(", "),
        "shard assignments name shards that do not exist; those partitions use the placement function"
    );
}

async fn retention_loop(shard: Rc<Shard>) {
    let interval = shard.config.settings.retention_check_interval;
    loop {
        glommio::timer::sleep(interval).await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        shard.enforce_retention(now_ms).await;
    }
}

/// The producer-state tick: snapshots that are due every
/// [`crate::producer::snapshot::SNAPSHOT_CHECK_INTERVAL`], expiry every
/// `producer.id.expiration.check.interval.ms` (Kafka's setting). Its own
/// task rather than the retention loop, whose interval (minutes) is far too
/// slow to bound what a crash has to replay.
async fn producer_state_loop(shard: Rc<Shard>) {
    let check = crate::producer::snapshot::SNAPSHOT_CHECK_INTERVAL;
    let expiry_every = shard.config.settings.producer_expiration_check_interval;
    let mut last_expiry = std::time::Instant::now();
    loop {
        glommio::timer::sleep(check.min(expiry_every)).await;
        let expire = last_expiry.elapsed() >= expiry_every;
        if expire {
            last_expiry = std::time::Instant::now();
        }
        shard.maintain_producer_states(expire).await;
    }
}
