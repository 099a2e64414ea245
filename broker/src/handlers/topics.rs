//! Metadata, CreateTopics and DeleteTopics.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafki_net::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafki_net::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafki_net::kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafki_net::kafka_protocol::protocol::StrBytes;

use super::str_bytes;
use crate::config::{resolve_topic_setting, BrokerConfig, ValueSource};
use crate::errors::KafkaError;
use crate::metadata::{check_topic_name, ClusterMetadata, TopicMeta};
use crate::shard::Shard;

fn broker_entries(shard: &Shard, metadata: &ClusterMetadata) -> Vec<MetadataResponseBroker> {
    crate::routing::brokers(shard, metadata)
        .into_iter()
        .map(|node| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node.id))
                .with_host(str_bytes(&node.host))
                .with_port(node.port)
                .with_rack(node.rack.as_deref().map(str_bytes))
        })
        .collect()
}

fn topic_entry(
    shard: &Shard,
    metadata: &ClusterMetadata,
    topic: &TopicMeta,
    version: i16,
) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            let epoch = metadata.leader_epoch(&topic.name, index);
            let nodes = |ids: Vec<i32>| ids.into_iter().map(BrokerId).collect::<Vec<_>>();
            let replicas = nodes(crate::routing::replicas_of(
                shard,
                metadata,
                &topic.name,
                index,
            ));
            let isr = nodes(crate::routing::isr_of(shard, metadata, &topic.name, index));
            let offline = if version >= 5 {
                nodes(crate::routing::offline_replicas_of(
                    metadata,
                    &topic.name,
                    index,
                ))
            } else {
                Vec::new()
            };
            let entry = MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_epoch(if version >= 7 { epoch } else { -1 })
                .with_replica_nodes(replicas)
                .with_isr_nodes(isr)
                .with_offline_replicas(offline);
            match crate::routing::leader_of(shard, metadata, &topic.name, index) {
                Some(leader) => entry.with_leader_id(BrokerId(leader)),
                // Its leader is fenced or gone: no leader until one returns.
                None => entry
                    .with_error_code(ResponseError::LeaderNotAvailable.code())
                    .with_leader_id(BrokerId(-1)),
            }
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(if version >= 10 {
            topic.id
        } else {
            uuid::Uuid::nil()
        })
        .with_is_internal(version >= 1 && topic.internal)
        .with_partitions(partitions)
}

fn topic_error(name: Option<TopicName>, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_error_code(code)
}

/// Metadata: brokers, and the requested topics (all when `topics` is null),
/// auto-creating unknown ones when the client and the broker allow it.
pub async fn metadata(
    shard: &Rc<Shard>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let metadata = shard.metadata();
    let mut topics = Vec::new();
    match request.topics {
        None => topics.extend(
            metadata
                .topics
                .values()
                .map(|topic| topic_entry(shard, &metadata, topic, version)),
        ),
        // v0 has no null: an empty list means "all topics".
        Some(requested) if requested.is_empty() && version == 0 => topics.extend(
            metadata
                .topics
                .values()
                .map(|topic| topic_entry(shard, &metadata, topic, version)),
        ),
        Some(requested) => {
            let auto_create = shard.config.settings.auto_create_topics
                && (version < 4 || request.allow_auto_topic_creation);
            for wanted in requested {
                let found = match &wanted.name {
                    Some(name) => shard.metadata().topic(name).cloned(),
                    None => shard.metadata().topic_by_id(wanted.topic_id).cloned(),
                };
                match (found, wanted.name) {
                    (Some(topic), _) => {
                        topics.push(topic_entry(shard, &shard.metadata(), &topic, version))
                    }
                    (None, Some(name)) if auto_create => {
                        match shard
                            .create_topic(name.to_string(), -1, -1, BTreeMap::new(), false)
                            .await
                        {
                            Ok(topic) => {
                                topics.push(topic_entry(shard, &shard.metadata(), &topic, version))
                            }
                            // Another request created it meanwhile.
                            Err(KafkaError { code, .. })
                                if code == ResponseError::TopicAlreadyExists.code() =>
                            {
                                match shard.metadata().topic(&name).cloned() {
                                    Some(topic) => topics.push(topic_entry(
                                        shard,
                                        &shard.metadata(),
                                        &topic,
                                        version,
                                    )),
                                    None => topics.push(topic_error(
                                        Some(name),
                                        ResponseError::LeaderNotAvailable.code(),
                                    )),
                                }
                            }
                            Err(KafkaError { code, .. }) => {
                                topics.push(topic_error(Some(name), code))
                            }
                        }
                    }
                    (None, name) => {
                        let code = match &name {
                            Some(text) if check_topic_name(text).is_err() => {
                                ResponseError::InvalidTopicException
                            }
                            _ => ResponseError::UnknownTopicOrPartition,
                        };
                        topics.push(topic_error(name, code.code()))
                    }
                }
            }
        }
    }
    let metadata = shard.metadata();
    // Admin clients send CreateTopics and the like to the node named here.
    // Every node forwards them through the quorum, so it names itself (as
    // KRaft brokers name a live broker, never the quorum's controller):
    // a controller that just died would make clients wait for it.
    let controller = shard.config.node_id;
    MetadataResponse::default()
        .with_brokers(broker_entries(shard, &metadata))
        .with_cluster_id((version >= 2).then(|| str_bytes(&metadata.cluster_id)))
        .with_controller_id(BrokerId(if version >= 1 { controller } else { -1 }))
        .with_topics(topics)
}

/// CreateTopics with configs and validate-only.
pub async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    let mut seen = std::collections::HashSet::new();
    for topic in request.topics {
        let name = topic.name.to_string();
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        if !seen.insert(name.clone()) {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("Duplicate topic name in request."))),
            );
            continue;
        }
        if !topic.assignments.is_empty() {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                    .with_error_message(Some(str_bytes(
                        "Manual replica assignment is not supported yet.",
                    ))),
            );
            continue;
        }
        let mut configs = BTreeMap::new();
        for entry in &topic.configs {
            if let Some(value) = &entry.value {
                configs.insert(entry.name.to_string(), value.to_string());
            }
        }
        match shard
            .create_topic(
                name,
                topic.num_partitions,
                topic.replication_factor,
                configs,
                request.validate_only,
            )
            .await
        {
            Ok(created) => {
                if version >= 7 && !request.validate_only {
                    result = result.with_topic_id(created.id);
                }
                if version >= 5 {
                    result = result
                        .with_num_partitions(created.partitions)
                        .with_replication_factor(created.replication_factor())
                        .with_configs(Some(describe_topic_configs(&created, &shard.config)));
                }
            }
            Err(KafkaError { code, message }) => {
                result = result
                    .with_error_code(code)
                    .with_error_message(message.as_deref().map(str_bytes));
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn describe_topic_configs(topic: &TopicMeta, config: &BrokerConfig) -> Vec<CreatableTopicConfigs> {
    crate::config::SETTINGS
        .iter()
        .filter_map(|setting| {
            let name = setting.topic_name?;
            let (value, source) = resolve_topic_setting(setting, &topic.configs, &config.kafka);
            // DescribeConfigs sources: 1 topic, 4 static broker, 5 default.
            let source_code = match source {
                ValueSource::Topic => 1,
                ValueSource::StaticBroker => 4,
                ValueSource::Default => 5,
            };
            Some(
                CreatableTopicConfigs::default()
                    .with_name(str_bytes(name))
                    .with_value(value.map(str_bytes))
                    .with_config_source(source_code),
            )
        })
        .collect()
}

/// DeleteTopics by name (v1–5) or by name/id (v6).
pub async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|name| (Some(name.to_string()), uuid::Uuid::nil()))
        .collect();
    if version >= 6 {
        wanted = request
            .topics
            .iter()
            .map(|topic| {
                (
                    topic.name.as_ref().map(|name| name.to_string()),
                    topic.topic_id,
                )
            })
            .collect();
    }
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let metadata = shard.metadata();
        let found = match &name {
            Some(name) => metadata.topic(name).cloned(),
            None => metadata.topic_by_id(id).cloned(),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.as_deref().map(|name| TopicName(str_bytes(name))))
            .with_topic_id(id);
        let Some(topic) = found else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::UnknownTopicId
            };
            responses.push(result.with_error_code(code.code()));
            continue;
        };
        result = result.with_name(Some(TopicName(str_bytes(&topic.name))));
        if version >= 6 {
            result = result.with_topic_id(topic.id);
        }
        if ClusterMetadata::is_internal_topic(&topic.name) {
            let message = (version >= 5).then(|| {
                str_bytes(&format!(
                    "{} is an internal topic of the broker and cannot be deleted",
                    topic.name
                ))
            });
            responses.push(
                result
                    .with_error_code(ResponseError::InvalidTopicException.code())
                    .with_error_message(message),
            );
            continue;
        }
        let doomed = topic.name.clone();
        let outcome = shard
            .invoke_on(0, move |controller| async move {
                controller
                    .controller_change(|current| {
                        if current.topic(&doomed).is_none() {
                            return Err(KafkaError::new(
                                ResponseError::UnknownTopicOrPartition,
                                String::new(),
                            ));
                        }
                        Ok(vec![crate::metadata::MetadataRecord::TopicRemoved {
                            name: doomed.clone(),
                        }])
                    })
                    .await
                    .map(|_| ())
            })
            .await;
        match outcome {
            Ok(Ok(())) => responses.push(result),
            Ok(Err(KafkaError { code, message })) => {
                let message = message.filter(|_| version >= 5).map(StrBytes::from_string);
                responses.push(result.with_error_code(code).with_error_message(message))
            }
            Err(error) => {
                let message = (version >= 5).then(|| str_bytes(&error.to_string()));
                responses.push(
                    result
                        .with_error_code(ResponseError::UnknownServerError.code())
                        .with_error_message(message),
                )
            }
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
