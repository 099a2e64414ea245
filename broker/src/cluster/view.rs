//! The cluster as `GET /v1/cluster` and `kafki cluster` show it: nodes and
//! their state, the active controller, the quorum's state. Built on the
//! admin thread from what the quorum driver publishes.

use crate::shard::SharedState;

/// The JSON view. A single node reports itself as its own controller with
/// no quorum.
pub fn cluster_view(node_id: i32, shared: &SharedState) -> serde_json::Value {
    let Some(cluster) = shared.cluster.get() else {
        return serde_json::json!({
            "node_id": node_id,
            "mode": "single",
            "controller_id": node_id,
            "quorum": null,
            "nodes": [],
        });
    };
    let status = cluster
        .status
        .lock()
        .map(|status| status.clone())
        .unwrap_or_default();
    let image = cluster
        .image
        .lock()
        .map(|image| image.clone())
        .unwrap_or_default();
    let nodes: Vec<serde_json::Value> = image
        .nodes
        .values()
        .map(|node| {
            let leads = image.partitions_led_by(node.id);
            serde_json::json!({
                "id": node.id,
                "state": node.state.as_str(),
                "epoch": node.epoch,
                "host": node.host,
                "port": node.port,
                "cluster_listen": node.cluster_listen,
                "rack": node.rack,
                "shards": node.shards,
                "partitions_led": leads,
                "partitions_held": crate::metadata::decommission::replicas_held(&image, node.id),
                "decommissioning": image.is_decommissioning(node.id),
                "voter": status.voters.contains(&node.id),
            })
        })
        .collect();
    let controller = status
        .leader_id
        .filter(|_| status.role != "candidate" && status.role != "pre_candidate");
    serde_json::json!({
        "node_id": node_id,
        "mode": "cluster",
        "cluster_id": image.cluster_id,
        "controller_id": controller,
        "metadata_offset": image.log_offset,
        "quorum": status,
        "nodes": nodes,
        "topics": image.topics.len(),
    })
}
