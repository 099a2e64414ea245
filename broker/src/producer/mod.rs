//! The idempotent producer's room: producer ids ([`ids`]), each
//! partition's sequence state ([`state`]), its transactions
//! ([`transactions`]) with the KIP-890 guards of transactions not open
//! here yet ([`verification`]), its snapshot file beside the log
//! ([`snapshot`]), and the per-producer rows DescribeProducers reports
//! ([`active`]).
//! A partition holds its state; the controller shard holds the allocator;
//! handlers only translate requests.

pub mod active;
pub mod ids;
pub mod snapshot;
pub mod state;
pub mod transactions;
pub mod verification;

pub use active::ActiveProducer;
pub use ids::ProducerIdAllocator;
pub use snapshot::PartitionProducers;
pub use state::{ProducerLimits, ProducerStates, SequenceCheck};
