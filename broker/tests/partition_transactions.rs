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

/// A compacted log whose every pass rolls and cleans all it may (a
/// `max.compaction.lag.ms` of 0), with markers kept no longer than their
/// data (`delete.retention.ms` 0).
async fn open_compacted(dir: PathBuf) -> Partition {
    let config = LogConfig {
        compaction: Some(kafki_storage::CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            max_compaction_lag: Some(Duration::ZERO),
            delete_retention: Duration::ZERO,
            ..kafki_storage::CompactionConfig::default()
        }),
        ..LogConfig::default()
    };
    let log = PartitionLog::open(&dir, config).await.expect("open log");
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

/// A keyed batch of `producer_id` (epoch 0, from sequence `first`; -1 for a
/// plain producer), transactional or not.
fn keyed(producer_id: i64, first: i32, transactional: bool, records: &[(&str, &str)]) -> Bytes {
    let pairs: Vec<kafki_storage::batch::KeyValueRef<'_>> = records
        .iter()
        .map(|(key, value)| (Some(key.as_bytes()), Some(value.as_bytes())))
        .collect();
    // Now: a replay takes a producer's clock from its batches (expiry).
    let now_ms = kafki_broker::clock::now_ms();
    let mut bytes = kafki_storage::batch::build_keyed_batch(now_ms, &pairs).to_vec();
    if transactional {
        bytes[21..23].copy_from_slice(&(1i16 << 4).to_be_bytes());
    }
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    let epoch: i16 = if producer_id < 0 { -1 } else { 0 };
    bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
    bytes[53..57].copy_from_slice(&first.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// The records a consumer sees, as the Java client filters them: with
/// `read_committed`, up to the last stable offset, skipping a producer's
/// transactional batches from an aborted transaction's first offset until
/// that producer's ABORT marker; control batches never show.
async fn consume(partition: &Partition, committed: bool) -> Vec<(String, String)> {
    let read = if committed {
        partition.read_committed(0, 1 << 20).await
    } else {
        partition.read(0, 1 << 20).await
    };
    let bytes = read.expect("read").load().await.expect("load");
    let upper = if committed {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    let mut pending = partition.aborted_transactions(0, upper);
    pending.sort_by_key(|(_, first)| *first);
    let mut pending = std::collections::VecDeque::from(pending);
    let mut aborted = std::collections::HashSet::new();
    let mut seen = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let header = BatchHeader::parse(&bytes[position..]).expect("header");
        let batch = &bytes[position..position + header.total_bytes()];
        position += header.total_bytes();
        if committed {
            while pending
                .front()
                .is_some_and(|(_, first)| *first <= header.last_offset())
            {
                let (producer_id, _) = pending.pop_front().expect("front");
                aborted.insert(producer_id);
            }
        }
        if header.is_control() {
            let marker = kafki_broker::producer::transactions::decode_marker(batch);
            if matches!(marker, Ok(Some(m)) if m.control_type == ControlType::Abort) {
                aborted.remove(&header.producer_id);
            }
            continue;
        }
        if committed && header.is_transactional() && aborted.contains(&header.producer_id) {
            continue;
        }
        let section = kafki_storage::records::batch_records(batch, 1 << 20).expect("records");
        for record in kafki_storage::records::records(&section, header.records_count) {
            let record = record.expect("record");
            let text = |bytes: Option<&[u8]>| {
                String::from_utf8(bytes.unwrap_or_default().to_vec()).expect("utf-8")
            };
            if !text(record.key).starts_with("filler") {
                seen.push((text(record.key), text(record.value)));
            }
        }
    }
    seen
}

/// Offsets of the control batches in the log.
async fn markers_in(partition: &Partition) -> Vec<i64> {
    let read = partition.read(0, 1 << 20).await.expect("read");
    let bytes = read.load().await.expect("load");
    let mut markers = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let header = BatchHeader::parse(&bytes[position..]).expect("header");
        if header.is_control() {
            markers.push(header.base_offset);
        }
        position += header.total_bytes();
    }
    markers
}

async fn append_one(partition: &Partition, batch: Bytes) -> u64 {
    partition
        .append(vec![batch], Acks::All, WAIT)
        .await
        .expect("append")
        .base_offset
}

/// Appends a plain record (so that the pass has dirty data) and runs a
/// pass now.
async fn compact_with_filler(
    partition: &Partition,
    fillers: &mut usize,
    limits: &kafki_storage::CleanerLimits,
) -> kafki_storage::CleanReport {
    *fillers += 1;
    let filler = format!("filler-{fillers}");
    append_one(partition, keyed(-1, -1, false, &[(&filler, "x")])).await;
    partition
        .compact(kafki_broker::clock::now_ms(), limits)
        .await
        .expect("compact")
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[test]
fn compaction_keeps_read_committed_reads_right_across_reopening() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let limits = kafki_storage::CleanerLimits::default();
        let partition = open_compacted(path.clone()).await;
        let mut fillers = 0;
        // Producer 7 commits [0, 1], producer 8 aborts [3, 4], a plain
        // record at 6, producer 9 open from 7.
        assert_eq!(
            append_one(&partition, keyed(7, 0, true, &[("k1", "c1"), ("k2", "c2")])).await,
            0
        );
        partition
            .append_marker(7, 0, marker(ControlType::Commit, 1))
            .await
            .expect("commit");
        assert_eq!(
            append_one(&partition, keyed(8, 0, true, &[("k1", "a1"), ("k3", "a3")])).await,
            3
        );
        partition
            .append_marker(8, 0, marker(ControlType::Abort, 1))
            .await
            .expect("abort");
        assert_eq!(
            append_one(&partition, keyed(-1, -1, false, &[("k2", "p2")])).await,
            6
        );
        assert_eq!(
            append_one(&partition, keyed(9, 0, true, &[("k3", "o3")])).await,
            7
        );
        assert_eq!(partition.last_stable_offset(), 7);
        let before = pairs(&[("k1", "c1"), ("k2", "c2"), ("k2", "p2")]);
        assert_eq!(consume(&partition, true).await, before);

        let report = compact_with_filler(&partition, &mut fillers, &limits).await;
        assert!(report.ran);
        assert_eq!(report.aborted_removed, 2);
        assert_eq!(
            report.first_dirty_after, 7,
            "the open transaction stops the cleaning"
        );
        assert_eq!(
            consume(&partition, true).await,
            pairs(&[("k1", "c1"), ("k2", "p2")])
        );
        assert_eq!(
            consume(&partition, false).await,
            pairs(&[("k1", "c1"), ("k2", "p2"), ("k3", "o3")]),
            "the aborted records are gone for every consumer"
        );
        // Producer 8's aborted batch stays empty (its last one) and so does
        // the marker; the entry stays in the index.
        assert_eq!(markers_in(&partition).await, vec![2, 5]);
        assert_eq!(partition.aborted_transactions(0, 100), vec![(8, 3)]);

        // Producer 9 commits; producer 8 writes again and commits.
        partition
            .append_marker(9, 0, marker(ControlType::Commit, 1))
            .await
            .expect("commit");
        append_one(&partition, keyed(8, 2, true, &[("k4", "n4")])).await;
        partition
            .append_marker(8, 0, marker(ControlType::Commit, 1))
            .await
            .expect("commit");
        let expected = pairs(&[("k1", "c1"), ("k2", "p2"), ("k3", "o3"), ("k4", "n4")]);
        // A snapshot on disk that still holds the aborted entry.
        partition.snapshot_producers().await.expect("snapshot");
        // The empty batch goes, then the abort has no data left: its entry
        // goes, the marker stays (delete horizon, then the snapshot).
        compact_with_filler(&partition, &mut fillers, &limits).await;
        let report = compact_with_filler(&partition, &mut fillers, &limits).await;
        assert_eq!(report.aborts_without_data, vec![5]);
        assert_eq!(
            partition.aborted_transactions(0, 100),
            Vec::<(i64, i64)>::new()
        );
        assert!(markers_in(&partition).await.contains(&5));
        let report = compact_with_filler(&partition, &mut fillers, &limits).await;
        assert_eq!(
            report.markers_removed, 0,
            "the snapshot on disk still holds the entry"
        );
        assert!(markers_in(&partition).await.contains(&5));
        partition.snapshot_producers().await.expect("snapshot");
        let report = compact_with_filler(&partition, &mut fillers, &limits).await;
        assert_eq!(report.markers_removed, 1);
        let markers = markers_in(&partition).await;
        assert!(!markers.contains(&5), "{markers:?}");
        assert_eq!(consume(&partition, true).await, expected);
        assert_eq!(consume(&partition, false).await, expected);
        let end = partition.offsets().log_end_offset;
        assert_eq!(partition.last_stable_offset(), end);
        partition.close().await.expect("close");

        // Reopened from the snapshot, and from the log alone.
        for (from_snapshot, sequence) in [(true, 3), (false, 4)] {
            if !from_snapshot {
                std::fs::remove_file(path.join(kafki_broker::producer::snapshot::SNAPSHOT_FILE))
                    .expect("snapshot written at close");
            }
            let reopened = open_compacted(path.clone()).await;
            assert_eq!(
                reopened.last_stable_offset(),
                reopened.offsets().log_end_offset,
                "nothing left open"
            );
            assert_eq!(
                reopened.aborted_transactions(0, end),
                Vec::<(i64, i64)>::new()
            );
            assert_eq!(consume(&reopened, true).await, expected);
            // Producer 8 aborts again: hidden from read_committed only.
            append_one(&reopened, keyed(8, sequence, true, &[("k1", "a1-again")])).await;
            reopened
                .append_marker(8, 0, marker(ControlType::Abort, 1))
                .await
                .expect("abort");
            assert_eq!(consume(&reopened, true).await, expected);
            reopened.close().await.expect("close");
        }
    });
}
