//! Compaction of a log with transactions (Kafka's cleaner rules, see
//! `log/compaction.rs`): committed transactional records compact like any
//! other, aborted ones go and supersede nothing, an open transaction and
//! everything after it stay, and a marker stays while its transaction has
//! data, then `delete.retention.ms` (its delete horizon), then until the
//! caller lets it go.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::{read_all_batches, records_of, run, test_dir, TestRecord};
use kafki_storage::batch::{BatchHeader, ATTRIBUTE_CONTROL, ATTRIBUTE_TRANSACTIONAL};
use kafki_storage::compression::Compression;
use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
use kafki_storage::{
    AbortedRange, CleanerInput, CleanerLimits, CompactionConfig, LogConfig, PartitionLog, TxnFacts,
};

const NOW_MS: i64 = 1_700_000_000_000;
const RETENTION_MS: i64 = 60_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 512,
        retention_age: None,
        compaction: Some(CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            delete_retention: Duration::from_millis(RETENTION_MS as u64),
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    }
}

/// A batch of `records` (key, value) of `producer_id`, transactional or not.
fn data(producer_id: i64, sequence: i32, transactional: bool, records: &[(&str, &str)]) -> Bytes {
    let mut section = Vec::new();
    for (index, (key, value)) in records.iter().enumerate() {
        encode_record(
            &mut section,
            &NewRecord {
                offset_delta: index as i32,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                ..NewRecord::default()
            },
        );
    }
    let fields = BatchFields {
        attributes: if transactional {
            ATTRIBUTE_TRANSACTIONAL
        } else {
            0
        },
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: 1_000,
        max_timestamp: 1_000,
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        records_count: records.len() as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, Compression::Lz4, &section);
    Bytes::from(batch)
}

/// A COMMIT (`true`) or ABORT marker of `producer_id`.
fn marker(producer_id: i64, commit: bool) -> Bytes {
    let key = [0u8, 0, 0, u8::from(commit)];
    let value = [0u8, 0, 0, 0, 0, 1];
    let mut section = Vec::new();
    encode_record(
        &mut section,
        &NewRecord {
            key: Some(&key),
            value: Some(&value),
            ..NewRecord::default()
        },
    );
    let fields = BatchFields {
        attributes: ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL,
        base_timestamp: 1_000,
        max_timestamp: 1_000,
        producer_id,
        producer_epoch: 0,
        records_count: 1,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, Compression::None, &section);
    Bytes::from(batch)
}

async fn append(log: &PartitionLog, batch: Bytes) -> u64 {
    log.append(batch, 0).await.expect("append").base_offset
}

/// Seals what was written and adds a plain record so that a pass has dirty
/// data to clean.
async fn seal_with_filler(log: &PartitionLog, name: &str) {
    append(log, data(-1, -1, false, &[(name, "filler")])).await;
    log.roll();
    log.flush().await.expect("flush");
}

/// (offset, key, value) of every data record, and the offsets of markers
/// with their delete horizons.
async fn contents(log: &PartitionLog) -> (Vec<(u64, String, String)>, Vec<(u64, Option<i64>)>) {
    let mut records = Vec::new();
    let mut markers = Vec::new();
    for batch in read_all_batches(log, 0).await {
        let header = BatchHeader::parse(&batch).expect("header");
        if header.is_control() {
            markers.push((header.base_offset as u64, header.delete_horizon_ms()));
            continue;
        }
        let text =
            |bytes: Option<Vec<u8>>| String::from_utf8(bytes.unwrap_or_default()).expect("utf-8");
        records.extend(
            records_of(&batch)
                .into_iter()
                .map(|(offset, key, value): TestRecord| (offset, text(key), text(value))),
        );
    }
    (records, markers)
}

fn values(records: &[(u64, String, String)]) -> Vec<(&str, &str)> {
    records
        .iter()
        .filter(|(_, key, _)| !key.starts_with("filler"))
        .map(|(_, key, value)| (key.as_str(), value.as_str()))
        .collect()
}

fn input(
    aborted: &[(i64, u64, u64)],
    stable_end: u64,
    markers_removable_below: u64,
) -> CleanerInput {
    CleanerInput {
        retain: HashSet::new(),
        transactions: Some(TxnFacts {
            aborted: aborted
                .iter()
                .map(|&(producer_id, first_offset, marker_offset)| AbortedRange {
                    producer_id,
                    first_offset,
                    marker_offset,
                })
                .collect(),
            stable_end,
            markers_removable_below,
        }),
    }
}

#[test]
fn committed_records_compact_aborted_ones_go_and_markers_outlive_their_data() {
    let dir = test_dir();
    let path = dir.path().join("txn-0");
    run(move || async move {
        let log = PartitionLog::open(&path, config()).await.expect("open");
        assert_eq!(
            append(
                &log,
                data(
                    -1,
                    -1,
                    false,
                    &[("a", "plain"), ("b", "plain"), ("c", "plain")]
                )
            )
            .await,
            0
        );
        // Producer 10 commits [3, 4], producer 11 aborts [6, 7], producer
        // 12 stays open from 9.
        assert_eq!(
            append(
                &log,
                data(10, 0, true, &[("a", "committed"), ("d", "committed")])
            )
            .await,
            3
        );
        assert_eq!(append(&log, marker(10, true)).await, 5);
        assert_eq!(
            append(
                &log,
                data(11, 0, true, &[("b", "aborted"), ("e", "aborted")])
            )
            .await,
            6
        );
        assert_eq!(append(&log, marker(11, false)).await, 8);
        assert_eq!(append(&log, data(12, 0, true, &[("c", "open")])).await, 9);
        assert_eq!(
            append(&log, data(-1, -1, false, &[("a", "after")])).await,
            10
        );
        seal_with_filler(&log, "filler-1").await;
        let aborted = [(11, 6, 8)];
        let limits = CleanerLimits::default();

        let report = log
            .compact_retaining(NOW_MS, &limits, &input(&aborted, 9, u64::MAX))
            .await
            .expect("compact");
        assert!(report.ran);
        assert_eq!(
            report.first_dirty_after, 9,
            "cleaning stops at the open transaction"
        );
        assert_eq!(report.aborted_removed, 2);
        let (records, markers) = contents(&log).await;
        assert_eq!(
            values(&records),
            vec![
                // "a" superseded by the committed record, not by the plain
                // one after the last stable offset; "b" not by the aborted one.
                ("b", "plain"),
                ("c", "plain"),
                ("a", "committed"),
                ("d", "committed"),
                ("c", "open"),
                ("a", "after"),
            ]
        );
        assert_eq!(
            markers,
            vec![(5, None), (8, None)],
            "their data was walked: both stay"
        );

        // Producer 12 commits; the stable offset moves past everything.
        let commit = append(&log, marker(12, true)).await;
        append(&log, data(10, 1, true, &[("d", "committed-again")])).await;
        append(&log, marker(10, true)).await;
        seal_with_filler(&log, "filler-2").await;
        let end = log.offsets().next_offset;
        let report = log
            .compact_retaining(NOW_MS, &limits, &input(&aborted, end, u64::MAX))
            .await
            .expect("compact");
        assert_eq!(report.markers_horizon_set, 1);
        assert_eq!(report.aborts_without_data, vec![8]);
        let (records, markers) = contents(&log).await;
        assert_eq!(
            values(&records),
            vec![
                ("b", "plain"),
                ("c", "open"),
                ("a", "after"),
                ("d", "committed-again"),
            ]
        );
        // Producer 10's first commit has no data left now, but this pass
        // walked the superseded record: it stays as it is until the next.
        let horizon = NOW_MS + RETENTION_MS;
        assert_eq!(
            markers,
            vec![
                (5, None),
                (8, Some(horizon)),
                (commit, None),
                (commit + 2, None)
            ]
        );

        // Before the horizon, nothing goes; the first commit gets its horizon.
        seal_with_filler(&log, "filler-3").await;
        let later = NOW_MS + 1_000;
        let report = log
            .compact_retaining(later, &limits, &input(&aborted, u64::MAX, u64::MAX))
            .await
            .expect("compact");
        assert_eq!((report.markers_horizon_set, report.markers_removed), (1, 0));
        let (_, markers) = contents(&log).await;
        assert_eq!(markers[0], (5, Some(later + RETENTION_MS)));
        assert_eq!(markers[1], (8, Some(horizon)));

        // Past the abort's horizon: it still stays while the broker serves
        // its aborted entry, or while its snapshot does not cover it.
        let past = horizon + RETENTION_MS;
        // The first commit's horizon passed too: it goes at once.
        for (round, (aborted, removable_below)) in [(&aborted[..], u64::MAX), (&[][..], 8)]
            .into_iter()
            .enumerate()
        {
            seal_with_filler(&log, &format!("filler-{removable_below}")).await;
            let report = log
                .compact_retaining(past, &limits, &input(aborted, u64::MAX, removable_below))
                .await
                .expect("compact");
            assert_eq!(
                report.markers_removed,
                u64::from(round == 0),
                "round {round}"
            );
            let (_, markers) = contents(&log).await;
            assert_eq!(markers[0], (8, Some(horizon)), "round {round}");
        }
        seal_with_filler(&log, "filler-last").await;
        let report = log
            .compact_retaining(past, &limits, &input(&[], u64::MAX, u64::MAX))
            .await
            .expect("compact");
        assert_eq!(report.markers_removed, 1, "the abort");
        let (records, markers) = contents(&log).await;
        assert_eq!(
            markers,
            vec![(commit, None), (commit + 2, None)],
            "the markers whose transactions keep data stay"
        );
        assert_eq!(
            values(&records),
            vec![
                ("b", "plain"),
                ("c", "open"),
                ("a", "after"),
                ("d", "committed-again"),
            ]
        );
        // And all of it after a reopen.
        log.close().await.expect("close");
        let log = PartitionLog::open(&path, config()).await.expect("reopen");
        assert_eq!(contents(&log).await, (records, markers));
        log.close().await.expect("close");
    });
}

#[test]
fn an_aborted_producers_last_batch_stays_empty_and_keeps_its_marker() {
    let dir = test_dir();
    let path = dir.path().join("txn-1");
    run(move || async move {
        let log = PartitionLog::open(&path, config()).await.expect("open");
        let last = append(
            &log,
            data(11, 0, true, &[("b", "aborted"), ("e", "aborted")]),
        )
        .await;
        let abort = append(&log, marker(11, false)).await;
        seal_with_filler(&log, "filler-1").await;
        let limits = CleanerLimits::default();
        let mut retained = input(&[(11, last, abort)], u64::MAX, u64::MAX);
        retained.retain.insert(last);
        for round in 0..2 {
            let report = log
                .compact_retaining(NOW_MS, &limits, &retained)
                .await
                .expect("compact");
            assert_eq!(report.markers_horizon_set, 0, "round {round}");
            let batches = read_all_batches(&log, 0).await;
            let first = BatchHeader::parse(&batches[0]).expect("header");
            assert_eq!(
                (
                    first.base_offset as u64,
                    first.records_count,
                    first.producer_id
                ),
                (last, 0, 11)
            );
            assert!(first.is_transactional());
            let second = BatchHeader::parse(&batches[1]).expect("header");
            assert!(second.is_control(), "the marker stays with its empty batch");
            seal_with_filler(&log, &format!("filler-round-{round}")).await;
        }
        // The producer wrote since: the empty batch goes, then the marker
        // gets its horizon.
        let report = log
            .compact_retaining(
                NOW_MS,
                &limits,
                &input(&[(11, last, abort)], u64::MAX, u64::MAX),
            )
            .await
            .expect("compact");
        assert_eq!(report.batches_dropped, 1);
        assert_eq!(report.markers_horizon_set, 0);
        seal_with_filler(&log, "filler-again").await;
        let report = log
            .compact_retaining(
                NOW_MS,
                &limits,
                &input(&[(11, last, abort)], u64::MAX, u64::MAX),
            )
            .await
            .expect("compact");
        assert_eq!(report.markers_horizon_set, 1);
        assert_eq!(report.aborts_without_data, vec![abort]);
        log.close().await.expect("close");
    });
}

#[test]
fn without_transaction_facts_transactional_batches_pass_through() {
    let dir = test_dir();
    let path = dir.path().join("txn-2");
    run(move || async move {
        let log = PartitionLog::open(&path, config()).await.expect("open");
        append(&log, data(-1, -1, false, &[("a", "plain")])).await;
        append(&log, data(11, 0, true, &[("a", "aborted")])).await;
        append(&log, marker(11, false)).await;
        seal_with_filler(&log, "filler").await;
        log.compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        let (records, markers) = contents(&log).await;
        assert_eq!(values(&records), vec![("a", "plain"), ("a", "aborted")]);
        assert_eq!(markers, vec![(2, None)]);
        log.close().await.expect("close");
    });
}
