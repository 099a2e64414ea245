//! The one place where internal errors become Kafka error codes, and the
//! broker's error shape for answering clients: [`KafkaError`], a Kafka
//! error code with the message Kafka would send beside it, if any. Paths
//! whose responses carry no message field (a fetched partition, a group
//! call) pass the bare code (`i16`); internal failures that only reach the
//! log are `String`s or the crate's own error types.

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::{BatchError, LogError};

/// Why a request (or one partition or resource of it) is refused: Kafka's
/// error code, and a message for the response's `error_message` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaError {
    pub code: i16,
    pub message: Option<String>,
}

impl KafkaError {
    /// `error` with a message (an empty one counts as none).
    pub fn new(error: ResponseError, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code: error.code(),
            message: (!message.is_empty()).then_some(message),
        }
    }

    /// A bare code, with no message.
    pub fn code(code: i16) -> Self {
        Self {
            code,
            message: None,
        }
    }

    /// What a storage error is answered with.
    pub fn from_log(error: &LogError) -> Self {
        Self::code(code_for_log_error(error))
    }
}

impl From<ResponseError> for KafkaError {
    fn from(error: ResponseError) -> Self {
        Self::code(error.code())
    }
}

impl std::fmt::Display for KafkaError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = ResponseError::try_from_code(self.code).map_or_else(
            || format!("error {}", self.code),
            |error| format!("{error:?}"),
        );
        match &self.message {
            Some(message) => write!(formatter, "{name}: {message}"),
            None => formatter.write_str(&name),
        }
    }
}

/// Kafka's code for a storage error, as the produce and fetch paths report it.
pub fn code_for_log_error(error: &LogError) -> i16 {
    let response = match error {
        LogError::InvalidBatch(BatchError::CrcMismatch { .. }) => ResponseError::CorruptMessage,
        LogError::InvalidBatch(BatchError::UnsupportedMagic(_)) => {
            ResponseError::UnsupportedForMessageFormat
        }
        LogError::InvalidBatch(_) => ResponseError::InvalidRecord,
        LogError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        // Only a follower's append meets it (Kafka's internal
        // UnexpectedAppendOffsetException); never a client's request.
        LogError::OffsetOutOfOrder { .. } => ResponseError::UnknownServerError,
        LogError::Damaged { .. } => ResponseError::KafkaStorageError,
        // Retriable for every client (Java: KafkaStorageException).
        LogError::Io { .. } | LogError::Failed(_) | LogError::Paused(_) => {
            ResponseError::KafkaStorageError
        }
        LogError::Closed => ResponseError::NotLeaderOrFollower,
    };
    response.code()
}

impl From<crate::cluster::describe::DescribeError> for KafkaError {
    /// Both answers are retriable for Kafka clients: the admin client asks
    /// again until its own timeout.
    fn from(error: crate::cluster::describe::DescribeError) -> Self {
        use crate::cluster::describe::DescribeError;
        let code = match error {
            DescribeError::NoLeader => ResponseError::NotLeaderOrFollower,
            DescribeError::LeaderSilent | DescribeError::Busy => ResponseError::RequestTimedOut,
        };
        Self::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(
            code_for_log_error(&LogError::InvalidBatch(BatchError::CrcMismatch {
                stored: 1,
                computed: 2
            })),
            2
        );
        assert_eq!(
            code_for_log_error(&LogError::BatchTooLarge { size: 2, limit: 1 }),
            10
        );
        assert_eq!(
            code_for_log_error(&LogError::OffsetOutOfRange {
                offset: 9,
                log_start_offset: 0,
                log_end_offset: 1
            }),
            1
        );
    }
}
