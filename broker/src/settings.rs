//! The broker-wide settings the runtime reads, resolved once at start into
//! typed fields: each is the explicit value (`--set`, `--config`) when it is
//! valid, else the default from `config::SETTINGS` (Kafka's, where Kafka has
//! the setting). Broker settings are static in Kafki (AlterConfigs on the
//! broker resource is refused), so nothing re-reads them by name later.
//!
//! Topic-level settings (a log's segment size, retention, flush policy) are
//! resolved per topic by `config::log_config_for`; they are not here.

use std::time::Duration;

use crate::config::KafkaSettings;

/// Broker settings in the types the runtime uses.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    /// `socket.request.max.bytes`: the largest request frame.
    pub socket_request_max_bytes: usize,
    /// `queued.max.request.bytes`: request bytes one connection may have in
    /// flight (never below one frame).
    pub queued_max_request_bytes: u64,
    /// `queued.max.requests`: requests one connection may have in flight.
    pub queued_max_requests: usize,
    /// `max.connections`, broker-wide.
    pub max_connections: usize,
    /// `num.partitions` of an auto-created topic (or CreateTopics with -1).
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `offsets.topic.num.partitions`, 1..=1000.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i64,
    /// `transaction.state.log.num.partitions`, 1..=1000.
    pub transaction_state_partitions: i32,
    /// `transaction.state.log.segment.bytes`.
    pub transaction_state_segment_bytes: i64,
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an id unused this long is forgotten.
    pub transactional_id_expiration_ms: i64,
    /// `transaction.partition.verification.enable` (KIP-890, default true):
    /// a partition leader takes a transaction's first batch only once the
    /// coordinator confirms the partition is in the producer's ongoing
    /// transaction, so a late write after an abort cannot open a
    /// transaction that never ends.
    pub transaction_partition_verification: bool,
    /// `transaction.durable.at.commit` (Kafki's own, default true; single
    /// node only): a transaction's `acks=all` batches are answered once
    /// written (a process crash loses none) and made durable, every
    /// partition of the transaction, before its commit is recorded. An
    /// unclean stop aborts the transactions it interrupted.
    pub transaction_durable_at_commit: bool,
    /// `group.initial.rebalance.delay.ms` (0 allowed).
    pub group_initial_rebalance_delay: Duration,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: Duration,
    /// `producer.id.expiration.check.interval.ms`.
    pub producer_expiration_check_interval: Duration,
    /// `producer.id.max.per.partition`.
    pub producer_ids_per_partition_max: Option<usize>,
    /// `log.dir.reserve.bytes` (Kafki's own; 0: no reserve).
    pub reserve_bytes: u64,
    /// `log.idle.partition.close.ms` (Kafki's own): how long a partition
    /// must be unused before a spent descriptor budget closes it.
    pub idle_partition_close: Duration,
    /// `replica.selector.class` (KIP-392): `None` (Kafka's default) keeps
    /// every consumer on the leader.
    pub replica_selector: Option<crate::replication::selector::ReplicaSelector>,
}

impl BrokerSettings {
    /// Resolves every field from `kafka` (explicit values over defaults).
    pub fn resolve(kafka: &KafkaSettings) -> Self {
        let millis = |name: &str, fallback: u64| {
            Duration::from_millis(kafka.positive(name).map_or(fallback, |ms| ms as u64))
        };
        let frame_max = kafka
            .positive("socket.request.max.bytes")
            .map_or(kafki_net::SOCKET_REQUEST_MAX_BYTES_DEFAULT, |bytes| {
                bytes as usize
            });
        Self {
            socket_request_max_bytes: frame_max,
            queued_max_request_bytes: kafka
                .positive("queued.max.request.bytes")
                .map_or(100 << 20, |bytes| bytes as u64)
                .max(frame_max as u64),
            queued_max_requests: kafka
                .positive("queued.max.requests")
                .map_or(32, |depth| depth as usize),
            max_connections: kafka
                .positive("max.connections")
                .map_or(10_000, |limit| limit as usize),
            num_partitions: kafka
                .positive("num.partitions")
                .and_then(|count| i32::try_from(count).ok())
                .unwrap_or(1),
            auto_create_topics: kafka.get_bool("auto.create.topics.enable"),
            offsets_topic_partitions: kafka
                .positive("offsets.topic.num.partitions")
                .filter(|count| *count <= 1000)
                .map_or(50, |count| count as i32),
            offsets_topic_segment_bytes: kafka
                .positive("offsets.topic.segment.bytes")
                .unwrap_or(104_857_600),
            transaction_state_partitions: kafka
                .positive("transaction.state.log.num.partitions")
                .filter(|count| *count <= 1000)
                .map_or(50, |count| count as i32),
            transaction_state_segment_bytes: kafka
                .positive("transaction.state.log.segment.bytes")
                .unwrap_or(104_857_600),
            transaction_max_timeout_ms: kafka
                .positive("transaction.max.timeout.ms")
                .and_then(|ms| i32::try_from(ms).ok())
                .unwrap_or(900_000),
            transactional_id_expiration_ms: kafka
                .positive("transactional.id.expiration.ms")
                .unwrap_or(604_800_000),
            transaction_partition_verification: kafka
                .get_bool("transaction.partition.verification.enable"),
            transaction_durable_at_commit: kafka.get_bool("transaction.durable.at.commit"),
            group_initial_rebalance_delay: Duration::from_millis(
                kafka
                    .get_i64("group.initial.rebalance.delay.ms")
                    .filter(|delay| *delay >= 0)
                    .unwrap_or(3000) as u64,
            ),
            retention_check_interval: millis("log.retention.check.interval.ms", 300_000),
            producer_expiration_check_interval: millis(
                "producer.id.expiration.check.interval.ms",
                600_000,
            ),
            producer_ids_per_partition_max: kafka
                .positive("producer.id.max.per.partition")
                .map(|max| max as usize),
            reserve_bytes: kafka
                .get_i64("log.dir.reserve.bytes")
                .map_or(0, |bytes| bytes.max(0) as u64),
            idle_partition_close: millis("log.idle.partition.close.ms", 60_000),
            // Checked when it was set (`config::check_value`).
            replica_selector: kafka
                .get("replica.selector.class")
                .and_then(crate::replication::selector::ReplicaSelector::parse),
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self::resolve(&KafkaSettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_settings_table_and_explicit_values_win() {
        let defaults = BrokerSettings::default();
        assert_eq!(defaults.offsets_topic_partitions, 50);
        assert_eq!(defaults.max_connections, 10_000);
        assert_eq!(defaults.reserve_bytes, 16 << 20);
        assert!(defaults.transaction_partition_verification);
        assert!(defaults.transaction_durable_at_commit);
        assert!(defaults.queued_max_request_bytes >= defaults.socket_request_max_bytes as u64);
        let mut kafka = KafkaSettings::default();
        kafka.set("offsets.topic.num.partitions", "4").expect("set");
        kafka
            .set("group.initial.rebalance.delay.ms", "0")
            .expect("set");
        kafka.set("max.connections", "7").expect("set");
        kafka
            .set("transaction.partition.verification.enable", "false")
            .expect("set");
        let resolved = BrokerSettings::resolve(&kafka);
        assert!(!resolved.transaction_partition_verification);
        assert_eq!(resolved.offsets_topic_partitions, 4);
        assert_eq!(resolved.group_initial_rebalance_delay, Duration::ZERO);
        assert_eq!(resolved.max_connections, 7);
    }

    #[test]
    fn the_replica_selector_is_unset_by_default_and_other_classes_are_refused() {
        use crate::replication::selector::{ReplicaSelector, RACK_AWARE_CLASS};
        assert_eq!(BrokerSettings::default().replica_selector, None);
        let mut kafka = KafkaSettings::default();
        let refused = kafka
            .set("replica.selector.class", "com.example.MySelector")
            .expect_err("an unknown selector class is refused");
        assert!(refused.to_string().contains(RACK_AWARE_CLASS), "{refused}");
        kafka
            .set("replica.selector.class", RACK_AWARE_CLASS)
            .expect("set");
        assert_eq!(
            BrokerSettings::resolve(&kafka).replica_selector,
            Some(ReplicaSelector::RackAware)
        );
    }

    #[test]
    fn invalid_values_fall_back_to_the_default() {
        let mut kafka = KafkaSettings::default();
        kafka
            .set("offsets.topic.num.partitions", "5000")
            .expect("set");
        kafka.set("queued.max.requests", "0").expect("set");
        let resolved = BrokerSettings::resolve(&kafka);
        assert_eq!(resolved.offsets_topic_partitions, 50);
        assert_eq!(resolved.queued_max_requests, 32);
    }
}
