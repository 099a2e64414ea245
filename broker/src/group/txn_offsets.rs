//! Transactional offset commits (TxnOffsetCommit, Kafka's
//! `OffsetMetadataManager` transactional part): offsets a transactional
//! producer commits for a group are written to `__consumer_offsets` in a
//! transactional batch and held *pending* per (group, producer id),
//! invisible to OffsetFetch, until that producer's marker lands on the
//! group's offsets partition: COMMIT makes them the committed offsets,
//! ABORT drops them. While a partition has pending offsets, an OffsetFetch
//! with `require_stable` answers it UNSTABLE_OFFSET_COMMIT.
//!
//! Pure, like the rest of the coordinator: the runtime writes the records
//! ([`GroupCoordinator::take_txn_records`]), makes what it stored pending
//! ([`GroupCoordinator::apply_txn_commits`]), and reports markers
//! ([`GroupCoordinator::complete_txn_offsets`]); a replay goes through
//! [`GroupCoordinator::load_txn_offsets`] and the same completion.

use std::collections::BTreeMap;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafki_net::kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::records::{self, OffsetValue, RecordKey, RecordValue};
use super::state::{CommittedOffset, Group, GroupState};
use super::{wire, GroupCoordinator, OffsetsRecord};

/// A transactional producer's id and epoch, stamped on its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// Records of one TxnOffsetCommit, to be written as one transactional
/// batch of `producer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffsetsRecords {
    pub group: String,
    pub producer: TxnProducer,
    pub records: Vec<OffsetsRecord>,
}

/// An accepted transactional offset whose record is not stored yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTxnCommit {
    pub group: String,
    pub producer_id: i64,
    pub topic: String,
    pub partition: i32,
    pub committed: CommittedOffset,
}

/// Pending offsets of one group: producer id → (topic, partition) → offset.
pub(super) type PendingTxnOffsets = BTreeMap<i64, BTreeMap<(String, i32), CommittedOffset>>;

impl GroupCoordinator {
    /// TxnOffsetCommit (v0–v4): the group and member checked as Kafka's
    /// `validateTransactionalOffsetCommit` does; accepted offsets become
    /// records of one transactional batch and pending commits.
    pub fn txn_commit_offsets(
        &mut self,
        now_ms: u64,
        request: &TxnOffsetCommitRequest,
    ) -> TxnOffsetCommitResponse {
        let group_id: &str = &request.group_id.0;
        let validation = self.validate_txn_commit(now_ms, request);
        let metadata_max = self.config.offset_metadata_max_bytes;
        let identifier_max = self.config.max_identifier_bytes;
        let offsets_max = self.config.max_offsets_per_group;
        let mut pending_count = self.pending_txn_count(group_id);
        let mut records_out = Vec::new();
        let mut pending_out = Vec::new();
        let mut topics = Vec::with_capacity(request.topics.len().min(1024));
        for topic in &request.topics {
            let topic_name: &str = &topic.name.0;
            let mut partitions = Vec::with_capacity(topic.partitions.len().min(1024));
            for partition in &topic.partitions {
                let metadata = partition.committed_metadata.as_deref().unwrap_or("");
                let code = if let Err(code) = validation {
                    Some(code)
                } else if metadata.encode_utf16().count() > metadata_max {
                    Some(ResponseError::OffsetMetadataTooLarge)
                } else if topic_name.is_empty()
                    || topic_name.len() > identifier_max
                    || metadata.len() > i16::MAX as usize
                {
                    Some(ResponseError::InvalidTopicException)
                } else if pending_count >= offsets_max {
                    Some(ResponseError::InvalidCommitOffsetSize)
                } else {
                    pending_count += 1;
                    let committed = CommittedOffset {
                        offset: partition.committed_offset,
                        leader_epoch: partition.committed_leader_epoch,
                        metadata: metadata.to_owned(),
                        commit_timestamp_ms: now_ms as i64,
                        stored_at: -1,
                    };
                    records_out.push(super::ops::offset_record(
                        group_id,
                        topic_name,
                        partition.partition_index,
                        &committed,
                    ));
                    pending_out.push(PendingTxnCommit {
                        group: group_id.to_owned(),
                        producer_id: request.producer_id.0,
                        topic: topic_name.to_owned(),
                        partition: partition.partition_index,
                        committed,
                    });
                    None
                };
                partitions.push(
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(wire(code)),
                );
            }
            topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
        if !records_out.is_empty() {
            self.effects.txn_records.push(TxnOffsetsRecords {
                group: group_id.to_owned(),
                producer: TxnProducer {
                    producer_id: request.producer_id.0,
                    producer_epoch: request.producer_epoch,
                },
                records: records_out,
            });
            self.effects.txn_commits.extend(pending_out);
        }
        TxnOffsetCommitResponse::default().with_topics(topics)
    }

    /// Kafka: an unknown group is created as a simple group when the
    /// request carries no generation; a request without member, instance
    /// and generation (an old producer, or no group management) is
    /// accepted as is; otherwise member and generation must match.
    fn validate_txn_commit(
        &mut self,
        now_ms: u64,
        request: &TxnOffsetCommitRequest,
    ) -> Result<(), ResponseError> {
        let group_id: &str = &request.group_id.0;
        if group_id.is_empty() || group_id.len() > self.config.max_identifier_bytes {
            return Err(ResponseError::InvalidGroupId);
        }
        if request.producer_id.0 < 0 || request.producer_epoch < 0 {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        let generation = request.generation_id;
        let member_id: &str = &request.member_id;
        let instance_id = request.group_instance_id.as_deref();
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                return Err(ResponseError::IllegalGeneration);
            }
            if !self.has_room_for_group() {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            self.groups
                .insert(group_id.to_owned(), Group::new(group_id.to_owned(), now_ms));
        }
        let group = self
            .groups
            .get(group_id)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        if group.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if generation < 0 && member_id.is_empty() && instance_id.is_none() {
            return Ok(());
        }
        super::ops::check_member(group, member_id, instance_id)?;
        if generation != group.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    fn pending_txn_count(&self, group: &str) -> usize {
        self.pending_txn
            .get(group)
            .map_or(0, |producers| producers.values().map(BTreeMap::len).sum())
    }

    /// Transactional offset records to write since the last call, each
    /// entry one transactional batch, in order.
    pub fn take_txn_records(&mut self) -> Vec<TxnOffsetsRecords> {
        std::mem::take(&mut self.effects.txn_records)
    }

    /// Transactional offsets accepted since the last call, whose records
    /// are among those of [`GroupCoordinator::take_txn_records`].
    pub fn take_pending_txn_commits(&mut self) -> Vec<PendingTxnCommit> {
        std::mem::take(&mut self.effects.txn_commits)
    }

    /// Holds stored transactional offsets pending until their marker.
    pub fn apply_txn_commits(&mut self, commits: Vec<PendingTxnCommit>) {
        for commit in commits {
            if !self.groups.contains_key(&commit.group) {
                continue; // deleted meanwhile
            }
            self.pending_txn
                .entry(commit.group)
                .or_default()
                .entry(commit.producer_id)
                .or_default()
                .insert((commit.topic, commit.partition), commit.committed);
        }
    }

    /// `producer_id`'s marker reached the offsets partition of the groups
    /// `in_partition` picks: COMMIT (`commit`) makes their pending offsets
    /// committed, ABORT drops them. How many offsets it settled.
    pub fn complete_txn_offsets(
        &mut self,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) -> usize {
        let mut settled = 0;
        for (group_id, producers) in self.pending_txn.iter_mut() {
            if !in_partition(group_id) {
                continue;
            }
            let Some(offsets) = producers.remove(&producer_id) else {
                continue;
            };
            settled += offsets.len();
            if !commit {
                continue;
            }
            // A replay may have dropped the group as empty meanwhile.
            let group = self
                .groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(group_id.clone(), 0));
            for ((topic, partition), committed) in offsets {
                let partitions = group.offsets.entry(topic).or_default();
                // A plain commit stored after this transaction's offsets
                // stays (Kafka's rule).
                if partitions
                    .get(&partition)
                    .is_none_or(|current| current.stored_at < committed.stored_at)
                {
                    partitions.insert(partition, committed);
                }
            }
        }
        self.pending_txn
            .retain(|_, producers| !producers.is_empty());
        settled
    }

    /// Whether `group` has transactional offsets pending for the partition
    /// (OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT).
    pub fn has_pending_txn_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.get(group).is_some_and(|producers| {
            producers
                .values()
                .any(|offsets| offsets.contains_key(&(topic.to_owned(), partition)))
        })
    }

    /// Replay of one transactional batch of `producer_id`, stored at
    /// offset `stored_at`: its offsets are pending until a marker of that
    /// producer follows in the log.
    pub fn load_txn_offsets<'a>(
        &mut self,
        producer_id: i64,
        stored_at: i64,
        records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> usize {
        let mut malformed = 0;
        let mut pending = Vec::new();
        for (key, value) in records {
            match records::decode(key, value) {
                Ok((
                    RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    },
                    Some(RecordValue::Offset(OffsetValue {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp_ms,
                    })),
                )) => {
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(group.clone(), 0));
                    pending.push(PendingTxnCommit {
                        group,
                        producer_id,
                        topic,
                        partition,
                        committed: CommittedOffset {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp_ms,
                            stored_at,
                        },
                    });
                }
                Ok(_) => {}
                Err(_) => malformed += 1,
            }
        }
        self.apply_txn_commits(pending);
        malformed
    }

    /// Drops the pending offsets of every group `unload` picks.
    pub(super) fn unload_pending_txn(&mut self, unload: impl Fn(&str) -> bool) {
        self.pending_txn.retain(|group, _| !unload(group));
    }
}

#[cfg(test)]
mod tests {
    use kafki_net::kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafki_net::kafka_protocol::messages::{
        GroupId, OffsetFetchRequest, ProducerId, TopicName, TransactionalId,
    };
    use kafki_net::kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::group::GroupConfig;

    fn text(value: &str) -> StrBytes {
        StrBytes::from_string(value.to_string())
    }

    fn request(group: &str, producer_id: i64, offset: i64) -> TxnOffsetCommitRequest {
        TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(text("app")))
            .with_group_id(GroupId(text(group)))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0)
            .with_generation_id(-1)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(text("t")))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)])])
    }

    /// OffsetFetch v7 of t-0: (offset, error code).
    fn fetch(coordinator: &GroupCoordinator, group: &str, stable: bool) -> (i64, i16) {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_require_stable(stable)
            .with_topics(Some(vec![
                kafki_net::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(TopicName(text("t")))
                    .with_partition_indexes(vec![0]),
            ]));
        let response = coordinator.fetch_offsets(7, &request);
        let partition = &response.topics[0].partitions[0];
        (partition.committed_offset, partition.error_code)
    }

    /// Commits through the runtime's steps: records taken and "stored".
    fn commit(coordinator: &mut GroupCoordinator, group: &str, producer_id: i64, offset: i64) {
        commit_stored_at(coordinator, group, producer_id, offset, 0);
    }

    /// [`commit`], its batch stored at `stored_at` in `__consumer_offsets`.
    fn commit_stored_at(
        coordinator: &mut GroupCoordinator,
        group: &str,
        producer_id: i64,
        offset: i64,
        stored_at: i64,
    ) {
        let response = coordinator.txn_commit_offsets(1, &request(group, producer_id, offset));
        assert_eq!(response.topics[0].partitions[0].error_code, 0);
        let records = coordinator.take_txn_records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].producer.producer_id, producer_id);
        let mut pending = coordinator.take_pending_txn_commits();
        for commit in &mut pending {
            commit.committed.stored_at = stored_at;
        }
        coordinator.apply_txn_commits(pending);
    }

    fn committed(offset: i64, stored_at: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 1,
            stored_at,
        }
    }

    /// A plain OffsetCommit of t-0 stored at `stored_at`.
    fn plain_commit(coordinator: &mut GroupCoordinator, group: &str, offset: i64, stored_at: i64) {
        coordinator.apply_commits(vec![crate::group::PendingCommit {
            group: group.to_owned(),
            topic: "t".to_owned(),
            partition: 0,
            committed: committed(offset, stored_at),
        }]);
    }

    #[test]
    fn a_plain_commit_stored_after_the_transactional_one_wins_at_the_marker() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        commit_stored_at(&mut coordinator, "g", 7, 42, 10);
        plain_commit(&mut coordinator, "g", 50, 11);
        assert_eq!(coordinator.complete_txn_offsets(7, true, |_| true), 1);
        assert_eq!(fetch(&coordinator, "g", true), (50, 0));
        // One stored before the transactional offsets is replaced by them.
        plain_commit(&mut coordinator, "g", 60, 12);
        commit_stored_at(&mut coordinator, "g", 8, 70, 13);
        assert_eq!(fetch(&coordinator, "g", false), (60, 0));
        assert_eq!(coordinator.complete_txn_offsets(8, true, |_| true), 1);
        assert_eq!(fetch(&coordinator, "g", true), (70, 0));
    }

    #[test]
    fn a_replay_keeps_the_plain_commit_stored_after_the_transactional_one() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        let txn = super::super::ops::offset_record("g", "t", 0, &committed(42, -1));
        let plain = super::super::ops::offset_record("g", "t", 0, &committed(50, -1));
        coordinator.load_txn_offsets(7, 10, [(txn.key.as_ref(), txn.value.as_deref())]);
        coordinator.load(11, [(plain.key.as_ref(), plain.value.as_deref())]);
        coordinator.complete_txn_offsets(7, true, |_| true);
        assert_eq!(fetch(&coordinator, "g", true), (50, 0));
    }

    #[test]
    fn transactional_offsets_are_visible_only_after_the_commit_marker() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        commit(&mut coordinator, "g", 7, 42);
        assert_eq!(fetch(&coordinator, "g", false), (-1, 0));
        assert_eq!(
            fetch(&coordinator, "g", true),
            (-1, ResponseError::UnstableOffsetCommit.code())
        );
        // Another producer's marker, or another partition's, changes nothing.
        assert_eq!(coordinator.complete_txn_offsets(8, true, |_| true), 0);
        assert_eq!(coordinator.complete_txn_offsets(7, true, |_| false), 0);
        assert_eq!(coordinator.complete_txn_offsets(7, true, |_| true), 1);
        assert_eq!(fetch(&coordinator, "g", true), (42, 0));
    }

    #[test]
    fn an_abort_marker_drops_transactional_offsets() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        commit(&mut coordinator, "g", 7, 42);
        assert_eq!(coordinator.complete_txn_offsets(7, false, |_| true), 1);
        assert_eq!(fetch(&coordinator, "g", true), (-1, 0));
    }

    #[test]
    fn a_replayed_transactional_batch_waits_for_its_marker() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        let record = super::super::ops::offset_record("g", "t", 0, &committed(5, -1));
        let malformed =
            coordinator.load_txn_offsets(9, 40, [(record.key.as_ref(), record.value.as_deref())]);
        assert_eq!(malformed, 0);
        assert_eq!(fetch(&coordinator, "g", false), (-1, 0));
        coordinator.complete_txn_offsets(9, true, |_| true);
        assert_eq!(fetch(&coordinator, "g", false), (5, 0));
    }

    #[test]
    fn a_member_of_another_generation_is_refused() {
        let mut coordinator = GroupCoordinator::new(GroupConfig::default());
        let unknown_group = request("g", 7, 1).with_generation_id(3);
        let response = coordinator.txn_commit_offsets(1, &unknown_group);
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            ResponseError::IllegalGeneration.code()
        );
        let no_producer = request("g", -1, 1);
        let response = coordinator.txn_commit_offsets(1, &no_producer);
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            ResponseError::InvalidProducerIdMapping.code()
        );
        assert!(coordinator.take_txn_records().is_empty());
    }
}
