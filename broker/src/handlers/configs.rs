//! DescribeConfigs (every known setting with its value, default and source),
//! AlterConfigs / IncrementalAlterConfigs (topic overrides, through the
//! controller; broker settings are static), and DescribeCluster.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as AlterResult;
use kafki_net::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafki_net::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafki_net::kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafki_net::kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use super::str_bytes;
use crate::config::{
    check_value, find_setting, resolve_topic_setting, SettingKind, ValueSource,
    DYNAMIC_BROKER_SETTINGS, SETTINGS,
};
use crate::errors::KafkaError;
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs `config_source` values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn config_type(kind: SettingKind) -> i8 {
    match kind {
        SettingKind::Bool => 1,
        SettingKind::String => 2,
        SettingKind::Int => 3,
        SettingKind::Long => 5,
        SettingKind::Double => 6,
    }
}

fn entry(
    name: &str,
    value: Option<&str>,
    source: i8,
    kind: SettingKind,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(value.map(str_bytes))
        .with_config_source(source);
    if version >= 3 {
        result = result.with_config_type(config_type(kind));
    }
    result
}

pub async fn describe_configs(
    shard: &Rc<Shard>,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let metadata = shard.metadata();
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let wanted = |key: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|wanted| wanted.as_str() == key))
            };
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => match metadata.topic(&name) {
                    Some(topic) => {
                        let configs = SETTINGS
                            .iter()
                            .filter_map(|setting| {
                                let key = setting.topic_name?;
                                if !wanted(key) {
                                    return None;
                                }
                                let (value, source) = resolve_topic_setting(
                                    setting,
                                    &topic.configs,
                                    &shard.config.kafka,
                                );
                                let source = match source {
                                    ValueSource::Topic => SOURCE_TOPIC,
                                    ValueSource::StaticBroker => SOURCE_STATIC_BROKER,
                                    ValueSource::Default => SOURCE_DEFAULT,
                                };
                                Some(entry(key, value, source, setting.kind, version))
                            })
                            .collect();
                        result = result.with_configs(configs);
                    }
                    None => {
                        result = result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "Topic {name} does not exist"
                            ))));
                    }
                },
                RESOURCE_BROKER => {
                    let own = metadata.dynamic_broker_configs.get(&name);
                    let every = metadata.dynamic_broker_configs.get("");
                    let configs = SETTINGS
                        .iter()
                        .filter(|setting| wanted(setting.broker_name))
                        .map(|setting| {
                            let key = setting.broker_name;
                            let dynamic = DYNAMIC_BROKER_SETTINGS.contains(&key);
                            let explicit = shard.config.kafka.explicit(key);
                            let (value, source) = match (
                                own.and_then(|configs| configs.get(key)),
                                every.and_then(|configs| configs.get(key)),
                                explicit,
                            ) {
                                (Some(value), _, _) => {
                                    (Some(value.as_str()), SOURCE_DYNAMIC_BROKER)
                                }
                                (None, Some(value), _) => {
                                    (Some(value.as_str()), SOURCE_DYNAMIC_DEFAULT_BROKER)
                                }
                                (None, None, Some(value)) => (Some(value), SOURCE_STATIC_BROKER),
                                (None, None, None) => (setting.default, SOURCE_DEFAULT),
                            };
                            entry(key, value, source, setting.kind, version)
                                .with_read_only(!dynamic)
                        })
                        .collect();
                    result = result.with_configs(configs);
                }
                _ => {
                    result = result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes("Unsupported resource type")));
                }
            }
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Validates and applies a topic's new override set through the controller.
async fn replace_topic_configs(
    shard: &Rc<Shard>,
    topic: String,
    change: impl Fn(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, KafkaError>
        + Send
        + 'static,
    validate_only: bool,
) -> Result<(), KafkaError> {
    let outcome = shard
        .invoke_on(0, move |controller| async move {
            controller
                .controller_change(|current| {
                    let Some(meta) = current.topic(&topic) else {
                        return Err(KafkaError::new(
                            ResponseError::UnknownTopicOrPartition,
                            format!("Topic {topic} does not exist"),
                        ));
                    };
                    let configs = change(&meta.configs)?;
                    for (key, value) in &configs {
                        let setting = find_setting(key)
                            .filter(|setting| setting.topic_name == Some(key.as_str()))
                            .ok_or(KafkaError::new(
                                ResponseError::InvalidConfig,
                                format!("Unknown topic config name: {key}"),
                            ))?;
                        check_value(setting, value).map_err(|error| {
                            KafkaError::new(ResponseError::InvalidConfig, error.to_string())
                        })?;
                    }
                    if validate_only {
                        return Ok(Vec::new());
                    }
                    let mut updated = meta.clone();
                    updated.configs = configs;
                    Ok(vec![crate::metadata::MetadataRecord::Topic(updated)])
                })
                .await
                .map(|_| ())
        })
        .await;
    outcome.unwrap_or_else(|error| {
        Err(KafkaError::new(
            ResponseError::UnknownServerError,
            error.to_string(),
        ))
    })
}

/// Validates and applies the new run-time settings of broker `resource`
/// (a node id, or `""` for every node) through the controller. Only the
/// replication throttles may change at run time.
async fn replace_broker_configs(
    shard: &Rc<Shard>,
    resource: String,
    change: impl Fn(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, KafkaError>
        + Send
        + 'static,
    validate_only: bool,
) -> Result<(), KafkaError> {
    if !resource.is_empty() && resource.parse::<i32>().is_err() {
        return Err(KafkaError::new(
            ResponseError::InvalidRequest,
            format!("{resource:?} is not a broker id"),
        ));
    }
    let outcome = shard
        .invoke_on(0, move |controller| async move {
            controller
                .controller_change(|current| {
                    let before = current
                        .dynamic_broker_configs
                        .get(&resource)
                        .cloned()
                        .unwrap_or_default();
                    let configs = change(&before)?;
                    for (key, value) in &configs {
                        if !DYNAMIC_BROKER_SETTINGS.contains(&key.as_str()) {
                            return Err(broker_static());
                        }
                        if value.trim().parse::<u64>().is_err() {
                            return Err(KafkaError::new(
                                ResponseError::InvalidConfig,
                                format!(
                                    "{key} must be a number of bytes per second, not {value:?}"
                                ),
                            ));
                        }
                    }
                    if validate_only || configs == before {
                        return Ok(Vec::new());
                    }
                    Ok(vec![crate::metadata::MetadataRecord::BrokerConfigs {
                        resource: resource.clone(),
                        configs,
                    }])
                })
                .await
                .map(|_| ())
        })
        .await;
    outcome.unwrap_or_else(|error| {
        Err(KafkaError::new(
            ResponseError::UnknownServerError,
            error.to_string(),
        ))
    })
}

fn broker_static() -> KafkaError {
    KafkaError::new(
        ResponseError::InvalidRequest,
        "Broker settings are static in Kafki (except the replication throttles): set them in the config file or with --set",
    )
}

pub async fn alter_configs(
    shard: &Rc<Shard>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for resource in request.resources {
        let result = AlterResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        // AlterConfigs replaces the whole set: entries without a value go.
        let replacement: BTreeMap<String, String> = resource
            .configs
            .iter()
            .filter_map(|config| {
                config
                    .value
                    .as_ref()
                    .map(|value| (config.name.to_string(), value.to_string()))
            })
            .collect();
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => {
                replace_topic_configs(
                    shard,
                    resource.resource_name.to_string(),
                    move |_| Ok(replacement.clone()),
                    request.validate_only,
                )
                .await
            }
            RESOURCE_BROKER => {
                replace_broker_configs(
                    shard,
                    resource.resource_name.to_string(),
                    move |_| Ok(replacement.clone()),
                    request.validate_only,
                )
                .await
            }
            _ => Err(KafkaError::new(
                ResponseError::InvalidRequest,
                "Unsupported resource type",
            )),
        };
        responses.push(match outcome {
            Ok(()) => result,
            Err(KafkaError { code, message }) => result
                .with_error_code(code)
                .with_error_message(message.as_deref().map(str_bytes)),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::new();
    for resource in request.resources {
        let result = IncrementalResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        let operations: Vec<(String, i8, Option<String>)> = resource
            .configs
            .iter()
            .map(|config| {
                (
                    config.name.to_string(),
                    config.config_operation,
                    config.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let incremental = move |current: &BTreeMap<String, String>| {
            let mut next = current.clone();
            for (name, operation, value) in operations.iter().cloned() {
                match (operation, value) {
                    (0, Some(value)) => {
                        next.insert(name, value);
                    }
                    (1, _) => {
                        next.remove(&name);
                    }
                    _ => {
                        return Err(KafkaError::new(
                            ResponseError::InvalidRequest,
                            format!("Operation {operation} on {name} is not supported"),
                        ))
                    }
                }
            }
            Ok(next)
        };
        let outcome = match resource.resource_type {
            RESOURCE_TOPIC => {
                replace_topic_configs(
                    shard,
                    resource.resource_name.to_string(),
                    incremental,
                    request.validate_only,
                )
                .await
            }
            RESOURCE_BROKER => {
                replace_broker_configs(
                    shard,
                    resource.resource_name.to_string(),
                    incremental,
                    request.validate_only,
                )
                .await
            }
            _ => Err(KafkaError::new(
                ResponseError::InvalidRequest,
                "Unsupported resource type",
            )),
        };
        responses.push(match outcome {
            Ok(()) => result,
            Err(KafkaError { code, message }) => result
                .with_error_code(code)
                .with_error_message(message.as_deref().map(str_bytes)),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub async fn describe_cluster(
    shard: &Rc<Shard>,
    _request: DescribeClusterRequest,
    _version: i16,
) -> DescribeClusterResponse {
    let metadata = shard.metadata();
    let brokers = crate::routing::brokers(shard, &metadata)
        .into_iter()
        .map(|node| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node.id))
                .with_host(str_bytes(&node.host))
                .with_port(node.port)
                .with_rack(node.rack.as_deref().map(str_bytes))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&metadata.cluster_id))
        .with_controller_id(BrokerId(crate::routing::controller_id(shard, &metadata)))
        .with_brokers(brokers)
}
