//! Kafka's record-batch format, pure: bytes in, structs out, no executor
//! and no I/O, so the storage engine (glommio), the broker and the tokio
//! client share one codec.
//!
//! [`batch`]: the v2 batch header (parse, validate, CRC32C, the fields the
//! log patches), batch builders. [`records`]: the records inside a batch
//! (decode with bounded decompression, encode, assemble). [`compression`]:
//! gzip, snappy (Kafka's xerial framing), lz4 (frame) and zstd, every
//! decompression bounded by a caller-given size.

pub mod batch;
pub mod compression;
pub mod records;

/// Why a record batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: needs {needed} bytes, {present} present")]
    Truncated { needed: usize, present: usize },
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("batch length {0} is below the header size")]
    BadLength(i32),
    #[error("batch of {batch_bytes} bytes followed by {} more bytes", buffer_bytes - batch_bytes)]
    TrailingBytes {
        batch_bytes: usize,
        buffer_bytes: usize,
    },
    #[error("records count {records_count} does not match last offset delta {last_offset_delta}")]
    BadRecordCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}
