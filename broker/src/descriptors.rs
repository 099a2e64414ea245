//! The process's file-descriptor limit (`RLIMIT_NOFILE`) and the share of it
//! that partition logs may hold.
//!
//! Every open segment holds [`DESCRIPTORS_PER_SEGMENT`] descriptors, so a
//! node with thousands of written partitions needs tens of thousands; the
//! usual default soft limit is 1024. At start `kafki serve` raises its soft
//! limit to the hard limit (as databases and Kafka's own start scripts
//! expect) and logs both once. Partition logs may then hold up to the limit
//! minus [`DESCRIPTORS_RESERVED`] (listeners, connections, io_uring, the
//! small files written beside the logs). A partition whose open would pass
//! that is closed again and answers `KAFKA_STORAGE_ERROR` (retriable) while
//! the partitions that fit are served; one warning says how many
//! descriptors the partitions on disk need.
//!
//! The budget is counted per partition when its log opens (its open
//! segment files at that moment) and given back when the partition is
//! dropped; segments a log rolls later are not counted, so the reserve also
//! covers that growth. Shared by every shard (atomics, no lock).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use kafki_storage::segment::DESCRIPTORS_PER_SEGMENT;

/// Descriptors kept for everything but partition logs.
pub const DESCRIPTORS_RESERVED: u64 = 1024;

/// What partition logs may hold, broker-wide.
#[derive(Debug, Default)]
pub struct DescriptorBudget {
    /// Descriptors partition logs may hold; 0: no limit known (tests, tools).
    limit: AtomicU64,
    used: AtomicU64,
    warned: AtomicBool,
}

/// Descriptors one open partition is counted for; given back on drop.
#[derive(Debug)]
pub struct DescriptorCharge {
    budget: Arc<DescriptorBudget>,
    amount: u64,
}

impl DescriptorCharge {
    /// Descriptors counted.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Takes over `other`'s share (one charge per partition).
    pub fn absorb(&mut self, mut other: DescriptorCharge) {
        self.amount += std::mem::take(&mut other.amount);
    }
}

impl Drop for DescriptorCharge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.amount, Ordering::SeqCst);
    }
}

impl DescriptorBudget {
    /// Sets what partition logs may hold, from the process's soft limit.
    pub fn set_limit(&self, soft_limit: u64) {
        let limit = soft_limit.saturating_sub(DESCRIPTORS_RESERVED).max(1);
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Charges `segments` open segment files to the budget, or `None` when
    /// they do not fit (nothing charged then).
    pub fn charge(self: &Arc<Self>, segments: u64) -> Option<DescriptorCharge> {
        let amount = segments * DESCRIPTORS_PER_SEGMENT;
        let limit = self.limit.load(Ordering::SeqCst);
        let before = self.used.fetch_add(amount, Ordering::SeqCst);
        if limit > 0 && before + amount > limit && amount > 0 {
            self.used.fetch_sub(amount, Ordering::SeqCst);
            return None;
        }
        Some(DescriptorCharge {
            budget: self.clone(),
            amount,
        })
    }

    /// Descriptors charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// True the first time only: whoever gets it logs the warning.
    pub fn first_warning(&self) -> bool {
        !self.warned.swap(true, Ordering::SeqCst)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit in force afterwards (logged once at info).
pub fn raise_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the descriptor limit (RLIMIT_NOFILE)");
            return 0;
        }
    };
    if soft >= hard {
        tracing::info!(soft, hard, "descriptor limit (RLIMIT_NOFILE)");
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                previous_soft = soft,
                soft = hard,
                hard,
                "raised the descriptor limit (RLIMIT_NOFILE) to its hard limit"
            );
            hard
        }
        Err(error) => {
            tracing::warn!(soft, hard, %error, "cannot raise the descriptor limit (RLIMIT_NOFILE)");
            soft
        }
    }
}

/// Segment files (`*.log`) under the data directory's partition
/// directories: what the partitions on disk hold open once opened.
pub fn segment_files_on_disk(data_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| segment_files_in(&entry.path()))
        .sum()
}

/// Segment files (`*.log`) in one partition directory (0 if it is
/// missing): what its log will hold open. Counted before the open, so a
/// partition that does not fit is refused without opening it (opening and
/// closing it again on every request churned descriptors at the limit).
/// `None` when the directory cannot be listed (out of descriptors, most
/// likely): the open would fail too.
pub fn segment_files_in(partition_dir: &Path) -> Option<u64> {
    match std::fs::read_dir(partition_dir) {
        Ok(files) => Some(
            files
                .flatten()
                .filter(|file| file.file_name().to_string_lossy().ends_with(".log"))
                .count() as u64,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Descriptors needed to open every segment on disk, with the reserve.
pub fn needed_for(segment_files: u64) -> u64 {
    segment_files * DESCRIPTORS_PER_SEGMENT + DESCRIPTORS_RESERVED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_come_back_on_drop() {
        let budget = Arc::new(DescriptorBudget::default());
        // No limit known: everything fits.
        let unlimited = budget.charge(1_000_000).expect("no limit");
        drop(unlimited);
        assert_eq!(budget.used(), 0);
        budget.set_limit(DESCRIPTORS_RESERVED + 10);
        let first = budget.charge(3).expect("6 of 10");
        assert!(budget.charge(3).is_none(), "12 of 10 must not fit");
        assert_eq!(budget.used(), 6);
        let second = budget.charge(2).expect("10 of 10");
        // An empty log holds no segment file: it always fits.
        let empty = budget.charge(0).expect("nothing to hold");
        drop((first, second));
        let mut grown = empty;
        grown.absorb(budget.charge(1).expect("2 of 10"));
        assert_eq!(budget.used(), 2);
        drop(grown);
        assert_eq!(budget.used(), 0);
        assert!(budget.first_warning());
        assert!(!budget.first_warning());
    }
}
