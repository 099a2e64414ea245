//! How a partition's high watermark advances: the seam where replication
//! plugs in. Today one implementation, the single node's *local commit*:
//! the high watermark is the offset up to which the local log reached the
//! topic's commit stage. The cluster's replicated partition will be a
//! second variant (the high watermark follows the in-sync replicas).

use kafki_storage::{LogOffsets, LogResult, PartitionLog, SyncPolicy};

/// The stage of the local log that commits a record (what `acks=all`
/// waits for and what consumers see up to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStage {
    /// The batch was written (`O_DIRECT` write completed): the topic has a
    /// relaxed flush policy (`flush.messages` > 1 or `flush.ms`).
    Written,
    /// The batch is on stable storage (`fdatasync`, group-committed).
    Durable,
}

impl CommitStage {
    /// The stage a log with `policy` commits at.
    pub fn for_policy(policy: SyncPolicy) -> Self {
        if policy == SyncPolicy::EveryAppend {
            Self::Durable
        } else {
            Self::Written
        }
    }
}

/// How a partition commits records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// One replica, this node: committed = reached `stage` locally.
    Local { stage: CommitStage },
}

impl Replication {
    /// The high watermark given the local log's offsets.
    pub fn high_watermark(&self, offsets: &LogOffsets) -> u64 {
        match self {
            Self::Local {
                stage: CommitStage::Durable,
            } => offsets.durable_offset,
            Self::Local {
                stage: CommitStage::Written,
            } => offsets.written_offset,
        }
    }

    /// Waits until every offset below `end_offset` is committed.
    pub async fn wait_committed(&self, log: &PartitionLog, end_offset: u64) -> LogResult<()> {
        match self {
            Self::Local {
                stage: CommitStage::Durable,
            } => log.wait_durable(end_offset).await,
            Self::Local {
                stage: CommitStage::Written,
            } => log.wait_written(end_offset).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_watermark_follows_the_commit_stage() {
        let offsets = LogOffsets {
            log_start_offset: 0,
            next_offset: 10,
            written_offset: 7,
            durable_offset: 4,
            size_bytes: 0,
        };
        let durable = Replication::Local {
            stage: CommitStage::for_policy(SyncPolicy::EveryAppend),
        };
        let written = Replication::Local {
            stage: CommitStage::for_policy(SyncPolicy::Interval {
                messages: 2,
                interval: std::time::Duration::from_secs(1),
            }),
        };
        assert_eq!(durable.high_watermark(&offsets), 4);
        assert_eq!(written.high_watermark(&offsets), 7);
    }
}
