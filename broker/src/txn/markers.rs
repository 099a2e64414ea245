//! Writing a transaction's end markers (COMMIT/ABORT control batches) to
//! the partitions of a transaction: the seam between the coordinator
//! runtime ([`super::runtime`]) and the partition side.
//!
//! **Stub, replaced by the partition-side work**: this body writes nothing
//! and answers every partition with a retriable error, so a transaction
//! with partitions stays in PrepareCommit/PrepareAbort (its markers retried
//! with backoff) until the real writer is integrated. The signature is the
//! contract both sides build against.

use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;

use super::{MarkerRequest, TopicPartition};
use crate::shard::Shard;

/// Writes `request`'s marker to each of its partitions (on their owner
/// shards and leaders); per partition its error code, 0 when the marker
/// was written. Called on the coordinator's shard.
pub async fn write_markers(
    _shard: &Rc<Shard>,
    request: &MarkerRequest,
) -> Vec<(TopicPartition, i16)> {
    // Retriable (the coordinator retries); replaced by the partition side.
    let not_written = ResponseError::CoordinatorLoadInProgress.code();
    request
        .partitions
        .iter()
        .map(|partition| (partition.clone(), not_written))
        .collect()
}
