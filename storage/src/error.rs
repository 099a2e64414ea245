//! Storage errors: small enums, one per concern. The broker maps them to Kafka
//! error codes in one place; nothing here knows about the wire.

use std::path::PathBuf;

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

/// Errors of the partition log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        log_end_offset: u64,
    },
    #[error("leader epoch {epoch} is older than the latest epoch {latest}")]
    StaleLeaderEpoch { epoch: i32, latest: i32 },
    #[error("I/O error during {operation} on {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the log is closed")]
    Closed,
    #[error("the log failed earlier and refuses further writes: {0}")]
    Failed(String),
    #[error("segment {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
}

impl LogError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        LogError::Io {
            operation,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// Converts a glommio error into the std error it wraps (or describes).
pub(crate) fn glommio_io(error: glommio::GlommioError<()>) -> std::io::Error {
    match error {
        glommio::GlommioError::IoError(source) => source,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

pub type LogResult<T> = Result<T, LogError>;
