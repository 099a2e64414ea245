//! The node-link frames that forward markers to the node leading their
//! partitions (`TxnMarkers`, kind 8) and bring back one error code per
//! partition (`TxnMarkersAnswer`, kind 9). Fixed layout, little-endian like
//! the other replication frames ([`crate::replication::wire`]), partitions
//! by topic id. Pure: bytes in, structs out, every count checked against
//! the bytes present before anything is allocated.
//!
//! `TxnMarkers`:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 1 | control type: 0 ABORT, 1 COMMIT |
//! | 2 | 2 | producer epoch, i16 |
//! | 4 | 4 | coordinator epoch, i32 |
//! | 8 | 8 | request id, u64 (echoed) |
//! | 16 | 8 | producer id, i64 |
//! | 24 | 4 | asking shard, u32 (echoed: where the answer goes) |
//! | 28 | 4 | partition count, u32 |
//! | 32 | 20 each | topic id (16), partition index i32 |
//!
//! `TxnMarkersAnswer`:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 3 | reserved (0) |
//! | 4 | 4 | asking shard, u32 |
//! | 8 | 8 | request id, u64 |
//! | 16 | 4 | partition count, u32 |
//! | 20 | 4 | reserved (0) |
//! | 24 | 24 each | topic id (16), partition index i32, error code i16, reserved (2) |

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::txn::{ControlType, EndTxnMarker};

const FRAME_VERSION: u8 = 1;
const REQUEST_FIXED_BYTES: usize = 32;
const REQUEST_PARTITION_BYTES: usize = 20;
const ANSWER_FIXED_BYTES: usize = 24;
const ANSWER_PARTITION_BYTES: usize = 24;
/// Partitions one frame may name (a transaction's partitions on one node).
pub const PARTITIONS_MAX: usize = 100_000;

/// A partition by topic id, as the node links name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MarkerPartition {
    pub topic_id: Uuid,
    pub partition_index: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkersRequest {
    pub request_id: u64,
    pub asking_shard: u32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub marker: EndTxnMarker,
    pub partitions: Vec<MarkerPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkersAnswer {
    pub request_id: u64,
    pub asking_shard: u32,
    pub partitions: Vec<(MarkerPartition, i16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {0} bytes does not match its partition count")]
    BadLength(usize),
    #[error("frame version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("unknown control type {0}")]
    UnknownControlType(u8),
    #[error("{0} partitions in one frame; at most {PARTITIONS_MAX}")]
    TooManyPartitions(usize),
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
}

pub fn encode_request(request: &MarkersRequest) -> Bytes {
    let mut body = BytesMut::with_capacity(
        REQUEST_FIXED_BYTES + request.partitions.len() * REQUEST_PARTITION_BYTES,
    );
    body.put_u8(FRAME_VERSION);
    body.put_u8(match request.marker.control_type {
        ControlType::Abort => 0,
        ControlType::Commit => 1,
    });
    body.put_i16_le(request.producer_epoch);
    body.put_i32_le(request.marker.coordinator_epoch);
    body.put_u64_le(request.request_id);
    body.put_i64_le(request.producer_id);
    body.put_u32_le(request.asking_shard);
    body.put_u32_le(request.partitions.len() as u32);
    for partition in &request.partitions {
        body.put_slice(partition.topic_id.as_bytes());
        body.put_i32_le(partition.partition_index);
    }
    body.freeze()
}

fn le_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The partition count at `at`, checked against the cap and the bytes
/// left (each entry `entry_bytes` long after `fixed_bytes`).
fn checked_count(
    body: &[u8],
    at: usize,
    fixed_bytes: usize,
    entry_bytes: usize,
) -> Result<usize, FrameError> {
    if body.len() < fixed_bytes {
        return Err(FrameError::BadLength(body.len()));
    }
    let count = u32::from_le_bytes(le_array(body, at)) as usize;
    if count > PARTITIONS_MAX {
        return Err(FrameError::TooManyPartitions(count));
    }
    if body.len() != fixed_bytes + count * entry_bytes {
        return Err(FrameError::BadLength(body.len()));
    }
    Ok(count)
}

fn partition_at(body: &[u8], at: usize) -> MarkerPartition {
    MarkerPartition {
        topic_id: Uuid::from_bytes(le_array(body, at)),
        partition_index: i32::from_le_bytes(le_array(body, at + 16)),
    }
}

fn check_version(body: &[u8]) -> Result<(), FrameError> {
    match body.first() {
        Some(&FRAME_VERSION) => Ok(()),
        Some(&other) => Err(FrameError::UnsupportedVersion(other)),
        None => Err(FrameError::BadLength(0)),
    }
}

pub fn decode_request(body: &[u8]) -> Result<MarkersRequest, FrameError> {
    check_version(body)?;
    let count = checked_count(body, 28, REQUEST_FIXED_BYTES, REQUEST_PARTITION_BYTES)?;
    let control_type = match body[1] {
        0 => ControlType::Abort,
        1 => ControlType::Commit,
        other => return Err(FrameError::UnknownControlType(other)),
    };
    let partitions = (0..count)
        .map(|index| partition_at(body, REQUEST_FIXED_BYTES + index * REQUEST_PARTITION_BYTES))
        .collect();
    Ok(MarkersRequest {
        producer_epoch: i16::from_le_bytes(le_array(body, 2)),
        marker: EndTxnMarker {
            control_type,
            coordinator_epoch: i32::from_le_bytes(le_array(body, 4)),
        },
        request_id: u64::from_le_bytes(le_array(body, 8)),
        producer_id: i64::from_le_bytes(le_array(body, 16)),
        asking_shard: u32::from_le_bytes(le_array(body, 24)),
        partitions,
    })
}

pub fn encode_answer(answer: &MarkersAnswer) -> Bytes {
    let mut body = BytesMut::with_capacity(
        ANSWER_FIXED_BYTES + answer.partitions.len() * ANSWER_PARTITION_BYTES,
    );
    body.put_u8(FRAME_VERSION);
    body.put_bytes(0, 3);
    body.put_u32_le(answer.asking_shard);
    body.put_u64_le(answer.request_id);
    body.put_u32_le(answer.partitions.len() as u32);
    body.put_bytes(0, 4);
    for (partition, error_code) in &answer.partitions {
        body.put_slice(partition.topic_id.as_bytes());
        body.put_i32_le(partition.partition_index);
        body.put_i16_le(*error_code);
        body.put_bytes(0, 2);
    }
    body.freeze()
}

pub fn decode_answer(body: &[u8]) -> Result<MarkersAnswer, FrameError> {
    check_version(body)?;
    let count = checked_count(body, 16, ANSWER_FIXED_BYTES, ANSWER_PARTITION_BYTES)?;
    if body[1..4] != [0; 3] || body[20..24] != [0; 4] {
        return Err(FrameError::ReservedNotZero);
    }
    let mut partitions = Vec::with_capacity(count);
    for index in 0..count {
        let at = ANSWER_FIXED_BYTES + index * ANSWER_PARTITION_BYTES;
        if body[at + 22..at + 24] != [0; 2] {
            return Err(FrameError::ReservedNotZero);
        }
        partitions.push((
            partition_at(body, at),
            i16::from_le_bytes(le_array(body, at + 20)),
        ));
    }
    Ok(MarkersAnswer {
        asking_shard: u32::from_le_bytes(le_array(body, 4)),
        request_id: u64::from_le_bytes(le_array(body, 8)),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(index: i32) -> MarkerPartition {
        MarkerPartition {
            topic_id: Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            partition_index: index,
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_bad_lengths() {
        let request = MarkersRequest {
            request_id: 9,
            asking_shard: 1,
            producer_id: 77,
            producer_epoch: 3,
            marker: EndTxnMarker {
                control_type: ControlType::Commit,
                coordinator_epoch: 5,
            },
            partitions: vec![partition(0), partition(4)],
        };
        let bytes = encode_request(&request);
        assert_eq!(bytes.len(), 32 + 2 * 20);
        assert_eq!(decode_request(&bytes), Ok(request));
        assert!(decode_request(&bytes[..bytes.len() - 1]).is_err());
        let mut lying = bytes.to_vec();
        lying[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_request(&lying).is_err());
        let mut unknown = bytes.to_vec();
        unknown[1] = 2;
        assert_eq!(
            decode_request(&unknown),
            Err(FrameError::UnknownControlType(2))
        );
        assert!(decode_request(&[]).is_err());

        let answer = MarkersAnswer {
            request_id: 9,
            asking_shard: 1,
            partitions: vec![(partition(0), 0), (partition(4), 6)],
        };
        let bytes = encode_answer(&answer);
        assert_eq!(decode_answer(&bytes), Ok(answer));
        assert!(decode_answer(&bytes[..30]).is_err());
        let mut reserved = bytes.to_vec();
        reserved[2] = 1;
        assert_eq!(decode_answer(&reserved), Err(FrameError::ReservedNotZero));
    }
}
