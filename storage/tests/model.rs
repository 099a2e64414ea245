//! Model-based randomized test of the partition log: random sequences of
//! append / read / truncate-suffix / truncate-prefix / roll / retention /
//! close-and-reopen / crash / compaction, each result checked against an
//! in-memory model.
//!
//! Two thirds of the seeds run a compacted log (keyed batches, some
//! tombstones, every codec). Compaction is checked by its guarantees rather
//! than an exact result: every record read back was appended at that offset
//! (nothing invented), offsets increase, each key's latest record stays
//! (a tombstone only while `delete.retention.ms` says so, and a removed
//! tombstone leaves no older value behind), every record of the active
//! segment stays, and a record goes only when its key has a later *durable*
//! record (or it has no key). The model then adopts what the log holds, and
//! every later operation is checked exactly against that.
//!
//! A crash stops the log like a killed process, then tears the files: each
//! segment is cut at a random byte after its durable prefix and random bytes
//! are flipped in data that was never made durable. Recovery must keep every
//! durable batch and return only whole, valid batches that were appended.
//!
//! CI runs fixed seeds. Longer runs on demand:
//! `KAFKI_MODEL_SEEDS=200 KAFKI_MODEL_OPS=2000 cargo test -p kafki-storage --test model --release`
//! (`KAFKI_MODEL_SEED=N` replays one seed, `KAFKI_MODEL_FIRST_SEED=N` starts
//! the range elsewhere).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{
    batches_in_file, keyed_batch, make_batch, records_of, run, segment_files, split_batches,
    test_dir, TestRecord,
};
use kafki_storage::batch::BatchHeader;
use kafki_storage::compression::Compression;
use kafki_storage::space::Preallocation;
use kafki_storage::{
    CleanerLimits, CompactionConfig, LogConfig, LogError, PartitionLog, SyncPolicy,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The model's view of one appended batch.
#[derive(Clone)]
struct ModelBatch {
    base_offset: u64,
    last_offset: u64,
    timestamp: i64,
    /// The producer's bytes; the log changes only base offset and epoch.
    sent: Bytes,
}

struct Model {
    batches: Vec<ModelBatch>,
    log_start: u64,
    durable_end: u64,
    epoch: i32,
    /// The end of the log (compaction may have removed the batches before it).
    end: u64,
}

impl Model {
    fn next_offset(&self) -> u64 {
        self.end
    }

    /// The log then ends at the start of the batch that held `offset`, or at
    /// `offset` itself where compaction left no batch holding it.
    fn truncate_to(&mut self, offset: u64) {
        if offset >= self.end {
            return;
        }
        self.end = self
            .batches
            .iter()
            .find(|batch| batch.last_offset >= offset)
            .map_or(offset, |batch| batch.base_offset.min(offset));
        self.batches.retain(|batch| batch.last_offset < offset);
        self.durable_end = self.durable_end.min(self.end);
        self.log_start = self.log_start.min(self.end);
    }

    /// Whether a read at `offset` must return something.
    fn has_batch_from(&self, offset: u64) -> bool {
        self.batches.iter().any(|batch| batch.last_offset >= offset)
    }

    fn visible(&self) -> impl Iterator<Item = &ModelBatch> {
        self.batches
            .iter()
            .filter(|batch| batch.last_offset >= self.log_start)
    }
}

/// The records of a model batch at their log offsets (the bytes the
/// producer sent carry base offset 0).
fn model_records(batch: &ModelBatch) -> Vec<TestRecord> {
    let sent_base = BatchHeader::parse(&batch.sent).expect("header").base_offset as u64;
    records_of(&batch.sent)
        .into_iter()
        .map(|(offset, key, value)| (offset - sent_base + batch.base_offset, key, value))
        .collect()
}

fn model_batch(bytes: Bytes) -> ModelBatch {
    let header = BatchHeader::parse(&bytes).expect("header");
    ModelBatch {
        base_offset: header.base_offset as u64,
        last_offset: header.last_offset() as u64,
        timestamp: header.max_timestamp,
        sent: bytes,
    }
}

fn config_for(rng: &mut SmallRng, compacted: bool) -> LogConfig {
    let sync_policy = match rng.random_range(0..3) {
        0 => SyncPolicy::EveryAppend,
        1 => SyncPolicy::Interval {
            messages: rng.random_range(1..50),
            interval: Duration::from_millis(rng.random_range(1..20)),
        },
        _ => SyncPolicy::Never,
    };
    LogConfig {
        segment_bytes: rng.random_range(8..64) * 1024,
        index_interval_bytes: rng.random_range(1..8) * 256,
        hot_tail_bytes_max: rng.random_range(0..32) * 1024,
        write_buffer_bytes_max: rng.random_range(16..256) * 1024,
        preallocate_bytes: rng.random_range(0..4) * 64 * 1024,
        write_chunk_bytes: rng.random_range(1..8) * 4096,
        write_depth: rng.random_range(1..8),
        retention_bytes: Some(rng.random_range(64..512) * 1024),
        retention_age: None,
        sync_policy,
        preallocation: if rng.random_bool(0.5) {
            Preallocation::Zeroed
        } else {
            Preallocation::Reserve
        },
        compaction: compacted.then(|| CompactionConfig {
            min_cleanable_dirty_ratio: [0.0, 0.3, 0.6][rng.random_range(0..3)],
            // Tombstones either go at the next cleaning or stay.
            delete_retention: Duration::from_millis([0, 86_400_000][rng.random_range(0..2)]),
            ..CompactionConfig::default()
        }),
        ..LogConfig::default()
    }
}

/// A keyed batch for a compacted log: 1–5 records over a few keys, some
/// tombstones, any codec.
fn random_keyed_batch(rng: &mut SmallRng, keys: usize, timestamp: i64) -> Bytes {
    let count = rng.random_range(1..6);
    let owned: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..count)
        .map(|_| {
            let key = format!("key-{}", rng.random_range(0..keys)).into_bytes();
            let value = (!rng.random_bool(0.1)).then(|| {
                let len = rng.random_range(0..300);
                vec![rng.random::<u8>(); len]
            });
            (key, value)
        })
        .collect();
    let pairs: Vec<kafki_storage::batch::KeyValueRef<'_>> = owned
        .iter()
        .map(|(key, value)| (Some(key.as_slice()), value.as_deref()))
        .collect();
    let codec = Compression::ALL[rng.random_range(0..Compression::ALL.len())];
    keyed_batch(codec, timestamp, &pairs)
}

fn assert_same_batch(found: &[u8], expected: &ModelBatch, context: &str) {
    let header = kafki_storage::batch::BatchHeader::parse(found).expect("header");
    assert_eq!(
        header.base_offset as u64, expected.base_offset,
        "{context}: base offset"
    );
    assert_eq!(
        header.last_offset() as u64,
        expected.last_offset,
        "{context}: last offset"
    );
    // Bytes 12..16 hold the leader epoch, outside the CRC by Kafka's design.
    assert_eq!(found.len(), expected.sent.len(), "{context}: length");
    assert_eq!(
        found[8..12],
        expected.sent[8..12],
        "{context}: batch length"
    );
    assert_eq!(found[16..], expected.sent[16..], "{context}: batch bytes");
}

/// Reads the whole log from its start and compares it with the model.
async fn check_everything(log: &PartitionLog, model: &Model, context: &str) {
    let offsets = log.offsets();
    assert_eq!(
        offsets.next_offset,
        model.next_offset(),
        "{context}: next offset"
    );
    assert_eq!(
        offsets.log_start_offset, model.log_start,
        "{context}: log start"
    );
    let mut offset = model.log_start;
    let mut expected = model
        .batches
        .iter()
        .filter(|batch| batch.last_offset >= model.log_start);
    while offset < model.next_offset() {
        let read = log.read(offset, 64 * 1024, u64::MAX).await.expect("read");
        let bytes = read.load().await.expect("load");
        if !model.has_batch_from(offset) {
            // Compaction removed everything from here to the end.
            assert!(bytes.is_empty(), "{context}: read past the last batch");
            break;
        }
        assert!(!bytes.is_empty(), "{context}: empty read at {offset}");
        for (header, found) in split_batches(&bytes) {
            let batch = expected
                .next()
                .expect("log returned more batches than the model has");
            assert_same_batch(&found, batch, context);
            offset = header.last_offset() as u64 + 1;
        }
        assert_eq!(read.next_offset, offset);
    }
    assert!(expected.next().is_none(), "{context}: log ended early");
}

/// Every batch from the log start to the end, as consumers read them.
async fn read_batches(log: &PartitionLog, model: &Model) -> Vec<Bytes> {
    let mut offset = model.log_start;
    let mut batches = Vec::new();
    while offset < model.next_offset() {
        let read = log.read(offset, 64 * 1024, u64::MAX).await.expect("read");
        let bytes = read.load().await.expect("load");
        if bytes.is_empty() {
            break;
        }
        for (header, found) in split_batches(&bytes) {
            assert!(header.last_offset() as u64 >= offset, "offsets go back");
            offset = header.last_offset() as u64 + 1;
            batches.push(Bytes::from(found));
        }
    }
    batches
}

/// The guarantees of a cleaning pass (see the module comment): `before` is
/// the model, `after` the log's batches from the log start.
fn check_compaction(
    before: &Model,
    after: &[Bytes],
    active_base: u64,
    durable: u64,
    tombstones_may_go: bool,
    context: &str,
) {
    let old: Vec<&ModelBatch> = before.visible().collect();
    let old_records: Vec<TestRecord> = old.iter().flat_map(|batch| model_records(batch)).collect();
    let mut kept = std::collections::HashSet::new();
    let mut previous_end = 0;
    for bytes in after {
        let header = BatchHeader::parse(bytes).expect("header");
        let base = header.base_offset as u64;
        assert!(base >= previous_end, "{context}: offsets increase");
        previous_end = header.last_offset() as u64 + 1;
        let original = old
            .iter()
            .find(|batch| batch.base_offset == base)
            .unwrap_or_else(|| panic!("{context}: batch at {base} was never appended"));
        assert_eq!(
            original.last_offset,
            header.last_offset() as u64,
            "{context}: offset span at {base}"
        );
        // Attributes, last offset delta, timestamps, producer fields.
        assert_eq!(
            bytes[21..57],
            original.sent[21..57],
            "{context}: header fields at {base}"
        );
        let original_records = model_records(original);
        let records = records_of(bytes);
        if records.len() == original_records.len() {
            assert_eq!(
                bytes[16..],
                original.sent[16..],
                "{context}: batch at {base} kept whole"
            );
        }
        for record in records {
            assert!(
                original_records.contains(&record),
                "{context}: record at {} was never appended",
                record.0
            );
            kept.insert(record.0);
        }
    }
    let mut latest_durable: std::collections::HashMap<&Option<Vec<u8>>, u64> = Default::default();
    for record in &old_records {
        if record.0 < durable {
            latest_durable.insert(&record.1, record.0);
        }
    }
    for record in &old_records {
        let offset = record.0;
        if offset >= active_base {
            assert!(
                kept.contains(&offset),
                "{context}: active-segment record at {offset} removed"
            );
        }
        if kept.contains(&offset) {
            continue;
        }
        let superseded = latest_durable
            .get(&record.1)
            .is_some_and(|newest| *newest > offset);
        // A tombstone may go once it expired, whatever comes after it, as
        // long as no older value of its key is left to come back.
        let expired_tombstone = record.2.is_none() && tombstones_may_go;
        assert!(
            superseded || expired_tombstone,
            "{context}: record at {offset} removed without a later durable record of its key"
        );
        if !superseded {
            assert!(
                old_records
                    .iter()
                    .filter(|other| other.1 == record.1 && other.0 < offset)
                    .all(|other| !kept.contains(&other.0)),
                "{context}: a removed tombstone at {offset} left an older value"
            );
        }
    }
}

/// Cuts and flips bytes after the durable prefix of every segment file.
fn tear_files(dir: &Path, durable_end: u64, rng: &mut SmallRng) {
    for path in segment_files(dir) {
        let batches = batches_in_file(&path);
        let durable_bytes = batches
            .iter()
            .find(|(_, header)| header.last_offset() as u64 >= durable_end)
            .map(|(position, _)| *position);
        let mut bytes = std::fs::read(&path).expect("read segment");
        let durable_bytes = match durable_bytes {
            Some(position) => position as usize,
            // Every valid batch is durable; garbage after them may be torn too.
            None => batches.last().map_or(0, |(position, header)| {
                *position as usize + header.total_bytes()
            }),
        };
        if durable_bytes >= bytes.len() {
            continue;
        }
        if rng.random_bool(0.5) {
            let cut = rng.random_range(durable_bytes..=bytes.len());
            bytes.truncate(cut);
        }
        if bytes.len() > durable_bytes {
            for _ in 0..rng.random_range(0..4) {
                let at = rng.random_range(durable_bytes..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
        }
        std::fs::write(&path, &bytes).expect("write torn segment");
    }
}

async fn run_model(seed: u64, operations: usize, dir: PathBuf) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let compacted = !seed.is_multiple_of(3);
    let config = config_for(&mut rng, compacted);
    let keys = rng.random_range(2..12);
    let trace = std::env::var_os("KAFKI_MODEL_TRACE").is_some();
    if trace {
        eprintln!("seed {seed}: {config:?}");
    }
    let path = dir.join(format!("model-{seed}"));
    let mut log = PartitionLog::open(&path, config.clone())
        .await
        .expect("open");
    let mut model = Model {
        batches: Vec::new(),
        log_start: 0,
        durable_end: 0,
        epoch: 0,
        end: 0,
    };
    for step in 0..operations {
        let context = format!("seed {seed} step {step}");
        let choice = rng.random_range(0..105);
        if trace {
            eprintln!(
                "{context}: op {choice} offsets {:?} segments {:?}",
                log.offsets(),
                log.segment_bases()
            );
        }
        match choice {
            0..=44 => {
                let records = rng.random_range(1..6);
                let value_bytes = rng.random_range(0..900);
                let timestamp = rng.random_range(0..1_000_000);
                if rng.random_bool(0.02) {
                    model.epoch += 1;
                }
                let sent = if compacted {
                    random_keyed_batch(&mut rng, keys, timestamp)
                } else {
                    make_batch(timestamp, records, value_bytes, rng.random())
                };
                let info = log.append(sent.clone(), model.epoch).await.expect("append");
                assert_eq!(
                    info.base_offset,
                    model.next_offset(),
                    "{context}: base offset"
                );
                model.batches.push(ModelBatch {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                    ..model_batch(sent)
                });
                model.end = info.last_offset + 1;
                if rng.random_bool(0.2) {
                    log.wait_durable(info.last_offset + 1)
                        .await
                        .expect("durable");
                    model.durable_end = info.last_offset + 1;
                }
            }
            45..=64 => {
                let next = model.next_offset();
                let offset = rng.random_range(model.log_start..=next);
                let max_bytes = rng.random_range(1..20_000);
                let read = log.read(offset, max_bytes, u64::MAX).await.expect("read");
                let bytes = read.load().await.expect("load");
                let found = split_batches(&bytes);
                if offset < next && model.has_batch_from(offset) {
                    assert!(!found.is_empty(), "{context}: empty read at {offset}");
                }
                if !model.has_batch_from(offset) {
                    assert!(found.is_empty(), "{context}: read past the last batch");
                }
                let first = model
                    .batches
                    .partition_point(|batch| batch.last_offset < offset);
                for (index, (_, found)) in found.iter().enumerate() {
                    assert_same_batch(found, &model.batches[first + index], &context);
                }
                if found.len() > 1 {
                    assert!(bytes.len() as u64 <= max_bytes, "{context}: over budget");
                }
            }
            65..=69 => {
                let probe = rng.random_range(0..1_000_100);
                let hit = log.find_by_timestamp(probe).await.expect("lookup");
                let expected = model
                    .batches
                    .iter()
                    .filter(|batch| batch.last_offset >= model.log_start)
                    .find(|batch| batch.timestamp >= probe)
                    .map(|batch| batch.base_offset);
                assert_eq!(
                    hit.map(|hit| hit.base_offset),
                    expected,
                    "{context}: timestamp {probe}"
                );
            }
            70..=74 => {
                let offset = rng.random_range(model.log_start..=model.next_offset());
                log.truncate_to(offset).await.expect("truncate suffix");
                model.truncate_to(offset);
                assert_eq!(
                    log.offsets().next_offset,
                    model.next_offset(),
                    "{context}: after truncate"
                );
            }
            75..=78 => {
                let offset = rng.random_range(model.log_start..=model.next_offset());
                let start = log.truncate_before(offset).await.expect("truncate prefix");
                let wanted = model.log_start.max(offset);
                if start != wanted {
                    // The first remaining segment starts after a compacted
                    // gap: the start moved to it, and no record was in between.
                    assert!(start > wanted, "{context}: log start {start} < {wanted}");
                    assert_eq!(
                        log.segment_bases()[0],
                        start,
                        "{context}: start on a segment"
                    );
                    assert!(
                        !model
                            .batches
                            .iter()
                            .any(|batch| batch.last_offset >= wanted && batch.base_offset < start),
                        "{context}: the start skipped records"
                    );
                }
                model.log_start = start;
                if offset > model.log_start.min(model.next_offset()) {
                    assert!(matches!(
                        log.read(offset - 1, 100, u64::MAX).await,
                        Err(LogError::OffsetOutOfRange { .. })
                    ));
                }
            }
            79..=82 => log.roll(),
            83..=86 => {
                let deleted = log.enforce_retention(0).await.expect("retention");
                let start = log.offsets().log_start_offset;
                assert!(
                    start >= model.log_start,
                    "{context}: retention moved start back"
                );
                if deleted > 0 {
                    assert!(
                        log.segment_bases().contains(&start) || start == model.log_start,
                        "{context}: start not on a segment"
                    );
                }
                model.log_start = start;
            }
            100..=104 => {
                let active_base = *log.segment_bases().last().expect("a segment");
                let end_before = log.offsets().next_offset;
                let limits = CleanerLimits {
                    dedupe_buffer_bytes: if rng.random_bool(0.5) {
                        64 * rng.random_range(1..8)
                    } else {
                        1 << 20
                    },
                    ..CleanerLimits::default()
                };
                let now_ms = 1_000_000_000 + step as i64 * 100;
                let report = log.compact(now_ms, &limits).await.expect("compact");
                if trace {
                    eprintln!("{context}: {report:?}");
                }
                if !compacted {
                    assert!(
                        !report.ran,
                        "{context}: a log without compaction was cleaned"
                    );
                    continue;
                }
                let offsets = log.offsets();
                assert_eq!(
                    offsets.next_offset, end_before,
                    "{context}: compaction moved the end"
                );
                assert_eq!(
                    offsets.log_start_offset, model.log_start,
                    "{context}: log start"
                );
                let after = read_batches(&log, &model).await;
                let tombstones_may_go = config
                    .compaction
                    .as_ref()
                    .is_some_and(|compaction| compaction.delete_retention.is_zero());
                check_compaction(
                    &model,
                    &after,
                    active_base,
                    offsets.durable_offset,
                    tombstones_may_go,
                    &context,
                );
                model
                    .batches
                    .retain(|batch| batch.last_offset < model.log_start);
                model.batches.extend(after.into_iter().map(model_batch));
            }
            87..=92 => {
                log.close().await.expect("close");
                log = PartitionLog::open(&path, config.clone())
                    .await
                    .expect("reopen");
                model.durable_end = model.next_offset();
                check_everything(&log, &model, &format!("{context} after reopen")).await;
            }
            _ => {
                // The log may be durable beyond what the model asked for
                // (sealed segments are synced): tear only past its claim.
                let durable = log.abandon().await.durable_offset;
                assert!(
                    durable >= model.durable_end,
                    "{context}: durable offset went back"
                );
                model.durable_end = durable;
                tear_files(&path, model.durable_end, &mut rng);
                log = PartitionLog::open(&path, config.clone())
                    .await
                    .expect("recovering open");
                let recovered = log.offsets().next_offset;
                assert!(
                    recovered >= model.durable_end,
                    "{context}: lost durable data: {recovered} < {}",
                    model.durable_end
                );
                assert!(
                    recovered <= model.next_offset(),
                    "{context}: recovered more than appended: {recovered} > {}",
                    model.next_offset()
                );
                model.truncate_to(recovered);
                if model.next_offset() < recovered {
                    // Every surviving batch was below a DeleteRecords start
                    // and the rest was never written: the log restarts, empty,
                    // at its (durable) log start.
                    assert_eq!(
                        log.offsets().log_start_offset,
                        recovered,
                        "{context}: restart point"
                    );
                    model.batches.clear();
                    model.end = recovered;
                }
                model.log_start = log
                    .offsets()
                    .log_start_offset
                    .max(model.log_start.min(recovered));
                model.durable_end = recovered;
                // The leader epoch lies outside the CRC: a bit flipped in it
                // in a torn, never-durable batch that recovery keeps is not
                // detected, and appends must then use at least that epoch.
                // (A known gap of recovery, not of the model.)
                if let Some((epoch, _)) = log.leader_epochs().last() {
                    model.epoch = model.epoch.max(*epoch);
                }
                check_everything(&log, &model, &format!("{context} after crash")).await;
            }
        }
    }
    check_everything(&log, &model, &format!("seed {seed} end")).await;
    log.close().await.expect("final close");
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

#[test]
fn partition_log_matches_model() {
    let operations = env_number("KAFKI_MODEL_OPS").unwrap_or(400) as usize;
    let seeds: Vec<u64> = match env_number("KAFKI_MODEL_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_number("KAFKI_MODEL_FIRST_SEED").unwrap_or(1);
            let count = env_number("KAFKI_MODEL_SEEDS").unwrap_or(40);
            (first..first + count).collect()
        }
    };
    let dir = test_dir();
    for seed in seeds {
        let base = dir.path().to_path_buf();
        run(move || async move { run_model(seed, operations, base).await });
    }
}
