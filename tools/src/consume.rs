//! `kafki consume --topic T`: the console consumer. Prints every record of the topic's
//! partitions in the `--format` (default: the value, one per line) until `--max-messages`,
//! `--timeout-ms` without a record, or Ctrl-C (a second one ends it at once).
//!
//! Without `--group` it reads assigned partitions (all, or `--partition P`) from
//! `--offset` / `--from-beginning` (default: the end). With `--group G` it joins the group
//! (classic protocol, `range` or `roundrobin`), starts each partition at the group's
//! committed offset (or at the beginning / end when there is none), commits after each
//! fetch what it printed, follows rebalances, and leaves the group at exit.
//!
//! Invariant: a committed offset is one past a record that was printed (never past records
//! of the same fetch that `--max-messages` cut off), or where a partition without one was
//! reset to (committed at once, as Kafka's auto-commit would); so a second run resumes
//! exactly after the last record the first run printed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafki_bench::consume::DECOMPRESSED_BYTES_MAX;
use kafki_client::kafki_net::kafka_protocol::ResponseError;
use kafki_client::{
    Assignor, Consumer, FetchConfig, FetchRound, GroupConfig, GroupMember, StartOffset,
    TopicPartition,
};

use crate::kafka_tool::{existing_topic, run_async, BrokerArgs, ToolError};
use crate::record_format::{PlacedRecord, RecordFormat, DEFAULT_FORMAT};

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic to read.
    #[arg(long)]
    pub topic: String,
    /// Join this consumer group and commit offsets as records are printed.
    #[arg(long, conflicts_with_all = ["partition", "offset"])]
    pub group: Option<String>,
    /// Start at the beginning (with --group: where the group has no committed offset).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Read only this partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Where --partition starts: an offset, `earliest` or `latest` (default).
    #[arg(long, requires = "partition", value_parser = parse_start_offset)]
    pub offset: Option<StartOffset>,
    /// Stop after printing this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop after this many milliseconds without a record.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Output per record, kcat's -f placeholders: %t topic, %p partition, %o offset,
    /// %k key, %K key length, %s value, %S value length, %T timestamp (ms), %h headers,
    /// %%; escapes \n \t \r \\.
    #[arg(long, default_value = DEFAULT_FORMAT)]
    pub format: String,
    /// The group's assignor when this member leads: range or roundrobin.
    #[arg(long, default_value = "range", value_parser = parse_assignor)]
    pub assignor: Assignor,
}

fn parse_start_offset(text: &str) -> Result<StartOffset, String> {
    match text {
        "earliest" | "beginning" => Ok(StartOffset::Earliest),
        "latest" | "end" => Ok(StartOffset::Latest),
        number => match number.parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(StartOffset::At(offset)),
            _ => Err(format!(
                "--offset takes an offset >= 0, earliest or latest, not {text:?}"
            )),
        },
    }
}

fn parse_assignor(text: &str) -> Result<Assignor, String> {
    Assignor::parse(text).ok_or_else(|| format!("--assignor is range or roundrobin, not {text:?}"))
}

/// The longest a fetch waits for records: short enough to see Ctrl-C, rebalances and
/// `--timeout-ms` promptly.
const FETCH_WAIT_MAX: Duration = Duration::from_millis(500);

pub fn run(args: ConsumeArgs) -> Result<(), ToolError> {
    let format = RecordFormat::parse(&args.format).map_err(ToolError::Usage)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop (commit, leave); a second one exits.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    run_async(consume(args, format, stop))
}

/// The consume loop's state.
struct Session {
    topic: String,
    consumer: Consumer,
    member: Option<GroupMember>,
    /// Where a group partition without a committed offset starts.
    reset: StartOffset,
    format: RecordFormat,
    /// Per partition, one past the last record printed.
    printed_up_to: BTreeMap<TopicPartition, i64>,
    /// What the group has committed (as far as this member knows).
    committed: BTreeMap<TopicPartition, i64>,
    printed: u64,
    max_messages: Option<u64>,
    output: Vec<u8>,
}

async fn consume(
    args: ConsumeArgs,
    format: RecordFormat,
    stop: Arc<AtomicBool>,
) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let topic = existing_topic(&client, &args.topic).await?;
    let max_wait = args.timeout_ms.map_or(FETCH_WAIT_MAX, |ms| {
        Duration::from_millis(ms).min(FETCH_WAIT_MAX)
    });
    let consumer = Consumer::new(
        client.clone(),
        FetchConfig {
            max_wait,
            ..FetchConfig::default()
        },
    );
    let reset = if args.from_beginning {
        StartOffset::Earliest
    } else {
        StartOffset::Latest
    };
    let mut session = Session {
        topic: args.topic.clone(),
        consumer,
        member: None,
        reset,
        format,
        printed_up_to: BTreeMap::new(),
        committed: BTreeMap::new(),
        printed: 0,
        max_messages: args.max_messages,
        output: Vec::new(),
    };
    match &args.group {
        Some(group) => {
            let config = GroupConfig {
                assignors: assignor_preference(args.assignor),
                ..GroupConfig::new(group)
            };
            let member = GroupMember::join(client.clone(), config, &[&args.topic]).await?;
            session.member = Some(member);
            session.take_group_assignment().await?;
        }
        None => {
            let partitions: Vec<i32> = match args.partition {
                Some(partition) if topic.partition(partition).is_some() => vec![partition],
                Some(partition) => {
                    return Err(ToolError::kafka(
                        ResponseError::UnknownTopicOrPartition,
                        format!("consuming {}-{partition}", args.topic),
                        &format!("the topic has {} partitions", topic.partitions.len()),
                    ))
                }
                None => topic.partitions.iter().map(|p| p.partition).collect(),
            };
            let start = args.offset.unwrap_or(reset);
            session
                .consumer
                .assign(&args.topic, &partitions, start)
                .await?;
        }
    }
    let outcome = session
        .run(&stop, args.timeout_ms.map(Duration::from_millis))
        .await;
    let finished = session.finish().await;
    eprintln!("Processed a total of {} messages", session.printed);
    outcome.and(finished)
}

/// The chosen assignor first, the other as a fallback the group may pick instead.
fn assignor_preference(first: Assignor) -> Vec<Assignor> {
    let mut assignors = vec![first];
    for other in [Assignor::Range, Assignor::RoundRobin] {
        if other != first {
            assignors.push(other);
        }
    }
    assignors
}

impl Session {
    async fn run(
        &mut self,
        stop: &AtomicBool,
        idle_timeout: Option<Duration>,
    ) -> Result<(), ToolError> {
        let mut last_record = Instant::now();
        while !stop.load(Ordering::Acquire) && !self.reached_max() {
            if self
                .member
                .as_ref()
                .is_some_and(GroupMember::rebalance_needed)
            {
                self.rejoin().await?;
            }
            let rounds = if self.consumer.positions().is_empty() {
                // Nothing assigned (more members than partitions): wait for a rebalance.
                tokio::time::sleep(FETCH_WAIT_MAX).await;
                Vec::new()
            } else {
                self.consumer.poll().await?
            };
            let printed_before = self.printed;
            for round in &rounds {
                self.print_round(round)?;
            }
            if !self.flush_output()? {
                // stdout was closed (`| head`): a normal end.
                break;
            }
            if self.printed > printed_before {
                last_record = Instant::now();
                self.commit().await?;
            }
            if idle_timeout.is_some_and(|timeout| last_record.elapsed() >= timeout) {
                break;
            }
        }
        Ok(())
    }

    fn reached_max(&self) -> bool {
        self.max_messages.is_some_and(|max| self.printed >= max)
    }

    /// Formats the records of one fetch answer into the output buffer, up to
    /// `--max-messages`.
    fn print_round(&mut self, round: &FetchRound) -> Result<(), ToolError> {
        for fetched in &round.partitions {
            let key: TopicPartition = (fetched.topic.to_string(), fetched.partition);
            for batch in fetched.batches() {
                let batch = batch.map_err(|error| {
                    ToolError::Failed(format!(
                        "a record batch of {}-{} after offset {}: {error}",
                        fetched.topic, fetched.partition, fetched.fetch_offset
                    ))
                })?;
                if batch.is_control() || self.reached_max() {
                    continue;
                }
                let mut printed_up_to = None;
                let (format, output, printed, max) = (
                    &self.format,
                    &mut self.output,
                    &mut self.printed,
                    self.max_messages,
                );
                batch
                    .for_each_record(
                        fetched.fetch_offset,
                        DECOMPRESSED_BYTES_MAX,
                        |offset, record| {
                            if max.is_some_and(|max| *printed >= max) {
                                return;
                            }
                            format.write(
                                output,
                                &PlacedRecord {
                                    topic: &fetched.topic,
                                    partition: fetched.partition,
                                    offset,
                                    timestamp_ms: batch.record_timestamp(record),
                                    record,
                                },
                            );
                            *printed += 1;
                            printed_up_to = Some(offset + 1);
                        },
                    )
                    .map_err(|error| {
                        ToolError::Failed(format!(
                            "records of {}-{} at offset {}: {error}",
                            fetched.topic,
                            fetched.partition,
                            batch.base_offset()
                        ))
                    })?;
                if let Some(next) = printed_up_to {
                    self.printed_up_to.insert(key.clone(), next);
                }
            }
        }
        Ok(())
    }

    /// Writes the buffered output; `false` once stdout is closed.
    fn flush_output(&mut self) -> Result<bool, ToolError> {
        if self.output.is_empty() {
            return Ok(true);
        }
        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(&self.output).and_then(|()| stdout.flush());
        self.output.clear();
        match written {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(ToolError::Failed(format!("writing to stdout: {error}"))),
        }
    }

    /// Commits what was printed and not committed yet (group only).
    async fn commit(&mut self) -> Result<(), ToolError> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let pending: BTreeMap<TopicPartition, i64> = self
            .printed_up_to
            .iter()
            .filter(|(partition, offset)| self.committed.get(*partition) != Some(offset))
            .map(|(partition, offset)| (partition.clone(), *offset))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        match member.commit(&pending).await {
            Ok(()) => {
                self.committed.extend(pending);
                Ok(())
            }
            // The group moved on: the next loop rejoins; the records stay printed and the
            // new owner of those partitions reads them again (at-least-once).
            Err(error) if member.rebalance_needed() => {
                tracing::warn!(%error, "commit refused during a rebalance");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// A rebalance: commit, rejoin, start the new partitions where the group left them.
    async fn rejoin(&mut self) -> Result<(), ToolError> {
        self.commit().await?;
        if let Some(member) = &mut self.member {
            member.rejoin().await?;
        }
        self.take_group_assignment().await
    }

    /// Assigns the member's partitions at the group's committed offsets (or `reset`).
    async fn take_group_assignment(&mut self) -> Result<(), ToolError> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let committed = member.committed().await?;
        self.consumer.unassign_all();
        self.printed_up_to.clear();
        self.committed.clear();
        let mut positions = BTreeMap::new();
        let mut without_commit = Vec::new();
        for (topic, partition) in member.assignment().iter() {
            let key = (topic.to_string(), partition);
            match committed.get(&key) {
                Some(offset) => {
                    positions.insert(key.clone(), offset.offset);
                    self.committed.insert(key, offset.offset);
                }
                None => without_commit.push(partition),
            }
        }
        self.consumer.assign_positions(&positions);
        if !without_commit.is_empty() {
            self.consumer
                .assign(&self.topic, &without_commit, self.reset)
                .await?;
            // Where the reset put them is committed at once (as Kafka's auto-commit does),
            // so a later run starts there too, not at its own reset point.
            for (topic, partition, position) in self.consumer.positions() {
                if without_commit.contains(&partition) && *topic == *self.topic {
                    self.printed_up_to
                        .insert((topic.to_string(), partition), position);
                }
            }
        }
        tracing::debug!(assignment = %member.assignment().describe(), "consuming");
        self.commit().await
    }

    /// Commits and leaves the group (a member that stays would hold its partitions until
    /// its session times out).
    async fn finish(&mut self) -> Result<(), ToolError> {
        let committed = self.commit().await;
        if let Some(member) = self.member.take() {
            member.leave().await?;
        }
        committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_like_kafkas_console_consumer() {
        assert_eq!(parse_start_offset("earliest"), Ok(StartOffset::Earliest));
        assert_eq!(parse_start_offset("latest"), Ok(StartOffset::Latest));
        assert_eq!(parse_start_offset("42"), Ok(StartOffset::At(42)));
        assert!(parse_start_offset("-1").is_err());
        assert!(parse_start_offset("soon").is_err());
        assert_eq!(
            assignor_preference(Assignor::RoundRobin),
            vec![Assignor::RoundRobin, Assignor::Range]
        );
        assert!(parse_assignor("sticky").is_err());
    }
}
