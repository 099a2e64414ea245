//! Topic and config administration on [`Client`]: DeleteTopics, CreatePartitions,
//! DescribeConfigs and config changes (IncrementalAlterConfigs, or AlterConfigs where a
//! broker lacks it). Each call is a typed wrapper over the generic send path; per-resource
//! outcomes come back as values, broker errors by their Kafka names.
//!
//! Invariant: a config change through the AlterConfigs fallback never drops a setting the
//! caller did not name. AlterConfigs replaces a resource's whole set of dynamic configs, so
//! the fallback first reads the set (DescribeConfigs), applies the changes to it and sends
//! the result.

use std::collections::BTreeMap;
use std::time::Duration;

use kafki_net::kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafki_net::kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafki_net::kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafki_net::kafka_protocol::messages::{
    alter_configs_request, incremental_alter_configs_request, AlterConfigsRequest, ApiKey,
    CreatePartitionsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, TopicName,
};
use kafki_net::kafka_protocol::protocol::StrBytes;

use crate::client::{duration_ms_i32, Client};
use crate::error::{ClientError, ClientResult};

/// What a config belongs to (Kafka's `ConfigResource.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Topic,
    Broker,
}

impl ResourceKind {
    fn wire_value(self) -> i8 {
        match self {
            ResourceKind::Topic => 2,
            ResourceKind::Broker => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Broker => "broker",
        }
    }
}

/// A topic or broker whose configs are read or changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigResource {
    pub kind: ResourceKind,
    /// The topic name, or the broker id as text (empty: the cluster-wide default).
    pub name: String,
}

impl ConfigResource {
    pub fn topic(name: &str) -> Self {
        Self {
            kind: ResourceKind::Topic,
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ConfigResource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.kind.name(), self.name)
    }
}

/// Where a config's value comes from (Kafka's `ConfigEntry.ConfigSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on this topic.
    DynamicTopic,
    DynamicBroker,
    DynamicDefaultBroker,
    /// From the broker's configuration file or command line.
    StaticBroker,
    /// Nobody set it.
    Default,
    Other(i8),
}

impl ConfigSource {
    pub fn from_wire(value: i8) -> Self {
        match value {
            1 => ConfigSource::DynamicTopic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            other => ConfigSource::Other(other),
        }
    }

    /// Kafka's name, as its tools print it.
    pub fn name(self) -> &'static str {
        match self {
            ConfigSource::DynamicTopic => "DYNAMIC_TOPIC_CONFIG",
            ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG",
            ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG",
            ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG",
            ConfigSource::Default => "DEFAULT_CONFIG",
            ConfigSource::Other(_) => "UNKNOWN",
        }
    }
}

/// One config of a resource, as DescribeConfigs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    /// `None` for sensitive configs and for configs without a value.
    pub value: Option<String>,
    pub source: ConfigSource,
    pub read_only: bool,
    pub sensitive: bool,
}

/// One change to a resource's configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set {
        name: String,
        value: String,
    },
    /// Back to the default (the broker's or Kafka's).
    Delete {
        name: String,
    },
}

impl ConfigChange {
    pub fn name(&self) -> &str {
        match self {
            ConfigChange::Set { name, .. } | ConfigChange::Delete { name } => name,
        }
    }
}

/// Which API a config change went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterMethod {
    Incremental,
    /// The whole dynamic set replaced (read, changed, written back): a broker without
    /// IncrementalAlterConfigs. Not atomic against a concurrent change by someone else.
    ReplaceAll,
}

impl Client {
    /// Deletes topics by name; returns each topic's outcome.
    pub async fn delete_topics(
        &self,
        topics: &[&str],
        timeout: Duration,
    ) -> ClientResult<Vec<(String, ClientResult<()>)>> {
        let names: Vec<TopicName> = topics
            .iter()
            .map(|name| TopicName(StrBytes::from_string(name.to_string())))
            .collect();
        let response = self
            .send_built_to_controller(|version| {
                let request =
                    DeleteTopicsRequest::default().with_timeout_ms(duration_ms_i32(timeout));
                // v6 names topics by name or id; earlier versions by name only.
                if version >= 6 {
                    request.with_topics(
                        names
                            .iter()
                            .map(|name| DeleteTopicState::default().with_name(Some(name.clone())))
                            .collect(),
                    )
                } else {
                    request.with_topic_names(names.clone())
                }
            })
            .await?;
        Ok(response
            .responses
            .iter()
            .map(|result| {
                let name = result
                    .name
                    .as_ref()
                    .map_or_else(|| result.topic_id.to_string(), |name| name.to_string());
                let outcome =
                    ClientError::check(result.error_code, result.error_message.as_deref(), || {
                        format!("deleting topic {name}")
                    });
                (name, outcome)
            })
            .collect())
    }

    /// Grows `topic` to `total_partitions` partitions.
    pub async fn create_partitions(
        &self,
        topic: &str,
        total_partitions: i32,
        timeout: Duration,
    ) -> ClientResult<()> {
        let request = CreatePartitionsRequest::default()
            .with_timeout_ms(duration_ms_i32(timeout))
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_count(total_partitions)
                // Null: the broker places the new partitions (an empty list would be a
                // manual assignment of none of them).
                .with_assignments(None)]);
        let response = self.send_to_controller(&request).await?;
        let context = || format!("adding partitions to {topic}");
        let Some(result) = response.results.first() else {
            return Err(ClientError::Protocol {
                address: "CreatePartitions".into(),
                reason: format!("no result for {topic}"),
            });
        };
        ClientError::check(result.error_code, result.error_message.as_deref(), context)
    }

    /// Every config of each resource (with its source), or that resource's error.
    /// Resources the broker did not answer for are errors too.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
    ) -> ClientResult<Vec<(ConfigResource, ClientResult<Vec<ConfigEntry>>)>> {
        let request = DescribeConfigsRequest::default().with_resources(
            resources
                .iter()
                .map(|resource| {
                    DescribeConfigsResource::default()
                        .with_resource_type(resource.kind.wire_value())
                        .with_resource_name(StrBytes::from_string(resource.name.clone()))
                        .with_configuration_keys(None)
                })
                .collect(),
        );
        let response = self.send_any(&request).await?;
        let mut answered: BTreeMap<(i8, String), ClientResult<Vec<ConfigEntry>>> = response
            .results
            .into_iter()
            .map(|result| {
                let key = (result.resource_type, result.resource_name.to_string());
                let outcome =
                    ClientError::check(result.error_code, result.error_message.as_deref(), || {
                        format!("describing configs of {}", result.resource_name.as_str())
                    })
                    .map(|()| {
                        result
                            .configs
                            .into_iter()
                            .map(|config| ConfigEntry {
                                name: config.name.to_string(),
                                value: config.value.map(|value| value.to_string()),
                                source: ConfigSource::from_wire(config.config_source),
                                read_only: config.read_only,
                                sensitive: config.is_sensitive,
                            })
                            .collect()
                    });
                (key, outcome)
            })
            .collect();
        Ok(resources
            .iter()
            .map(|resource| {
                let key = (resource.kind.wire_value(), resource.name.clone());
                let outcome = answered.remove(&key).unwrap_or_else(|| {
                    Err(ClientError::Protocol {
                        address: "DescribeConfigs".into(),
                        reason: format!("no answer for {resource}"),
                    })
                });
                (resource.clone(), outcome)
            })
            .collect())
    }

    /// The configs of one resource.
    pub async fn describe_resource_configs(
        &self,
        resource: &ConfigResource,
    ) -> ClientResult<Vec<ConfigEntry>> {
        self.describe_configs(std::slice::from_ref(resource))
            .await?
            .pop()
            .map_or_else(
                || {
                    Err(ClientError::Protocol {
                        address: "DescribeConfigs".into(),
                        reason: format!("no answer for {resource}"),
                    })
                },
                |(_, outcome)| outcome,
            )
    }

    /// Applies `changes` to one resource's configs: IncrementalAlterConfigs when the broker
    /// has it, else AlterConfigs with the whole dynamic set (see the module invariant).
    pub async fn alter_configs(
        &self,
        resource: &ConfigResource,
        changes: &[ConfigChange],
    ) -> ClientResult<AlterMethod> {
        let connection = self.controller_connection().await?;
        let context = || format!("altering configs of {resource}");
        if connection
            .version_for(ApiKey::IncrementalAlterConfigs)
            .is_ok()
        {
            let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(resource.kind.wire_value())
                    .with_resource_name(StrBytes::from_string(resource.name.clone()))
                    .with_configs(changes.iter().map(incremental_config).collect()),
            ]);
            let response = connection.send(&request).await?;
            let result = response
                .responses
                .first()
                .ok_or_else(|| ClientError::Protocol {
                    address: connection.address().to_string(),
                    reason: format!("IncrementalAlterConfigs: no answer for {resource}"),
                })?;
            ClientError::check(result.error_code, result.error_message.as_deref(), context)?;
            return Ok(AlterMethod::Incremental);
        }
        let current = self.describe_resource_configs(resource).await?;
        let wanted = replaced_dynamic_set(resource.kind, &current, changes);
        let request = AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(resource.kind.wire_value())
                .with_resource_name(StrBytes::from_string(resource.name.clone()))
                .with_configs(
                    wanted
                        .into_iter()
                        .map(|(name, value)| {
                            alter_configs_request::AlterableConfig::default()
                                .with_name(StrBytes::from_string(name))
                                .with_value(Some(StrBytes::from_string(value)))
                        })
                        .collect(),
                ),
        ]);
        let response = connection.send(&request).await?;
        let result = response
            .responses
            .first()
            .ok_or_else(|| ClientError::Protocol {
                address: connection.address().to_string(),
                reason: format!("AlterConfigs: no answer for {resource}"),
            })?;
        ClientError::check(result.error_code, result.error_message.as_deref(), context)?;
        Ok(AlterMethod::ReplaceAll)
    }
}

/// Kafka's `AlterConfigOp.OpType`: 0 SET, 1 DELETE.
fn incremental_config(change: &ConfigChange) -> incremental_alter_configs_request::AlterableConfig {
    let config = incremental_alter_configs_request::AlterableConfig::default()
        .with_name(StrBytes::from_string(change.name().to_string()));
    match change {
        ConfigChange::Set { value, .. } => config
            .with_config_operation(0)
            .with_value(Some(StrBytes::from_string(value.clone()))),
        ConfigChange::Delete { .. } => config.with_config_operation(1).with_value(None),
    }
}

/// The dynamic configs a resource should have after `changes`, from what it has now:
/// what AlterConfigs must send (it replaces the whole set).
pub fn replaced_dynamic_set(
    kind: ResourceKind,
    current: &[ConfigEntry],
    changes: &[ConfigChange],
) -> BTreeMap<String, String> {
    let dynamic_source = match kind {
        ResourceKind::Topic => ConfigSource::DynamicTopic,
        ResourceKind::Broker => ConfigSource::DynamicBroker,
    };
    let mut wanted: BTreeMap<String, String> = current
        .iter()
        .filter(|entry| entry.source == dynamic_source && !entry.sensitive)
        .filter_map(|entry| Some((entry.name.clone(), entry.value.clone()?)))
        .collect();
    for change in changes {
        match change {
            ConfigChange::Set { name, value } => {
                wanted.insert(name.clone(), value.clone());
            }
            ConfigChange::Delete { name } => {
                wanted.remove(name);
            }
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            source,
            read_only: false,
            sensitive: false,
        }
    }

    #[test]
    fn the_fallback_keeps_settings_it_was_not_asked_to_change() {
        let current = [
            entry("retention.ms", "1000", ConfigSource::DynamicTopic),
            entry("cleanup.policy", "compact", ConfigSource::DynamicTopic),
            entry("segment.bytes", "1073741824", ConfigSource::Default),
            entry("max.message.bytes", "1048588", ConfigSource::StaticBroker),
        ];
        let changes = [
            ConfigChange::Set {
                name: "retention.ms".into(),
                value: "5000".into(),
            },
            ConfigChange::Delete {
                name: "cleanup.policy".into(),
            },
            ConfigChange::Set {
                name: "flush.ms".into(),
                value: "10".into(),
            },
        ];
        let wanted = replaced_dynamic_set(ResourceKind::Topic, &current, &changes);
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            vec![
                ("flush.ms".to_string(), "10".to_string()),
                ("retention.ms".to_string(), "5000".to_string()),
            ],
            "defaults and broker settings are not copied onto the topic"
        );
    }

    #[test]
    fn config_sources_and_operations_use_kafkas_numbers() {
        assert_eq!(ConfigSource::from_wire(1), ConfigSource::DynamicTopic);
        assert_eq!(ConfigSource::from_wire(5).name(), "DEFAULT_CONFIG");
        assert_eq!(ConfigSource::from_wire(42), ConfigSource::Other(42));
        assert_eq!(ResourceKind::Topic.wire_value(), 2);
        assert_eq!(ResourceKind::Broker.wire_value(), 4);
        let delete = incremental_config(&ConfigChange::Delete { name: "x".into() });
        assert_eq!((delete.config_operation, delete.value), (1, None));
        let set = incremental_config(&ConfigChange::Set {
            name: "x".into(),
            value: "1".into(),
        });
        assert_eq!(set.config_operation, 0);
        assert_eq!(ConfigResource::topic("t").to_string(), "topic t");
    }
}
