//! Test support shared by the storage integration tests: an executor runner,
//! test directories on a real filesystem, batch builders and a batch walker.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kafki_storage::batch::{self, BatchHeader};

/// Runs `make()`'s future on a fresh glommio executor thread and waits.
pub fn run<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

/// A temporary directory on a real filesystem: direct I/O needs one
/// (tmpfs silently ignores `O_DIRECT`), so refuse tmpfs outright.
pub fn test_dir() -> tempfile::TempDir {
    let base = std::env::var_os("KAFKI_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create test base dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let stat = nix::sys::statfs::statfs(dir.path()).expect("statfs");
    assert_ne!(
        stat.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "storage tests need a real filesystem, not tmpfs (set KAFKI_TEST_DIR)"
    );
    dir
}

/// A batch of `count` records of `value_bytes` each, stamped `timestamp`.
pub fn make_batch(timestamp: i64, count: usize, value_bytes: usize, fill: u8) -> Bytes {
    let value = vec![fill; value_bytes];
    let values: Vec<&[u8]> = (0..count).map(|_| value.as_slice()).collect();
    batch::build_batch(timestamp, &values)
}

/// Splits a buffer of whole batches into (header, bytes) pairs; panics on a
/// partial or invalid batch (reads must return whole, valid batches).
pub fn split_batches(mut bytes: &[u8]) -> Vec<(BatchHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = batch::validate_stored_batch(bytes).expect("read returned an invalid batch");
        let total = header.total_bytes();
        out.push((header, bytes[..total].to_vec()));
        bytes = &bytes[total..];
    }
    out
}

/// Batches in a segment file on disk, with their positions, read with plain
/// std I/O; stops at the first thing that is not a valid batch.
pub fn batches_in_file(path: &Path) -> Vec<(u64, BatchHeader)> {
    let bytes = std::fs::read(path).expect("read segment");
    let mut position = 0usize;
    let mut out = Vec::new();
    while position < bytes.len() {
        match batch::validate_stored_batch(&bytes[position..]) {
            Ok(header) => {
                out.push((position as u64, header));
                position += header.total_bytes();
            }
            Err(_) => break,
        }
    }
    out
}

/// Segment `.log` files of a partition directory, sorted by base offset.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

/// A record as the tests see it: offset, key, value (`None` is null).
pub type TestRecord = (u64, Option<Vec<u8>>, Option<Vec<u8>>);

/// A batch of `(key, value)` records compressed with `codec`, stamped
/// `timestamp` (record `i` at `timestamp + i`).
pub fn keyed_batch(
    codec: kafki_storage::compression::Compression,
    timestamp: i64,
    records: &[kafki_storage::batch::KeyValueRef<'_>],
) -> Bytes {
    use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
    let mut section = Vec::new();
    for (index, (key, value)) in records.iter().enumerate() {
        encode_record(
            &mut section,
            &NewRecord {
                offset_delta: index as i32,
                timestamp_delta: index as i64,
                key: *key,
                value: *value,
                headers: &[],
            },
        );
    }
    let fields = BatchFields {
        last_offset_delta: records.len() as i32 - 1,
        base_timestamp: timestamp,
        max_timestamp: timestamp + records.len() as i64 - 1,
        records_count: records.len() as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, codec, &section);
    Bytes::from(batch)
}

/// The records of one stored batch, with their offsets.
pub fn records_of(batch: &[u8]) -> Vec<TestRecord> {
    let header = BatchHeader::parse(batch).expect("header");
    let section = kafki_storage::records::batch_records(batch, 64 << 20).expect("records section");
    kafki_storage::records::records(&section, header.records_count)
        .map(|record| {
            let record = record.expect("record decodes");
            (
                header.base_offset as u64 + record.offset_delta as u64,
                record.key.map(<[u8]>::to_vec),
                record.value.map(<[u8]>::to_vec),
            )
        })
        .collect()
}

/// Every batch of the log from `from` to its end, read the way consumers
/// do (each read continues after the last batch returned). Checks that
/// offsets strictly increase.
pub async fn read_all_batches(log: &kafki_storage::PartitionLog, from: u64) -> Vec<Vec<u8>> {
    let end = log.offsets().next_offset;
    let mut offset = from;
    let mut batches: Vec<Vec<u8>> = Vec::new();
    while offset < end {
        let read = log.read(offset, 64 * 1024, u64::MAX).await.expect("read");
        let bytes = read.load().await.expect("load");
        if bytes.is_empty() {
            // Compaction removed everything from here to the end.
            break;
        }
        for (header, batch) in split_batches(&bytes) {
            assert!(
                header.last_offset() as u64 >= offset,
                "offsets go back at {offset}"
            );
            offset = header.last_offset() as u64 + 1;
            batches.push(batch);
        }
        assert_eq!(read.next_offset, offset);
    }
    batches
}

/// Every record of the log, in order.
pub async fn read_all_records(log: &kafki_storage::PartitionLog) -> Vec<TestRecord> {
    let start = log.offsets().log_start_offset;
    read_all_batches(log, start)
        .await
        .iter()
        .flat_map(|batch| records_of(batch))
        .collect()
}
