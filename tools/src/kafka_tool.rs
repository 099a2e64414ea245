//! What the Kafka-wire operator tools (`topics`, `produce`, `consume`, `groups`) share:
//! the broker options, how they connect, their error type and exit codes, the runtime
//! they run on, `key=value` arguments, and aligned text tables.
//!
//! Exit codes (the same for every tool): 0 done; 1 a broker answered with a Kafka error
//! (its name and message go to stderr, e.g. `TOPIC_ALREADY_EXISTS`) or the tool could not
//! finish (connection refused, a record failed); 2 bad usage (clap's own errors exit with
//! 2 as well).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use kafki_client::kafki_net::kafka_protocol::ResponseError;
use kafki_client::{Client, ClientConfig, ClientError, KafkaCode, TopicMetadata};

/// Options every Kafka-wire tool takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Brokers to bootstrap from (comma-separated host:port).
    #[arg(
        long,
        short = 'b',
        visible_alias = "bootstrap-server",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// How long a broker may take to answer one request, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// The client id sent with every request (what `groups describe` shows).
    #[arg(long, default_value = "kafki-tools")]
    pub client_id: String,
}

impl BrokerArgs {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Connects to the first bootstrap broker that answers.
    pub async fn connect(&self) -> Result<Client, ToolError> {
        let mut config = ClientConfig::new(&self.bootstrap);
        config.connection.client_id = self.client_id.clone();
        config.connection.request_timeout = self.request_timeout();
        Client::connect(config).await.map_err(|error| {
            ToolError::Failed(format!("connecting to {}: {error}", self.bootstrap))
        })
    }
}

/// Why a tool stopped.
#[derive(Debug)]
pub enum ToolError {
    /// The arguments make no sense together (exit 2).
    Usage(String),
    /// The client failed; a broker's Kafka error carries its name (exit 1).
    Client(ClientError),
    /// Anything else that stopped the tool (exit 1).
    Failed(String),
}

impl ToolError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Usage(_) => 2,
            ToolError::Client(_) | ToolError::Failed(_) => 1,
        }
    }

    /// A Kafka error that did not come from a broker's answer but means the same (an
    /// unknown topic found in metadata, a group that does not exist).
    pub fn kafka(error: ResponseError, context: String, message: &str) -> Self {
        ToolError::Client(ClientError::Kafka {
            code: KafkaCode::from(error),
            context,
            message: Some(message.to_string()),
        })
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Usage(message) => write!(formatter, "{message}"),
            ToolError::Client(error) => write!(formatter, "{error}"),
            ToolError::Failed(message) => write!(formatter, "{message}"),
        }
    }
}

impl From<ClientError> for ToolError {
    fn from(error: ClientError) -> Self {
        ToolError::Client(error)
    }
}

impl From<std::io::Error> for ToolError {
    fn from(error: std::io::Error) -> Self {
        ToolError::Failed(error.to_string())
    }
}

/// Runs a tool on a current-thread tokio runtime: one thread is plenty for an operator
/// tool, and the client's tasks (connections, producer, heartbeats) share it.
pub fn run_async(tool: impl Future<Output = Result<(), ToolError>>) -> Result<(), ToolError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ToolError::Failed(format!("starting the tokio runtime: {error}")))?
        .block_on(tool)
}

/// Writes `text` to stdout. A closed stdout (`kafki topics list | head -1`) ends the
/// output quietly instead of panicking as `print!` would; other write errors fail the tool.
pub fn print_stdout(text: &str) -> Result<(), ToolError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(ToolError::Failed(format!("writing to stdout: {error}")))
        }
        _ => Ok(()),
    }
}

/// Parses `key=value` (the key must not be empty; the value may be).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected key=value, not {text:?}")),
    }
}

/// A topic's metadata, or `UNKNOWN_TOPIC_OR_PARTITION` (or whatever the broker said about
/// it) as a Kafka error.
pub async fn existing_topic(client: &Client, topic: &str) -> Result<TopicMetadata, ToolError> {
    let metadata = client.refresh_metadata(&[topic]).await?;
    if let Some(found) = metadata.topic(topic) {
        return Ok(found.clone());
    }
    let code = metadata
        .topic_errors
        .get(topic)
        .copied()
        .unwrap_or(KafkaCode::from(ResponseError::UnknownTopicOrPartition));
    Err(ToolError::Client(ClientError::Kafka {
        code,
        context: format!("topic {topic}"),
        message: Some("no such topic on the broker".to_string()),
    }))
}

/// Text columns, left-aligned, two spaces apart (the last column is not padded).
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Rows besides the header.
    pub fn len(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let padding = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `-` for an absent number, as Kafka's tools print it.
pub fn or_dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a.b=c=d"),
            Ok(("a.b".to_string(), "c=d".to_string()))
        );
        assert_eq!(
            parse_key_value("empty="),
            Ok(("empty".into(), String::new()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["TOPIC", "PARTITION", "LEADER"]);
        table.push(vec!["orders".into(), "0".into(), "1".into()]);
        table.push(vec!["a".into(), "10".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "TOPIC   PARTITION  LEADER\norders  0          1\na       10         -\n"
        );
        assert_eq!(table.len(), 2);
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }

    #[test]
    fn exit_codes_separate_usage_from_failures() {
        assert_eq!(ToolError::Usage("x".into()).exit_code(), 2);
        assert_eq!(ToolError::Failed("x".into()).exit_code(), 1);
        let kafka = ToolError::kafka(
            ResponseError::TopicAlreadyExists,
            "creating topic t".into(),
            "Topic 't' already exists.",
        );
        assert_eq!(kafka.exit_code(), 1);
        assert_eq!(
            kafka.to_string(),
            "creating topic t: TOPIC_ALREADY_EXISTS (36): Topic 't' already exists."
        );
    }
}
