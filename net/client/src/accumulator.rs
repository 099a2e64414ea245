//! The producer's record accumulator, pure (no I/O; the caller passes the time in).
//!
//! Each partition has at most one *open* batch: records are encoded straight into its
//! records buffer (`kafki_records::records::encode_record`, no allocation per record once
//! the buffer has grown). A batch is *sealed* into a complete v2 batch (header, optional
//! compression, CRC32C, by `kafki_records::records::assemble_batch`) when the next record
//! would not fit in `batch_bytes` (Kafka's `batch.size`), or at drain time once it is
//! `linger` old (`linger.ms`), or while someone flushes or waits for buffer space. Sealed
//! batches wait per partition, in order, until [`Accumulator::drain`] groups them into
//! produce requests: one batch per partition per request (Kafka accepts no more from v3
//! on), at most `max_request_bytes` per request, only for brokers with a free in-flight
//! slot, starting at a rotating partition so none starves.
//!
//! Invariants: `buffered_bytes` is the encoded size of every record not yet completed
//! (open batches count their records section, sealed ones their batch bytes) and an append
//! is refused once it reaches `buffer_bytes_max`; `records_pending` counts appended,
//! not yet completed records; a partition's batches leave in the order they were sealed
//! (a retried batch goes back to the front).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafki_records::batch::BATCH_HEADER_BYTES;
use kafki_records::compression::Compression;
use kafki_records::records::{assemble_batch, encode_record, BatchFields, NewRecord};

/// A partition registered with a producer: an index, so the hot path never hashes a topic
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionHandle(pub(crate) u32);

impl PartitionHandle {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One record to produce, borrowed: it is encoded before `send` returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// The accumulator's knobs (see [`crate::producer::ProducerConfig`]).
#[derive(Debug, Clone)]
pub struct AccumulatorConfig {
    pub batch_bytes: usize,
    pub linger: Duration,
    pub compression: Compression,
    /// Keep, per record, when it was appended (µs after its batch opened), for per-record
    /// latency in delivery reports.
    pub track_record_times: bool,
    pub buffer_bytes_max: usize,
}

struct OpenBatch {
    records: Vec<u8>,
    record_count: i32,
    payload_bytes: u64,
    created: Instant,
    base_timestamp_ms: i64,
    max_timestamp_delta_ms: i64,
    record_times_us: Vec<u32>,
}

/// A complete batch waiting to be sent or acknowledged.
#[derive(Debug)]
pub struct SealedBatch {
    pub handle: PartitionHandle,
    pub topic: Arc<str>,
    pub partition: i32,
    pub bytes: Bytes,
    pub record_count: u32,
    /// Key and value bytes of the records (what a benchmark calls payload).
    pub payload_bytes: u64,
    /// When the batch opened (its first record was appended).
    pub created: Instant,
    /// Per record, µs after `created` it was appended (empty unless tracked).
    pub record_times_us: Vec<u32>,
    /// Sends so far (retries are counted here).
    pub attempts: u32,
    /// Position among its partition's batches (0, 1, 2, ... in sealing order), so a
    /// retried batch goes back where it was, before its successors.
    pub sequence: u64,
    /// A retried batch waits until then (retry backoff); the partition's later batches
    /// wait behind it.
    pub not_before: Option<Instant>,
}

struct PartitionQueue {
    topic: Arc<str>,
    partition: i32,
    open: Option<OpenBatch>,
    ready: VecDeque<SealedBatch>,
    next_sequence: u64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The record is in. `sealed`: a batch became ready; `opened`: a new batch started
    /// (its linger deadline is new to the sender).
    Done { sealed: bool, opened: bool },
    /// `buffer_bytes_max` reached: wait for completions, then try again.
    BufferFull,
}

/// Produce requests to send now, and when to look again.
#[derive(Debug, Default)]
pub struct Drained {
    /// `(broker id, batches)`, one batch per partition in each.
    pub requests: Vec<(i32, Vec<SealedBatch>)>,
    /// The earliest linger deadline of a batch still open.
    pub next_deadline: Option<Instant>,
    /// Ready batches wait for a partition whose leader is unknown.
    pub waiting_for_leader: bool,
}

/// The accumulator; lives behind the producer's lock, shared by the senders of records
/// and the producer's sender task.
pub struct Accumulator {
    config: AccumulatorConfig,
    partitions: Vec<PartitionQueue>,
    by_name: HashMap<(Arc<str>, i32), PartitionHandle>,
    buffered_bytes: usize,
    records_pending: u64,
    flushing: usize,
    space_waiters: usize,
    drain_start: usize,
    spare_records: Vec<Vec<u8>>,
    spare_times: Vec<Vec<u32>>,
}

/// An upper bound of a record's encoded size (varints at their longest), so the batch
/// limit can be checked before encoding.
fn record_bytes_upper_bound(record: &ProducerRecord<'_>) -> usize {
    let field = |bytes: Option<&[u8]>| 5 + bytes.map_or(0, <[u8]>::len);
    let headers: usize = record
        .headers
        .iter()
        .map(|(key, value)| field(Some(key)) + field(*value))
        .sum();
    // length, attributes, timestamp delta, offset delta, key, value, header count, headers
    5 + 1 + 10 + 5 + field(record.key) + field(record.value) + 5 + headers
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

impl Accumulator {
    pub fn new(config: AccumulatorConfig) -> Self {
        Self {
            config,
            partitions: Vec::new(),
            by_name: HashMap::new(),
            buffered_bytes: 0,
            records_pending: 0,
            flushing: 0,
            space_waiters: 0,
            drain_start: 0,
            spare_records: Vec::new(),
            spare_times: Vec::new(),
        }
    }

    /// The handle of `topic`-`partition`, registering it on first use.
    pub fn register(&mut self, topic: &str, partition: i32) -> PartitionHandle {
        let topic: Arc<str> = Arc::from(topic);
        if let Some(handle) = self.by_name.get(&(topic.clone(), partition)) {
            return *handle;
        }
        let handle = PartitionHandle(self.partitions.len() as u32);
        self.partitions.push(PartitionQueue {
            topic: topic.clone(),
            partition,
            open: None,
            ready: VecDeque::new(),
            next_sequence: 0,
        });
        self.by_name.insert((topic, partition), handle);
        handle
    }

    /// `(topic, partition)` of every registered handle, in handle order.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32)> + '_ {
        self.partitions
            .iter()
            .map(|queue| (queue.topic.as_ref(), queue.partition))
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn records_pending(&self) -> u64 {
        self.records_pending
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// While at least one flush runs, every open batch is ready regardless of linger.
    pub fn begin_flush(&mut self) {
        self.flushing += 1;
    }

    pub fn end_flush(&mut self) {
        self.flushing = self.flushing.saturating_sub(1);
    }

    /// While someone waits for buffer space, open batches are ready too (as Kafka's
    /// "exhausted" accumulator): their bytes are what the waiter needs freed.
    pub fn set_space_waiters(&mut self, waiters: usize) {
        self.space_waiters = waiters;
    }

    /// Appends one record to the partition's open batch, sealing the open batch first when
    /// the record would not fit and afterwards when no record of the same size would.
    pub fn append(
        &mut self,
        handle: PartitionHandle,
        record: &ProducerRecord<'_>,
        now: Instant,
    ) -> Appended {
        if self.buffered_bytes >= self.config.buffer_bytes_max {
            return Appended::BufferFull;
        }
        let Some(queue) = self.partitions.get(handle.index()) else {
            debug_assert!(false, "handle {handle:?} was not registered");
            return Appended::BufferFull;
        };
        let upper_bound = record_bytes_upper_bound(record);
        let fits = |open: &OpenBatch| {
            open.record_count == 0
                || (BATCH_HEADER_BYTES + open.records.len() + upper_bound
                    <= self.config.batch_bytes
                    && open.record_count < i32::MAX)
        };
        let mut sealed = false;
        if queue.open.as_ref().is_some_and(|open| !fits(open)) {
            self.seal(handle);
            sealed = true;
        }
        let opened = self.partitions[handle.index()].open.is_none();
        if opened {
            let open = OpenBatch {
                records: self.spare_records.pop().unwrap_or_default(),
                record_count: 0,
                payload_bytes: 0,
                created: now,
                base_timestamp_ms: wall_clock_ms(),
                max_timestamp_delta_ms: 0,
                record_times_us: if self.config.track_record_times {
                    self.spare_times.pop().unwrap_or_default()
                } else {
                    Vec::new()
                },
            };
            self.partitions[handle.index()].open = Some(open);
        }
        let track_record_times = self.config.track_record_times;
        let batch_bytes = self.config.batch_bytes;
        let queue = &mut self.partitions[handle.index()];
        let Some(open) = queue.open.as_mut() else {
            return Appended::BufferFull;
        };
        let since_open = now.saturating_duration_since(open.created);
        let timestamp_delta_ms = i64::try_from(since_open.as_millis()).unwrap_or(i64::MAX);
        let length_before = open.records.len();
        encode_record(
            &mut open.records,
            &NewRecord {
                timestamp_delta: timestamp_delta_ms,
                offset_delta: open.record_count,
                key: record.key,
                value: record.value,
                headers: record.headers,
            },
        );
        open.record_count += 1;
        open.payload_bytes +=
            (record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len)) as u64;
        open.max_timestamp_delta_ms = open.max_timestamp_delta_ms.max(timestamp_delta_ms);
        if track_record_times {
            open.record_times_us
                .push(u32::try_from(since_open.as_micros()).unwrap_or(u32::MAX));
        }
        let full = BATCH_HEADER_BYTES + open.records.len() + upper_bound > batch_bytes;
        self.buffered_bytes += open.records.len() - length_before;
        self.records_pending += 1;
        if full {
            self.seal(handle);
            sealed = true;
        }
        Appended::Done { sealed, opened }
    }

    /// Turns the partition's open batch (if it has records) into a sealed batch at the
    /// back of its ready queue.
    fn seal(&mut self, handle: PartitionHandle) {
        let compression = self.config.compression;
        let Some(queue) = self.partitions.get_mut(handle.index()) else {
            return;
        };
        let Some(mut open) = queue.open.take() else {
            return;
        };
        if open.record_count == 0 {
            queue.open = Some(open);
            return;
        }
        let fields = BatchFields {
            last_offset_delta: open.record_count - 1,
            base_timestamp: open.base_timestamp_ms,
            max_timestamp: open
                .base_timestamp_ms
                .saturating_add(open.max_timestamp_delta_ms),
            records_count: open.record_count,
            ..BatchFields::default()
        };
        let capacity = match compression {
            Compression::None => BATCH_HEADER_BYTES + open.records.len(),
            _ => BATCH_HEADER_BYTES + open.records.len() / 2,
        };
        let mut bytes = Vec::with_capacity(capacity);
        assemble_batch(&mut bytes, &fields, compression, &open.records);
        let records_section_bytes = open.records.len();
        open.records.clear();
        let sealed = SealedBatch {
            handle,
            topic: queue.topic.clone(),
            partition: queue.partition,
            record_count: open.record_count as u32,
            payload_bytes: open.payload_bytes,
            created: open.created,
            record_times_us: std::mem::take(&mut open.record_times_us),
            attempts: 0,
            sequence: queue.next_sequence,
            not_before: None,
            bytes: Bytes::from(bytes),
        };
        queue.next_sequence += 1;
        self.buffered_bytes = self.buffered_bytes - records_section_bytes + sealed.bytes.len();
        queue.ready.push_back(sealed);
        self.spare_records.push(open.records);
    }

    /// Seals what linger, flushes or waiters make ready, then groups ready batches into
    /// requests. `leaders[i]` is the leader of handle `i` (unknown: `None`);
    /// `free_slots(broker)` says how many more requests that broker may take now.
    pub fn drain(
        &mut self,
        now: Instant,
        leaders: &[Option<i32>],
        mut free_slots: impl FnMut(i32) -> usize,
        max_request_bytes: usize,
    ) -> Drained {
        let mut drained = Drained::default();
        let seal_all = self.flushing > 0 || self.space_waiters > 0;
        for index in 0..self.partitions.len() {
            let Some(open) = self.partitions[index].open.as_ref() else {
                continue;
            };
            let deadline = open.created + self.config.linger;
            if seal_all || deadline <= now {
                self.seal(PartitionHandle(index as u32));
            } else if open.record_count > 0 {
                drained.next_deadline =
                    Some(drained.next_deadline.map_or(deadline, |d| d.min(deadline)));
            }
        }
        let count = self.partitions.len();
        if count == 0 {
            return drained;
        }
        let start = self.drain_start % count;
        self.drain_start = self.drain_start.wrapping_add(1);
        let mut slots: HashMap<i32, usize> = HashMap::new();
        // Each pass builds at most one request per broker with one batch per partition;
        // passes repeat while brokers have slots and batches are left.
        loop {
            let mut building: HashMap<i32, (Vec<SealedBatch>, usize)> = HashMap::new();
            for step in 0..count {
                let index = (start + step) % count;
                let Some(front) = self.partitions[index].ready.front() else {
                    continue;
                };
                if let Some(not_before) = front.not_before.filter(|at| *at > now) {
                    drained.next_deadline = Some(
                        drained
                            .next_deadline
                            .map_or(not_before, |d| d.min(not_before)),
                    );
                    continue;
                }
                let Some(leader) = leaders.get(index).copied().flatten() else {
                    drained.waiting_for_leader = true;
                    continue;
                };
                let free = *slots.entry(leader).or_insert_with(|| free_slots(leader));
                if free == 0 {
                    continue;
                }
                let (batches, bytes) = building.entry(leader).or_default();
                let next_bytes = self.partitions[index]
                    .ready
                    .front()
                    .map_or(0, |batch| batch.bytes.len());
                if !batches.is_empty() && *bytes + next_bytes > max_request_bytes {
                    continue;
                }
                if let Some(batch) = self.partitions[index].ready.pop_front() {
                    *bytes += batch.bytes.len();
                    batches.push(batch);
                }
            }
            if building.is_empty() {
                break;
            }
            for (leader, (batches, _)) in building {
                if let Some(free) = slots.get_mut(&leader) {
                    *free = free.saturating_sub(1);
                }
                drained.requests.push((leader, batches));
            }
        }
        drained
    }

    /// A batch is done (acknowledged or failed for good): frees its bytes and keeps its
    /// buffers for reuse.
    pub fn complete(&mut self, mut batch: SealedBatch) {
        self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.bytes.len());
        self.records_pending = self
            .records_pending
            .saturating_sub(u64::from(batch.record_count));
        if self.config.track_record_times && self.spare_times.len() < 64 {
            batch.record_times_us.clear();
            self.spare_times
                .push(std::mem::take(&mut batch.record_times_us));
        }
    }

    /// A batch to send again: back into its partition's queue before every batch sealed
    /// after it (several failed batches of one partition keep their order whatever order
    /// they are requeued in).
    pub fn requeue(&mut self, mut batch: SealedBatch, not_before: Instant) {
        batch.attempts += 1;
        batch.not_before = Some(not_before);
        if let Some(queue) = self.partitions.get_mut(batch.handle.index()) {
            let position = queue
                .ready
                .iter()
                .position(|waiting| waiting.sequence > batch.sequence)
                .unwrap_or(queue.ready.len());
            queue.ready.insert(position, batch);
        }
    }

    /// Takes out the sealed batches waiting to be sent (or sent again) that were
    /// created at or before `created_by`: their delivery timeout has passed. A queue is
    /// in creation order (a requeued batch goes back before the later ones), so the
    /// expired batches are each queue's front.
    pub fn take_expired(&mut self, created_by: Instant) -> Vec<SealedBatch> {
        let mut expired = Vec::new();
        for queue in &mut self.partitions {
            while queue
                .ready
                .front()
                .is_some_and(|batch| batch.created <= created_by)
            {
                if let Some(batch) = queue.ready.pop_front() {
                    expired.push(batch);
                }
            }
        }
        expired
    }

    /// Drops every batch not yet sent (the producer is closing without flushing), and
    /// returns how many records that was.
    pub fn abandon(&mut self) -> u64 {
        let mut dropped = 0;
        for queue in &mut self.partitions {
            if let Some(open) = queue.open.take() {
                dropped += open.record_count as u64;
                self.buffered_bytes = self.buffered_bytes.saturating_sub(open.records.len());
            }
            for batch in queue.ready.drain(..) {
                dropped += u64::from(batch.record_count);
                self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.bytes.len());
            }
        }
        self.records_pending = self.records_pending.saturating_sub(dropped);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_records::batch::validate_producer_batch;
    use kafki_records::records::{batch_records, records};

    fn config(batch_bytes: usize, linger_ms: u64) -> AccumulatorConfig {
        AccumulatorConfig {
            batch_bytes,
            linger: Duration::from_millis(linger_ms),
            compression: Compression::None,
            track_record_times: true,
            buffer_bytes_max: 1 << 20,
        }
    }

    fn value(bytes: &[u8]) -> ProducerRecord<'_> {
        ProducerRecord {
            value: Some(bytes),
            ..ProducerRecord::default()
        }
    }

    fn all_ready(accumulator: &mut Accumulator, now: Instant) -> Vec<SealedBatch> {
        let leaders = vec![Some(1); accumulator.partition_count()];
        accumulator
            .drain(now, &leaders, |_| usize::MAX, usize::MAX)
            .requests
            .into_iter()
            .flat_map(|(_, batches)| batches)
            .collect()
    }

    #[test]
    fn full_batches_seal_and_decode_back() {
        let mut accumulator = Accumulator::new(config(1024, 1000));
        let partition = accumulator.register("t", 0);
        let start = Instant::now();
        let payload = [7u8; 100];
        let mut sealed_count = 0;
        for index in 0..30 {
            let now = start + Duration::from_micros(index * 10);
            match accumulator.append(partition, &value(&payload), now) {
                Appended::Done { sealed, .. } => sealed_count += usize::from(sealed),
                Appended::BufferFull => panic!("buffer is large"),
            }
        }
        assert!(sealed_count >= 2, "30 × 100 B in 1 KiB batches");
        let ready = all_ready(&mut accumulator, start);
        // One batch per partition per request; drain repeats passes for the rest.
        assert_eq!(ready.len(), sealed_count);
        let mut total = 0;
        for batch in &ready {
            assert!(batch.bytes.len() <= 1024, "{} bytes", batch.bytes.len());
            let header = validate_producer_batch(&batch.bytes).expect("valid batch");
            assert_eq!(header.records_count as u32, batch.record_count);
            assert_eq!(batch.record_times_us.len(), batch.record_count as usize);
            let section = batch_records(&batch.bytes, 1 << 20).expect("records");
            for (offset, record) in records(&section, header.records_count).enumerate() {
                let record = record.expect("decodes");
                assert_eq!(record.offset_delta as usize, offset);
                assert_eq!(record.value, Some(&payload[..]));
            }
            total += batch.record_count;
        }
        // The last batch is still open: linger has not passed.
        assert_eq!(accumulator.records_pending(), 30);
        assert!(total < 30);
        let rest = all_ready(&mut accumulator, start + Duration::from_secs(2));
        assert_eq!(rest.len(), 1);
        assert_eq!(total + rest[0].record_count, 30);
    }

    #[test]
    fn linger_controls_when_an_open_batch_leaves() {
        let mut accumulator = Accumulator::new(config(16384, 5));
        let partition = accumulator.register("t", 0);
        let start = Instant::now();
        assert_eq!(
            accumulator.append(partition, &value(b"x"), start),
            Appended::Done {
                sealed: false,
                opened: true
            }
        );
        let early = accumulator.drain(start + Duration::from_millis(4), &[Some(1)], |_| 5, 1 << 20);
        assert!(early.requests.is_empty());
        assert_eq!(early.next_deadline, Some(start + Duration::from_millis(5)));
        let late = accumulator.drain(start + Duration::from_millis(5), &[Some(1)], |_| 5, 1 << 20);
        assert_eq!(late.requests.len(), 1);
        assert_eq!(late.next_deadline, None);
    }

    #[test]
    fn flush_seals_regardless_of_linger() {
        let mut accumulator = Accumulator::new(config(16384, 60_000));
        let partition = accumulator.register("t", 0);
        let now = Instant::now();
        accumulator.append(partition, &value(b"x"), now);
        accumulator.begin_flush();
        assert_eq!(all_ready(&mut accumulator, now).len(), 1);
        accumulator.end_flush();
    }

    #[test]
    fn requests_respect_slots_sizes_and_leaders() {
        let mut accumulator = Accumulator::new(config(200, 0));
        let partitions: Vec<PartitionHandle> =
            (0..4).map(|p| accumulator.register("t", p)).collect();
        let now = Instant::now();
        for _ in 0..3 {
            for partition in &partitions {
                accumulator.append(*partition, &value(&[1u8; 150]), now);
            }
        }
        // Partitions 0,1 on broker 1 (one slot), 2 on broker 2 (two slots), 3 leaderless.
        let leaders = [Some(1), Some(1), Some(2), None];
        let drained = accumulator.drain(now, &leaders, |broker| broker as usize, 1 << 20);
        assert!(drained.waiting_for_leader);
        let mut per_broker: HashMap<i32, Vec<usize>> = HashMap::new();
        for (broker, batches) in &drained.requests {
            let mut seen = std::collections::HashSet::new();
            for batch in batches {
                assert!(
                    seen.insert(batch.handle),
                    "one batch per partition per request"
                );
            }
            per_broker.entry(*broker).or_default().push(batches.len());
        }
        assert_eq!(per_broker[&1], vec![2], "one request, both partitions");
        assert_eq!(per_broker[&2], vec![1, 1], "two requests for two slots");
        // A request never exceeds max_request_bytes unless it holds a single batch.
        let mut accumulator = Accumulator::new(config(200, 0));
        let partitions: Vec<PartitionHandle> =
            (0..3).map(|p| accumulator.register("t", p)).collect();
        for partition in &partitions {
            accumulator.append(*partition, &value(&[1u8; 150]), now);
        }
        let drained = accumulator.drain(now, &[Some(1); 3], |_| 10, 250);
        assert_eq!(
            drained.requests.len(),
            3,
            "each batch alone fills a request"
        );
    }

    #[test]
    fn buffer_limit_refuses_and_completion_frees() {
        let mut small = config(1024, 0);
        small.buffer_bytes_max = 2048;
        let mut accumulator = Accumulator::new(small);
        let partition = accumulator.register("t", 0);
        let now = Instant::now();
        let mut appended = 0;
        while accumulator.append(partition, &value(&[0u8; 100]), now) != Appended::BufferFull {
            appended += 1;
            assert!(appended < 100);
        }
        assert!(accumulator.buffered_bytes() >= 2048);
        for batch in all_ready(&mut accumulator, now) {
            accumulator.complete(batch);
        }
        assert_eq!(accumulator.buffered_bytes(), 0);
        assert_eq!(accumulator.records_pending(), 0);
        assert!(matches!(
            accumulator.append(partition, &value(&[0u8; 100]), now),
            Appended::Done { .. }
        ));
    }

    #[test]
    fn expired_batches_are_taken_out_and_later_ones_stay() {
        let mut accumulator = Accumulator::new(config(16384, 0));
        let partition = accumulator.register("t", 0);
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        // No leader known: both batches are sealed and wait in the queue.
        accumulator.append(partition, &value(b"old"), start);
        assert!(
            accumulator
                .drain(start, &[None], |_| 1, 1 << 20)
                .waiting_for_leader
        );
        accumulator.append(partition, &value(b"new"), later);
        assert!(
            accumulator
                .drain(later, &[None], |_| 1, 1 << 20)
                .waiting_for_leader
        );
        let expired = accumulator.take_expired(start + Duration::from_secs(5));
        assert_eq!(expired.len(), 1);
        let section = batch_records(&expired[0].bytes, 1024).expect("records");
        let record = records(&section, 1).next().expect("one").expect("decodes");
        assert_eq!(record.value, Some(&b"old"[..]));
        for batch in expired {
            accumulator.complete(batch);
        }
        assert_eq!(accumulator.records_pending(), 1);
        let left = all_ready(&mut accumulator, later);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].created, later);
    }

    #[test]
    fn requeued_batches_go_back_in_sealing_order() {
        let mut accumulator = Accumulator::new(config(16384, 0));
        let partition = accumulator.register("t", 0);
        let now = Instant::now();
        let mut in_flight = Vec::new();
        for text in [&b"first"[..], b"second"] {
            accumulator.append(partition, &value(text), now);
            in_flight.extend(all_ready(&mut accumulator, now));
        }
        accumulator.append(partition, &value(b"third"), now);
        // Both failed; the answers come back in either order.
        let second = in_flight.pop().expect("second");
        let first = in_flight.pop().expect("first");
        let retry_at = now + Duration::from_millis(100);
        accumulator.requeue(second, retry_at);
        accumulator.requeue(first, retry_at);
        // The backoff holds the partition, later batches included.
        let early = accumulator.drain(now, &[Some(1)], |_| 1, 1 << 20);
        assert!(early.requests.is_empty());
        assert_eq!(early.next_deadline, Some(retry_at));
        let mut sent = Vec::new();
        for _ in 0..3 {
            let drained = accumulator.drain(retry_at, &[Some(1)], |_| 1, 1 << 20);
            for (_, batches) in drained.requests {
                for batch in batches {
                    let section = batch_records(&batch.bytes, 1024).expect("records");
                    let record = records(&section, 1).next().expect("one").expect("decodes");
                    sent.push((record.value.map(<[u8]>::to_vec), batch.attempts));
                }
            }
        }
        assert_eq!(
            sent,
            vec![
                (Some(b"first".to_vec()), 1),
                (Some(b"second".to_vec()), 1),
                (Some(b"third".to_vec()), 0)
            ]
        );
    }

    #[test]
    fn compressed_batches_are_smaller_and_valid() {
        for codec in Compression::ALL {
            let mut settings = config(64 * 1024, 0);
            settings.compression = codec;
            let mut accumulator = Accumulator::new(settings);
            let partition = accumulator.register("t", 0);
            let now = Instant::now();
            for _ in 0..200 {
                accumulator.append(partition, &value(&[b'a'; 100]), now);
            }
            let batches = all_ready(&mut accumulator, now);
            assert_eq!(batches.len(), 1);
            let header = validate_producer_batch(&batches[0].bytes).expect("valid");
            assert_eq!(Compression::from_attributes(header.attributes), Ok(codec));
            if codec != Compression::None {
                assert!(batches[0].bytes.len() < 200 * 100 / 4, "{codec}");
            }
            let section = batch_records(&batches[0].bytes, 1 << 20).expect("decompresses");
            assert_eq!(records(&section, header.records_count).count(), 200);
        }
    }

    #[test]
    fn a_record_larger_than_the_batch_gets_its_own_batch() {
        let mut accumulator = Accumulator::new(config(100, 1000));
        let partition = accumulator.register("t", 0);
        let now = Instant::now();
        let outcome = accumulator.append(partition, &value(&[0u8; 500]), now);
        assert_eq!(
            outcome,
            Appended::Done {
                sealed: true,
                opened: true
            }
        );
        let batches = all_ready(&mut accumulator, now);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].record_count, 1);
    }
}
