//! Response encoding (broker side) and decoding (client side), and the ApiVersions answers.
//!
//! A response frame is the length prefix, a response header (correlation id, plus a tagged-field
//! buffer when flexible; chosen by [`ApiKey::response_header_version`], which keeps ApiVersions
//! on header v0 at every version), then the body.
//!
//! Invariants: tagged fields are written only when they differ from their default (librdkafka
//! 2.0.2 cannot parse default tagged fields in an ApiVersions v3 reply; `kafka-protocol` already
//! behaves this way, and the tests pin it); the length prefix always equals the bytes after it.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;

use crate::frame::LENGTH_PREFIX_BYTES;
use crate::types::{CorrelationId, SupportedApis};

/// Why a message could not be encoded. These are broker bugs (a field set that the chosen
/// version cannot carry, a frame over 2 GiB), not client faults.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("api key {api_key} is unknown")]
    UnknownApiKey { api_key: i16 },
    #[error("{api_key:?} v{api_version} cannot be encoded: {reason}")]
    Unencodable {
        api_key: ApiKey,
        api_version: i16,
        reason: Box<str>,
    },
    #[error("frame of {length_bytes} bytes does not fit a 32-bit length prefix")]
    FrameTooLarge { length_bytes: usize },
}

/// Why a response frame could not be decoded (client side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseDecodeError {
    #[error("{api_key:?} v{api_version} response is malformed: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        reason: Box<str>,
    },
    #[error("{api_key:?} v{api_version} response has {trailing_bytes} bytes after its body")]
    TrailingBytes {
        api_key: ApiKey,
        api_version: i16,
        trailing_bytes: usize,
    },
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    correlation_id: CorrelationId,
    api_key: ApiKey,
    api_version: i16,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let mut buffer = BytesMut::new();
    encode_response_into(&mut buffer, correlation_id, api_key, api_version, body)?;
    Ok(buffer.freeze())
}

/// Appends a response frame, length prefix included, to a caller-owned buffer. On error the
/// buffer is truncated back to its original length.
pub fn encode_response_into(
    buffer: &mut BytesMut,
    correlation_id: CorrelationId,
    api_key: ApiKey,
    api_version: i16,
    body: &ResponseKind,
) -> Result<(), EncodeError> {
    let frame_start = buffer.len();
    let result = encode_frame(buffer, correlation_id, api_key, api_version, body);
    if result.is_err() {
        buffer.truncate(frame_start);
    }
    result
}

fn encode_frame(
    buffer: &mut BytesMut,
    correlation_id: CorrelationId,
    api_key: ApiKey,
    api_version: i16,
    body: &ResponseKind,
) -> Result<(), EncodeError> {
    let frame_start = buffer.len();
    let unencodable = |error: anyhow::Error| EncodeError::Unencodable {
        api_key,
        api_version,
        reason: error.to_string().into_boxed_str(),
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id.0);
    buffer.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    header
        .encode(buffer, api_key.response_header_version(api_version))
        .map_err(unencodable)?;
    body.encode(buffer, api_version).map_err(unencodable)?;
    fill_length_prefix(buffer, frame_start)
}

/// Writes the length of everything after `buffer[frame_start..frame_start + 4]` into those
/// four bytes.
pub(crate) fn fill_length_prefix(
    buffer: &mut BytesMut,
    frame_start: usize,
) -> Result<(), EncodeError> {
    let length_bytes = buffer.len() - frame_start - LENGTH_PREFIX_BYTES;
    let Ok(length) = i32::try_from(length_bytes) else {
        return Err(EncodeError::FrameTooLarge { length_bytes });
    };
    buffer[frame_start..frame_start + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Decodes a response frame (without its length prefix) for a request the caller sent at
/// `api_key`/`api_version` (client side: bench, tools).
pub fn decode_response(
    frame: Bytes,
    api_key: ApiKey,
    api_version: i16,
) -> Result<(CorrelationId, ResponseKind), ResponseDecodeError> {
    decode_response_with(frame, api_key, api_version, |buffer| {
        ResponseKind::decode(api_key, buffer, api_version)
    })
}

/// Like [`decode_response`], into the typed body `T` (the `Response` of the request type the
/// caller sent), so a generic client needs no match over [`ResponseKind`].
pub fn decode_response_as<T: Decodable>(
    frame: Bytes,
    api_key: ApiKey,
    api_version: i16,
) -> Result<(CorrelationId, T), ResponseDecodeError> {
    decode_response_with(frame, api_key, api_version, |buffer| {
        T::decode(buffer, api_version)
    })
}

fn decode_response_with<T>(
    frame: Bytes,
    api_key: ApiKey,
    api_version: i16,
    decode_body: impl FnOnce(&mut Bytes) -> anyhow::Result<T>,
) -> Result<(CorrelationId, T), ResponseDecodeError> {
    let malformed = |error: anyhow::Error| ResponseDecodeError::Malformed {
        api_key,
        api_version,
        reason: error.to_string().into_boxed_str(),
    };
    let valid = api_key.valid_versions();
    if api_version < valid.min || api_version > valid.max {
        return Err(ResponseDecodeError::Malformed {
            api_key,
            api_version,
            reason: "version outside what kafka-protocol decodes".into(),
        });
    }
    let mut buffer = frame;
    let header = ResponseHeader::decode(&mut buffer, api_key.response_header_version(api_version))
        .map_err(malformed)?;
    let body = decode_body(&mut buffer).map_err(malformed)?;
    if !buffer.is_empty() {
        return Err(ResponseDecodeError::TrailingBytes {
            api_key,
            api_version,
            trailing_bytes: buffer.len(),
        });
    }
    Ok((CorrelationId(header.correlation_id), body))
}

/// An ApiVersions response advertising `supported`, with `error` (or none).
pub fn api_versions_response(
    supported: &SupportedApis,
    error: Option<ResponseError>,
) -> ApiVersionsResponse {
    let api_keys = supported
        .entries()
        .iter()
        .map(|entry| {
            ApiVersion::default()
                .with_api_key(entry.api_key as i16)
                .with_min_version(entry.min_version)
                .with_max_version(entry.max_version)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_api_keys(api_keys)
}

/// Encodes an ApiVersions response frame at `api_version` (header v0 at every version).
pub fn encode_api_versions_response(
    correlation_id: CorrelationId,
    api_version: i16,
    body: &ApiVersionsResponse,
) -> Result<Bytes, EncodeError> {
    // ResponseKind owns its body; the clone is a few hundred bytes once per connection.
    let kind = ResponseKind::ApiVersions(body.clone());
    encode_response(correlation_id, ApiKey::ApiVersions, api_version, &kind)
}

/// The answer to an ApiVersions request whose version we do not support: a v0-format response
/// with `UNSUPPORTED_VERSION` (35) and our ranges, as Kafka sends, so the client retries at a
/// version we know. Needs only the correlation id (see [`crate::peek_request_prefix`]).
pub fn encode_api_versions_fallback(
    correlation_id: CorrelationId,
    supported: &SupportedApis,
) -> Result<Bytes, EncodeError> {
    let body = api_versions_response(supported, Some(ResponseError::UnsupportedVersion));
    encode_api_versions_response(correlation_id, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SupportedApi;
    use kafka_protocol::messages::MetadataResponse;

    fn table() -> SupportedApis {
        SupportedApis::new(vec![
            SupportedApi::new(ApiKey::Produce, 0, 13),
            SupportedApi::new(ApiKey::Fetch, 4, 17),
            SupportedApi::new(ApiKey::ApiVersions, 0, 4),
        ])
        .expect("valid table")
    }

    #[test]
    fn api_versions_v3_has_no_default_tagged_fields() {
        let body = api_versions_response(&table(), None);
        let frame = encode_api_versions_response(CorrelationId(5), 3, &body).expect("encodes");
        let mut expected: Vec<u8> = Vec::new();
        expected.extend_from_slice(&5i32.to_be_bytes()); // header v0: correlation id only
        expected.extend_from_slice(&0i16.to_be_bytes()); // error code
        expected.push(4); // compact array: 3 entries + 1
        for (key, min, max) in [(0i16, 0i16, 13i16), (1, 4, 17), (18, 0, 4)] {
            expected.extend_from_slice(&key.to_be_bytes());
            expected.extend_from_slice(&min.to_be_bytes());
            expected.extend_from_slice(&max.to_be_bytes());
            expected.push(0); // entry's empty tag buffer
        }
        expected.extend_from_slice(&0i32.to_be_bytes()); // throttle time
        expected.push(0); // empty tag buffer: no supported/finalized features, no epoch
        assert_eq!(&frame[4..], &expected[..]);
        assert_eq!(&frame[..4], &(expected.len() as i32).to_be_bytes());
    }

    #[test]
    fn api_versions_response_header_is_v0_at_every_version() {
        for version in 0..=4 {
            let body = api_versions_response(&table(), None);
            let frame =
                encode_api_versions_response(CorrelationId(9), version, &body).expect("encodes");
            assert_eq!(&frame[4..8], &9i32.to_be_bytes());
            // Right after the correlation id comes the error code (0), not a tag buffer.
            assert_eq!(&frame[8..10], &[0, 0], "v{version}");
        }
    }

    #[test]
    fn flexible_responses_get_header_v1() {
        let body = ResponseKind::Metadata(MetadataResponse::default());
        let flexible = encode_response(CorrelationId(1), ApiKey::Metadata, 9, &body).expect("v9");
        let rigid = encode_response(CorrelationId(1), ApiKey::Metadata, 8, &body).expect("v8");
        // v9 header: correlation id then an empty tag buffer; v8: throttle time directly.
        assert_eq!(&flexible[4..9], &[0, 0, 0, 1, 0]);
        assert_eq!(&rigid[4..12], &[0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            decode_response(flexible.slice(4..), ApiKey::Metadata, 9),
            Ok((CorrelationId(1), body))
        );
    }

    #[test]
    fn fallback_is_v0_with_unsupported_version() {
        let frame = encode_api_versions_fallback(CorrelationId(77), &table()).expect("encodes");
        let (correlation_id, body) =
            decode_response(frame.slice(4..), ApiKey::ApiVersions, 0).expect("decodes at v0");
        assert_eq!(correlation_id, CorrelationId(77));
        let ResponseKind::ApiVersions(body) = body else {
            panic!("not ApiVersions");
        };
        assert_eq!(body.error_code, 35);
        assert_eq!(body.api_keys.len(), 3);
        assert!(body
            .api_keys
            .iter()
            .any(|k| k.api_key == 18 && k.min_version == 0 && k.max_version == 4));
    }

    #[test]
    fn encode_into_appends_and_rolls_back_on_error() {
        let mut buffer = BytesMut::from(&b"earlier"[..]);
        let body = ResponseKind::ApiVersions(api_versions_response(&table(), None));
        encode_response_into(&mut buffer, CorrelationId(1), ApiKey::ApiVersions, 0, &body)
            .expect("encodes");
        assert_eq!(&buffer[..7], b"earlier");
        let length = i32::from_be_bytes([buffer[7], buffer[8], buffer[9], buffer[10]]);
        assert_eq!(length as usize, buffer.len() - 11);
        let before = buffer.len();
        // No ApiVersions v99 exists: kafka-protocol refuses it after the header is written.
        let result = encode_response_into(
            &mut buffer,
            CorrelationId(1),
            ApiKey::ApiVersions,
            99,
            &body,
        );
        assert!(
            matches!(result, Err(EncodeError::Unencodable { .. })),
            "{result:?}"
        );
        assert_eq!(buffer.len(), before);
    }

    #[test]
    fn response_decode_refuses_trailing_bytes() {
        let body = ResponseKind::ApiVersions(api_versions_response(&table(), None));
        let frame = encode_response(CorrelationId(1), ApiKey::ApiVersions, 3, &body).expect("ok");
        let mut longer = BytesMut::from(&frame[4..]);
        longer.extend_from_slice(&[0]);
        assert!(matches!(
            decode_response(longer.freeze(), ApiKey::ApiVersions, 3),
            Err(ResponseDecodeError::TrailingBytes {
                trailing_bytes: 1,
                ..
            })
        ));
    }
}
