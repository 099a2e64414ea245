//! An in-process broker for handler tests: one shard on a glommio executor
//! in the test's thread, real storage in a temporary directory on the build's
//! disk (not tmpfs: the log uses O_DIRECT), and requests that go through the
//! same path as a connection's (encoded, decoded with the broker's API table,
//! dispatched by `handlers::handle`, the response frame decoded back, file
//! regions of a fetch read from their files). No sockets, no clients: handler
//! logic is tested from Rust, with any request shape a test can build.

#![allow(dead_code)]

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::MeshBuilder;
use kafki_broker::config::{BrokerConfig, KafkaSettings};
use kafki_broker::handlers::{self, Reply};
use kafki_broker::metadata::ClusterMetadata;
use kafki_broker::shard::{Shard, ShardTask, SharedState};
use kafki_broker::zerocopy::WirePart;
use kafki_net::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafki_net::kafka_protocol::protocol::{Decodable, StrBytes};

/// Runs an async test body on a glommio executor and waits for it.
pub fn run<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

/// One shard serving requests in-process.
pub struct InProcessBroker {
    pub shard: Rc<Shard>,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
    correlation: std::cell::Cell<i32>,
}

impl InProcessBroker {
    /// A broker with broker-level Kafka settings `settings`.
    pub async fn start(settings: &[(&str, &str)]) -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).expect("test base dir");
        let dir = tempfile::tempdir_in(&base).expect("tempdir");
        let data_dir = dir.path().to_path_buf();
        let mut kafka = KafkaSettings::default();
        for (name, value) in settings {
            kafka.set(name, value).expect("valid setting");
        }
        let local = "127.0.0.1:0".parse().expect("address");
        let config = BrokerConfig {
            listen: local,
            advertise_host: "127.0.0.1".into(),
            advertise_port: 9092,
            data_dir: data_dir.clone(),
            cores: vec![0],
            admin_listen: local,
            settings: kafki_broker::settings::BrokerSettings::resolve(&kafka),
            node_id: kafki_broker::config::node_id_of(&kafka).expect("valid node.id"),
            cluster_id: "in-process".into(),
            cluster: None,
            kafka,
        };
        let metadata = ClusterMetadata::load_or_create(&data_dir).expect("metadata");
        let mesh: MeshBuilder<ShardTask, _> = MeshBuilder::full(1, 64);
        let (senders, receivers) = mesh.join().await.expect("mesh");
        let shard = Shard::new(
            Arc::new(config),
            senders,
            Arc::new(metadata),
            Arc::new(SharedState::default()),
        );
        shard.start_inbox(receivers);
        Self {
            shard,
            data_dir,
            _dir: dir,
            correlation: std::cell::Cell::new(1),
        }
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1)
    /// and asserts it was created.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        use kafki_net::kafka_protocol::messages::create_topics_request::CreatableTopic;
        use kafki_net::kafka_protocol::messages::{
            CreateTopicsRequest, CreateTopicsResponse, TopicName,
        };
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000);
        let response: CreateTopicsResponse = self
            .call(RequestKind::CreateTopics(request), 5)
            .await
            .expect("answer");
        assert_eq!(response.topics[0].error_code, 0, "{response:?}");
    }

    /// Sends `body` as version `version` of its API and decodes the answer
    /// as `T` (the API's response type). `None` when the broker answers
    /// nothing (acks=0).
    pub async fn call<T: Decodable>(&self, body: RequestKind, version: i16) -> Option<T> {
        let api_key = api_key_of(&body);
        let correlation_id = self.correlation.get();
        self.correlation.set(correlation_id + 1);
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("in-process")));
        let frame = kafki_net::encode_request(&header, &body).expect("encodable request");
        let request = kafki_net::decode_request(frame.slice(4..), handlers::supported_apis())
            .expect("the broker decodes the request");
        let peer = "127.0.0.1:1".parse().expect("address");
        let response = match handlers::handle(self.shard.clone(), request, peer).await {
            Reply::Send(bytes) => bytes,
            Reply::Parts(parts) => gather(parts),
            Reply::Nothing => return None,
            Reply::Close => panic!("the broker closed the connection"),
        };
        let (answered, body) =
            kafki_net::decode_response_as::<T>(response.slice(4..), api_key, version)
                .expect("the response decodes");
        assert_eq!(answered.0, correlation_id, "correlation id echoed");
        Some(body)
    }
}

/// A response sent as parts, as the socket would receive it.
fn gather(parts: Vec<WirePart>) -> Bytes {
    let mut out = BytesMut::new();
    for part in parts {
        match part {
            WirePart::Bytes(bytes) => out.extend_from_slice(&bytes),
            WirePart::File {
                file,
                position,
                len,
            } => {
                let mut region = vec![0u8; len as usize];
                file.read_exact_at(&mut region, position)
                    .expect("read a file region of the response");
                out.extend_from_slice(&region);
            }
        }
    }
    out.freeze()
}

fn api_key_of(body: &RequestKind) -> ApiKey {
    match body {
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::ListOffsets(_) => ApiKey::ListOffsets,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        RequestKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        RequestKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        RequestKind::InitProducerId(_) => ApiKey::InitProducerId,
        RequestKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        RequestKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        RequestKind::EndTxn(_) => ApiKey::EndTxn,
        RequestKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        RequestKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        RequestKind::ListTransactions(_) => ApiKey::ListTransactions,
        RequestKind::WriteTxnMarkers(_) => ApiKey::WriteTxnMarkers,
        RequestKind::DescribeProducers(_) => ApiKey::DescribeProducers,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        other => panic!("add {other:?}'s API key to the harness"),
    }
}
