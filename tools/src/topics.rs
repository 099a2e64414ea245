//! `kafki topics create|list|describe|delete|alter-config|add-partitions`: topic admin over
//! the Kafka protocol, against any broker, with the flags and output of Kafka's
//! `kafka-topics.sh` / `kafka-configs.sh` where they have one.
//!
//! Every broker error ends the tool with exit 1 and the error's Kafka name on stderr
//! (`TOPIC_ALREADY_EXISTS`, `UNKNOWN_TOPIC_OR_PARTITION`, `INVALID_CONFIG`, ...).

use std::collections::BTreeMap;

use kafki_client::kafki_net::kafka_protocol::ResponseError;
use kafki_client::{Client, ConfigChange, ConfigResource, ConfigSource, NewTopic, TopicMetadata};

use crate::kafka_tool::{
    existing_topic, parse_key_value, print_stdout, run_async, BrokerArgs, ToolError,
};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topic names, one per line.
    List(ListArgs),
    /// Partitions (leader, replicas, in-sync replicas) and the configs set on topics.
    Describe(DescribeArgs),
    /// Delete a topic.
    Delete(DeleteArgs),
    /// Set or remove configs of a topic (IncrementalAlterConfigs; AlterConfigs on brokers
    /// without it).
    AlterConfig(AlterConfigArgs),
    /// Grow a topic to more partitions (CreatePartitions).
    AddPartitions(AddPartitionsArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Partitions (default: the broker's num.partitions).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replicas per partition (default: the broker's default.replication.factor).
    #[arg(long)]
    pub replication_factor: Option<i16>,
    /// A topic config, `name=value` (repeat for more).
    #[arg(long = "config", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// Succeed without change when the topic exists.
    #[arg(long)]
    pub if_not_exists: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Include internal topics (`__consumer_offsets`, ...).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// One topic (default: every topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// With every topic: include internal ones.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Succeed without change when the topic does not exist.
    #[arg(long)]
    pub if_exists: bool,
}

#[derive(Debug, clap::Args)]
pub struct AlterConfigArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Configs to set: `k=v[,k=v]` (a value with commas in brackets: `k=[a,b]`);
    /// repeatable.
    #[arg(long)]
    pub add_config: Vec<String>,
    /// Configs to remove (back to the default): `k[,k]`; repeatable.
    #[arg(long)]
    pub delete_config: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct AddPartitionsArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// The partition count after the change (more than now).
    #[arg(long)]
    pub partitions: i32,
}

pub fn run(command: TopicsCommand) -> Result<(), ToolError> {
    match command {
        TopicsCommand::Create(args) => run_async(create(args)),
        TopicsCommand::List(args) => run_async(list(args)),
        TopicsCommand::Describe(args) => run_async(describe(args)),
        TopicsCommand::Delete(args) => run_async(delete(args)),
        TopicsCommand::AlterConfig(args) => run_async(alter_config(args)),
        TopicsCommand::AddPartitions(args) => run_async(add_partitions(args)),
    }
}

async fn create(args: CreateArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let topic = NewTopic {
        name: args.topic.clone(),
        partitions: args.partitions.unwrap_or(-1),
        replication_factor: args.replication_factor.unwrap_or(-1),
        configs: args.configs,
    };
    let outcomes = client
        .create_topics(&[topic], args.broker.request_timeout())
        .await?;
    for (name, outcome) in outcomes {
        match outcome {
            Ok(()) => print_stdout(&format!("Created topic {name}.\n"))?,
            Err(error)
                if args.if_not_exists
                    && error
                        .kafka_code()
                        .is_some_and(|code| code.is(ResponseError::TopicAlreadyExists)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Every topic's metadata, sorted by name; internal ones only with `include_internal`.
async fn all_topics(
    client: &Client,
    include_internal: bool,
) -> Result<Vec<TopicMetadata>, ToolError> {
    let metadata = client.refresh_all_metadata().await?;
    let mut topics: Vec<TopicMetadata> = metadata
        .topics
        .values()
        .filter(|topic| include_internal || !topic.is_internal)
        .cloned()
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

async fn list(args: ListArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let names: String = all_topics(&client, args.all)
        .await?
        .iter()
        .map(|topic| format!("{}\n", topic.name))
        .collect();
    print_stdout(&names)
}

async fn describe(args: DescribeArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let topics = match &args.topic {
        Some(name) => vec![existing_topic(&client, name).await?],
        None => all_topics(&client, args.all).await?,
    };
    if topics.is_empty() {
        return Ok(());
    }
    let resources: Vec<ConfigResource> = topics
        .iter()
        .map(|topic| ConfigResource::topic(&topic.name))
        .collect();
    let mut configs: BTreeMap<String, String> = BTreeMap::new();
    match client.describe_configs(&resources).await {
        Ok(described) => {
            for (resource, outcome) in described {
                match outcome {
                    Ok(entries) => {
                        configs.insert(resource.name, topic_overrides(&entries));
                    }
                    Err(error) => eprintln!("kafki topics: configs of {}: {error}", resource.name),
                }
            }
        }
        // Still show the partitions when a broker cannot describe configs.
        Err(error) => eprintln!("kafki topics: describing configs: {error}"),
    }
    let mut text = String::new();
    for topic in &topics {
        text.push_str(&describe_topic(
            topic,
            configs.get(&topic.name).map(String::as_str),
        ));
    }
    print_stdout(&text)?;
    Ok(())
}

/// The configs set on the topic itself, `k=v,k=v` (sensitive values hidden).
fn topic_overrides(entries: &[kafki_client::ConfigEntry]) -> String {
    entries
        .iter()
        .filter(|entry| entry.source == ConfigSource::DynamicTopic)
        .map(|entry| {
            let value = if entry.sensitive {
                "<sensitive>"
            } else {
                entry.value.as_deref().unwrap_or("")
            };
            format!("{}={value}", entry.name)
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn ids(list: &[i32]) -> String {
    list.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Kafka's `kafka-topics.sh --describe` layout: a topic line, then a line per partition.
fn describe_topic(topic: &TopicMetadata, configs: Option<&str>) -> String {
    let replication_factor = topic
        .partitions
        .first()
        .map_or(0, |partition| partition.replicas.len());
    let mut text = format!(
        "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}\n",
        topic.name,
        topic.topic_id,
        topic.partitions.len(),
        replication_factor,
        configs.unwrap_or("?"),
    );
    for partition in &topic.partitions {
        let leader = partition
            .leader_id
            .map_or_else(|| "none".to_string(), |leader| leader.to_string());
        text.push_str(&format!(
            "\tTopic: {}\tPartition: {}\tLeader: {leader}\tReplicas: {}\tIsr: {}",
            topic.name,
            partition.partition,
            ids(&partition.replicas),
            ids(&partition.in_sync_replicas),
        ));
        if let Some(error) = partition.error {
            text.push_str(&format!("\tError: {error}"));
        }
        text.push('\n');
    }
    text
}

async fn delete(args: DeleteArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let outcomes = client
        .delete_topics(&[args.topic.as_str()], args.broker.request_timeout())
        .await?;
    if outcomes.is_empty() {
        return Err(ToolError::Failed(format!(
            "the broker did not answer for topic {}",
            args.topic
        )));
    }
    for (name, outcome) in outcomes {
        match outcome {
            Ok(()) => print_stdout(&format!("Deleted topic {name}.\n"))?,
            Err(error)
                if args.if_exists
                    && error
                        .kafka_code()
                        .is_some_and(|code| code.is(ResponseError::UnknownTopicOrPartition)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

async fn alter_config(args: AlterConfigArgs) -> Result<(), ToolError> {
    let changes = config_changes(&args.add_config, &args.delete_config)?;
    let client = args.broker.connect().await?;
    client
        .alter_configs(&ConfigResource::topic(&args.topic), &changes)
        .await?;
    print_stdout(&format!(
        "Completed updating config for topic {}.\n",
        args.topic
    ))
}

/// The changes `--add-config` and `--delete-config` ask for (Kafka's syntax).
fn config_changes(add: &[String], delete: &[String]) -> Result<Vec<ConfigChange>, ToolError> {
    let mut changes = Vec::new();
    for item in add.iter().flat_map(|list| split_config_list(list)) {
        let (name, value) = parse_key_value(&item).map_err(ToolError::Usage)?;
        let value = value
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .map_or(value.clone(), str::to_string);
        changes.push(ConfigChange::Set { name, value });
    }
    for name in delete.iter().flat_map(|list| split_config_list(list)) {
        if name.trim().is_empty() {
            return Err(ToolError::Usage(
                "--delete-config needs config names".into(),
            ));
        }
        changes.push(ConfigChange::Delete {
            name: name.trim().to_string(),
        });
    }
    if changes.is_empty() {
        return Err(ToolError::Usage(
            "alter-config needs --add-config k=v or --delete-config k".into(),
        ));
    }
    Ok(changes)
}

/// Splits `a=1,b=[x,y]` at the commas outside brackets.
fn split_config_list(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for character in list.chars() {
        match character {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(character);
    }
    items.push(current);
    items.retain(|item| !item.is_empty());
    items
}

async fn add_partitions(args: AddPartitionsArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    client
        .create_partitions(&args.topic, args.partitions, args.broker.request_timeout())
        .await?;
    print_stdout(&format!(
        "Topic {} now has {} partitions.\n",
        args.topic, args.partitions
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_client::PartitionMetadata;

    #[test]
    fn config_lists_follow_kafkas_syntax() {
        assert_eq!(
            split_config_list("a=1,b=[x,y],c="),
            vec!["a=1", "b=[x,y]", "c="]
        );
        let changes = config_changes(
            &["retention.ms=1000,cleanup.policy=[compact,delete]".into()],
            &["flush.ms,segment.ms".into()],
        )
        .expect("valid");
        assert_eq!(
            changes,
            vec![
                ConfigChange::Set {
                    name: "retention.ms".into(),
                    value: "1000".into()
                },
                ConfigChange::Set {
                    name: "cleanup.policy".into(),
                    value: "compact,delete".into()
                },
                ConfigChange::Delete {
                    name: "flush.ms".into()
                },
                ConfigChange::Delete {
                    name: "segment.ms".into()
                },
            ]
        );
        assert!(matches!(config_changes(&[], &[]), Err(ToolError::Usage(_))));
        assert!(matches!(
            config_changes(&["novalue".into()], &[]),
            Err(ToolError::Usage(_))
        ));
    }

    #[test]
    fn describe_prints_kafkas_layout() {
        let topic = TopicMetadata {
            name: "orders".into(),
            topic_id: Default::default(),
            is_internal: false,
            partitions: vec![PartitionMetadata {
                partition: 0,
                leader_id: Some(1),
                leader_epoch: 0,
                replicas: vec![1],
                in_sync_replicas: vec![1],
                error: None,
            }],
        };
        assert_eq!(
            describe_topic(&topic, Some("retention.ms=1000")),
            "Topic: orders\tTopicId: 00000000-0000-0000-0000-000000000000\tPartitionCount: 1\tReplicationFactor: 1\tConfigs: retention.ms=1000\n\
             \tTopic: orders\tPartition: 0\tLeader: 1\tReplicas: 1\tIsr: 1\n"
        );
    }
}
