//! Model-based randomized test of the partition log: random sequences of
//! append / read / truncate-suffix / truncate-prefix / roll / retention /
//! close-and-reopen / crash, each result checked against an in-memory model.
//!
//! A crash stops the log like a killed process, then tears the files: each
//! segment is cut at a random byte after its durable prefix and random bytes
//! are flipped in data that was never made durable. Recovery must keep every
//! durable batch and return only whole, valid batches that were appended.
//!
//! CI runs fixed seeds. Longer runs on demand:
//! `KAFKI_MODEL_SEEDS=200 KAFKI_MODEL_OPS=2000 cargo test -p kafki-storage --test model --release`
//! (`KAFKI_MODEL_SEED=N` replays one seed).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{batches_in_file, make_batch, run, segment_files, split_batches, test_dir};
use kafki_storage::{LogConfig, LogError, PartitionLog, SyncPolicy};
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
    /// The end of the log when it holds no batch.
    empty_end: u64,
}

impl Model {
    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.empty_end.max(self.log_start), |batch| {
                batch.last_offset + 1
            })
    }

    /// The log then ends at the start of the batch that held `offset`.
    fn truncate_to(&mut self, offset: u64) {
        if let Some(first_removed) = self
            .batches
            .iter()
            .find(|batch| batch.last_offset >= offset)
        {
            self.empty_end = first_removed.base_offset;
        }
        self.batches.retain(|batch| batch.last_offset < offset);
        let end = self
            .batches
            .last()
            .map_or(self.empty_end, |batch| batch.last_offset + 1);
        self.durable_end = self.durable_end.min(end);
        self.log_start = self.log_start.min(end);
        self.empty_end = end;
    }
}

fn config_for(rng: &mut SmallRng) -> LogConfig {
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
        ..LogConfig::default()
    }
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
    let config = config_for(&mut rng);
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
        empty_end: 0,
    };
    for step in 0..operations {
        let context = format!("seed {seed} step {step}");
        let choice = rng.random_range(0..100);
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
                let sent = make_batch(timestamp, records, value_bytes, rng.random());
                let info = log.append(sent.clone(), model.epoch).await.expect("append");
                assert_eq!(
                    info.base_offset,
                    model.next_offset(),
                    "{context}: base offset"
                );
                model.batches.push(ModelBatch {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                    timestamp,
                    sent,
                });
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
                if offset < next {
                    assert!(!found.is_empty(), "{context}: empty read at {offset}");
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
                model.log_start = model.log_start.max(offset);
                assert_eq!(start, model.log_start, "{context}: log start");
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
                    "{context}: recovered more than appended"
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
                    model.empty_end = recovered;
                }
                model.log_start = log
                    .offsets()
                    .log_start_offset
                    .max(model.log_start.min(recovered));
                model.durable_end = recovered;
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
        None => (1..=env_number("KAFKI_MODEL_SEEDS").unwrap_or(40)).collect(),
    };
    let dir = test_dir();
    for seed in seeds {
        let base = dir.path().to_path_buf();
        run(move || async move { run_model(seed, operations, base).await });
    }
}
