//! `kafki dump` end to end: a data directory written by kafki-storage's
//! `PartitionLog` (the code `kafki serve` writes its logs with: O_DIRECT,
//! preallocated segments, sealed segments with their indexes, checkpoints),
//! read back by the real `kafki` binary. No broker build or port needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use kafki_storage::compression::Compression;
use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
use kafki_storage::{LogConfig, PartitionLog};
use serde_json::Value;

/// Batches appended to `orders-0` (closed cleanly) and `orders-1` (left as
/// a crash leaves it).
const CLEAN_BATCHES: usize = 60;
const CRASHED_BATCHES: usize = 20;
const RECORDS_PER_BATCH: usize = 5;
/// `orders-0` switches from leader epoch 0 to 1 at this batch.
const EPOCH_CHANGE_BATCH: usize = 40;

fn kafki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kafki"))
        .args(args)
        .output()
        .expect("run kafki")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `make()`'s future on a fresh glommio executor thread and waits.
fn run_executor<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

/// A directory on the target's filesystem (O_DIRECT needs a real one, not
/// tmpfs).
fn test_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create test base dir");
    tempfile::tempdir_in(&base).expect("tempdir")
}

fn producer_batch(index: usize, codec: Compression) -> Bytes {
    let mut section = Vec::new();
    for record in 0..RECORDS_PER_BATCH {
        let key = format!("customer-{}", (index * RECORDS_PER_BATCH + record) % 7);
        let value = format!("order {index}/{record} {}", "x".repeat(150));
        let headers: &[(&[u8], Option<&[u8]>)] = &[(b"source", Some(b"test"))];
        encode_record(
            &mut section,
            &NewRecord {
                timestamp_delta: record as i64,
                offset_delta: record as i32,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                headers,
            },
        );
    }
    let fields = BatchFields {
        last_offset_delta: RECORDS_PER_BATCH as i32 - 1,
        base_timestamp: 1_700_000_000_000 + index as i64 * 10,
        max_timestamp: 1_700_000_000_000 + index as i64 * 10 + RECORDS_PER_BATCH as i64 - 1,
        records_count: RECORDS_PER_BATCH as i32,
        ..BatchFields::default()
    };
    let mut batch = Vec::new();
    assemble_batch(&mut batch, &fields, codec, &section);
    Bytes::from(batch)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 1024,
        preallocate_bytes: 64 * 1024,
        write_chunk_bytes: 16 * 1024,
        retention_age: None,
        ..LogConfig::default()
    }
}

/// A data directory like `kafki serve` leaves: `orders-0` closed cleanly
/// (several sealed segments with indexes, two leader epochs), `orders-1`
/// abandoned mid-run (a preallocated active segment, no indexes).
fn write_data_dir() -> tempfile::TempDir {
    let dir = test_dir();
    let data = dir.path().to_path_buf();
    std::fs::write(data.join("cluster-metadata.json"), "{}").expect("write metadata");
    run_executor(move || async move {
        let clean = PartitionLog::open(data.join("orders-0"), small_segments())
            .await
            .expect("open orders-0");
        for index in 0..CLEAN_BATCHES {
            let codec = if index % 3 == 0 {
                Compression::Gzip
            } else {
                Compression::None
            };
            let epoch = if index < EPOCH_CHANGE_BATCH { 0 } else { 1 };
            clean
                .append(producer_batch(index, codec), epoch)
                .await
                .expect("append");
        }
        clean.flush().await.expect("flush");
        clean.close().await.expect("close");

        let crashed = PartitionLog::open(data.join("orders-1"), small_segments())
            .await
            .expect("open orders-1");
        for index in 0..CRASHED_BATCHES {
            crashed
                .append(producer_batch(index, Compression::Zstd), 0)
                .await
                .expect("append");
        }
        crashed.flush().await.expect("flush");
        crashed.abandon().await;
    });
    dir
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["type"] == kind)
        .collect()
}

fn segment_files(partition: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition)
        .expect("list partition")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn dumps_a_data_dir_written_by_the_partition_log() {
    let dir = write_data_dir();
    let data = dir.path().to_str().expect("utf-8 path");
    let output = kafki(&["dump", "--verify", "--json", data]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    let events = json_lines(&output);

    let problems = of_type(&events, "problem");
    assert!(problems.is_empty(), "{problems:#?}");
    let data_dir = of_type(&events, "data_dir");
    assert_eq!(data_dir[0]["partitions"], 2);
    let other = data_dir[0]["other"].as_array().expect("other entries");
    assert!(
        other.contains(&Value::from("cluster-metadata.json")),
        "{other:?}"
    );

    for (partition, appended) in [("orders-0", CLEAN_BATCHES), ("orders-1", CRASHED_BATCHES)] {
        let batches: Vec<&Value> = of_type(&events, "batch")
            .into_iter()
            .filter(|batch| {
                batch["path"]
                    .as_str()
                    .is_some_and(|path| path.contains(partition))
            })
            .collect();
        assert_eq!(batches.len(), appended, "{partition}");
        for (index, batch) in batches.iter().enumerate() {
            let base = (index * RECORDS_PER_BATCH) as i64;
            assert_eq!(batch["base_offset"], base, "{partition} batch {index}");
            assert_eq!(batch["last_offset"], base + RECORDS_PER_BATCH as i64 - 1);
            assert_eq!(batch["records_count"], RECORDS_PER_BATCH);
            assert_eq!(batch["crc_ok"], true);
            assert_eq!(batch["magic"], 2);
            assert_eq!(
                batch["base_timestamp"],
                1_700_000_000_000i64 + index as i64 * 10
            );
        }
    }

    let summaries = of_type(&events, "partition_summary");
    assert_eq!(summaries.len(), 2);
    let clean = summaries[0];
    assert_eq!(clean["clean_shutdown_marker"], true);
    assert_eq!(clean["next_offset"], CLEAN_BATCHES * RECORDS_PER_BATCH);
    assert_eq!(clean["recovery_point"], CLEAN_BATCHES * RECORDS_PER_BATCH);
    let epoch_change = (EPOCH_CHANGE_BATCH * RECORDS_PER_BATCH) as i64;
    assert_eq!(
        clean["leader_epochs_in_batches"],
        serde_json::json!([[0, 0], [1, epoch_change]])
    );
    assert_eq!(
        clean["leader_epoch_checkpoint"],
        serde_json::json!([[0, 0], [1, epoch_change]])
    );
    assert!(clean["segments"].as_u64().expect("segments") > 2, "{clean}");
    let crashed = summaries[1];
    assert_eq!(crashed["clean_shutdown_marker"], false);

    // Sealed segments carry both indexes, with entries, all consistent.
    let indexes = of_type(&events, "index_summary");
    assert!(indexes.len() >= 4, "{indexes:#?}");
    assert!(indexes
        .iter()
        .any(|index| index["entries"].as_u64() > Some(0)));
    assert!(indexes.iter().all(|index| index["damage"] == 0));

    // The crashed partition's active segment is preallocated: zeros end it.
    let crashed_segment = of_type(&events, "segment_summary")
        .into_iter()
        .rfind(|summary| {
            summary["path"]
                .as_str()
                .is_some_and(|path| path.contains("orders-1"))
        })
        .expect("orders-1 segment");
    assert!(
        crashed_segment["zero_trailer_bytes"].as_u64() > Some(0),
        "{crashed_segment}"
    );
    let summary = of_type(&events, "summary");
    assert_eq!(summary[0]["damage"], 0);
    assert_eq!(summary[0]["batches"], CLEAN_BATCHES + CRASHED_BATCHES);

    // The same as text.
    let text = kafki(&["dump", data]);
    assert!(text.status.success());
    let text = stdout(&text);
    assert!(text.contains("zero bytes preallocated)"), "{text}");
    assert!(text.contains("summary: 2 partitions"), "{text}");
    assert!(text.contains("batch pos=0 offsets=0..4 count=5"), "{text}");
    assert!(text.contains("codec=gzip"), "{text}");
}

#[test]
fn verify_fails_on_a_flipped_byte_and_names_the_batch() {
    let dir = write_data_dir();
    let partition = dir.path().join("orders-0");
    let first = &segment_files(&partition)[0];
    let listing = kafki(&["dump", "--json", first.to_str().expect("utf-8")]);
    let events = json_lines(&listing);
    let batches = of_type(&events, "batch");
    let victim = batches[2];
    let position = victim["position"].as_u64().expect("position");
    let mut bytes = std::fs::read(first).expect("read segment");
    bytes[position as usize + 100] ^= 0x20;
    std::fs::write(first, &bytes).expect("write segment");

    let output = kafki(&["dump", "--verify", partition.to_str().expect("utf-8")]);
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("verify failed: 1 damaged place"),
        "{message}"
    );
    assert!(message.contains(&first.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("position {position}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("offset {}", victim["base_offset"])),
        "{message}"
    );
    assert!(message.contains("CRC32C mismatch"), "{message}");
    let report = stdout(&output);
    assert!(report.contains("DAMAGE [bad_crc]"), "{report}");
    assert!(report.contains("BAD computed="), "{report}");

    // Without --verify the dump reports the same and exits 0.
    let output = kafki(&["dump", partition.to_str().expect("utf-8")]);
    assert!(output.status.success());
    assert!(stdout(&output).contains("DAMAGE [bad_crc]"));
}

#[test]
fn verify_fails_on_a_truncated_tail() {
    let dir = write_data_dir();
    let partition = dir.path().join("orders-1");
    let segment = segment_files(&partition).pop().expect("a segment");
    let listing = kafki(&["dump", "--json", segment.to_str().expect("utf-8")]);
    let events = json_lines(&listing);
    let last = *of_type(&events, "batch").last().expect("batches");
    let cut_at = last["position"].as_u64().expect("position") + 40;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.set_len(cut_at).expect("truncate");

    let output = kafki(&[
        "dump",
        "--verify",
        "--json",
        partition.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    let events = json_lines(&output);
    let problems = of_type(&events, "problem");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0]["code"], "truncated_header");
    assert_eq!(problems[0]["position"], last["position"]);
    assert!(stderr(&output).contains("partial batch header"));
}

#[test]
fn lists_an_index_file_and_decodes_records() {
    let dir = write_data_dir();
    let partition = dir.path().join("orders-0");
    let segment = &segment_files(&partition)[0];
    let index = segment.with_extension("index");
    let output = kafki(&["dump", "--json", index.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let events = json_lines(&output);
    assert!(of_type(&events, "batch").is_empty());
    let entries = of_type(&events, "index_entry");
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|entry| entry["kind"] == "offset"));
    assert!(of_type(&events, "problem").is_empty());

    let output = kafki(&[
        "dump",
        "--records",
        "--max-bytes",
        "12",
        segment.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(
        text.contains(
            "record offset=0 ts=1700000000000 key=\"customer-0\" value=\"order 0/0 xx\"...("
        ),
        "{text}"
    );
    assert!(text.contains("headers=[\"source\"=\"test\"]"), "{text}");

    let missing = kafki(&["dump", "/nonexistent/kafki-dump-test"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("cannot read /nonexistent/kafki-dump-test"));
}

/// A compacted log has offset gaps below its cleaner checkpoint: `--verify`
/// accepts them there (as Kafki's recovery does) and only there.
#[test]
fn verify_accepts_the_gaps_of_a_compacted_log_below_its_cleaner_checkpoint() {
    let dir = test_dir();
    let partition = dir.path().join("compacted-0");
    let path = partition.clone();
    run_executor(move || async move {
        let config = LogConfig {
            compaction: Some(kafki_storage::CompactionConfig {
                min_cleanable_dirty_ratio: 0.0,
                ..Default::default()
            }),
            ..small_segments()
        };
        let log = PartitionLog::open(&path, config).await.expect("open");
        // Seven keys over and over, between batches of keys of their own:
        // the cleaner removes the first kind, leaving gaps between the others.
        for index in 0..CLEAN_BATCHES * 2 {
            log.append(producer_batch(index, Compression::None), 0)
                .await
                .expect("append");
            let key = format!("own-{index}");
            let value = vec![b'v'; 200];
            let own = kafki_storage::batch::build_keyed_batch(
                1_700_000_000_000,
                &[(Some(key.as_bytes()), Some(&value))],
            );
            log.append(own, 0).await.expect("append");
        }
        log.flush().await.expect("flush");
        let report = log
            .compact(1_700_000_000_000, &kafki_storage::CleanerLimits::default())
            .await
            .expect("compact");
        assert!(report.records_removed > 0, "{report:?}");
        log.close().await.expect("close");
    });
    let label = partition.to_str().expect("utf-8 path");
    let output = kafki(&["dump", "--verify", "--json", label]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    let events = json_lines(&output);
    assert!(of_type(&events, "problem").is_empty());
    let batches = of_type(&events, "batch");
    let gaps = batches.windows(2).any(|pair| {
        pair[1]["base_offset"].as_i64() > pair[0]["last_offset"].as_i64().map(|last| last + 1)
    });
    assert!(gaps, "the compacted log has gaps");

    // Without the checkpoint nothing vouches for those gaps: damage.
    std::fs::remove_file(partition.join("cleaner-checkpoint")).expect("remove");
    let output = kafki(&["dump", "--verify", "--json", label]);
    assert!(!output.status.success(), "{}", stdout(&output));
    let events = json_lines(&output);
    assert!(of_type(&events, "problem")
        .iter()
        .any(|problem| problem["code"] == "offset_gap"));
}
