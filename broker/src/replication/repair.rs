//! Self-healing of damaged batches: a replicated partition in which a read
//! (a consumer's fetch, a follower's fetch) found a batch failing its CRC
//! asks its other replicas for their copy of that batch and writes it back
//! in place, instead of leaving consumers and followers stalled at the
//! damage (what one damaged batch does to a single node's log).
//!
//! Why a copy is right: every replica holds a leader's batches exactly as
//! the leader stored them, and a (leader epoch, offset) pair names one
//! batch for good (KIP-101's premise), so any replica's batch starting at
//! the damaged offset in the same epoch *is* the lost bytes. Storage checks
//! it before writing (its CRC, offset, epoch, and that it fits the hole
//! exactly: `PartitionLog::repair_damaged`).
//!
//! Who does what: each shard's ticker looks for damaged partitions about
//! once a second ([`start_repairs`]); one repair per partition at a time,
//! again after [`RETRY`] if no replica could help (the damaged batch may
//! not be on any other replica yet, or they are down). The replica asked
//! answers from its own log ([`answer`]), whatever its role.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::links::ReplicaLinks;
use super::wire::{RepairAnswer, RepairRequest};
use super::NO_EPOCH;
use crate::cluster::liveness::monotonic_ms;
use crate::partition::Partition;
use crate::shard::Shard;

/// How long a repair that found no copy waits before trying again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How long one replica gets to answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts a repair for each damaged partition of `shard` that has none
/// running and is due.
pub fn start_repairs(shard: &Rc<Shard>, links: &Rc<ReplicaLinks>) {
    let now = monotonic_ms();
    for partition in shard.damaged_replicated_partitions() {
        let Some(replicated) = partition.replicated().cloned() else {
            continue;
        };
        if !links.claim_repair(replicated.wire_partition(), now) {
            continue;
        }
        let links = links.clone();
        glommio::spawn_local(async move {
            let key = replicated.wire_partition();
            let repaired = repair(&partition, &replicated, &links).await;
            links.finish_repair(key, repaired, monotonic_ms());
        })
        .detach();
    }
}

/// One attempt: the first damaged batch, asked of each other replica in
/// turn (in-sync ones first) until one copy is written. Whether it was.
async fn repair(
    partition: &Rc<Partition>,
    replicated: &Rc<super::driver::Replicated>,
    links: &Rc<ReplicaLinks>,
) -> bool {
    let (topic, index) = (&replicated.topic, replicated.index);
    let at = match partition.damaged_batch().await {
        Ok(Some(at)) => at,
        Ok(None) => return true, // repaired meanwhile, or not repairable
        Err(error) => {
            tracing::warn!(topic, partition = index, %error, "cannot locate the damaged batch");
            return false;
        }
    };
    let peers = replicated.peers_in_sync_first();
    for peer in &peers {
        let request = RepairRequest {
            request_id: 0, // set by the links
            partition: replicated.wire_partition(),
            epoch: at.epoch.unwrap_or(NO_EPOCH),
            offset: at.offset as i64,
        };
        let Some(batch) = links.ask_repair(*peer, request, ASK_TIMEOUT).await else {
            tracing::info!(
                topic,
                partition = index,
                peer,
                offset = at.offset,
                "replica has no copy of the damaged batch"
            );
            continue;
        };
        match partition.repair_damaged(at, batch).await {
            Ok(Ok(())) => {
                tracing::warn!(
                    topic,
                    partition = index,
                    peer,
                    offset = at.offset,
                    "damaged batch repaired with a replica's copy"
                );
                return true;
            }
            Ok(Err(refusal)) => {
                tracing::warn!(topic, partition = index, peer, offset = at.offset, %refusal, "replica's copy refused");
            }
            Err(error) => {
                tracing::error!(topic, partition = index, offset = at.offset, %error, "cannot write the repaired batch");
                return false;
            }
        }
    }
    tracing::warn!(topic, partition = index, offset = at.offset, ?peers, retry_in = ?RETRY, "no replica could repair the damaged batch; consumers stop before it until one can");
    false
}

/// The asked side: this node's copy of the batch, if it has one.
pub async fn answer(shard: &Rc<Shard>, request: RepairRequest) -> RepairAnswer {
    let batch = match (
        shard.replica_partition_by_id(&request.partition),
        u64::try_from(request.offset),
    ) {
        (Some(partition), Ok(offset)) => partition.batch_at(offset).await,
        _ => None,
    };
    // A copy of another epoch is not the lost batch: the asker refuses it
    // too, but there is no point sending it.
    let batch = batch.filter(|batch| {
        request.epoch == NO_EPOCH || batch_epoch(batch).is_some_and(|e| e == request.epoch)
    });
    RepairAnswer {
        request_id: request.request_id,
        partition: request.partition,
        batch,
    }
}

fn batch_epoch(batch: &Bytes) -> Option<i32> {
    kafki_storage::batch::BatchHeader::parse(batch)
        .ok()
        .map(|header| header.partition_leader_epoch)
}
