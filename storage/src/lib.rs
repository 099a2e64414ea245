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
//! broker's internal topics). The record-batch format itself is the pure
//! `kafki-records` crate, re-exported here; nothing else in the workspace is
//! a dependency.

pub mod checkpoint;
pub mod cleaner;
pub mod cleaner_txn;
pub mod config;
pub mod dma;
pub mod error;
pub mod index;
pub mod log;
pub mod segment;
pub mod space;

// The record-batch format lives in `kafki-records` (pure, shared with the
// client); re-exported so the engine's users keep one path.
pub use kafki_records::{batch, compression, records};

pub use cleaner::{CleanReport, CleanerLimits};
pub use cleaner_txn::{AbortedRange, CleanerInput, TxnFacts};
pub use config::{CompactionConfig, LogConfig, SyncPolicy, TimestampType};
pub use error::{BatchError, LogError, LogResult};
pub use log::{
    finish_stop, AppendInfo, DamagedBatch, LogOffsets, LogStats, PartitionLog, PendingMarker,
    ProgressWatcher, ReadChunk, ReadResult, RepairRefusal, TimestampHit, WriteState, PAUSED_RETRY,
};
