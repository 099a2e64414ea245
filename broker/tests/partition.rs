//! The partition layer on its own: an append waits for the stage its
//! `acks` asks for, no longer than its timeout (here on a disk frozen with
//! `fsfreeze`, a loop-mounted ext4 image: root needed, see `loop_fs`), and
//! keeps what it appended when the wait runs out.

mod common;
#[path = "../../storage/tests/support/loop_fs.rs"]
mod loop_fs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::run;
use kafki_broker::partition::{Acks, CommitStage, Partition, Replication};
use kafki_broker::producer::ProducerLimits;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::{LogConfig, PartitionLog, SyncPolicy};
use loop_fs::LoopFs;

/// A partition on `dir`, committing at the durable stage (the default).
async fn open_partition(dir: PathBuf) -> Partition {
    let log = PartitionLog::open(&dir, LogConfig::default())
        .await
        .expect("open log");
    let loaded =
        kafki_broker::producer::snapshot::load(&log, "t-0".into(), ProducerLimits::default(), 0)
            .await;
    let replication = Replication::Local {
        stage: CommitStage::for_policy(SyncPolicy::EveryAppend),
    };
    Partition::new("t".into(), 0, log, replication, 0, loaded)
}

fn batch() -> bytes::Bytes {
    kafki_storage::batch::build_batch(1, &[b"value".as_slice()])
}

#[test]
fn an_append_on_a_stalled_disk_times_out_and_commits_once_the_disk_answers() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("test base dir");
    let work = tempfile::tempdir_in(&base).expect("tempdir");
    let Some(fs) = LoopFs::mount(work, 32 << 20) else {
        return;
    };
    let fs = std::sync::Arc::new(fs);
    let frozen = fs.clone();
    let path = fs.path().join("t-0");
    run(move || async move {
        let partition = open_partition(path).await;
        let first = partition
            .append(vec![batch()], Acks::All, Some(Duration::from_secs(10)))
            .await
            .expect("committed");
        assert_eq!(first.base_offset, 0);

        frozen.freeze();
        for acks in [Acks::All, Acks::Leader] {
            let started = Instant::now();
            let timed_out = partition
                .append(vec![batch()], acks, Some(Duration::from_millis(300)))
                .await
                .expect_err("the disk does not answer");
            let waited = started.elapsed();
            assert_eq!(timed_out.error.code, ResponseError::RequestTimedOut.code());
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            assert!(
                waited < Duration::from_secs(5),
                "{acks:?} waited {waited:?}"
            );
        }
        // Appended all the same (not taken back), not committed.
        assert_eq!(partition.offsets().log_end_offset, 3);
        assert_eq!(partition.high_watermark(), 1);
        // acks=0 waits for nothing.
        let unacknowledged = partition
            .append(vec![batch()], Acks::None, Some(Duration::from_millis(300)))
            .await
            .expect("appended");
        assert_eq!(unacknowledged.base_offset, 3);

        frozen.thaw();
        let later = partition
            .append(vec![batch()], Acks::All, Some(Duration::from_secs(10)))
            .await
            .expect("committed after the thaw");
        assert_eq!(later.base_offset, 4);
        assert_eq!(partition.high_watermark(), 5);

        // A bad batch is refused before anything of its request is appended.
        let mut damaged = batch().to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let refused = partition
            .append(
                vec![batch(), damaged.into()],
                Acks::Leader,
                Some(Duration::from_secs(10)),
            )
            .await
            .expect_err("corrupt");
        assert_eq!(refused.error.code, ResponseError::CorruptMessage.code());
        assert_eq!(partition.offsets().log_end_offset, 5);
        partition.close().await.expect("close");
    });
    drop(fs);
}

/// An idempotent producer's batch: producer 77, epoch 0, `sequence`.
fn producer_batch(sequence: i32) -> bytes::Bytes {
    use kafki_storage::compression::Compression;
    use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
    let mut section = Vec::new();
    let value = format!("value-{sequence}").into_bytes();
    encode_record(
        &mut section,
        &NewRecord {
            offset_delta: 0,
            timestamp_delta: 0,
            key: None,
            value: Some(&value),
            headers: &[],
        },
    );
    // Stamped now: the state of producers silent for longer than
    // `producer.id.expiration.ms` is dropped when it is loaded.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64);
    let fields = BatchFields {
        last_offset_delta: 0,
        base_timestamp: now,
        max_timestamp: now,
        producer_id: 77,
        producer_epoch: 0,
        base_sequence: sequence,
        records_count: 1,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, Compression::None, &section);
    bytes::Bytes::from(batch)
}

#[test]
fn a_truncated_suffix_leaves_no_producer_state_behind() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("test base dir");
    let work = tempfile::tempdir_in(&base).expect("tempdir");
    let path = work.path().join("t-0");
    run(move || async move {
        let partition = open_partition(path).await;
        for sequence in 0..2 {
            let appended = partition
                .append(vec![producer_batch(sequence)], Acks::All, None)
                .await
                .expect("appended");
            assert_eq!(appended.base_offset, sequence as u64);
        }
        // A replica drops its diverged suffix: the batch of sequence 1.
        partition.truncate_for_replica(1).await.expect("truncated");
        assert_eq!(partition.offsets().log_end_offset, 1);
        // The producer's retry of sequence 1 is appended again, not taken
        // for a duplicate of the dropped batch (which would acknowledge it
        // at an offset that no longer holds it).
        let retried = partition
            .append(vec![producer_batch(1)], Acks::All, None)
            .await
            .expect("appended again");
        assert_eq!(retried.base_offset, 1);
        assert_eq!(partition.offsets().log_end_offset, 2);
        // And a real duplicate is still recognised.
        let duplicate = partition
            .append(vec![producer_batch(1)], Acks::All, None)
            .await
            .expect("duplicate acknowledged");
        assert_eq!(duplicate.base_offset, 1);
        assert_eq!(partition.offsets().log_end_offset, 2);
        partition.close().await.expect("close");
    });
}
