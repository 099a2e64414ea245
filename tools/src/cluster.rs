//! `kafki cluster`: a cluster's nodes, their state, the active controller
//! and the metadata quorum, as one node's admin listener reports them
//! (`GET /v1/cluster`).

use crate::layout::broker::http_get;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Admin listener of any node of the cluster.
    #[arg(long, default_value = "127.0.0.1:9644")]
    pub admin: String,
    /// Print the JSON the node answered instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let body = http_get(&args.admin, "/v1/cluster")
        .map_err(|error| anyhow::anyhow!("asking {} for /v1/cluster: {error}", args.admin))?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let view: serde_json::Value = serde_json::from_str(&body).map_err(|error| {
        anyhow::anyhow!(
            "{} answered something that is not JSON: {error}",
            args.admin
        )
    })?;
    print!("{}", render(&view));
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The table `kafki cluster` prints.
pub fn render(view: &serde_json::Value) -> String {
    let mut out = String::new();
    if view["mode"] == "single" {
        out.push_str(&format!(
            "single node {} (no --voters): its own controller\n",
            text(&view["node_id"])
        ));
        return out;
    }
    let quorum = &view["quorum"];
    out.push_str(&format!(
        "cluster {}  controller: node {}  metadata offset: {}  (asked node {})\n",
        text(&view["cluster_id"]),
        text(&view["controller_id"]),
        text(&view["metadata_offset"]),
        text(&view["node_id"]),
    ));
    out.push_str(&format!(
        "quorum: voters {}  term {}  committed {}  this node: {}\n",
        text(&quorum["voters"]),
        text(&quorum["term"]),
        text(&quorum["commit_index"]),
        text(&quorum["role"]),
    ));
    out.push_str(&format!(
        "{:>5}  {:<14} {:>8}  {:<22} {:<22} {:<8} {:>6} {:>11}\n",
        "node", "state", "epoch", "kafka", "cluster", "rack", "voter", "partitions"
    ));
    for node in view["nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>5}  {:<14} {:>8}  {:<22} {:<22} {:<8} {:>6} {:>11}\n",
            text(&node["id"]),
            text(&node["state"]),
            text(&node["epoch"]),
            format!("{}:{}", text(&node["host"]), text(&node["port"])),
            text(&node["cluster_listen"]),
            text(&node["rack"]),
            if node["voter"] == true { "yes" } else { "no" },
            text(&node["partitions_led"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_the_controller_and_every_node() {
        let view = serde_json::json!({
            "mode": "cluster", "node_id": 2, "cluster_id": "abc", "controller_id": 1,
            "metadata_offset": 42,
            "quorum": {"voters": [1, 2], "term": 3, "commit_index": 42, "role": "follower"},
            "nodes": [
                {"id": 1, "state": "alive", "epoch": 7, "host": "h1", "port": 9092,
                 "cluster_listen": "h1:9093", "rack": null, "voter": true, "partitions_led": 3},
                {"id": 2, "state": "fenced", "epoch": 9, "host": "h2", "port": 9092,
                 "cluster_listen": "h2:9093", "rack": "r2", "voter": true, "partitions_led": 0}
            ]
        });
        let table = render(&view);
        assert!(table.contains("controller: node 1"), "{table}");
        assert!(table.contains("fenced") && table.contains("h2:9092") && table.contains("r2"));
        assert_eq!(table.lines().count(), 5);
        let single = render(&serde_json::json!({"mode": "single", "node_id": 1}));
        assert!(single.starts_with("single node 1"));
    }
}
