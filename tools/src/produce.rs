//! `kafki produce --topic T`: the console producer. Each stdin line becomes one record
//! (the line ending, `\n` or `\r\n`, is not part of it); with `--key-separator SEP` the
//! line is split at the first SEP into key and value. At end of input everything is
//! flushed; the exit code is 1 if any record failed or any line could not be used.
//!
//! Partitions: `--partition P` for all records; otherwise keyed records go where Kafka's
//! Java producer puts them (murmur2 of the key), unkeyed ones round-robin. A missing topic
//! is created if the broker auto-creates topics (as with Kafka's console producer).

use kafki_bench::load::{parse_acks, parse_compression};
use kafki_client::kafki_net::kafka_protocol::ResponseError;
use kafki_client::{
    partition_for_key, Acks, Compression, PartitionHandle, Producer, ProducerConfig, ProducerRecord,
};
use tokio::io::AsyncBufReadExt;

use crate::kafka_tool::{parse_key_value, run_async, BrokerArgs, ToolError};

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic to write (created if missing and the broker auto-creates topics).
    #[arg(long)]
    pub topic: String,
    /// Split each line at the first SEP into key and value (a line without SEP is an
    /// error, as with Kafka's `parse.key=true`).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// 0, 1 or all (-1).
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// A header for every record, `key=value` (repeat for more).
    #[arg(long = "header", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// How long a batch waits for more lines, in milliseconds (Kafka's linger.ms).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

pub fn run(args: ProduceArgs) -> Result<(), ToolError> {
    if args.key_separator.as_deref() == Some("") {
        return Err(ToolError::Usage("--key-separator must not be empty".into()));
    }
    run_async(produce(args))
}

/// Where records go.
enum Placement {
    Fixed(PartitionHandle),
    /// Keyed records by key hash, the others in turn.
    Spread {
        handles: Vec<PartitionHandle>,
        next_unkeyed: usize,
    },
}

impl Placement {
    fn choose(&mut self, key: Option<&[u8]>) -> PartitionHandle {
        match self {
            Placement::Fixed(handle) => *handle,
            Placement::Spread {
                handles,
                next_unkeyed,
            } => {
                let count = handles.len().max(1);
                let index = match key {
                    Some(key) => partition_for_key(key, count as u32) as usize,
                    None => {
                        *next_unkeyed = (*next_unkeyed + 1) % count;
                        *next_unkeyed
                    }
                };
                handles[index % handles.len()]
            }
        }
    }
}

/// The line without its ending (`\n`, `\r\n`).
fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `(key, value)` of a line: split at the first `separator`, or `None` when it has none.
fn split_key<'a>(line: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = line
        .windows(separator.len())
        .position(|window| window == separator)?;
    Some((&line[..at], &line[at + separator.len()..]))
}

async fn produce(args: ProduceArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let topic = client
        .wait_for_topic(&args.topic, args.broker.request_timeout(), true)
        .await?;
    let config = ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        linger: std::time::Duration::from_millis(args.linger_ms),
        produce_timeout: args.broker.request_timeout(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config, None)?;
    let mut placement = match args.partition {
        Some(partition) => {
            if topic.partition(partition).is_none() {
                return Err(ToolError::kafka(
                    ResponseError::UnknownTopicOrPartition,
                    format!("producing to {}-{partition}", args.topic),
                    &format!("the topic has {} partitions", topic.partitions.len()),
                ));
            }
            Placement::Fixed(producer.partition(&args.topic, partition))
        }
        None => Placement::Spread {
            handles: producer.partitions(&args.topic).await?,
            next_unkeyed: 0,
        },
    };
    let headers: Vec<(&[u8], Option<&[u8]>)> = args
        .headers
        .iter()
        .map(|(key, value)| (key.as_bytes(), Some(value.as_bytes())))
        .collect();
    let separator = args.key_separator.as_deref().map(str::as_bytes);

    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut line_number = 0u64;
    let mut unusable_lines = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        line_number += 1;
        let text = strip_line_ending(&line);
        let (key, value) = match separator {
            None => (None, text),
            Some(separator) => match split_key(text, separator) {
                Some((key, value)) => (Some(key), value),
                None => {
                    eprintln!(
                        "kafki produce: line {line_number} has no key separator {:?}; not sent",
                        args.key_separator.as_deref().unwrap_or_default()
                    );
                    unusable_lines += 1;
                    continue;
                }
            },
        };
        let record = ProducerRecord {
            key,
            value: Some(value),
            headers: &headers,
        };
        producer.send(placement.choose(key), record).await?;
    }
    let stats = producer.close().await;
    if stats.records_failed > 0 {
        return Err(ToolError::Failed(format!(
            "{} of {} records failed; first error: {}",
            stats.records_failed,
            stats.records_failed + stats.records_acknowledged,
            stats.first_error.as_deref().unwrap_or("unknown")
        )));
    }
    if unusable_lines > 0 {
        return Err(ToolError::Failed(format!(
            "{unusable_lines} lines had no key separator and were not sent"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_their_endings_and_split_at_the_first_separator() {
        assert_eq!(strip_line_ending(b"a\r\n"), b"a");
        assert_eq!(strip_line_ending(b"a\n"), b"a");
        assert_eq!(strip_line_ending(b"a"), b"a");
        assert_eq!(
            split_key(b"user-1::hello::world", b"::"),
            Some((&b"user-1"[..], &b"hello::world"[..]))
        );
        assert_eq!(split_key(b":v", b":"), Some((&b""[..], &b"v"[..])));
        assert_eq!(split_key(b"no separator", b":"), None);
    }
}
