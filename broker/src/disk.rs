//! The data directory's filesystem: free space (for `/metrics`, `/health`
//! and the start-up log line) and the space reserve that keeps metadata
//! changes possible on a full disk.
//!
//! The reserve is a preallocated file, `<data-dir>/.kafki-reserve`
//! (`log.dir.reserve.bytes`, 16 MiB by default, 0 turns it off). When the
//! filesystem is full, the first thing an operator does is delete a topic or
//! records, and both write a small file first (the cluster metadata, a
//! checkpoint): without free blocks they would fail, and the disk would stay
//! full. So a metadata write that fails for lack of space releases the
//! reserve and tries once more; the reserve is made again once the
//! filesystem has room for it several times over.
//!
//! Touched from any thread: every function here is a plain system call on a
//! path, with no state of its own.

use std::path::{Path, PathBuf};

/// The reserve file's name in the data directory.
pub const RESERVE_FILE: &str = ".kafki-reserve";

/// The reserve is made again only when this many times its size is free,
/// so it does not take back the last free blocks a just-freed disk has.
const RESERVE_REMAKE_FACTOR: u64 = 4;

/// Free and total bytes of the filesystem holding a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer can still allocate.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl Space {
    /// Reads `statvfs` of `dir`.
    pub fn of(dir: &Path) -> std::io::Result<Space> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let block = stat.fragment_size() as u64;
        Ok(Space {
            free_bytes: (stat.blocks_available() as u64).saturating_mul(block),
            total_bytes: (stat.blocks() as u64).saturating_mul(block),
        })
    }
}

fn reserve_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RESERVE_FILE)
}

/// Whether an error (anywhere in an `anyhow` chain) is the filesystem or a
/// quota being full.
pub fn is_out_of_space(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.raw_os_error(),
                Some(code) if code == nix::errno::Errno::ENOSPC as i32
                    || code == nix::errno::Errno::EDQUOT as i32
            )
        })
    })
}

/// Makes the reserve file (`bytes` of allocated blocks) if it is missing
/// and the filesystem has room for it several times over. Returns whether
/// the reserve is in place afterwards.
pub fn ensure_reserve(data_dir: &Path, bytes: u64) -> bool {
    if bytes == 0 {
        return true;
    }
    let path = reserve_path(data_dir);
    if std::fs::metadata(&path).is_ok_and(|meta| meta.len() >= bytes) {
        return true;
    }
    let room = Space::of(data_dir)
        .is_ok_and(|space| space.free_bytes >= bytes.saturating_mul(RESERVE_REMAKE_FACTOR));
    if !room {
        return false;
    }
    let made = std::fs::File::create(&path).and_then(|file| {
        nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            nix::fcntl::FallocateFlags::empty(),
            0,
            bytes as i64,
        )
        .map_err(std::io::Error::from)?;
        file.sync_all()
    });
    match made {
        Ok(()) => {
            tracing::info!(path = %path.display(), bytes, "space reserve in place (released when a metadata change finds the disk full)");
            true
        }
        Err(error) => {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(path = %path.display(), %error, "cannot make the space reserve");
            false
        }
    }
}

/// Deletes the reserve file, returning whether there was one to delete.
pub fn release_reserve(data_dir: &Path) -> bool {
    let path = reserve_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "the disk is full: released the space reserve so a metadata change can be written; free space (delete topics or records, or grow the filesystem) and it is made again");
            true
        }
        Err(_) => false,
    }
}

/// Runs `write` (a small metadata write); if it fails because the disk is
/// full, releases the reserve and runs it once more.
pub fn write_with_reserve<T>(
    data_dir: &Path,
    mut write: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match write() {
        Err(error) if is_out_of_space(&error) && release_reserve(data_dir) => write(),
        outcome => outcome,
    }
}

/// Logs once, at start, when the data directory's filesystem is full or
/// nearly so: the broker starts and serves reads, but writes will pause.
pub fn warn_if_full(data_dir: &Path, reserve_bytes: u64) {
    let Ok(space) = Space::of(data_dir) else {
        return;
    };
    let low_water = reserve_bytes.max(64 << 20);
    if space.free_bytes < low_water {
        tracing::warn!(
            data_dir = %data_dir.display(),
            free_bytes = space.free_bytes,
            total_bytes = space.total_bytes,
            "the data directory's filesystem is full or nearly full: reads are served, writes pause (KAFKA_STORAGE_ERROR, retriable) until space is freed; delete topics or records, lower retention, or grow the filesystem"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(ensure_reserve(dir.path(), 1 << 20));
        let path = dir.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&path).expect("reserve").len(), 1 << 20);
        assert!(release_reserve(dir.path()));
        assert!(!path.exists());
        assert!(!release_reserve(dir.path()));
        assert!(ensure_reserve(dir.path(), 1 << 20));
        assert!(ensure_reserve(dir.path(), 0));
    }

    #[test]
    fn a_full_disk_write_is_retried_once_after_releasing_the_reserve() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(ensure_reserve(dir.path(), 4096));
        let mut calls = 0;
        let outcome = write_with_reserve(dir.path(), || {
            calls += 1;
            if calls == 1 {
                Err(anyhow::Error::from(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ENOSPC as i32,
                ))
                .context("writing metadata"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(outcome.expect("second try"), 2);
        // No reserve left: a second full-disk failure is returned as is.
        let outcome: anyhow::Result<()> = write_with_reserve(dir.path(), || {
            Err(std::io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32).into())
        });
        assert!(outcome.is_err_and(|error| is_out_of_space(&error)));
        // Other errors are not retried.
        let mut tries = 0;
        let _: anyhow::Result<()> = write_with_reserve(dir.path(), || {
            tries += 1;
            Err(anyhow::anyhow!("not a space problem"))
        });
        assert_eq!(tries, 1);
    }

    #[test]
    fn space_of_a_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let space = Space::of(dir.path()).expect("statvfs");
        assert!(space.total_bytes > 0);
        assert!(space.free_bytes <= space.total_bytes);
    }
}
