//! `kafki groups list|describe|reset-offsets`: consumer-group admin over the Kafka protocol,
//! after Kafka's `kafka-consumer-groups.sh`.
//!
//! - `list`: group ids, one per line (`--state` adds each group's state).
//! - `describe --group G`: state, protocol and coordinator; each member's client id, host
//!   and assignment; per partition the committed offset, the log end offset and the lag.
//! - `reset-offsets --group G --topic T[:P,P] --to-...`: prints the offsets it would
//!   commit; commits them only with `--execute`, and only while the group has no active
//!   members (a live member would overwrite them with its next commit). Targets outside
//!   the log are moved to its start or end, with a warning, as Kafka's tool does.

use std::collections::{BTreeMap, BTreeSet};

use kafki_client::kafki_net::kafka_protocol::ResponseError;
use kafki_client::{Client, CommitIdentity, GroupDescription, OffsetSpec, TopicPartition};

use crate::kafka_tool::{
    existing_topic, or_dash, print_stdout, run_async, BrokerArgs, Table, ToolError,
};
use crate::timestamp::parse_iso8601_ms;

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups, one id per line.
    List(ListArgs),
    /// A group's state, members and, per partition, committed offset, log end and lag.
    Describe(DescribeArgs),
    /// Move a group's committed offsets (dry run unless --execute).
    ResetOffsets(ResetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Print each group's state beside its id.
    #[arg(long)]
    pub state: bool,
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The consumer group.
    #[arg(long)]
    pub group: String,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])
))]
pub struct ResetArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The consumer group.
    #[arg(long)]
    pub group: String,
    /// The topic, or `topic:0,2` for some of its partitions.
    #[arg(long)]
    pub topic: String,
    /// The log start offset of each partition.
    #[arg(long)]
    pub to_earliest: bool,
    /// The log end offset of each partition.
    #[arg(long)]
    pub to_latest: bool,
    /// This offset on every partition.
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
    /// The first offset with a timestamp at or after this ISO 8601 time
    /// (2024-05-01T12:00:00.000, UTC unless it carries a zone such as +02:00).
    #[arg(long, value_name = "ISO8601", value_parser = parse_iso8601_ms)]
    pub to_datetime: Option<i64>,
    /// The committed offset moved by N (negative: back).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Commit the new offsets (without it nothing changes).
    #[arg(long)]
    pub execute: bool,
}

pub fn run(command: GroupsCommand) -> Result<(), ToolError> {
    match command {
        GroupsCommand::List(args) => run_async(list(args)),
        GroupsCommand::Describe(args) => run_async(describe(args)),
        GroupsCommand::ResetOffsets(args) => run_async(reset_offsets(args)),
    }
}

async fn list(args: ListArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let groups = client.list_groups().await?;
    if args.state {
        let mut table = Table::new(&["GROUP", "STATE"]);
        for group in groups {
            table.push(vec![
                group.group_id,
                group.state.unwrap_or_else(|| "-".into()),
            ]);
        }
        print_stdout(&table.render())?;
    } else {
        let ids: String = groups
            .iter()
            .map(|group| format!("{}\n", group.group_id))
            .collect();
        print_stdout(&ids)?;
    }
    Ok(())
}

/// Log end offsets of `partitions` per topic; topics the broker no longer has are left
/// out (their lag shows as `-`).
async fn log_end_offsets(
    client: &Client,
    partitions: &BTreeMap<String, Vec<i32>>,
) -> Result<BTreeMap<TopicPartition, i64>, ToolError> {
    let topics: Vec<&str> = partitions.keys().map(String::as_str).collect();
    let metadata = client.refresh_metadata(&topics).await?;
    let mut ends = BTreeMap::new();
    for (topic, indexes) in partitions {
        let Some(known) = metadata.topic(topic) else {
            continue;
        };
        let present: Vec<i32> = indexes
            .iter()
            .copied()
            .filter(|&partition| known.partition(partition).is_some())
            .collect();
        if present.is_empty() {
            continue;
        }
        for (partition, offset) in client
            .list_offsets(topic, &present, OffsetSpec::Latest)
            .await?
        {
            ends.insert((topic.clone(), partition), offset);
        }
    }
    Ok(ends)
}

async fn describe(args: DescribeArgs) -> Result<(), ToolError> {
    let client = args.broker.connect().await?;
    let group = client.describe_group(&args.group).await?;
    let committed = client.committed_offsets(&args.group, None).await?;
    if group.is_dead() && committed.is_empty() {
        return Err(ToolError::kafka(
            ResponseError::GroupIdNotFound,
            format!("describing group {}", args.group),
            "no such consumer group",
        ));
    }
    // Partitions: those with a committed offset and those a member owns.
    let mut owners: BTreeMap<TopicPartition, usize> = BTreeMap::new();
    for (index, member) in group.members.iter().enumerate() {
        for (topic, partition) in member.assignment.iter().flat_map(|a| a.iter()) {
            owners.insert((topic.to_string(), partition), index);
        }
    }
    let shown: BTreeSet<TopicPartition> = committed.keys().chain(owners.keys()).cloned().collect();
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in &shown {
        by_topic.entry(topic.clone()).or_default().push(*partition);
    }
    let ends = log_end_offsets(&client, &by_topic).await?;

    print_stdout(&group_header(&client, &group))?;
    if !group.members.is_empty() {
        let mut members = Table::new(&["MEMBER-ID", "CLIENT-ID", "HOST", "ASSIGNMENT"]);
        for member in &group.members {
            members.push(vec![
                member.member_id.clone(),
                member.client_id.clone(),
                member.client_host.clone(),
                member
                    .assignment
                    .as_ref()
                    .map_or_else(|| "?".to_string(), |a| a.describe()),
            ]);
        }
        print_stdout(&format!("\n{}", members.render()))?;
    }
    let mut partitions = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]);
    for key in &shown {
        let current = committed.get(key).map(|c| c.offset);
        let end = ends.get(key).copied();
        let lag = current
            .zip(end)
            .map(|(current, end)| (end - current).max(0));
        let owner = owners.get(key).map(|&index| &group.members[index]);
        partitions.push(vec![
            group.group_id.clone(),
            key.0.clone(),
            key.1.to_string(),
            or_dash(current),
            or_dash(end),
            or_dash(lag),
            owner.map_or_else(|| "-".into(), |m| m.member_id.clone()),
            owner.map_or_else(|| "-".into(), |m| m.client_host.clone()),
            owner.map_or_else(|| "-".into(), |m| m.client_id.clone()),
        ]);
    }
    if partitions.len() > 0 {
        print_stdout(&format!("\n{}", partitions.render()))?;
    }
    Ok(())
}

fn group_header(client: &Client, group: &GroupDescription) -> String {
    let coordinator = client
        .metadata()
        .brokers
        .get(&group.coordinator)
        .map_or_else(
            || group.coordinator.to_string(),
            |broker| format!("{} ({})", group.coordinator, broker.address()),
        );
    let protocol = match (group.protocol_type.as_str(), group.protocol.as_str()) {
        ("", _) => "-".to_string(),
        (kind, "") => kind.to_string(),
        (kind, name) => format!("{kind}/{name}"),
    };
    format!(
        "Group: {}\tState: {}\tProtocol: {protocol}\tCoordinator: {coordinator}\tMembers: {}\n",
        group.group_id,
        group.state,
        group.members.len()
    )
}

/// Where `reset-offsets` moves each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
    /// Milliseconds since the epoch.
    Datetime(i64),
    ShiftBy(i64),
}

impl ResetTarget {
    fn from_args(args: &ResetArgs) -> Result<Self, ToolError> {
        let chosen = [
            args.to_earliest.then_some(ResetTarget::Earliest),
            args.to_latest.then_some(ResetTarget::Latest),
            args.to_offset.map(ResetTarget::Offset),
            args.to_datetime.map(ResetTarget::Datetime),
            args.shift_by.map(ResetTarget::ShiftBy),
        ];
        let mut chosen = chosen.into_iter().flatten();
        match (chosen.next(), chosen.next()) {
            (Some(target), None) => Ok(target),
            _ => Err(ToolError::Usage(
                "give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime, --shift-by".into(),
            )),
        }
    }
}

/// What is known about one partition when planning its new offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionState {
    log_start: i64,
    log_end: i64,
    committed: Option<i64>,
    /// For `--to-datetime`: the first offset at or after the time (`None`: none is).
    at_time: Option<i64>,
}

/// The offset to commit for one partition, and a warning when the target was outside
/// the log and moved to its edge (Kafka's tool does the same).
fn planned_offset(
    target: ResetTarget,
    state: &PartitionState,
) -> Result<(i64, Option<String>), String> {
    let wanted = match target {
        ResetTarget::Earliest => state.log_start,
        ResetTarget::Latest => state.log_end,
        ResetTarget::Offset(offset) => offset,
        // No record at or after the time: the end, as Kafka's tool does.
        ResetTarget::Datetime(_) => state.at_time.unwrap_or(state.log_end),
        ResetTarget::ShiftBy(delta) => match state.committed {
            Some(committed) => committed.saturating_add(delta),
            None => return Err("it has no committed offset to shift".into()),
        },
    };
    if wanted < state.log_start {
        Ok((
            state.log_start,
            Some(format!(
                "offset {wanted} is before the log start {}; using {}",
                state.log_start, state.log_start
            )),
        ))
    } else if wanted > state.log_end {
        Ok((
            state.log_end,
            Some(format!(
                "offset {wanted} is past the log end {}; using {}",
                state.log_end, state.log_end
            )),
        ))
    } else {
        Ok((wanted, None))
    }
}

/// `topic` or `topic:0,2,5`.
fn parse_topic_partitions(text: &str) -> Result<(String, Option<Vec<i32>>), ToolError> {
    let Some((topic, list)) = text.split_once(':') else {
        return Ok((text.to_string(), None));
    };
    let partitions = list
        .split(',')
        .map(|item| item.trim().parse::<i32>())
        .collect::<Result<Vec<i32>, _>>()
        .map_err(|_| ToolError::Usage(format!("--topic {text:?}: expected topic:0,1,2")))?;
    if topic.is_empty() || partitions.is_empty() {
        return Err(ToolError::Usage(format!(
            "--topic {text:?}: expected topic:0,1,2"
        )));
    }
    Ok((topic.to_string(), Some(partitions)))
}

/// Group states in which nobody else commits (Kafka's tool accepts the same two).
fn is_inactive(group: &GroupDescription) -> bool {
    group.members.is_empty() && matches!(group.state.as_str(), "Empty" | "Dead" | "")
}

async fn reset_offsets(args: ResetArgs) -> Result<(), ToolError> {
    let target = ResetTarget::from_args(&args)?;
    let (topic, chosen) = parse_topic_partitions(&args.topic)?;
    let client = args.broker.connect().await?;
    let group = client.describe_group(&args.group).await?;
    if !is_inactive(&group) {
        return Err(ToolError::Failed(format!(
            "group {} is {} with {} active members: offsets can only be reset while it has none (stop its consumers first)",
            args.group,
            group.state,
            group.members.len()
        )));
    }
    let metadata = existing_topic(&client, &topic).await?;
    let partitions: Vec<i32> = match chosen {
        Some(chosen) => {
            if let Some(missing) = chosen.iter().find(|&&p| metadata.partition(p).is_none()) {
                return Err(ToolError::kafka(
                    ResponseError::UnknownTopicOrPartition,
                    format!("resetting {topic}-{missing}"),
                    &format!("the topic has {} partitions", metadata.partitions.len()),
                ));
            }
            chosen
        }
        None => metadata.partitions.iter().map(|p| p.partition).collect(),
    };
    let starts = client
        .list_offsets(&topic, &partitions, OffsetSpec::Earliest)
        .await?;
    let ends = client
        .list_offsets(&topic, &partitions, OffsetSpec::Latest)
        .await?;
    let at_time = match target {
        ResetTarget::Datetime(timestamp_ms) => {
            client
                .list_offsets(&topic, &partitions, OffsetSpec::Timestamp(timestamp_ms))
                .await?
        }
        _ => BTreeMap::new(),
    };
    let wanted: BTreeMap<String, Vec<i32>> = [(topic.clone(), partitions.clone())].into();
    let committed = client.committed_offsets(&args.group, Some(&wanted)).await?;

    let mut plan: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut table = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "NEW-OFFSET",
    ]);
    for &partition in &partitions {
        let key = (topic.clone(), partition);
        let state = PartitionState {
            log_start: starts.get(&partition).copied().unwrap_or(0),
            log_end: ends.get(&partition).copied().unwrap_or(0),
            committed: committed.get(&key).map(|c| c.offset),
            at_time: at_time
                .get(&partition)
                .copied()
                .filter(|&offset| offset >= 0),
        };
        let (offset, warning) = planned_offset(target, &state).map_err(|reason| {
            ToolError::Failed(format!("cannot reset {topic}-{partition}: {reason}"))
        })?;
        if let Some(warning) = warning {
            eprintln!("kafki groups: {topic}-{partition}: {warning}");
        }
        table.push(vec![
            args.group.clone(),
            topic.clone(),
            partition.to_string(),
            or_dash(state.committed),
            offset.to_string(),
        ]);
        plan.insert(key, offset);
    }
    print_stdout(&table.render())?;
    if !args.execute {
        eprintln!("Dry run: nothing was committed (add --execute to commit these offsets).");
        return Ok(());
    }
    client
        .commit_offsets(&args.group, &CommitIdentity::outside_the_group(), &plan)
        .await?;
    eprintln!("Committed the new offsets of group {}.", args.group);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(log_start: i64, log_end: i64, committed: Option<i64>) -> PartitionState {
        PartitionState {
            log_start,
            log_end,
            committed,
            at_time: None,
        }
    }

    #[test]
    fn targets_land_inside_the_log() {
        let partition = state(10, 100, Some(50));
        let plan = |target| planned_offset(target, &partition);
        assert_eq!(plan(ResetTarget::Earliest), Ok((10, None)));
        assert_eq!(plan(ResetTarget::Latest), Ok((100, None)));
        assert_eq!(plan(ResetTarget::Offset(42)), Ok((42, None)));
        assert_eq!(plan(ResetTarget::ShiftBy(-5)), Ok((45, None)));
        assert_eq!(plan(ResetTarget::ShiftBy(20)), Ok((70, None)));
        let (offset, warning) = plan(ResetTarget::Offset(5)).expect("clamped");
        assert_eq!(offset, 10);
        assert!(warning.is_some_and(|w| w.contains("before the log start")));
        let (offset, warning) = plan(ResetTarget::ShiftBy(1000)).expect("clamped");
        assert_eq!(offset, 100);
        assert!(warning.is_some_and(|w| w.contains("past the log end")));
        assert!(planned_offset(ResetTarget::ShiftBy(1), &state(0, 5, None)).is_err());
    }

    #[test]
    fn datetimes_without_a_later_record_go_to_the_end() {
        let mut partition = state(0, 30, None);
        assert_eq!(
            planned_offset(ResetTarget::Datetime(1), &partition),
            Ok((30, None))
        );
        partition.at_time = Some(12);
        assert_eq!(
            planned_offset(ResetTarget::Datetime(1), &partition),
            Ok((12, None))
        );
    }

    #[test]
    fn topic_partition_lists_parse() {
        assert_eq!(parse_topic_partitions("t").ok(), Some(("t".into(), None)));
        assert_eq!(
            parse_topic_partitions("t:0,2").ok(),
            Some(("t".into(), Some(vec![0, 2])))
        );
        assert!(matches!(
            parse_topic_partitions("t:x"),
            Err(ToolError::Usage(_))
        ));
        assert!(matches!(
            parse_topic_partitions(":1"),
            Err(ToolError::Usage(_))
        ));
    }

    #[test]
    fn only_groups_without_members_are_inactive() {
        let group = |state: &str, members: usize| GroupDescription {
            group_id: "g".into(),
            state: state.into(),
            protocol_type: "consumer".into(),
            protocol: String::new(),
            members: (0..members)
                .map(|index| kafki_client::GroupMemberDescription {
                    member_id: format!("m{index}"),
                    group_instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    assignment: None,
                })
                .collect(),
            coordinator: 1,
        };
        assert!(is_inactive(&group("Empty", 0)));
        assert!(is_inactive(&group("Dead", 0)));
        assert!(!is_inactive(&group("Stable", 1)));
        assert!(!is_inactive(&group("PreparingRebalance", 0)));
    }
}
