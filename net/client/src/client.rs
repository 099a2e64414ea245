//! The client: bootstrap, cluster metadata, one connection per broker, and the calls the
//! bench needs (CreateTopics, ListOffsets; more admin calls in [`crate::admin`] and
//! [`crate::group`]). Every call goes through one generic path, [`Client::send`]
//! (`Request` in, its `Response` out, at the version negotiated with that broker), or
//! [`Client::send_built`] for APIs whose fields differ by version, so new APIs need no new
//! plumbing.
//!
//! Invariants: at most one live connection per broker (a closed one is replaced on next
//! use, under a lock so two callers do not both connect); the metadata snapshot is replaced
//! whole, never edited in place.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafki_net::kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafki_net::kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsTopic,
};
use kafki_net::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafki_net::kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafki_net::kafka_protocol::protocol::{Request, StrBytes};
use kafki_net::kafka_protocol::ResponseError;

use crate::connection::{Connection, ConnectionConfig};
use crate::error::{ClientError, ClientResult, KafkaCode};
use crate::metadata::{ClusterMetadata, TopicMetadata};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses tried in order until one answers.
    pub bootstrap: Vec<String>,
    pub connection: ConnectionConfig,
}

impl ClientConfig {
    /// Defaults with the given bootstrap list (comma-separated `host:port`s).
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap
                .split(',')
                .map(str::trim)
                .filter(|address| !address.is_empty())
                .map(str::to_string)
                .collect(),
            connection: ConnectionConfig::default(),
        }
    }
}

/// Where ListOffsets should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The log end offset (the high watermark for consumers).
    Latest,
    /// The first offset whose timestamp is at or after this (ms since the epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn wire_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(timestamp_ms) => timestamp_ms,
        }
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    /// -1: the broker's default.
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

struct ClientInner {
    config: ClientConfig,
    metadata: Mutex<Arc<ClusterMetadata>>,
    connections: Mutex<HashMap<i32, Arc<Connection>>>,
    /// The connection opened to a bootstrap address, for requests any broker can answer
    /// until it is known which broker it is.
    bootstrap: Mutex<Option<Arc<Connection>>>,
    /// Serialises connecting, so concurrent callers share one new connection.
    connecting: tokio::sync::Mutex<()>,
}

/// A Kafka client. Cheap to clone (all clones share connections and metadata).
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("bootstrap", &self.inner.config.bootstrap)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    /// Connects to the first bootstrap address that answers and loads the broker list.
    pub async fn connect(config: ClientConfig) -> ClientResult<Self> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::NoBootstrap);
        }
        let client = Self {
            inner: Arc::new(ClientInner {
                config,
                metadata: Mutex::new(Arc::new(ClusterMetadata::default())),
                connections: Mutex::new(HashMap::new()),
                bootstrap: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        };
        client.refresh_metadata(&[]).await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current metadata snapshot.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        lock(&self.inner.metadata).clone()
    }

    /// Asks any broker for the brokers and for `topics` (none: brokers only), merges the
    /// answer into the snapshot and returns it. Does not create topics.
    pub async fn refresh_metadata(&self, topics: &[&str]) -> ClientResult<Arc<ClusterMetadata>> {
        self.request_metadata(Some(topics), false).await
    }

    /// Like [`Client::refresh_metadata`], but lets the broker create missing topics if its
    /// `auto.create.topics.enable` allows (what Kafka's console producer does). A topic
    /// just created may be listed without leaders, or with `LEADER_NOT_AVAILABLE`, for a
    /// moment: see [`Client::wait_for_topic`].
    pub async fn refresh_metadata_creating(
        &self,
        topics: &[&str],
    ) -> ClientResult<Arc<ClusterMetadata>> {
        self.request_metadata(Some(topics), true).await
    }

    /// Asks for the brokers and *every* topic; topics the answer does not list (deleted)
    /// leave the snapshot.
    pub async fn refresh_all_metadata(&self) -> ClientResult<Arc<ClusterMetadata>> {
        self.request_metadata(None, false).await
    }

    async fn request_metadata(
        &self,
        topics: Option<&[&str]>,
        auto_create: bool,
    ) -> ClientResult<Arc<ClusterMetadata>> {
        let topics: Option<Vec<MetadataRequestTopic>> = topics.map(|names| {
            names
                .iter()
                .map(|name| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
                })
                .collect()
        });
        let all_topics = topics.is_none();
        let connection = self.any_connection().await?;
        let version = connection.version_for(ApiKey::Metadata)?;
        // v0 has no "no topics" (empty means all): ask v1 or later only.
        if version < 1 {
            return Err(ClientError::UnsupportedApi {
                address: connection.address().to_string(),
                api_key: ApiKey::Metadata,
                ours_min: 1,
                ours_max: version,
                broker: "v0 only".into(),
            });
        }
        // Before v4 the broker decides alone (the field does not exist: leave its default).
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(auto_create || version < 4);
        let response = connection.send_at(&request, version).await?;
        let next = {
            let mut slot = lock(&self.inner.metadata);
            let next = Arc::new(if all_topics {
                slot.replaced(&response)
            } else {
                slot.merged(&response)
            });
            *slot = next.clone();
            next
        };
        self.adopt_bootstrap_connection(&next);
        Ok(next)
    }

    /// Once the broker list is known, the bootstrap connection becomes the connection of
    /// the broker at that address (so a one-node cluster uses one connection).
    fn adopt_bootstrap_connection(&self, metadata: &ClusterMetadata) {
        let mut bootstrap = lock(&self.inner.bootstrap);
        let Some(connection) = bootstrap.as_ref() else {
            return;
        };
        let Some(broker) = metadata
            .brokers
            .values()
            .find(|broker| broker.address() == connection.address())
        else {
            return;
        };
        let mut connections = lock(&self.inner.connections);
        if let std::collections::hash_map::Entry::Vacant(slot) = connections.entry(broker.node_id) {
            slot.insert(connection.clone());
            *bootstrap = None;
        }
    }

    /// A live connection to `broker_id`, connecting if needed.
    pub async fn connection(&self, broker_id: i32) -> ClientResult<Arc<Connection>> {
        if let Some(live) = self.live_connection(broker_id) {
            return Ok(live);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(live) = self.live_connection(broker_id) {
            return Ok(live);
        }
        let metadata = self.metadata();
        let Some(broker) = metadata.brokers.get(&broker_id) else {
            return Err(ClientError::UnknownBroker { broker_id });
        };
        let connection =
            Arc::new(Connection::connect(&broker.address(), &self.inner.config.connection).await?);
        lock(&self.inner.connections).insert(broker_id, connection.clone());
        Ok(connection)
    }

    fn live_connection(&self, broker_id: i32) -> Option<Arc<Connection>> {
        lock(&self.inner.connections)
            .get(&broker_id)
            .filter(|connection| !connection.is_closed())
            .cloned()
    }

    /// A live connection to some broker: an existing one, else a known broker, else the
    /// bootstrap addresses in order.
    pub async fn any_connection(&self) -> ClientResult<Arc<Connection>> {
        if let Some(live) = self.any_live_connection() {
            return Ok(live);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(live) = self.any_live_connection() {
            return Ok(live);
        }
        let mut candidates: Vec<String> = self
            .metadata()
            .brokers
            .values()
            .map(|broker| broker.address())
            .collect();
        candidates.extend(self.inner.config.bootstrap.iter().cloned());
        let mut last_error = ClientError::NoBootstrap;
        for address in candidates {
            match Connection::connect(&address, &self.inner.config.connection).await {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    *lock(&self.inner.bootstrap) = Some(connection.clone());
                    return Ok(connection);
                }
                Err(error) => {
                    tracing::debug!(%address, %error, "bootstrap address did not answer");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    fn any_live_connection(&self) -> Option<Arc<Connection>> {
        if let Some(bootstrap) = lock(&self.inner.bootstrap)
            .as_ref()
            .filter(|connection| !connection.is_closed())
        {
            return Some(bootstrap.clone());
        }
        lock(&self.inner.connections)
            .values()
            .find(|connection| !connection.is_closed())
            .cloned()
    }

    /// Sends `request` to `broker_id` at the negotiated version: the generic path.
    pub async fn send<R: Request>(&self, broker_id: i32, request: &R) -> ClientResult<R::Response> {
        self.connection(broker_id).await?.send(request).await
    }

    /// Sends `request` to any broker (for requests every broker answers or forwards).
    pub async fn send_any<R: Request>(&self, request: &R) -> ClientResult<R::Response> {
        self.any_connection().await?.send(request).await
    }

    /// Sends the request `build` makes for the version negotiated with `broker_id` (for
    /// APIs whose fields differ between versions).
    pub async fn send_built<R: Request>(
        &self,
        broker_id: i32,
        build: impl FnOnce(i16) -> R,
    ) -> ClientResult<R::Response> {
        self.connection(broker_id).await?.send_built(build).await
    }

    /// Sends `request` to the controller when known, else to any broker (KRaft brokers
    /// forward admin requests to the controller themselves).
    pub async fn send_to_controller<R: Request>(&self, request: &R) -> ClientResult<R::Response> {
        self.controller_connection().await?.send(request).await
    }

    /// [`Client::send_to_controller`] for a request built per version.
    pub async fn send_built_to_controller<R: Request>(
        &self,
        build: impl FnOnce(i16) -> R,
    ) -> ClientResult<R::Response> {
        self.controller_connection().await?.send_built(build).await
    }

    /// The controller's connection when it is known and reachable, else any broker's.
    pub async fn controller_connection(&self) -> ClientResult<Arc<Connection>> {
        if let Some(controller) = self.metadata().controller_id {
            if let Ok(connection) = self.connection(controller).await {
                return Ok(connection);
            }
        }
        self.any_connection().await
    }

    /// Creates topics; returns each topic's outcome (`TOPIC_ALREADY_EXISTS` is an error
    /// here: see [`Client::ensure_topic`] for create-if-missing).
    pub async fn create_topics(
        &self,
        topics: &[NewTopic],
        timeout: Duration,
    ) -> ClientResult<Vec<(String, ClientResult<()>)>> {
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(duration_ms_i32(timeout))
            .with_topics(
                topics
                    .iter()
                    .map(|topic| {
                        CreatableTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                            .with_num_partitions(topic.partitions)
                            .with_replication_factor(topic.replication_factor)
                            .with_configs(
                                topic
                                    .configs
                                    .iter()
                                    .map(|(name, value)| {
                                        kafki_net::kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                                            .with_name(StrBytes::from_string(name.clone()))
                                            .with_value(Some(StrBytes::from_string(value.clone())))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let response = self.send_to_controller(&request).await?;
        Ok(response
            .topics
            .iter()
            .map(|result| {
                let name = result.name.to_string();
                let outcome =
                    ClientError::check(result.error_code, result.error_message.as_deref(), || {
                        format!("creating topic {name}")
                    });
                (name, outcome)
            })
            .collect())
    }

    /// The topic's metadata once every partition has a leader, creating it with
    /// `partitions` partitions if it does not exist. An existing topic is used as it is
    /// (its partition count may differ: the caller can check).
    pub async fn ensure_topic(
        &self,
        name: &str,
        partitions: i32,
        timeout: Duration,
    ) -> ClientResult<TopicMetadata> {
        let deadline = tokio::time::Instant::now() + timeout;
        let metadata = self.refresh_metadata(&[name]).await?;
        if metadata.topic(name).is_none() {
            let topic = NewTopic {
                name: name.to_string(),
                partitions,
                replication_factor: -1,
                configs: Vec::new(),
            };
            for (_, outcome) in self.create_topics(&[topic], timeout).await? {
                match outcome {
                    Ok(()) => tracing::info!(topic = name, partitions, "created topic"),
                    Err(error)
                        if error
                            .kafka_code()
                            .is_some_and(|code| code.is(ResponseError::TopicAlreadyExists)) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_for_topic(name, remaining, false).await
    }

    /// The topic's metadata once every partition has a leader, asking again with a growing
    /// pause until `timeout`. With `auto_create` the broker may create a missing topic (as
    /// for Kafka's console producer); if it answers `UNKNOWN_TOPIC_OR_PARTITION` anyway
    /// (auto-creation disabled) that is returned at once.
    pub async fn wait_for_topic(
        &self,
        name: &str,
        timeout: Duration,
        auto_create: bool,
    ) -> ClientResult<TopicMetadata> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(20);
        // Apache Kafka may still answer the first produce to a new partition with
        // NOT_LEADER_OR_FOLLOWER after listing its leader: the producer retries those.
        loop {
            let metadata = if auto_create {
                self.refresh_metadata_creating(&[name]).await?
            } else {
                self.refresh_metadata(&[name]).await?
            };
            if let Some(topic) = metadata
                .topic(name)
                .filter(|topic| topic.all_partitions_led())
            {
                return Ok(topic.clone());
            }
            let topic_error = metadata.topic_errors.get(name).copied();
            if let Some(code) = topic_error
                .filter(|code| auto_create && code.is(ResponseError::UnknownTopicOrPartition))
            {
                return Err(ClientError::Kafka {
                    code,
                    context: format!("topic {name}"),
                    message: Some("it does not exist and the broker did not create it".into()),
                });
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(match topic_error {
                    Some(code) => ClientError::kafka(code, format!("waiting for topic {name}")),
                    None => ClientError::Invalid(format!(
                        "topic {name} has partitions without a leader after {timeout:?}"
                    )),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The offset `spec` names for each of `partitions` of `topic`, asking each leader.
    /// Retriable errors (a leader not elected yet, as Apache Kafka answers right after
    /// creating a topic) are retried with fresh metadata and a growing pause, up to the
    /// request timeout.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> ClientResult<BTreeMap<i32, i64>> {
        let deadline = tokio::time::Instant::now() + self.config().connection.request_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.list_offsets_once(topic, partitions, spec).await {
                Err(error)
                    if error.is_retriable() && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(topic, %error, "ListOffsets: retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    self.refresh_metadata(&[topic]).await?;
                }
                outcome => return outcome,
            }
        }
    }

    async fn list_offsets_once(
        &self,
        topic: &str,
        partitions: &[i32],
        spec: OffsetSpec,
    ) -> ClientResult<BTreeMap<i32, i64>> {
        let metadata = self.metadata();
        let Some(topic_metadata) = metadata.topic(topic) else {
            return Err(ClientError::UnknownTopic {
                topic: topic.to_string(),
            });
        };
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &partition in partitions {
            let leader = topic_metadata
                .partition(partition)
                .and_then(|p| p.leader_id)
                .ok_or_else(|| ClientError::NoLeader {
                    topic: topic.to_string(),
                    partition,
                })?;
            by_leader.entry(leader).or_default().push(partition);
        }
        let requests = by_leader.into_iter().map(|(leader, partitions)| {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&partition| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(partition)
                                    .with_timestamp(spec.wire_timestamp())
                            })
                            .collect(),
                    )]);
            async move { self.send(leader, &request).await }
        });
        let mut offsets = BTreeMap::new();
        for response in futures::future::join_all(requests).await {
            for topic_response in response?.topics {
                for partition in topic_response.partitions {
                    if let Some(code) = KafkaCode::from_code(partition.error_code) {
                        return Err(ClientError::kafka(
                            code,
                            format!("ListOffsets {topic}-{}", partition.partition_index),
                        ));
                    }
                    offsets.insert(partition.partition_index, partition.offset);
                }
            }
        }
        for &partition in partitions {
            if !offsets.contains_key(&partition) {
                return Err(ClientError::Protocol {
                    address: "ListOffsets".into(),
                    reason: format!("no answer for {topic}-{partition}"),
                });
            }
        }
        Ok(offsets)
    }
}

/// A duration as Kafka's i32 milliseconds (saturating).
pub(crate) fn duration_ms_i32(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_split_on_commas() {
        let config = ClientConfig::new(" a:1, b:2 ,,");
        assert_eq!(config.bootstrap, vec!["a:1", "b:2"]);
        assert!(ClientConfig::new("").bootstrap.is_empty());
    }

    #[test]
    fn offset_specs_use_kafkas_sentinels() {
        assert_eq!(OffsetSpec::Earliest.wire_timestamp(), -2);
        assert_eq!(OffsetSpec::Latest.wire_timestamp(), -1);
        assert_eq!(OffsetSpec::Timestamp(5).wire_timestamp(), 5);
        assert_eq!(duration_ms_i32(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[tokio::test]
    async fn no_bootstrap_is_an_error() {
        let result = Client::connect(ClientConfig::new("")).await;
        assert!(matches!(result, Err(ClientError::NoBootstrap)));
    }
}
