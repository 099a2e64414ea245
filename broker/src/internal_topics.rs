//! The broker's own topics (`__consumer_offsets`, `__transaction_state`):
//! created on first use, replicas and minimum ISR capped at the nodes alive
//! then (one on a single node), as Kafka creates them.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafki_net::kafka_protocol::error::ResponseError;

use crate::errors::KafkaError;
use crate::shard::Shard;

/// Kafka setting `name` (else `default`), at most the live nodes; 1 on a
/// single node.
pub fn capped_at_live_nodes(shard: &Shard, name: &str, default: i64) -> i64 {
    if shard.config.cluster.is_none() {
        return 1;
    }
    let wanted = shard.config.kafka.get_i64(name).unwrap_or(default).max(1);
    let live = shard.metadata().live_nodes().count().max(1) as i64;
    wanted.min(live)
}

/// Creates internal topic `name` unless it exists. `Err` is the code to
/// answer the request that needed it (COORDINATOR_NOT_AVAILABLE: clients
/// retry).
pub async fn ensure_internal_topic(
    shard: &Rc<Shard>,
    name: &str,
    partitions: i32,
    replication_factor: i64,
    configs: BTreeMap<String, String>,
) -> Result<(), i16> {
    if shard.metadata().topic(name).is_some() {
        return Ok(());
    }
    match shard
        .create_topic(
            name.to_string(),
            partitions,
            i16::try_from(replication_factor).unwrap_or(1),
            configs,
            false,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(KafkaError { code, .. }) if code == ResponseError::TopicAlreadyExists.code() => Ok(()),
        Err(error) => {
            tracing::error!(%error, "cannot create {name}");
            Err(ResponseError::CoordinatorNotAvailable.code())
        }
    }
}
