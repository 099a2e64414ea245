//! Broker configuration: command-line flags, an optional TOML file, and the
//! Kafka-named settings (broker-wide and per topic) with their defaults.
//!
//! Precedence: flag > TOML file > default. Kafka settings use Kafka's names
//! (`log.segment.bytes`, `message.max.bytes`, ...); per-topic settings use
//! Kafka's topic names (`segment.bytes`, `max.message.bytes`, ...) and fall
//! back to the broker-wide value, then to the default.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use kafki_storage::{CleanerLimits, CompactionConfig, LogConfig, SyncPolicy, TimestampType};

/// `kafki serve` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below and Kafka-named settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address advertised to clients in metadata [default: the listen address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory [default: ./kafki-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// CPUs to run shards on, e.g. `0,1` or `0-3` [default: all online CPUs].
    #[arg(long)]
    pub cores: Option<String>,
    /// Address of the admin HTTP listener (/metrics, /health) [default: 127.0.0.1:9644].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// This node's id in the cluster (same as `--set node.id=N`) [default: 1].
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Address for node-to-node traffic (metadata quorum, replication)
    /// [default: this node's address in `--voters`].
    #[arg(long)]
    pub cluster_listen: Option<String>,
    /// The metadata quorum's voters, `1@host:port,2@host:port,...` (same as
    /// `--set controller.quorum.voters=...`). Unset: a single node.
    #[arg(long)]
    pub voters: Option<String>,
    /// A Kafka-named setting, `name=value` (repeatable), e.g. `--set num.partitions=4`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
}

/// How a setting's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    Int,
    Long,
    Double,
    Bool,
    String,
}

/// One Kafka setting this broker understands.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Topic-level name, if the setting exists per topic.
    pub topic_name: Option<&'static str>,
    /// Broker-level name.
    pub broker_name: &'static str,
    /// Default as Kafka shows it (`None`: no value, e.g. flush.messages).
    pub default: Option<&'static str>,
    pub kind: SettingKind,
}

const fn setting(
    topic_name: Option<&'static str>,
    broker_name: &'static str,
    default: Option<&'static str>,
    kind: SettingKind,
) -> Setting {
    Setting {
        topic_name,
        broker_name,
        default,
        kind,
    }
}

/// Every setting the broker knows, with Kafka's defaults.
pub const SETTINGS: &[Setting] = &[
    setting(
        Some("segment.bytes"),
        "log.segment.bytes",
        Some("1073741824"),
        SettingKind::Int,
    ),
    setting(
        Some("segment.ms"),
        "log.roll.ms",
        Some("604800000"),
        SettingKind::Long,
    ),
    setting(
        Some("retention.ms"),
        "log.retention.ms",
        Some("604800000"),
        SettingKind::Long,
    ),
    setting(
        Some("retention.bytes"),
        "log.retention.bytes",
        Some("-1"),
        SettingKind::Long,
    ),
    setting(
        Some("max.message.bytes"),
        "message.max.bytes",
        Some("1048588"),
        SettingKind::Int,
    ),
    setting(
        Some("index.interval.bytes"),
        "log.index.interval.bytes",
        Some("4096"),
        SettingKind::Int,
    ),
    setting(
        Some("flush.messages"),
        "log.flush.interval.messages",
        None,
        SettingKind::Long,
    ),
    setting(
        Some("flush.ms"),
        "log.flush.interval.ms",
        None,
        SettingKind::Long,
    ),
    setting(
        Some("message.timestamp.type"),
        "log.message.timestamp.type",
        Some("CreateTime"),
        SettingKind::String,
    ),
    // Kafki's own: how segment files get room ahead of appends (storage/src/space.rs).
    // Room is always reserved with fallocate; true: zeros are also written
    // into it just ahead of the data in the background, so appends are
    // overwrites whose fdatasync has no metadata to write (each byte is
    // written twice); false: fallocate only (each byte written once).
    setting(
        None,
        "log.preallocate.zero.fill",
        Some("true"),
        SettingKind::Bool,
    ),
    setting(
        Some("cleanup.policy"),
        "log.cleanup.policy",
        Some("delete"),
        SettingKind::String,
    ),
    setting(
        Some("min.cleanable.dirty.ratio"),
        "log.cleaner.min.cleanable.ratio",
        Some("0.5"),
        SettingKind::Double,
    ),
    setting(
        Some("delete.retention.ms"),
        "log.cleaner.delete.retention.ms",
        Some("86400000"),
        SettingKind::Long,
    ),
    setting(
        Some("min.compaction.lag.ms"),
        "log.cleaner.min.compaction.lag.ms",
        Some("0"),
        SettingKind::Long,
    ),
    setting(
        Some("max.compaction.lag.ms"),
        "log.cleaner.max.compaction.lag.ms",
        Some("9223372036854775807"),
        SettingKind::Long,
    ),
    setting(
        Some("min.insync.replicas"),
        "min.insync.replicas",
        Some("1"),
        SettingKind::Int,
    ),
    setting(
        Some("compression.type"),
        "compression.type",
        Some("producer"),
        SettingKind::String,
    ),
    setting(
        Some("unclean.leader.election.enable"),
        "unclean.leader.election.enable",
        Some("false"),
        SettingKind::Bool,
    ),
    // The controller makes preferred replicas lead again on its own
    // (Kafka's name and default; here at once, not every
    // leader.imbalance.check.interval.seconds).
    setting(
        None,
        "auto.leader.rebalance.enable",
        Some("true"),
        SettingKind::Bool,
    ),
    setting(None, "log.retention.hours", Some("168"), SettingKind::Int),
    setting(
        None,
        "socket.request.max.bytes",
        Some("104857600"),
        SettingKind::Int,
    ),
    setting(None, "num.partitions", Some("1"), SettingKind::Int),
    setting(
        None,
        "auto.create.topics.enable",
        Some("true"),
        SettingKind::Bool,
    ),
    setting(
        None,
        "default.replication.factor",
        Some("1"),
        SettingKind::Int,
    ),
    setting(None, "max.connections", Some("10000"), SettingKind::Int),
    setting(
        None,
        "queued.max.request.bytes",
        Some("104857600"),
        SettingKind::Long,
    ),
    setting(None, "queued.max.requests", Some("32"), SettingKind::Int),
    setting(
        None,
        "group.initial.rebalance.delay.ms",
        Some("3000"),
        SettingKind::Int,
    ),
    // The node's id in Metadata, FindCoordinator and DescribeCluster
    // answers (and, in a cluster, among its peers). Kafka's KRaft name.
    setting(None, "node.id", Some("1"), SettingKind::Int),
    // The metadata quorum's voters, `id@host:port,...` (Kafka's format);
    // unset: a single node, its own quorum of one.
    setting(None, "controller.quorum.voters", None, SettingKind::String),
    setting(None, "broker.rack", None, SettingKind::String),
    // KIP-392: how a partition's leader picks the replica a consumer that
    // names its rack (`client.rack`) should read from. Unset (Kafka's
    // default): consumers read from leaders. Only Kafka's rack-aware
    // selector (or its alias `rack-aware`) is accepted; Kafki runs no
    // plugins.
    setting(None, "replica.selector.class", None, SettingKind::String),
    // A node whose heartbeats stop for this long is fenced (KRaft's names
    // and defaults).
    setting(
        None,
        "broker.session.timeout.ms",
        Some("9000"),
        SettingKind::Int,
    ),
    setting(
        None,
        "broker.heartbeat.interval.ms",
        Some("2000"),
        SettingKind::Int,
    ),
    // Replication throttles (Kafka's names): a node's rates in bytes/s, set
    // at run time per node through IncrementalAlterConfigs (what
    // `kafka-reassign-partitions --throttle` does), and per topic the
    // replicas they apply to (`partition:node,...` or `*`).
    setting(
        None,
        "leader.replication.throttled.rate",
        Some("9223372036854775807"),
        SettingKind::Long,
    ),
    setting(
        None,
        "follower.replication.throttled.rate",
        Some("9223372036854775807"),
        SettingKind::Long,
    ),
    setting(
        Some("leader.replication.throttled.replicas"),
        "leader.replication.throttled.replicas",
        Some(""),
        SettingKind::String,
    ),
    setting(
        Some("follower.replication.throttled.replicas"),
        "follower.replication.throttled.replicas",
        Some(""),
        SettingKind::String,
    ),
    // A follower not caught up for this long leaves the ISR (Kafka's name
    // and default).
    setting(
        None,
        "replica.lag.time.max.ms",
        Some("30000"),
        SettingKind::Long,
    ),
    // After this many bytes of metadata records, the image is snapshotted
    // and the log before it dropped (KRaft's name; smaller default: our
    // images are small and restarts should not replay much).
    setting(
        None,
        "metadata.log.max.record.bytes.between.snapshots",
        Some("1048576"),
        SettingKind::Long,
    ),
    // Replicas of `__consumer_offsets` (Kafka's name and default), capped
    // at the live nodes when it is created: a small cluster still gets one.
    setting(
        None,
        "offsets.topic.replication.factor",
        Some("3"),
        SettingKind::Int,
    ),
    setting(
        None,
        "offsets.topic.num.partitions",
        Some("50"),
        SettingKind::Int,
    ),
    setting(
        None,
        "log.retention.check.interval.ms",
        Some("300000"),
        SettingKind::Long,
    ),
    setting(None, "log.cleaner.enable", Some("true"), SettingKind::Bool),
    // Kafki's own: a preallocated file in the data directory released when
    // a metadata change finds the disk full (broker/src/disk.rs); 0: none.
    setting(
        None,
        "log.dir.reserve.bytes",
        Some("16777216"),
        SettingKind::Long,
    ),
    // Kafki's own: when the descriptor budget is spent, a partition opened
    // on demand closes partitions idle this long first (least recently
    // used first) to make room (broker/src/shard.rs).
    setting(
        None,
        "log.idle.partition.close.ms",
        Some("60000"),
        SettingKind::Long,
    ),
    setting(
        None,
        "log.cleaner.backoff.ms",
        Some("15000"),
        SettingKind::Long,
    ),
    setting(
        None,
        "log.cleaner.dedupe.buffer.size",
        Some("134217728"),
        SettingKind::Long,
    ),
    setting(
        None,
        "offsets.topic.segment.bytes",
        Some("104857600"),
        SettingKind::Int,
    ),
    // The transaction coordinator (broker/src/txn/runtime.rs), Kafka's
    // names and defaults; the replication factor and min ISR of
    // `__transaction_state` are capped at the live nodes when it is created.
    setting(
        None,
        "transaction.state.log.num.partitions",
        Some("50"),
        SettingKind::Int,
    ),
    setting(
        None,
        "transaction.state.log.replication.factor",
        Some("3"),
        SettingKind::Int,
    ),
    setting(
        None,
        "transaction.state.log.min.isr",
        Some("2"),
        SettingKind::Int,
    ),
    setting(
        None,
        "transaction.state.log.segment.bytes",
        Some("104857600"),
        SettingKind::Int,
    ),
    setting(
        None,
        "transaction.max.timeout.ms",
        Some("900000"),
        SettingKind::Int,
    ),
    setting(
        None,
        "transactional.id.expiration.ms",
        Some("604800000"),
        SettingKind::Int,
    ),
    // KIP-890: a partition leader asks the transaction coordinator
    // whether a transaction includes the partition before it takes the
    // transaction's first batch there (txn/verification.rs).
    setting(
        None,
        "transaction.partition.verification.enable",
        Some("true"),
        SettingKind::Bool,
    ),
    // Kafki's own: on a single node, a transaction's batches produced with
    // acks=all are answered once written, and EndTxn(commit) makes every
    // partition of the transaction durable before the commit is recorded
    // (handlers/txn.rs). Ignored on a cluster member.
    setting(
        None,
        "transaction.durable.at.commit",
        Some("true"),
        SettingKind::Bool,
    ),
    // Idempotent-producer state (handlers/producer.rs): forget a producer
    // whose last batch is older (Kafka's name and default, one day; here
    // also per topic), how often to look, and Kafki's cap on producers
    // remembered per partition (least recently used evicted beyond it).
    setting(
        Some("producer.id.expiration.ms"),
        "producer.id.expiration.ms",
        Some("86400000"),
        SettingKind::Int,
    ),
    setting(
        None,
        "producer.id.expiration.check.interval.ms",
        Some("600000"),
        SettingKind::Int,
    ),
    setting(
        None,
        "producer.id.max.per.partition",
        Some("100000"),
        SettingKind::Int,
    ),
];

/// The smallest value a setting accepts, where Kafka (or Kafki) has one.
fn minimum(broker_name: &str) -> Option<i64> {
    match broker_name {
        "producer.id.expiration.ms"
        | "producer.id.expiration.check.interval.ms"
        | "producer.id.max.per.partition" => Some(1),
        _ => None,
    }
}

/// Looks a setting up by its broker or topic name.
/// Broker settings that may change at run time, per node or for every
/// node (the replication throttles); every other broker setting is static.
pub const DYNAMIC_BROKER_SETTINGS: [&str; 3] = [
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
    "replica.alter.log.dirs.io.max.bytes.per.second",
];

pub fn find_setting(name: &str) -> Option<&'static Setting> {
    // Kafka's own aliases for the flush settings, as the issue and users write them.
    let name = match name {
        "flush.messages.broker" => "log.flush.interval.messages",
        other => other,
    };
    SETTINGS
        .iter()
        .find(|setting| setting.broker_name == name || setting.topic_name == Some(name))
}

/// Checks a value against its setting's kind.
pub fn check_value(setting: &Setting, value: &str) -> anyhow::Result<()> {
    let at_least = |number: i64| minimum(setting.broker_name).is_none_or(|min| number >= min);
    let ok = match setting.kind {
        SettingKind::Int => value
            .parse::<i32>()
            .is_ok_and(|number| at_least(i64::from(number))),
        SettingKind::Long => value.parse::<i64>().is_ok_and(at_least),
        // Kafka's only double setting here is a ratio in [0, 1].
        SettingKind::Double => value
            .parse::<f64>()
            .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio)),
        SettingKind::Bool => matches!(value, "true" | "false"),
        SettingKind::String => match setting.broker_name {
            "log.message.timestamp.type" => matches!(value, "CreateTime" | "LogAppendTime"),
            "log.cleanup.policy" => matches!(
                value,
                "delete" | "compact" | "compact,delete" | "delete,compact"
            ),
            // Batches are stored as producers compressed them; recompression
            // is not implemented, so only "producer" is honest.
            "compression.type" => value == "producer",
            "replica.selector.class" => {
                if crate::replication::selector::ReplicaSelector::parse(value).is_none() {
                    bail!(
                        "invalid value {value:?} for replica.selector.class: Kafki supports only {} (or {:?})",
                        crate::replication::selector::RACK_AWARE_CLASS,
                        crate::replication::selector::RACK_AWARE_ALIAS,
                    );
                }
                true
            }
            _ => true,
        },
    };
    if !ok {
        bail!("invalid value {value:?} for {}", setting.broker_name);
    }
    Ok(())
}

/// Broker-wide Kafka settings (explicitly set ones; defaults come from [`SETTINGS`]).
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    values: BTreeMap<&'static str, String>,
}

impl KafkaSettings {
    /// Sets a setting by broker or topic name (a topic name sets the broker default).
    pub fn set(&mut self, name: &str, value: &str) -> anyhow::Result<()> {
        let Some(setting) = find_setting(name) else {
            bail!("unknown setting {name:?}");
        };
        check_value(setting, value)?;
        self.values.insert(setting.broker_name, value.to_string());
        Ok(())
    }

    /// The explicitly set value of a broker-level name, if any.
    pub fn explicit(&self, broker_name: &str) -> Option<&str> {
        self.values.get(broker_name).map(String::as_str)
    }

    /// The value in force (explicit or default) of a broker-level name.
    pub fn get(&self, broker_name: &str) -> Option<&str> {
        self.explicit(broker_name).or_else(|| {
            SETTINGS
                .iter()
                .find(|setting| setting.broker_name == broker_name)
                .and_then(|setting| setting.default)
        })
    }

    pub fn get_i64(&self, broker_name: &str) -> Option<i64> {
        self.get(broker_name).and_then(|value| value.parse().ok())
    }

    pub fn get_bool(&self, broker_name: &str) -> bool {
        self.get(broker_name) == Some("true")
    }

    /// The value in force if it is a positive number (the runtime's
    /// settings treat zero, negative and unparsable values as unset).
    pub fn positive(&self, broker_name: &str) -> Option<i64> {
        self.get_i64(broker_name).filter(|value| *value > 0)
    }
}

/// Where a topic setting's value came from (DescribeConfigs `config_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueSource {
    Topic,
    StaticBroker,
    Default,
}

/// Resolves a topic setting: topic override, then broker value, then default.
pub fn resolve_topic_setting<'a>(
    setting: &'a Setting,
    overrides: &'a BTreeMap<String, String>,
    broker: &'a KafkaSettings,
) -> (Option<&'a str>, ValueSource) {
    if let Some(value) = setting.topic_name.and_then(|name| overrides.get(name)) {
        return (Some(value.as_str()), ValueSource::Topic);
    }
    if let Some(value) = broker.explicit(setting.broker_name) {
        return (Some(value), ValueSource::StaticBroker);
    }
    (setting.default, ValueSource::Default)
}

/// The partition-log configuration for a topic.
pub fn log_config_for(overrides: &BTreeMap<String, String>, broker: &KafkaSettings) -> LogConfig {
    let value = |topic_name: &str| -> Option<String> {
        let setting = find_setting(topic_name)?;
        resolve_topic_setting(setting, overrides, broker)
            .0
            .map(str::to_string)
    };
    let number = |topic_name: &str| value(topic_name).and_then(|text| text.parse::<i64>().ok());
    let defaults = LogConfig::default();
    let policy = CleanupPolicy::parse(value("cleanup.policy").as_deref().unwrap_or("delete"));
    let positive = |raw: Option<i64>| raw.filter(|number| *number > 0).map(|number| number as u64);
    let flush_messages = positive(number("flush.messages"));
    let flush_ms = positive(number("flush.ms"));
    let sync_policy = match (flush_messages, flush_ms) {
        (None, None) | (Some(1), _) => SyncPolicy::EveryAppend,
        (messages, interval) => SyncPolicy::Interval {
            messages: messages.unwrap_or(u64::MAX),
            interval: Duration::from_millis(interval.unwrap_or(u64::MAX / 4)),
        },
    };
    let mut config = LogConfig {
        segment_bytes: positive(number("segment.bytes"))
            .unwrap_or(defaults.segment_bytes)
            .clamp(1 << 14, i32::MAX as u64),
        segment_age: Duration::from_millis(positive(number("segment.ms")).unwrap_or(604_800_000)),
        index_interval_bytes: positive(number("index.interval.bytes")).unwrap_or(4096),
        retention_bytes: positive(number("retention.bytes")),
        retention_age: retention_ms(overrides, broker).map(Duration::from_millis),
        max_batch_bytes: positive(number("max.message.bytes"))
            .map_or(defaults.max_batch_bytes, |bytes| bytes as usize),
        sync_policy,
        preallocation: if broker.get_bool("log.preallocate.zero.fill") {
            kafki_storage::space::Preallocation::Zeroed
        } else {
            kafki_storage::space::Preallocation::Reserve
        },
        timestamp_type: if value("message.timestamp.type").as_deref() == Some("LogAppendTime") {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        },
        compaction: policy.compact.then(|| compaction_config(&value)),
        ..defaults
    };
    if !policy.delete {
        // `compact` alone: Kafka deletes nothing by size or age.
        config.retention_bytes = None;
        config.retention_age = None;
    }
    config
}

/// What `cleanup.policy` (a list: `delete`, `compact`, or both) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub fn parse(value: &str) -> Self {
        let has = |wanted: &str| value.split(',').any(|policy| policy.trim() == wanted);
        Self {
            delete: has("delete"),
            compact: has("compact"),
        }
    }
}

/// The compaction settings of a compacted topic (per-topic overrides, then
/// the `log.cleaner.*` broker values, then Kafka's defaults).
fn compaction_config(value: &dyn Fn(&str) -> Option<String>) -> CompactionConfig {
    let defaults = CompactionConfig::default();
    let millis = |name: &str| value(name).and_then(|text| text.parse::<i64>().ok());
    let ratio = value("min.cleanable.dirty.ratio")
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .unwrap_or(defaults.min_cleanable_dirty_ratio);
    CompactionConfig {
        min_cleanable_dirty_ratio: ratio,
        min_compaction_lag: millis("min.compaction.lag.ms")
            .filter(|ms| *ms >= 0)
            .map_or(defaults.min_compaction_lag, |ms| {
                Duration::from_millis(ms as u64)
            }),
        // Kafka's default, Long.MAX_VALUE, means "no maximum".
        max_compaction_lag: millis("max.compaction.lag.ms")
            .filter(|ms| *ms > 0 && *ms < i64::MAX)
            .map(|ms| Duration::from_millis(ms as u64)),
        delete_retention: millis("delete.retention.ms")
            .filter(|ms| *ms >= 0)
            .map_or(defaults.delete_retention, |ms| {
                Duration::from_millis(ms as u64)
            }),
    }
}

/// The broker-wide cleaner settings (`log.cleaner.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanerSettings {
    pub enabled: bool,
    pub backoff: Duration,
    /// Each shard runs one cleaner, so each gets an equal share of
    /// `log.cleaner.dedupe.buffer.size` (Kafka: shared by its cleaner threads).
    pub limits: CleanerLimits,
}

impl CleanerSettings {
    pub fn from_kafka(settings: &KafkaSettings, shards: usize) -> Self {
        let backoff_ms = settings
            .positive("log.cleaner.backoff.ms")
            .unwrap_or(15_000) as u64;
        let buffer = settings
            .positive("log.cleaner.dedupe.buffer.size")
            .unwrap_or(128 << 20) as u64;
        Self {
            enabled: settings.get_bool("log.cleaner.enable"),
            backoff: Duration::from_millis(backoff_ms),
            limits: CleanerLimits {
                dedupe_buffer_bytes: buffer / shards.max(1) as u64,
                decompressed_batch_bytes_max: crate::records::DECOMPRESSED_BATCH_BYTES_MAX,
                ..CleanerLimits::default()
            },
        }
    }
}

/// The bounds of a topic's idempotent-producer state: its
/// `producer.id.expiration.ms` (topic, then broker, then Kafka's default)
/// and the broker's `producer.id.max.per.partition`.
pub fn producer_limits_for(
    overrides: &BTreeMap<String, String>,
    broker: &KafkaSettings,
) -> crate::producer::ProducerLimits {
    let defaults = crate::producer::ProducerLimits::default();
    let expiration_ms = find_setting("producer.id.expiration.ms")
        .and_then(|setting| resolve_topic_setting(setting, overrides, broker).0)
        .and_then(|value| value.parse::<i64>().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(defaults.expiration_ms);
    let producers_max = broker
        .positive("producer.id.max.per.partition")
        .map_or(defaults.producers_max, |max| max as usize);
    crate::producer::ProducerLimits {
        expiration_ms,
        producers_max,
    }
}

/// `retention.ms` as Kafka resolves it: topic override, then
/// `log.retention.ms`, then `log.retention.hours`, then 7 days. `None` for -1.
fn retention_ms(overrides: &BTreeMap<String, String>, broker: &KafkaSettings) -> Option<u64> {
    let parsed = overrides
        .get("retention.ms")
        .and_then(|value| value.parse::<i64>().ok())
        .or_else(|| {
            broker
                .explicit("log.retention.ms")
                .and_then(|value| value.parse().ok())
        })
        .or_else(|| {
            broker
                .explicit("log.retention.hours")
                .and_then(|value| value.parse::<i64>().ok())
                .map(|hours| hours.saturating_mul(3_600_000))
        })
        .unwrap_or(604_800_000);
    (parsed > 0).then_some(parsed as u64)
}

/// `node.id`: a non-negative 32-bit id. Refused at start when invalid
/// rather than replaced by the default: two nodes silently sharing an id
/// would route clients wrongly.
pub fn node_id_of(kafka: &KafkaSettings) -> anyhow::Result<i32> {
    let text = kafka.get("node.id").unwrap_or("1");
    text.parse::<i32>()
        .ok()
        .filter(|id| *id >= 0)
        .with_context(|| {
            format!(
                "node.id {text:?} must be a whole number from 0 to {}",
                i32::MAX
            )
        })
}

/// The broker's resolved configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: u16,
    pub data_dir: PathBuf,
    pub cores: Vec<usize>,
    pub admin_listen: SocketAddr,
    pub kafka: KafkaSettings,
    /// `kafka` resolved into the typed fields the runtime reads.
    pub settings: crate::settings::BrokerSettings,
    pub node_id: i32,
    pub cluster_id: String,
    /// Set when this node is a member of a cluster (`--voters` given).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// The TOML file's shape: the flags' names plus any Kafka-named keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    cores: Option<String>,
    admin_listen: Option<String>,
    cluster_listen: Option<String>,
    #[serde(flatten)]
    kafka: BTreeMap<String, toml::Value>,
}

fn resolve_address(text: &str, what: &str) -> anyhow::Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("{what} {text:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {text:?} resolves to no address"))
}

/// Parses a core list such as `0,2-3`.
pub fn parse_cores(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cores = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first
                    .trim()
                    .parse()
                    .with_context(|| format!("bad core {part:?}"))?;
                let last: usize = last
                    .trim()
                    .parse()
                    .with_context(|| format!("bad core {part:?}"))?;
                if last < first || last - first > 4096 {
                    bail!("bad core range {part:?}");
                }
                cores.extend(first..=last);
            }
            None => cores.push(part.parse().with_context(|| format!("bad core {part:?}"))?),
        }
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        bail!("the core list {text:?} names no core");
    }
    Ok(cores)
}

fn online_cores() -> Vec<usize> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    if ids.is_empty() {
        vec![0]
    } else {
        ids
    }
}

impl BrokerConfig {
    /// Flags over the TOML file over defaults.
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let listen_text = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let listen = resolve_address(&listen_text, "--listen")?;
        let advertise_text = args
            .advertise
            .clone()
            .or(file.advertise)
            .unwrap_or(listen_text);
        let (advertise_host, advertise_port) = advertise_text
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
            .with_context(|| format!("--advertise {advertise_text:?} is not HOST:PORT"))?;
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("kafki-data"));
        // glommio opens directories with `openat(-1, path)`, which fails
        // with EBADF for a relative path: every periodic producer-state
        // snapshot of a broker started with the default `kafki-data` did.
        let data_dir = std::path::absolute(&data_dir).with_context(|| {
            format!(
                "cannot make the data directory {} absolute",
                data_dir.display()
            )
        })?;
        let cores = match args.cores.clone().or(file.cores) {
            Some(text) => parse_cores(&text)?,
            None => online_cores(),
        };
        let admin_text = args
            .admin_listen
            .clone()
            .or(file.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:9644".into());
        let admin_listen = resolve_address(&admin_text, "--admin-listen")?;
        let mut kafka = KafkaSettings::default();
        for (name, value) in &file.kafka {
            let text = match value {
                toml::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            kafka
                .set(name, &text)
                .with_context(|| format!("in config file: {name}"))?;
        }
        for pair in &args.settings {
            let Some((name, value)) = pair.split_once('=') else {
                bail!("--set {pair:?} is not NAME=VALUE");
            };
            kafka.set(name.trim(), value.trim())?;
        }
        if let Some(id) = args.node_id {
            kafka.set("node.id", &id.to_string())?;
        }
        if let Some(voters) = &args.voters {
            kafka.set("controller.quorum.voters", voters)?;
        }
        let node_id = node_id_of(&kafka)?;
        let cluster = crate::cluster::ClusterConfig::resolve(
            node_id,
            &kafka,
            args.cluster_listen
                .clone()
                .or(file.cluster_listen)
                .as_deref(),
        )?;
        Ok(Self {
            listen,
            advertise_host,
            advertise_port,
            data_dir,
            cores,
            admin_listen,
            node_id,
            cluster,
            settings: crate::settings::BrokerSettings::resolve(&kafka),
            kafka,
            cluster_id: String::new(),
        })
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.settings.socket_request_max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0,1").expect("list"), vec![0, 1]);
        assert_eq!(parse_cores("0-3").expect("range"), vec![0, 1, 2, 3]);
        assert_eq!(parse_cores("3, 1-2,1").expect("mixed"), vec![1, 2, 3]);
        assert!(parse_cores("").is_err());
        assert!(parse_cores("2-1").is_err());
        assert!(parse_cores("x").is_err());
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kafki.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:19092\"\ndata-dir = \"/tmp/x\"\n\"num.partitions\" = 3\n\"log.segment.bytes\" = 1048576\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path),
            data_dir: Some("/tmp/y".into()),
            cores: Some("0".into()),
            settings: vec!["retention.ms=1000".into()],
            ..ServeArgs::default()
        };
        let config = BrokerConfig::from_args(&args).expect("config");
        assert_eq!(config.listen.port(), 19092);
        assert_eq!(config.advertise_port, 19092);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(config.kafka.get_i64("num.partitions"), Some(3));
        assert_eq!(config.kafka.get_i64("log.retention.ms"), Some(1000));
        assert_eq!(config.kafka.get_i64("message.max.bytes"), Some(1_048_588));
        let log = log_config_for(&BTreeMap::new(), &config.kafka);
        assert_eq!(log.segment_bytes, 1 << 20);
        assert_eq!(log.retention_age, Some(Duration::from_millis(1000)));
        assert_eq!(log.sync_policy, SyncPolicy::EveryAppend);
    }

    #[test]
    fn a_relative_data_directory_is_made_absolute() {
        let config = BrokerConfig::from_args(&ServeArgs {
            cores: Some("0".into()),
            ..ServeArgs::default()
        })
        .expect("config");
        assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
        assert!(config.data_dir.ends_with("kafki-data"));
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.data_dir, cwd.join("kafki-data"));
    }

    #[test]
    fn the_node_id_is_configurable_and_checked() {
        let serve = |settings: Vec<String>| {
            BrokerConfig::from_args(&ServeArgs {
                data_dir: Some("/tmp/y".into()),
                cores: Some("0".into()),
                settings,
                ..ServeArgs::default()
            })
        };
        assert_eq!(serve(Vec::new()).expect("default").node_id, 1);
        assert_eq!(serve(vec!["node.id=7".into()]).expect("set").node_id, 7);
        assert!(serve(vec!["node.id=-1".into()]).is_err());
        assert!(serve(vec!["node.id=4294967296".into()]).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut settings = KafkaSettings::default();
        assert!(settings.set("no.such.setting", "1").is_err());
        assert!(settings.set("num.partitions", "many").is_err());
        assert!(settings.set("auto.create.topics.enable", "yes").is_err());
        assert!(settings.set("message.timestamp.type", "Wallclock").is_err());
    }

    #[test]
    fn cleanup_policy_and_compaction_settings() {
        let mut broker = KafkaSettings::default();
        broker
            .set("log.cleaner.delete.retention.ms", "1000")
            .expect("set");
        assert!(broker.set("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(broker.set("log.cleaner.min.cleanable.ratio", "x").is_err());
        let plain = log_config_for(&BTreeMap::new(), &broker);
        assert!(plain.compaction.is_none());
        assert!(plain.retention_age.is_some());
        let compact = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
            ("max.compaction.lag.ms".to_string(), "60000".to_string()),
        ]);
        let log = log_config_for(&compact, &broker);
        let compaction = log.compaction.expect("compacted");
        assert_eq!(compaction.min_cleanable_dirty_ratio, 0.01);
        assert_eq!(compaction.delete_retention, Duration::from_millis(1000));
        assert_eq!(compaction.max_compaction_lag, Some(Duration::from_secs(60)));
        assert_eq!(compaction.min_compaction_lag, Duration::ZERO);
        assert_eq!(log.retention_age, None, "compact alone deletes nothing");
        let both = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact,delete".to_string()),
            ("retention.bytes".to_string(), "100000".to_string()),
        ]);
        let log = log_config_for(&both, &broker);
        assert!(log.compaction.is_some());
        assert_eq!(log.retention_bytes, Some(100_000));
        assert_eq!(log.compaction.expect("c").max_compaction_lag, None);
        let cleaner = CleanerSettings::from_kafka(&broker, 2);
        assert!(cleaner.enabled);
        assert_eq!(cleaner.backoff, Duration::from_millis(15_000));
        assert_eq!(cleaner.limits.dedupe_buffer_bytes, 64 << 20);
    }

    #[test]
    fn producer_state_settings_resolve_and_refuse_nonsense() {
        let mut broker = KafkaSettings::default();
        let defaults = producer_limits_for(&BTreeMap::new(), &broker);
        assert_eq!(defaults.expiration_ms, 86_400_000);
        assert_eq!(defaults.producers_max, 100_000);
        broker
            .set("producer.id.max.per.partition", "7")
            .expect("cap");
        broker
            .set("producer.id.expiration.ms", "5000")
            .expect("expiry");
        let mut overrides = BTreeMap::new();
        overrides.insert("producer.id.expiration.ms".to_string(), "900".to_string());
        let limits = producer_limits_for(&overrides, &broker);
        assert_eq!((limits.expiration_ms, limits.producers_max), (900, 7));
        assert_eq!(
            producer_limits_for(&BTreeMap::new(), &broker).expiration_ms,
            5000
        );
        for bad in ["0", "-1", "x"] {
            assert!(broker.set("producer.id.max.per.partition", bad).is_err());
            assert!(broker.set("producer.id.expiration.ms", bad).is_err());
        }
        assert!(broker
            .set("producer.id.expiration.check.interval.ms", "0")
            .is_err());
    }

    #[test]
    fn topic_overrides_and_flush_policy() {
        let broker = KafkaSettings::default();
        let mut overrides = BTreeMap::new();
        overrides.insert("flush.messages".to_string(), "100".to_string());
        overrides.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let log = log_config_for(&overrides, &broker);
        assert!(matches!(
            log.sync_policy,
            SyncPolicy::Interval { messages: 100, .. }
        ));
        assert_eq!(log.timestamp_type, TimestampType::LogAppendTime);
        let setting = find_setting("retention.ms").expect("known");
        assert_eq!(
            resolve_topic_setting(setting, &overrides, &broker).1,
            ValueSource::Default
        );
    }
}
