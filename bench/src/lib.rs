//! Kafki's benchmarks. `storage` drives the partition log directly (no
//! network) to measure the appender against the raw device; the Kafka-wire
//! load generator (produce, consume, end-to-end) comes with the broker.

pub mod storage;
