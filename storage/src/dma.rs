//! Direct-I/O helpers that every executor needs before its first `DmaFile`.
//!
//! glommio probes polled I/O with the first `DmaFile` it opens on a device by
//! reading that file. When that first file is new and empty, later `DmaFile`
//! reads on the device fail with `EOPNOTSUPP` (os error 95) on virtio disks.
//! Opening and reading a non-empty file on the same device first, once per
//! executor thread, makes the probe succeed (see DESIGN.md, machine facts).

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use glommio::io::DmaFile;

use crate::error::{glommio_io, LogError, LogResult};
use crate::segment::BLOCK_BYTES;

const PROBE_FILE: &str = ".kafki-dma-probe";

thread_local! {
    /// Devices (st_dev) this thread has already primed.
    static PRIMED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Whether `dir` is on tmpfs, where `O_DIRECT` is silently ignored (no
/// device, no durability): benchmarks and durability claims mean nothing there.
pub fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|stat| stat.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Primes glommio's polled-I/O probe for the device holding `dir` on this
/// thread. Cheap after the first call per device.
pub async fn prime_device(dir: &Path) -> LogResult<()> {
    let device = std::fs::metadata(dir)
        .map_err(|source| LogError::io("stat", dir, source))?
        .dev();
    if PRIMED_DEVICES.with(|primed| primed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(PROBE_FILE);
    let long_enough = std::fs::metadata(&probe).is_ok_and(|meta| meta.len() >= BLOCK_BYTES);
    if !long_enough {
        std::fs::write(&probe, vec![0u8; BLOCK_BYTES as usize])
            .map_err(|source| LogError::io("write probe", &probe, source))?;
    }
    let file = DmaFile::open(&probe)
        .await
        .map_err(|error| LogError::io("open probe", &probe, glommio_io(error)))?;
    let read = file.read_at_aligned(0, BLOCK_BYTES as usize).await;
    let _ = file.close().await;
    read.map_err(|error| LogError::io("read probe", &probe, glommio_io(error)))?;
    PRIMED_DEVICES.with(|primed| primed.borrow_mut().insert(device));
    Ok(())
}
