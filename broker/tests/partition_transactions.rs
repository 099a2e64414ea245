//! The partition-leader side of transactions on a real partition: two
//! producers write transactional batches, one commits and one aborts (the
//! markers appended and committed like `acks=all`), and the last stable
//! offset, the aborted list and a `read_committed` read are checked, then
//! again after a close (snapshot) and reopen, and after a reopen that
//! rebuilds everything from the log alone.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::run;
use kafki_broker::partition::{Acks, CommitStage, Partition, Replication};
use kafki_broker::producer::ProducerLimits;
use kafki_broker::txn::{ControlType, EndTxnMarker};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::batch::{build_batch, compute_crc, BatchHeader};
use kafki_storage::{LogConfig, PartitionLog, SyncPolicy};

/// A directory on the disk the build uses (not tmpfs: the log uses O_DIRECT).
fn test_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create test base dir");
    tempfile::tempdir_in(&base).expect("tempdir")
}

async fn open_partition(dir: PathBuf) -> Partition {
    let log = PartitionLog::open(&dir, LogConfig::default())
        .await
        .expect("open log");
    let loaded = kafki_broker::producer::snapshot::load(
        &log,
        "t-0".into(),
        ProducerLimits::default(),
        kafki_broker::clock::now_ms(),
    )
    .await;
    let replication = Replication::Local {
        stage: CommitStage::for_policy(SyncPolicy::EveryAppend),
    };
    Partition::new("t".into(), 0, log, replication, 0, loaded)
}

/// A batch of `count` records of `producer_id` (epoch 0) from sequence
/// `first`, transactional or not.
fn batch(producer_id: i64, first: i32, count: usize, transactional: bool) -> Bytes {
    let values: Vec<&[u8]> = (0..count).map(|_| b"value".as_slice()).collect();
    let mut bytes = build_batch(1, &values).to_vec();
    if transactional {
        bytes[21..23].copy_from_slice(&(1i16 << 4).to_be_bytes());
    }
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&0i16.to_be_bytes());
    bytes[53..57].copy_from_slice(&first.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn marker(control_type: ControlType, coordinator_epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        control_type,
        coordinator_epoch,
    }
}

/// Offsets of the batches a `read_committed` read from 0 returns.
async fn committed_batches(partition: &Partition) -> Vec<(i64, bool)> {
    let read = partition.read_committed(0, 1 << 20).await.expect("read");
    let bytes = read.load().await.expect("load");
    let mut batches = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let header = BatchHeader::parse(&bytes[position..]).expect("header");
        batches.push((header.base_offset, header.is_control()));
        position += header.total_bytes();
    }
    batches
}

/// The state the two producers leave: producer 7 committed [0, 2], producer
/// 8 aborted [1], producer 9 still open at 6.
fn check_state(partition: &Partition) {
    assert_eq!(partition.offsets().log_end_offset, 7);
    assert_eq!(partition.high_watermark(), 7);
    assert_eq!(partition.last_stable_offset(), 6);
    assert_eq!(partition.aborted_transactions(0, 7), vec![(8, 1)]);
    // A fetch from after the abort's marker gets nothing to drop.
    assert_eq!(
        partition.aborted_transactions(5, 7),
        Vec::<(i64, i64)>::new()
    );
}

#[test]
fn commit_and_abort_set_the_stable_offset_and_survive_reopening() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let partition = open_partition(path.clone()).await;
        for (producer_id, first, expected) in [(7, 0, 0), (8, 0, 1), (7, 1, 2)] {
            let appended = partition
                .append(vec![batch(producer_id, first, 1, true)], Acks::All, WAIT)
                .await
                .expect("transactional append");
            assert_eq!(appended.base_offset, expected);
        }
        // Both open: nothing is stable yet.
        assert_eq!(partition.high_watermark(), 3);
        assert_eq!(partition.last_stable_offset(), 0);
        assert!(committed_batches(&partition).await.is_empty());
        // Plain data of a producer whose transaction is open is refused.
        let refused = partition
            .append(vec![batch(7, 2, 1, false)], Acks::All, WAIT)
            .await
            .expect_err("not transactional");
        assert_eq!(refused.error.code, ResponseError::InvalidTxnState.code());

        let committed = partition
            .append_marker(7, 0, marker(ControlType::Commit, 1))
            .await
            .expect("commit");
        assert_eq!(committed.offset, 3);
        // Producer 8 (from 1) still open.
        assert_eq!(partition.last_stable_offset(), 1);
        assert_eq!(committed_batches(&partition).await, vec![(0, false)]);
        let aborted = partition
            .append_marker(8, 0, marker(ControlType::Abort, 1))
            .await
            .expect("abort");
        assert_eq!(aborted.offset, 4);
        assert_eq!(partition.last_stable_offset(), 5);
        // A marker without an open transaction is still written.
        let retried = partition
            .append_marker(8, 0, marker(ControlType::Abort, 1))
            .await
            .expect("retry written");
        assert_eq!(retried.offset, 5);
        // A deposed coordinator's marker is fenced.
        assert_eq!(
            partition
                .append_marker(8, 0, marker(ControlType::Commit, 0))
                .await,
            Err(ResponseError::TransactionCoordinatorFenced.code())
        );
        partition
            .append(vec![batch(9, 0, 1, true)], Acks::All, WAIT)
            .await
            .expect("third producer");
        check_state(&partition);
        let read: Vec<i64> = committed_batches(&partition)
            .await
            .into_iter()
            .map(|(offset, _)| offset)
            .collect();
        assert_eq!(read, vec![0, 1, 2, 3, 4, 5]);

        // Close (snapshot written) and reopen.
        partition.close().await.expect("close");
        let reopened = open_partition(path.clone()).await;
        check_state(&reopened);
        // The fencing survived too.
        assert_eq!(
            reopened
                .append_marker(8, 0, marker(ControlType::Commit, 0))
                .await,
            Err(ResponseError::TransactionCoordinatorFenced.code())
        );
        reopened.close().await.expect("close");

        // Without the snapshot: rebuilt from the log alone.
        std::fs::remove_file(path.join(kafki_broker::producer::snapshot::SNAPSHOT_FILE))
            .expect("snapshot written at close");
        let rebuilt = open_partition(path.clone()).await;
        check_state(&rebuilt);
        let committed = rebuilt
            .append_marker(9, 0, marker(ControlType::Commit, 1))
            .await
            .expect("commit the last one");
        assert_eq!(committed.offset, 7);
        assert_eq!(rebuilt.last_stable_offset(), 8);
        rebuilt.close().await.expect("close");
    });
}

#[test]
fn clients_cannot_write_control_batches() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let partition = open_partition(path).await;
        let control = kafki_broker::producer::transactions::build_marker_batch(
            7,
            0,
            marker(ControlType::Commit, 1),
            1,
        );
        let refused = partition
            .append(vec![control], Acks::All, WAIT)
            .await
            .expect_err("control batch from a client");
        assert_eq!(refused.error.code, ResponseError::InvalidRecord.code());
        partition.close().await.expect("close");
    });
}
