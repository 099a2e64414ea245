//! Which replica a consumer should fetch from (KIP-392, "fetch from the
//! closest replica"): the broker setting `replica.selector.class` and the
//! pure choice the leader makes for each consumer fetch that names its rack
//! (`client.rack`, Fetch v11+). No I/O; the Fetch handler feeds it the
//! metadata image's view of the partition and its nodes.
//!
//! The choice is Kafka's `RackAwareReplicaSelector` as the leader applies it
//! (`ReplicaManager.findPreferredReadReplica`): the leader keeps serving
//! when the client has no rack, when the leader is on the client's rack, or
//! when no in-sync replica is; otherwise it names an in-sync replica on the
//! client's rack. Kafka also drops candidates whose log end is below the
//! fetch offset; in Kafki every committed ISR member holds everything below
//! the leader's high watermark durably (the high watermark is the minimum
//! over the ISR, see [`crate::replication`]), and a consumer never fetches
//! beyond that, so ISR membership implies it. Kafka then takes the most
//! caught-up of several same-rack candidates; here, the first in replica
//! order (they are all caught up by the same argument), which also keeps
//! the answer stable across fetches. A fenced (or shutting down) node is
//! never named: the consumer would only come back after an error.

use super::NodeId;

/// Kafka's class name for the rack-aware selector, as operators set it.
pub const RACK_AWARE_CLASS: &str = "org.apache.kafka.common.replica.RackAwareReplicaSelector";

/// Kafki's short alias for [`RACK_AWARE_CLASS`].
pub const RACK_AWARE_ALIAS: &str = "rack-aware";

/// The broker's `replica.selector.class`. Unset (Kafka's default): every
/// consumer reads from the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaSelector {
    RackAware,
}

impl ReplicaSelector {
    /// The selector a setting's value names; `None` for anything this
    /// broker cannot run (refused at start, see `config::check_value`).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            RACK_AWARE_CLASS | RACK_AWARE_ALIAS => Some(Self::RackAware),
            _ => None,
        }
    }
}

/// What the metadata image says of one node, as the choice needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView<'a> {
    pub rack: Option<&'a str>,
    /// Registered and heartbeating (not fenced, not shutting down).
    pub alive: bool,
}

/// A partition as its leader sees it in the committed metadata.
#[derive(Debug, Clone, Copy)]
pub struct PartitionView<'a> {
    pub leader: NodeId,
    /// The assigned replicas, in preference order.
    pub replicas: &'a [NodeId],
    /// The committed in-sync replicas.
    pub isr: &'a [NodeId],
}

/// The replica a consumer on `client_rack` should fetch from instead of the
/// leader, or `None` when the leader should serve it (see the module doc).
/// `node` looks a node up in the metadata image (`None`: unknown).
pub fn preferred_read_replica<'a>(
    selector: Option<ReplicaSelector>,
    client_rack: &str,
    partition: PartitionView<'_>,
    node: impl Fn(NodeId) -> Option<NodeView<'a>>,
) -> Option<NodeId> {
    let ReplicaSelector::RackAware = selector?;
    if client_rack.is_empty() {
        return None;
    }
    let on_client_rack = |id: NodeId| node(id).and_then(|view| view.rack) == Some(client_rack);
    if on_client_rack(partition.leader) {
        return None;
    }
    partition.replicas.iter().copied().find(|&id| {
        id != partition.leader
            && partition.isr.contains(&id)
            && node(id).is_some_and(|view| view.alive)
            && on_client_rack(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes 1, 2, 3 on racks r1, r2, r3 (node 4: r2), all alive unless
    /// listed in `down`.
    fn nodes(down: &'static [NodeId]) -> impl Fn(NodeId) -> Option<NodeView<'static>> {
        move |id| {
            let rack = match id {
                1 => "r1",
                2 | 4 => "r2",
                3 => "r3",
                _ => return None,
            };
            Some(NodeView {
                rack: Some(rack),
                alive: !down.contains(&id),
            })
        }
    }

    const ALL: &[NodeId] = &[1, 2, 3];

    fn led_by_1<'a>(replicas: &'a [NodeId], isr: &'a [NodeId]) -> PartitionView<'a> {
        PartitionView {
            leader: 1,
            replicas,
            isr,
        }
    }

    const RACK_AWARE: Option<ReplicaSelector> = Some(ReplicaSelector::RackAware);

    #[test]
    fn a_client_on_a_followers_rack_is_sent_to_that_follower() {
        let choice = preferred_read_replica(RACK_AWARE, "r2", led_by_1(ALL, ALL), nodes(&[]));
        assert_eq!(choice, Some(2));
        let choice = preferred_read_replica(RACK_AWARE, "r3", led_by_1(ALL, ALL), nodes(&[]));
        assert_eq!(choice, Some(3));
    }

    #[test]
    fn a_client_on_the_leaders_rack_stays_on_the_leader() {
        let choice = preferred_read_replica(RACK_AWARE, "r1", led_by_1(ALL, ALL), nodes(&[]));
        assert_eq!(choice, None);
    }

    #[test]
    fn no_selector_no_rack_or_an_unknown_rack_stays_on_the_leader() {
        assert_eq!(
            preferred_read_replica(None, "r2", led_by_1(ALL, ALL), nodes(&[])),
            None
        );
        assert_eq!(
            preferred_read_replica(RACK_AWARE, "", led_by_1(ALL, ALL), nodes(&[])),
            None
        );
        assert_eq!(
            preferred_read_replica(RACK_AWARE, "r9", led_by_1(ALL, ALL), nodes(&[])),
            None
        );
    }

    #[test]
    fn a_replica_outside_the_isr_is_not_chosen() {
        let choice = preferred_read_replica(RACK_AWARE, "r2", led_by_1(ALL, &[1, 3]), nodes(&[]));
        assert_eq!(choice, None);
    }

    #[test]
    fn a_fenced_replica_is_skipped_for_a_live_one_on_the_same_rack() {
        let replicas = [1, 2, 4];
        let choice = preferred_read_replica(
            RACK_AWARE,
            "r2",
            led_by_1(&replicas, &replicas),
            nodes(&[2]),
        );
        assert_eq!(choice, Some(4));
        let choice = preferred_read_replica(
            RACK_AWARE,
            "r2",
            led_by_1(&replicas, &replicas),
            nodes(&[2, 4]),
        );
        assert_eq!(choice, None);
    }

    #[test]
    fn several_candidates_give_the_first_in_replica_order() {
        let replicas = [1, 4, 2];
        let choice =
            preferred_read_replica(RACK_AWARE, "r2", led_by_1(&replicas, &replicas), nodes(&[]));
        assert_eq!(choice, Some(4));
    }

    #[test]
    fn a_node_without_a_rack_matches_no_client() {
        let rackless = |id: NodeId| {
            Some(NodeView {
                rack: (id == 1).then_some("r1"),
                alive: true,
            })
        };
        let choice = preferred_read_replica(RACK_AWARE, "r2", led_by_1(ALL, ALL), rackless);
        assert_eq!(choice, None);
    }

    #[test]
    fn the_setting_accepts_kafkas_class_and_the_alias_only() {
        assert_eq!(
            ReplicaSelector::parse(RACK_AWARE_CLASS),
            Some(ReplicaSelector::RackAware)
        );
        assert_eq!(
            ReplicaSelector::parse("rack-aware"),
            Some(ReplicaSelector::RackAware)
        );
        assert_eq!(
            ReplicaSelector::parse("org.apache.kafka.common.replica.LeaderSelector"),
            None
        );
        assert_eq!(ReplicaSelector::parse(""), None);
    }
}
