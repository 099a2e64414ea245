//! Storage errors: small enums, one per concern. The broker maps them to Kafka
//! error codes in one place; nothing here knows about the wire.

use std::path::PathBuf;

pub use kafki_records::BatchError;

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
    /// A replicated batch that starts before the log's end (a follower must
    /// truncate the diverged suffix first).
    #[error("batch at offset {base_offset} is below the log end offset {log_end_offset}")]
    OffsetOutOfOrder {
        base_offset: i64,
        log_end_offset: u64,
    },
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
    /// A write failed for a reason that passes (the disk or the process's
    /// descriptor table is full): the unwritten batches stay in memory and
    /// are retried, appends are refused until a retry succeeds.
    #[error("writes are paused until the disk has room again: {0}")]
    Paused(String),
    #[error("segment {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
}

impl LogError {
    /// Whether the error passes without intervention on the log itself:
    /// a full filesystem or quota (space comes back when data is deleted
    /// or the filesystem grows), or a full descriptor table (descriptors
    /// come back when files close). Anything else (EIO, damage) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            // A failed fdatasync is never retried as if nothing happened:
            // what it should have flushed is in doubt (Linux may drop the
            // failed pages and report success next time).
            LogError::Io {
                operation, source, ..
            } => *operation != "fdatasync" && is_transient_io(source),
            LogError::Paused(_) => true,
            _ => false,
        }
    }

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

/// ENOSPC, EDQUOT, EMFILE, ENFILE: see [`LogError::is_transient`].
pub fn is_transient_io(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc_codes::ENOSPC | libc_codes::EDQUOT | libc_codes::EMFILE | libc_codes::ENFILE)
    )
}

mod libc_codes {
    pub const ENOSPC: i32 = nix::errno::Errno::ENOSPC as i32;
    pub const EDQUOT: i32 = nix::errno::Errno::EDQUOT as i32;
    pub const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
    pub const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
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
