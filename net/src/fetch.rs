//! A Fetch response encoder that leaves the record bytes out, so the broker
//! can send them from wherever they are (a file region with `splice`, or
//! shared in-memory buffers) without copying them into the response.
//!
//! [`encode_fetch_response`] returns the response as byte chunks: the
//! records of the i-th partition (in response order) go right after chunk
//! `i`; the frame's length prefix already counts them. Versions 4–12 (v12 is
//! the first flexible version), byte-identical to `kafka-protocol`'s own
//! encoding of the same response (see the tests).

use bytes::{BufMut, Bytes, BytesMut};

use crate::response::EncodeError;
use crate::CorrelationId;

/// Oldest and newest Fetch versions this encoder writes.
pub const FETCH_VERSION_MIN: i16 = 4;
pub const FETCH_VERSION_MAX: i16 = 12;

/// One partition's answer, without its record bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionHead {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// `(producer id, first offset)` of aborted transactions; `None` is null.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    pub preferred_read_replica: i32,
    /// Length of the records that follow this partition's chunk; `None`
    /// encodes a null records field.
    pub records_len: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopicHead {
    pub topic: String,
    pub partitions: Vec<FetchPartitionHead>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponseHead {
    pub throttle_time_ms: i32,
    pub error_code: i16,
    pub session_id: i32,
    pub topics: Vec<FetchTopicHead>,
}

fn put_unsigned_varint(buffer: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buffer.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buffer.put_u8(value as u8);
}

fn put_string(buffer: &mut BytesMut, text: &str, flexible: bool) -> Result<(), EncodeError> {
    if flexible {
        put_unsigned_varint(buffer, text.len() as u64 + 1);
    } else {
        let length = i16::try_from(text.len()).map_err(|_| EncodeError::FrameTooLarge {
            length_bytes: text.len(),
        })?;
        buffer.put_i16(length);
    }
    buffer.put_slice(text.as_bytes());
    Ok(())
}

fn put_array_length(
    buffer: &mut BytesMut,
    length: Option<usize>,
    flexible: bool,
) -> Result<(), EncodeError> {
    match (length, flexible) {
        (None, true) => put_unsigned_varint(buffer, 0),
        (None, false) => buffer.put_i32(-1),
        (Some(length), true) => put_unsigned_varint(buffer, length as u64 + 1),
        (Some(length), false) => {
            buffer.put_i32(
                i32::try_from(length).map_err(|_| EncodeError::FrameTooLarge {
                    length_bytes: length,
                })?,
            )
        }
    }
    Ok(())
}

/// Encodes a Fetch response frame (length prefix included) as chunks; see
/// the module comment for where the records go.
pub fn encode_fetch_response(
    correlation_id: CorrelationId,
    version: i16,
    head: &FetchResponseHead,
) -> Result<Vec<Bytes>, EncodeError> {
    if !(FETCH_VERSION_MIN..=FETCH_VERSION_MAX).contains(&version) {
        return Err(EncodeError::Unencodable {
            api_key: kafka_protocol::messages::ApiKey::Fetch,
            api_version: version,
            reason: "outside the versions the zero-copy encoder writes".into(),
        });
    }
    let flexible = version >= 12;
    let mut chunks = Vec::new();
    let mut current = BytesMut::with_capacity(256);
    current.put_i32(0); // frame length, filled in at the end
    current.put_i32(correlation_id.0);
    if flexible {
        put_unsigned_varint(&mut current, 0); // response header tagged fields
    }
    current.put_i32(head.throttle_time_ms);
    if version >= 7 {
        current.put_i16(head.error_code);
        current.put_i32(head.session_id);
    }
    put_array_length(&mut current, Some(head.topics.len()), flexible)?;
    let mut records_total: u64 = 0;
    for topic in &head.topics {
        put_string(&mut current, &topic.topic, flexible)?;
        put_array_length(&mut current, Some(topic.partitions.len()), flexible)?;
        for partition in &topic.partitions {
            current.put_i32(partition.partition_index);
            current.put_i16(partition.error_code);
            current.put_i64(partition.high_watermark);
            current.put_i64(partition.last_stable_offset);
            if version >= 5 {
                current.put_i64(partition.log_start_offset);
            }
            let aborted = partition.aborted_transactions.as_ref();
            put_array_length(&mut current, aborted.map(Vec::len), flexible)?;
            for (producer_id, first_offset) in aborted.into_iter().flatten() {
                current.put_i64(*producer_id);
                current.put_i64(*first_offset);
                if flexible {
                    put_unsigned_varint(&mut current, 0);
                }
            }
            if version >= 11 {
                current.put_i32(partition.preferred_read_replica);
            }
            match (partition.records_len, flexible) {
                (None, true) => put_unsigned_varint(&mut current, 0),
                (None, false) => current.put_i32(-1),
                (Some(length), true) => put_unsigned_varint(&mut current, length + 1),
                (Some(length), false) => current.put_i32(i32::try_from(length).map_err(|_| {
                    EncodeError::FrameTooLarge {
                        length_bytes: length as usize,
                    }
                })?),
            }
            records_total += partition.records_len.unwrap_or(0);
            chunks.push(std::mem::replace(&mut current, BytesMut::with_capacity(64)));
            if flexible {
                put_unsigned_varint(&mut current, 0); // partition tagged fields
            }
        }
        if flexible {
            put_unsigned_varint(&mut current, 0); // topic tagged fields
        }
    }
    if flexible {
        put_unsigned_varint(&mut current, 0); // body tagged fields
    }
    chunks.push(current);
    let header_bytes: usize = chunks.iter().map(BytesMut::len).sum();
    let frame = (header_bytes as u64 - 4) + records_total;
    let frame = i32::try_from(frame).map_err(|_| EncodeError::FrameTooLarge {
        length_bytes: frame as usize,
    })?;
    chunks[0][..4].copy_from_slice(&frame.to_be_bytes());
    Ok(chunks.into_iter().map(BytesMut::freeze).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, FetchResponse, ProducerId, ResponseKind, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    fn reference(
        correlation_id: CorrelationId,
        version: i16,
        head: &FetchResponseHead,
        records: &[Option<Bytes>],
    ) -> Bytes {
        let mut next = records.iter();
        let responses = head
            .topics
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        let aborted = partition.aborted_transactions.as_ref().map(|list| {
                            list.iter()
                                .map(|(producer_id, first_offset)| {
                                    AbortedTransaction::default()
                                        .with_producer_id(ProducerId(*producer_id))
                                        .with_first_offset(*first_offset)
                                })
                                .collect()
                        });
                        PartitionData::default()
                            .with_partition_index(partition.partition_index)
                            .with_error_code(partition.error_code)
                            .with_high_watermark(partition.high_watermark)
                            .with_last_stable_offset(partition.last_stable_offset)
                            .with_log_start_offset(if version >= 5 {
                                partition.log_start_offset
                            } else {
                                -1
                            })
                            .with_aborted_transactions(aborted)
                            .with_preferred_read_replica(BrokerId(if version >= 11 {
                                partition.preferred_read_replica
                            } else {
                                -1
                            }))
                            .with_records(next.next().cloned().flatten())
                    })
                    .collect();
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.topic.clone())))
                    .with_partitions(partitions)
            })
            .collect();
        let response = FetchResponse::default()
            .with_throttle_time_ms(head.throttle_time_ms)
            .with_error_code(if version >= 7 { head.error_code } else { 0 })
            .with_session_id(if version >= 7 { head.session_id } else { 0 })
            .with_responses(responses);
        crate::encode_response(
            correlation_id,
            ApiKey::Fetch,
            version,
            &ResponseKind::Fetch(response),
        )
        .expect("reference encoding")
    }

    fn interleave(chunks: &[Bytes], records: &[Option<Bytes>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            out.extend_from_slice(chunk);
            if let Some(Some(bytes)) = records.get(index) {
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    prop_compose! {
        fn partition_and_records()(
            partition_index in 0..100i32,
            error_code in 0..5i16,
            high_watermark in 0..1_000_000i64,
            log_start_offset in 0..1000i64,
            aborted in proptest::option::of(proptest::collection::vec((0..50i64, 0..50i64), 0..3)),
            records in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) -> (FetchPartitionHead, Option<Bytes>) {
            let records = records.map(Bytes::from);
            (FetchPartitionHead {
                partition_index,
                error_code,
                high_watermark,
                last_stable_offset: high_watermark,
                log_start_offset,
                aborted_transactions: aborted,
                preferred_read_replica: -1,
                records_len: records.as_ref().map(|bytes| bytes.len() as u64),
            }, records)
        }
    }

    proptest! {
        #[test]
        fn matches_kafka_protocol_byte_for_byte(
            version in FETCH_VERSION_MIN..=FETCH_VERSION_MAX,
            session_id in 0..10i32,
            topics in proptest::collection::vec(("[a-z]{1,12}", proptest::collection::vec(partition_and_records(), 0..4)), 0..4),
        ) {
            let mut records = Vec::new();
            let head = FetchResponseHead {
                throttle_time_ms: 0,
                error_code: 0,
                session_id,
                topics: topics
                    .into_iter()
                    .map(|(topic, partitions)| FetchTopicHead {
                        topic,
                        partitions: partitions
                            .into_iter()
                            .map(|(mut head, bytes)| {
                                if version < 5 {
                                    head.log_start_offset = -1;
                                }
                                records.push(bytes);
                                head
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let chunks = encode_fetch_response(CorrelationId(42), version, &head).expect("encode");
            let ours = interleave(&chunks, &records);
            let theirs = reference(CorrelationId(42), version, &head, &records);
            prop_assert_eq!(ours, theirs.to_vec());
        }
    }

    #[test]
    fn refuses_versions_it_does_not_write() {
        let head = FetchResponseHead {
            throttle_time_ms: 0,
            error_code: 0,
            session_id: 0,
            topics: Vec::new(),
        };
        assert!(encode_fetch_response(CorrelationId(1), 3, &head).is_err());
        assert!(encode_fetch_response(CorrelationId(1), 13, &head).is_err());
    }
}
