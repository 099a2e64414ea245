//! The partition log on a full filesystem: a small ext4 image mounted on a
//! loop device (needs root). A write that finds no space pauses the log: the
//! waiters of the unwritten batches and new appends get `LogError::Paused`,
//! the queued batches stay in order, and once space is freed the log writes
//! them and takes appends again, without a reopen; nothing that was reported
//! durable is lost across a reopen.
//!
//! Where loop devices cannot be mounted the test fails with the reason, unless
//! `KAFKI_NO_LOOP_MOUNT=1` says to skip it ([`loop_fs`]).

mod common;
#[path = "support/loop_fs.rs"]
mod loop_fs;

use std::path::Path;
use std::time::{Duration, Instant};

use kafki_storage::{LogConfig, LogError, PartitionLog, WriteState};

use loop_fs::LoopFs;

const FS_BYTES: u64 = 48 << 20;

fn small_fs() -> Option<LoopFs> {
    LoopFs::mount(common::test_dir(), FS_BYTES)
}

fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).expect("statvfs");
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

/// Takes every free block but `leave` bytes (as root: the reserved ones too).
fn take_space(path: &Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    loop {
        let free = free_bytes(path.parent().expect("parent"));
        if free <= leave + (1 << 20) {
            break;
        }
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

#[test]
fn a_full_disk_pauses_the_log_and_writes_resume_when_space_returns() {
    let Some(fs) = small_fs() else {
        return;
    };
    let mount = fs.mount.clone();
    common::run(move || async move {
        let dir = mount.join("t-0");
        let config = LogConfig {
            segment_bytes: 1 << 20,
            preallocate_bytes: 256 << 10,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(&dir, config.clone())
            .await
            .expect("open");
        let filler = mount.join("filler");
        take_space(&filler, 2 << 20);

        // Append 32 KiB batches until one is not made durable.
        let mut durable_end = 0;
        let mut paused = None;
        for round in 0..2_000u32 {
            let batch = common::make_batch(round as i64, 4, 8 << 10, round as u8);
            let info = match log.append(batch, 0).await {
                Ok(info) => info,
                Err(error) => {
                    paused = Some(error);
                    break;
                }
            };
            match log.wait_durable(info.last_offset + 1).await {
                Ok(()) => durable_end = info.last_offset + 1,
                Err(error) => {
                    paused = Some(error);
                    break;
                }
            }
        }
        let error = paused.expect("the disk never filled");
        assert!(matches!(error, LogError::Paused(_)), "{error}");
        assert!(matches!(log.write_state(), WriteState::Paused(_)));
        let queued_end = log.offsets().next_offset;
        assert!(queued_end > durable_end, "the failed batch stays queued");
        // While paused, new appends are refused with the same retriable error.
        let refused = log.append(common::make_batch(0, 1, 10, 0), 0).await;
        assert!(matches!(refused, Err(LogError::Paused(_))));
        assert_eq!(log.offsets().next_offset, queued_end);

        // Space comes back: the log resumes by itself and writes the queue.
        std::fs::remove_file(&filler).expect("free space");
        let started = Instant::now();
        while log.write_state() != WriteState::Writable {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the log did not resume"
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        log.flush().await.expect("the queued batches are written");
        let more = log
            .append(common::make_batch(1, 2, 100, 7), 0)
            .await
            .expect("appends work again");
        log.wait_durable(more.last_offset + 1)
            .await
            .expect("durable again");
        let end = more.last_offset + 1;
        log.close().await.expect("close");

        // Everything reported durable, the queued batch and the new one are there.
        let log = PartitionLog::open(&dir, config).await.expect("reopen");
        assert_eq!(log.offsets().next_offset, end);
        let mut offset = 0;
        while offset < end {
            let read = log.read(offset, 1 << 20, end).await.expect("read");
            let bytes = read.load().await.expect("load");
            let batches = common::split_batches(&bytes);
            assert!(!batches.is_empty());
            for (header, _) in &batches {
                assert_eq!(header.base_offset as u64, offset);
                offset = header.last_offset() as u64 + 1;
            }
        }
        assert!(durable_end <= queued_end && queued_end <= end);
        log.close().await.expect("close");
    });
    drop(fs);
}
