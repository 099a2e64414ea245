//! A follower's log: batches appended exactly as the leader stored them
//! (`append_replicated`), a diverged suffix cut by leader epoch
//! (`truncate_to`), a log emptied to start again at its leader's log start
//! (`truncate_fully_and_start_at`), a damaged batch repaired in place with
//! another replica's copy (`repair_damaged`), and the result identical to
//! the leader's log byte for byte, through a restart.

mod common;

use bytes::Bytes;
use common::{batches_in_file, make_batch, run, segment_files, split_batches, test_dir};
use kafki_storage::{LogConfig, LogError, PartitionLog, RepairRefusal};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 128 * 1024,
        retention_age: None,
        ..LogConfig::default()
    }
}

/// Every stored batch of `log` from `from`, as bytes.
async fn stored_batches(log: &PartitionLog, from: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.offsets().next_offset {
        let read = log.read(offset, 1 << 20, u64::MAX).await.expect("read");
        let bytes = read.load().await.expect("load");
        for (header, batch) in split_batches(&bytes) {
            if header.base_offset as u64 >= offset {
                out.push(Bytes::from(batch));
            }
        }
        offset = read.next_offset;
    }
    out
}

#[test]
fn a_follower_copy_is_the_leaders_log_byte_for_byte() {
    let dir = test_dir();
    let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
    run(move || async move {
        let leader = PartitionLog::open(&leader_dir, config())
            .await
            .expect("open");
        for index in 0..120u8 {
            let epoch = i32::from(index / 40); // epochs 0, 1, 2
            leader
                .append(make_batch(1_000 + i64::from(index), 4, 90, index), epoch)
                .await
                .expect("append");
        }
        leader.flush().await.expect("flush");
        let sent = stored_batches(&leader, 0).await;
        assert_eq!(sent.len(), 120);

        let follower = PartitionLog::open(&follower_dir, config())
            .await
            .expect("open");
        for batch in &sent {
            follower
                .append_replicated(batch.clone())
                .await
                .expect("replicate");
        }
        follower.flush().await.expect("flush");
        assert_eq!(follower.offsets().next_offset, 480);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
        assert_eq!(follower.leader_epochs(), vec![(0, 0), (1, 160), (2, 320)]);
        assert_eq!(stored_batches(&follower, 0).await, sent);
        follower.close().await.expect("close");

        let follower = PartitionLog::open(&follower_dir, config())
            .await
            .expect("reopen");
        assert_eq!(follower.offsets().next_offset, 480);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
        assert_eq!(stored_batches(&follower, 0).await, sent);
        assert_eq!(follower.end_offset_for_epoch(1), Some((1, 320)));
    });
}

#[test]
fn a_diverged_suffix_is_cut_and_the_leaders_batches_take_its_place() {
    let dir = test_dir();
    let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
    run(move || async move {
        // Both hold epoch 0's ten batches; then the follower (an old leader)
        // wrote three batches in epoch 1 that the new leader never had, and
        // the new leader wrote five in epoch 2.
        let leader = PartitionLog::open(&leader_dir, config())
            .await
            .expect("open");
        let follower = PartitionLog::open(&follower_dir, config())
            .await
            .expect("open");
        for index in 0..10u8 {
            let batch = make_batch(1_000, 2, 50, index);
            leader.append(batch.clone(), 0).await.expect("append");
            follower.append(batch, 0).await.expect("append");
        }
        for index in 0..3u8 {
            follower
                .append(make_batch(2_000, 2, 50, 100 + index), 1)
                .await
                .expect("append");
        }
        for index in 0..5u8 {
            leader
                .append(make_batch(3_000, 2, 50, 200 + index), 2)
                .await
                .expect("append");
        }

        // A batch of the new leader cannot land on the diverged suffix.
        let from_leader = stored_batches(&leader, 20).await;
        let refused = follower.append_replicated(from_leader[0].clone()).await;
        assert!(
            matches!(
                refused,
                Err(LogError::OffsetOutOfOrder {
                    base_offset: 20,
                    log_end_offset: 26
                })
            ),
            "{refused:?}"
        );
        // KIP-101: the follower asks where its last epoch (1) ends on the
        // leader: the leader has no epoch 1, so the answer is epoch 0's end.
        let (epoch, end) = leader.end_offset_for_epoch(1).expect("an epoch");
        assert_eq!((epoch, end), (0, 20));
        follower.truncate_to(end).await.expect("truncate");
        assert_eq!(follower.offsets().next_offset, 20);
        assert_eq!(follower.leader_epochs(), vec![(0, 0)]);
        for batch in &from_leader {
            follower
                .append_replicated(batch.clone())
                .await
                .expect("replicate");
        }
        follower.flush().await.expect("flush");
        assert_eq!(
            stored_batches(&follower, 0).await,
            stored_batches(&leader, 0).await
        );
        assert_eq!(follower.leader_epochs(), vec![(0, 0), (2, 20)]);
    });
}

#[test]
fn gaps_stale_epochs_and_damaged_batches() {
    let dir = test_dir();
    let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
    run(move || async move {
        let leader = PartitionLog::open(&leader_dir, config())
            .await
            .expect("open");
        for index in 0..6u8 {
            leader
                .append(make_batch(1_000, 5, 40, index), 3)
                .await
                .expect("append");
        }
        let batches = stored_batches(&leader, 0).await;
        let follower = PartitionLog::open(&follower_dir, config())
            .await
            .expect("open");

        // A gap (a compacted leader log): offsets 5..15 missing.
        follower
            .append_replicated(batches[0].clone())
            .await
            .expect("first");
        let info = follower
            .append_replicated(batches[3].clone())
            .await
            .expect("after a gap");
        assert_eq!((info.base_offset, info.last_offset), (15, 19));
        assert_eq!(follower.offsets().next_offset, 20);

        // A flipped byte: refused, nothing appended.
        let mut damaged = batches[4].to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        let refused = follower.append_replicated(Bytes::from(damaged)).await;
        assert!(
            matches!(refused, Err(LogError::InvalidBatch(_))),
            "{refused:?}"
        );
        // Trailing bytes after the batch: refused.
        let mut padded = batches[4].to_vec();
        padded.extend_from_slice(&[0; 7]);
        let refused = follower.append_replicated(Bytes::from(padded)).await;
        assert!(
            matches!(refused, Err(LogError::InvalidBatch(_))),
            "{refused:?}"
        );
        assert_eq!(follower.offsets().next_offset, 20);

        // An older epoch than the log holds: refused.
        let older = PartitionLog::open(dir.path().join("older"), config())
            .await
            .expect("open");
        for _ in 0..5 {
            older
                .append(make_batch(1_000, 5, 40, 9), 2)
                .await
                .expect("append");
        }
        let stale = stored_batches(&older, 0).await.pop().expect("a batch");
        let refused = follower.append_replicated(stale).await;
        assert!(
            matches!(
                refused,
                Err(LogError::StaleLeaderEpoch {
                    epoch: 2,
                    latest: 3
                })
            ),
            "{refused:?}"
        );
        follower
            .append_replicated(batches[4].clone())
            .await
            .expect("in order");
        follower.flush().await.expect("flush");
        let held: Vec<i64> = split_batches(
            &follower
                .read(0, 1 << 20, u64::MAX)
                .await
                .expect("read")
                .load()
                .await
                .expect("load"),
        )
        .iter()
        .map(|(header, _)| header.base_offset)
        .collect();
        assert_eq!(held, vec![0, 15, 20]);
    });
}

#[test]
fn a_follower_below_the_leaders_log_start_starts_again_there() {
    let dir = test_dir();
    let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
    run(move || async move {
        let small_segments = LogConfig {
            segment_bytes: 4 * 1024,
            ..config()
        };
        let leader = PartitionLog::open(&leader_dir, small_segments.clone())
            .await
            .expect("open");
        let follower = PartitionLog::open(&follower_dir, small_segments.clone())
            .await
            .expect("open");
        for index in 0..60u8 {
            let batch = make_batch(1_000, 2, 200, index);
            leader.append(batch.clone(), 3).await.expect("append");
            if index < 5 {
                follower.append(batch, 3).await.expect("append");
            }
        }
        leader.flush().await.expect("flush");
        // DeleteRecords on the leader: offsets below 80 are gone.
        let log_start = leader.truncate_before(80).await.expect("delete records");
        assert!(log_start > 10, "the leader deleted past the follower's end");
        assert!(matches!(
            leader.read(10, 1 << 20, u64::MAX).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));

        follower
            .truncate_fully_and_start_at(log_start)
            .await
            .expect("start again");
        let offsets = follower.offsets();
        assert_eq!(
            (
                offsets.log_start_offset,
                offsets.next_offset,
                offsets.durable_offset
            ),
            (log_start, log_start, log_start)
        );
        assert!(follower.leader_epochs().is_empty());
        for batch in stored_batches(&leader, log_start).await {
            follower.append_replicated(batch).await.expect("replicate");
        }
        follower.flush().await.expect("flush");
        assert_eq!(follower.leader_epochs(), vec![(3, log_start)]);
        assert_eq!(
            stored_batches(&follower, log_start).await,
            stored_batches(&leader, log_start).await
        );
        follower.close().await.expect("close");

        let follower = PartitionLog::open(&follower_dir, small_segments)
            .await
            .expect("reopen");
        assert_eq!(follower.offsets().log_start_offset, log_start);
        assert_eq!(follower.offsets().next_offset, 120);
        assert_eq!(
            stored_batches(&follower, log_start).await,
            stored_batches(&leader, log_start).await
        );
    });
}

#[test]
fn a_damaged_batch_is_repaired_in_place_with_another_replicas_copy() {
    let dir = test_dir();
    let (damaged_dir, healthy_dir) = (dir.path().join("damaged"), dir.path().join("healthy"));
    let small_segments = LogConfig {
        segment_bytes: 8 * 1024,
        ..config()
    };
    let (first_dir, second_dir, settings) = (
        damaged_dir.clone(),
        healthy_dir.clone(),
        small_segments.clone(),
    );
    run(move || async move {
        // Two replicas holding the same batches (epochs 1 then 2).
        let leader = PartitionLog::open(&first_dir, settings.clone())
            .await
            .expect("open");
        for index in 0..40u8 {
            leader
                .append(make_batch(1_000, 3, 100, index), i32::from(index / 20) + 1)
                .await
                .expect("append");
        }
        leader.flush().await.expect("flush");
        let follower = PartitionLog::open(&second_dir, settings)
            .await
            .expect("open");
        for batch in stored_batches(&leader, 0).await {
            follower.append_replicated(batch).await.expect("replicate");
        }
        follower.close().await.expect("close");
        leader.close().await.expect("close");
    });
    // Bit rot in the middle of a sealed segment after a clean stop (trusted
    // at open, checked when first read).
    let files = segment_files(&damaged_dir);
    assert!(files.len() >= 2, "{files:?}");
    let batches = batches_in_file(&files[0]);
    let (position, header) = batches[batches.len() / 2];
    let mut bytes = std::fs::read(&files[0]).expect("read");
    bytes[position as usize + 80] ^= 0x40;
    std::fs::write(&files[0], &bytes).expect("write");
    let damaged_offset = header.base_offset as u64;

    run(move || async move {
        let log = PartitionLog::open(&damaged_dir, small_segments.clone())
            .await
            .expect("open");
        let healthy = PartitionLog::open(&healthy_dir, small_segments)
            .await
            .expect("open");
        assert!(!log.has_damage());
        assert!(matches!(
            log.read(damaged_offset, 1 << 20, u64::MAX).await,
            Err(LogError::Damaged { .. })
        ));
        assert!(log.has_damage());
        let at = log
            .damaged_batch()
            .await
            .expect("find")
            .expect("a damaged batch");
        assert_eq!(at.offset, damaged_offset);
        assert_eq!(
            at.epoch,
            Some(i32::from((damaged_offset / 3 / 20) as u8) + 1)
        );

        let copies = stored_batches(&healthy, 0).await;
        let index = (damaged_offset / 3) as usize;
        // Refused: another batch, or the right one in another epoch.
        let refused = log
            .repair_damaged(at, copies[index + 1].clone())
            .await
            .expect("disk");
        assert!(
            matches!(refused, Err(RepairRefusal::WrongOffset { .. })),
            "{refused:?}"
        );
        let mut other_epoch = copies[index].to_vec();
        other_epoch[12..16].copy_from_slice(&99i32.to_be_bytes());
        let refused = log
            .repair_damaged(at, Bytes::from(other_epoch))
            .await
            .expect("disk");
        // (The epoch lies outside the batch's CRC: checked on its own.)
        assert!(
            matches!(refused, Err(RepairRefusal::WrongEpoch { .. })),
            "{refused:?}"
        );
        assert!(log.has_damage(), "nothing written yet");

        log.repair_damaged(at, copies[index].clone())
            .await
            .expect("disk")
            .expect("repaired");
        assert!(!log.has_damage());
        assert_eq!(stored_batches(&log, 0).await, copies);
        log.close().await.expect("close");
    });
    let repaired = std::fs::read(&files[0]).expect("read");
    assert_eq!(repaired.len(), bytes.len());
    assert_ne!(repaired, bytes, "the flipped byte is back");
}
