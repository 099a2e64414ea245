//! `kafki topics|produce|consume|groups` end to end: the real binary against a real
//! `kafki serve` (every subcommand and its exit codes: 0 ok, 1 Kafka error, 2 bad usage),
//! and the core flow against Tansu, another Kafka-wire broker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kafki_client::testing::{KafkiServer, TansuServer, TansuUnavailable};
use kafki_client::{partition_for_key, Client, ClientConfig, ConfigResource, ConfigSource};

const KAFKI: &str = env!("CARGO_BIN_EXE_kafki");

fn work_dir() -> tempfile::TempDir {
    // A real filesystem (the broker writes with O_DIRECT), inside target/.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("tmp dir");
    tempfile::tempdir_in(&base).expect("tempdir")
}

/// One run of `kafki <args>` with `stdin` as its input.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kafki(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(KAFKI)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kafki runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin written");
    }
    let output: Output = child.wait_with_output().expect("kafki ends");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// A tool bound to one broker.
struct Tools<'a> {
    bootstrap: &'a str,
}

impl Tools<'_> {
    fn run(&self, args: &[&str], stdin: &str) -> Run {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--bootstrap", self.bootstrap]);
        kafki(&full, stdin)
    }

    /// Runs and expects exit 0; returns stdout.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let run = self.run(args, stdin);
        assert_eq!(
            run.code, 0,
            "kafki {args:?} failed:\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs and expects exit `code` with `needle` on stderr.
    fn fails(&self, args: &[&str], stdin: &str, code: i32, needle: &str) -> Run {
        let run = self.run(args, stdin);
        assert_eq!(
            (run.code, run.stderr.contains(needle)),
            (code, true),
            "kafki {args:?}: expected exit {code} and {needle:?} on stderr:\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
        run
    }
}

/// `partition:offset:key:value` lines of a consume run, parsed.
fn records(stdout: &str) -> Vec<(i32, i64, String, String)> {
    stdout
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.splitn(4, ':').collect();
            assert_eq!(parts.len(), 4, "line {line:?}");
            (
                parts[0].parse().expect("partition"),
                parts[1].parse().expect("offset"),
                parts[2].to_string(),
                parts[3].to_string(),
            )
        })
        .collect()
}

const RECORD_FORMAT: &str = "%p:%o:%k:%s\\n";

/// The partition table of `groups describe`: (topic, partition) → (current, end, lag).
fn describe_partitions(stdout: &str) -> BTreeMap<(String, i32), (String, String, String)> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("GROUP "))
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert!(cells.len() >= 6, "row {line:?}");
            (
                (cells[1].to_string(), cells[2].parse().expect("partition")),
                (
                    cells[3].to_string(),
                    cells[4].to_string(),
                    cells[5].to_string(),
                ),
            )
        })
        .collect()
}

/// The rows of a table a tool printed (header skipped), split into cells.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

/// Keys whose records land on both partitions of a 2-partition topic, at least twice each.
fn keyed_lines(count: usize) -> (String, BTreeMap<i32, Vec<String>>) {
    let mut lines = String::new();
    let mut by_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for index in 0..count {
        let key = format!("key-{index}");
        let partition = partition_for_key(key.as_bytes(), 2) as i32;
        by_partition
            .entry(partition)
            .or_default()
            .push(format!("{key}=value-{index}"));
        lines.push_str(&format!("{key}:value-{index}\n"));
    }
    assert!(
        by_partition.values().all(|records| records.len() >= 2) && by_partition.len() == 2,
        "the keys spread over both partitions: {by_partition:?}"
    );
    (lines, by_partition)
}

/// A `kafki consume --group` left running in the background; stopped with SIGINT.
struct Background {
    child: Option<Child>,
}

impl Background {
    fn start(bootstrap: &str, args: &[&str]) -> Self {
        let child = Command::new(KAFKI)
            .args(args)
            .args(["--bootstrap", bootstrap])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("background consumer starts");
        Self { child: Some(child) }
    }

    /// SIGINT (a clean stop: commit, leave the group) and its output.
    fn interrupt(mut self) -> Run {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let output = child.wait_with_output().expect("ends");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_operator_tool_against_kafki() {
    let dir = work_dir();
    // Groups form at once instead of after Kafka's 3 s initial rebalance delay.
    let server = KafkiServer::start_with(
        Path::new(KAFKI),
        &dir.path().join("broker"),
        &["--set", "group.initial.rebalance.delay.ms=0"],
    )
    .expect("kafki serve starts");
    let tools = Tools {
        bootstrap: &server.bootstrap,
    };

    // topics create / list / describe.
    let created = tools.ok(
        &[
            "topics",
            "create",
            "--topic",
            "ops",
            "--partitions",
            "2",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=3600000",
        ],
        "",
    );
    assert_eq!(created, "Created topic ops.\n");
    tools.fails(
        &["topics", "create", "--topic", "ops"],
        "",
        1,
        "TOPIC_ALREADY_EXISTS",
    );
    tools.ok(
        &["topics", "create", "--topic", "ops", "--if-not-exists"],
        "",
    );
    tools.ok(&["topics", "create", "--topic", "other"], "");
    assert_eq!(tools.ok(&["topics", "list"], ""), "ops\nother\n");
    let described = tools.ok(&["topics", "describe", "--topic", "ops"], "");
    assert!(
        described.starts_with("Topic: ops\t")
            && described.contains(
                "PartitionCount: 2\tReplicationFactor: 1\tConfigs: retention.ms=3600000\n"
            )
            && described.contains("\tTopic: ops\tPartition: 1\tLeader: "),
        "{described}"
    );
    tools.fails(
        &["topics", "describe", "--topic", "missing"],
        "",
        1,
        "UNKNOWN_TOPIC_OR_PARTITION",
    );

    // Bad usage exits 2.
    tools.fails(&["topics", "create"], "", 2, "--topic");
    tools.fails(
        &["topics", "create", "--topic", "x", "--config", "novalue"],
        "",
        2,
        "key=value",
    );
    tools.fails(
        &["topics", "alter-config", "--topic", "ops"],
        "",
        2,
        "--add-config",
    );
    tools.fails(
        &["consume", "--topic", "ops", "--format", "%x"],
        "",
        2,
        "unknown placeholder",
    );
    tools.fails(
        &["consume", "--topic", "ops", "--offset", "3"],
        "",
        2,
        "--partition",
    );
    tools.fails(
        &["groups", "reset-offsets", "--group", "g", "--topic", "ops"],
        "",
        2,
        "--to-earliest",
    );

    // alter-config, then DescribeConfigs (through the tool and directly) shows it.
    let altered = tools.ok(
        &[
            "topics",
            "alter-config",
            "--topic",
            "ops",
            "--add-config",
            "max.message.bytes=65536,flush.ms=1000",
            "--delete-config",
            "retention.ms",
        ],
        "",
    );
    assert_eq!(altered, "Completed updating config for topic ops.\n");
    let described = tools.ok(&["topics", "describe", "--topic", "ops"], "");
    let configs_line = described.lines().next().unwrap_or_default().to_string();
    assert!(
        configs_line.contains("max.message.bytes=65536")
            && configs_line.contains("flush.ms=1000")
            && !configs_line.contains("retention.ms"),
        "{configs_line}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let set_on_topic = runtime.block_on(async {
        let client = Client::connect(ClientConfig::new(&server.bootstrap))
            .await
            .expect("client");
        client
            .describe_resource_configs(&ConfigResource::topic("ops"))
            .await
            .expect("DescribeConfigs")
            .into_iter()
            .filter(|entry| entry.source == ConfigSource::DynamicTopic)
            .map(|entry| (entry.name, entry.value.unwrap_or_default()))
            .collect::<BTreeMap<String, String>>()
    });
    assert_eq!(
        set_on_topic,
        [
            ("flush.ms".to_string(), "1000".to_string()),
            ("max.message.bytes".to_string(), "65536".to_string())
        ]
        .into()
    );
    tools.fails(
        &[
            "topics",
            "alter-config",
            "--topic",
            "missing",
            "--add-config",
            "flush.ms=1",
        ],
        "",
        1,
        "UNKNOWN_TOPIC_OR_PARTITION",
    );

    // produce with keys; consume --format shows keys, partitions and offsets.
    let (lines, by_partition) = keyed_lines(10);
    assert_eq!(
        tools.ok(
            &[
                "produce",
                "--topic",
                "ops",
                "--key-separator",
                ":",
                "--acks",
                "all"
            ],
            &lines,
        ),
        ""
    );
    let run = tools.fails(
        &["produce", "--topic", "ops", "--key-separator", ":"],
        "no-separator-here\n",
        1,
        "no key separator",
    );
    assert!(run.stderr.contains("line 1"), "{}", run.stderr);
    let consumed = records(&tools.ok(
        &[
            "consume",
            "--topic",
            "ops",
            "--from-beginning",
            "--timeout-ms",
            "1500",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    ));
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (partition, offset, key, value) in &consumed {
        let list = seen.entry(*partition).or_default();
        assert_eq!(*offset, list.len() as i64, "offsets count up per partition");
        list.push(format!("{key}={value}"));
    }
    assert_eq!(seen, by_partition, "each key on murmur2(key) % 2, in order");

    // --partition with --offset, --max-messages; headers and compression.
    let one = records(&tools.ok(
        &[
            "consume",
            "--topic",
            "ops",
            "--partition",
            "1",
            "--offset",
            "1",
            "--max-messages",
            "1",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    ));
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0].0, one[0].1, format!("{}={}", one[0].2, one[0].3)),
        (1, 1, by_partition[&1][1].clone())
    );
    tools.ok(
        &[
            "produce",
            "--topic",
            "other",
            "--header",
            "source=test",
            "--compression",
            "zstd",
            "--partition",
            "0",
        ],
        "compressed\n",
    );
    assert_eq!(
        tools.ok(
            &[
                "consume",
                "--topic",
                "other",
                "--from-beginning",
                "--max-messages",
                "1",
                "--format",
                "%s [%h] %K\\n",
            ],
            "",
        ),
        "compressed [source=test] -1\n"
    );

    // consume --group commits; a second run resumes after the committed offsets.
    let first = records(&tools.ok(
        &[
            "consume",
            "--topic",
            "ops",
            "--group",
            "readers",
            "--from-beginning",
            "--max-messages",
            "4",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    ));
    assert_eq!(first.len(), 4);
    let second = records(&tools.ok(
        &[
            "consume",
            "--topic",
            "ops",
            "--group",
            "readers",
            "--timeout-ms",
            "1500",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    ));
    let both: Vec<(i32, i64)> = first
        .iter()
        .chain(&second)
        .map(|(partition, offset, _, _)| (*partition, *offset))
        .collect();
    let distinct: BTreeSet<(i32, i64)> = both.iter().copied().collect();
    assert_eq!(
        (both.len(), distinct.len()),
        (10, 10),
        "every record exactly once over both runs: {first:?} then {second:?}"
    );

    // groups list / describe (lag).
    let listed = tools.ok(&["groups", "list"], "");
    assert!(listed.lines().any(|line| line == "readers"), "{listed}");
    assert!(tools
        .ok(&["groups", "list", "--state"], "")
        .lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["readers", "Empty"]));
    tools.ok(
        &["produce", "--topic", "ops", "--partition", "0"],
        "x\ny\nz\n",
    );
    let described = tools.ok(&["groups", "describe", "--group", "readers"], "");
    assert!(
        described.starts_with("Group: readers\tState: Empty\tProtocol: consumer"),
        "{described}"
    );
    let end0 = by_partition[&0].len() as i64;
    let end1 = by_partition[&1].len() as i64;
    let expected_lag: BTreeMap<(String, i32), (String, String, String)> = [
        (
            ("ops".to_string(), 0),
            (end0.to_string(), (end0 + 3).to_string(), "3".to_string()),
        ),
        (
            ("ops".to_string(), 1),
            (end1.to_string(), end1.to_string(), "0".to_string()),
        ),
    ]
    .into();
    assert_eq!(describe_partitions(&described), expected_lag, "{described}");
    tools.fails(
        &["groups", "describe", "--group", "nobody"],
        "",
        1,
        "GROUP_ID_NOT_FOUND",
    );

    // An active member: describe shows it; reset-offsets refuses.
    let member = Background::start(
        &server.bootstrap,
        &[
            "consume",
            "--topic",
            "ops",
            "--group",
            "live",
            "--client-id",
            "live-reader",
        ],
    );
    let mut live = String::new();
    wait_for(
        "the live group to be stable",
        Duration::from_secs(20),
        || {
            // Until the member's first JoinGroup lands the group does not
            // exist yet and describe says GROUP_ID_NOT_FOUND: keep waiting.
            let run = tools.run(&["groups", "describe", "--group", "live"], "");
            assert!(
                run.code == 0 || run.stderr.contains("GROUP_ID_NOT_FOUND"),
                "describe of the live group failed:\nstdout: {}\nstderr: {}",
                run.stdout,
                run.stderr
            );
            live = run.stdout;
            run.code == 0 && live.contains("State: Stable")
        },
    );
    assert!(
        live.contains("live-reader") && live.contains("ops-0,1"),
        "member with its client id and assignment: {live}"
    );
    tools.fails(
        &[
            "groups",
            "reset-offsets",
            "--group",
            "live",
            "--topic",
            "ops",
            "--to-earliest",
            "--execute",
        ],
        "",
        1,
        "active members",
    );
    let stopped = member.interrupt();
    assert_eq!(stopped.code, 0, "clean stop on SIGINT: {}", stopped.stderr);
    assert!(tools
        .ok(&["groups", "describe", "--group", "live"], "")
        .contains("State: Empty"));

    // reset-offsets: a dry run changes nothing; --execute does.
    let dry = tools.ok(
        &[
            "groups",
            "reset-offsets",
            "--group",
            "readers",
            "--topic",
            "ops",
            "--to-earliest",
        ],
        "",
    );
    let (end0_text, end1_text) = (end0.to_string(), end1.to_string());
    assert_eq!(
        table_rows(&dry),
        vec![
            row(&["readers", "ops", "0", &end0_text, "0"]),
            row(&["readers", "ops", "1", &end1_text, "0"]),
        ],
        "{dry}"
    );
    assert_eq!(
        describe_partitions(&tools.ok(&["groups", "describe", "--group", "readers"], "")),
        expected_lag,
        "the dry run committed nothing"
    );
    let shifted = tools.ok(
        &[
            "groups",
            "reset-offsets",
            "--group",
            "readers",
            "--topic",
            "ops:1",
            "--shift-by",
            "-1",
        ],
        "",
    );
    let shifted_to = (end1 - 1).to_string();
    assert_eq!(
        table_rows(&shifted),
        vec![row(&["readers", "ops", "1", &end1_text, &shifted_to])]
    );
    let by_time = tools.ok(
        &[
            "groups",
            "reset-offsets",
            "--group",
            "readers",
            "--topic",
            "ops:0",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
        ],
        "",
    );
    assert_eq!(
        table_rows(&by_time),
        vec![row(&["readers", "ops", "0", &end0_text, "0"])],
        "every record is newer than 2000"
    );
    tools.ok(
        &[
            "groups",
            "reset-offsets",
            "--group",
            "readers",
            "--topic",
            "ops:0",
            "--to-earliest",
            "--execute",
        ],
        "",
    );
    let after = describe_partitions(&tools.ok(&["groups", "describe", "--group", "readers"], ""));
    assert_eq!(
        after[&("ops".to_string(), 0)],
        (
            "0".to_string(),
            (end0 + 3).to_string(),
            (end0 + 3).to_string()
        )
    );
    // The group now reads partition 0 from the beginning again.
    let again = records(&tools.ok(
        &[
            "consume",
            "--topic",
            "ops",
            "--group",
            "readers",
            "--timeout-ms",
            "1500",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    ));
    let offsets: Vec<(i32, i64)> = again.iter().map(|(p, o, _, _)| (*p, *o)).collect();
    assert_eq!(
        offsets,
        (0..end0 + 3).map(|offset| (0, offset)).collect::<Vec<_>>()
    );

    // topics delete.
    assert_eq!(
        tools.ok(&["topics", "delete", "--topic", "other"], ""),
        "Deleted topic other.\n"
    );
    assert_eq!(tools.ok(&["topics", "list"], ""), "ops\n");
    assert!(tools
        .ok(&["topics", "list", "--all"], "")
        .lines()
        .any(|line| line == "__consumer_offsets"));
    tools.fails(
        &["topics", "delete", "--topic", "other"],
        "",
        1,
        "UNKNOWN_TOPIC_OR_PARTITION",
    );
    tools.ok(&["topics", "delete", "--topic", "other", "--if-exists"], "");

    // No broker at all: exit 1, and say where it tried.
    let nowhere = Tools {
        bootstrap: "127.0.0.1:1",
    };
    nowhere.fails(&["topics", "list"], "", 1, "connecting to 127.0.0.1:1");
    drop(server);
}

/// The core flow against Tansu 0.6.0 (fetched by scripts/peers.sh from PyPI). Where Tansu
/// lacks an API (CreatePartitions) the tool must say so, not fail obscurely.
#[test]
fn core_flow_against_tansu() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/peers.sh");
    let tansu = match TansuServer::start(&peers) {
        Ok(tansu) => tansu,
        Err(TansuUnavailable::NotInstallable(reason)) => {
            println!("SKIPPED core_flow_against_tansu: Tansu unavailable: {reason}");
            eprintln!("SKIPPED core_flow_against_tansu: Tansu unavailable: {reason}");
            return;
        }
        Err(TansuUnavailable::Failed(reason)) => panic!("starting Tansu failed: {reason}"),
    };
    let tools = Tools {
        bootstrap: &tansu.bootstrap,
    };
    tools.ok(
        &[
            "topics",
            "create",
            "--topic",
            "tansu-ops",
            "--partitions",
            "2",
        ],
        "",
    );
    tools.fails(
        &[
            "topics",
            "create",
            "--topic",
            "tansu-ops",
            "--partitions",
            "2",
        ],
        "",
        1,
        "TOPIC_ALREADY_EXISTS",
    );
    assert!(tools
        .ok(&["topics", "list"], "")
        .lines()
        .any(|line| line == "tansu-ops"));
    assert!(tools
        .ok(&["topics", "describe", "--topic", "tansu-ops"], "")
        .contains("PartitionCount: 2"));

    let (lines, by_partition) = keyed_lines(8);
    tools.ok(
        &["produce", "--topic", "tansu-ops", "--key-separator", ":"],
        &lines,
    );
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (partition, _, key, value) in records(&tools.ok(
        &[
            "consume",
            "--topic",
            "tansu-ops",
            "--from-beginning",
            "--timeout-ms",
            "2000",
            "--format",
            RECORD_FORMAT,
        ],
        "",
    )) {
        seen.entry(partition)
            .or_default()
            .push(format!("{key}={value}"));
    }
    assert_eq!(seen, by_partition);

    let group_run = |extra: &[&str]| -> Vec<(i32, i64, String, String)> {
        let mut args = vec![
            "consume",
            "--topic",
            "tansu-ops",
            "--group",
            "tansu-readers",
            "--format",
            RECORD_FORMAT,
        ];
        args.extend_from_slice(extra);
        records(&tools.ok(&args, ""))
    };
    let first = group_run(&["--from-beginning", "--max-messages", "3"]);
    let second = group_run(&["--timeout-ms", "2000"]);
    let distinct: BTreeSet<(i32, i64)> = first
        .iter()
        .chain(&second)
        .map(|(partition, offset, _, _)| (*partition, *offset))
        .collect();
    assert_eq!(
        (first.len() + second.len(), distinct.len()),
        (8, 8),
        "the second run resumes after the first one's commits: {first:?} then {second:?}"
    );
    assert!(tools
        .ok(&["groups", "list"], "")
        .lines()
        .any(|line| line == "tansu-readers"));

    // Tansu 0.6.0 has no CreatePartitions: the tool names the missing API.
    tools.fails(
        &[
            "topics",
            "add-partitions",
            "--topic",
            "tansu-ops",
            "--partitions",
            "3",
        ],
        "",
        1,
        "does not support CreatePartitions",
    );

    tools.ok(&["topics", "delete", "--topic", "tansu-ops"], "");
    assert!(!tools
        .ok(&["topics", "list"], "")
        .lines()
        .any(|line| line == "tansu-ops"));
}
