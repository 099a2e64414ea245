//! Producer ids: handed out by shard 0 from blocks reserved durably, so a
//! restart never reuses one. A single node reserves its blocks in
//! `<data-dir>/producer-ids`; a cluster member reserves them through the
//! metadata quorum ([`crate::metadata::MetadataRecord::ProducerIdBlock`]),
//! so no two nodes ever hand out the same id (Kafka's AllocateProducerIds).

use std::cell::Cell;
use std::path::Path;

/// Producer ids reserved per durable write of the allocator file.
const ID_BLOCK: i64 = 1000;
const ALLOCATOR_FILE: &str = "producer-ids";

/// Durable producer-id allocator, on the controller shard only. Ids are
/// reserved in blocks: the file holds the end of the last block, written
/// and synced on the executor's blocking threads (not on the shard), one
/// reservation at a time.
#[derive(Debug)]
pub struct ProducerIdAllocator {
    next: Cell<i64>,
    reserved_until: Cell<i64>,
    /// Held across a reservation's write, so two allocations never reserve
    /// the same block.
    reserving: glommio::sync::Semaphore,
}

impl Default for ProducerIdAllocator {
    fn default() -> Self {
        Self {
            next: Cell::new(0),
            reserved_until: Cell::new(0),
            reserving: glommio::sync::Semaphore::new(1),
        }
    }
}

impl ProducerIdAllocator {
    /// An id on a cluster member: from this node's block, reserving the
    /// next block through `quorum` when it is spent.
    pub async fn allocate_in_cluster(
        &self,
        quorum: &std::rc::Rc<crate::cluster::quorum::Quorum>,
        node: i32,
        data_dir: &Path,
    ) -> Result<i64, String> {
        self.allocate_range_in_cluster(quorum, node, data_dir, 1)
            .await
            .map(|(first, _)| first)
    }

    /// Up to `wanted` consecutive ids `[first, first + count)` on a cluster
    /// member (at least one; fewer when the current block ends first): what
    /// a transaction coordinator takes at once.
    pub async fn allocate_range_in_cluster(
        &self,
        quorum: &std::rc::Rc<crate::cluster::quorum::Quorum>,
        node: i32,
        data_dir: &Path,
        wanted: u64,
    ) -> Result<(i64, u64), String> {
        let _permit = self
            .reserving
            .acquire_permit(1)
            .await
            .map_err(|_| "the node is shutting down".to_string())?;
        if self.next.get() >= self.reserved_until.get() {
            // Ids a node handed out from its own file before its blocks came
            // from the quorum stay below every block.
            let path = data_dir.join(ALLOCATOR_FILE);
            let at_least = kafki_storage::checkpoint::off_executor(move || {
                std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .await;
            let record = crate::metadata::MetadataRecord::ProducerIdBlock {
                node,
                count: ID_BLOCK,
                at_least,
            };
            quorum
                .propose(vec![record], None, std::time::Duration::from_secs(10))
                .await
                .map_err(|error| format!("cannot reserve producer ids: {error}"))?;
            let (first, end) = quorum
                .image()
                .producer_id_blocks
                .get(&node)
                .copied()
                .ok_or_else(|| "the reserved producer-id block is not in the image".to_string())?;
            self.next.set(first);
            self.reserved_until.set(end);
        }
        Ok(self.take(wanted))
    }

    pub async fn allocate(&self, data_dir: &Path) -> Result<i64, String> {
        self.allocate_range(data_dir, 1)
            .await
            .map(|(first, _)| first)
    }

    /// Up to `wanted` consecutive ids on a single node (at least one; fewer
    /// when the reserved block ends first).
    pub async fn allocate_range(&self, data_dir: &Path, wanted: u64) -> Result<(i64, u64), String> {
        let _permit = self
            .reserving
            .acquire_permit(1)
            .await
            .map_err(|_| "the controller is shutting down".to_string())?;
        if self.reserved_until.get() == 0 {
            let path = data_dir.join(ALLOCATOR_FILE);
            let stored = kafki_storage::checkpoint::off_executor(move || {
                std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .unwrap_or(0)
            })
            .await;
            self.next.set(stored);
            self.reserved_until.set(stored);
        }
        if self.next.get() >= self.reserved_until.get() {
            let until = self.reserved_until.get() + ID_BLOCK;
            let dir = data_dir.to_path_buf();
            kafki_storage::checkpoint::off_executor(move || write_durably(&dir, until)).await?;
            self.reserved_until.set(until);
        }
        Ok(self.take(wanted))
    }

    /// Takes `[first, first + count)` from the reserved block, which the
    /// callers made non-empty: `count` is between 1 and `wanted`.
    fn take(&self, wanted: u64) -> (i64, u64) {
        let first = self.next.get();
        let left = u64::try_from(self.reserved_until.get() - first).unwrap_or(0);
        let count = wanted.clamp(1, left.max(1));
        self.next.set(first + count as i64);
        (first, count)
    }
}

fn write_durably(data_dir: &Path, until: i64) -> Result<(), String> {
    use std::io::Write;
    let temp = data_dir.join(format!("{ALLOCATOR_FILE}.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(format!("{until}\n").as_bytes())?;
        file.sync_data()?;
        std::fs::rename(&temp, data_dir.join(ALLOCATOR_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    })();
    result.map_err(|error| format!("cannot reserve producer ids: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_never_reuses_ids_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let first = ProducerIdAllocator::default();
                let a = first.allocate(&path).await.expect("id");
                let b = first.allocate(&path).await.expect("id");
                assert_eq!(b, a + 1);
                // Concurrent allocations never share an id.
                let (c, d) = futures::join!(first.allocate(&path), first.allocate(&path));
                let (c, d) = (c.expect("id"), d.expect("id"));
                assert!(c > b && d > b && c != d);
                let restarted = ProducerIdAllocator::default();
                let e = restarted.allocate(&path).await.expect("id");
                assert!(e > c.max(d), "{e} after restart must exceed {c} and {d}");
                // A range for a transaction coordinator: consecutive ids,
                // never shared with the single ids around it.
                let (first, count) = restarted.allocate_range(&path, 10).await.expect("ids");
                assert_eq!((first, count), (e + 1, 10));
                let after = restarted.allocate(&path).await.expect("id");
                assert_eq!(after, first + 10);
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
