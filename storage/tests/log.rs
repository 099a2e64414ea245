//! End-to-end behaviour of the partition log on a real filesystem: appends,
//! stages, reads from memory and files, lookups, truncation, retention,
//! leader epochs, and recovery from damaged segment files.

mod common;

use std::time::Duration;

use common::{batches_in_file, make_batch, run, segment_files, split_batches, test_dir};
use kafki_storage::{LogConfig, LogError, PartitionLog, ReadChunk, SyncPolicy, TimestampType};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        hot_tail_bytes_max: 8 * 1024,
        preallocate_bytes: 128 * 1024,
        write_chunk_bytes: 16 * 1024,
        retention_age: None,
        ..LogConfig::default()
    }
}

#[test]
fn append_assigns_offsets_and_reads_back_from_memory_and_files() {
    let dir = test_dir();
    let path = dir.path().join("topic-0");
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("open");
        let mut sent = Vec::new();
        for index in 0..200u64 {
            let batch = make_batch(1_000 + index as i64, 3, 100, index as u8);
            let info = log.append(batch.clone(), 0).await.expect("append");
            assert_eq!(info.base_offset, index * 3);
            assert_eq!(info.last_offset, index * 3 + 2);
            sent.push(batch);
        }
        log.flush().await.expect("flush");
        let offsets = log.offsets();
        assert_eq!(offsets.next_offset, 600);
        assert_eq!(offsets.durable_offset, 600);
        assert!(
            log.segment_bases().len() > 1,
            "64 KiB segments must have rolled"
        );

        // A read at an offset inside a batch returns that whole batch first.
        let result = log.read(301, 1 << 20, u64::MAX).await.expect("read");
        let batches = split_batches(&result.load().await.expect("load"));
        assert_eq!(batches[0].0.base_offset, 300);
        assert_eq!(
            result.next_offset,
            batches.last().expect("some").0.last_offset() as u64 + 1
        );
        for (header, bytes) in &batches {
            let index = header.base_offset as usize / 3;
            assert_eq!(bytes[61..], sent[index][61..], "batch {index} body");
        }
        // Old data comes as a file region (zero-copy), recent data from memory.
        let old = log.read(0, 4096, u64::MAX).await.expect("read old");
        assert!(
            matches!(old.chunks[0], ReadChunk::File { .. }),
            "{:?}",
            old.chunks
        );
        let recent = log.read(597, 4096, u64::MAX).await.expect("read recent");
        assert!(
            matches!(recent.chunks[0], ReadChunk::Memory(_)),
            "{:?}",
            recent.chunks
        );
        log.close().await.expect("close");

        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("reopen");
        assert_eq!(log.offsets().next_offset, 600);
        let mut offset = 0;
        while offset < 600 {
            let result = log.read(offset, 5000, u64::MAX).await.expect("read");
            assert!(result.bytes <= 5000 || result.chunks.len() == 1);
            for (header, bytes) in split_batches(&result.load().await.expect("load")) {
                assert_eq!(header.base_offset as u64, offset);
                assert_eq!(bytes[61..], sent[offset as usize / 3][61..]);
                offset = header.last_offset() as u64 + 1;
            }
        }
        let info = log
            .append(make_batch(5, 1, 10, 0), 0)
            .await
            .expect("append after reopen");
        assert_eq!(info.base_offset, 600);
        log.close().await.expect("close");
    });
}

#[test]
fn reads_respect_upper_bound_and_byte_budget() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("open");
        for index in 0..50 {
            log.append(make_batch(index, 2, 200, 1), 0)
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        let bounded = log.read(0, 1 << 20, 10).await.expect("read");
        let batches = split_batches(&bounded.load().await.expect("load"));
        assert_eq!(batches.len(), 5);
        assert_eq!(bounded.next_offset, 10);
        // A budget smaller than one batch still returns that one batch.
        let tiny = log.read(4, 10, u64::MAX).await.expect("read");
        assert_eq!(split_batches(&tiny.load().await.expect("load")).len(), 1);
        // At the upper bound: nothing. Past the end: out of range.
        assert_eq!(log.read(10, 100, 10).await.expect("read").bytes, 0);
        assert!(matches!(
            log.read(101, 100, u64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        log.close().await.expect("close");
    });
}

#[test]
fn invalid_batches_are_refused_and_nothing_is_appended() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            max_batch_bytes: 2000,
            ..small_config()
        };
        let log = PartitionLog::open(&path, config).await.expect("open");
        let good = make_batch(1, 1, 10, 0);
        let mut damaged = good.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            log.append(damaged.into(), 0).await,
            Err(LogError::InvalidBatch(_))
        ));
        assert!(matches!(
            log.append(make_batch(1, 1, 3000, 0), 0).await,
            Err(LogError::BatchTooLarge { .. })
        ));
        assert!(matches!(
            log.append(good.slice(..40), 0).await,
            Err(LogError::InvalidBatch(_))
        ));
        assert_eq!(log.offsets().next_offset, 0);
        log.append(good, 0).await.expect("good batch");
        assert_eq!(log.offsets().next_offset, 1);
        log.close().await.expect("close");
    });
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = std::rc::Rc::new(
            PartitionLog::open(&path, small_config())
                .await
                .expect("open"),
        );
        let mut waiters = Vec::new();
        for index in 0..200 {
            let log = log.clone();
            waiters.push(glommio::spawn_local(async move {
                let info = log
                    .append(make_batch(index, 1, 50, 0), 0)
                    .await
                    .expect("append");
                log.wait_durable(info.last_offset + 1)
                    .await
                    .expect("durable");
            }));
        }
        for waiter in waiters {
            waiter.await;
        }
        let stats = log.stats();
        assert_eq!(log.offsets().durable_offset, 200);
        assert!(stats.fsyncs >= 1);
        assert!(
            stats.fsyncs < 100,
            "200 concurrent appends took {} fsyncs",
            stats.fsyncs
        );
        match std::rc::Rc::try_unwrap(log) {
            Ok(log) => log.close().await.expect("close"),
            Err(_) => panic!("log still shared"),
        }
    });
}

#[test]
fn sync_policies_decide_when_data_becomes_durable() {
    let dir = test_dir();
    let base = dir.path().to_path_buf();
    run(move || async move {
        let never = LogConfig {
            sync_policy: SyncPolicy::Never,
            ..small_config()
        };
        let log = PartitionLog::open(base.join("never-0"), never)
            .await
            .expect("open");
        log.append(make_batch(1, 1, 10, 0), 0)
            .await
            .expect("append");
        log.wait_written(1).await.expect("written");
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            log.offsets().durable_offset,
            0,
            "Never must not sync by itself"
        );
        log.wait_durable(1).await.expect("explicit sync");
        assert_eq!(log.offsets().durable_offset, 1);
        log.close().await.expect("close");

        let interval = LogConfig {
            sync_policy: SyncPolicy::Interval {
                messages: 5,
                interval: Duration::from_millis(50),
            },
            ..small_config()
        };
        let log = PartitionLog::open(base.join("interval-0"), interval)
            .await
            .expect("open");
        log.append(make_batch(1, 1, 10, 0), 0)
            .await
            .expect("append");
        log.wait_written(1).await.expect("written");
        assert_eq!(log.offsets().durable_offset, 0);
        glommio::timer::sleep(Duration::from_millis(120)).await;
        assert_eq!(log.offsets().durable_offset, 1, "flush.ms must sync");
        for _ in 0..5 {
            log.append(make_batch(1, 1, 10, 0), 0)
                .await
                .expect("append");
        }
        log.wait_written(6).await.expect("written");
        glommio::timer::sleep(Duration::from_millis(5)).await;
        assert_eq!(log.offsets().durable_offset, 6, "flush.messages must sync");
        log.close().await.expect("close");
    });
}

#[test]
fn timestamp_lookup_is_exact_and_log_append_time_stamps_batches() {
    let dir = test_dir();
    let base = dir.path().to_path_buf();
    run(move || async move {
        let log = PartitionLog::open(base.join("ts-0"), small_config())
            .await
            .expect("open");
        // Timestamps rise by 10 per batch, with one out-of-order batch.
        for index in 0..300i64 {
            let timestamp = if index == 150 { 5 } else { 1_000 + index * 10 };
            log.append(make_batch(timestamp, 2, 100, 0), 0)
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        for probe in [0i64, 1_000, 1_005, 1_010, 2_500, 2_505, 3_990, 3_991] {
            let hit = log.find_by_timestamp(probe).await.expect("lookup");
            let expected = (0..300i64)
                .find(|index| {
                    let timestamp = if *index == 150 { 5 } else { 1_000 + index * 10 };
                    timestamp >= probe
                })
                .map(|index| index as u64 * 2);
            assert_eq!(
                hit.map(|hit| hit.base_offset),
                expected,
                "timestamp {probe}"
            );
        }
        assert_eq!(
            log.max_timestamp().map(|(timestamp, _)| timestamp),
            Some(3_990)
        );
        log.close().await.expect("close");
        // The same answers after a clean reopen (from the index files).
        let log = PartitionLog::open(base.join("ts-0"), small_config())
            .await
            .expect("reopen");
        let hit = log
            .find_by_timestamp(2_505)
            .await
            .expect("lookup")
            .expect("hit");
        assert_eq!(hit.base_offset, 302);
        assert_eq!(
            log.max_timestamp().map(|(timestamp, _)| timestamp),
            Some(3_990)
        );
        log.close().await.expect("close");

        let append_time = LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..small_config()
        };
        let log = PartitionLog::open(base.join("lat-0"), append_time)
            .await
            .expect("open");
        let info = log
            .append(make_batch(7, 2, 10, 0), 0)
            .await
            .expect("append");
        let stamped = info.log_append_time_ms.expect("stamped");
        assert!(stamped > 1_600_000_000_000);
        let read = log.read(0, 1000, u64::MAX).await.expect("read");
        let batches = split_batches(&read.load().await.expect("load"));
        assert_eq!(batches[0].0.max_timestamp, stamped);
        log.close().await.expect("close");
    });
}

#[test]
fn truncation_both_ends_and_retention() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            retention_bytes: Some(100 * 1024),
            ..small_config()
        };
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        for index in 0..400 {
            log.append(make_batch(index, 1, 1000, 0), 0)
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        // Suffix: cutting inside the log drops everything from that batch on.
        log.truncate_to(350).await.expect("truncate");
        assert_eq!(log.offsets().next_offset, 350);
        let info = log
            .append(make_batch(1, 1, 10, 9), 0)
            .await
            .expect("append");
        assert_eq!(info.base_offset, 350);
        let read = log.read(349, 1 << 20, u64::MAX).await.expect("read");
        let batches = split_batches(&read.load().await.expect("load"));
        assert_eq!(batches[0].0.base_offset, 349);
        let read = log
            .read(read.next_offset, 1 << 20, u64::MAX)
            .await
            .expect("read");
        let batches = split_batches(&read.load().await.expect("load"));
        assert_eq!(batches[0].0.base_offset, 350);
        assert_eq!(batches[0].1[61..], make_batch(1, 1, 10, 9)[61..]);
        // Prefix: DeleteRecords moves the start; reads below it are refused.
        let start = log.truncate_before(120).await.expect("delete records");
        assert_eq!(start, 120);
        assert!(matches!(
            log.read(119, 100, u64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            split_batches(
                &log.read(120, 100, u64::MAX)
                    .await
                    .expect("read")
                    .load()
                    .await
                    .expect("load")
            )[0]
            .0
            .base_offset,
            120
        );
        // Retention by bytes removes whole sealed segments from the front.
        let before = log.segment_bases();
        let deleted = log.enforce_retention(0).await.expect("retention");
        let after = log.segment_bases();
        assert!(deleted > 0);
        assert_eq!(after.len(), before.len() - deleted);
        assert!(log.offsets().size_bytes <= 100 * 1024 + config.segment_bytes);
        assert_eq!(log.offsets().log_start_offset, after[0].max(120));
        log.close().await.expect("close");

        let log = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(log.segment_bases(), after);
        assert_eq!(log.offsets().next_offset, 351);
        log.close().await.expect("close");
    });
}

#[test]
fn retention_by_age_uses_the_newest_timestamp_of_each_segment() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let config = LogConfig {
            retention_age: Some(Duration::from_secs(60)),
            ..small_config()
        };
        let log = PartitionLog::open(&path, config).await.expect("open");
        let now = 10_000_000i64;
        for index in 0..100i64 {
            // The first half is old, the second half recent.
            let timestamp = if index < 50 {
                now - 3_600_000
            } else {
                now - 1_000
            };
            log.append(make_batch(timestamp, 1, 3000, 0), 0)
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        log.enforce_retention(now).await.expect("retention");
        let start = log.offsets().log_start_offset;
        assert!(start > 0 && start <= 50, "log start {start}");
        let hit = log
            .find_by_timestamp(0)
            .await
            .expect("lookup")
            .expect("hit");
        assert_eq!(hit.base_offset, start);
        log.close().await.expect("close");
    });
}

#[test]
fn leader_epochs_are_checkpointed_and_stale_epochs_refused() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("open");
        log.append(make_batch(1, 5, 10, 0), 0)
            .await
            .expect("append");
        log.append(make_batch(1, 5, 10, 0), 3)
            .await
            .expect("append");
        log.append(make_batch(1, 5, 10, 0), 3)
            .await
            .expect("append");
        log.append(make_batch(1, 5, 10, 0), 7)
            .await
            .expect("append");
        assert!(matches!(
            log.append(make_batch(1, 1, 10, 0), 6).await,
            Err(LogError::StaleLeaderEpoch {
                epoch: 6,
                latest: 7
            })
        ));
        assert_eq!(log.leader_epochs(), vec![(0, 0), (3, 5), (7, 15)]);
        assert_eq!(log.end_offset_for_epoch(5), Some((3, 15)));
        log.truncate_to(15).await.expect("truncate");
        assert_eq!(log.leader_epochs(), vec![(0, 0), (3, 5)]);
        log.close().await.expect("close");
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("reopen");
        assert_eq!(log.leader_epochs(), vec![(0, 0), (3, 5)]);
        let read = log.read(5, 100, u64::MAX).await.expect("read");
        assert_eq!(
            split_batches(&read.load().await.expect("load"))[0]
                .0
                .partition_leader_epoch,
            3
        );
        log.close().await.expect("close");
    });
}

/// Writes 60 batches and crashes (no clean close), returning the segment
/// files and the bytes of every batch as appended.
fn write_and_crash(path: std::path::PathBuf) {
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("open");
        for index in 0..60 {
            log.append(make_batch(index, 2, 700, index as u8), 0)
                .await
                .expect("append");
        }
        log.flush().await.expect("flush");
        log.abandon().await;
    });
}

fn reopen_and_check(
    path: std::path::PathBuf,
    expect_next_offset: impl Fn(u64) -> bool + Send + 'static,
) {
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("recovering open");
        let next = log.offsets().next_offset;
        assert!(expect_next_offset(next), "recovered next offset {next}");
        let mut offset = 0;
        while offset < next {
            let read = log.read(offset, 1 << 20, u64::MAX).await.expect("read");
            for (header, bytes) in split_batches(&read.load().await.expect("load")) {
                assert_eq!(header.base_offset as u64, offset);
                let fill = (offset / 2) as u8;
                assert!(bytes[61..]
                    .windows(700)
                    .any(|window| window.iter().all(|byte| *byte == fill)));
                offset = header.last_offset() as u64 + 1;
            }
        }
        // The log keeps accepting appends right after the recovered end.
        let info = log
            .append(make_batch(1, 1, 10, 0), 0)
            .await
            .expect("append after recovery");
        assert_eq!(info.base_offset, next);
        log.flush().await.expect("flush");
        log.close().await.expect("close");
    });
}

/// Flips one byte in the middle of the first (sealed, trusted) segment.
/// Returns the base offset of the damaged batch.
fn damage_first_segment(path: &std::path::Path) -> u64 {
    let files = segment_files(path);
    assert!(files.len() >= 2);
    let first = &files[0];
    let batches = batches_in_file(first);
    let (position, header) = batches[batches.len() / 2];
    let mut bytes = std::fs::read(first).expect("read");
    bytes[position as usize + 100] ^= 0xff;
    std::fs::write(first, &bytes).expect("write");
    header.base_offset as u64
}

/// A segment that recovery trusts (sealed and synced before the crash, or
/// everything after a clean shutdown) is checked when first read: the
/// damaged batch and what follows it in that segment are never served,
/// while earlier batches, later segments and new appends keep working.
fn check_damage_is_never_served(path: std::path::PathBuf, damaged: u64) {
    run(move || async move {
        let log = PartitionLog::open(&path, small_config())
            .await
            .expect("open");
        let next = log.offsets().next_offset;
        assert_eq!(next, 120, "a trusted segment is not cut at open");
        let before = log
            .read(0, 1 << 20, u64::MAX)
            .await
            .expect("read before damage");
        let batches = split_batches(&before.load().await.expect("load"));
        assert_eq!(
            before.next_offset, damaged,
            "served up to the damaged batch only"
        );
        assert_eq!(
            batches.last().expect("batch").0.last_offset() as u64 + 1,
            damaged
        );
        assert!(matches!(
            log.read(damaged, 1 << 20, u64::MAX).await,
            Err(LogError::Damaged { .. })
        ));
        assert!(matches!(
            log.read(damaged + 2, 1 << 20, u64::MAX).await,
            Err(LogError::Damaged { .. })
        ));
        let bases = log.segment_bases();
        let later = log
            .read(bases[1], 1 << 20, u64::MAX)
            .await
            .expect("later segment");
        assert_eq!(
            split_batches(&later.load().await.expect("load"))[0]
                .0
                .base_offset as u64,
            bases[1]
        );
        let info = log
            .append(make_batch(1, 1, 10, 0), 0)
            .await
            .expect("append");
        assert_eq!(info.base_offset, next);
        log.close().await.expect("close");
    });
}

#[test]
fn damage_in_a_trusted_segment_after_a_crash_is_never_served() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    write_and_crash(path.clone());
    let damaged = damage_first_segment(&path);
    check_damage_is_never_served(path, damaged);
}

#[test]
fn damage_after_a_clean_shutdown_is_never_served() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    write_and_crash(path.clone());
    let reopen = path.clone();
    run(move || async move {
        let log = PartitionLog::open(&reopen, small_config())
            .await
            .expect("open");
        log.close().await.expect("clean close");
    });
    assert!(path.join(".kafki-clean-shutdown").exists());
    let damaged = damage_first_segment(&path);
    check_damage_is_never_served(path, damaged);
}

#[test]
fn recovery_cuts_a_damaged_tail_segment_at_the_damage() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    write_and_crash(path.clone());
    // The last segment is after the recovery point: scanned with CRCs.
    let files = segment_files(&path);
    let last = files.last().expect("segment");
    let batches = batches_in_file(last);
    assert!(batches.len() >= 2);
    let (position, header) = batches[batches.len() / 2];
    let mut bytes = std::fs::read(last).expect("read");
    bytes[position as usize + 200] ^= 0x01;
    std::fs::write(last, &bytes).expect("write");
    let cut_at = header.base_offset as u64;
    reopen_and_check(path, move |next| next == cut_at);
}

#[test]
fn recovery_handles_torn_tail_garbage_and_bad_indexes() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    write_and_crash(path.clone());
    let files = segment_files(&path);
    let last = files.last().expect("segment");
    let batches = batches_in_file(last);
    let (position, header) = *batches.last().expect("batch");
    // Tear the last batch in half and add garbage after it.
    let mut bytes = std::fs::read(last).expect("read");
    bytes.truncate(position as usize + 30);
    bytes.extend_from_slice(&[0xab; 5000]);
    std::fs::write(last, &bytes).expect("write");
    // Corrupt the first segment's index (it is a sealed segment).
    let index = files[0].with_extension("index");
    std::fs::write(&index, [0xffu8; 24]).expect("write index");
    let cut_at = header.base_offset as u64;
    reopen_and_check(path.clone(), move |next| next == cut_at);
    // The index was rebuilt: sane, non-empty, strictly increasing.
    let rebuilt = std::fs::read(&index).expect("index");
    assert!(!rebuilt.is_empty() && rebuilt.len().is_multiple_of(8));
}

#[test]
fn recovery_of_a_segment_truncated_to_nothing_and_a_missing_index() {
    let dir = test_dir();
    let path = dir.path().join("t-0");
    write_and_crash(path.clone());
    let files = segment_files(&path);
    std::fs::remove_file(files[0].with_extension("index")).expect("remove index");
    let last = files.last().expect("segment");
    let base: u64 = last
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .expect("base offset");
    std::fs::File::options()
        .write(true)
        .open(last)
        .and_then(|file| file.set_len(0))
        .expect("truncate");
    reopen_and_check(path, move |next| next == base);
}

#[test]
fn zero_filled_space_holds_data_through_close_crash_and_truncation() {
    let dir = test_dir();
    let path = dir.path().join("topic-0");
    let config = LogConfig {
        preallocation: kafki_storage::space::Preallocation::Zeroed,
        // Large enough that fills run ahead inside one segment.
        segment_bytes: 8 << 20,
        ..small_config()
    };
    run(move || async move {
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        let mut sent = Vec::new();
        // One write per batch, as under a steady load of small requests.
        for index in 0..400u64 {
            let batch = make_batch(1_000 + index as i64, 4, 1000, index as u8);
            log.append(batch.clone(), 0).await.expect("append");
            log.flush().await.expect("flush");
            sent.push(batch);
        }
        let stats = log.stats();
        // ~1.6 MB appended: fills ran ahead of (nearly) all of it.
        assert!(
            stats.zero_filled_bytes >= stats.appended_bytes * 3 / 4,
            "zero fills: {}, appended {}",
            stats.zero_filled_bytes,
            stats.appended_bytes
        );
        let segment = segment_files(&path)[0].clone();
        let file_bytes = std::fs::metadata(&segment).expect("stat").len();
        assert!(
            file_bytes > stats.appended_bytes,
            "initialised space ahead of the data: file {file_bytes}, data {}",
            stats.appended_bytes
        );
        // A crash leaves the zeros: recovery reads them as the end of data.
        let offsets = log.abandon().await;
        assert_eq!(offsets.durable_offset, 1600);
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("reopen after crash");
        assert_eq!(log.offsets().next_offset, 1600);
        let result = log.read(0, 64 << 20, u64::MAX).await.expect("read");
        let batches = split_batches(&result.load().await.expect("load"));
        assert_eq!(batches.len(), 400);
        for (header, bytes) in &batches {
            let index = header.base_offset as usize / 4;
            assert_eq!(bytes[61..], sent[index][61..], "batch {index} body");
        }
        // Appends after recovery fill again and land after the old data;
        // a truncation waits for the fill in flight before cutting the file.
        for index in 0..50u64 {
            let batch = make_batch(5_000 + index as i64, 4, 1000, 7);
            log.append(batch, 0).await.expect("append after recovery");
        }
        log.flush().await.expect("flush");
        log.truncate_to(1700).await.expect("truncate");
        assert_eq!(log.offsets().next_offset, 1700);
        log.close().await.expect("close");
        // A clean close trims the file to its data.
        let file_bytes = std::fs::metadata(&segment).expect("stat").len();
        let log = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(log.offsets().next_offset, 1700);
        assert_eq!(log.offsets().size_bytes, file_bytes);
        log.close().await.expect("close");
    });
}

/// A log opened after a clean shutdown and closed again without a change
/// writes nothing (its marker and index files stay as they were), and the
/// first change removes the marker before touching a file, so a crash
/// after it is recovered as a crash. A segment holding one small batch
/// reserves a small, growing amount of disk, not `preallocate_bytes`.
#[test]
fn idle_logs_close_without_writing_and_reserve_little() {
    let dir = test_dir();
    let path = dir.path().join("topic-0");
    run(move || async move {
        let config = LogConfig {
            preallocate_bytes: 32 << 20,
            ..small_config()
        };
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        log.append(make_batch(1_000, 1, 100, 1), 0)
            .await
            .expect("append");
        log.flush().await.expect("flush");
        let segment = path.join("00000000000000000000.log");
        let reserved = std::fs::metadata(&segment).expect("stat").len();
        assert!(
            reserved <= 128 * 1024,
            "one small batch reserved {reserved} bytes"
        );
        log.close().await.expect("close");
        let marker = path.join(".kafki-clean-shutdown");
        let stamp = |name: &str| {
            std::fs::metadata(path.join(name))
                .and_then(|meta| meta.modified())
                .expect("stat")
        };
        let before = [
            stamp(".kafki-clean-shutdown"),
            stamp("00000000000000000000.index"),
            stamp("00000000000000000000.timeindex"),
        ];

        // Open, read, close: nothing written.
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("reopen");
        assert!(marker.exists(), "the marker stays while nothing changed");
        let read = log.read(0, 1 << 20, u64::MAX).await.expect("read");
        assert_eq!(read.next_offset, 1);
        log.close().await.expect("close idle");
        let after = [
            stamp(".kafki-clean-shutdown"),
            stamp("00000000000000000000.index"),
            stamp("00000000000000000000.timeindex"),
        ];
        assert_eq!(before, after, "an idle close rewrote files");

        // The first append removes the marker before it is written.
        let log = PartitionLog::open(&path, config.clone())
            .await
            .expect("reopen");
        log.append(make_batch(2_000, 1, 100, 2), 0)
            .await
            .expect("append");
        log.flush().await.expect("flush");
        assert!(!marker.exists(), "a changed log must not look clean");
        let offsets = log.abandon().await;
        assert_eq!(offsets.next_offset, 2);
        let log = PartitionLog::open(&path, config).await.expect("recover");
        assert_eq!(log.offsets().next_offset, 2);
        log.close().await.expect("close");
    });
}

/// A node stop closes its logs without syncing each (`close_unsynced`),
/// then syncs the file system once and marks them clean (`finish_stop`):
/// the next open trusts them (the marker stays), with every record and
/// both index files. Without `finish_stop` (a crash in between) no marker
/// exists and the next open recovers the same records.
#[test]
fn a_node_stop_marks_logs_clean_after_one_file_system_sync() {
    let dir = test_dir();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let written = root.join("written-0");
        let empty = root.join("empty-0");
        let cut = root.join("cut-0");
        let marker = |path: &std::path::Path| path.join(".kafki-clean-shutdown").exists();
        let mut pending = Vec::new();
        for path in [&written, &cut] {
            let log = PartitionLog::open(path, small_config())
                .await
                .expect("open");
            for index in 0..300u32 {
                log.append(make_batch(1_000, 2, 200, index as u8), 0)
                    .await
                    .expect("append");
            }
            assert!(log.segment_bases().len() > 1, "rolled");
            let left = log.close_unsynced().await.expect("close");
            assert!(left.is_some(), "a written log needs its marker");
            assert!(!marker(path), "no marker before the file system is synced");
            if path == &written {
                pending.extend(left);
            }
        }
        let log = PartitionLog::open(&empty, small_config())
            .await
            .expect("open");
        assert_eq!(log.close_unsynced().await.expect("close"), None);
        assert!(marker(&empty), "a log without files is marked at once");

        assert_eq!(kafki_storage::finish_stop(&pending).expect("finish"), 1);
        assert!(marker(&written));
        assert_eq!(
            std::fs::read_to_string(written.join("recovery-point")).expect("recovery point"),
            "600\n"
        );
        for path in [&written, &cut] {
            let log = PartitionLog::open(path, small_config())
                .await
                .expect("reopen");
            assert_eq!(
                marker(path),
                path == &written,
                "{}: opened clean only when marked",
                path.display()
            );
            assert_eq!(log.offsets().next_offset, 600);
            let mut offset = 0;
            while offset < 600 {
                let read = log.read(offset, 1 << 20, u64::MAX).await.expect("read");
                let batches = split_batches(&read.load().await.expect("load"));
                assert_eq!(batches[0].0.base_offset as u64, offset - offset % 2);
                offset = read.next_offset;
            }
            if path == &written {
                let active = log.segment_bases().last().copied().expect("a segment");
                assert!(path.join(format!("{active:020}.index")).exists());
                assert!(path.join(format!("{active:020}.timeindex")).exists());
            }
            // Opened clean and untouched: nothing left to do at close; a
            // recovered log needs its marker.
            assert_eq!(
                log.close_unsynced().await.expect("close").is_none(),
                path == &written,
                "{}",
                path.display()
            );
        }
    });
}
