//! Kafka transactions: a pure core (no I/O, no clock, no async), the
//! runtime that wires its coordinator to the network and the log, and the
//! partition leaders' side of writing markers ([`markers`]).
//!
//! Rooms:
//! - [`state`]: what the coordinator keeps per `transactional.id`
//!   ([`TxnMetadata`]) and the states a transaction moves through
//!   ([`TxnState`], Kafka's ids and legal transitions).
//! - [`coordinator`]: the transaction coordinator as a state machine
//!   ([`TxnCoordinator`]: [`Input`]s in, [`Effect`]s out) with Kafka's
//!   rules and error codes; its docs list them and the driver's contract.
//! - [`records`]: the `__transaction_state` key and value (v0 and the
//!   flexible v1) in Kafka's bytes, and tombstones.
//! - [`markers`]: the partition-leader side of a decision: writing
//!   COMMIT/ABORT markers where this node leads, forwarding the rest.
//! - [`partition_index`]: what a partition leader needs for
//!   `read_committed`: open transactions, the last stable offset, the
//!   aborted-transaction entries and the Fetch query over them, marker
//!   fencing by producer and coordinator epoch; Kafka's control record.
//!   Not wired yet: the partition side (transactional produce, markers,
//!   `read_committed`) is built separately.
//! - [`runtime`]: the coordinator's driver: per-shard [`runtime::TxnShard`],
//!   `__transaction_state` created on first use, loaded on leadership and
//!   unloaded when it goes, appends with `acks=all`, markers retried, the
//!   timer. The handlers are `crate::handlers::txn`.
//! - [`verification`]: KIP-890 part 1, the partition leader asking the
//!   coordinator (here, or over the node links: [`verify_frames`]) before
//!   a transaction's first batch lands in a partition.
//!
//! # The model
//!
//! A transactional producer is a `transactional.id` mapped to one
//! `__transaction_state` partition; the node leading that partition is
//! its coordinator, and the partition's leader epoch is the coordinator
//! epoch. Every change of an id's state is one record in that partition
//! and becomes visible only once the record is durable (so a coordinator
//! that crashes and a new one that loads the partition agree on
//! everything any client was told). A transaction goes Empty → Ongoing
//! (AddPartitions: the coordinator learns every partition before the
//! producer writes to it) → PrepareCommit/PrepareAbort (EndTxn, the
//! decision: durable before it is answered) → markers written to every
//! partition → CompleteCommit/CompleteAbort. A Prepare* found at load has
//! its markers sent again; an Ongoing one is aborted when it outlives its
//! timeout, with the producer epoch bumped so the producer that hung is
//! fenced by every partition that takes the marker (and by the
//! coordinator when its partition leader verifies a first write, KIP-890).
//!
//! A partition leader keeps, per partition, the first offset of every
//! open transaction: `read_committed` readers stop at the lowest (the last
//! stable offset), and each aborted transaction leaves an entry that Fetch
//! returns so that clients drop its records.
//!
//! The randomized test (`simulation`, tests only) runs the coordinator
//! with producers, zombies, partitions, crashes, failovers and timeouts,
//! and checks that a `read_committed` reader sees each committed
//! transaction's records all together and no aborted record ever.

pub mod coordinator;
pub mod marker_frames;
pub mod markers;
pub mod partition_index;
pub mod records;
pub mod runtime;
#[cfg(test)]
mod simulation;
pub mod state;
#[cfg(test)]
mod tests;
pub mod verification;
pub mod verify_frames;

pub use coordinator::{
    Effect, Input, InputError, LostWrites, MarkerRequest, ProducerIdAndEpoch, RequestId, Response,
    StoredRecord, TxnConfig, TxnCoordinator, TxnError,
};
pub use partition_index::{AbortedTxn, ControlType, EndTxnMarker, PartitionTxnIndex};
pub use state::{TopicPartition, TxnMetadata, TxnState};
