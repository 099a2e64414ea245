//! `kafki bench storage` end to end on a real filesystem.

use std::path::PathBuf;

use kafki_bench::storage::{run, StorageBenchArgs, SyncMode};

/// A small run in every mode yields a consistent report: every batch
/// appended, fsyncs as the mode promises, latencies ordered.
#[test]
fn small_runs_produce_sane_reports_in_every_mode() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("base dir");
    for sync in [SyncMode::None, SyncMode::Group, SyncMode::Each] {
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let report = run(StorageBenchArgs {
            dir: dir.path().to_path_buf(),
            total_bytes: 4 << 20,
            batch_bytes: 256 << 10,
            record_bytes: 1000,
            sync,
            depth: 8,
            write_chunk_bytes: 64 << 10,
            write_depth: 4,
            write_buffer_bytes: 1 << 20,
            cpu: None,
            keep: false,
        })
        .expect("bench run");
        let expected_batches = (4u64 << 20).div_ceil(report.batch_bytes as u64);
        assert_eq!(
            report.batches, expected_batches,
            "{sync:?}: 4 MiB of ~256 KiB batches"
        );
        assert!(report.batch_bytes.abs_diff(256 << 10) < 4096);
        assert!(report.bytes >= 4 << 20);
        assert!(report.mib_per_s > 0.0);
        assert!(report.writes >= 1);
        match sync {
            // Only the clean close syncs.
            SyncMode::None => assert!(report.fsyncs <= 1, "none synced {} times", report.fsyncs),
            SyncMode::Each => assert!(
                report.fsyncs >= report.batches,
                "each synced {} times",
                report.fsyncs
            ),
            SyncMode::Group => assert!(report.fsyncs >= 1),
        }
        assert!(report.append_latency_us.p50 <= report.append_latency_us.max);
        assert!(
            !dir.path().join("bench-storage-0").exists(),
            "log removed without --keep"
        );
    }
}
