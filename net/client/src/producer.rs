//! The producer: records go into the [`Accumulator`] from any task (`send`), and one
//! background *sender* task per producer turns ready batches into Produce requests,
//! keeps up to `max_in_flight` of them outstanding per broker, and reports every batch's
//! outcome to an optional [`DeliveryListener`] (on the sender task, without locks held).
//!
//! There is no future per record (that would be an allocation per record): completion is
//! per batch, through the listener, and [`Producer::flush`] waits for everything sent so
//! far. Retriable errors (leader moved, connection lost, timeout) send the batch again
//! after a metadata refresh, up to `retries` times; without idempotence a retry may
//! reorder or duplicate records, as with Kafka's producer when idempotence is off.
//!
//! Invariants: the accumulator lock is never held across an `.await`; a batch is
//! completed exactly once (acknowledged, failed, or abandoned at close); `flush` returns
//! only when `records_pending` is zero.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kafki_net::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use kafki_net::kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafki_net::kafka_protocol::protocol::StrBytes;
use kafki_records::compression::Compression;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::accumulator::{
    Accumulator, AccumulatorConfig, Appended, PartitionHandle, ProducerRecord, SealedBatch,
};
use crate::client::{duration_ms_i32, Client};
use crate::error::{ClientError, ClientResult, KafkaCode};

/// Kafka's `acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Acks {
    /// No response at all (`acks=0`): a batch is done once written to the socket.
    None,
    /// The leader appended it (`acks=1`).
    Leader,
    /// Every in-sync replica has it (`acks=all`, `-1`).
    All,
}

impl Acks {
    pub fn wire_value(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    /// Parses `0`, `1`, `-1` or `all`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "0" => Some(Acks::None),
            "1" => Some(Acks::Leader),
            "-1" | "all" => Some(Acks::All),
            _ => None,
        }
    }
}

/// Settings of a [`Producer`] (Kafka's names in brackets).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// [`acks`]
    pub acks: Acks,
    /// Upper bound of a batch's uncompressed size [`batch.size`].
    pub batch_bytes: usize,
    /// How long an open batch may wait for more records [`linger.ms`].
    pub linger: Duration,
    /// [`compression.type`]
    pub compression: Compression,
    /// Bytes of records not yet acknowledged before `send` waits [`buffer.memory`].
    pub buffer_bytes: usize,
    /// Largest produce request [`max.request.size`].
    pub max_request_bytes: usize,
    /// How long the broker may take to reach `acks` [`request.timeout.ms`, sent as the
    /// produce timeout].
    pub produce_timeout: Duration,
    /// Sends of a batch after the first on retriable errors [`retries`].
    pub retries: u32,
    /// Time between retries and metadata refreshes [`retry.backoff.ms`].
    pub retry_backoff: Duration,
    /// How long a batch may take from its creation to its acknowledgement, retries
    /// included, before it fails with [`ClientError::DeliveryTimeout`]
    /// [`delivery.timeout.ms`]. Without it a broker that went away is retried batch by
    /// batch, a retry backoff each, for as long as the buffer holds batches.
    pub delivery_timeout: Duration,
    /// Record per record when it was handed over, for per-record latency in
    /// [`Delivery::record_latencies_us`] (4 bytes per record in flight).
    pub track_record_times: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            batch_bytes: 16 * 1024,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            buffer_bytes: 32 * 1024 * 1024,
            max_request_bytes: 1024 * 1024,
            produce_timeout: Duration::from_secs(30),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            track_record_times: false,
        }
    }
}

/// The outcome of one batch, as the listener sees it.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub handle: PartitionHandle,
    /// The offset of the batch's first record (`None` with `acks=0`).
    pub base_offset: Option<i64>,
    pub record_count: u32,
    /// Key and value bytes of the batch's records.
    pub payload_bytes: u64,
    /// `None` when the batch was acknowledged.
    pub error: Option<&'a ClientError>,
    /// When the batch opened (its first record was handed over).
    pub batch_created: Instant,
    /// When the response arrived (with `acks=0`: when the request was written).
    pub acknowledged_at: Instant,
    record_times_us: &'a [u32],
}

impl Delivery<'_> {
    /// Per record, µs from being handed to the producer to the acknowledgement; empty
    /// unless [`ProducerConfig::track_record_times`].
    pub fn record_latencies_us(&self) -> impl Iterator<Item = u64> + '_ {
        let batch_age_us = u64::try_from(
            self.acknowledged_at
                .saturating_duration_since(self.batch_created)
                .as_micros(),
        )
        .unwrap_or(u64::MAX);
        self.record_times_us
            .iter()
            .map(move |&appended_us| batch_age_us.saturating_sub(u64::from(appended_us)))
    }
}

/// Receives every batch's outcome, on the producer's sender task.
pub trait DeliveryListener: Send + 'static {
    fn on_delivery(&mut self, delivery: &Delivery<'_>);
}

impl<F: FnMut(&Delivery<'_>) + Send + 'static> DeliveryListener for F {
    fn on_delivery(&mut self, delivery: &Delivery<'_>) {
        self(delivery)
    }
}

/// Counters over the producer's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStats {
    pub records_acknowledged: u64,
    pub records_failed: u64,
    pub batches_acknowledged: u64,
    pub requests: u64,
    pub retries: u64,
    /// The first error that failed a batch for good.
    pub first_error: Option<String>,
}

struct Shared {
    accumulator: Mutex<Accumulator>,
    /// The sender has something new: a ready batch, a new linger deadline, a flush, close.
    wake: Notify,
    /// Buffer space was freed / the producer became idle.
    progress: Notify,
    space_waiters: AtomicU64,
    closing: AtomicBool,
    records_acknowledged: AtomicU64,
    records_failed: AtomicU64,
    batches_acknowledged: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn accumulator(&self) -> MutexGuard<'_, Accumulator> {
        self.accumulator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stats(&self) -> ProducerStats {
        ProducerStats {
            records_acknowledged: self.records_acknowledged.load(Ordering::Relaxed),
            records_failed: self.records_failed.load(Ordering::Relaxed),
            batches_acknowledged: self.batches_acknowledged.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            first_error: self
                .first_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}

/// A Kafka producer. `send` may be called from many tasks (`&self`); records of one
/// partition from one task keep their order unless a retry reorders them.
pub struct Producer {
    client: Client,
    shared: Arc<Shared>,
    sender: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Without `close`, unsent records are dropped; the sender ends after what is in
        // flight.
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Producer {
    /// A producer on `client`; spawns its sender task on the current tokio runtime.
    pub fn new(
        client: Client,
        config: ProducerConfig,
        listener: Option<Box<dyn DeliveryListener>>,
    ) -> ClientResult<Self> {
        if config.batch_bytes == 0 || config.buffer_bytes < config.batch_bytes {
            return Err(ClientError::Invalid(format!(
                "batch size {} must be positive and at most the buffer size {}",
                config.batch_bytes, config.buffer_bytes
            )));
        }
        let accumulator = Accumulator::new(AccumulatorConfig {
            batch_bytes: config.batch_bytes,
            linger: config.linger,
            compression: config.compression,
            track_record_times: config.track_record_times,
            buffer_bytes_max: config.buffer_bytes,
        });
        let shared = Arc::new(Shared {
            accumulator: Mutex::new(accumulator),
            wake: Notify::new(),
            progress: Notify::new(),
            space_waiters: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            records_acknowledged: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            batches_acknowledged: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            first_error: Mutex::new(None),
        });
        let sender = Sender {
            client: client.clone(),
            shared: shared.clone(),
            config,
            listener,
            leaders: Vec::new(),
            leaders_from: None,
            in_flight_per_broker: HashMap::new(),
            refresh_after: Instant::now(),
        };
        let handle = tokio::spawn(sender.run());
        Ok(Self {
            client,
            shared,
            sender: Some(handle),
        })
    }

    /// The handles of every partition of `topic` (metadata is fetched if needed).
    pub async fn partitions(&self, topic: &str) -> ClientResult<Vec<PartitionHandle>> {
        let metadata = match self.client.metadata().topic(topic) {
            Some(_) => self.client.metadata(),
            None => self.client.refresh_metadata(&[topic]).await?,
        };
        let Some(topic_metadata) = metadata.topic(topic) else {
            return Err(ClientError::UnknownTopic {
                topic: topic.to_string(),
            });
        };
        let mut accumulator = self.shared.accumulator();
        Ok(topic_metadata
            .partitions
            .iter()
            .map(|partition| accumulator.register(topic, partition.partition))
            .collect())
    }

    /// The handle of one partition (not checked against metadata until sent).
    pub fn partition(&self, topic: &str, partition: i32) -> PartitionHandle {
        self.shared.accumulator().register(topic, partition)
    }

    /// Hands one record over. Returns once it is encoded into a batch; waits only while
    /// the buffer is full. Yields to other tasks after sealing a batch, so on a
    /// current-thread runtime the sender gets to send it.
    pub async fn send(
        &self,
        partition: PartitionHandle,
        record: ProducerRecord<'_>,
    ) -> ClientResult<()> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(ClientError::ProducerClosed);
        }
        let appended = self
            .shared
            .accumulator()
            .append(partition, &record, Instant::now());
        match appended {
            Appended::Done { sealed, opened } => self.appended(sealed, opened).await,
            Appended::BufferFull => self.send_when_space(partition, record).await,
        }
    }

    async fn appended(&self, sealed: bool, opened: bool) -> ClientResult<()> {
        if sealed || opened {
            self.shared.wake.notify_one();
        }
        if sealed {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// The slow path of `send`: wait for completions to free buffer space.
    async fn send_when_space(
        &self,
        partition: PartitionHandle,
        record: ProducerRecord<'_>,
    ) -> ClientResult<()> {
        self.shared.space_waiters.fetch_add(1, Ordering::AcqRel);
        let result = loop {
            if self.shared.closing.load(Ordering::Acquire) {
                break Err(ClientError::ProducerClosed);
            }
            // Registered before the retry, so a completion in between is not missed.
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let appended = self
                .shared
                .accumulator()
                .append(partition, &record, Instant::now());
            match appended {
                Appended::Done { sealed, opened } => break Ok((sealed, opened)),
                Appended::BufferFull => {
                    self.shared.wake.notify_one();
                    progress.await;
                }
            }
        };
        self.shared.space_waiters.fetch_sub(1, Ordering::AcqRel);
        let (sealed, opened) = result?;
        self.appended(sealed, opened).await
    }

    /// Sends everything handed over so far, ignoring linger, and waits until all of it is
    /// acknowledged or failed. Fails with the first error that failed a batch since the
    /// producer started.
    pub async fn flush(&self) -> ClientResult<()> {
        self.shared.accumulator().begin_flush();
        self.shared.wake.notify_one();
        loop {
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.shared.accumulator().records_pending() == 0 {
                break;
            }
            if self.sender.as_ref().is_some_and(|task| task.is_finished()) {
                break;
            }
            progress.await;
        }
        self.shared.accumulator().end_flush();
        let stats = self.stats();
        match stats.first_error {
            Some(first_error) if stats.records_failed > 0 => Err(ClientError::DeliveryFailed {
                records: stats.records_failed,
                first_error,
            }),
            _ => Ok(()),
        }
    }

    /// Flushes, stops the sender task and returns the final counters (failed records are
    /// counted in [`ProducerStats::records_failed`]).
    pub async fn close(mut self) -> ProducerStats {
        let _ = self.flush().await;
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(task) = self.sender.take() {
            let _ = task.await;
        }
        self.shared.stats()
    }

    pub fn stats(&self) -> ProducerStats {
        self.shared.stats()
    }

    /// Records whose batch failed for good so far.
    pub fn records_failed(&self) -> u64 {
        self.shared.records_failed.load(Ordering::Relaxed)
    }

    /// Records handed over and not yet acknowledged or failed.
    pub fn records_pending(&self) -> u64 {
        self.shared.accumulator().records_pending()
    }
}

/// What the sender waits for besides wake-ups.
enum SenderEvent {
    Produced(ProduceOutcome),
    MetadataRefreshed,
}

type SenderFuture = Pin<Box<dyn Future<Output = SenderEvent> + Send>>;

struct ProduceOutcome {
    broker: i32,
    batches: Vec<SealedBatch>,
    /// Per batch (same order): the base offset (`None` with acks=0) or the error.
    results: Vec<Result<Option<i64>, ClientError>>,
    acknowledged_at: Instant,
}

/// The background task of one producer.
struct Sender {
    client: Client,
    shared: Arc<Shared>,
    config: ProducerConfig,
    listener: Option<Box<dyn DeliveryListener>>,
    /// Leader per partition handle, from `leaders_from`.
    leaders: Vec<Option<i32>>,
    leaders_from: Option<Arc<crate::metadata::ClusterMetadata>>,
    in_flight_per_broker: HashMap<i32, usize>,
    refresh_after: Instant,
}

impl Sender {
    async fn run(mut self) {
        let mut work: FuturesUnordered<SenderFuture> = FuturesUnordered::new();
        let mut refreshing = false;
        loop {
            self.update_leaders();
            let closing = self.shared.closing.load(Ordering::Acquire);
            let (drained, expired) = {
                let mut accumulator = self.shared.accumulator();
                let expired = Instant::now()
                    .checked_sub(self.config.delivery_timeout)
                    .map(|created_by| accumulator.take_expired(created_by))
                    .unwrap_or_default();
                accumulator
                    .set_space_waiters(self.shared.space_waiters.load(Ordering::Acquire) as usize);
                let max_in_flight = self.client.config().connection.max_in_flight;
                let in_flight = &self.in_flight_per_broker;
                let drained = accumulator.drain(
                    Instant::now(),
                    &self.leaders,
                    |broker| {
                        max_in_flight.saturating_sub(in_flight.get(&broker).copied().unwrap_or(0))
                    },
                    self.config.max_request_bytes,
                );
                if closing && work.is_empty() && drained.requests.is_empty() {
                    let abandoned = accumulator.abandon();
                    if abandoned > 0 {
                        tracing::warn!(records = abandoned, "producer closed with unsent records");
                    }
                    drop(accumulator);
                    self.fail_expired(expired);
                    self.shared.progress.notify_waiters();
                    return;
                }
                (drained, expired)
            };
            self.fail_expired(expired);
            for (broker, batches) in drained.requests {
                *self.in_flight_per_broker.entry(broker).or_insert(0) += 1;
                self.shared.requests.fetch_add(1, Ordering::Relaxed);
                work.push(Box::pin(produce(
                    self.client.clone(),
                    broker,
                    batches,
                    self.config.acks,
                    self.config.produce_timeout,
                )));
            }
            if drained.waiting_for_leader && !refreshing && Instant::now() >= self.refresh_after {
                refreshing = true;
                self.refresh_after = Instant::now() + self.config.retry_backoff;
                work.push(Box::pin(refresh_metadata(
                    self.client.clone(),
                    self.topics(),
                )));
            }
            let deadline = match (drained.next_deadline, drained.waiting_for_leader) {
                (Some(linger), true) => Some(linger.min(self.refresh_after)),
                (Some(linger), false) => Some(linger),
                (None, true) => Some(self.refresh_after),
                (None, false) => None,
            };
            tokio::select! {
                Some(event) = work.next(), if !work.is_empty() => match event {
                    SenderEvent::Produced(outcome) => self.on_produced(outcome),
                    SenderEvent::MetadataRefreshed => refreshing = false,
                },
                _ = self.shared.wake.notified() => {}
                _ = sleep_until_option(deadline) => {}
            }
        }
    }

    fn topics(&self) -> Vec<String> {
        let accumulator = self.shared.accumulator();
        let mut topics: Vec<String> = accumulator
            .partitions()
            .map(|(t, _)| t.to_string())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Recomputes the leader of every partition handle when the metadata snapshot or the
    /// set of partitions changed.
    fn update_leaders(&mut self) {
        let metadata = self.client.metadata();
        let accumulator = self.shared.accumulator();
        let same_snapshot = self
            .leaders_from
            .as_ref()
            .is_some_and(|from| Arc::ptr_eq(from, &metadata));
        if same_snapshot && self.leaders.len() == accumulator.partition_count() {
            return;
        }
        self.leaders = accumulator
            .partitions()
            .map(|(topic, partition)| metadata.leader(topic, partition))
            .collect();
        drop(accumulator);
        self.leaders_from = Some(metadata);
    }

    /// Tells the listener and the counters that `batch` is done, acknowledged or failed
    /// for good (the caller hands it back to the accumulator).
    fn report(
        &mut self,
        batch: &SealedBatch,
        result: ClientResult<Option<i64>>,
        acknowledged_at: Instant,
    ) {
        let (base_offset, error) = match &result {
            Ok(offset) => (*offset, None),
            Err(error) => (None, Some(error)),
        };
        if let Some(listener) = self.listener.as_mut() {
            listener.on_delivery(&Delivery {
                topic: &batch.topic,
                partition: batch.partition,
                handle: batch.handle,
                base_offset,
                record_count: batch.record_count,
                payload_bytes: batch.payload_bytes,
                error,
                batch_created: batch.created,
                acknowledged_at,
                record_times_us: &batch.record_times_us,
            });
        }
        match error {
            None => {
                self.shared
                    .records_acknowledged
                    .fetch_add(u64::from(batch.record_count), Ordering::Relaxed);
                self.shared
                    .batches_acknowledged
                    .fetch_add(1, Ordering::Relaxed);
            }
            Some(error) => {
                // One warning for the first failure; a broker gone away fails every
                // buffered batch, and a line each would bury it.
                let failed_before = self
                    .shared
                    .records_failed
                    .fetch_add(u64::from(batch.record_count), Ordering::Relaxed);
                if failed_before == 0 {
                    tracing::warn!(topic = %batch.topic, partition = batch.partition, %error, "batch failed (later failures are logged at debug level)");
                } else {
                    tracing::debug!(topic = %batch.topic, partition = batch.partition, %error, "batch failed");
                }
                let mut first = self
                    .shared
                    .first_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if first.is_none() {
                    *first = Some(error.to_string());
                }
            }
        }
    }

    /// Fails the batches whose delivery timeout passed before they were sent (again).
    fn fail_expired(&mut self, expired: Vec<SealedBatch>) {
        if expired.is_empty() {
            return;
        }
        let now = Instant::now();
        for batch in &expired {
            let error = ClientError::DeliveryTimeout {
                topic: batch.topic.to_string(),
                partition: batch.partition,
                timeout: self.config.delivery_timeout,
            };
            self.report(batch, Err(error), now);
        }
        let mut accumulator = self.shared.accumulator();
        for batch in expired {
            accumulator.complete(batch);
        }
        drop(accumulator);
        self.shared.progress.notify_waiters();
    }

    fn on_produced(&mut self, outcome: ProduceOutcome) {
        if let Some(count) = self.in_flight_per_broker.get_mut(&outcome.broker) {
            *count = count.saturating_sub(1);
        }
        let mut retry_batches = Vec::new();
        let mut done_batches = Vec::new();
        for (batch, result) in outcome.batches.into_iter().zip(outcome.results) {
            match result {
                Err(error)
                    if error.is_retriable()
                        && batch.attempts < self.config.retries
                        && batch.created.elapsed() < self.config.delivery_timeout =>
                {
                    tracing::debug!(topic = %batch.topic, partition = batch.partition, %error, "retrying batch");
                    self.shared.retries.fetch_add(1, Ordering::Relaxed);
                    retry_batches.push(batch);
                }
                result => {
                    self.report(&batch, result, outcome.acknowledged_at);
                    done_batches.push(batch);
                }
            }
        }
        if !retry_batches.is_empty() {
            // The leader may have moved: look again before the retry goes out.
            self.refresh_after = Instant::now();
            self.leaders_from = None;
            self.leaders.iter_mut().for_each(|leader| *leader = None);
        }
        let retry_at = Instant::now() + self.config.retry_backoff;
        let mut accumulator = self.shared.accumulator();
        for batch in retry_batches {
            accumulator.requeue(batch, retry_at);
        }
        for batch in done_batches {
            accumulator.complete(batch);
        }
        drop(accumulator);
        self.shared.progress.notify_waiters();
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

async fn refresh_metadata(client: Client, topics: Vec<String>) -> SenderEvent {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = client.refresh_metadata(&names).await {
        tracing::debug!(%error, "metadata refresh failed");
    }
    SenderEvent::MetadataRefreshed
}

/// Sends one Produce request with `batches` to `broker` and maps the answer back to them.
async fn produce(
    client: Client,
    broker: i32,
    batches: Vec<SealedBatch>,
    acks: Acks,
    timeout: Duration,
) -> SenderEvent {
    let results = match send_produce(&client, broker, &batches, acks, timeout).await {
        Ok(results) => results,
        Err(error) => batches.iter().map(|_| Err(error.clone())).collect(),
    };
    SenderEvent::Produced(ProduceOutcome {
        broker,
        batches,
        results,
        acknowledged_at: Instant::now(),
    })
}

async fn send_produce(
    client: &Client,
    broker: i32,
    batches: &[SealedBatch],
    acks: Acks,
    timeout: Duration,
) -> ClientResult<Vec<Result<Option<i64>, ClientError>>> {
    let connection = client.connection(broker).await?;
    let version = connection.version_for(ApiKey::Produce)?;
    let metadata = client.metadata();
    let mut topic_data: Vec<TopicProduceData> = Vec::new();
    let mut topic_ids: Vec<Uuid> = Vec::new();
    for batch in batches {
        let position = topic_data
            .iter()
            .position(|topic| topic.name.0.as_str() == &*batch.topic);
        let index = match position {
            Some(index) => index,
            None => {
                let topic_id = metadata
                    .topic(&batch.topic)
                    .map_or(Uuid::nil(), |topic| topic.topic_id);
                if version >= 13 && topic_id.is_nil() {
                    return Err(ClientError::UnknownTopic {
                        topic: batch.topic.to_string(),
                    });
                }
                topic_data.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(batch.topic.to_string())))
                        .with_topic_id(topic_id),
                );
                topic_ids.push(topic_id);
                topic_data.len() - 1
            }
        };
        topic_data[index].partition_data.push(
            PartitionProduceData::default()
                .with_index(batch.partition)
                .with_records(Some(batch.bytes.clone())),
        );
    }
    let request = ProduceRequest::default()
        .with_acks(acks.wire_value())
        .with_timeout_ms(duration_ms_i32(timeout))
        .with_topic_data(topic_data);
    if acks == Acks::None {
        connection.send_without_response(&request, version).await?;
        return Ok(batches.iter().map(|_| Ok(None)).collect());
    }
    let response = connection.send_at(&request, version).await?;
    let topic_id_of = |topic: &str| {
        metadata
            .topic(topic)
            .map_or(Uuid::nil(), |topic| topic.topic_id)
    };
    Ok(match_produce_response(
        &response,
        batches,
        topic_id_of,
        connection.address(),
    ))
}

/// Each batch's result from a Produce response, matched by topic name (by topic id from
/// v13 on, where the name is empty) and partition.
fn match_produce_response(
    response: &ProduceResponse,
    batches: &[SealedBatch],
    topic_id_of: impl Fn(&str) -> Uuid,
    address: &str,
) -> Vec<Result<Option<i64>, ClientError>> {
    batches
        .iter()
        .map(|batch| {
            let topic_id = topic_id_of(&batch.topic);
            let found = response.responses.iter().find_map(|topic| {
                let matches = if topic.name.0.is_empty() {
                    !topic_id.is_nil() && topic.topic_id == topic_id
                } else {
                    topic.name.0.as_str() == &*batch.topic
                };
                if !matches {
                    return None;
                }
                topic
                    .partition_responses
                    .iter()
                    .find(|partition| partition.index == batch.partition)
            });
            let Some(partition) = found else {
                return Err(ClientError::Protocol {
                    address: address.to_string(),
                    reason: format!(
                        "produce response has no answer for {}-{}",
                        batch.topic, batch.partition
                    ),
                });
            };
            match KafkaCode::from_code(partition.error_code) {
                None => Ok(Some(partition.base_offset)),
                Some(code) => Err(ClientError::Kafka {
                    code,
                    context: format!("produce to {}-{}", batch.topic, batch.partition),
                    message: partition.error_message.as_ref().map(|m| m.to_string()),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    fn batch(topic: &str, partition: i32) -> SealedBatch {
        SealedBatch {
            handle: PartitionHandle(0),
            topic: Arc::from(topic),
            partition,
            bytes: bytes::Bytes::new(),
            record_count: 1,
            payload_bytes: 1,
            created: Instant::now(),
            record_times_us: vec![5],
            attempts: 0,
            sequence: 0,
            not_before: None,
        }
    }

    #[test]
    fn acks_parse_kafkas_spellings() {
        assert_eq!(Acks::parse("all"), Some(Acks::All));
        assert_eq!(Acks::parse("-1"), Some(Acks::All));
        assert_eq!(Acks::parse("1"), Some(Acks::Leader));
        assert_eq!(Acks::parse("0"), Some(Acks::None));
        assert_eq!(Acks::parse("2"), None);
        assert_eq!(Acks::All.wire_value(), -1);
    }

    #[test]
    fn produce_responses_map_back_to_batches() {
        let response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(0)
                        .with_base_offset(42),
                    PartitionProduceResponse::default()
                        .with_index(1)
                        .with_error_code(6),
                ])]);
        let results = match_produce_response(
            &response,
            &[batch("t", 0), batch("t", 1), batch("t", 2), batch("u", 0)],
            |_| Uuid::nil(),
            "b",
        );
        // From v13 topics are named by id only.
        let by_id =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_topic_id(Uuid::from_u128(9))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(0)
                    .with_base_offset(7)])]);
        let id_of = |topic: &str| {
            if topic == "t" {
                Uuid::from_u128(9)
            } else {
                Uuid::from_u128(1)
            }
        };
        let by_id_results =
            match_produce_response(&by_id, &[batch("t", 0), batch("u", 0)], id_of, "b");
        assert!(matches!(by_id_results[0], Ok(Some(7))));
        assert!(by_id_results[1].is_err());
        assert!(matches!(results[0], Ok(Some(42))));
        assert!(
            matches!(&results[1], Err(error) if error.is_retriable() && error.to_string().contains("NOT_LEADER_OR_FOLLOWER"))
        );
        assert!(matches!(results[2], Err(ClientError::Protocol { .. })));
        assert!(matches!(results[3], Err(ClientError::Protocol { .. })));
    }

    #[test]
    fn delivery_latencies_are_per_record() {
        let created = Instant::now();
        let delivery = Delivery {
            topic: "t",
            partition: 0,
            handle: PartitionHandle(0),
            base_offset: Some(0),
            record_count: 3,
            payload_bytes: 3,
            error: None,
            batch_created: created,
            acknowledged_at: created + Duration::from_micros(1000),
            record_times_us: &[0, 100, 2000],
        };
        assert_eq!(
            delivery.record_latencies_us().collect::<Vec<_>>(),
            vec![1000, 900, 0]
        );
    }
}
