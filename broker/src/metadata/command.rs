//! The entries of the cluster's metadata log: a command is a list of
//! records that apply together, or not at all when the image moved on
//! since the proposer checked them ([`MetadataCommand::expected_offset`]).
//! Applying one is pure and deterministic, so every node that applies the
//! same log reaches the same image and the same verdict for each command.

use serde::{Deserialize, Serialize};

use super::{ClusterMetadata, MetadataRecord};

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
        let verdict = match command.expected_offset {
            Some(expected) if expected != self.log_offset => Verdict::Conflict,
            _ => Verdict::Applied,
        };
        let mut next = self.clone();
        next.log_offset = offset;
        if verdict == Verdict::Applied {
            next = next.apply_all(&command.records);
        } else {
            next.version += 1;
        }
        (next, verdict)
    }

    /// The image after an entry that carries no command (a new Raft
    /// leader's empty entry): only the offset moves.
    pub fn skip_entry(&self, offset: u64) -> Self {
        let mut next = self.clone();
        next.log_offset = offset;
        next
    }
}
