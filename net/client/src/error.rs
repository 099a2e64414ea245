//! The client's errors, in one place: what went wrong on the way (connect, I/O, timeout,
//! codec) and what a broker answered (a Kafka error code, surfaced by its Kafka name,
//! e.g. `NOT_LEADER_OR_FOLLOWER (6)`).
//!
//! Invariant: every error a broker, the network or a peer's bytes can cause is a value of
//! [`ClientError`]; nothing in this crate panics on them.

use std::fmt;
use std::time::Duration;

use kafki_net::kafka_protocol::messages::ApiKey;
use kafki_net::kafka_protocol::ResponseError;

/// A Kafka error code as a broker sent it, printed with its Kafka name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KafkaCode(pub i16);

impl KafkaCode {
    /// `None` for 0 (no error).
    pub fn from_code(code: i16) -> Option<Self> {
        (code != 0).then_some(Self(code))
    }

    pub fn code(self) -> i16 {
        self.0
    }

    /// Whether Kafka's protocol defines the error as retriable (unknown codes are not).
    pub fn is_retriable(self) -> bool {
        ResponseError::try_from_code(self.0).is_some_and(|error| error.is_retriable())
    }

    /// Kafka's name (`UNKNOWN_TOPIC_OR_PARTITION`), or `UNKNOWN_CODE` for codes this
    /// version of the protocol crate does not know.
    pub fn name(self) -> String {
        match ResponseError::try_from_code(self.0) {
            None => "NONE".to_string(),
            Some(ResponseError::Unknown(_)) => "UNKNOWN_CODE".to_string(),
            // The crate's variants are Kafka's names in CamelCase.
            Some(error) => upper_snake_case(&format!("{error:?}")),
        }
    }

    /// Whether this is the code of `error`.
    pub fn is(self, error: ResponseError) -> bool {
        self.0 == error.code()
    }
}

impl fmt::Display for KafkaCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.name(), self.0)
    }
}

impl From<ResponseError> for KafkaCode {
    fn from(error: ResponseError) -> Self {
        Self(error.code())
    }
}

fn upper_snake_case(camel: &str) -> String {
    let mut output = String::with_capacity(camel.len() + 8);
    for (index, character) in camel.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            output.push('_');
        }
        output.push(character.to_ascii_uppercase());
    }
    output
}

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no bootstrap address given")]
    NoBootstrap,
    #[error("connecting to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("connection to {address} closed: {reason}")]
    ConnectionClosed { address: String, reason: String },
    #[error("{api_key:?} to {address} timed out after {timeout:?}")]
    Timeout {
        address: String,
        api_key: ApiKey,
        timeout: Duration,
    },
    #[error("{address} does not support {api_key:?} in any version this client speaks (ours: v{ours_min}-v{ours_max}, broker: {broker})")]
    UnsupportedApi {
        address: String,
        api_key: ApiKey,
        ours_min: i16,
        ours_max: i16,
        /// The broker's range, or "absent".
        broker: String,
    },
    #[error("encoding {api_key:?}: {reason}")]
    Encode { api_key: ApiKey, reason: String },
    #[error("decoding a response from {address}: {reason}")]
    Decode { address: String, reason: String },
    #[error("protocol violation by {address}: {reason}")]
    Protocol { address: String, reason: String },
    /// An error code in a response, with what it was about.
    #[error("{context}: {code}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Kafka {
        code: KafkaCode,
        context: String,
        message: Option<String>,
    },
    #[error("broker {broker_id} is not in the cluster metadata")]
    UnknownBroker { broker_id: i32 },
    #[error("topic {topic:?} is not in the cluster metadata")]
    UnknownTopic { topic: String },
    #[error("{topic}-{partition} has no leader")]
    NoLeader { topic: String, partition: i32 },
    #[error("record batch at offset {offset} of {topic}-{partition}: {reason}")]
    CorruptBatch {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the producer is closed")]
    ProducerClosed,
    #[error("{records} records failed; first error: {first_error}")]
    DeliveryFailed { records: u64, first_error: String },
    #[error(
        "batch for {topic}-{partition} not acknowledged within the delivery timeout ({timeout:?})"
    )]
    DeliveryTimeout {
        topic: String,
        partition: i32,
        timeout: std::time::Duration,
    },
}

impl ClientError {
    /// Whether retrying the same operation (after a metadata refresh) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionClosed { .. }
            | ClientError::Timeout { .. }
            | ClientError::NoLeader { .. } => true,
            ClientError::Kafka { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// The Kafka error code, when the error is one a broker sent.
    pub fn kafka_code(&self) -> Option<KafkaCode> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// `Ok` for error code 0; otherwise the Kafka error, with what it was about and the
    /// broker's message (if it sent one).
    pub(crate) fn check(
        code: i16,
        message: Option<&str>,
        context: impl FnOnce() -> String,
    ) -> ClientResult<()> {
        match KafkaCode::from_code(code) {
            None => Ok(()),
            Some(code) => Err(ClientError::Kafka {
                code,
                context: context(),
                message: message
                    .filter(|message| !message.is_empty())
                    .map(str::to_string),
            }),
        }
    }

    pub(crate) fn kafka(code: KafkaCode, context: impl Into<String>) -> Self {
        ClientError::Kafka {
            code,
            context: context.into(),
            message: None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_with_kafka_names() {
        assert_eq!(KafkaCode(6).to_string(), "NOT_LEADER_OR_FOLLOWER (6)");
        assert_eq!(KafkaCode(3).to_string(), "UNKNOWN_TOPIC_OR_PARTITION (3)");
        assert_eq!(KafkaCode(36).to_string(), "TOPIC_ALREADY_EXISTS (36)");
        assert_eq!(KafkaCode(-1).to_string(), "UNKNOWN_SERVER_ERROR (-1)");
        assert_eq!(KafkaCode(9999).to_string(), "UNKNOWN_CODE (9999)");
        assert_eq!(KafkaCode::from_code(0), None);
        assert!(KafkaCode(6).is_retriable());
        assert!(!KafkaCode(10).is_retriable());
        assert!(KafkaCode(36).is(ResponseError::TopicAlreadyExists));
    }

    #[test]
    fn kafka_errors_carry_context_and_message() {
        let error = ClientError::Kafka {
            code: KafkaCode(10),
            context: "produce to t-0".into(),
            message: Some("too big".into()),
        };
        assert_eq!(
            error.to_string(),
            "produce to t-0: MESSAGE_TOO_LARGE (10): too big"
        );
        assert!(!error.is_retriable());
        assert_eq!(error.kafka_code(), Some(KafkaCode(10)));
    }
}
