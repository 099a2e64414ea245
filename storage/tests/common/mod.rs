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
