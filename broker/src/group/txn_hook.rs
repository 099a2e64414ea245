//! The hook a transaction marker calls on a `__consumer_offsets` partition
//! once the marker is durable there: transactional offset commits
//! (TxnOffsetCommit) of that producer become visible (COMMIT) or are
//! dropped (ABORT). Re-exported as `crate::group::runtime::complete_txn_offsets`.

use std::rc::Rc;

use crate::shard::Shard;

/// Called on the shard owning `__consumer_offsets` partition
/// `offsets_partition`, after a marker of `producer_id` (COMMIT when
/// `commit`) is durable in it.
///
/// Filled by the transactional offset-commit work.
pub fn complete_txn_offsets(
    _shard: &Rc<Shard>,
    _offsets_partition: i32,
    _producer_id: i64,
    _commit: bool,
) {
}
