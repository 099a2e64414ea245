//! Golden bytes captured from real clients by `golden/capture.py` (see `golden/README.md`):
//! each frame must decode to exactly the fields the client sent, and our ApiVersions v0
//! fallback must be byte-for-byte the reply that made those clients retry.

use bytes::BytesMut;
use kafki_net::kafka_protocol::messages::{ApiKey, RequestKind};
use kafki_net::{
    decode_request, encode_api_versions_fallback, CorrelationId, FrameDecoder, Request,
    RequestError, SupportedApi, SupportedApis,
};

fn from_hex(text: &str) -> Vec<u8> {
    let digits = text.trim();
    assert!(digits.len().is_multiple_of(2), "odd hex length");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn decode_golden(hex: &str, supported: &SupportedApis) -> Result<Request, RequestError> {
    let mut buffer = BytesMut::from(&from_hex(hex)[..]);
    let frame = FrameDecoder::default()
        .decode(&mut buffer)
        .expect("valid length")
        .expect("whole frame");
    assert!(buffer.is_empty(), "exactly one frame per file");
    decode_request(frame, supported)
}

fn api_versions_up_to(max_version: i16) -> SupportedApis {
    SupportedApis::new(vec![SupportedApi::new(ApiKey::ApiVersions, 0, max_version)]).expect("valid")
}

struct Expected {
    hex: &'static str,
    api_version: i16,
    correlation_id: i32,
    client_id: &'static str,
    software: Option<(&'static str, &'static str)>,
}

const GOLDEN: [Expected; 4] = [
    // librdkafka 2.16.0 opens with ApiVersions v3 (not v4).
    Expected {
        hex: include_str!("golden/confluent_kafka_0.hex"),
        api_version: 3,
        correlation_id: 1,
        client_id: "kafki-golden-confluent",
        software: Some(("confluent-kafka-python", "2.16.1-rdkafka-2.16.0")),
    },
    // ...and after UNSUPPORTED_VERSION retries at v0, not at the advertised max (2).
    Expected {
        hex: include_str!("golden/confluent_kafka_1.hex"),
        api_version: 0,
        correlation_id: 2,
        client_id: "kafki-golden-confluent",
        software: None,
    },
    Expected {
        hex: include_str!("golden/kafka_python_0.hex"),
        api_version: 4,
        correlation_id: 1,
        client_id: "kafki-golden-kafka-python",
        software: Some(("kafka-python", "3.0.12")),
    },
    // kafka-python retries at the advertised max.
    Expected {
        hex: include_str!("golden/kafka_python_1.hex"),
        api_version: 2,
        correlation_id: 2,
        client_id: "kafki-golden-kafka-python",
        software: None,
    },
];

#[test]
fn golden_frames_decode_to_the_fields_the_client_sent() {
    for expected in &GOLDEN {
        let request = decode_golden(expected.hex, &api_versions_up_to(4)).expect("decodes");
        assert_eq!(request.api_key, ApiKey::ApiVersions);
        assert_eq!(request.api_version(), expected.api_version);
        assert_eq!(
            request.correlation_id(),
            CorrelationId(expected.correlation_id)
        );
        assert_eq!(
            request.header.client_id.as_deref(),
            Some(expected.client_id)
        );
        let RequestKind::ApiVersions(body) = &request.body else {
            panic!("not ApiVersions: {:?}", request.body);
        };
        let (name, version) = expected.software.unwrap_or(("", ""));
        assert_eq!(&*body.client_software_name, name);
        assert_eq!(&*body.client_software_version, version);
        // Flexible (v3+) headers carried no tagged fields.
        assert!(request.header.unknown_tagged_fields.is_empty());
    }
}

#[test]
fn newer_api_versions_is_refused_with_its_correlation_id() {
    for expected in GOLDEN.iter().filter(|e| e.api_version > 2) {
        let error = decode_golden(expected.hex, &api_versions_up_to(2)).expect_err("too new");
        assert!(matches!(
            error,
            RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                ..
            }
        ));
        assert_eq!(
            error.correlation_id(),
            Some(CorrelationId(expected.correlation_id))
        );
    }
}

#[test]
fn fallback_is_the_reply_that_made_real_clients_retry() {
    // capture.py's hand-written reply: length 16, correlation id 1, error 35, one entry:
    // ApiVersions (18) 0..2. Both clients answered it with a second, older ApiVersions.
    let sent_by_capture = from_hex(
        "00000010 00000001 0023 00000001 0012 0000 0002"
            .replace(' ', "")
            .as_str(),
    );
    let ours =
        encode_api_versions_fallback(CorrelationId(1), &api_versions_up_to(2)).expect("encodes");
    assert_eq!(&ours[..], &sent_by_capture[..]);
}
