//! The node-link frames that carry KIP-890's verification from a partition
//! leader to the transaction coordinator on another node (`TxnVerify`,
//! kind 10) and its answer back (`TxnVerifyAnswer`, kind 11). Pure: bytes
//! in, structs out.
//!
//! The body after a fixed header is Kafka's own message at
//! AddPartitionsToTxn v4 (the request with `verify_only`, and its
//! response), encoded by `kafka-protocol`, so the coordinator's node
//! answers it with the very handler a Kafka broker's request would reach
//! (`crate::handlers::txn::add_partitions_to_txn`) and no message type is
//! copied by hand. The header only routes the answer:
//!
//! | at | bytes | field |
//! |---|---|---|
//! | 0 | 1 | version (1) |
//! | 1 | 3 | reserved (0) |
//! | 4 | 4 | asking shard, u32 LE (echoed: where the answer goes) |
//! | 8 | 8 | request id, u64 LE (echoed) |
//! | 16 | … | AddPartitionsToTxnRequest / Response, version 4 |

use bytes::{BufMut, Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};
use kafki_net::kafka_protocol::protocol::{Decodable, Encodable};

const FRAME_VERSION: u8 = 1;
const HEADER_BYTES: usize = 16;
/// The AddPartitionsToTxn version both ends speak (the first with
/// `verify_only`).
pub const ADD_PARTITIONS_VERSION: i16 = 4;

/// A leader's question: the AddPartitionsToTxn it would send to the
/// coordinator (every transaction `verify_only`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRequest {
    pub request_id: u64,
    pub asking_shard: u32,
    pub body: AddPartitionsToTxnRequest,
}

/// The coordinator node's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyAnswer {
    pub request_id: u64,
    pub asking_shard: u32,
    pub body: AddPartitionsToTxnResponse,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("frame version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
    #[error("the AddPartitionsToTxn body does not encode or decode: {0}")]
    Body(String),
}

fn encode<T: Encodable>(request_id: u64, asking_shard: u32, body: &T) -> Result<Bytes, FrameError> {
    let size = body
        .compute_size(ADD_PARTITIONS_VERSION)
        .map_err(|error| FrameError::Body(error.to_string()))?;
    let mut frame = BytesMut::with_capacity(HEADER_BYTES + size);
    frame.put_u8(FRAME_VERSION);
    frame.put_slice(&[0; 3]);
    frame.put_u32_le(asking_shard);
    frame.put_u64_le(request_id);
    body.encode(&mut frame, ADD_PARTITIONS_VERSION)
        .map_err(|error| FrameError::Body(error.to_string()))?;
    Ok(frame.freeze())
}

/// (request id, asking shard, body) of a frame whose header checks out.
fn decode<T: Decodable>(frame: &[u8]) -> Result<(u64, u32, T), FrameError> {
    let Some((header, body)) = frame.split_at_checked(HEADER_BYTES) else {
        return Err(FrameError::Short(frame.len()));
    };
    if header[0] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(header[0]));
    }
    if header[1..4] != [0; 3] {
        return Err(FrameError::ReservedNotZero);
    }
    let asking_shard = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let mut request_id = [0; 8];
    request_id.copy_from_slice(&header[8..16]);
    let mut body = Bytes::copy_from_slice(body);
    let decoded = T::decode(&mut body, ADD_PARTITIONS_VERSION)
        .map_err(|error| FrameError::Body(error.to_string()))?;
    Ok((u64::from_le_bytes(request_id), asking_shard, decoded))
}

pub fn encode_request(request: &VerifyRequest) -> Result<Bytes, FrameError> {
    encode(request.request_id, request.asking_shard, &request.body)
}

pub fn decode_request(frame: &[u8]) -> Result<VerifyRequest, FrameError> {
    let (request_id, asking_shard, body) = decode(frame)?;
    Ok(VerifyRequest {
        request_id,
        asking_shard,
        body,
    })
}

pub fn encode_answer(answer: &VerifyAnswer) -> Result<Bytes, FrameError> {
    encode(answer.request_id, answer.asking_shard, &answer.body)
}

pub fn decode_answer(frame: &[u8]) -> Result<VerifyAnswer, FrameError> {
    let (request_id, asking_shard, body) = decode(frame)?;
    Ok(VerifyAnswer {
        request_id,
        asking_shard,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafki_net::kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    };
    use kafki_net::kafka_protocol::messages::{ProducerId, TopicName, TransactionalId};
    use kafki_net::kafka_protocol::protocol::StrBytes;

    fn request() -> VerifyRequest {
        VerifyRequest {
            request_id: 0x0102_0304_0506_0708,
            asking_shard: 3,
            body: AddPartitionsToTxnRequest::default().with_transactions(vec![
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                    .with_producer_id(ProducerId(42))
                    .with_producer_epoch(7)
                    .with_verify_only(true)
                    .with_topics(vec![AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partitions(vec![0, 5])]),
            ]),
        }
    }

    #[test]
    fn a_request_reads_back_as_itself() {
        let sent = request();
        let frame = encode_request(&sent).expect("encodes");
        assert_eq!(frame[0], FRAME_VERSION);
        assert_eq!(&frame[4..8], &3u32.to_le_bytes());
        assert_eq!(decode_request(&frame), Ok(sent));
    }

    #[test]
    fn an_answer_reads_back_as_itself() {
        let sent = VerifyAnswer {
            request_id: 9,
            asking_shard: 1,
            body: AddPartitionsToTxnResponse::default().with_results_by_transaction(vec![
                AddPartitionsToTxnResult::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                    .with_topic_results(vec![AddPartitionsToTxnTopicResult::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_results_by_partition(vec![
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(5)
                                .with_partition_error_code(48),
                        ])]),
            ]),
        };
        let frame = encode_answer(&sent).expect("encodes");
        assert_eq!(decode_answer(&frame), Ok(sent));
    }

    #[test]
    fn damaged_frames_are_refused() {
        let frame = encode_request(&request()).expect("encodes");
        assert_eq!(decode_request(&frame[..10]), Err(FrameError::Short(10)));
        let mut versioned = frame.to_vec();
        versioned[0] = 2;
        assert_eq!(
            decode_request(&versioned),
            Err(FrameError::UnsupportedVersion(2))
        );
        let mut reserved = frame.to_vec();
        reserved[2] = 1;
        assert_eq!(decode_request(&reserved), Err(FrameError::ReservedNotZero));
        assert!(matches!(
            decode_request(&frame[..frame.len() - 3]),
            Err(FrameError::Body(_))
        ));
    }
}
