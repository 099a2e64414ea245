//! The entries of the cluster's metadata log: a command is a list of
//! records that apply together, or not at all when the image moved on
//! since the proposer checked them ([`MetadataCommand::expected_offset`]),
//! or when one of its partition changes no longer fits the partition's
//! epochs (a compare-and-set per partition, see [`super::partitions`]).
//! Applying one is pure and deterministic, so every node that applies the
//! same log reaches the same image and the same verdict for each command.

use serde::{Deserialize, Serialize};

use super::{ClusterMetadata, MetadataRecord, PartitionChangeRefusal};

/// Who proposed a command, so the proposer can find its verdict when the
/// command comes back committed (possibly through another node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: i32,
    /// Distinct per process start of `node` (time-based start, then +1).
    pub sequence: u64,
}

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataCommand {
    pub proposal: ProposalId,
    /// The image's `log_offset` the records were validated against: the
    /// command applies only if no other command applied since (a
    /// compare-and-set, so two nodes creating one topic cannot both
    /// succeed). `None` for records valid in any image (a heartbeat's
    /// fence, a registration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_offset: Option<u64>,
    pub records: Vec<MetadataRecord>,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    /// The image changed since the proposer validated: nothing applied; the
    /// proposer validates again against the new image.
    Conflict,
    /// A partition change or ISR proposal in the command was stale (the
    /// partition's epochs moved on) or broke a rule: nothing applied. Only
    /// these records are checked at apply time, so a leader's ISR change
    /// need not race unrelated changes of the image.
    Refused(PartitionChangeRefusal),
}

impl MetadataCommand {
    pub fn encode(&self) -> Vec<u8> {
        // Infallible for these types (no maps with non-string keys at the
        // top level; serde_json only fails on those and on I/O).
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl ClusterMetadata {
    /// The image after the command at metadata-log `offset`, and its
    /// verdict. The log offset advances either way.
    pub fn apply_command(&self, offset: u64, command: &MetadataCommand) -> (Self, Verdict) {
        let mut next = self.clone();
        next.log_offset = offset;
        if matches!(command.expected_offset, Some(expected) if expected != self.log_offset) {
            next.version += 1;
            return (next, Verdict::Conflict);
        }
        match next.apply_checked(&command.records) {
            Ok(applied) => (applied, Verdict::Applied),
            Err(refusal) => {
                next.version += 1;
                (next, Verdict::Refused(refusal))
            }
        }
    }

    /// The image after `records`, or the first partition change among them
    /// that does not fit the image as the records before it left it.
    fn apply_checked(&self, records: &[MetadataRecord]) -> Result<Self, PartitionChangeRefusal> {
        let mut next = self.clone();
        for record in records {
            match record {
                MetadataRecord::PartitionChange {
                    topic,
                    partition,
                    state,
                } => next.check_partition_change(topic, *partition, state)?,
                MetadataRecord::AlterPartition {
                    topic,
                    partition,
                    proposal,
                } => {
                    next.check_alter_partition(topic, *partition, proposal)?;
                }
                _ => {}
            }
            next.apply_in_place(record);
        }
        Ok(next)
    }

    /// The image after an entry that carries no command (a new Raft
    /// leader's empty entry): only the offset moves.
    pub fn skip_entry(&self, offset: u64) -> Self {
        let mut next = self.clone();
        next.log_offset = offset;
        next
    }
}
