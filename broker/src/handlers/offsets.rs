//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), and the
//! first offset whose timestamp is ≥ T.
//!
//! Storage finds the first *batch* whose max timestamp is ≥ T; the exact
//! record is then found by walking that batch's records, decompressing a
//! compressed batch up to [`DECOMPRESSED_BATCH_BYTES_MAX`](crate::records::DECOMPRESSED_BATCH_BYTES_MAX). A batch that
//! decompresses to more (or fails to) answers its base offset, which is at
//! or before the exact answer, so a consumer starting there misses nothing.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafki_net::kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafki_storage::records::first_record_at_or_after;

use crate::errors::code_for_log_error;
use crate::shard::Shard;

const EARLIEST: i64 = -2;
const LATEST: i64 = -1;
/// Kafka's isolation level `READ_COMMITTED`: lookups see only offsets below
/// the last stable offset (LATEST is the last stable offset).
const READ_COMMITTED: i8 = 1;
const MAX_TIMESTAMP: i64 = -3;

#[derive(Debug, Clone, Copy)]
struct Lookup {
    slot: usize,
    partition: i32,
    timestamp: i64,
    current_leader_epoch: i32,
    read_committed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Found {
    slot: usize,
    error_code: i16,
    timestamp: i64,
    offset: i64,
    /// The leader epoch of the batch holding `offset` (-1 when unknown).
    leader_epoch: i32,
}

pub async fn list_offsets(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut layout = Vec::new();
    let mut by_shard: BTreeMap<usize, Vec<(String, Lookup)>> = BTreeMap::new();
    let mut slots = 0usize;
    for topic in &request.topics {
        let name = topic.name.to_string();
        let mut partitions = Vec::new();
        for wanted in &topic.partitions {
            let lookup = Lookup {
                slot: slots,
                partition: wanted.partition_index,
                timestamp: wanted.timestamp,
                current_leader_epoch: wanted.current_leader_epoch,
                read_committed: request.isolation_level == READ_COMMITTED,
            };
            slots += 1;
            partitions.push(wanted.partition_index);
            by_shard
                .entry(shard.owner_of(&name, wanted.partition_index))
                .or_default()
                .push((name.clone(), lookup));
        }
        layout.push((topic.name.clone(), partitions));
    }
    let mut found: Vec<Option<Found>> = vec![None; slots];
    for (owner, lookups) in by_shard {
        let results = shard
            .invoke_on(owner, move |owner| async move {
                let mut results = Vec::with_capacity(lookups.len());
                for (topic, lookup) in lookups {
                    results.push(lookup_on_owner(&owner, &topic, lookup).await);
                }
                results
            })
            .await
            .unwrap_or_default();
        for result in results {
            if let Some(entry) = found.get_mut(result.slot) {
                *entry = Some(result);
            }
        }
    }
    let mut slot = 0;
    let topics = layout
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|index| {
                    let result = found.get(slot).copied().flatten().unwrap_or(Found {
                        slot,
                        error_code: ResponseError::UnknownServerError.code(),
                        timestamp: -1,
                        offset: -1,
                        leader_epoch: -1,
                    });
                    slot += 1;
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(index)
                        .with_error_code(result.error_code)
                        .with_timestamp(result.timestamp)
                        .with_offset(result.offset)
                        .with_leader_epoch(if version >= 4 {
                            result.leader_epoch
                        } else {
                            -1
                        })
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

async fn lookup_on_owner(shard: &Shard, topic: &str, lookup: Lookup) -> Found {
    let mut found = Found {
        slot: lookup.slot,
        error_code: 0,
        timestamp: -1,
        offset: -1,
        leader_epoch: -1,
    };
    let partition = match shard.partition(topic, lookup.partition).await {
        Ok(partition) => partition,
        Err(code) => {
            found.error_code = code;
            return found;
        }
    };
    if let Err(code) = partition.check_leader_epoch(lookup.current_leader_epoch) {
        found.error_code = code;
        return found;
    }
    let offsets = partition.offsets();
    // The end of what the asker may read: named `high_watermark` below,
    // the last stable offset for a read_committed asker.
    let high_watermark = if lookup.read_committed {
        partition.last_stable_offset() as i64
    } else {
        offsets.high_watermark as i64
    };
    match lookup.timestamp {
        EARLIEST => found.offset = offsets.log_start_offset as i64,
        LATEST => found.offset = high_watermark,
        MAX_TIMESTAMP => {
            if let Some((timestamp, offset)) = partition.max_timestamp() {
                if (offset as i64) < high_watermark {
                    found.timestamp = timestamp;
                    found.offset = offset as i64;
                }
            }
        }
        timestamp if timestamp >= 0 => match partition.find_by_timestamp(timestamp).await {
            Ok(Some(hit)) if (hit.base_offset as i64) < high_watermark => {
                let exact = match partition.read(hit.base_offset, 1).await {
                    Ok(read) => match read.load().await {
                        Ok(bytes) => match first_record_at_or_after(
                            &bytes,
                            timestamp,
                            crate::records::DECOMPRESSED_BATCH_BYTES_MAX,
                        ) {
                            Ok(exact) => exact,
                            Err(error) => {
                                tracing::warn!(topic = %partition.topic, partition = partition.index,
                                    base_offset = hit.base_offset, %error,
                                    "timestamp lookup inside a batch failed; answering its base offset");
                                None
                            }
                        },
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                let (record_offset, record_timestamp) =
                    exact.unwrap_or((hit.base_offset as i64, hit.max_timestamp));
                found.offset = record_offset.max(offsets.log_start_offset as i64);
                found.timestamp = record_timestamp;
            }
            Ok(_) => {}
            Err(error) => found.error_code = code_for_log_error(&error),
        },
        _ => found.error_code = ResponseError::InvalidRequest.code(),
    }
    // Kafka answers the latest epoch for the log end, else the epoch of the
    // batch the offset lies in.
    found.leader_epoch = match (found.error_code, lookup.timestamp) {
        (0, LATEST) => partition.latest_epoch(),
        (0, _) if found.offset >= 0 => partition.epoch_at(found.offset as u64),
        _ => -1,
    };
    found
}
