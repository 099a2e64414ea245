//! Hostile input: random bytes, every truncation of valid frames, absurd counts and lengths.
//! Everything must come back as an error (never a panic), quickly, and without allocating in
//! proportion to a count the peer claimed. A counting global allocator checks the last part.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafki_net::{
    decode_request, encode_request, CorrelationId, FrameDecoder, FrameError, RequestError,
    SupportedApi, SupportedApis,
};
use proptest::prelude::*;

/// Tracks the largest single allocation, so a test can assert no decode asked for a huge block.
struct LargestAllocation;

static LARGEST_ALLOCATION_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as in alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: ptr came from System with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Other tests in this binary run on other threads and allocate too; none allocates this much.
const ALLOCATION_BYTES_MAX: usize = 16 << 20;

fn every_decodable_api() -> SupportedApis {
    let entries = ApiKey::iter()
        .map(|key| {
            let range = key.valid_versions();
            SupportedApi::new(key, range.min, range.max)
        })
        .collect();
    SupportedApis::new(entries).expect("valid table")
}

/// A request header at `version` of `api_key`, correlation id 7, null client id, followed by
/// `body` (raw, possibly nonsense).
fn frame_with_body(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_i16(api_key as i16);
    frame.put_i16(version);
    frame.put_i32(7);
    frame.put_i16(-1);
    if api_key.request_header_version(version) >= 2 {
        frame.put_u8(0);
    }
    frame.extend_from_slice(body);
    frame.freeze()
}

fn assert_refused_without_big_allocation(frame: Bytes) -> RequestError {
    let started = Instant::now();
    let result = decode_request(frame, &every_decodable_api());
    assert!(started.elapsed() < Duration::from_secs(1), "slow refusal");
    let largest = LARGEST_ALLOCATION_BYTES.load(Ordering::Relaxed);
    assert!(largest < ALLOCATION_BYTES_MAX, "allocated {largest} bytes");
    result.expect_err("must be refused")
}

#[test]
fn absurd_array_count_is_refused_without_allocating() {
    // Metadata v0: topics is a non-compact array; claim i32::MAX topics in a 14-byte frame.
    // Unpatched kafka-protocol 0.18.0 asks for i32::MAX * size_of::<MetadataRequestTopic>()
    // bytes here and aborts the process.
    let error = assert_refused_without_big_allocation(frame_with_body(
        ApiKey::Metadata,
        0,
        &i32::MAX.to_be_bytes(),
    ));
    assert!(matches!(
        error,
        RequestError::TruncatedBody {
            api_key: ApiKey::Metadata,
            ..
        }
    ));
    assert_eq!(error.correlation_id(), Some(CorrelationId(7)));
}

#[test]
fn absurd_compact_array_count_is_refused_without_allocating() {
    // Metadata v12 (flexible): compact array count is a varint of n + 1; send u32::MAX.
    let error = assert_refused_without_big_allocation(frame_with_body(
        ApiKey::Metadata,
        12,
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ));
    assert!(matches!(error, RequestError::TruncatedBody { .. }));
}

#[test]
fn absurd_string_and_bytes_lengths_are_refused() {
    // Produce v3: transactional_id (nullable string) claims i16::MAX bytes.
    let error =
        assert_refused_without_big_allocation(frame_with_body(ApiKey::Produce, 3, &[0x7f, 0xff]));
    assert!(matches!(error, RequestError::TruncatedBody { .. }));
    // SaslAuthenticate v2 (flexible): auth_bytes is compact bytes claiming ~4 GiB.
    let error = assert_refused_without_big_allocation(frame_with_body(
        ApiKey::SaslAuthenticate,
        2,
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ));
    assert!(matches!(error, RequestError::TruncatedBody { .. }));
    // Client id claiming i16::MAX bytes in the header.
    let mut header = BytesMut::new();
    header.put_i16(ApiKey::Metadata as i16);
    header.put_i16(0);
    header.put_i32(9);
    header.put_i16(i16::MAX);
    let error = assert_refused_without_big_allocation(header.freeze());
    assert_eq!(
        error,
        RequestError::TruncatedHeader {
            correlation_id: Some(CorrelationId(9))
        }
    );
}

#[test]
fn nested_absurd_count_is_refused() {
    // Produce v3: null transactional id, acks, timeout, 1 topic "t", i32::MAX partitions.
    let mut body = BytesMut::new();
    body.put_i16(-1);
    body.put_i16(1);
    body.put_i32(1000);
    body.put_i32(1);
    body.put_i16(1);
    body.put_u8(b't');
    body.put_i32(i32::MAX);
    let error = assert_refused_without_big_allocation(frame_with_body(ApiKey::Produce, 3, &body));
    assert!(matches!(error, RequestError::TruncatedBody { .. }));
}

#[test]
fn every_truncation_of_a_valid_frame_is_refused() {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12)
        .with_correlation_id(3)
        .with_client_id(Some("truncation-test".into()));
    let body = RequestKind::Metadata(
        kafki_net::kafka_protocol::messages::MetadataRequest::default().with_topics(Some(vec![
            kafki_net::kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(kafki_net::kafka_protocol::messages::TopicName(
                    "a-topic".into(),
                ))),
        ])),
    );
    let encoded = encode_request(&header, &body).expect("encodes");
    let frame = encoded.slice(4..);
    assert!(decode_request(frame.clone(), &every_decodable_api()).is_ok());
    for cut in 0..frame.len() {
        let error = decode_request(frame.slice(..cut), &every_decodable_api())
            .expect_err("truncated frame must be refused");
        if cut >= 8 {
            assert_eq!(
                error.correlation_id(),
                Some(CorrelationId(3)),
                "cut {cut}: {error}"
            );
        }
    }
    // And the framer waits (rather than errs) on every cut of the length-prefixed bytes.
    for cut in 0..encoded.len() {
        let mut buffer = BytesMut::from(&encoded[..cut]);
        assert_eq!(FrameDecoder::default().decode(&mut buffer), Ok(None));
    }
}

/// Kafka ignores bytes after a request body and real clients send some, so
/// they are accepted and counted, not refused.
#[test]
fn trailing_bytes_are_counted_not_refused() {
    let mut frame = BytesMut::from(&frame_with_body(ApiKey::ApiVersions, 0, &[])[..]);
    let clean =
        decode_request(frame.clone().freeze(), &every_decodable_api()).expect("clean frame");
    assert_eq!(clean.trailing_bytes, 0);
    frame.put_u8(0);
    frame.put_u8(0);
    let padded = decode_request(frame.freeze(), &every_decodable_api()).expect("padded frame");
    assert_eq!(padded.trailing_bytes, 2);
    assert_eq!(padded.correlation_id(), CorrelationId(7));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The always-run decoder fuzz: arbitrary bytes as a frame.
    #[test]
    fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_request(Bytes::from(frame), &every_decodable_api());
    }

    /// Arbitrary bodies behind a valid header, so every api key's body decoder is exercised.
    #[test]
    fn arbitrary_bodies_never_panic(
        key_index in 0usize..128,
        version_offset in 0i16..32,
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let keys: Vec<ApiKey> = ApiKey::iter().collect();
        let api_key = keys[key_index % keys.len()];
        let range = api_key.valid_versions();
        let version = range.min + version_offset % (range.max - range.min + 1);
        let result = decode_request(frame_with_body(api_key, version, &body), &every_decodable_api());
        if let Err(error) = result {
            prop_assert_eq!(error.correlation_id(), Some(CorrelationId(7)));
        }
        prop_assert!(LARGEST_ALLOCATION_BYTES.load(Ordering::Relaxed) < ALLOCATION_BYTES_MAX);
    }

    /// Any bytes to the framer: never a panic; a negative length is always an error.
    #[test]
    fn arbitrary_streams_never_panic_the_framer(stream in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buffer = BytesMut::from(&stream[..]);
        let result = FrameDecoder::for_requests(1 << 16).decode(&mut buffer);
        if stream.len() >= 4 && stream[0] & 0x80 != 0 {
            let is_negative = matches!(result, Err(FrameError::NegativeLength { .. }));
            prop_assert!(is_negative);
        }
    }
}
