//! Snapshot format (round trip, every kind of damage refused) and the load
//! at open against a real partition log (snapshot used across segments,
//! damaged / out-of-range files refused and removed, expiry at load).

use std::path::PathBuf;

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::batch::{build_batch, compute_crc, BatchHeader};
use kafki_storage::LogConfig;
use proptest::prelude::*;

use super::*;
use crate::producer::state::test_header as header;
use crate::producer::SequenceCheck;

fn limits(expiration_ms: i64, producers_max: usize) -> ProducerLimits {
    ProducerLimits {
        expiration_ms,
        producers_max,
    }
}

/// Three producers, one with a wrapped sequence and the full five batches.
fn sample_states() -> ProducerStates {
    let mut states = ProducerStates::new("t-0".into(), limits(i64::MAX, 100));
    states.record(&header(7, 0, 0, 3), 0, 1_000);
    states.record(&header(9, 2, 0, 1), 3, 2_000);
    for (index, first) in (3..28).step_by(5).enumerate() {
        states.record(&header(7, 0, first, 5), 4 + index as u64 * 5, 3_000);
    }
    states.record(&header(11, 0, i32::MAX, 2), 40, 4_000);
    states
}

fn entries(states: &ProducerStates) -> Vec<(i64, ProducerEntry)> {
    states
        .iter_least_recent_first()
        .map(|(id, entry)| (id, entry.clone()))
        .collect()
}

#[test]
fn a_snapshot_round_trips() {
    let states = sample_states();
    let bytes = encode(&states, 42, 1_234);
    let snapshot = decode(&bytes).expect("decodes");
    assert_eq!(snapshot.offset, 42);
    assert_eq!(snapshot.written_ms, 1_234);
    assert_eq!(snapshot.producers, entries(&states));
    assert_eq!(snapshot.producers.len(), 3);
    let seven = &snapshot
        .producers
        .iter()
        .find(|(id, _)| *id == 7)
        .expect("7")
        .1;
    assert_eq!(seven.batches.len(), REMEMBERED_BATCHES);
    assert_eq!(seven.last_timestamp_ms, 3_000);
    // Loaded back, the state answers exactly as the original.
    let mut loaded = ProducerStates::new("t-0".into(), limits(i64::MAX, 100));
    for (id, entry) in snapshot.producers {
        assert!(loaded.insert_loaded(id, entry));
    }
    for probe in [
        header(7, 0, 23, 5),
        header(7, 0, 28, 1),
        header(7, 0, 29, 1),
        header(7, 0, 0, 3),
        header(9, 2, 0, 1),
        header(9, 1, 1, 1),
        header(11, 0, i32::MAX, 2),
        header(11, 0, 1, 1),
        header(12, 0, 1, 1),
    ] {
        assert_eq!(loaded.check(&probe), states.check(&probe), "{probe:?}");
    }
    assert_eq!(
        loaded.check(&header(7, 0, 23, 5)),
        SequenceCheck::Duplicate { base_offset: 24 }
    );
    // Same state, same bytes: the order is the LRU order, not the map's.
    assert_eq!(encode(&loaded, 42, 1_234), bytes);
    // An empty state is a valid snapshot too.
    let empty = decode(&encode(&ProducerStates::default(), 0, 0)).expect("empty");
    assert!(empty.producers.is_empty());
}

/// Rewrites the CRC after a deliberate edit, so the field checks behind it
/// are what refuses the file.
fn recrc(bytes: &mut [u8]) {
    let crc = crc_of(bytes);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn every_damage_is_refused() {
    let good = encode(&sample_states(), 42, 1_234);
    assert!(decode(&good).is_ok());

    // Any flipped bit anywhere.
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        assert!(
            decode(&bad).is_err(),
            "a flipped bit at byte {at} was accepted"
        );
    }
    let mut bad = good.clone();
    bad[HEADER_BYTES + 3] ^= 1;
    assert!(matches!(decode(&bad), Err(SnapshotError::BadCrc { .. })));

    // Every truncation, down to nothing.
    for len in 0..good.len() {
        match decode(&good[..len]) {
            Err(SnapshotError::Truncated(_)) => {}
            other => panic!("{len} of {} bytes: {other:?}", good.len()),
        }
    }
    // Extra bytes.
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        decode(&long),
        Err(SnapshotError::TrailingBytes(1))
    ));

    // Another version, even with a matching CRC.
    let mut future = good.clone();
    future[4..6].copy_from_slice(&3u16.to_be_bytes());
    recrc(&mut future);
    assert_eq!(decode(&future), Err(SnapshotError::UnsupportedVersion(3)));
    let mut foreign = good.clone();
    foreign[..4].copy_from_slice(b"KAFK");
    assert!(matches!(decode(&foreign), Err(SnapshotError::BadMagic(_))));
    let mut flagged = good.clone();
    flagged[6] = 1;
    recrc(&mut flagged);
    assert!(matches!(decode(&flagged), Err(SnapshotError::Malformed(_))));

    // Consistent CRC, inconsistent contents: a batch at or above the
    // snapshot's own offset, a repeated producer, an absurd count.
    let mut low = good.clone();
    low[16..24].copy_from_slice(&40u64.to_be_bytes());
    recrc(&mut low);
    assert!(matches!(decode(&low), Err(SnapshotError::Malformed(_))));
    let mut twice = encode(&sample_states(), 42, 0);
    let first_id = HEADER_BYTES;
    // LRU order: producer 9 (one batch) first, then 7.
    let second_id = HEADER_BYTES + ENTRY_FIXED_BYTES + BATCH_BYTES;
    let id = twice[first_id..first_id + 8].to_vec();
    twice[second_id..second_id + 8].copy_from_slice(&id);
    recrc(&mut twice);
    assert!(matches!(decode(&twice), Err(SnapshotError::Malformed(_))));
    let mut many = good.clone();
    many[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
    recrc(&mut many);
    assert!(matches!(decode(&many), Err(SnapshotError::Truncated(_))));
}

#[test]
fn the_offset_must_lie_within_the_log() {
    assert_eq!(check_range(10, 0, 10), Ok(()));
    assert_eq!(check_range(10, 10, 20), Ok(()));
    assert_eq!(
        check_range(11, 0, 10),
        Err(SnapshotError::BeyondLogEnd {
            offset: 11,
            log_end: 10
        })
    );
    assert_eq!(
        check_range(9, 10, 20),
        Err(SnapshotError::BelowLogStart {
            offset: 9,
            log_start: 10
        })
    );
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn random_states_round_trip(
        batches in proptest::collection::vec((0i64..50, 0i16..3, 1i32..10, 0i64..1_000_000), 0..200)
    ) {
        let mut states = ProducerStates::new("t-0".into(), limits(i64::MAX, 30));
        let mut next_sequence = std::collections::HashMap::new();
        for (offset, (producer_id, epoch, count, timestamp)) in batches.into_iter().enumerate() {
            let first = next_sequence.get(&(producer_id, epoch)).copied().unwrap_or(0);
            states.record(&header(producer_id, epoch, first, count), offset as u64 * 10, timestamp);
            next_sequence.insert((producer_id, epoch), first + count);
        }
        let bytes = encode(&states, 10_000, 5);
        let snapshot = decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(snapshot.producers, entries(&states));
    }
}

// ------------------------------------------------------------ against a real log

fn run<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

/// On the repository's disk (the log uses O_DIRECT; tmpfs ignores it).
fn test_dir() -> tempfile::TempDir {
    let base = std::env::var_os("KAFKI_TEST_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/broker-unit-tests"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).expect("test base dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

/// A producer batch of `count` records with the given idempotence fields
/// (producer id -1 for a plain one), CRC recomputed.
fn batch(producer_id: i64, epoch: i16, first: i32, count: usize, timestamp: i64) -> Bytes {
    let values: Vec<&[u8]> = (0..count).map(|_| b"value".as_slice()).collect();
    let mut bytes = build_batch(timestamp, &values).to_vec();
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
    bytes[53..57].copy_from_slice(&first.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

fn now() -> i64 {
    crate::clock::now_ms()
}

/// A partition as its snapshot sees it: the log and its producers,
/// committed at the durable stage (the broker's default).
struct Partition {
    log: PartitionLog,
    producers: PartitionProducers,
}

impl Partition {
    fn new(log: PartitionLog, loaded: Loaded) -> Self {
        Self {
            log,
            producers: PartitionProducers::new(loaded),
        }
    }
}

fn due(partition: &Partition, now: Instant) -> bool {
    is_due(&partition.log, &partition.producers, now)
}

fn current(partition: &Partition) -> bool {
    is_current(&partition.log, &partition.producers)
}

async fn write_snapshot(partition: &Partition) -> Result<u64, String> {
    write(&partition.log, &partition.producers, |end| {
        partition.log.wait_durable(end)
    })
    .await
    .map(|written| written.expect("no reload runs beside it"))
}

async fn open(dir: &Path, fallback_bytes_max: u64, limits: ProducerLimits) -> Partition {
    let log = PartitionLog::open(dir, LogConfig::default())
        .await
        .expect("open log");
    let loaded = load_with_fallback(&log, "t-0".into(), limits, now(), fallback_bytes_max).await;
    Partition::new(log, loaded)
}

/// Appends as the produce path does: check, append, record.
fn produce(partition: &Partition, batch: Bytes) -> SequenceCheck {
    let header = BatchHeader::parse(&batch).expect("header");
    let verdict = partition.producers.states.borrow().check(&header);
    if verdict == SequenceCheck::Accept {
        let info = partition.log.append_now(batch, 0).expect("append");
        partition
            .producers
            .states
            .borrow_mut()
            .record(&header, info.base_offset, now());
    }
    verdict
}

fn out_of_order() -> SequenceCheck {
    SequenceCheck::Refuse(ResponseError::OutOfOrderSequenceNumber.code())
}

/// A fresh log where producer 7 wrote offsets 0..3.
async fn log_with_producer_seven(dir: &Path) -> Partition {
    let partition = open(dir, 0, ProducerLimits::default()).await;
    assert_eq!(
        produce(&partition, batch(7, 0, 0, 3, now())),
        SequenceCheck::Accept
    );
    partition
}

/// Producer 7 writes offsets 0..3, then many segments of plain batches
/// follow: its last batch lies far behind the last segment.
async fn log_with_an_old_producer(dir: &Path) -> Partition {
    let partition = log_with_producer_seven(dir).await;
    for _ in 0..4 {
        partition.log.roll();
        for _ in 0..3 {
            assert_eq!(
                produce(&partition, batch(-1, -1, -1, 2, now())),
                SequenceCheck::Accept
            );
        }
    }
    assert!(partition.log.segment_bases().len() >= 5);
    partition
}

#[test]
fn a_snapshot_carries_producers_across_segments_and_restarts() {
    run(|| async {
        let dir = test_dir();
        let partition = log_with_an_old_producer(dir.path()).await;
        assert!(due(&partition, Instant::now()), "no snapshot yet");
        let offset = write_snapshot(&partition).await.expect("snapshot");
        assert_eq!(offset, partition.log.offsets().next_offset);
        assert!(!due(&partition, Instant::now()), "just written");
        assert!(current(&partition));
        // Plain appends without a roll: due only once the snapshot is old.
        assert_eq!(
            produce(&partition, batch(-1, -1, -1, 1, now())),
            SequenceCheck::Accept
        );
        assert!(!due(&partition, Instant::now()));
        assert!(due(&partition, Instant::now() + SNAPSHOT_AGE_MAX));
        // A roll makes it due at once (it bounds what a crash replays).
        partition.log.roll();
        assert_eq!(
            produce(&partition, batch(-1, -1, -1, 1, now())),
            SequenceCheck::Accept
        );
        assert!(due(&partition, Instant::now()));
        let offset = write_snapshot(&partition).await.expect("snapshot");
        assert!(
            !due(&partition, Instant::now() + SNAPSHOT_AGE_MAX),
            "nothing new"
        );
        // After the snapshot, producer 7 appends again and producer 8 starts:
        // the open must replay these from the log.
        assert_eq!(
            produce(&partition, batch(7, 0, 3, 1, now())),
            SequenceCheck::Accept
        );
        assert_eq!(
            produce(&partition, batch(8, 0, 0, 1, now())),
            SequenceCheck::Accept
        );
        assert!(!current(&partition));
        partition.log.close().await.expect("close");

        let reopened = open(dir.path(), 0, ProducerLimits::default()).await;
        assert_eq!(reopened.producers.snapshot.mark().offset, Some(offset));
        assert_eq!(
            produce(&reopened, batch(7, 0, 0, 3, now())),
            SequenceCheck::Duplicate { base_offset: 0 },
            "the first batch, in the first segment, is still known"
        );
        assert_eq!(
            produce(&reopened, batch(7, 0, 3, 1, now())),
            SequenceCheck::Duplicate {
                base_offset: offset
            },
            "the batch after the snapshot was replayed"
        );
        assert_eq!(produce(&reopened, batch(7, 0, 5, 1, now())), out_of_order());
        assert_eq!(
            produce(&reopened, batch(7, 0, 4, 1, now())),
            SequenceCheck::Accept
        );
        assert_eq!(
            produce(&reopened, batch(8, 0, 1, 1, now())),
            SequenceCheck::Accept
        );
        reopened.log.close().await.expect("close");

        // Without the snapshot, the same log (last segment only) has lost
        // 7's first batch: a retry of it is no longer a duplicate.
        std::fs::remove_file(dir.path().join(SNAPSHOT_FILE)).expect("remove");
        let forgetful = open(dir.path(), 0, ProducerLimits::default()).await;
        assert_eq!(forgetful.producers.snapshot.mark().offset, None);
        assert_eq!(
            produce(&forgetful, batch(7, 0, 0, 3, now())),
            out_of_order()
        );
        forgetful.log.close().await.expect("close");
    });
}

/// A truncation reloads the state while a tick's write waits for its
/// offset to commit: that write took the state before, so it must store
/// nothing (and must not have its temp file removed under it by the
/// reload's load: the ENOENT "snapshot failed" a CI log check caught).
#[test]
fn a_write_overtaken_by_a_reload_stores_nothing() {
    run(|| async {
        let dir = test_dir();
        let partition = log_with_producer_seven(dir.path()).await;
        let first = write_snapshot(&partition).await.expect("first snapshot");
        assert_eq!(
            produce(&partition, batch(7, 0, 3, 2, now())),
            SequenceCheck::Accept
        );
        let (commit, committed) = futures::channel::oneshot::channel::<()>();
        let (written, ()) = futures::join!(
            write(&partition.log, &partition.producers, |_| async move {
                let _ = committed.await;
                Ok(())
            }),
            async {
                reload(&partition.log, &partition.producers).await;
                let _ = commit.send(());
            }
        );
        assert_eq!(written, Ok(None));
        assert_eq!(partition.producers.snapshot.mark().offset, Some(first));
        let temp_files = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(SNAPSHOT_TEMP_FILE)
            })
            .count();
        assert_eq!(temp_files, 0);
        // The next write stores the live state.
        assert_eq!(write_snapshot(&partition).await, Ok(first + 2));
    });
}

/// Two writes, the older state's commit wait outlasting the newer one's:
/// the file keeps the newer state (as when the lock spanned the wait).
#[test]
fn an_older_state_never_replaces_a_newer_file() {
    run(|| async {
        let dir = test_dir();
        let partition = log_with_producer_seven(dir.path()).await;
        let (commit, committed) = futures::channel::oneshot::channel::<()>();
        let (older, newer) = futures::join!(
            write(&partition.log, &partition.producers, |_| async move {
                let _ = committed.await;
                Ok(())
            }),
            async {
                assert_eq!(
                    produce(&partition, batch(7, 0, 3, 2, now())),
                    SequenceCheck::Accept
                );
                let newer = write_snapshot(&partition).await;
                let _ = commit.send(());
                newer
            }
        );
        assert_eq!(newer, Ok(5));
        assert_eq!(older, Ok(None));
        assert_eq!(partition.producers.snapshot.mark().offset, Some(5));
        assert!(current(&partition));
    });
}

#[test]
fn the_fallback_reaches_back_within_its_bound() {
    run(|| async {
        let dir = test_dir();
        let partition = log_with_an_old_producer(dir.path()).await;
        partition.log.close().await.expect("close");
        // No snapshot, but the sealed segments fit in the default bound.
        let log = PartitionLog::open(dir.path(), LogConfig::default())
            .await
            .expect("open");
        let loaded = load(&log, "t-0".into(), ProducerLimits::default(), now()).await;
        let reopened = Partition::new(log, loaded);
        assert_eq!(
            produce(&reopened, batch(7, 0, 0, 3, now())),
            SequenceCheck::Duplicate { base_offset: 0 }
        );
        reopened.log.close().await.expect("close");
    });
}

/// Writes a valid snapshot of producer 7 and returns its bytes' offset.
async fn snapshot_then_close(dir: &Path) -> u64 {
    let partition = log_with_an_old_producer(dir).await;
    let offset = write_snapshot(&partition).await.expect("snapshot");
    partition.log.close().await.expect("close");
    offset
}

async fn assert_refused_and_removed(dir: &Path) {
    let reopened = open(dir, 0, ProducerLimits::default()).await;
    assert_eq!(
        reopened.producers.snapshot.mark().offset,
        None,
        "the file was used"
    );
    assert!(
        !dir.join(SNAPSHOT_FILE).exists(),
        "a refused snapshot must be removed"
    );
    assert_eq!(produce(&reopened, batch(7, 0, 3, 1, now())), out_of_order());
    // The partition still works, and the next snapshot is due at once.
    assert_eq!(
        produce(&reopened, batch(5, 0, 0, 1, now())),
        SequenceCheck::Accept
    );
    assert!(due(&reopened, Instant::now()));
    reopened.log.close().await.expect("close");
}

#[test]
fn damaged_files_are_refused_and_removed() {
    run(|| async {
        let dir = test_dir();
        snapshot_then_close(dir.path()).await;
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("damage");
        assert_refused_and_removed(dir.path()).await;

        let dir = test_dir();
        snapshot_then_close(dir.path()).await;
        let path = dir.path().join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        assert_refused_and_removed(dir.path()).await;
    });
}

#[test]
fn a_snapshot_beyond_the_log_end_is_refused() {
    run(|| async {
        // As after a crash that cut the log's tail below the snapshot.
        let dir = test_dir();
        let offset = snapshot_then_close(dir.path()).await;
        let mut states = ProducerStates::default();
        states.record(&header(7, 0, 0, 3), 0, now());
        let beyond = encode(&states, offset + 10, now());
        write_file(dir.path(), beyond).await.expect("write");
        assert_refused_and_removed(dir.path()).await;
    });
}

#[test]
fn a_snapshot_below_the_log_start_is_refused() {
    run(|| async {
        let dir = test_dir();
        let partition = log_with_an_old_producer(dir.path()).await;
        let offset = write_snapshot(&partition).await.expect("snapshot");
        assert_eq!(
            produce(&partition, batch(-1, -1, -1, 2, now())),
            SequenceCheck::Accept
        );
        partition.log.flush().await.expect("flush");
        // DeleteRecords past the snapshot's offset.
        partition
            .log
            .truncate_before(offset + 1)
            .await
            .expect("delete records");
        assert!(due(&partition, Instant::now()), "a stale snapshot is due");
        partition.log.close().await.expect("close");
        assert_refused_and_removed(dir.path()).await;
    });
}

#[test]
fn expired_producers_are_dropped_at_load_and_the_cap_holds() {
    run(|| async {
        let dir = test_dir();
        let partition = open(dir.path(), 0, ProducerLimits::default()).await;
        // Producer 1 wrote a day and a bit ago (client timestamps are what
        // the log keeps); producers 2..=4 just now.
        let old = now() - 86_400_000 - 60_000;
        assert_eq!(
            produce(&partition, batch(1, 0, 0, 1, old)),
            SequenceCheck::Accept
        );
        for producer_id in 2..=4 {
            assert_eq!(
                produce(&partition, batch(producer_id, 0, 0, 1, now())),
                SequenceCheck::Accept
            );
        }
        partition.log.close().await.expect("close");
        // No snapshot: the replay stamps producers with their batches'
        // timestamps, so producer 1 expires; the cap of 2 keeps the newest.
        let reopened = open(dir.path(), 0, limits(86_400_000, 2)).await;
        {
            let states = reopened.producers.states.borrow();
            assert_eq!(states.len(), 2);
            assert!(states.get(1).is_none() && states.get(2).is_none());
            assert!(states.get(3).is_some() && states.get(4).is_some());
        }
        reopened.log.close().await.expect("close");
    });
}

// ------------------------------------------------------------ transactions (v2)

const ABORT: crate::txn::EndTxnMarker = crate::txn::EndTxnMarker {
    control_type: crate::txn::ControlType::Abort,
    coordinator_epoch: 4,
};
const COMMIT: crate::txn::EndTxnMarker = crate::txn::EndTxnMarker {
    control_type: crate::txn::ControlType::Commit,
    coordinator_epoch: 4,
};

fn transactional_header(producer_id: i64, epoch: i16, first: i32, count: i32) -> BatchHeader {
    let mut header = header(producer_id, epoch, first, count);
    header.attributes = crate::txn::partition_index::TRANSACTIONAL_ATTRIBUTE;
    header
}

/// Producer 7 aborted [0, 1] at 4; producer 8 is open from 2; producer 9
/// committed [5] at 6.
fn transactional_states() -> ProducerStates {
    let mut states = ProducerStates::new("t-0".into(), limits(i64::MAX, 100));
    let data = |states: &mut ProducerStates, producer_id, count, offset| {
        let header = transactional_header(producer_id, 0, 0, count);
        states.record(&header, offset, 1_000);
        states.record_transactional_data(&header, offset);
    };
    data(&mut states, 7, 2, 0);
    data(&mut states, 8, 2, 2);
    states.record_marker(7, 0, ABORT, 4).expect("abort");
    data(&mut states, 9, 1, 5);
    states.record_marker(9, 0, COMMIT, 6).expect("commit");
    states
}

#[test]
fn a_v2_snapshot_round_trips_the_transactions() {
    let states = transactional_states();
    let bytes = encode(&states, 7, 1_234);
    let snapshot = decode(&bytes).expect("decodes");
    assert_eq!(snapshot.transactions, states.transactions().parts());
    let index = crate::txn::PartitionTxnIndex::from_parts(snapshot.transactions);
    assert_eq!(index.last_stable_offset(100), 2);
    assert_eq!(index.first_unstable_offset(), Some(2));
    let aborted = index.aborted_overlapping(0, 100);
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].producer_id, aborted[0].first_offset), (7, 0));
    // Fencing survives: producer 9's coordinator epoch 4.
    let older = crate::txn::EndTxnMarker {
        coordinator_epoch: 3,
        ..COMMIT
    };
    assert!(index.check_marker(9, 0, older).is_err());
    // An index end beyond the snapshot's offset is refused.
    assert!(matches!(
        decode(&encode(&states, 6, 0)),
        Err(SnapshotError::Malformed(_))
    ));
}

#[test]
fn a_version_1_file_still_loads_without_transactions() {
    let v2 = encode(&sample_states(), 42, 1_234);
    // A v1 file is the v2 one without its (here empty) transactions
    // section: index end, producer count, aborted count.
    let mut v1 = v2[..v2.len() - 16].to_vec();
    v1[4..6].copy_from_slice(&1u16.to_be_bytes());
    let length = v1.len() as u32;
    v1[8..12].copy_from_slice(&length.to_be_bytes());
    recrc(&mut v1);
    let snapshot = decode(&v1).expect("v1 decodes");
    assert_eq!(snapshot.producers, entries(&sample_states()));
    assert_eq!(
        snapshot.transactions,
        crate::txn::partition_index::IndexParts::default()
    );
}

/// A transactional batch (attribute bit 4), CRC recomputed.
fn transactional_batch(producer_id: i64, first: i32, count: usize) -> Bytes {
    let mut bytes = batch(producer_id, 0, first, count, now()).to_vec();
    bytes[21..23]
        .copy_from_slice(&crate::txn::partition_index::TRANSACTIONAL_ATTRIBUTE.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// Appends as the produce path does, transactions included.
fn produce_transactional(partition: &Partition, batch: Bytes) -> u64 {
    let header = BatchHeader::parse(&batch).expect("header");
    assert_eq!(
        partition.producers.states.borrow().check(&header),
        SequenceCheck::Accept
    );
    assert_eq!(
        partition
            .producers
            .states
            .borrow()
            .check_transactions(&header),
        Ok(())
    );
    let info = partition.log.append_now(batch, 0).expect("append");
    let mut states = partition.producers.states.borrow_mut();
    states.record(&header, info.base_offset, now());
    states.record_transactional_data(&header, info.base_offset);
    info.base_offset
}

/// Appends a marker as the partition does.
fn write_marker(partition: &Partition, producer_id: i64, marker: crate::txn::EndTxnMarker) -> u64 {
    let batch = crate::producer::transactions::build_marker_batch(producer_id, 0, marker, now());
    let info = partition.log.append_now(batch, 0).expect("append marker");
    partition
        .producers
        .states
        .borrow_mut()
        .record_marker(producer_id, 0, marker, info.base_offset)
        .expect("marker recorded");
    info.base_offset
}

fn transactions_of(partition: &Partition) -> crate::txn::partition_index::IndexParts {
    partition.producers.states.borrow().transactions().parts()
}

#[test]
fn the_replay_rebuilds_the_transactions_with_and_without_a_snapshot() {
    run(|| async {
        for with_snapshot in [false, true] {
            let dir = test_dir();
            let partition = open(dir.path(), 0, ProducerLimits::default()).await;
            produce_transactional(&partition, transactional_batch(7, 0, 2)); // 0..=1
            produce_transactional(&partition, transactional_batch(8, 0, 1)); // 2
            if with_snapshot {
                write_snapshot(&partition).await.expect("snapshot");
            }
            partition.log.roll();
            write_marker(&partition, 7, ABORT); // 3
            produce_transactional(&partition, transactional_batch(9, 0, 1)); // 4
            write_marker(&partition, 9, COMMIT); // 5
            produce_transactional(&partition, transactional_batch(8, 1, 1)); // 6
            let before = transactions_of(&partition);
            assert_eq!(
                partition.producers.states.borrow().last_stable_offset(100),
                2
            );
            partition.log.wait_durable(7).await.expect("durable");
            partition.log.close().await.expect("close");
            if !with_snapshot {
                let _ = std::fs::remove_file(dir.path().join(SNAPSHOT_FILE));
            }
            // Fallback reaches back over every segment (one of them sealed).
            let reopened = open(dir.path(), u64::MAX, ProducerLimits::default()).await;
            assert_eq!(
                transactions_of(&reopened),
                before,
                "with snapshot: {with_snapshot}"
            );
            let (last_stable_offset, aborted) = {
                let states = reopened.producers.states.borrow();
                let aborted = states.transactions().aborted_overlapping(0, 100);
                (states.last_stable_offset(100), aborted)
            };
            assert_eq!(last_stable_offset, 2);
            assert_eq!(aborted.len(), 1);
            assert_eq!(
                (
                    aborted[0].producer_id,
                    aborted[0].first_offset,
                    aborted[0].last_offset
                ),
                (7, 0, 3)
            );
            reopened.log.close().await.expect("close");
        }
    });
}
