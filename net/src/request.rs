//! Request decoding (broker side) and encoding (client side).
//!
//! A request frame is a header (api key, api version, correlation id, client id, and tagged
//! fields when the header is flexible: v2 vs v1 is chosen by
//! [`ApiKey::request_header_version`]) followed by the body for that api key and version.
//!
//! Invariants: [`decode_request`] never panics, refuses versions outside both the broker's table
//! and the versions `kafka-protocol` can decode, and consumes the whole frame (trailing bytes are
//! an error). Every error after the first 8 bytes carries the correlation id, so the broker can
//! still answer (or log) the request it is refusing.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::buf::NotEnoughBytesError;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::frame::LENGTH_PREFIX_BYTES;
use crate::response::EncodeError;
use crate::types::{CorrelationId, SupportedApis};

/// The first 8 bytes of every request header, which have the same layout in every header
/// version. Readable even when the rest of the request is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    /// Raw, because it may be a key we (or `kafka-protocol`) do not know.
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: CorrelationId,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
    /// Bytes after the body. Kafka ignores them, and real clients send some
    /// (librdkafka 2.16's Metadata v12 carries 3), so they are accepted and
    /// only counted here.
    pub trailing_bytes: usize,
}

impl Request {
    pub fn correlation_id(&self) -> CorrelationId {
        CorrelationId(self.header.correlation_id)
    }

    pub fn api_version(&self) -> i16 {
        self.header.request_api_version
    }
}

/// Why a request frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than 8 bytes, or the header's client id / tagged fields run past the frame.
    #[error("request header is truncated (correlation id {correlation_id:?})")]
    TruncatedHeader {
        correlation_id: Option<CorrelationId>,
    },
    #[error("request header is malformed (correlation id {}): {reason}", prefix.correlation_id)]
    MalformedHeader {
        prefix: RequestPrefix,
        reason: Box<str>,
    },
    /// Not a key `kafka-protocol` knows, or not one in the broker's table.
    #[error("api key {} is not supported (correlation id {})", prefix.api_key, prefix.correlation_id)]
    UnknownApiKey { prefix: RequestPrefix },
    /// Outside the broker's advertised range, or outside what `kafka-protocol` can decode.
    #[error("{api_key:?} v{} is not supported (correlation id {})", prefix.api_version, prefix.correlation_id)]
    UnsupportedVersion {
        api_key: ApiKey,
        prefix: RequestPrefix,
    },
    #[error("{api_key:?} v{} body is truncated (correlation id {})", prefix.api_version, prefix.correlation_id)]
    TruncatedBody {
        api_key: ApiKey,
        prefix: RequestPrefix,
    },
    #[error("{api_key:?} v{} body is malformed (correlation id {}): {reason}", prefix.api_version, prefix.correlation_id)]
    MalformedBody {
        api_key: ApiKey,
        prefix: RequestPrefix,
        reason: Box<str>,
    },
}

impl RequestError {
    /// The correlation id, when the frame was long enough to hold one.
    pub fn correlation_id(&self) -> Option<CorrelationId> {
        match self {
            RequestError::TruncatedHeader { correlation_id } => *correlation_id,
            RequestError::MalformedHeader { prefix, .. }
            | RequestError::UnknownApiKey { prefix }
            | RequestError::UnsupportedVersion { prefix, .. }
            | RequestError::TruncatedBody { prefix, .. }
            | RequestError::MalformedBody { prefix, .. } => Some(prefix.correlation_id),
        }
    }
}

/// Reads the fixed 8-byte prefix of a request header (api key, api version, correlation id)
/// without decoding anything else. `None` if the frame is shorter than that.
pub fn peek_request_prefix(frame: &[u8]) -> Option<RequestPrefix> {
    let (api_key, rest) = frame.split_first_chunk::<2>()?;
    let (api_version, rest) = rest.split_first_chunk::<2>()?;
    let (correlation_id, _) = rest.split_first_chunk::<4>()?;
    Some(RequestPrefix {
        api_key: i16::from_be_bytes(*api_key),
        api_version: i16::from_be_bytes(*api_version),
        correlation_id: CorrelationId(i32::from_be_bytes(*correlation_id)),
    })
}

/// Decodes one request frame (without its length prefix) against the broker's table.
///
/// On [`RequestError::UnsupportedVersion`] for [`ApiKey::ApiVersions`], answer with
/// [`crate::encode_api_versions_fallback`] so the client can retry at a version we support.
pub fn decode_request(frame: Bytes, supported: &SupportedApis) -> Result<Request, RequestError> {
    let Some(prefix) = peek_request_prefix(&frame) else {
        return Err(RequestError::TruncatedHeader {
            correlation_id: None,
        });
    };
    let api_key = check_supported(prefix, supported)?;
    let mut buffer = frame;
    let header_version = api_key.request_header_version(prefix.api_version);
    let header = RequestHeader::decode(&mut buffer, header_version).map_err(|error| {
        if is_truncation(&error) {
            RequestError::TruncatedHeader {
                correlation_id: Some(prefix.correlation_id),
            }
        } else {
            RequestError::MalformedHeader {
                prefix,
                reason: error.to_string().into_boxed_str(),
            }
        }
    })?;
    debug_assert_eq!(header.correlation_id, prefix.correlation_id.0);
    let body = RequestKind::decode(api_key, &mut buffer, prefix.api_version).map_err(|error| {
        if is_truncation(&error) {
            RequestError::TruncatedBody { api_key, prefix }
        } else {
            RequestError::MalformedBody {
                api_key,
                prefix,
                reason: error.to_string().into_boxed_str(),
            }
        }
    })?;
    Ok(Request {
        api_key,
        trailing_bytes: buffer.remaining(),
        header,
        body,
    })
}

/// The api key, if it is known, in the broker's table, and the version is in both the table's
/// range and the range `kafka-protocol` decodes (the broker may advertise older versions, e.g.
/// Produce v0, that it answers only with `UNSUPPORTED_VERSION`).
fn check_supported(
    prefix: RequestPrefix,
    supported: &SupportedApis,
) -> Result<ApiKey, RequestError> {
    let Ok(api_key) = ApiKey::try_from(prefix.api_key) else {
        return Err(RequestError::UnknownApiKey { prefix });
    };
    let Some(range) = supported.get(api_key) else {
        return Err(RequestError::UnknownApiKey { prefix });
    };
    let decodable = api_key.valid_versions();
    let version = prefix.api_version;
    if !range.contains(version) || version < decodable.min || version > decodable.max {
        return Err(RequestError::UnsupportedVersion { api_key, prefix });
    }
    Ok(api_key)
}

/// Whether `kafka-protocol` failed because the bytes ran out (rather than because they were
/// wrong). Its errors are `anyhow` errors wrapping either its own `NotEnoughBytesError` or the
/// `bytes` crate's `TryGetError`.
fn is_truncation(error: &anyhow::Error) -> bool {
    error.downcast_ref::<NotEnoughBytesError>().is_some()
        || error.downcast_ref::<bytes::TryGetError>().is_some()
}

/// Encodes a request (client side) with its length prefix, from the typed body `T` (any
/// request message). The buffer is sized exactly up front, so a large Produce request is
/// copied once, never regrown.
pub fn encode_request_as<T: Encodable>(
    header: &RequestHeader,
    body: &T,
) -> Result<Bytes, EncodeError> {
    let api_version = header.request_api_version;
    let Ok(api_key) = ApiKey::try_from(header.request_api_key) else {
        return Err(EncodeError::UnknownApiKey {
            api_key: header.request_api_key,
        });
    };
    let unencodable = |error: anyhow::Error| EncodeError::Unencodable {
        api_key,
        api_version,
        reason: error.to_string().into_boxed_str(),
    };
    let header_version = api_key.request_header_version(api_version);
    let size = header
        .compute_size(header_version)
        .map_err(unencodable)?
        .saturating_add(body.compute_size(api_version).map_err(unencodable)?);
    let mut buffer = BytesMut::with_capacity(LENGTH_PREFIX_BYTES.saturating_add(size));
    buffer.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    header
        .encode(&mut buffer, header_version)
        .map_err(unencodable)?;
    body.encode(&mut buffer, api_version).map_err(unencodable)?;
    crate::response::fill_length_prefix(&mut buffer, 0)?;
    Ok(buffer.freeze())
}

/// Encodes a request (client side) with its length prefix. The header version follows the
/// header's api key and version.
pub fn encode_request(header: &RequestHeader, body: &RequestKind) -> Result<Bytes, EncodeError> {
    let api_version = header.request_api_version;
    let Ok(api_key) = ApiKey::try_from(header.request_api_key) else {
        return Err(EncodeError::UnknownApiKey {
            api_key: header.request_api_key,
        });
    };
    let unencodable = |error: anyhow::Error| EncodeError::Unencodable {
        api_key,
        api_version,
        reason: error.to_string().into_boxed_str(),
    };
    let mut buffer = BytesMut::new();
    buffer.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    header
        .encode(&mut buffer, api_key.request_header_version(api_version))
        .map_err(unencodable)?;
    body.encode(&mut buffer, api_version).map_err(unencodable)?;
    crate::response::fill_length_prefix(&mut buffer, 0)?;
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SupportedApi;
    use bytes::BufMut;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};

    fn table() -> SupportedApis {
        SupportedApis::new(vec![
            SupportedApi::new(ApiKey::ApiVersions, 0, 4),
            // Advertised from v0 for librdkafka's sake, decodable only from v3.
            SupportedApi::new(ApiKey::Produce, 0, 13),
            SupportedApi::new(ApiKey::Metadata, 0, 12),
        ])
        .expect("valid table")
    }

    fn raw_frame(api_key: i16, api_version: i16, correlation_id: i32) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_i16(api_key);
        frame.put_i16(api_version);
        frame.put_i32(correlation_id);
        frame.put_i16(-1);
        frame.freeze()
    }

    #[test]
    fn prefix_needs_eight_bytes() {
        assert_eq!(peek_request_prefix(&[0; 7]), None);
        let prefix = peek_request_prefix(&[0, 18, 0, 3, 0, 0, 1, 0]).expect("8 bytes");
        assert_eq!(
            prefix,
            RequestPrefix {
                api_key: 18,
                api_version: 3,
                correlation_id: CorrelationId(256)
            }
        );
    }

    #[test]
    fn short_frames_are_truncated_headers() {
        for length in 0..8 {
            let frame = Bytes::from(vec![0u8; length]);
            assert_eq!(
                decode_request(frame, &table()).map(|_| ()),
                Err(RequestError::TruncatedHeader {
                    correlation_id: None
                })
            );
        }
    }

    #[test]
    fn unknown_and_unlisted_api_keys_are_refused() {
        let unknown = decode_request(raw_frame(9999, 0, 5), &table());
        assert!(matches!(unknown, Err(RequestError::UnknownApiKey { .. })));
        let negative = decode_request(raw_frame(-1, 0, 5), &table());
        assert!(matches!(negative, Err(RequestError::UnknownApiKey { .. })));
        let unlisted = decode_request(raw_frame(ApiKey::Fetch as i16, 4, 5), &table());
        assert!(matches!(unlisted, Err(RequestError::UnknownApiKey { .. })));
        assert_eq!(
            unlisted.map(|_| ()).unwrap_err().correlation_id(),
            Some(CorrelationId(5))
        );
    }

    #[test]
    fn versions_outside_table_or_crate_are_refused() {
        for (api_key, version) in [
            (ApiKey::Metadata, 13),   // above our table
            (ApiKey::Metadata, -1),   // negative
            (ApiKey::Produce, 2),     // advertised, but below what we decode
            (ApiKey::ApiVersions, 5), // newer than us: the fallback case
        ] {
            let result = decode_request(raw_frame(api_key as i16, version, 11), &table());
            assert!(
                matches!(&result, Err(RequestError::UnsupportedVersion { api_key: k, .. }) if *k == api_key),
                "{api_key:?} v{version}: {result:?}"
            );
        }
    }

    #[test]
    fn header_version_follows_flexibility() {
        // ApiVersions v3 is flexible: header v2 carries a tagged-field byte after the client id.
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(3)
            .with_correlation_id(42)
            .with_client_id(Some("c".into()));
        let body = RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name("n".into())
                .with_client_software_version("1".into()),
        );
        let encoded = encode_request(&header, &body).expect("encodes");
        // length, key, version, correlation, client id "c" (i16 length), header tags (0),
        // compact "n", compact "1", body tags (0).
        let expected: &[u8] = &[
            0, 0, 0, 17, 0, 18, 0, 3, 0, 0, 0, 42, 0, 1, b'c', 0, 2, b'n', 2, b'1', 0,
        ];
        assert_eq!(&encoded[..], expected);
        let decoded = decode_request(encoded.slice(4..), &table()).expect("decodes");
        assert_eq!(decoded.header, header);
        assert_eq!(decoded.body, body);
    }

    #[test]
    fn malformed_body_is_not_truncated_body() {
        // Metadata v12: topics compact array of 1 topic whose compact name is invalid UTF-8.
        let mut frame = BytesMut::new();
        frame.put_i16(ApiKey::Metadata as i16);
        frame.put_i16(12);
        frame.put_i32(8);
        frame.put_i16(-1);
        frame.put_u8(0); // header tags
        frame.put_u8(2); // one topic
        frame.extend_from_slice(&[0; 16]); // topic id
        frame.put_u8(2); // name of length 1
        frame.put_u8(0xff); // not UTF-8
        frame.put_u8(0); // topic tags
        frame.put_u8(1); // allow auto topic creation
        frame.put_u8(0); // include topic authorized operations
        frame.put_u8(0); // tags
        let result = decode_request(frame.freeze(), &table());
        assert!(
            matches!(
                result,
                Err(RequestError::MalformedBody {
                    api_key: ApiKey::Metadata,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn typed_encoding_matches_the_enum_encoding() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(12)
            .with_correlation_id(3)
            .with_client_id(Some("kafki".into()));
        let body = MetadataRequest::default().with_allow_auto_topic_creation(true);
        let typed = encode_request_as(&header, &body).expect("encodes");
        let kind = encode_request(&header, &RequestKind::Metadata(body)).expect("encodes");
        assert_eq!(typed, kind);
    }

    #[test]
    fn encode_request_refuses_unknown_keys_and_unencodable_fields() {
        let header = RequestHeader::default().with_request_api_key(9999);
        let body = RequestKind::Metadata(MetadataRequest::default());
        assert_eq!(
            encode_request(&header, &body),
            Err(EncodeError::UnknownApiKey { api_key: 9999 })
        );
        // Fetch v15 moved replica_id into replica_state; a set replica_id cannot be encoded.
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(15);
        let body = RequestKind::Fetch(
            kafka_protocol::messages::FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(5)),
        );
        assert!(matches!(
            encode_request(&header, &body),
            Err(EncodeError::Unencodable { .. })
        ));
    }
}
