//! Kafki's storage engine: the durable partition log.
//!
//! A partition is a directory of segments (`<base offset>.log` with sparse
//! `.index` and `.timeindex` files, Kafka's names and formats). Appends take
//! whole Kafka v2 record batches exactly as producers sent them, validate the
//! header and CRC32C, assign offsets, and write them with direct I/O
//! (`O_DIRECT` through glommio's io_uring) in 4 KiB-aligned blocks, with group
//! commit of `fdatasync`. Reads return whole batches from memory (the hot
//! tail) or as file regions for zero-copy sends. Recovery verifies every
//! batch after the last checkpoint and truncates a torn tail.
//!
//! The log itself knows the record-batch header and never decodes individual
//! records on the produce or fetch path; [`records`] and [`compression`]
//! decode them off that path (compaction, exact timestamp lookups, the
//! broker's internal topics, the client side). The crate depends on nothing
//! else in the workspace.

pub mod batch;
pub mod checkpoint;
pub mod cleaner;
pub mod compression;
pub mod config;
pub mod dma;
pub mod error;
pub mod index;
pub mod log;
pub mod records;
pub mod segment;
pub mod space;

pub use cleaner::{CleanReport, CleanerLimits};
pub use config::{CompactionConfig, LogConfig, SyncPolicy, TimestampType};
pub use error::{BatchError, LogError, LogResult};
pub use log::{
    AppendInfo, LogOffsets, LogStats, PartitionLog, ReadChunk, ReadResult, TimestampHit,
};
