//! The old owner's half of a partition hand-over, on a real glommio shard
//! and a real disk: once the moving snapshot is installed nobody is handed
//! the partition; `release_partition` wakes parked waiters, aborts (leaving
//! the log open and the partition back in place) while a request still
//! holds it, and otherwise closes the log cleanly so the next owner opens
//! it with every acknowledged record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use kafki_broker::config::{BrokerConfig, KafkaSettings};
use kafki_broker::metadata::{ClusterMetadata, TopicMeta};
use kafki_broker::partition::Acks;
use kafki_broker::shard::{Shard, ShardTask, SharedState};
use kafki_net::kafka_protocol::error::ResponseError;

/// A directory on the disk the build uses (not tmpfs: the log uses O_DIRECT).
fn test_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create test base dir");
    tempfile::tempdir_in(&base).expect("tempdir")
}

fn config(data_dir: PathBuf) -> BrokerConfig {
    let local = "127.0.0.1:0".parse().expect("address");
    BrokerConfig {
        listen: local,
        advertise_host: "127.0.0.1".into(),
        advertise_port: 9092,
        data_dir,
        cores: vec![0],
        admin_listen: local,
        kafka: KafkaSettings::default(),
        settings: kafki_broker::settings::BrokerSettings::default(),
        node_id: 0,
        cluster_id: "test".into(),
        cluster: None,
    }
}

fn one_topic() -> ClusterMetadata {
    ClusterMetadata::default().with_topic(TopicMeta {
        name: "t".into(),
        id: uuid::Uuid::new_v4(),
        partitions: 1,
        configs: BTreeMap::new(),
        internal: false,
        replicas: Vec::new(),
    })
}

#[test]
fn release_waits_for_holders_aborts_on_timeout_and_closes_cleanly() {
    let dir = test_dir();
    let data_dir = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let mesh: MeshBuilder<ShardTask, _> = MeshBuilder::full(1, 16);
            let (senders, _receivers) = mesh.join().await.expect("mesh");
            let before = one_topic();
            let shard = Shard::new(
                Arc::new(config(data_dir.clone())),
                senders,
                Arc::new(before.clone()),
                Arc::new(SharedState::default()),
            );
            let partition = shard.partition("t", 0).await.expect("open");
            let batch = kafki_storage::batch::build_batch(1, &[b"acknowledged".as_slice()]);
            partition
                .append(vec![batch], Acks::All, None)
                .await
                .expect("append");

            // Phase 1 installed: the partition is handed to nobody.
            let moving = Arc::new(before.with_moving(Some(("t".into(), 0))));
            shard.install_metadata(moving.clone()).await;
            assert_eq!(
                shard.partition("t", 0).await.err(),
                Some(ResponseError::NotLeaderOrFollower.code())
            );

            // A parked waiter (a fetch long poll) and a busy request.
            let parked = partition.clone();
            let woken = Rc::new(std::cell::Cell::new(false));
            let flag = woken.clone();
            glommio::spawn_local(async move {
                parked.wait_released().await;
                flag.set(true);
            })
            .detach();
            let busy = partition.clone();
            drop(partition);
            let started = Instant::now();
            let aborted = shard
                .release_partition("t", 0, Duration::from_millis(200))
                .await;
            let error = aborted.expect_err("a holder keeps it");
            assert!(error.contains("1 request(s)"), "{error}");
            assert!(started.elapsed() >= Duration::from_millis(200));
            // The parked waiter was woken and let go (else the count says 2).
            assert!(woken.get(), "a parked waiter was not woken");
            // Aborted: back in place, untouched, usable after a restore.
            assert!(!busy.is_released());
            assert!(busy.is_healthy());
            assert_eq!(shard.owned_partitions(), vec![("t".to_string(), 0)]);
            shard
                .install_metadata(Arc::new(before.with_moving(None)))
                .await;
            let again = shard.partition("t", 0).await.expect("restored");
            assert!(
                std::ptr::eq(&*again, &*busy),
                "the same open log, not a reopen"
            );
            drop(again);

            // Released for real once the holder is gone.
            shard.install_metadata(moving.clone()).await;
            let holder = glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert!(busy.is_released(), "the holder sees the release");
                drop(busy);
            });
            let released = shard
                .release_partition("t", 0, Duration::from_secs(5))
                .await
                .expect("released");
            holder.await;
            assert!(released.was_open && released.clean, "{released:?}");
            assert!(shard.owned_partitions().is_empty());
            assert!(data_dir.join("t-0/.kafki-clean-shutdown").exists());
            // Releasing what is not open is a no-op.
            let nothing = shard
                .release_partition("t", 0, Duration::from_secs(1))
                .await
                .expect("nothing to release");
            assert!(!nothing.was_open);

            // The next owner (here: the same shard, after phase 2) finds every
            // acknowledged record.
            shard
                .install_metadata(Arc::new(before.with_moving(None)))
                .await;
            let reopened = shard.partition("t", 0).await.expect("reopen");
            assert_eq!(reopened.offsets().log_end_offset, 1);
            assert_eq!(reopened.high_watermark(), 1);
            drop(reopened);
            shard.close_partitions().await;
        })
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}
