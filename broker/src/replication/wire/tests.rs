//! Tests of the replication wire codec: golden bytes of the layout, property
//! round trips, hostile input (every truncation, random bytes, flipped
//! bytes), the caps, and that record bytes are never copied.

use bytes::Bytes;
use kafki_storage::batch::build_batch;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::cluster::transport::{decode_header, encode_frame, FrameKind};

const LIMITS: WireLimits = WireLimits::DEFAULT;

fn partition(index: i32) -> ReplicaPartition {
    ReplicaPartition {
        topic_id: Uuid::from_bytes([0xA0 + index as u8; 16]),
        partition_index: index,
    }
}

fn fetch_request(replica: NodeId, fetch_offset: i64) -> FetchRequest {
    FetchRequest {
        fetch_id: 77,
        replica,
        leader_epoch: 4,
        fetch_offset,
        last_fetched_epoch: 3,
        durable_offset: fetch_offset - 1,
    }
}

fn response(body: FetchBody) -> FetchResponse {
    FetchResponse {
        fetch_id: 77,
        leader: 1,
        leader_epoch: 4,
        fetch_offset: 10,
        last_fetched_epoch: 3,
        high_watermark: 9,
        body,
    }
}

/// A stored-looking batch: `build_batch` with its base offset set.
fn batch(base_offset: i64, values: &[&[u8]]) -> Bytes {
    let mut bytes = build_batch(1_700_000_000_000, values).to_vec();
    bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
    Bytes::from(bytes)
}

/// Offsets 10..13 in epoch 3, 13..16 in epoch 4.
fn sample_ranges() -> Vec<RecordRange> {
    vec![
        RecordRange {
            epoch: 3,
            start: 10,
            end: 13,
        },
        RecordRange {
            epoch: 4,
            start: 13,
            end: 16,
        },
    ]
}

/// An answer of every kind, the first partition with two batches sent as
/// one chunk and a third as another.
fn sample_answer() -> (ReplicaFetchAnswer, Vec<Bytes>) {
    let batches = vec![
        batch(10, &[b"a", b"bb"]),
        batch(12, &[b"ccc"]),
        batch(13, &[b"dddd", b"e", b"f"]),
    ];
    let mut first_chunk = batches[0].to_vec();
    first_chunk.extend_from_slice(&batches[1]);
    let answer = ReplicaFetchAnswer {
        request_id: 5,
        partitions: vec![
            PartitionAnswer {
                partition: partition(0),
                response: response(FetchBody::Records(sample_ranges())),
                leader_log_start: 7,
                record_batches: vec![Bytes::from(first_chunk), batches[2].clone()],
            },
            PartitionAnswer {
                partition: partition(1),
                response: response(FetchBody::Records(vec![])),
                leader_log_start: 0,
                record_batches: vec![],
            },
            PartitionAnswer {
                partition: partition(2),
                response: response(FetchBody::Diverging {
                    epoch: 2,
                    end_offset: 8,
                }),
                leader_log_start: 0,
                record_batches: vec![],
            },
            PartitionAnswer {
                partition: partition(3),
                response: response(FetchBody::Refused(FetchRefusal::FencedLeaderEpoch)),
                leader_log_start: 0,
                record_batches: vec![],
            },
        ],
    };
    (answer, batches)
}

fn sample_fetch() -> ReplicaFetch {
    ReplicaFetch {
        fetching_node: 2,
        request_id: 9,
        max_bytes: 1 << 20,
        max_wait_ms: 500,
        partitions: (0..3)
            .map(|index| PartitionFetch {
                partition: partition(index),
                request: fetch_request(2, 10 + i64::from(index)),
            })
            .collect(),
    }
}

fn encoded_answer(answer: &ReplicaFetchAnswer) -> Bytes {
    let encoded = encode_replica_fetch_answer(answer, &LIMITS).expect("encodes");
    Bytes::from(encoded.to_vec())
}

/// Decoded answers carry one slice per batch; compare with what was sent
/// (chunks) by their bytes.
fn assert_same_answer(sent: &ReplicaFetchAnswer, decoded: &ReplicaFetchAnswer) {
    assert_eq!(decoded.request_id, sent.request_id);
    assert_eq!(decoded.partitions.len(), sent.partitions.len());
    for (sent, decoded) in sent.partitions.iter().zip(&decoded.partitions) {
        assert_eq!(decoded.partition, sent.partition);
        assert_eq!(decoded.response, sent.response);
        assert_eq!(decoded.leader_log_start, sent.leader_log_start);
        assert_eq!(
            decoded.record_batches.concat(),
            sent.record_batches.concat()
        );
    }
}

#[test]
fn golden_bytes_of_a_fetch() {
    let fetch = ReplicaFetch {
        fetching_node: 2,
        request_id: 0x0102_0304_0506_0708,
        max_bytes: 0x100,
        max_wait_ms: 500,
        partitions: vec![PartitionFetch {
            partition: ReplicaPartition {
                topic_id: Uuid::from_bytes([0x11; 16]),
                partition_index: 3,
            },
            request: FetchRequest {
                fetch_id: 9,
                replica: 2,
                leader_epoch: 4,
                fetch_offset: 100,
                last_fetched_epoch: -1,
                durable_offset: 99,
            },
        }],
    };
    let mut expected = Vec::new();
    expected.extend_from_slice(&[WIRE_VERSION, 0, 0, 0]); // version, reserved
    expected.extend_from_slice(&[2, 0, 0, 0]); // fetching node
    expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // request id
    expected.extend_from_slice(&[0, 1, 0, 0]); // max bytes 256
    expected.extend_from_slice(&[0xF4, 1, 0, 0]); // max wait 500 ms
    expected.extend_from_slice(&[1, 0, 0, 0]); // one partition
    expected.extend_from_slice(&[0, 0, 0, 0]); // reserved
    expected.extend_from_slice(&[0x11; 16]); // topic id
    expected.extend_from_slice(&[3, 0, 0, 0]); // partition index
    expected.extend_from_slice(&[4, 0, 0, 0]); // leader epoch
    expected.extend_from_slice(&[0xFF; 4]); // last fetched epoch -1
    expected.extend_from_slice(&[0, 0, 0, 0]); // reserved
    expected.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // fetch id
    expected.extend_from_slice(&[100, 0, 0, 0, 0, 0, 0, 0]); // fetch offset
    expected.extend_from_slice(&[99, 0, 0, 0, 0, 0, 0, 0]); // durable offset
    let encoded = encode_replica_fetch(&fetch, &LIMITS).expect("encodes");
    assert_eq!(encoded.as_ref(), expected.as_slice());
    assert_eq!(encoded.len(), FETCH_HEADER_BYTES + PARTITION_FETCH_BYTES);
    assert_eq!(decode_replica_fetch(&expected, &LIMITS), Ok(fetch));
}

#[test]
fn golden_bytes_of_a_refusal_answer() {
    let answer = ReplicaFetchAnswer {
        request_id: 7,
        partitions: vec![PartitionAnswer {
            partition: ReplicaPartition {
                topic_id: Uuid::from_bytes([0x22; 16]),
                partition_index: 1,
            },
            response: FetchResponse {
                fetch_id: 9,
                leader: 1,
                leader_epoch: 5,
                fetch_offset: 100,
                last_fetched_epoch: 4,
                high_watermark: 90,
                body: FetchBody::Refused(FetchRefusal::NotAReplica),
            },
            leader_log_start: 0,
            record_batches: vec![],
        }],
    };
    let mut expected = Vec::new();
    expected.extend_from_slice(&[WIRE_VERSION, 0, 0, 0]); // version, reserved
    expected.extend_from_slice(&[1, 0, 0, 0]); // one partition
    expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // request id
    expected.extend_from_slice(&[0x22; 16]); // topic id
    expected.extend_from_slice(&[1, 0, 0, 0]); // partition index
    expected.extend_from_slice(&[2, 4, 0, 0]); // refused, not a replica, reserved
    expected.extend_from_slice(&[1, 0, 0, 0]); // leader
    expected.extend_from_slice(&[5, 0, 0, 0]); // leader epoch
    expected.extend_from_slice(&[4, 0, 0, 0]); // last fetched epoch
    expected.extend_from_slice(&[0, 0, 0, 0]); // diverging epoch (unused)
    expected.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // fetch id
    expected.extend_from_slice(&[100, 0, 0, 0, 0, 0, 0, 0]); // fetch offset
    expected.extend_from_slice(&[90, 0, 0, 0, 0, 0, 0, 0]); // high watermark
    expected.extend_from_slice(&[0; 8]); // diverging end offset (unused)
    expected.extend_from_slice(&[0; 4]); // range count
    expected.extend_from_slice(&[0; 4]); // record bytes
    let encoded = encode_replica_fetch_answer(&answer, &LIMITS).expect("encodes");
    assert_eq!(encoded.to_vec(), expected);
    assert_eq!(
        decode_replica_fetch_answer(&Bytes::from(expected), &LIMITS),
        Ok(answer)
    );
}

#[test]
fn an_answer_of_every_kind_round_trips_through_a_transport_frame() {
    let (answer, batches) = sample_answer();
    let encoded = encode_replica_fetch_answer(&answer, &LIMITS).expect("encodes");
    let frame = encode_frame(FrameKind::ReplicaFetchAnswer, &encoded.to_vec());
    let header: [u8; 12] = frame[..12].try_into().expect("header");
    let (kind, length, crc) = decode_header(&header).expect("header decodes");
    assert_eq!(kind, FrameKind::ReplicaFetchAnswer);
    assert_eq!(length, encoded.len());
    assert_eq!(crc, encoded.crc32c(), "the segments' CRC is the frame's");
    let body = Bytes::from(frame[12..].to_vec());
    let decoded = decode_replica_fetch_answer(&body, &LIMITS).expect("decodes");
    assert_same_answer(&answer, &decoded);
    assert_eq!(
        decoded.partitions[0].record_batches, batches,
        "split per batch"
    );
    let overhead = encoded.len() - batches.iter().map(Bytes::len).sum::<usize>();
    assert_eq!(
        overhead,
        ANSWER_HEADER_BYTES + 4 * PARTITION_ANSWER_BYTES + 2 * RANGE_BYTES,
        "the per-partition overhead the module doc states"
    );
}

#[test]
fn a_fetch_round_trips_through_a_transport_frame() {
    let fetch = sample_fetch();
    let body = encode_replica_fetch(&fetch, &LIMITS).expect("encodes");
    let frame = encode_frame(FrameKind::ReplicaFetch, &body);
    let header: [u8; 12] = frame[..12].try_into().expect("header");
    assert_eq!(
        decode_header(&header).expect("header decodes").0,
        FrameKind::ReplicaFetch
    );
    assert_eq!(decode_replica_fetch(&frame[12..], &LIMITS), Ok(fetch));
}

#[test]
fn decoded_batches_are_slices_of_the_received_body() {
    let (answer, _) = sample_answer();
    let body = encoded_answer(&answer);
    let decoded = decode_replica_fetch_answer(&body, &LIMITS).expect("decodes");
    let body_range = body.as_ptr_range();
    let first_region = ANSWER_HEADER_BYTES + PARTITION_ANSWER_BYTES + 2 * RANGE_BYTES;
    let batches = &decoded.partitions[0].record_batches;
    assert_eq!(batches[0].as_ptr(), body[first_region..].as_ptr());
    let mut expected_at = first_region;
    for batch in batches {
        assert!(body_range.contains(&batch.as_ptr()));
        assert_eq!(batch.as_ptr(), body[expected_at..].as_ptr(), "not copied");
        expected_at += batch.len();
    }
}

#[test]
fn encoding_passes_record_chunks_through_uncopied() {
    let (answer, _) = sample_answer();
    let encoded = encode_replica_fetch_answer(&answer, &LIMITS).expect("encodes");
    for chunk in &answer.partitions[0].record_batches {
        assert!(
            encoded
                .segments
                .iter()
                .any(|segment| segment.as_ptr() == chunk.as_ptr() && segment.len() == chunk.len()),
            "a record chunk was copied"
        );
    }
    // Header, chunk, chunk, then the other partitions' fixed parts.
    assert_eq!(encoded.segments.len(), 4);
}

#[test]
fn every_truncation_is_an_error() {
    let (answer, _) = sample_answer();
    let body = encoded_answer(&answer);
    for length in 0..body.len() {
        assert!(
            decode_replica_fetch_answer(&body.slice(..length), &LIMITS).is_err(),
            "answer cut at {length} decoded"
        );
    }
    let fetch = encode_replica_fetch(&sample_fetch(), &LIMITS).expect("encodes");
    for length in 0..fetch.len() {
        assert!(
            decode_replica_fetch(&fetch[..length], &LIMITS).is_err(),
            "fetch cut at {length} decoded"
        );
    }
}

#[test]
fn bytes_after_the_last_partition_are_refused() {
    let (answer, _) = sample_answer();
    let mut body = encoded_answer(&answer).to_vec();
    body.push(0);
    assert_eq!(
        decode_replica_fetch_answer(&Bytes::from(body), &LIMITS),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
    let mut fetch = encode_replica_fetch(&sample_fetch(), &LIMITS)
        .expect("encodes")
        .to_vec();
    fetch.extend_from_slice(&[0; 3]);
    assert_eq!(
        decode_replica_fetch(&fetch, &LIMITS),
        Err(DecodeError::TrailingBytes { count: 3 })
    );
}

#[test]
fn unknown_versions_kinds_refusals_and_reserved_bytes_are_refused() {
    let (answer, _) = sample_answer();
    let body = encoded_answer(&answer).to_vec();
    let decode_with = |at: usize, value: u8| {
        let mut damaged = body.clone();
        damaged[at] = value;
        decode_replica_fetch_answer(&Bytes::from(damaged), &LIMITS)
    };
    assert_eq!(decode_with(0, 1), Err(DecodeError::UnsupportedVersion(1)));
    assert_eq!(decode_with(0, 3), Err(DecodeError::UnsupportedVersion(3)));
    assert_eq!(decode_with(0, 0), Err(DecodeError::UnsupportedVersion(0)));
    assert_eq!(
        decode_with(2, 1),
        Err(DecodeError::ReservedNotZero { at: 1 })
    );
    let kind_at = ANSWER_HEADER_BYTES + 20;
    assert_eq!(
        decode_with(kind_at, 9),
        Err(DecodeError::UnknownAnswerKind {
            at: kind_at,
            kind: 9
        })
    );
    assert_eq!(
        decode_with(kind_at + 1, 1),
        Err(DecodeError::FieldNotZero {
            at: kind_at + 1,
            field: "refusal"
        })
    );
    // The last partition is the refusal: its fixed part ends the body.
    let refusal_at = body.len() - PARTITION_ANSWER_BYTES + 21;
    for code in [0, 6, 255] {
        assert_eq!(
            decode_with(refusal_at, code),
            Err(DecodeError::UnknownRefusal {
                at: refusal_at,
                code
            })
        );
    }
    let mut fetch = encode_replica_fetch(&sample_fetch(), &LIMITS)
        .expect("encodes")
        .to_vec();
    fetch[0] = 7;
    assert_eq!(
        decode_replica_fetch(&fetch, &LIMITS),
        Err(DecodeError::UnsupportedVersion(7))
    );
    fetch[0] = WIRE_VERSION;
    fetch[FETCH_HEADER_BYTES + 28] = 1;
    assert_eq!(
        decode_replica_fetch(&fetch, &LIMITS),
        Err(DecodeError::ReservedNotZero {
            at: FETCH_HEADER_BYTES + 28
        })
    );
}

#[test]
fn partition_and_range_caps_hold_both_ways() {
    let small = WireLimits {
        partitions_per_frame_max: 2,
        ranges_per_partition_max: 1,
        batch_bytes_max: LIMITS.batch_bytes_max,
    };
    let fetch = sample_fetch();
    assert_eq!(
        encode_replica_fetch(&fetch, &small),
        Err(EncodeError::TooManyPartitions { count: 3, max: 2 })
    );
    let body = encode_replica_fetch(&fetch, &LIMITS).expect("encodes");
    assert_eq!(
        decode_replica_fetch(&body, &small),
        Err(DecodeError::TooManyPartitions { count: 3, max: 2 })
    );

    let (mut answer, _) = sample_answer();
    answer.partitions.truncate(2);
    assert_eq!(
        encode_replica_fetch_answer(&answer, &small),
        Err(EncodeError::TooManyRanges {
            partition: partition(0),
            count: 2,
            max: 1
        })
    );
    let body = encoded_answer(&answer);
    assert_eq!(
        decode_replica_fetch_answer(&body, &small),
        Err(DecodeError::TooManyRanges {
            at: ANSWER_HEADER_BYTES + 72,
            count: 2,
            max: 1
        })
    );
}

#[test]
fn a_huge_count_is_refused_before_allocating() {
    // Four billion partitions claimed in a 16-byte answer, a million in a
    // 32-byte fetch: refused by the bytes left, not by trying.
    let mut answer = vec![WIRE_VERSION, 0, 0, 0];
    answer.extend_from_slice(&u32::MAX.to_le_bytes());
    answer.extend_from_slice(&[0; 8]);
    let unlimited = WireLimits {
        partitions_per_frame_max: u32::MAX,
        ..LIMITS
    };
    assert!(matches!(
        decode_replica_fetch_answer(&Bytes::from(answer), &unlimited),
        Err(DecodeError::Truncated { at: 16, .. })
    ));
    let mut fetch = encode_replica_fetch(&sample_fetch(), &LIMITS)
        .expect("encodes")
        .to_vec();
    fetch[24..28].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        decode_replica_fetch(&fetch, &unlimited),
        Err(DecodeError::Truncated { at: 32, .. })
    ));
}

#[test]
fn batch_framing_and_size_are_checked() {
    let (answer, batches) = sample_answer();
    let body = encoded_answer(&answer).to_vec();
    let region_at = ANSWER_HEADER_BYTES + PARTITION_ANSWER_BYTES + 2 * RANGE_BYTES;
    let second_at = region_at + batches[0].len();

    let small = WireLimits {
        batch_bytes_max: batches[0].len() - 1,
        ..LIMITS
    };
    assert_eq!(
        decode_replica_fetch_answer(&Bytes::from(body.clone()), &small),
        Err(DecodeError::BatchTooLarge {
            at: region_at,
            bytes: batches[0].len(),
            max: batches[0].len() - 1
        })
    );

    let mut bad_magic = body.clone();
    bad_magic[second_at + 16] = 1;
    assert_eq!(
        decode_replica_fetch_answer(&Bytes::from(bad_magic), &LIMITS),
        Err(DecodeError::BadBatch {
            at: second_at,
            source: BatchError::UnsupportedMagic(1)
        })
    );

    // The last batch's length reaching past the region (into the next
    // partition's fixed part).
    let mut too_long = body.clone();
    let last_at = second_at + batches[1].len();
    let length = i32::from_be_bytes(body[last_at + 8..last_at + 12].try_into().expect("4"));
    too_long[last_at + 8..last_at + 12].copy_from_slice(&(length + 1).to_be_bytes());
    assert!(matches!(
        decode_replica_fetch_answer(&Bytes::from(too_long), &LIMITS),
        Err(DecodeError::BadBatch {
            at,
            source: BatchError::Truncated { .. }
        }) if at == last_at
    ));

    // A region whose length field cuts a batch short.
    let mut short_region = body.clone();
    let record_bytes_at = ANSWER_HEADER_BYTES + 76;
    let record_bytes = batches.iter().map(Bytes::len).sum::<usize>() as u32;
    short_region[record_bytes_at..record_bytes_at + 4]
        .copy_from_slice(&(record_bytes - 1).to_le_bytes());
    assert!(decode_replica_fetch_answer(&Bytes::from(short_region), &LIMITS).is_err());

    // A damaged CRC is not this codec's business: storage checks it.
    let mut bad_crc = body;
    bad_crc[second_at + 17] ^= 0xFF;
    assert!(decode_replica_fetch_answer(&Bytes::from(bad_crc), &LIMITS).is_ok());
}

#[test]
fn inconsistent_messages_are_not_encoded() {
    let mut fetch = sample_fetch();
    fetch.partitions[1].request.replica = 3;
    assert_eq!(
        encode_replica_fetch(&fetch, &LIMITS),
        Err(EncodeError::ReplicaIsNotFetchingNode {
            partition: partition(1),
            replica: 3,
            fetching_node: 2
        })
    );
    let (mut answer, batches) = sample_answer();
    answer.partitions[2].record_batches = vec![batches[0].clone()];
    assert_eq!(
        encode_replica_fetch_answer(&answer, &LIMITS),
        Err(EncodeError::RecordBytesWithoutRecords {
            partition: partition(2)
        })
    );
}

#[test]
fn a_frame_over_the_transport_limit_is_not_encoded() {
    let chunk = Bytes::from(vec![0u8; FRAME_BYTES_MAX / 2]);
    let answer = ReplicaFetchAnswer {
        request_id: 1,
        partitions: vec![PartitionAnswer {
            partition: partition(0),
            response: response(FetchBody::Records(vec![])),
            leader_log_start: 0,
            record_batches: vec![chunk.clone(), chunk],
        }],
    };
    assert!(matches!(
        encode_replica_fetch_answer(&answer, &LIMITS),
        Err(EncodeError::TooLarge { .. })
    ));
}

// ---------------------------------------------------------------------------
// Properties

fn any_partition() -> impl Strategy<Value = ReplicaPartition> {
    (any::<[u8; 16]>(), any::<i32>()).prop_map(|(id, partition_index)| ReplicaPartition {
        topic_id: Uuid::from_bytes(id),
        partition_index,
    })
}

fn any_fetch() -> impl Strategy<Value = ReplicaFetch> {
    let partition_fetch = (
        any_partition(),
        any::<u64>(),
        any::<i32>(),
        any::<i64>(),
        any::<i32>(),
        any::<i64>(),
    );
    (
        any::<i32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(partition_fetch, 0..20),
    )
        .prop_map(
            |(fetching_node, request_id, max_bytes, max_wait_ms, parts)| ReplicaFetch {
                fetching_node,
                request_id,
                max_bytes,
                max_wait_ms,
                partitions: parts
                    .into_iter()
                    .map(
                        |(partition, fetch_id, leader_epoch, fetch_offset, last, durable)| {
                            PartitionFetch {
                                partition,
                                request: FetchRequest {
                                    fetch_id,
                                    replica: fetching_node,
                                    leader_epoch,
                                    fetch_offset,
                                    last_fetched_epoch: last,
                                    durable_offset: durable,
                                },
                            }
                        },
                    )
                    .collect(),
            },
        )
}

fn any_refusal() -> impl Strategy<Value = FetchRefusal> {
    prop_oneof![
        Just(FetchRefusal::NotLeader),
        Just(FetchRefusal::FencedLeaderEpoch),
        Just(FetchRefusal::UnknownLeaderEpoch),
        Just(FetchRefusal::NotAReplica),
        Just(FetchRefusal::Malformed),
    ]
}

/// A partition answer; `Records` carries real batches cut into chunks at
/// arbitrary points (chunk boundaries need not be batch boundaries).
fn any_partition_answer() -> impl Strategy<Value = (PartitionAnswer, Vec<Bytes>)> {
    let range = (any::<i32>(), any::<i64>(), any::<i64>())
        .prop_map(|(epoch, start, end)| RecordRange { epoch, start, end });
    let body = prop_oneof![
        proptest::collection::vec(range, 0..4).prop_map(FetchBody::Records),
        (any::<i32>(), any::<i64>())
            .prop_map(|(epoch, end_offset)| FetchBody::Diverging { epoch, end_offset }),
        any::<i64>().prop_map(|log_start| FetchBody::OutOfRange { log_start }),
        any_refusal().prop_map(FetchBody::Refused),
    ];
    let values = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..4);
    (
        any_partition(),
        any::<(u64, i32, i32, i64, i32, i64)>(),
        body,
        proptest::collection::vec((any::<i64>(), values), 0..4),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
    )
        .prop_map(|(partition, fields, body, batch_specs, cuts)| {
            let (fetch_id, leader, leader_epoch, fetch_offset, last_fetched_epoch, high_watermark) =
                fields;
            let batches: Vec<Bytes> = if matches!(body, FetchBody::Records(_)) {
                batch_specs
                    .iter()
                    .map(|(base, values)| {
                        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                        batch(*base, &values)
                    })
                    .collect()
            } else {
                vec![]
            };
            let region = Bytes::from(batches.concat());
            let mut cut_points: Vec<usize> =
                cuts.iter().map(|cut| cut.index(region.len() + 1)).collect();
            cut_points.extend([0, region.len()]);
            cut_points.sort_unstable();
            let chunks = cut_points
                .windows(2)
                .map(|pair| region.slice(pair[0]..pair[1]))
                .collect();
            // Only a records answer carries the leader's log start.
            let leader_log_start = match body {
                FetchBody::Records(_) => fetch_offset.max(0) / 2,
                _ => 0,
            };
            let answer = PartitionAnswer {
                partition,
                leader_log_start,
                response: FetchResponse {
                    fetch_id,
                    leader,
                    leader_epoch,
                    fetch_offset,
                    last_fetched_epoch,
                    high_watermark,
                    body,
                },
                record_batches: chunks,
            };
            (answer, batches)
        })
}

fn any_answer() -> impl Strategy<Value = (ReplicaFetchAnswer, Vec<Vec<Bytes>>)> {
    (
        any::<u64>(),
        proptest::collection::vec(any_partition_answer(), 0..8),
    )
        .prop_map(|(request_id, parts)| {
            let (partitions, batches) = parts.into_iter().unzip();
            (
                ReplicaFetchAnswer {
                    request_id,
                    partitions,
                },
                batches,
            )
        })
}

proptest! {
    #[test]
    fn fetches_round_trip(fetch in any_fetch()) {
        let body = encode_replica_fetch(&fetch, &LIMITS).expect("encodes");
        prop_assert_eq!(
            body.len(),
            FETCH_HEADER_BYTES + PARTITION_FETCH_BYTES * fetch.partitions.len()
        );
        prop_assert_eq!(decode_replica_fetch(&body, &LIMITS), Ok(fetch));
    }

    #[test]
    fn answers_round_trip_and_re_encode_to_the_same_bytes((answer, batches) in any_answer()) {
        let body = encoded_answer(&answer);
        let decoded = decode_replica_fetch_answer(&body, &LIMITS).expect("decodes");
        assert_same_answer(&answer, &decoded);
        for (decoded, batches) in decoded.partitions.iter().zip(&batches) {
            prop_assert_eq!(&decoded.record_batches, batches);
        }
        // One encoding per answer: decoding then encoding gives the body back.
        prop_assert_eq!(encoded_answer(&decoded), body);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_replica_fetch(&bytes, &LIMITS);
        let _ = decode_replica_fetch_answer(&Bytes::from(bytes), &LIMITS);
    }

    /// Random bytes rarely get past the version byte; damaging a valid
    /// frame reaches every check.
    #[test]
    fn damaged_frames_never_panic(
        (answer, _) in any_answer(),
        fetch in any_fetch(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut body = encoded_answer(&answer).to_vec();
        let mut fetch_body = encode_replica_fetch(&fetch, &LIMITS).expect("encodes").to_vec();
        for (at, value) in &damage {
            if !body.is_empty() {
                let at = at.index(body.len());
                body[at] = *value;
            }
            if !fetch_body.is_empty() {
                let at = at.index(fetch_body.len());
                fetch_body[at] = *value;
            }
        }
        let _ = decode_replica_fetch_answer(&Bytes::from(body), &LIMITS);
        let _ = decode_replica_fetch(&fetch_body, &LIMITS);
    }
}

// ---- repair request and answer ----

#[test]
fn repair_frames_round_trip_and_refuse_every_truncation() {
    let request = RepairRequest {
        request_id: 9,
        partition: partition(3),
        epoch: 7,
        offset: 1234,
    };
    let body = encode_repair_request(&request);
    assert_eq!(body.len(), REPAIR_REQUEST_BYTES);
    assert_eq!(decode_repair_request(&body), Ok(request));
    for cut in 0..body.len() {
        assert!(decode_repair_request(&body[..cut]).is_err(), "cut at {cut}");
    }

    let copy = batch(1234, &[b"a", b"bc"]);
    for answer in [
        RepairAnswer {
            request_id: 9,
            partition: partition(3),
            batch: Some(copy.clone()),
        },
        RepairAnswer {
            request_id: 9,
            partition: partition(3),
            batch: None,
        },
    ] {
        let mut body = encode_repair_answer_header(&answer).to_vec();
        if let Some(batch) = &answer.batch {
            body.extend_from_slice(batch);
        }
        let body = Bytes::from(body);
        assert_eq!(decode_repair_answer(&body, &LIMITS), Ok(answer.clone()));
        for cut in 0..body.len() {
            assert!(
                decode_repair_answer(&body.slice(..cut), &LIMITS).is_err(),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn a_repair_answer_carries_exactly_one_batch() {
    let answer = RepairAnswer {
        request_id: 1,
        partition: partition(0),
        batch: Some(batch(5, &[b"x"])),
    };
    let mut body = encode_repair_answer_header(&answer).to_vec();
    body.extend_from_slice(&batch(5, &[b"x"]));
    body.extend_from_slice(&batch(6, &[b"y"]));
    assert!(decode_repair_answer(&Bytes::from(body), &LIMITS).is_err());
    // A "no batch" answer with bytes after it, or an unknown flag.
    let mut none = encode_repair_answer_header(&RepairAnswer {
        batch: None,
        ..answer.clone()
    })
    .to_vec();
    none.push(0);
    assert!(decode_repair_answer(&Bytes::from(none.clone()), &LIMITS).is_err());
    none.pop();
    none[1] = 2;
    assert!(decode_repair_answer(&Bytes::from(none), &LIMITS).is_err());
}

proptest! {
    #[test]
    fn random_repair_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_repair_request(&bytes);
        let _ = decode_repair_answer(&Bytes::from(bytes), &LIMITS);
    }
}

// ---------------------------------------------------------------------------
// Spliced answers (record bytes after the CRC-covered metadata)

/// `batch` with its partition leader epoch set (outside the batch CRC).
fn batch_of_epoch(base_offset: i64, epoch: i32, values: &[&[u8]]) -> Bytes {
    let mut bytes = batch(base_offset, values).to_vec();
    bytes[12..16].copy_from_slice(&epoch.to_be_bytes());
    Bytes::from(bytes)
}

/// [`sample_answer`] with each batch stamped with its range's epoch, as a
/// leader's log holds them.
fn sample_spliced_answer() -> ReplicaFetchAnswer {
    let (mut answer, _) = sample_answer();
    answer.partitions[0].record_batches = vec![
        batch_of_epoch(10, 3, &[b"a", b"bb"]),
        batch_of_epoch(12, 3, &[b"ccc"]),
        batch_of_epoch(13, 4, &[b"dddd", b"e", b"f"]),
    ];
    answer
}

/// A spliced body as the receiving transport holds it, with the CRC its
/// frame header carries.
fn spliced_body(answer: &ReplicaFetchAnswer) -> (Bytes, u32) {
    let spliced = encode_spliced_answer(answer, &LIMITS).expect("encodes");
    let crc = crc32c::crc32c(&spliced.covered);
    let mut body = spliced.covered.to_vec();
    for chunk in &spliced.records {
        body.extend_from_slice(chunk);
    }
    (Bytes::from(body), crc)
}

#[test]
fn a_spliced_answer_round_trips_with_its_records_after_the_covered_bytes() {
    let answer = sample_spliced_answer();
    let spliced = encode_spliced_answer(&answer, &LIMITS).expect("encodes");
    let record_bytes: usize = answer.partitions.iter().map(|p| p.record_bytes()).sum();
    assert_eq!(
        spliced.covered.len(),
        SPLICED_PREFIX_BYTES + ANSWER_HEADER_BYTES + 4 * PARTITION_ANSWER_BYTES + 2 * RANGE_BYTES,
        "the covered part is the regular layout without the record bytes"
    );
    assert_eq!(
        spliced.records, answer.partitions[0].record_batches,
        "record chunks are passed through, not copied"
    );
    let (body, _) = spliced_body(&answer);
    assert_eq!(body.len(), spliced.covered.len() + record_bytes);
    assert_eq!(spliced_crc_covered(&body), Some(spliced.covered.len()));
    let decoded = decode_spliced_answer(&body, &LIMITS).expect("decodes");
    assert_same_answer(&answer, &decoded);
    assert_eq!(
        decoded.partitions[0].record_batches,
        answer.partitions[0].record_batches
    );
}

#[test]
fn a_spliced_frame_crosses_the_frame_checks_and_its_covered_bytes_are_crc_checked() {
    let answer = sample_spliced_answer();
    let (body, crc) = spliced_body(&answer);
    let covered = spliced_crc_covered(&body).expect("covered");
    let kind = FrameKind::ReplicaFetchAnswerSpliced;
    assert_eq!(kind.crc_covered(&body), Some(covered));
    assert_eq!(
        FrameKind::ReplicaFetchAnswer.crc_covered(&body),
        Some(body.len())
    );
    // Any flip in the covered bytes changes their CRC (or what is covered).
    for at in 0..covered {
        let mut damaged = body.to_vec();
        damaged[at] ^= 0x01;
        let still_passes = kind
            .crc_covered(&damaged)
            .is_some_and(|covered| crc32c::crc32c(&damaged[..covered]) == crc);
        assert!(
            !still_passes,
            "a flip at byte {at} of the covered part passed the frame CRC"
        );
    }
    // A covered count past the body, or below the prefix, is refused.
    for bad in [body.len() as u32 + 1, 3, u32::MAX] {
        let mut damaged = body.to_vec();
        damaged[0..4].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(spliced_crc_covered(&damaged), None, "covered {bad}");
        assert!(decode_spliced_answer(&Bytes::from(damaged), &LIMITS).is_err());
    }
}

/// What stands in for the frame CRC over a spliced answer's record bytes:
/// the decoder's framing and range checks plus each batch's own CRC32C
/// (storage checks it before appending). Every single-bit flip anywhere in
/// the record bytes is caught by one of them.
#[test]
fn every_bit_flip_in_spliced_record_bytes_is_caught_by_the_range_checks_or_the_batch_crc() {
    let answer = sample_spliced_answer();
    let (body, _) = spliced_body(&answer);
    let covered = spliced_crc_covered(&body).expect("covered");
    for at in covered..body.len() {
        for bit in 0..8 {
            let mut damaged = body.to_vec();
            damaged[at] ^= 1 << bit;
            let caught = match decode_spliced_answer(&Bytes::from(damaged), &LIMITS) {
                Err(_) => true,
                Ok(decoded) => decoded
                    .partitions
                    .iter()
                    .flat_map(|partition| &partition.record_batches)
                    .any(|batch| kafki_storage::batch::validate_stored_batch(batch).is_err()),
            };
            assert!(
                caught,
                "bit {bit} of byte {at} (record byte {}) went unnoticed",
                at - covered
            );
        }
    }
}

#[test]
fn batches_that_do_not_fit_their_ranges_are_refused() {
    let ranges = sample_ranges();
    let fits = |batches: &[Bytes]| check_batches_fit_ranges(&ranges, batches).is_ok();
    let a = batch_of_epoch(10, 3, &[b"a", b"b"]);
    let b = batch_of_epoch(12, 3, &[b"c"]);
    let c = batch_of_epoch(13, 4, &[b"d", b"e", b"f"]);
    assert!(fits(&[a.clone(), b.clone(), c.clone()]));
    assert!(
        fits(&[batch_of_epoch(8, 3, &[b"x", b"y", b"z"]), b.clone()]),
        "the first batch may start before the first range (it holds the fetch offset)"
    );
    assert!(
        fits(&[a.clone(), c.clone()]),
        "a gap a cleaner left is fine"
    );
    assert!(!fits(&[a.clone(), a.clone()]), "overlap");
    assert!(!fits(&[b.clone(), a.clone()]), "out of order");
    assert!(
        !fits(&[batch_of_epoch(12, 4, &[b"c"])]),
        "wrong epoch for its range"
    );
    assert!(
        !fits(&[batch_of_epoch(15, 4, &[b"p", b"q"])]),
        "past the last range"
    );
    assert!(
        !fits(&[batch_of_epoch(5, 3, &[b"p"])]),
        "before the first range"
    );
    assert!(check_batches_fit_ranges(&[], &[]).is_ok());
}

#[test]
fn a_spliced_answer_with_trailing_or_missing_record_bytes_is_refused() {
    let answer = sample_spliced_answer();
    let (body, _) = spliced_body(&answer);
    let mut longer = body.to_vec();
    longer.push(0);
    assert!(matches!(
        decode_spliced_answer(&Bytes::from(longer), &LIMITS),
        Err(DecodeError::TrailingBytes { count: 1 })
    ));
    assert!(decode_spliced_answer(&body.slice(..body.len() - 1), &LIMITS).is_err());
}

#[test]
fn a_spliced_answer_with_two_answers_for_one_partition_keeps_each_ones_records() {
    let range = |start, end| RecordRange {
        epoch: 0,
        start,
        end,
    };
    let answer = ReplicaFetchAnswer {
        request_id: 0,
        partitions: vec![
            PartitionAnswer {
                partition: partition(0),
                response: response(FetchBody::Records(vec![range(0, 3)])),
                leader_log_start: 0,
                record_batches: vec![batch_of_epoch(0, 0, &[b"a", b"b", b"c"])],
            },
            PartitionAnswer {
                partition: partition(0),
                response: response(FetchBody::Records(vec![range(3, 5)])),
                leader_log_start: 0,
                record_batches: vec![batch_of_epoch(3, 0, &[b"d", b"e"])],
            },
        ],
    };
    let (body, _) = spliced_body(&answer);
    let decoded = decode_spliced_answer(&body, &LIMITS).expect("decodes");
    assert_same_answer(&answer, &decoded);
}
