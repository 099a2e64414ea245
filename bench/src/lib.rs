//! Kafki's benchmarks.
//!
//! - [`storage`]: drives the partition log directly (no network) to measure the appender
//!   against the raw device.
//! - The Kafka-wire load generator, for any Kafka-compatible broker, on `kafki-client`:
//!   [`produce`] (send → acknowledgement per record), [`consume`] (per fetch), [`e2e`]
//!   (fixed rate, intended send time → consumption, corrected for coordinated omission).
//!   They share [`load`] (options, runtime, recorder, sampler) and [`report`] (JSON,
//!   summary, [`hdr_text`] percentile files, [`plot`] SVG charts).

pub mod consume;
pub mod e2e;
pub mod hdr_text;
pub mod load;
pub mod plot;
pub mod produce;
pub mod report;
pub mod storage;
