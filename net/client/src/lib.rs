//! `kafki-client`: an async Kafka client on tokio, for Kafki's bench, operator tools and
//! (later) replication. It speaks to any Kafka-compatible broker (Kafki, Apache Kafka,
//! Tansu) and keeps the wire codec in `kafki-net` (pure) and the record-batch codec in
//! `kafki-storage`; this crate owns only the I/O and the client state.
//!
//! Layers, bottom up:
//! - [`connection`]: one TCP connection per broker; ApiVersions negotiation at connect;
//!   pipelined requests (bounded in flight) matched to responses by correlation id;
//!   timeouts; the generic `send(request) -> response` path.
//! - [`client`]: bootstrap, [`metadata`] (brokers, leaders), one connection per broker,
//!   CreateTopics and ListOffsets on the same generic path; [`admin`]: DeleteTopics,
//!   CreatePartitions, DescribeConfigs, IncrementalAlterConfigs (AlterConfigs where a
//!   broker lacks it).
//! - [`group`]: FindCoordinator, OffsetFetch, OffsetCommit, ListGroups, DescribeGroups;
//!   [`membership`]: a classic-protocol group member (JoinGroup, SyncGroup with the pure
//!   [`assignor`]'s `range`/`roundrobin` as leader, heartbeats on a timer, LeaveGroup).
//! - [`producer`] over the pure [`accumulator`]: per-partition batches with `batch.size`
//!   and `linger.ms` semantics, compression, acks 0/1/all, per-batch delivery reports.
//! - [`consumer`] over the pure [`fetch`] reader: Fetch with long polls and byte budgets,
//!   whole batches (compressed ones too), partial trailing batches handled.
//!
//! Runs on a current-thread runtime as well as a multi-thread one (everything shared is
//! `Send + Sync`; no lock is held across an `.await`).

pub mod accumulator;
pub mod admin;
pub mod assignor;
pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod fetch;
pub mod group;
pub mod membership;
pub mod metadata;
pub mod partitioner;
pub mod producer;
pub mod testing;
pub mod versions;

pub use accumulator::{PartitionHandle, ProducerRecord};
pub use admin::{
    AlterMethod, ConfigChange, ConfigEntry, ConfigResource, ConfigSource, ResourceKind,
};
pub use assignor::{Assignor, MemberAssignment, Subscription};
pub use client::{Client, ClientConfig, NewTopic, OffsetSpec};
pub use connection::{Connection, ConnectionConfig};
pub use consumer::{Consumer, FetchConfig, FetchRound, FetchedPartition, StartOffset};
pub use error::{ClientError, ClientResult, KafkaCode};
pub use fetch::{FetchedBatch, RecordBatches};
pub use group::{
    CommitIdentity, CommittedOffset, GroupDescription, GroupListing, GroupMemberDescription,
    TopicPartition,
};
pub use kafki_net;
pub use kafki_records::compression::Compression;
pub use membership::{Generation, GroupConfig, GroupMember};
pub use metadata::{BrokerAddress, ClusterMetadata, PartitionMetadata, TopicMetadata};
pub use partitioner::{murmur2, partition_for_key};
pub use producer::{Acks, Delivery, DeliveryListener, Producer, ProducerConfig, ProducerStats};
pub use versions::ApiVersionTable;
