//! What crosses a node boundary for partition replication, as plain data:
//! a follower's fetch and the leader's answer (the inter-broker protocol
//! will carry these plus the record bytes), the partition's committed state
//! as the metadata quorum holds it, and an ISR change proposal (Kafka's
//! AlterPartition). No behaviour lives here.

use serde::{Deserialize, Serialize};

use super::log::{LeaderEpoch, NodeId, Offset, PartitionEpoch, RecordRange};

/// A follower's fetch: "I am at `fetch_offset`, my last record is from
/// `last_fetched_epoch`, everything below `durable_offset` is fsync'd".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Distinct per fetch of one follower process: the follower only acts
    /// on the answer to the fetch it is waiting for.
    pub fetch_id: u64,
    pub replica: NodeId,
    /// The leader epoch the follower follows.
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end offset.
    pub fetch_offset: Offset,
    /// The epoch of the record at `fetch_offset - 1` (`NO_EPOCH` if none).
    pub last_fetched_epoch: LeaderEpoch,
    /// The end of the follower's fsync'd prefix (`<= fetch_offset`).
    pub durable_offset: Offset,
}

/// The leader's answer to a [`FetchRequest`]. It echoes the request's
/// position so the follower can tell whether the answer still fits its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    pub fetch_id: u64,
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    pub fetch_offset: Offset,
    pub last_fetched_epoch: LeaderEpoch,
    pub high_watermark: Offset,
    pub body: FetchBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchBody {
    /// The follower's log matches the leader's up to `fetch_offset`; these
    /// are the leader's next records from there (possibly none: a parked
    /// fetch that waited out its time).
    Records(Vec<RecordRange>),
    /// The follower's log does not match (KIP-320): on the leader, the
    /// largest epoch `<=` the follower's last fetched epoch is `epoch` and
    /// it ends at `end_offset`. The follower truncates to
    /// `min(its own end of epoch, end_offset)` and fetches again.
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
    /// The follower's position lies below the leader's log start
    /// (retention or DeleteRecords removed those records; Kafka's
    /// OFFSET_OUT_OF_RANGE to a follower). Not decided by the machine,
    /// which does not model the log start: the leader's driver answers this
    /// when its log cannot be read at the fetch offset. A follower whose
    /// log ends below `log_start` drops its whole log and starts again,
    /// empty, at `log_start` (Kafka's `truncateFullyAndStartAt`).
    OutOfRange {
        log_start: Offset,
    },
    Refused(FetchRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRefusal {
    /// The receiver does not lead the partition.
    NotLeader,
    /// The follower's epoch is older than the leader's (the follower's
    /// metadata is stale).
    FencedLeaderEpoch,
    /// The follower's epoch is newer than the leader's (this leader's
    /// metadata is stale, or it was deposed).
    UnknownLeaderEpoch,
    /// The fetching node is not a replica of the partition.
    NotAReplica,
    /// Negative offsets.
    Malformed,
}

/// A partition's state as committed through the metadata quorum (Kafka's
/// `PartitionRecord` / `PartitionChangeRecord` folded). Stored in the
/// metadata image and log, hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The assigned replicas; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The in-sync replicas (the leader among them when there is one).
    pub isr: Vec<NodeId>,
    /// `None`: offline, no live in-sync replica to lead.
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
}

impl PartitionRecord {
    /// A consistent record: replicas distinct and non-empty, the ISR a
    /// non-empty subset of them, the leader in the ISR.
    pub fn is_well_formed(&self) -> bool {
        let distinct = |nodes: &[NodeId]| {
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| !nodes[..i].contains(n))
        };
        !self.replicas.is_empty()
            && distinct(&self.replicas)
            && !self.isr.is_empty()
            && distinct(&self.isr)
            && self.isr.iter().all(|n| self.replicas.contains(n))
            && self.leader.is_none_or(|leader| self.isr.contains(&leader))
            && self.leader_epoch >= 0
            && self.partition_epoch >= 0
    }
}

/// A leader's request to change the ISR (Kafka's AlterPartition): applies
/// only if the partition is still at `leader_epoch` and `partition_epoch`.
/// Carried by the metadata log ([`crate::metadata::MetadataRecord::AlterPartition`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrProposal {
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the proposal was computed from.
    pub partition_epoch: PartitionEpoch,
    pub isr: Vec<NodeId>,
}
