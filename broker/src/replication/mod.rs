//! Partition replication, the pure core: how the replicas of one partition
//! keep their logs equal and decide what is committed. Kafka's ISR model
//! (leader, followers, in-sync replicas, `min.insync.replicas`, ISR changes
//! committed through the metadata quorum as Kafka's AlterPartition), made
//! stronger: a record is committed only when it is *fsync'd* on every
//! in-sync replica. No I/O, no clock, no async: a [`PartitionReplica`]
//! takes [`Input`]s and returns [`Effect`]s; the driver (a later step) owns
//! the log, the network and the timers.
//!
//! Rooms:
//! - [`log`]: the replica's picture of its own log (epoch history, log end,
//!   durable offset) and the offset/epoch types.
//! - [`messages`]: fetch request and answer, the committed partition
//!   record, an ISR proposal.
//! - [`machine`]: the state machine, its inputs, effects and role changes.
//! - `leader` / `follower`: each role's reactions (see their docs for the
//!   rules: high watermark, ISR shrink and expand, divergence).
//! - [`election`]: the controller's pure choices (leader election, fencing).
//! - [`repair`]: self-healing of a batch a read found damaged, with another
//!   replica's copy.
//! - [`wire`]: the node-to-node frames that carry fetches and answers for
//!   many partitions at once, record batches as stored (a pure codec).
//! - [`selector`]: which replica a consumer should read from (KIP-392,
//!   `replica.selector.class`), a pure choice the Fetch handler asks for.
//!
//! # The model
//!
//! Per partition the quorum holds the replicas (the first is the preferred
//! leader), the ISR, the leader, the leader epoch and the partition epoch
//! ([`PartitionRecord`]). Followers *pull*: each keeps one fetch in flight
//! to the leader carrying its log end, the epoch of its last record and its
//! durable offset. The leader checks the position against its epoch history
//! (KIP-320): a match counts the follower's offsets and returns the next
//! records (or parks the fetch until there are some); a mismatch answers
//! "your last epoch ends here at X" and the follower truncates the
//! divergent suffix (KIP-101, KIP-279) before fetching again. Nothing is
//! ever truncated by high watermark.
//!
//! The high watermark is the minimum durable offset over the maximal ISR
//! (committed ISR ∪ replicas a pending proposal adds; a removal counts only
//! once committed, KIP-841), the leader included. An `acks=all` produce
//! appended at `[a, b)` completes when the high watermark reaches `b`;
//! it is refused before appending (NOT_ENOUGH_REPLICAS) when the committed
//! ISR is smaller than `min.insync.replicas`, and completes with
//! NOT_ENOUGH_REPLICAS_AFTER_APPEND when the high watermark passes it while
//! the maximal ISR is that small (Kafka's check). `acks=1` completes when the
//! leader's append is ordered, outside this machine.
//!
//! DESIGN.md sketched "the `min.insync.replicas`-th highest durable offset";
//! this takes the minimum over the whole ISR instead, as Kafka does, so
//! that *every* ISR member holds every acknowledged record and any of them
//! is a safe leader (see [`election`]); `min.insync.replicas` bounds how
//! small the ISR may get while acknowledging, not how many must have a record.
//!
//! # Why pulling with a parked fetch costs what pushing costs
//!
//! Push (Raft, Redpanda): the leader appends and sends the records (½ round
//! trip), the follower writes and fsyncs, then acknowledges (½ round trip):
//! one round trip plus one fsync per commit. Pull with a parked fetch: the
//! follower's fetch is already waiting at the leader, so the leader answers
//! it with the new records the moment they are appended (½ round trip); the
//! follower writes, fsyncs and sends its next fetch carrying the new durable
//! offset (½ round trip), and that fetch *is* the acknowledgement: the
//! leader advances the high watermark on receipt and parks it again. Also
//! one round trip plus one fsync. Pull pays more only when no fetch is
//! parked at the moment of the append (the follower's next fetch is in
//! transit): at most ½ round trip more, and under load the next fetch
//! leaves as soon as the previous answer is written (before its fsync), so
//! one is nearly always parked. In exchange the leader keeps no per-follower
//! send window, and a follower paces itself and finds divergence the same
//! way whether it is new, restarted or lagging.
//!
//! # Leader changes
//!
//! Elections are the controller's ([`election::elect_leader`]): from the
//! ISR in preference order, skipping dead or fenced nodes; from outside the
//! ISR only when unclean election is allowed. A new leader starts its epoch
//! at its log end with the high watermark it had; the high watermark rises
//! again once every ISR follower has fetched in the new epoch, and is shown
//! to consumers only once it reaches the epoch start
//! ([`PartitionReplica::consumer_high_watermark`]), so consumers never see it
//! go backwards across a failover.
//!
//! # Consumers on followers (KIP-392)
//!
//! A follower learns the high watermark from the leader's answers and
//! serves consumer fetches (Fetch v11+) from its own log up to it
//! ([`driver::Replicated::follower_high_watermark`]); everything else a
//! client sends a follower (produce, offsets, older fetches) is refused with
//! NOT_LEADER_OR_FOLLOWER. The leader sends a consumer there by answering
//! with a preferred read replica ([`selector`]).

pub mod driver;
pub mod election;
mod follower;
mod leader;
pub mod links;
pub mod log;
pub mod machine;
pub mod messages;
pub mod repair;
pub mod selector;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
pub mod wire;

pub use log::{LeaderEpoch, LocalLog, NodeId, Offset, PartitionEpoch, RecordRange, NO_EPOCH};
pub use machine::{
    Acks, Effect, Input, InputError, PartitionReplica, ProduceOutcome, ProduceRefusal,
    ReplicationConfig,
};
pub use messages::{
    FetchBody, FetchRefusal, FetchRequest, FetchResponse, IsrProposal, PartitionRecord,
};
