//! `kafki-net`: the pure Kafka wire codec. Bytes in, structs out; no executor, no sockets.
//!
//! What this crate owns:
//! - [`frame`]: splitting a byte stream into length-prefixed frames, refusing bad lengths
//!   before anything is allocated.
//! - [`request`]: decoding a request frame (header + body) against the broker's table of
//!   supported APIs, into [`kafka_protocol::messages::RequestKind`]; encoding requests for
//!   the client side (bench, tools).
//! - [`response`]: encoding responses with the right header version and length prefix,
//!   decoding them for the client side, and the ApiVersions answers (including the v0
//!   fallback for versions newer than ours).
//! - [`types`]: newtypes for numbers that mean something, and the supported-API table.
//!
//! Invariants: no function here panics on any input, and no allocation is sized by a count
//! the peer sent beyond the bytes actually present. The second one needs the patched copy of
//! `kafka-protocol` in `vendor/` (see `vendor/kafka-protocol/PATCHES.md`); other crates should
//! use it through the [`kafka_protocol`] re-export so everyone shares one set of types.

pub mod fetch;
pub mod frame;
pub mod request;
pub mod response;
pub mod types;

pub use kafka_protocol;

pub use fetch::{encode_fetch_response, FetchPartitionHead, FetchResponseHead, FetchTopicHead};
pub use frame::{FrameDecoder, FrameError, SOCKET_REQUEST_MAX_BYTES_DEFAULT};
pub use request::{
    decode_request, encode_request, encode_request_as, peek_request_prefix, Request, RequestError,
    RequestPrefix,
};
pub use response::{
    api_versions_response, decode_response, decode_response_as, encode_api_versions_fallback,
    encode_api_versions_response, encode_response, encode_response_into, EncodeError,
    ResponseDecodeError,
};
pub use types::{CorrelationId, SupportedApi, SupportedApis, SupportedApisError};
