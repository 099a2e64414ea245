//! The client against a real `kafki serve` (spawned per test on free ports; see
//! `kafki_client::testing`): topic creation, produce with every acks and compression,
//! fetch back byte for byte, ListOffsets, pipelining order, errors by Kafka name, topic and
//! config admin, and consumer groups (two members rebalancing, commits, describe, leave).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafki_client::testing::{kafki_binary, KafkiServer};
use std::collections::BTreeMap;

use kafki_client::{
    Acks, AlterMethod, Client, ClientConfig, ClientError, CommitIdentity, Compression,
    ConfigChange, ConfigResource, ConfigSource, Consumer, Delivery, FetchConfig, GroupConfig,
    GroupMember, NewTopic, OffsetSpec, Producer, ProducerConfig, ProducerRecord, StartOffset,
};

/// The broker a test talks to: a `kafki serve` of its own, or (with
/// `KAFKI_CLIENT_TEST_BOOTSTRAP=host:port`) an already running broker such as Apache Kafka
/// from `scripts/peers.sh`, with topic names made unique per run.
struct TestBroker {
    bootstrap: String,
    external: bool,
    suffix: String,
    _server: Option<(KafkiServer, tempfile::TempDir)>,
}

impl TestBroker {
    fn topic(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }
}

/// A broker for one test, or `None` (with the reason printed) when no binary exists.
fn broker(name: &str) -> Option<TestBroker> {
    // RUST_LOG=kafki_client=debug shows the client's decisions (retries, reconnects).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if let Ok(bootstrap) = std::env::var("KAFKI_CLIENT_TEST_BOOTSTRAP") {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        return Some(TestBroker {
            bootstrap,
            external: true,
            suffix: format!("-{nanos}"),
            _server: None,
        });
    }
    let binary = match kafki_binary() {
        Ok(binary) => binary,
        Err(reason) => {
            println!("SKIPPED {name}: no kafki binary to test against: {reason}");
            eprintln!("SKIPPED {name}: no kafki binary to test against: {reason}");
            return None;
        }
    };
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("tmp dir");
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    // Groups form at once instead of after Kafka's 3 s initial rebalance delay.
    let server = KafkiServer::start_with(
        &binary,
        dir.path(),
        &["--set", "group.initial.rebalance.delay.ms=0"],
    )
    .expect("kafki serve starts");
    Some(TestBroker {
        bootstrap: server.bootstrap.clone(),
        external: false,
        suffix: String::new(),
        _server: Some((server, dir)),
    })
}

async fn client(broker: &TestBroker) -> Client {
    Client::connect(ClientConfig::new(&broker.bootstrap))
        .await
        .expect("client connects")
}

type Deliveries = Arc<Mutex<Vec<(i32, Option<i64>, u32, Option<String>, Vec<u64>)>>>;

fn recording_listener() -> (Deliveries, Box<dyn kafki_client::DeliveryListener>) {
    let deliveries: Deliveries = Arc::default();
    let sink = deliveries.clone();
    let listener = move |delivery: &Delivery<'_>| {
        sink.lock().expect("lock").push((
            delivery.partition,
            delivery.base_offset,
            delivery.record_count,
            delivery.error.map(|e| e.to_string()),
            delivery.record_latencies_us().collect(),
        ));
    };
    (deliveries, Box::new(listener))
}

/// Reads every record of `topic` from the beginning up to the end offsets, as
/// `(partition, offset, key, value)`.
async fn read_all(
    client: &Client,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
    let end = client
        .list_offsets(topic, partitions, OffsetSpec::Latest)
        .await
        .expect("end offsets");
    let mut consumer = Consumer::new(
        client.clone(),
        FetchConfig {
            max_wait: Duration::from_millis(100),
            partition_max_bytes: 64 * 1024,
            ..FetchConfig::default()
        },
    );
    consumer
        .assign(topic, partitions, StartOffset::Earliest)
        .await
        .expect("assign");
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let done = consumer
            .positions()
            .iter()
            .all(|(_, partition, position)| *position >= end[partition]);
        if done {
            break;
        }
        for round in consumer.poll().await.expect("poll") {
            for fetched in round.partitions {
                for batch in fetched.batches() {
                    let batch = batch.expect("valid batch");
                    batch
                        .for_each_record(fetched.fetch_offset, 1 << 24, |offset, record| {
                            seen.push((
                                fetched.partition,
                                offset,
                                record.key.unwrap_or_default().to_vec(),
                                record.value.unwrap_or_default().to_vec(),
                            ));
                        })
                        .expect("records decode");
                }
            }
        }
    }
    seen
}

#[tokio::test]
async fn produce_and_fetch_back_with_every_acks_and_compression() {
    let Some(broker) = broker("produce_and_fetch_back") else {
        return;
    };
    let client = client(&broker).await;
    let topic_name = broker.topic("roundtrip");
    let roundtrip = topic_name.as_str();
    let topic = client
        .ensure_topic(roundtrip, 3, Duration::from_secs(10))
        .await
        .expect("topic created");
    assert_eq!(topic.partitions.len(), 3);
    let again = client
        .ensure_topic(roundtrip, 3, Duration::from_secs(10))
        .await
        .expect("existing topic is fine");
    assert_eq!(again.topic_id, topic.topic_id);

    let mut expected: Vec<(i32, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut retries = 0;
    let combinations = [
        (Acks::All, Compression::None),
        (Acks::Leader, Compression::Gzip),
        (Acks::All, Compression::Snappy),
        (Acks::Leader, Compression::Lz4),
        (Acks::All, Compression::Zstd),
        (Acks::None, Compression::None),
    ];
    for (round, (acks, compression)) in combinations.into_iter().enumerate() {
        let (deliveries, listener) = recording_listener();
        let producer = Producer::new(
            client.clone(),
            ProducerConfig {
                acks,
                compression,
                batch_bytes: 4096,
                linger: Duration::from_millis(2),
                track_record_times: true,
                ..ProducerConfig::default()
            },
            Some(listener),
        )
        .expect("producer");
        let partitions = producer.partitions(roundtrip).await.expect("partitions");
        for index in 0..300u32 {
            let partition = partitions[(index % 3) as usize];
            let key = format!("k{round}-{index}").into_bytes();
            let value =
                format!("v{round}-{index}-{}", "x".repeat((index % 50) as usize)).into_bytes();
            producer
                .send(
                    partition,
                    ProducerRecord {
                        key: Some(&key),
                        value: Some(&value),
                        headers: &[],
                    },
                )
                .await
                .expect("send");
            expected.push(((index % 3) as i32, key, value));
        }
        let stats = producer.close().await;
        retries += stats.retries;
        assert_eq!(stats.records_acknowledged, 300, "{acks:?} {compression}");
        assert_eq!(stats.records_failed, 0);
        let deliveries = deliveries.lock().expect("lock");
        let delivered: u32 = deliveries.iter().map(|d| d.2).sum();
        assert_eq!(delivered, 300);
        for (_, base_offset, count, error, latencies) in deliveries.iter() {
            assert!(error.is_none(), "{error:?}");
            assert_eq!(base_offset.is_some(), acks != Acks::None);
            assert_eq!(latencies.len(), *count as usize, "one latency per record");
        }
    }

    // acks=0 gets no answer: wait until the broker appended the last round.
    for _ in 0..100 {
        let end = client
            .list_offsets(roundtrip, &[0, 1, 2], OffsetSpec::Latest)
            .await
            .expect("end offsets");
        if end.values().sum::<i64>() >= expected.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = read_all(&client, roundtrip, &[0, 1, 2]).await;
    assert_eq!(seen.len(), expected.len(), "every record comes back once");
    for partition in 0..3 {
        let produced: Vec<(&Vec<u8>, &Vec<u8>)> = expected
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, k, v)| (k, v))
            .collect();
        let mut consumed: Vec<(&Vec<u8>, &Vec<u8>)> = seen
            .iter()
            .filter(|(p, _, _, _)| *p == partition)
            .map(|(_, _, k, v)| (k, v))
            .collect();
        if retries == 0 {
            assert!(
                consumed == produced,
                "partition {partition}: same records in the same order"
            );
        } else {
            // Without idempotence a retried batch may land after later ones (as with
            // Kafka's producer); a fresh topic on Apache Kafka can refuse the first
            // batches with a retriable error.
            println!("{retries} retries: checking partition {partition} without order");
            let mut produced = produced;
            produced.sort();
            consumed.sort();
            assert!(consumed == produced, "partition {partition}: same records");
        }
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|(p, ..)| *p == partition)
            .map(|(_, offset, ..)| *offset)
            .collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }
    let earliest = client
        .list_offsets(roundtrip, &[0, 1, 2], OffsetSpec::Earliest)
        .await
        .expect("earliest");
    assert!(earliest.values().all(|&offset| offset == 0));
}

#[tokio::test]
async fn pipelined_small_batches_keep_partition_order() {
    let Some(broker) = broker("pipelined_small_batches") else {
        return;
    };
    let client = client(&broker).await;
    let topic_name = broker.topic("ordered");
    let ordered = topic_name.as_str();
    client
        .ensure_topic(ordered, 1, Duration::from_secs(10))
        .await
        .expect("topic");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 512,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
        None,
    )
    .expect("producer");
    let partition = producer.partitions(ordered).await.expect("partitions")[0];
    for index in 0..5000u32 {
        let value = index.to_be_bytes();
        producer
            .send(
                partition,
                ProducerRecord {
                    value: Some(&value),
                    ..ProducerRecord::default()
                },
            )
            .await
            .expect("send");
    }
    let stats = producer.close().await;
    assert!(
        stats.requests > 20,
        "small batches: many requests ({})",
        stats.requests
    );
    let seen = read_all(&client, ordered, &[0]).await;
    let mut values: Vec<u32> = seen
        .iter()
        .map(|(_, _, _, value)| u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
        .collect();
    if stats.retries > 0 {
        // A retried batch may land after later ones (no idempotence): order is only
        // promised without retries.
        println!("{} retries: checking without order", stats.retries);
        values.sort_unstable();
    }
    let first_wrong = values
        .iter()
        .enumerate()
        .find(|(index, value)| **value != *index as u32);
    assert!(
        values == (0..5000).collect::<Vec<_>>(),
        "every record once, in order: {} records read, {} requests, {} retries, first wrong \
         (position, value): {first_wrong:?}",
        values.len(),
        stats.requests,
        stats.retries
    );
}

#[tokio::test]
async fn broker_errors_are_surfaced_by_kafka_name() {
    let Some(broker) = broker("broker_errors") else {
        return;
    };
    let client = client(&broker).await;
    let topic_name = broker.topic("exists");
    let exists = topic_name.as_str();
    client
        .ensure_topic(exists, 1, Duration::from_secs(10))
        .await
        .expect("topic");
    let outcomes = client
        .create_topics(
            &[NewTopic {
                name: exists.to_string(),
                partitions: 1,
                replication_factor: -1,
                configs: Vec::new(),
            }],
            Duration::from_secs(5),
        )
        .await
        .expect("answered");
    let error = outcomes[0].1.clone().expect_err("already exists");
    assert!(
        error.to_string().contains("TOPIC_ALREADY_EXISTS (36)"),
        "{error}"
    );

    // A record above max.message.bytes (1 MiB by default) fails for good, not retried.
    let (deliveries, listener) = recording_listener();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            batch_bytes: 4 << 20,
            max_request_bytes: 8 << 20,
            ..ProducerConfig::default()
        },
        Some(listener),
    )
    .expect("producer");
    let partition = producer.partitions(exists).await.expect("partitions")[0];
    let big = vec![0u8; 2 << 20];
    producer
        .send(
            partition,
            ProducerRecord {
                value: Some(&big),
                ..ProducerRecord::default()
            },
        )
        .await
        .expect("handed over");
    let flushed = producer.flush().await;
    assert!(flushed.is_err());
    let error = deliveries.lock().expect("lock")[0]
        .3
        .clone()
        .expect("failed");
    assert!(error.contains("MESSAGE_TOO_LARGE (10)"), "{error}");
    assert_eq!(producer.stats().retries, 0, "not retriable");

    let missing = client
        .list_offsets("no-such-topic", &[0], OffsetSpec::Latest)
        .await;
    assert!(
        matches!(missing, Err(ClientError::UnknownTopic { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn negotiates_versions_with_kafki() {
    let Some(broker) = broker("negotiates_versions") else {
        return;
    };
    if broker.external {
        println!("SKIPPED negotiates_versions_with_kafki: checks Kafki's own version table");
        return;
    }
    let client = client(&broker).await;
    let connection = client.any_connection().await.expect("connection");
    use kafki_net::kafka_protocol::messages::ApiKey;
    // Kafki advertises Produce v0-11 and Fetch v4-12: the client uses the top of each.
    assert_eq!(connection.version_for(ApiKey::Produce).ok(), Some(11));
    assert_eq!(connection.version_for(ApiKey::Fetch).ok(), Some(12));
    assert!(connection
        .version_for(ApiKey::Metadata)
        .is_ok_and(|v| v >= 1));
}

#[tokio::test]
async fn topic_and_config_admin_round_trip() {
    let Some(broker) = broker("topic_and_config_admin") else {
        return;
    };
    let client = client(&broker).await;
    let topic_name = broker.topic("admin");
    let topic = topic_name.as_str();
    let created = client
        .create_topics(
            &[NewTopic {
                name: topic.to_string(),
                partitions: 1,
                replication_factor: -1,
                configs: vec![("retention.ms".into(), "3600000".into())],
            }],
            Duration::from_secs(10),
        )
        .await
        .expect("answered");
    assert!(created[0].1.is_ok(), "{created:?}");
    client
        .wait_for_topic(topic, Duration::from_secs(10), false)
        .await
        .expect("topic led");

    let resource = ConfigResource::topic(topic);
    let set_on_topic = |configs: &[kafki_client::ConfigEntry]| -> BTreeMap<String, String> {
        configs
            .iter()
            .filter(|entry| entry.source == ConfigSource::DynamicTopic)
            .filter_map(|entry| Some((entry.name.clone(), entry.value.clone()?)))
            .collect()
    };
    let configs = client
        .describe_resource_configs(&resource)
        .await
        .expect("described");
    assert_eq!(
        set_on_topic(&configs)
            .get("retention.ms")
            .map(String::as_str),
        Some("3600000")
    );
    assert!(
        configs.iter().any(|entry| entry.name == "segment.bytes"),
        "defaults are listed too"
    );
    let method = client
        .alter_configs(
            &resource,
            &[
                ConfigChange::Set {
                    name: "max.message.bytes".into(),
                    value: "2048".into(),
                },
                ConfigChange::Delete {
                    name: "retention.ms".into(),
                },
            ],
        )
        .await
        .expect("altered");
    assert_eq!(method, AlterMethod::Incremental);
    let after = set_on_topic(
        &client
            .describe_resource_configs(&resource)
            .await
            .expect("described"),
    );
    assert_eq!(
        after.get("max.message.bytes").map(String::as_str),
        Some("2048")
    );
    assert!(!after.contains_key("retention.ms"), "{after:?}");

    client
        .create_partitions(topic, 3, Duration::from_secs(10))
        .await
        .expect("grown");
    let grown = client
        .wait_for_topic(topic, Duration::from_secs(10), false)
        .await
        .expect("led");
    assert_eq!(grown.partitions.len(), 3);

    let deleted = client
        .delete_topics(&[topic], Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].1.is_ok(), "{deleted:?}");
    let all = client.refresh_all_metadata().await.expect("metadata");
    assert!(
        all.topic(topic).is_none(),
        "deleted topics leave the snapshot"
    );
    let again = client
        .delete_topics(&[topic], Duration::from_secs(10))
        .await
        .expect("answered");
    let error = again[0].1.clone().expect_err("already gone");
    assert!(
        error.to_string().contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{error}"
    );
}

fn test_group_config(group: &str) -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(20),
        heartbeat_interval: Duration::from_millis(200),
        ..GroupConfig::new(group)
    }
}

/// Rejoins `member` once its heartbeat reports the rebalance another member started.
async fn follow_rebalance(member: &mut GroupMember) -> Vec<(String, i32)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !member.rebalance_needed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance seen by heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let assignment = member.rejoin().await.expect("rejoins");
    assignment
        .iter()
        .map(|(topic, partition)| (topic.to_string(), partition))
        .collect()
}

#[tokio::test]
async fn group_members_rebalance_commit_and_leave() {
    let Some(broker) = broker("group_members") else {
        return;
    };
    let client = client(&broker).await;
    let topic_name = broker.topic("grouped");
    let topic = topic_name.as_str();
    let group_name = broker.topic("members");
    let group = group_name.as_str();
    client
        .ensure_topic(topic, 4, Duration::from_secs(10))
        .await
        .expect("topic");

    let mut first = GroupMember::join(client.clone(), test_group_config(group), &[topic])
        .await
        .expect("first member joins");
    assert!(first.generation().is_leader());
    assert_eq!(
        first.assignment().len(),
        4,
        "alone, it owns every partition"
    );
    assert_eq!(first.generation().protocol, "range");

    // A second member: its join completes once the first one rejoined.
    let second_client = Client::connect(ClientConfig::new(&broker.bootstrap))
        .await
        .expect("second client");
    let (second_group, second_topic) = (group.to_string(), topic.to_string());
    let second_join = tokio::spawn(async move {
        GroupMember::join(
            second_client,
            test_group_config(&second_group),
            &[&second_topic],
        )
        .await
    });
    let first_partitions = follow_rebalance(&mut first).await;
    let second = second_join.await.expect("task").expect("second joins");
    let second_partitions: Vec<(String, i32)> = second
        .assignment()
        .iter()
        .map(|(topic, partition)| (topic.to_string(), partition))
        .collect();
    assert_eq!(
        first.generation().generation_id,
        second.generation().generation_id
    );
    assert_eq!(first_partitions.len(), 2, "{first_partitions:?}");
    assert_eq!(second_partitions.len(), 2, "{second_partitions:?}");
    let mut all: Vec<_> = first_partitions.iter().chain(&second_partitions).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "range splits the partitions between them");

    // Commits as members; read back by anyone.
    let offsets: BTreeMap<(String, i32), i64> =
        first_partitions.iter().map(|tp| (tp.clone(), 7)).collect();
    first.commit(&offsets).await.expect("member commit");
    let committed = first.committed().await.expect("committed");
    assert_eq!(
        committed.values().map(|c| c.offset).collect::<Vec<_>>(),
        vec![7, 7]
    );
    // An admin commit is refused while the group has members.
    let refused = client
        .commit_offsets(group, &CommitIdentity::outside_the_group(), &offsets)
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let described = client.describe_group(group).await.expect("described");
    assert_eq!(described.state, "Stable");
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(described.protocol, "range");
    assert_eq!(described.members.len(), 2);
    assert!(described
        .members
        .iter()
        .all(|member| member.assignment.as_ref().is_some_and(|a| a.len() == 2)));
    let listed = client.list_groups().await.expect("listed");
    assert!(
        listed.iter().any(|listing| listing.group_id == group),
        "{listed:?}"
    );

    // The second member leaves: the first gets everything back.
    second.leave().await.expect("leaves");
    let back = follow_rebalance(&mut first).await;
    assert_eq!(back.len(), 4, "{back:?}");
    first.leave().await.expect("leaves");
    let empty = client.describe_group(group).await.expect("described");
    assert_eq!(empty.state, "Empty");
    assert!(empty.members.is_empty());

    // Now an admin commit is accepted (what reset-offsets does).
    let reset: BTreeMap<(String, i32), i64> = [((topic.to_string(), 0), 1)].into();
    client
        .commit_offsets(group, &CommitIdentity::outside_the_group(), &reset)
        .await
        .expect("admin commit to an empty group");
    let committed = client
        .committed_offsets(group, None)
        .await
        .expect("committed");
    assert_eq!(committed[&(topic.to_string(), 0)].offset, 1);
}
