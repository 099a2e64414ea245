//! A small ext4 image mounted on a loop device (needs root), for tests of
//! full and stalled disks; thawed and unmounted on drop. Shared by the
//! storage and broker test suites (`#[path]`-included).
//!
//! Where loop devices cannot be mounted, [`LoopFs::mount`] fails with the
//! reason, unless `KAFKI_NO_LOOP_MOUNT=1` says to skip (then it prints that
//! it skipped and returns `None`): a test that cannot run is never counted
//! as passed silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopFs {
    _work: tempfile::TempDir,
    pub mount: PathBuf,
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?} failed (loop-mounted test filesystems need root and loop devices; KAFKI_NO_LOOP_MOUNT=1 skips these tests): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl LoopFs {
    /// Mounts a fresh `bytes`-sized ext4 image under `work` (a temp dir
    /// on a real disk, removed with the image after the unmount).
    pub fn mount(work: tempfile::TempDir, bytes: u64) -> Option<Self> {
        if std::env::var_os("KAFKI_NO_LOOP_MOUNT").is_some() {
            eprintln!("SKIPPED: KAFKI_NO_LOOP_MOUNT is set");
            return None;
        }
        let image = work.path().join("disk.img");
        let mount = work.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(bytes))
            .expect("image file");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        Some(Self { _work: work, mount })
    }

    /// Freezes the filesystem (`fsfreeze -f`): writes and syncs block in
    /// the kernel until [`LoopFs::thaw`], as on a disk that stopped
    /// answering.
    pub fn freeze(&self) {
        run(Command::new("fsfreeze").arg("-f").arg(&self.mount));
    }

    pub fn thaw(&self) {
        run(Command::new("fsfreeze").arg("-u").arg(&self.mount));
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
