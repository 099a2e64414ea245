//! HdrHistogram's percentile-distribution text format (what Java's
//! `outputPercentileDistribution` and `HistogramLogProcessor` print, and what
//! HdrHistogram's plotter reads): a header line, one row per percentile step with the
//! columns `Value`, `Percentile`, `TotalCount`, `1/(1-Percentile)` (the last row, at
//! percentile 1, has no fourth column), then the `#[Mean = ...]`, `#[Max = ...]` and
//! `#[Buckets = ...]` footer. The `hdrhistogram` crate has the histogram but not this
//! printer, so it lives here, with a parser the tests use to read files back.
//!
//! Values are written in the histogram's unit divided by `unit_ratio` (the bench records
//! µs and writes milliseconds, ratio 1000, as the Java tools default to ms).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Java's default: 5 ticks per half distance to 100%.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Sub-buckets per bucket for a histogram of `sigfig` significant digits (as Java computes
/// `subBucketCount`).
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two()
}

/// The percentile distribution of `histogram` in HdrHistogram's text format.
pub fn percentile_distribution(histogram: &Histogram<u64>, unit_ratio: f64) -> String {
    let decimals = usize::from(histogram.sigfig());
    let mut text = String::new();
    let _ = write!(
        text,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !histogram.is_empty() {
        let mut total_count: u64 = 0;
        for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total_count += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64 / unit_ratio;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    text,
                    "{value:>12.decimals$} {quantile:>2.12} {total_count:>10} {:>14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(
                    text,
                    "{value:>12.decimals$} {quantile:>2.12} {total_count:>10}"
                );
            }
        }
    }
    let mean = histogram.mean() / unit_ratio;
    let deviation = histogram.stdev() / unit_ratio;
    let max = histogram.max() as f64 / unit_ratio;
    let _ = writeln!(
        text,
        "#[Mean    = {mean:>12.decimals$}, StdDeviation   = {deviation:>12.decimals$}]"
    );
    let _ = writeln!(
        text,
        "#[Max     = {max:>12.decimals$}, Total count    = {:>12}]",
        histogram.len()
    );
    let _ = writeln!(
        text,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    );
    text
}

/// One row of a parsed distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributionRow {
    pub value: f64,
    pub percentile: f64,
    pub total_count: u64,
    /// Absent on the last row (percentile 1).
    pub inverted: Option<f64>,
}

/// A parsed percentile distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    pub rows: Vec<DistributionRow>,
    pub mean: f64,
    pub std_deviation: f64,
    pub max: f64,
    pub total_count: u64,
    pub buckets: u64,
    pub sub_buckets: u64,
}

/// Parses the text format back (strictly: every line must be a header, a row or a footer).
pub fn parse_distribution(text: &str) -> Result<Distribution, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty file")?
        .split_whitespace()
        .collect();
    if header != ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"] {
        return Err(format!("unexpected header {header:?}"));
    }
    let mut rows = Vec::new();
    let mut footer: Vec<f64> = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(inner) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) {
            for part in inner.split(',') {
                let (_, number) = part
                    .split_once('=')
                    .ok_or_else(|| format!("footer part without '=': {part:?}"))?;
                footer.push(
                    number
                        .trim()
                        .parse()
                        .map_err(|error| format!("footer number {number:?}: {error}"))?,
                );
            }
            continue;
        }
        let columns: Vec<&str> = line.split_whitespace().collect();
        let number = |index: usize| -> Result<f64, String> {
            columns
                .get(index)
                .ok_or_else(|| format!("row {line:?} lacks column {index}"))?
                .parse::<f64>()
                .map_err(|error| format!("row {line:?}: {error}"))
        };
        if !(3..=4).contains(&columns.len()) {
            return Err(format!("row with {} columns: {line:?}", columns.len()));
        }
        rows.push(DistributionRow {
            value: number(0)?,
            percentile: number(1)?,
            total_count: columns[2]
                .parse()
                .map_err(|error| format!("row {line:?}: {error}"))?,
            inverted: if columns.len() == 4 {
                Some(number(3)?)
            } else {
                None
            },
        });
    }
    let [mean, std_deviation, max, total_count, buckets, sub_buckets] = footer[..] else {
        return Err(format!("footer has {} numbers, expected 6", footer.len()));
    };
    Ok(Distribution {
        rows,
        mean,
        std_deviation,
        max,
        total_count: total_count as u64,
        buckets: buckets as u64,
        sub_buckets: sub_buckets as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_java_layout_and_parses_back() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for value in 1..=10_000u64 {
            histogram.record(value * 10).expect("in range");
        }
        let text = percentile_distribution(&histogram, 1000.0);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        let first = lines.next().expect("a row");
        // Value in ms with 3 decimals, percentile with 12.
        assert!(
            first.starts_with("       0.010 0.000000000000          1"),
            "{first:?}"
        );
        // Mean 50.005 ms, within the histogram's 3 significant digits.
        assert!(text.contains("#[Mean    =       50.0"), "{text}");
        assert!(text.contains(", StdDeviation   =       28.8"), "{text}");
        assert!(text.contains("#[Buckets =           "));
        assert!(text.contains("SubBuckets     =         2048]"));

        let parsed = parse_distribution(&text).expect("parses");
        assert_eq!(parsed.total_count, 10_000);
        assert_eq!(parsed.sub_buckets, 2048);
        let last = parsed.rows.last().expect("rows");
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.inverted, None);
        assert_eq!(last.total_count, 10_000);
        assert!((parsed.max - 100.0).abs() < 0.1, "{}", parsed.max);
        for pair in parsed.rows.windows(2) {
            assert!(pair[0].value <= pair[1].value);
            assert!(pair[0].percentile <= pair[1].percentile);
            assert!(pair[0].total_count <= pair[1].total_count);
        }
        assert!(parsed
            .rows
            .iter()
            .rev()
            .skip(1)
            .all(|row| row.inverted.is_some()));
    }

    #[test]
    fn empty_histograms_have_a_header_and_footer_only() {
        let histogram = Histogram::<u64>::new(3).expect("histogram");
        let parsed = parse_distribution(&percentile_distribution(&histogram, 1.0)).expect("parses");
        assert!(parsed.rows.is_empty());
        assert_eq!(parsed.total_count, 0);
    }

    #[test]
    fn parser_refuses_other_text() {
        assert!(parse_distribution("").is_err());
        assert!(parse_distribution("Value Percentile\n").is_err());
        let mut text = percentile_distribution(&Histogram::<u64>::new(2).expect("h"), 1.0);
        text.push_str("1 2\n");
        assert!(parse_distribution(&text).is_err());
    }
}
