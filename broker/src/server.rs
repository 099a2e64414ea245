//! `kafki serve`: starts one pinned glommio executor (shard) per listed
//! core, joins them in a channel mesh, opens the owned partitions, and
//! accepts Kafka connections on every shard (one `SO_REUSEPORT` listener
//! each). SIGINT/SIGTERM stop accepting, close every log cleanly (flush,
//! clean-shutdown marker) and exit.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;

use crate::config::BrokerConfig;
use crate::metadata::ClusterMetadata;
use crate::shard::{Shard, ShardTask};

/// Capacity of each cross-shard channel (calls queued to one peer).
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// How often shards look for the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Runs the broker until SIGINT/SIGTERM (or `stop` is set).
pub fn run(mut config: BrokerConfig, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let metadata = ClusterMetadata::load_or_create(&config.data_dir)?;
    config.cluster_id = metadata.cluster_id.clone();
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
    let mut handles = Vec::with_capacity(config.cores.len());
    for (position, cpu) in config.cores.iter().copied().enumerate() {
        let config = config.clone();
        let metadata = metadata.clone();
        let mesh = mesh.clone();
        let stop = stop.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
            .name(&format!("kafki-shard-{position}"))
            .spawn(move || async move { shard_main(config, metadata, mesh, stop, cpu).await })
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
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("kafki stopped cleanly");
            Ok(())
        }
    }
}

async fn shard_main(
    config: Arc<BrokerConfig>,
    metadata: Arc<ClusterMetadata>,
    mesh: MeshBuilder<ShardTask, glommio::channels::channel_mesh::Full>,
    stop: Arc<AtomicBool>,
    cpu: usize,
) -> anyhow::Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|error| anyhow::anyhow!("joining the shard mesh: {error}"))?;
    let shard = Shard::new(config.clone(), senders, metadata);
    shard.start_inbox(receivers);
    tracing::info!(shard = shard.id, cpu, "shard pinned");
    shard.open_owned_partitions().await;
    crate::handlers::groups::load_groups(&shard).await;
    let group_timer = glommio::spawn_local(crate::handlers::groups::run_group_timer(shard.clone()));
    let listener = TcpListener::bind(config.listen)
        .map_err(|error| anyhow::anyhow!("listening on {}: {error}", config.listen))?;
    tracing::info!(shard = shard.id, listen = %config.listen, "accepting Kafka connections");
    let accept = glommio::spawn_local(accept_loop(shard.clone(), listener));
    let retention = glommio::spawn_local(retention_loop(shard.clone()));
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    tracing::info!(shard = shard.id, "shutting down");
    shard.shutting_down.set(true);
    accept.cancel().await;
    retention.cancel().await;
    group_timer.cancel().await;
    shard.close_partitions().await;
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let per_shard = shard
        .config
        .kafka
        .get_i64("max.connections")
        .filter(|limit| *limit > 0)
        .map_or(10_000, |limit| limit as u64)
        .div_ceil(shard.count as u64)
        .max(1);
    let connections = Rc::new(Semaphore::new(per_shard));
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
        let Ok(permit) = connections.clone().try_acquire_static_permit(1) else {
            tracing::warn!(shard = shard.id, %peer, limit = per_shard, "connection limit reached; refusing connection");
            drop(stream);
            continue;
        };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            crate::connection::serve(shard, stream, peer).await;
            drop(permit);
        })
        .detach();
    }
}

async fn retention_loop(shard: Rc<Shard>) {
    let interval = shard
        .config
        .kafka
        .get_i64("log.retention.check.interval.ms")
        .filter(|ms| *ms > 0)
        .map_or(300_000, |ms| ms as u64);
    loop {
        glommio::timer::sleep(Duration::from_millis(interval)).await;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        shard.enforce_retention(now_ms).await;
    }
}
