//! The one place where internal errors become Kafka error codes.

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::{BatchError, LogError};

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
        LogError::Damaged { .. } => ResponseError::KafkaStorageError,
        LogError::Io { .. } | LogError::Failed(_) => ResponseError::KafkaStorageError,
        LogError::Closed => ResponseError::NotLeaderOrFollower,
    };
    response.code()
}

pub fn code(error: ResponseError) -> i16 {
    error.code()
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
