//! The outcome of a Kafka-wire benchmark: the JSON report (counts, throughput, latency
//! percentiles, timeline, the full configuration), the human-readable summary on stdout,
//! and the `--hdr` / `--plot` files.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::hdr_text::percentile_distribution;
use crate::load::CommonArgs;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    /// Samples behind the percentiles.
    pub count: u64,
}

impl LatencyUs {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
            mean: histogram.mean(),
            count: histogram.len(),
        }
    }
}

/// One second (or the last part of one) of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the sampler started, at the end of the window.
    pub t_s: f64,
    pub records: u64,
    pub records_per_s: f64,
    pub mib_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
}

impl TimelinePoint {
    pub fn new(
        t_s: f64,
        records: u64,
        bytes: u64,
        window_s: f64,
        latencies: &Histogram<u64>,
    ) -> Self {
        let window_s = window_s.max(1e-9);
        let latency = LatencyUs::of(latencies);
        Self {
            t_s,
            records,
            records_per_s: records as f64 / window_s,
            mib_per_s: bytes as f64 / (1024.0 * 1024.0) / window_s,
            latency_us_p50: latency.p50,
            latency_us_p99: latency.p99,
            latency_us_max: latency.max,
        }
    }
}

/// The JSON report of `kafki bench produce|consume|e2e`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `produce`, `consume` or `e2e`.
    pub benchmark: &'static str,
    /// Records measured (produce: acknowledged; consume: read; e2e: read after warm-up).
    pub records: u64,
    /// Key and value bytes of those records.
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mib_per_s: f64,
    /// What one latency sample is.
    pub latency_measures: &'static str,
    pub latency_us: LatencyUs,
    /// Records (or fetches) that failed.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Extra figures of the benchmark kind.
    pub details: serde_json::Value,
    /// Every option the run used.
    pub config: serde_json::Value,
    pub timeline: Vec<TimelinePoint>,
}

impl BenchReport {
    /// Throughput from counts and elapsed seconds.
    pub fn rates(records: u64, bytes: u64, seconds: f64) -> (f64, f64) {
        // Nothing measurable happened (no time passed): report no rate, not infinity.
        if !(seconds.is_finite() && seconds > 1e-9) {
            return (0.0, 0.0);
        }
        (
            records as f64 / seconds,
            bytes as f64 / (1024.0 * 1024.0) / seconds,
        )
    }

    /// The summary printed on stdout.
    pub fn summary(&self) -> String {
        let latency = &self.latency_us;
        let mut text = format!(
            "{}: {} records, {:.1} MiB in {:.2} s: {:.0} records/s, {:.2} MiB/s\n\
             latency ({}), µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (mean {:.0}, {} samples)\n",
            self.benchmark,
            self.records,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.seconds,
            self.records_per_s,
            self.mib_per_s,
            self.latency_measures,
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p999,
            latency.p9999,
            latency.max,
            latency.mean,
            latency.count,
        );
        if self.errors > 0 {
            text.push_str(&format!(
                "errors: {} (first: {})\n",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        text
    }
}

/// Prints the summary and writes the `--json`, `--hdr` and `--plot` outputs.
pub fn publish(
    report: &BenchReport,
    latencies: &Histogram<u64>,
    common: &CommonArgs,
) -> anyhow::Result<()> {
    print!("{}", report.summary());
    if let Some(path) = &common.json {
        let json = serde_json::to_string_pretty(report)?;
        write_output(path, &json)?;
    }
    if let Some(path) = &common.hdr {
        write_output(path, &percentile_distribution(latencies, 1000.0))?;
    }
    if let Some(path) = &common.plot {
        write_output(path, &crate::plot::svg(report, latencies))?;
    }
    Ok(())
}

fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_monotone() {
        let mut histogram = crate::load::new_histogram();
        for value in 1..=100_000 {
            histogram.saturating_record(value);
        }
        let latency = LatencyUs::of(&histogram);
        let ordered = [
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p999,
            latency.p9999,
            latency.max,
        ];
        assert!(
            ordered.windows(2).all(|pair| pair[0] <= pair[1]),
            "{ordered:?}"
        );
        assert_eq!(latency.count, 100_000);
        assert_eq!(
            LatencyUs::of(&crate::load::new_histogram()),
            LatencyUs::default()
        );
    }

    #[test]
    fn rates_never_divide_by_zero() {
        let (records_per_s, mib_per_s) = BenchReport::rates(10, 1 << 20, 0.0);
        assert!(records_per_s.is_finite() && mib_per_s.is_finite());
        assert_eq!(BenchReport::rates(10, 1 << 20, 2.0), (5.0, 0.5));
    }
}
