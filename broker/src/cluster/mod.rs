//! The cluster: how a node joins the others. The Raft metadata quorum
//! ([`quorum`], over raft-rs, its log in [`log_store`]) orders every
//! metadata change; node-to-node frames travel over [`transport`]; the
//! active controller (the Raft leader) tracks heartbeats and fences nodes
//! ([`liveness`], a pure state machine) and describes the quorum to Kafka
//! clients ([`describe`]). The applied image is
//! [`crate::metadata::ClusterMetadata`], the same on every node.

pub mod config;
pub mod describe;
pub mod liveness;
pub mod log_store;
pub mod member;
pub mod quorum;
pub mod raft_log;
#[cfg(test)]
mod simulation;
pub mod transport;
pub mod view;

pub use config::{ClusterConfig, Voter};
