//! `--plot`: one self-contained SVG (no scripts, fonts or network fetches; any browser or
//! image viewer shows it) with three charts: latency by percentile (the classic
//! HdrHistogram plot, percentiles on a log scale of 1/(1−p)), throughput per second, and
//! p50/p99/max latency per second.
//!
//! Written by hand rather than with a plotting crate: the charts are a few polylines, and
//! the plotting crates need a font backend to lay out text, which SVG leaves to the viewer.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::BenchReport;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 250.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 150.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 45.0;
/// 99.9999%: the right edge of the percentile axis.
const PERCENTILE_DECADES: f64 = 6.0;

struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

struct Panel<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_ticks: Vec<(f64, String)>,
    x_max: f64,
    series: Vec<Series>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round step so that about `target` ticks cover `0..max`.
fn nice_step(max: f64, target: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / target;
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn format_number(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value.abs() >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value.abs() >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value.abs() >= 10.0 {
        format!("{value:.0}")
    } else {
        // Up to three decimals, trailing zeros dropped: 0.5, 2.5, 0.025.
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn draw_panel(svg: &mut String, top: f64, panel: &Panel<'_>) {
    let left = MARGIN_LEFT;
    let right = WIDTH - MARGIN_RIGHT;
    let plot_top = top + MARGIN_TOP;
    let bottom = top + PANEL_HEIGHT - MARGIN_BOTTOM;
    let y_data_max = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_data_max * 1.05, 5.0);
    let y_max = (y_data_max * 1.05 / y_step).ceil().max(1.0) * y_step;
    let x_max = panel.x_max.max(f64::MIN_POSITIVE);
    let x_of = |x: f64| left + (x / x_max).clamp(0.0, 1.0) * (right - left);
    let y_of = |y: f64| bottom - (y / y_max).clamp(0.0, 1.0) * (bottom - plot_top);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        top + 22.0,
        escape(panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{plot_top}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
        right - left,
        bottom - plot_top
    );
    let mut tick = 0.0;
    while tick <= y_max * 1.0001 {
        let y = y_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e2e2e2"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            format_number(tick)
        );
        tick += y_step;
    }
    for (x, label) in &panel.x_ticks {
        let px = x_of(*x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{plot_top}" x2="{px:.1}" y2="{bottom}" stroke="#e2e2e2"/><text x="{px:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        (left + right) / 2.0,
        bottom + 34.0,
        escape(panel.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        (plot_top + bottom) / 2.0,
        (plot_top + bottom) / 2.0,
        escape(panel.y_label)
    );
    for (index, series) in panel.series.iter().enumerate() {
        let points: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
            .collect();
        if points.len() == 1 {
            let _ = writeln!(
                svg,
                r#"<circle cx="{}" r="3" fill="{}"/>"#,
                points[0].replace(',', "\" cy=\""),
                series.color
            );
        } else if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                series.color,
                points.join(" ")
            );
        }
        let legend_y = plot_top + 14.0 + index as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            right + 12.0,
            right + 32.0,
            series.color,
            right + 38.0,
            legend_y + 4.0,
            escape(series.name)
        );
    }
}

fn percentile_panel(latencies: &Histogram<u64>) -> Panel<'static> {
    let mut points = Vec::new();
    if !latencies.is_empty() {
        for step in latencies.iter_quantiles(crate::hdr_text::TICKS_PER_HALF_DISTANCE) {
            let quantile = step.quantile_iterated_to();
            let x = if quantile >= 1.0 {
                PERCENTILE_DECADES
            } else {
                (1.0 / (1.0 - quantile)).log10().min(PERCENTILE_DECADES)
            };
            points.push((x, step.value_iterated_to() as f64 / 1000.0));
        }
    }
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    Panel {
        title: "Latency by percentile",
        x_label: "percentile",
        y_label: "latency (ms)",
        x_ticks: labels
            .iter()
            .enumerate()
            .map(|(decade, label)| (decade as f64, label.to_string()))
            .collect(),
        x_max: PERCENTILE_DECADES,
        series: vec![Series {
            name: "latency",
            color: "#1f77b4",
            points,
        }],
    }
}

fn time_ticks(seconds: f64) -> (Vec<(f64, String)>, f64) {
    let x_max = seconds.max(1.0);
    let step = nice_step(x_max, 8.0);
    let mut ticks = Vec::new();
    let mut tick = 0.0;
    while tick <= x_max * 1.0001 {
        ticks.push((tick, format_number(tick)));
        tick += step;
    }
    (ticks, x_max)
}

/// The SVG document for `report`, whose latency distribution is `latencies` (µs).
pub fn svg(report: &BenchReport, latencies: &Histogram<u64>) -> String {
    let seconds = report.timeline.last().map_or(0.0, |point| point.t_s);
    let (x_ticks, x_max) = time_ticks(seconds);
    let throughput = Panel {
        title: "Throughput per second",
        x_label: "time (s)",
        y_label: "records/s",
        x_ticks: x_ticks.clone(),
        x_max,
        series: vec![Series {
            name: "records/s",
            color: "#2ca02c",
            points: report
                .timeline
                .iter()
                .map(|point| (point.t_s, point.records_per_s))
                .collect(),
        }],
    };
    let latency_over_time = Panel {
        title: "Latency per second",
        x_label: "time (s)",
        y_label: "latency (ms)",
        x_ticks,
        x_max,
        series: [
            ("p50", "#1f77b4", 0),
            ("p99", "#ff7f0e", 1),
            ("max", "#d62728", 2),
        ]
        .into_iter()
        .map(|(name, color, which)| Series {
            name,
            color,
            points: report
                .timeline
                .iter()
                .filter(|point| point.records > 0)
                .map(|point| {
                    let latency_us = match which {
                        0 => point.latency_us_p50,
                        1 => point.latency_us_p99,
                        _ => point.latency_us_max,
                    };
                    (point.t_s, latency_us as f64 / 1000.0)
                })
                .collect(),
        })
        .collect(),
    };
    let panels = [percentile_panel(latencies), throughput, latency_over_time];
    let header_height = 64.0;
    let height = header_height + PANEL_HEIGHT * panels.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let latency = &report.latency_us;
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="22" font-size="17" font-weight="bold">kafki bench {}: {:.0} records/s, {:.2} MiB/s</text>"#,
        report.benchmark, report.records_per_s, report.mib_per_s
    );
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="40" font-size="12">{} records in {:.2} s; latency µs: p50 {} p99 {} p99.9 {} max {}</text>"#,
        report.records, report.seconds, latency.p50, latency.p99, latency.p999, latency.max
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN_LEFT}" y="56" font-size="11" fill="#555">latency {}</text>"##,
        escape(report.latency_measures)
    );
    for (index, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, header_height + index as f64 * PANEL_HEIGHT, panel);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LatencyUs, TimelinePoint};

    #[test]
    fn svg_is_self_contained_and_has_every_panel() {
        let mut latencies = crate::load::new_histogram();
        for value in 1..=5000 {
            latencies.saturating_record(value * 3);
        }
        let report = BenchReport {
            benchmark: "produce",
            records: 5000,
            bytes: 500_000,
            seconds: 2.0,
            records_per_s: 2500.0,
            mib_per_s: 0.24,
            latency_measures: "send → ack <per record>",
            latency_us: LatencyUs::of(&latencies),
            errors: 0,
            first_error: None,
            details: serde_json::Value::Null,
            config: serde_json::Value::Null,
            timeline: (1..=2)
                .map(|second| TimelinePoint::new(second as f64, 2500, 250_000, 1.0, &latencies))
                .collect(),
        };
        let svg = svg(&report, &latencies);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        for title in [
            "Latency by percentile",
            "Throughput per second",
            "Latency per second",
        ] {
            assert!(svg.contains(title), "{title}");
        }
        assert!(svg.contains("&lt;per record&gt;"), "text is escaped");
        assert!(!svg.contains("http://") || svg.matches("http://").count() == 1);
        assert!(svg.matches("<polyline").count() >= 4);
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(format_number(1_500_000.0), "1.5M");
        assert_eq!(format_number(0.25), "0.25");
        assert_eq!(format_number(2.0), "2");
    }
}
