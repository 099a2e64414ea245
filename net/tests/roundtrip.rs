//! Property round trips: build a request with kafka-protocol's types (only fields the chosen
//! version carries), encode it with `encode_request`, split it with `FrameDecoder`, decode it with
//! `decode_request`, and compare. Covers ApiVersions, Metadata, Produce and Fetch across their
//! version ranges (flexible and not), plus responses through `encode_response`/`decode_response`.

use bytes::{Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafki_net::kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchRequest, FetchTopic, ForgottenTopic, ReplicaState,
};
use kafki_net::kafka_protocol::messages::metadata_request::{
    MetadataRequest, MetadataRequestTopic,
};
use kafki_net::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafki_net::kafka_protocol::messages::{
    ApiKey, BrokerId, RequestHeader, RequestKind, ResponseKind, TopicName, TransactionalId,
};
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_net::{
    api_versions_response, decode_request, decode_response, encode_request, encode_response,
    CorrelationId, FrameDecoder, SupportedApi, SupportedApis,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn every_decodable_api() -> SupportedApis {
    let entries = ApiKey::iter()
        .map(|key| {
            let range = key.valid_versions();
            SupportedApi::new(key, range.min, range.max)
        })
        .collect();
    SupportedApis::new(entries).expect("kafka-protocol's table is valid")
}

fn text() -> impl Strategy<Value = StrBytes> {
    "[a-zA-Z0-9._-]{0,24}".prop_map(StrBytes::from_string)
}

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid_from)
}

fn uuid_from(bits: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(bits)
}

fn header(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    client_id: Option<StrBytes>,
) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id)
}

/// Encode, frame, decode; assert that what comes out is what went in.
fn round_trip(header: RequestHeader, body: RequestKind) -> Result<(), TestCaseError> {
    let encoded = encode_request(&header, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut buffer = BytesMut::from(&encoded[..]);
    let frame = FrameDecoder::default()
        .decode(&mut buffer)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .ok_or_else(|| TestCaseError::fail("frame incomplete"))?;
    prop_assert!(buffer.is_empty());
    let request = decode_request(frame, &every_decodable_api())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        request.correlation_id(),
        CorrelationId(header.correlation_id)
    );
    prop_assert_eq!(request.api_version(), header.request_api_version);
    prop_assert_eq!(request.header, header);
    prop_assert_eq!(request.body, body);
    Ok(())
}

fn api_versions_case() -> impl Strategy<Value = (i16, ApiVersionsRequest)> {
    (0i16..=4, text(), text()).prop_map(|(version, name, software_version)| {
        let mut request = ApiVersionsRequest::default();
        if version >= 3 {
            request = request
                .with_client_software_name(name)
                .with_client_software_version(software_version);
        }
        (version, request)
    })
}

fn metadata_case() -> impl Strategy<Value = (i16, MetadataRequest)> {
    (
        0i16..=13,
        proptest::option::of(vec((text(), any::<u128>(), any::<bool>()), 0..4)),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(version, topics, auto_create, cluster_ops, topic_ops)| {
            // v0 has no null topic list: an empty list means "all topics" there.
            let topics = match topics {
                None if version == 0 => Some(Vec::new()),
                other => other,
            };
            let topics = topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|(name, id, null_name)| {
                        let mut topic =
                            MetadataRequestTopic::default().with_name(Some(TopicName(name)));
                        if version >= 10 {
                            topic = topic.with_topic_id(uuid_from(id));
                            if null_name {
                                topic = topic.with_name(None);
                            }
                        }
                        topic
                    })
                    .collect()
            });
            let mut request = MetadataRequest::default().with_topics(topics);
            if version >= 4 {
                request = request.with_allow_auto_topic_creation(auto_create);
            }
            if (8..=10).contains(&version) {
                request = request.with_include_cluster_authorized_operations(cluster_ops);
            }
            if version >= 8 {
                request = request.with_include_topic_authorized_operations(topic_ops);
            }
            (version, request)
        })
}

fn produce_case() -> impl Strategy<Value = (i16, ProduceRequest)> {
    let partition = (any::<i32>(), proptest::option::of(vec(any::<u8>(), 0..64)));
    let topic = (text(), uuid(), vec(partition, 0..3));
    (
        3i16..=13,
        proptest::option::of(text()),
        prop_oneof![Just(-1i16), Just(0), Just(1)],
        any::<i32>(),
        vec(topic, 0..3),
    )
        .prop_map(|(version, transactional_id, acks, timeout_ms, topics)| {
            let topic_data = topics
                .into_iter()
                .map(|(name, id, partitions)| {
                    let partition_data = partitions
                        .into_iter()
                        .map(|(index, records)| {
                            PartitionProduceData::default()
                                .with_index(index)
                                .with_records(records.map(Bytes::from))
                        })
                        .collect();
                    let topic = TopicProduceData::default().with_partition_data(partition_data);
                    if version >= 13 {
                        topic.with_topic_id(id)
                    } else {
                        topic.with_name(TopicName(name))
                    }
                })
                .collect();
            let request = ProduceRequest::default()
                .with_transactional_id(transactional_id.map(TransactionalId))
                .with_acks(acks)
                .with_timeout_ms(timeout_ms)
                .with_topic_data(topic_data);
            (version, request)
        })
}

fn fetch_partition(version: i16, fields: (i32, i32, i64, i32, i64, i32, u128)) -> FetchPartition {
    let (partition, leader_epoch, fetch_offset, last_epoch, log_start, max_bytes, directory) =
        fields;
    let mut result = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(fetch_offset)
        .with_partition_max_bytes(max_bytes);
    if version >= 9 {
        result = result.with_current_leader_epoch(leader_epoch);
    }
    if version >= 12 {
        result = result.with_last_fetched_epoch(last_epoch);
    }
    if version >= 5 {
        result = result.with_log_start_offset(log_start);
    }
    if version >= 17 {
        result = result.with_replica_directory_id(uuid_from(directory));
    }
    result
}

fn fetch_case() -> impl Strategy<Value = (i16, FetchRequest)> {
    let partition = (
        any::<i32>(),
        any::<i32>(),
        any::<i64>(),
        any::<i32>(),
        any::<i64>(),
        any::<i32>(),
        any::<u128>(),
    );
    let topic = (text(), any::<u128>(), vec(partition, 0..3));
    let forgotten = (text(), any::<u128>(), vec(any::<i32>(), 0..3));
    (
        4i16..=18,
        (
            any::<i32>(),
            any::<i32>(),
            any::<i32>(),
            any::<i32>(),
            0i8..=1,
        ),
        (
            any::<i32>(),
            any::<i32>(),
            text(),
            proptest::option::of(text()),
        ),
        vec(topic, 0..3),
        vec(forgotten, 0..2),
    )
        .prop_map(|(version, limits, session, topics, forgotten)| {
            let (replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level) = limits;
            let (session_id, session_epoch, rack_id, cluster_id) = session;
            let mut request = FetchRequest::default()
                .with_max_wait_ms(max_wait_ms)
                .with_min_bytes(min_bytes)
                .with_max_bytes(max_bytes)
                .with_isolation_level(isolation_level);
            if version <= 14 {
                request = request.with_replica_id(BrokerId(replica_id));
            } else {
                let state = ReplicaState::default()
                    .with_replica_id(BrokerId(replica_id))
                    .with_replica_epoch(i64::from(max_wait_ms));
                request = request.with_replica_state(state);
            }
            if version >= 7 {
                request = request
                    .with_session_id(session_id)
                    .with_session_epoch(session_epoch);
                let forgotten = forgotten
                    .into_iter()
                    .map(|(name, id, partitions)| {
                        let topic = ForgottenTopic::default().with_partitions(partitions);
                        if version >= 13 {
                            topic.with_topic_id(uuid_from(id))
                        } else {
                            topic.with_topic(TopicName(name))
                        }
                    })
                    .collect();
                request = request.with_forgotten_topics_data(forgotten);
            }
            if version >= 11 {
                request = request.with_rack_id(rack_id);
            }
            if version >= 12 {
                request = request.with_cluster_id(cluster_id);
            }
            let topics = topics
                .into_iter()
                .map(|(name, id, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|fields| fetch_partition(version, fields))
                        .collect();
                    let topic = FetchTopic::default().with_partitions(partitions);
                    if version >= 13 {
                        topic.with_topic_id(uuid_from(id))
                    } else {
                        topic.with_topic(TopicName(name))
                    }
                })
                .collect();
            (version, request.with_topics(topics))
        })
}

fn client_id() -> impl Strategy<Value = Option<StrBytes>> {
    proptest::option::of(text())
}

proptest! {
    #[test]
    fn api_versions_round_trips(case in api_versions_case(), correlation_id in any::<i32>(), client in client_id()) {
        let (version, body) = case;
        round_trip(header(ApiKey::ApiVersions, version, correlation_id, client), RequestKind::ApiVersions(body))?;
    }

    #[test]
    fn metadata_round_trips(case in metadata_case(), correlation_id in any::<i32>(), client in client_id()) {
        let (version, body) = case;
        round_trip(header(ApiKey::Metadata, version, correlation_id, client), RequestKind::Metadata(body))?;
    }

    #[test]
    fn produce_round_trips(case in produce_case(), correlation_id in any::<i32>(), client in client_id()) {
        let (version, body) = case;
        round_trip(header(ApiKey::Produce, version, correlation_id, client), RequestKind::Produce(body))?;
    }

    #[test]
    fn fetch_round_trips(case in fetch_case(), correlation_id in any::<i32>(), client in client_id()) {
        let (version, body) = case;
        round_trip(header(ApiKey::Fetch, version, correlation_id, client), RequestKind::Fetch(body))?;
    }

    #[test]
    fn api_versions_response_round_trips(version in 0i16..=4, correlation_id in any::<i32>(), max_version in 0i16..=20) {
        let table = SupportedApis::new(vec![
            SupportedApi::new(ApiKey::Produce, 0, max_version),
            SupportedApi::new(ApiKey::ApiVersions, 0, 4),
        ]).expect("valid");
        let body = ResponseKind::ApiVersions(api_versions_response(&table, None));
        let encoded = encode_response(CorrelationId(correlation_id), ApiKey::ApiVersions, version, &body)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut buffer = BytesMut::from(&encoded[..]);
        let frame = FrameDecoder::for_responses(1 << 20).decode(&mut buffer)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .ok_or_else(|| TestCaseError::fail("frame incomplete"))?;
        let (decoded_id, decoded) = decode_response(frame, ApiKey::ApiVersions, version)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded_id, CorrelationId(correlation_id));
        prop_assert_eq!(decoded, body);
    }
}
