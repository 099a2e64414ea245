//! Kafki's broker runtime: one pinned glommio executor per core (a *shard*),
//! each accepting connections and owning the partitions the pure function
//! in [`placement`] (or an explicit assignment, [`reassign`]) gives it;
//! Kafka API handlers; cluster metadata.

pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod descriptors;
pub mod disk;
pub mod errors;
pub mod fetch_session;
pub mod group;
pub mod handlers;
pub mod internal_topics;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod partition_dirs;
pub mod placement;
pub mod producer;
pub mod reassign;
pub mod records;
pub mod replication;
pub mod routing;
pub mod schema_reader;
pub mod server;
pub mod settings;
pub mod shard;
#[cfg(test)]
mod simulation_support;
pub mod txn;
pub mod zerocopy;
