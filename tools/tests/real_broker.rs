//! Both tools against a real `kafki serve` (the binary cargo builds for
//! these tests): `kafki layout --admin` reads its shard → CPU → partitions
//! map, and after records were produced over the Kafka protocol and the
//! broker stopped with SIGTERM, `kafki dump --verify` reads its data
//! directory clean.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafki_storage::compression::Compression;
use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
use serde_json::Value;

const TOPIC: &str = "dumped";
const BATCHES: usize = 30;
const RECORDS_PER_BATCH: usize = 4;

fn kafki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kafki"))
        .args(args)
        .output()
        .expect("run kafki")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// The broker process; killed if the test fails before stopping it.
struct Broker {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Broker {
    fn start(data: &Path, port: u16, admin_port: u16) -> Self {
        let log = data.with_extension("stderr");
        let stderr = std::fs::File::create(&log).expect("broker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_kafki"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                "--cores",
                "0",
                "--set",
                "log.segment.bytes=8192",
            ])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start kafki serve");
        Self {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for the clean shutdown.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(
                    status.success(),
                    "kafki serve exited with {status}: {}",
                    self.log()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!(
            "kafki serve did not stop within 30 s of SIGTERM: {}",
            self.log()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One request/response over a Kafka connection.
fn call<R: Request>(
    stream: &mut TcpStream,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> R::Response {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("kafki-tools-test")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, R::header_version(version))
        .expect("encode header");
    request.encode(&mut body, version).expect("encode request");
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .and_then(|()| stream.write_all(&body))
        .expect("send request");
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("response length");
    let mut response = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut response).expect("response body");
    let mut response = Bytes::from(response);
    let header = ResponseHeader::decode(&mut response, R::Response::header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, correlation_id);
    let decoded = R::Response::decode(&mut response, version).expect("decode response");
    assert_eq!(response.remaining(), 0);
    decoded
}

fn batch(index: usize) -> Bytes {
    let mut section = Vec::new();
    for record in 0..RECORDS_PER_BATCH {
        let value = format!("message {index}/{record} {}", "y".repeat(200));
        encode_record(
            &mut section,
            &NewRecord {
                offset_delta: record as i32,
                key: Some(b"k"),
                value: Some(value.as_bytes()),
                ..NewRecord::default()
            },
        );
    }
    let fields = BatchFields {
        last_offset_delta: RECORDS_PER_BATCH as i32 - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000,
        records_count: RECORDS_PER_BATCH as i32,
        ..BatchFields::default()
    };
    let mut bytes = Vec::new();
    let codec = if index.is_multiple_of(2) {
        Compression::Lz4
    } else {
        Compression::None
    };
    assemble_batch(&mut bytes, &fields, codec, &section);
    Bytes::from(bytes)
}

fn layout(admin: &str) -> Value {
    let output = kafki(&["layout", "--json", "--admin", admin]);
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("layout JSON")
}

#[test]
fn layout_and_dump_against_a_real_broker() {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("test base dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let data = dir.path().join("kafki-data");
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("127.0.0.1:{admin_port}");
    let mut broker = Broker::start(&data, port, admin_port);

    // Up when the admin listener answers with shard 0 pinned to CPU 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let report = layout(&admin);
        if report["broker"]["status"] == "layout" && report["broker"]["shards"][0]["cpu"] == 0 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "broker not up: {report:#}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["broker"]["shards"].as_array().map(Vec::len), Some(1));

    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to kafki");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let topic = TopicName(StrBytes::from_static_str(TOPIC));
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic.clone()))
        ]))
        .with_allow_auto_topic_creation(true);
    let mut correlation = 0;
    let created = (0..50).any(|_| {
        correlation += 1;
        let answer = call(&mut stream, 4, correlation, &metadata);
        let ok = answer
            .topics
            .first()
            .is_some_and(|topic| topic.error_code == 0 && !topic.partitions.is_empty());
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(created, "topic not created: {}", broker.log());
    for index in 0..BATCHES {
        correlation += 1;
        let produce = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(index)))])]);
        let answer = call(&mut stream, 3, correlation, &produce);
        let partition = &answer.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0, "produce {index}");
        assert_eq!(partition.base_offset, (index * RECORDS_PER_BATCH) as i64);
    }
    drop(stream);

    let report = layout(&admin);
    let partitions = report["broker"]["shards"][0]["partitions"]
        .as_array()
        .expect("partitions");
    assert!(
        partitions.contains(&Value::from(format!("{TOPIC}-0"))),
        "{partitions:?}"
    );
    broker.stop();

    let output = kafki(&["dump", "--verify", "--json", data.to_str().expect("utf-8")]);
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{lines}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    let batches: Vec<&Value> = events
        .iter()
        .filter(|event| {
            event["type"] == "batch"
                && event["path"]
                    .as_str()
                    .is_some_and(|path| path.contains(&format!("/{TOPIC}-0/")))
        })
        .collect();
    assert_eq!(batches.len(), BATCHES);
    for (index, batch) in batches.iter().enumerate() {
        assert_eq!(batch["base_offset"], index * RECORDS_PER_BATCH);
        assert_eq!(batch["crc_ok"], true);
        assert_eq!(
            batch["codec"],
            if index.is_multiple_of(2) {
                "lz4"
            } else {
                "none"
            }
        );
    }
    let summary = events
        .iter()
        .find(|event| {
            event["type"] == "partition_summary"
                && event["path"]
                    .as_str()
                    .is_some_and(|path| path.ends_with(&format!("{TOPIC}-0")))
        })
        .expect("partition summary");
    assert_eq!(summary["clean_shutdown_marker"], true, "{summary}");
    assert!(
        summary["segments"].as_u64() > Some(1),
        "8 KiB segments rolled: {summary}"
    );
    assert_eq!(summary["next_offset"], BATCHES * RECORDS_PER_BATCH);
    let totals = events.last().expect("summary");
    assert_eq!(totals["type"], "summary");
    assert_eq!(totals["damage"], 0);
}
