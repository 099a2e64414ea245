//! Log compaction on a real filesystem: keep-latest-per-key across segments,
//! rewritten batches (every codec), tombstone expiry, grouping of small
//! segments, reads at removed offsets, indexes, reopen after a clean close
//! and after a crash at every step of the swap, and damage detection in
//! cleaned segments.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{
    batches_in_file, keyed_batch, read_all_batches, read_all_records, records_of, run,
    segment_files, split_batches, test_dir, TestRecord,
};
use kafki_storage::batch::BatchHeader;
use kafki_storage::cleaner::SwapStep;
use kafki_storage::compression::Compression;
use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
use kafki_storage::{CleanerLimits, CompactionConfig, LogConfig, LogError, PartitionLog};

/// Wall clock of the tests' cleaning passes (tombstone expiry is relative).
const NOW_MS: i64 = 1_700_000_000_000;

fn compacted_config() -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        index_interval_bytes: 512,
        hot_tail_bytes_max: 4 * 1024,
        preallocate_bytes: 64 * 1024,
        write_chunk_bytes: 16 * 1024,
        retention_age: None,
        compaction: Some(CompactionConfig {
            min_cleanable_dirty_ratio: 0.0,
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    }
}

fn key(index: usize) -> Vec<u8> {
    format!("key-{index:03}").into_bytes()
}

/// Appends one batch and returns its records with their offsets.
async fn append(
    log: &PartitionLog,
    codec: Compression,
    records: &[kafki_storage::batch::KeyValueRef<'_>],
) -> Vec<TestRecord> {
    let info = log
        .append(keyed_batch(codec, 1_000, records), 0)
        .await
        .expect("append");
    records
        .iter()
        .enumerate()
        .map(|(index, (key, value))| {
            (
                info.base_offset + index as u64,
                key.map(<[u8]>::to_vec),
                value.map(<[u8]>::to_vec),
            )
        })
        .collect()
}

/// `rounds` batches of `per_batch` updates to `keys` keys, cycling.
async fn write_updates(
    log: &PartitionLog,
    rounds: usize,
    per_batch: usize,
    keys: usize,
) -> Vec<TestRecord> {
    let mut appended = Vec::new();
    let mut sequence = 0usize;
    for round in 0..rounds {
        let values: Vec<(Vec<u8>, Vec<u8>)> = (0..per_batch)
            .map(|_| {
                sequence += 1;
                (
                    key(sequence % keys),
                    format!("value-{sequence}-{}", "x".repeat(40)).into_bytes(),
                )
            })
            .collect();
        let pairs: Vec<kafki_storage::batch::KeyValueRef<'_>> = values
            .iter()
            .map(|(key, value)| (Some(key.as_slice()), Some(value.as_slice())))
            .collect();
        let codec = Compression::ALL[round % Compression::ALL.len()];
        appended.extend(append(log, codec, &pairs).await);
    }
    log.flush().await.expect("flush");
    appended
}

/// `count` batches of unique keys: they push the latest records of the
/// keys written before into sealed segments.
async fn write_fillers(log: &PartitionLog, count: usize) -> Vec<TestRecord> {
    let mut appended = Vec::new();
    for index in 0..count {
        let key = format!("filler-{index}").into_bytes();
        let value = vec![b'f'; 150];
        appended.extend(append(log, Compression::None, &[(Some(&key), Some(&value))]).await);
    }
    log.flush().await.expect("flush");
    appended
}

/// The compaction guarantees for `got` (the whole log read back) against
/// everything `appended`: nothing invented, increasing offsets, each key's
/// latest record kept (tombstones aside when `tombstones_may_go`), every
/// record at or after `active_base` kept, and below `clean_end` (the clean
/// part) no key twice: there a record may only be superseded by one in the
/// dirty part that the last pass's key map did not reach.
fn check_compacted(
    appended: &[TestRecord],
    got: &[TestRecord],
    active_base: u64,
    clean_end: u64,
    tombstones_may_go: bool,
) {
    let by_offset: HashMap<u64, &TestRecord> =
        appended.iter().map(|record| (record.0, record)).collect();
    let mut latest: HashMap<&Option<Vec<u8>>, &TestRecord> = HashMap::new();
    let mut latest_clean: HashMap<&Option<Vec<u8>>, &TestRecord> = HashMap::new();
    for record in appended {
        latest.insert(&record.1, record);
        if record.0 < clean_end {
            latest_clean.insert(&record.1, record);
        }
    }
    for pair in got.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "offsets increase: {} then {}",
            pair[0].0,
            pair[1].0
        );
    }
    let got_offsets: HashMap<u64, &TestRecord> =
        got.iter().map(|record| (record.0, record)).collect();
    for record in got {
        let original = by_offset
            .get(&record.0)
            .unwrap_or_else(|| panic!("record at {} was never appended", record.0));
        assert_eq!(*original, record, "record at {} changed", record.0);
        if record.0 < clean_end {
            let newest = latest_clean[&record.1];
            assert_eq!(
                newest.0, record.0,
                "superseded record at {} survived cleaning",
                record.0
            );
        }
    }
    for newest in latest.values() {
        if newest.2.is_none() && tombstones_may_go {
            if !got_offsets.contains_key(&newest.0) {
                assert!(
                    got.iter().all(|record| record.1 != newest.1),
                    "a value of a key whose tombstone went came back"
                );
            }
            continue;
        }
        assert!(
            got_offsets.contains_key(&newest.0),
            "latest record at {} lost",
            newest.0
        );
    }
    for record in appended.iter().filter(|record| record.0 >= active_base) {
        assert!(
            got_offsets.contains_key(&record.0),
            "active-segment record at {} lost",
            record.0
        );
    }
}

fn active_base(log: &PartitionLog) -> u64 {
    *log.segment_bases().last().expect("a segment")
}

#[test]
fn keeps_the_latest_record_of_every_key_across_segments_and_restarts() {
    let dir = test_dir();
    let path = dir.path().join("compact-0");
    run(move || async move {
        let config = compacted_config();
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        let mut appended = write_updates(&log, 400, 6, 17).await;
        appended.extend(write_fillers(&log, 80).await);
        let before = log.segment_bases().len();
        assert!(before > 10, "small segments rolled: {before}");
        let size_before = log.offsets().size_bytes;
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert!(report.ran && report.records_removed > 500, "{report:?}");
        assert!(
            report.bytes_read > 0 && report.bytes_written > 0,
            "{report:?}"
        );
        assert_eq!(report.first_dirty_after, active_base(&log), "{report:?}");
        // Groups are made by input size (as Kafka does): full segments are
        // cleaned one by one, and merge in a later pass.
        assert!(log.offsets().size_bytes < size_before / 3);
        let got = read_all_records(&log).await;
        check_compacted(
            &appended,
            &got,
            active_base(&log),
            report.first_dirty_after,
            false,
        );
        // Nothing left to do: a second pass finds no dirty sealed segment.
        let again = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("again");
        assert!(!again.ran, "{again:?}");
        // New dirty data: the small cleaned segments merge now.
        appended.extend(write_updates(&log, 2, 6, 17).await);
        log.roll();
        appended.extend(
            append(
                &log,
                Compression::None,
                &[(Some(b"key-000"), Some(b"tail"))],
            )
            .await,
        );
        log.flush().await.expect("flush");
        let merged = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("merge");
        assert!(merged.ran, "{merged:?}");
        assert!(
            log.segment_bases().len() * 2 < before,
            "{:?}",
            log.segment_bases()
        );
        assert!(before > log.segment_bases().len());
        let report = merged;
        // The log goes on: appends land after the old end.
        let end = log.offsets().next_offset;
        let more = append(
            &log,
            Compression::None,
            &[(Some(b"key-001"), Some(b"newest"))],
        )
        .await;
        assert_eq!(more[0].0, end);
        appended.extend(more);
        log.flush().await.expect("flush");
        let clean_end = report.first_dirty_after;
        log.close().await.expect("close");

        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("reopen");
        let got = read_all_records(&log).await;
        check_compacted(&appended, &got, active_base(&log), clean_end, false);
        assert_eq!(got.last().map(|record| record.0), Some(end));
        log.abandon().await;

        let log = PartitionLog::open(&path, config)
            .await
            .expect("reopen after crash");
        assert_eq!(read_all_records(&log).await, got);
        log.close().await.expect("close");
    });
}

#[test]
fn the_map_includes_the_active_segment_but_only_durable_data() {
    let dir = test_dir();
    let path = dir.path().join("compact-1");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        let mut appended = write_updates(&log, 40, 4, 5).await;
        // Newer values of every key in the active segment, durable.
        for index in 0..5 {
            let value = format!("active-{index}").into_bytes();
            appended.extend(
                append(
                    &log,
                    Compression::None,
                    &[(Some(&key(index)), Some(&value))],
                )
                .await,
            );
        }
        log.flush().await.expect("flush");
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        let active = active_base(&log);
        let got = read_all_records(&log).await;
        check_compacted(&appended, &got, active, report.first_dirty_after, false);
        assert!(
            got.iter().all(|record| record.0 >= active),
            "every sealed record was superseded by the active segment: {:?}",
            got.iter()
                .filter(|record| record.0 < active)
                .collect::<Vec<_>>()
        );
        log.close().await.expect("close");
    });
}

#[test]
fn a_small_key_map_cleans_in_several_passes() {
    let dir = test_dir();
    let path = dir.path().join("compact-2");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        let appended = write_updates(&log, 100, 5, 40).await;
        // Room for 8 keys per pass.
        let limits = CleanerLimits {
            dedupe_buffer_bytes: 8 * kafki_storage::cleaner::KEY_MAP_BYTES_PER_ENTRY,
            ..CleanerLimits::default()
        };
        let mut passes = 0;
        let mut first_dirty = 0;
        loop {
            let report = log.compact(NOW_MS, &limits).await.expect("compact");
            if !report.ran {
                break;
            }
            passes += 1;
            assert!(report.map_keys <= 8, "{report:?}");
            assert!(
                report.first_dirty_after > first_dirty,
                "progress: {report:?}"
            );
            first_dirty = report.first_dirty_after;
            let got = read_all_records(&log).await;
            // Below the first dirty offset the log is deduplicated already.
            check_compacted(&appended, &got, active_base(&log), 0, false);
            assert!(passes < 200, "no end to the passes");
        }
        assert!(passes > 3, "several passes: {passes}");
        assert_eq!(first_dirty, active_base(&log));
        let got = read_all_records(&log).await;
        check_compacted(&appended, &got, active_base(&log), first_dirty, false);
        log.close().await.expect("close");
    });
}

/// A batch with producer fields set, for checking the rewrite keeps them.
fn producer_batch(codec: Compression, keys: &[&[u8]]) -> Bytes {
    let mut section = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let value = format!("value-{index}").into_bytes();
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc"))];
        encode_record(
            &mut section,
            &NewRecord {
                offset_delta: index as i32,
                timestamp_delta: index as i64 * 3,
                key: Some(key),
                value: Some(&value),
                headers,
            },
        );
    }
    let fields = BatchFields {
        last_offset_delta: keys.len() as i32 - 1,
        base_timestamp: 5_000,
        max_timestamp: 5_000 + (keys.len() as i64 - 1) * 3,
        producer_id: 77,
        producer_epoch: 3,
        base_sequence: 10,
        records_count: keys.len() as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, codec, &section);
    Bytes::from(batch)
}

#[test]
fn partial_batches_are_rewritten_with_their_header_fields_and_a_valid_crc_for_every_codec() {
    let dir = test_dir();
    let path = dir.path().join("compact-3");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        let mut originals = Vec::new();
        for (index, codec) in Compression::ALL.into_iter().enumerate() {
            let own = format!("own-{index}").into_bytes();
            let batch = producer_batch(codec, &[b"shared", &own, b"shared", b"dropped"]);
            let info = log.append(batch.clone(), 2).await.expect("append");
            originals.push((codec, info.base_offset, batch));
        }
        // Supersede "shared" and "dropped" in the active segment.
        log.roll();
        let newer = keyed_batch(
            Compression::None,
            9_000,
            &[
                (Some(b"shared"), Some(b"new")),
                (Some(b"dropped"), Some(b"new")),
            ],
        );
        log.append(newer, 2).await.expect("append");
        log.flush().await.expect("flush");
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert_eq!(report.batches_rewritten, 5, "{report:?}");
        assert_eq!(report.records_removed, 15, "{report:?}");
        let batches = read_all_batches(&log, 0).await;
        for (index, (codec, base_offset, original)) in originals.iter().enumerate() {
            let got = &batches[index];
            let header = kafki_storage::batch::validate_stored_batch(got).expect("CRC valid");
            let before = BatchHeader::parse(original).expect("header");
            assert_eq!(header.base_offset as u64, *base_offset, "{codec:?}");
            assert_eq!(
                header.last_offset_delta, 3,
                "{codec:?}: the offset span stays"
            );
            assert_eq!(header.records_count, 1, "{codec:?}");
            assert_eq!(header.partition_leader_epoch, 2, "{codec:?}");
            assert_eq!(
                header.attributes, before.attributes,
                "{codec:?}: same codec and timestamp type"
            );
            assert_eq!(
                (header.base_timestamp, header.max_timestamp),
                (before.base_timestamp, before.max_timestamp),
                "{codec:?}"
            );
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (77, 3, 10),
                "{codec:?}"
            );
            let records = records_of(got);
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].0, base_offset + 1);
            assert_eq!(
                records[0].1.as_deref(),
                Some(format!("own-{index}").as_bytes())
            );
            // The kept record is byte for byte the original (headers too).
            let section = kafki_storage::records::batch_records(got, 1 << 20).expect("section");
            let record = kafki_storage::records::records(&section, 1)
                .next()
                .expect("one")
                .expect("decodes");
            assert_eq!(record.timestamp_delta, 3);
            assert_eq!(
                record.headers().collect::<Vec<_>>(),
                vec![(b"trace".as_slice(), Some(b"abc".as_slice()))]
            );
        }
        log.close().await.expect("close");
    });
}

#[test]
fn tombstones_stay_for_delete_retention_after_their_first_cleaning() {
    let dir = test_dir();
    let path = dir.path().join("compact-4");
    run(move || async move {
        let retention = Duration::from_millis(64_000);
        let config = LogConfig {
            compaction: Some(CompactionConfig {
                min_cleanable_dirty_ratio: 0.0,
                delete_retention: retention,
                ..CompactionConfig::default()
            }),
            ..compacted_config()
        };
        let log = PartitionLog::open(&path, config).await.expect("open");
        append(
            &log,
            Compression::None,
            &[(Some(b"doomed"), Some(b"v1")), (Some(b"kept"), Some(b"v1"))],
        )
        .await;
        let tombstone = append(&log, Compression::Snappy, &[(Some(b"doomed"), None)]).await[0].0;
        // Each pass needs new dirty data in a sealed segment.
        let dirty_segment = |round: u8| {
            let log = &log;
            async move {
                log.roll();
                let value = vec![round; 10];
                append(log, Compression::None, &[(Some(b"filler"), Some(&value))]).await;
                log.roll();
                append(log, Compression::None, &[(Some(b"tail"), Some(&value))]).await;
                log.flush().await.expect("flush");
            }
        };
        dirty_segment(1).await;
        let first = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("first pass");
        let has =
            |records: &[TestRecord], offset: u64| records.iter().any(|record| record.0 == offset);
        let got = read_all_records(&log).await;
        assert!(
            has(&got, tombstone),
            "the first cleaning keeps the tombstone"
        );
        assert!(!got
            .iter()
            .any(|record| record.1.as_deref() == Some(b"doomed".as_slice()) && record.2.is_some()));
        assert_eq!(first.tombstones_removed, 0);
        // Just before delete.retention.ms after that cleaning: still there.
        dirty_segment(2).await;
        log.compact(
            NOW_MS + retention.as_millis() as i64 - 1,
            &CleanerLimits::default(),
        )
        .await
        .expect("second pass");
        assert!(has(&read_all_records(&log).await, tombstone));
        // After it (plus the 1/64 bucket rounding): gone, and nothing of "doomed" is left.
        dirty_segment(3).await;
        let third = log
            .compact(
                NOW_MS + retention.as_millis() as i64 * 65 / 64 + 1,
                &CleanerLimits::default(),
            )
            .await
            .expect("third pass");
        assert_eq!(third.tombstones_removed, 1, "{third:?}");
        let got = read_all_records(&log).await;
        assert!(!got
            .iter()
            .any(|record| record.1.as_deref() == Some(b"doomed".as_slice())));
        assert!(got
            .iter()
            .any(|record| record.1.as_deref() == Some(b"kept".as_slice())));
        log.close().await.expect("close");
    });
}

#[test]
fn small_cleaned_segments_are_grouped_up_to_segment_bytes() {
    let dir = test_dir();
    let path = dir.path().join("compact-5");
    run(move || async move {
        let config = compacted_config();
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        // 30 tiny segments of unique keys: nothing to remove, only grouping.
        let mut appended = Vec::new();
        for index in 0..30 {
            let value = vec![b'v'; 300];
            appended.extend(
                append(
                    &log,
                    Compression::None,
                    &[(Some(&key(index)), Some(&value))],
                )
                .await,
            );
            log.roll();
        }
        appended.extend(append(&log, Compression::None, &[(Some(b"tail"), Some(b"t"))]).await);
        log.flush().await.expect("flush");
        assert_eq!(log.segment_bases().len(), 31);
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert_eq!(report.records_removed, 0);
        let segments = log.segment_bases().len();
        assert!(
            (2..=5).contains(&segments),
            "grouped into {segments} segments"
        );
        let files = segment_files(&path);
        for file in &files[..files.len() - 1] {
            let bytes = std::fs::metadata(file).expect("stat").len();
            assert!(
                bytes <= config.segment_bytes,
                "{} is {bytes} bytes",
                file.display()
            );
        }
        assert_eq!(read_all_records(&log).await, appended);
        log.close().await.expect("close");
        let log = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(read_all_records(&log).await, appended);
        log.close().await.expect("close");
    });
}

/// For every offset in `[start, end)`: the batch a read returns first, found
/// independently by walking every batch.
async fn check_reads_at_every_offset(log: &PartitionLog, batches: &[Vec<u8>]) {
    let offsets = log.offsets();
    let headers: Vec<BatchHeader> = batches
        .iter()
        .map(|batch| BatchHeader::parse(batch).expect("header"))
        .collect();
    for offset in offsets.log_start_offset..offsets.next_offset {
        let read = log.read(offset, 1, u64::MAX).await.expect("read");
        let bytes = read.load().await.expect("load");
        let expected = headers
            .iter()
            .position(|header| header.last_offset() as u64 >= offset);
        match expected {
            Some(position) => {
                let found = split_batches(&bytes);
                assert_eq!(found.len(), 1, "offset {offset}");
                assert_eq!(found[0].1, batches[position], "read at {offset}");
            }
            None => assert!(bytes.is_empty(), "read at {offset} past the last batch"),
        }
    }
}

#[test]
fn reads_at_removed_offsets_return_the_next_batch_and_indexes_stay_right() {
    let dir = test_dir();
    let path = dir.path().join("compact-6");
    run(move || async move {
        let config = compacted_config();
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        let appended = write_updates(&log, 80, 3, 9).await;
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert!(report.batches_dropped > 0, "{report:?}");
        let batches = read_all_batches(&log, 0).await;
        check_reads_at_every_offset(&log, &batches).await;
        // ListOffsets by timestamp and max timestamp still find batches.
        let hit = log
            .find_by_timestamp(0)
            .await
            .expect("lookup")
            .expect("a batch");
        assert_eq!(
            hit.base_offset,
            BatchHeader::parse(&batches[0]).expect("h").base_offset as u64
        );
        assert!(log.max_timestamp().is_some());
        log.close().await.expect("close");

        // The sealed index files point at batch starts of the cleaned files.
        for file in segment_files(&path) {
            let base: u64 = file
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse().ok())
                .expect("base");
            let index = std::fs::read(file.with_extension("index")).expect("index file");
            let starts: BTreeMap<u64, BatchHeader> = batches_in_file(&file).into_iter().collect();
            for entry in index.chunks_exact(8) {
                let relative = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let position = u32::from_be_bytes([entry[4], entry[5], entry[6], entry[7]]);
                let header = starts
                    .get(&u64::from(position))
                    .expect("index entry at a batch start");
                assert_eq!(header.last_offset() as u64, base + u64::from(relative));
            }
        }
        // Reopened after a clean close, the loaded indexes serve the same reads.
        let log = PartitionLog::open(&path, config).await.expect("reopen");
        check_reads_at_every_offset(&log, &batches).await;
        check_compacted(
            &appended,
            &read_all_records(&log).await,
            active_base(&log),
            report.first_dirty_after,
            false,
        );
        log.close().await.expect("close");
    });
}

#[test]
fn a_compacted_away_log_end_keeps_its_offsets_after_a_crash() {
    let dir = test_dir();
    let path = dir.path().join("compact-7");
    run(move || async move {
        let config = compacted_config();
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        append(&log, Compression::None, &[(Some(b"a"), Some(b"1"))]).await;
        append(&log, Compression::None, &[(Some(b"b"), Some(b"1"))]).await;
        log.roll();
        append(&log, Compression::None, &[(Some(b"a"), Some(b"2"))]).await;
        // A record without a key: a compacted log drops it.
        append(&log, Compression::None, &[(None, Some(b"no key"))]).await;
        log.flush().await.expect("flush");
        // The active segment after this roll is empty and has no file yet.
        log.roll();
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert_eq!(
            (report.records_removed, report.keyless_removed),
            (2, 1),
            "{report:?}"
        );
        let end = log.offsets().next_offset;
        assert_eq!(end, 4);
        // A read in the compacted-away tail is empty, not an error.
        let tail = log
            .read(3, 1 << 20, u64::MAX)
            .await
            .expect("read in the gap");
        assert!(tail.load().await.expect("load").is_empty());
        let got: Vec<u64> = read_all_records(&log)
            .await
            .iter()
            .map(|record| record.0)
            .collect();
        assert_eq!(got, vec![1, 2]);
        log.abandon().await;
        let log = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(
            log.offsets().next_offset,
            end,
            "offsets are never handed out twice"
        );
        let info = log
            .append(
                keyed_batch(Compression::None, 1, &[(Some(b"c"), Some(b"1"))]),
                0,
            )
            .await
            .expect("append");
        assert_eq!(info.base_offset, end);
        log.close().await.expect("close");
    });
}

/// Builds the same log in `path` every time.
async fn build_log(path: &Path, config: &LogConfig) -> (PartitionLog, Vec<TestRecord>) {
    let log = PartitionLog::open(path, config.clone())
        .await
        .expect("open");
    let mut appended = write_updates(&log, 150, 4, 11).await;
    appended.extend(append(&log, Compression::None, &[(Some(&key(3)), None)]).await);
    appended.extend(write_fillers(&log, 60).await);
    (log, appended)
}

fn crash_case(
    base: PathBuf,
    step: Option<SwapStep>,
) -> (Vec<TestRecord>, Vec<TestRecord>, Vec<TestRecord>) {
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let config = compacted_config();
        let (twin, _) = build_log(&base.join("twin"), &config).await;
        let report = twin
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("twin");
        assert!(report.groups_replaced >= 2, "{report:?}");
        let compacted = read_all_records(&twin).await;
        twin.close().await.expect("close twin");

        let path = base.join("crashed");
        let (log, appended) = build_log(&path, &config).await;
        let limits = CleanerLimits {
            crash_at: step,
            ..CleanerLimits::default()
        };
        let report = log.compact(NOW_MS, &limits).await.expect("compact");
        assert_eq!(report.simulated_crash, step.is_some());
        if step.is_some() {
            assert!(
                log.append(keyed_batch(Compression::None, 1, &[(Some(b"x"), None)]), 0)
                    .await
                    .is_err(),
                "a crashed log takes no writes"
            );
        }
        log.abandon().await;
        let names: Vec<String> = std::fs::read_dir(&path)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let has_cleaned = names.iter().any(|name| name.ends_with(".cleaned"));
        let has_next = names.iter().any(|name| name == "cleaner-checkpoint.swap");
        let pending = std::fs::read_to_string(path.join("cleaner-checkpoint"))
            .ok()
            .and_then(|text| kafki_storage::checkpoint::CleanerCheckpoint::decode(&text))
            .is_some_and(|checkpoint| !checkpoint.pending().is_empty());
        match step {
            Some(SwapStep::BeforeCommit) => {
                assert!(has_cleaned && has_next && !pending, "{names:?}")
            }
            Some(SwapStep::AfterCommit) => assert!(has_cleaned && pending, "{names:?}"),
            Some(_) => assert!(pending && !has_next, "{names:?}"),
            None => assert!(!has_cleaned && !has_next && !pending, "{names:?}"),
        }
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("recovering open");
        let recovered = read_all_records(&log).await;
        let leftovers: Vec<String> = std::fs::read_dir(&path)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".cleaned") || name.ends_with(".swap"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Cleaning goes on from there.
        log.compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact after recovery");
        let after = read_all_records(&log).await;
        check_compacted(&appended, &after, active_base(&log), 0, false);
        log.close().await.expect("close");
        tx.send((appended, compacted, recovered)).expect("send");
    });
    rx.recv().expect("results")
}

#[test]
fn a_crash_at_every_step_of_the_swap_leaves_the_old_or_the_new_segments() {
    let dir = test_dir();
    for (name, step, expect_new) in [
        ("before-commit", Some(SwapStep::BeforeCommit), false),
        ("after-commit", Some(SwapStep::AfterCommit), true),
        ("after-one-group", Some(SwapStep::AfterGroups(1)), true),
        ("before-cleared", Some(SwapStep::BeforeCleared), true),
        ("no-crash", None, true),
    ] {
        let (appended, compacted, recovered) = crash_case(dir.path().join(name), step);
        if expect_new {
            assert_eq!(recovered, compacted, "{name}: the new segments");
        } else {
            assert_eq!(recovered, appended, "{name}: the old segments");
        }
    }
}

#[test]
fn leftover_cleaned_files_are_discarded_and_a_damaged_checkpoint_beside_them_refuses_the_open() {
    let dir = test_dir();
    let path = dir.path().join("compact-8");
    run(move || async move {
        let config = compacted_config();
        let (log, appended) = build_log(&path, &config).await;
        log.close().await.expect("close");
        let first = segment_files(&path)[0].clone();
        let name = first
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        std::fs::write(path.join(format!("{name}.cleaned")), b"half written").expect("write");
        std::fs::write(
            path.join(format!("{}.cleaned", name.replace(".log", ".index"))),
            b"x",
        )
        .expect("write");
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        assert_eq!(read_all_records(&log).await, appended);
        assert!(!path.join(format!("{name}.cleaned")).exists());
        log.close().await.expect("close");

        // A stale next checkpoint (the crash came before the commit) goes too.
        std::fs::write(path.join("cleaner-checkpoint.swap"), b"0\n0\n0\n0\n").expect("write");
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        assert!(!path.join("cleaner-checkpoint.swap").exists());
        log.close().await.expect("close");

        // A checkpoint that does not decode beside cleaned files: they may
        // be committed output whose old segments are gone. Refuse to guess.
        std::fs::write(path.join("cleaner-checkpoint"), b"0\n1\ngarbage").expect("write");
        std::fs::write(path.join(format!("{name}.cleaned")), b"x").expect("write");
        assert!(matches!(
            PartitionLog::open(&path, config.clone()).await,
            Err(LogError::Damaged { .. })
        ));
        // Without cleaned files it only means "clean again from the start".
        std::fs::remove_file(path.join(format!("{name}.cleaned"))).expect("remove");
        let log = PartitionLog::open(&path, config).await.expect("open");
        assert_eq!(read_all_records(&log).await, appended);
        log.close().await.expect("close");
    });
}

/// Compacts, closes, and returns the path of a cleaned segment holding at
/// least three batches with gaps between them, and those batches.
fn cleaned_segment_with_gaps(path: PathBuf) -> (PathBuf, Vec<(u64, BatchHeader)>) {
    run({
        let path = path.clone();
        move || async move {
            let log = PartitionLog::open(&path, compacted_config())
                .await
                .expect("open");
            // Unique keys between updates of three hot keys: once the hot
            // updates go, the unique batches stay with gaps between them.
            for index in 0..120 {
                let unique = format!("unique-{index}").into_bytes();
                let hot = key(index % 3);
                let value = vec![b'u'; 60];
                append(&log, Compression::None, &[(Some(&unique), Some(&value))]).await;
                append(
                    &log,
                    Compression::Lz4,
                    &[(Some(&hot), Some(&value)), (Some(&hot), Some(b"x"))],
                )
                .await;
            }
            log.flush().await.expect("flush");
            log.compact(NOW_MS, &CleanerLimits::default())
                .await
                .expect("compact");
            log.close().await.expect("close");
        }
    });
    for file in segment_files(&path) {
        let batches = batches_in_file(&file);
        let gaps = batches
            .windows(2)
            .any(|pair| pair[1].1.base_offset > pair[0].1.last_offset() + 1);
        if batches.len() >= 3 && gaps {
            return (file, batches);
        }
    }
    panic!("no cleaned segment with gaps");
}

#[test]
fn damage_in_a_cleaned_segment_is_still_caught() {
    let dir = test_dir();
    // A flipped record byte (inside the CRC): never served.
    let path = dir.path().join("flip-0");
    let (file, batches) = cleaned_segment_with_gaps(path.clone());
    let (position, damaged) = batches[1];
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[position as usize + 70] ^= 0x55;
    std::fs::write(&file, &bytes).expect("write");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        assert!(matches!(
            log.read(damaged.base_offset as u64, 1 << 20, u64::MAX)
                .await,
            Err(LogError::Damaged { .. })
        ));
        log.close().await.expect("close");
    });

    // A base offset going backwards (outside the CRC), found by a full scan.
    let path = dir.path().join("offset-0");
    let (file, batches) = cleaned_segment_with_gaps(path.clone());
    let (position, header) = batches[2];
    let mut bytes = std::fs::read(&file).expect("read");
    let back = batches[1].1.base_offset;
    bytes[position as usize..position as usize + 8].copy_from_slice(&back.to_be_bytes());
    std::fs::write(&file, &bytes).expect("write");
    // Forget that the shutdown was clean: every segment is scanned.
    std::fs::remove_file(path.join(".kafki-clean-shutdown")).expect("marker");
    std::fs::write(path.join("recovery-point"), "0\n").expect("recovery point");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        // The segment is cut at the damaged batch; nothing after it is served.
        let got = read_all_records(&log).await;
        assert!(
            got.iter()
                .all(|record| record.0 < header.base_offset as u64),
            "served past the damage"
        );
        log.close().await.expect("close");
    });

    // A base offset beyond the next segment: caught by the reads' header walk.
    let path = dir.path().join("beyond-0");
    let (file, batches) = cleaned_segment_with_gaps(path.clone());
    let (position, header) = batches[2];
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[position as usize..position as usize + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&file, &bytes).expect("write");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        let damaged = header.base_offset as u64;
        // Either recovery cut the log before it, or reads stop at it.
        let mut offset = log.offsets().log_start_offset;
        let mut stopped = log.offsets().next_offset <= damaged;
        while offset < log.offsets().next_offset {
            match log.read(offset, 1 << 20, u64::MAX).await {
                Ok(read) => {
                    let bytes = read.load().await.expect("load");
                    if bytes.is_empty() {
                        break;
                    }
                    for (header, _) in split_batches(&bytes) {
                        assert!(header.base_offset < 1 << 40, "the damaged batch was served");
                        offset = header.last_offset() as u64 + 1;
                    }
                }
                Err(LogError::Damaged { .. }) => {
                    stopped = true;
                    break;
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert!(stopped, "the damage went unnoticed");
        log.close().await.expect("close");
    });
}

#[test]
fn a_reader_holding_a_region_of_a_replaced_segment_keeps_reading_it() {
    let dir = test_dir();
    let path = dir.path().join("compact-9");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        write_updates(&log, 100, 4, 5).await;
        write_fillers(&log, 80).await;
        let held = log.read(0, 1 << 20, u64::MAX).await.expect("read");
        assert!(matches!(
            held.chunks[0],
            kafki_storage::ReadChunk::File { .. }
        ));
        let before = held.load().await.expect("load before");
        let report = log
            .compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        assert!(report.groups_replaced > 0, "{report:?}");
        // The old file is unlinked or renamed over, never changed in place.
        assert_eq!(held.load().await.expect("load after"), before);
        let now = log.read(0, 1 << 20, u64::MAX).await.expect("read");
        assert_ne!(now.load().await.expect("load"), before);
        log.close().await.expect("close");
    });
}

#[test]
fn a_record_a_crash_could_still_lose_supersedes_nothing() {
    let dir = test_dir();
    let path = dir.path().join("compact-10");
    run(move || async move {
        let config = LogConfig {
            sync_policy: kafki_storage::SyncPolicy::Never,
            ..compacted_config()
        };
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        let durable = append(&log, Compression::None, &[(Some(b"a"), Some(b"durable"))]).await;
        log.roll();
        append(&log, Compression::None, &[(Some(b"b"), Some(b"1"))]).await;
        log.flush().await.expect("flush");
        // Written at most, not synced: a power cut may lose it.
        let newer = append(&log, Compression::None, &[(Some(b"a"), Some(b"newer"))]).await;
        log.wait_written(newer[0].0 + 1).await.expect("written");
        assert!(log.offsets().durable_offset <= newer[0].0);
        log.compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        let got = read_all_records(&log).await;
        assert!(got.contains(&durable[0]), "{got:?}");
        // Once it is durable, the next pass removes the old value.
        log.flush().await.expect("flush");
        log.roll();
        append(&log, Compression::None, &[(Some(b"c"), Some(b"1"))]).await;
        log.flush().await.expect("flush");
        log.compact(NOW_MS, &CleanerLimits::default())
            .await
            .expect("compact");
        let got = read_all_records(&log).await;
        assert!(!got.contains(&durable[0]), "{got:?}");
        assert!(got.contains(&newer[0]));
        log.close().await.expect("close");
    });
}

#[test]
fn a_damaged_base_offset_after_the_checkpoint_is_caught_in_a_cleaned_segment() {
    let dir = test_dir();
    let path = dir.path().join("compact-11");
    let (tx, rx) = std::sync::mpsc::channel();
    run({
        let path = path.clone();
        move || async move {
            let log = PartitionLog::open(&path, compacted_config())
                .await
                .expect("open");
            write_updates(&log, 100, 4, 30).await;
            write_fillers(&log, 80).await;
            log.compact(NOW_MS, &CleanerLimits::default())
                .await
                .expect("compact");
            // Truncate into the first cleaned segment: it becomes active
            // again, with gaps below the (lowered) checkpoint and new
            // contiguous batches after it.
            let second = log.segment_bases()[1];
            log.truncate_to(second - 1).await.expect("truncate");
            let mut last = 0;
            for index in 0..3 {
                let value = vec![index as u8; 100];
                last = append(&log, Compression::None, &[(Some(b"new"), Some(&value))]).await[0].0;
            }
            log.flush().await.expect("flush");
            log.abandon().await;
            tx.send(last).expect("send");
        }
    });
    let last = rx.recv().expect("offset");
    let file = segment_files(&path)[0].clone();
    let batches = batches_in_file(&file);
    let (position, header) = *batches.last().expect("batch");
    assert_eq!(header.base_offset as u64, last);
    // Base offset lies outside the CRC: push it forward, past any gap the
    // cleaner could have made.
    let mut bytes = std::fs::read(&file).expect("read");
    let forward = (header.base_offset + (1 << 20)).to_be_bytes();
    bytes[position as usize..position as usize + 8].copy_from_slice(&forward);
    std::fs::write(&file, &bytes).expect("write");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        assert_eq!(
            log.offsets().next_offset,
            last,
            "recovery cut the log at the damaged batch"
        );
        log.close().await.expect("close");
    });
}

/// Cleaner throughput on this machine (not a pass/fail test):
/// `KAFKI_CLEANER_BENCH_MB=256 cargo test -p kafki-storage --release --test compaction -- --ignored --nocapture cleaner_throughput`
#[test]
#[ignore]
fn cleaner_throughput() {
    let megabytes: usize = std::env::var("KAFKI_CLEANER_BENCH_MB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    for codec in [Compression::None, Compression::Lz4] {
        let dir = test_dir();
        let path = dir.path().join("bench-0");
        run(move || async move {
            let config = LogConfig {
                segment_bytes: 16 << 20,
                ..compacted_config()
            };
            let log = PartitionLog::open(&path, config).await.expect("open");
            // 1 KiB values, 16 per batch, over 100 000 keys: each key is
            // written about 2.6 times in 256 MiB.
            let batches = megabytes * 1024 / 16;
            let mut sequence: u64 = 0;
            let started = std::time::Instant::now();
            for _ in 0..batches {
                let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..16)
                    .map(|_| {
                        sequence += 1;
                        let key = format!("key-{}", sequence.wrapping_mul(2_654_435_761) % 100_000);
                        // Half random, half zeros: lz4 halves it.
                        let mut value = vec![0u8; 1024];
                        let mut state = sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                        for chunk in value[..512].chunks_mut(8) {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            chunk.copy_from_slice(&state.to_be_bytes());
                        }
                        (key.into_bytes(), value)
                    })
                    .collect();
                let pairs: Vec<kafki_storage::batch::KeyValueRef<'_>> = owned
                    .iter()
                    .map(|(key, value)| (Some(key.as_slice()), Some(value.as_slice())))
                    .collect();
                log.append(keyed_batch(codec, 1, &pairs), 0)
                    .await
                    .expect("append");
            }
            log.flush().await.expect("flush");
            let written = started.elapsed();
            let before = log.offsets().size_bytes;
            let log = std::rc::Rc::new(log);
            // Meanwhile, on the same executor: one small durable append at a
            // time, as a producer with acks=all would do.
            let running = std::rc::Rc::new(std::cell::Cell::new(true));
            let appender = glommio::spawn_local({
                let log = log.clone();
                let running = running.clone();
                async move {
                    let mut latencies = Vec::new();
                    while running.get() {
                        let started = std::time::Instant::now();
                        let info = log
                            .append(
                                keyed_batch(Compression::None, 1, &[(Some(b"probe"), Some(b"x"))]),
                                0,
                            )
                            .await
                            .expect("append");
                        log.wait_durable(info.last_offset + 1)
                            .await
                            .expect("durable");
                        latencies.push(started.elapsed().as_micros() as u64);
                    }
                    latencies
                }
            });
            let started = std::time::Instant::now();
            let report = log
                .compact(NOW_MS, &CleanerLimits::default())
                .await
                .expect("compact");
            let elapsed = started.elapsed().as_secs_f64();
            running.set(false);
            let mut latencies = appender.await;
            latencies.sort_unstable();
            let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
            println!(
                "{codec:?}: {} durable appends during the pass, latency p50 {} µs, p99 {} µs, max {} µs",
                latencies.len(),
                percentile(0.5),
                percentile(0.99),
                percentile(1.0)
            );
            let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
            println!(
                "{codec:?}: log {:.0} MiB (appended in {:.1} s); pass {elapsed:.2} s: read {:.0} MiB ({:.0} MiB/s), wrote {:.0} MiB, removed {} records, {} keys; log now {:.0} MiB; flush lock held {} µs",
                mib(before),
                written.as_secs_f64(),
                mib(report.bytes_read),
                mib(report.bytes_read) / elapsed,
                mib(report.bytes_written),
                report.records_removed,
                report.map_keys,
                mib(log.offsets().size_bytes),
                report.lock_held_us,
            );
            let Ok(log) = std::rc::Rc::try_unwrap(log) else {
                panic!("the appender still holds the log");
            };
            log.close().await.expect("close");
        });
    }
}

#[test]
fn a_retained_batch_whose_records_all_go_stays_as_an_empty_batch() {
    let dir = test_dir();
    let path = dir.path().join("compact-12");
    run(move || async move {
        let log = PartitionLog::open(&path, compacted_config())
            .await
            .expect("open");
        let kept = log
            .append(producer_batch(Compression::Gzip, &[b"x", b"y"]), 0)
            .await
            .expect("append")
            .base_offset;
        let dropped = log
            .append(producer_batch(Compression::Lz4, &[b"x", b"y"]), 0)
            .await
            .expect("append")
            .base_offset;
        log.roll();
        append(
            &log,
            Compression::None,
            &[(Some(b"x"), Some(b"new")), (Some(b"y"), Some(b"new"))],
        )
        .await;
        log.flush().await.expect("flush");
        let input = kafki_storage::CleanerInput {
            retain: std::collections::HashSet::from([kept]),
            transactions: None,
        };
        let report = log
            .compact_retaining(NOW_MS, &CleanerLimits::default(), &input)
            .await
            .expect("compact");
        assert_eq!((report.batches_rewritten, report.batches_dropped), (1, 1));
        let batches = read_all_batches(&log, 0).await;
        let header = BatchHeader::parse(&batches[0]).expect("header");
        assert_eq!(header.base_offset as u64, kept);
        assert_eq!(header.records_count, 0);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (77, 3, 10)
        );
        assert!(batches
            .iter()
            .all(|batch| BatchHeader::parse(batch).expect("h").base_offset as u64 != dropped));
        log.close().await.expect("close");
    });
}
