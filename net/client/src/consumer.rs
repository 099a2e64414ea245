//! A consumer of explicitly assigned partitions (no consumer group): each [`Consumer::poll`]
//! sends one Fetch per partition leader, all at once, and returns what came back; the
//! position of each partition moves past the last whole batch it received.
//!
//! Fetches are not pipelined on purpose: the next fetch's offsets are known only once the
//! previous answer arrived (Kafka's consumers do the same); throughput comes from large
//! byte budgets (`max_bytes`) and long polls (`max_wait` with `min_bytes`).
//!
//! Invariants: a position only moves forward, to the end of a whole, valid batch; an
//! answer with a partition error leaves that position unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafki_net::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafki_net::kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_net::kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::client::{duration_ms_i32, Client, OffsetSpec};
use crate::error::{ClientError, ClientResult, KafkaCode};
use crate::fetch::RecordBatches;

/// Pause after a poll that fetched nothing because of errors (Kafka's `retry.backoff.ms`).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Fetch settings (Kafka's consumer names in brackets).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// How long the broker may wait for `min_bytes` [`fetch.max.wait.ms`].
    pub max_wait: Duration,
    /// [`fetch.min.bytes`]
    pub min_bytes: i32,
    /// Byte budget of one answer [`fetch.max.bytes`].
    pub max_bytes: i32,
    /// Byte budget per partition [`max.partition.fetch.bytes`].
    pub partition_max_bytes: i32,
    /// 0: read_uncommitted, 1: read_committed [`isolation.level`].
    pub isolation_level: i8,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            isolation_level: 0,
        }
    }
}

/// Where an assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

#[derive(Debug, Clone)]
struct Assignment {
    topic: Arc<str>,
    partition: i32,
    position: i64,
    high_watermark: i64,
    /// Doubled when a partition's answer held no whole batch (a batch bigger than the
    /// budget, from a broker that does not apply KIP-74's "at least one batch").
    partition_max_bytes: i32,
}

/// One partition's part of a fetch answer.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The offset this fetch asked from: records before it (in the first batch) were
    /// read already.
    pub fetch_offset: i64,
    pub high_watermark: i64,
    /// Whole batches and possibly a partial last one; see [`FetchedPartition::batches`].
    pub records: Bytes,
}

impl FetchedPartition {
    /// The whole batches (CRC-checked).
    pub fn batches(&self) -> RecordBatches<'_> {
        RecordBatches::new(&self.records)
    }
}

/// The answer of one broker to one fetch.
#[derive(Debug, Clone)]
pub struct FetchRound {
    pub broker: i32,
    /// From sending the fetch to its answer.
    pub round_trip: Duration,
    /// Record bytes in the answer.
    pub bytes: usize,
    pub partitions: Vec<FetchedPartition>,
}

/// A consumer of assigned partitions.
pub struct Consumer {
    client: Client,
    config: FetchConfig,
    assignments: Vec<Assignment>,
}

impl Consumer {
    pub fn new(client: Client, config: FetchConfig) -> Self {
        Self {
            client,
            config,
            assignments: Vec::new(),
        }
    }

    /// Assigns `partitions` of `topic`, starting at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[i32],
        start: StartOffset,
    ) -> ClientResult<()> {
        if self.client.metadata().topic(topic).is_none() {
            self.client.refresh_metadata(&[topic]).await?;
        }
        let positions: BTreeMap<i32, i64> = match start {
            StartOffset::At(offset) => partitions.iter().map(|&p| (p, offset)).collect(),
            StartOffset::Earliest => {
                self.client
                    .list_offsets(topic, partitions, OffsetSpec::Earliest)
                    .await?
            }
            StartOffset::Latest => {
                self.client
                    .list_offsets(topic, partitions, OffsetSpec::Latest)
                    .await?
            }
        };
        let topic: Arc<str> = Arc::from(topic);
        for (&partition, &position) in &positions {
            self.assignments
                .retain(|a| !(a.topic == topic && a.partition == partition));
            self.assignments.push(Assignment {
                topic: topic.clone(),
                partition,
                position,
                high_watermark: -1,
                partition_max_bytes: self.config.partition_max_bytes,
            });
        }
        Ok(())
    }

    /// `(topic, partition, position)` of every assigned partition.
    pub fn positions(&self) -> Vec<(Arc<str>, i32, i64)> {
        self.assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.position))
            .collect()
    }

    /// Sum over assigned partitions of (high watermark − position), from the last answers
    /// (partitions not fetched yet count 0).
    pub fn lag(&self) -> i64 {
        self.assignments
            .iter()
            .filter(|a| a.high_watermark >= 0)
            .map(|a| (a.high_watermark - a.position).max(0))
            .sum()
    }

    /// One fetch to every leader of assigned partitions, concurrently.
    pub async fn poll(&mut self) -> ClientResult<Vec<FetchRound>> {
        let metadata = self.client.metadata();
        let mut by_leader: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        let mut leaderless = false;
        for (index, assignment) in self.assignments.iter().enumerate() {
            match metadata.leader(&assignment.topic, assignment.partition) {
                Some(leader) => by_leader.entry(leader).or_default().push(index),
                None => leaderless = true,
            }
        }
        let fetches = by_leader.into_iter().map(|(leader, indexes)| {
            let request = self.fetch_request(&indexes, &metadata);
            let client = self.client.clone();
            async move {
                let started = Instant::now();
                let response = match client.connection(leader).await {
                    Ok(connection) => match connection.version_for(ApiKey::Fetch) {
                        Ok(version) => connection.send_at(&request, version).await,
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error),
                };
                (leader, indexes, started.elapsed(), response)
            }
        });
        let answers = futures::future::join_all(fetches).await;
        let mut rounds = Vec::with_capacity(answers.len());
        let mut refresh = false;
        for (leader, indexes, round_trip, response) in answers {
            let response = match response {
                Ok(response) => response,
                Err(error) if error.is_retriable() => {
                    tracing::debug!(leader, %error, "fetch failed; will retry");
                    refresh = true;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let (round, needs_refresh) = self.apply(leader, &indexes, round_trip, response)?;
            refresh |= needs_refresh;
            rounds.push(round);
        }
        if refresh || leaderless {
            self.refresh_metadata().await;
        }
        if rounds.is_empty() && !self.assignments.is_empty() {
            // Nothing could be fetched (no leader, broker unreachable): do not spin.
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
        Ok(rounds)
    }

    async fn refresh_metadata(&self) {
        let mut topics: Vec<&str> = self.assignments.iter().map(|a| &*a.topic).collect();
        topics.sort_unstable();
        topics.dedup();
        if let Err(error) = self.client.refresh_metadata(&topics).await {
            tracing::debug!(%error, "metadata refresh failed");
        }
    }

    fn fetch_request(
        &self,
        indexes: &[usize],
        metadata: &crate::metadata::ClusterMetadata,
    ) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for &index in indexes {
            let assignment = &self.assignments[index];
            let position = topics
                .iter()
                .position(|topic| topic.topic.0.as_str() == &*assignment.topic);
            let topic_index = match position {
                Some(topic_index) => topic_index,
                None => {
                    let topic_id = metadata
                        .topic(&assignment.topic)
                        .map_or(Uuid::nil(), |topic| topic.topic_id);
                    topics.push(
                        FetchTopic::default()
                            .with_topic(TopicName(StrBytes::from_string(
                                assignment.topic.to_string(),
                            )))
                            .with_topic_id(topic_id),
                    );
                    topics.len() - 1
                }
            };
            topics[topic_index].partitions.push(
                FetchPartition::default()
                    .with_partition(assignment.partition)
                    .with_fetch_offset(assignment.position)
                    .with_partition_max_bytes(assignment.partition_max_bytes),
            );
        }
        FetchRequest::default()
            .with_max_wait_ms(duration_ms_i32(self.config.max_wait))
            .with_min_bytes(self.config.min_bytes)
            .with_max_bytes(self.config.max_bytes)
            .with_isolation_level(self.config.isolation_level)
            .with_topics(topics)
    }

    /// Moves positions past the whole batches of `response`; returns the round and
    /// whether metadata should be refreshed (a partition's leader moved).
    fn apply(
        &mut self,
        broker: i32,
        indexes: &[usize],
        round_trip: Duration,
        response: FetchResponse,
    ) -> ClientResult<(FetchRound, bool)> {
        if let Some(code) = KafkaCode::from_code(response.error_code) {
            return Err(ClientError::kafka(
                code,
                format!("fetch from broker {broker}"),
            ));
        }
        let metadata = self.client.metadata();
        let mut round = FetchRound {
            broker,
            round_trip,
            bytes: 0,
            partitions: Vec::new(),
        };
        let mut refresh = false;
        for topic in response.responses {
            let topic_name: Arc<str> = if topic.topic.0.is_empty() {
                match metadata.topic_by_id(topic.topic_id) {
                    Some(found) => Arc::from(found.name.as_str()),
                    None => continue,
                }
            } else {
                Arc::from(topic.topic.0.as_str())
            };
            for partition in topic.partitions {
                let Some(&index) = indexes.iter().find(|&&index| {
                    let assignment = &self.assignments[index];
                    *assignment.topic == *topic_name
                        && assignment.partition == partition.partition_index
                }) else {
                    continue;
                };
                let assignment = &mut self.assignments[index];
                if let Some(code) = KafkaCode::from_code(partition.error_code) {
                    if code.is(ResponseError::OffsetOutOfRange) {
                        return Err(ClientError::kafka(
                            code,
                            format!(
                                "fetch {}-{} at offset {}",
                                assignment.topic, assignment.partition, assignment.position
                            ),
                        ));
                    }
                    if code.is_retriable() {
                        refresh = true;
                        continue;
                    }
                    return Err(ClientError::kafka(
                        code,
                        format!("fetch {}-{}", assignment.topic, assignment.partition),
                    ));
                }
                assignment.high_watermark = partition.high_watermark;
                let records = partition.records.unwrap_or_default();
                let fetch_offset = assignment.position;
                let mut batches = RecordBatches::new(&records);
                let mut whole_batches = 0;
                for batch in batches.by_ref() {
                    let batch = batch.map_err(|error| ClientError::CorruptBatch {
                        topic: assignment.topic.to_string(),
                        partition: assignment.partition,
                        offset: assignment.position,
                        reason: error.to_string(),
                    })?;
                    assignment.position = assignment.position.max(batch.next_offset());
                    whole_batches += 1;
                }
                if whole_batches == 0 && !records.is_empty() {
                    // Only a partial batch: it is larger than the budget. Ask for more.
                    assignment.partition_max_bytes =
                        assignment.partition_max_bytes.saturating_mul(2);
                } else if whole_batches > 0 {
                    assignment.partition_max_bytes = self.config.partition_max_bytes;
                }
                round.bytes += records.len() - batches.partial_trailing_bytes();
                round.partitions.push(FetchedPartition {
                    topic: assignment.topic.clone(),
                    partition: assignment.partition,
                    fetch_offset,
                    high_watermark: partition.high_watermark,
                    records,
                });
            }
        }
        Ok((round, refresh))
    }
}
